"""RabbitMQ restarted under a running producer and worker (``rabbitmqctl stop_app`` / ``start_app``).

Kept apart from test_rabbitmq_broker.py because it briefly takes the shared
server down: the window is short, ``start_app`` always runs in a ``finally``,
and the test waits for ``rabbitmqctl await_startup`` before going on.
"""

import subprocess

import pytest

import greenq
from greenq.message import Message

from support import RABBITMQ_URL, Recorder, require_server


def rabbitmqctl(*args, timeout=120):
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}"


@pytest.fixture
def broker():
    require_server("RabbitMQ", "127.0.0.1", 5672)
    from greenq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=RABBITMQ_URL)
    broker.emit_after("process_boot")
    yield broker
    try:
        broker.delete_queues()
    finally:
        broker.close()


def test_messages_survive_a_restart_and_clients_reconnect(broker, queue_name):
    before, during = f"{queue_name}-before", f"{queue_name}-running"
    stored, running = Recorder(), Recorder()

    @greenq.actor(queue_name=before, broker=broker)
    def store(i):
        stored.add(i)

    @greenq.actor(queue_name=during, broker=broker)
    def run(i):
        running.add(i)

    worker = greenq.Worker(broker, queues=[during], worker_timeout=100)
    worker.start()
    try:
        run.send(0)
        running.wait_for(1)
        store.send_many([(i,) for i in range(20)])
        broker.enqueue(Message(queue_name=before, actor_name="store", args=(20,), kwargs={}, options={}),
                       delay=300)
        try:
            rabbitmqctl("stop_app")
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        # The same producer and the worker that was running go on after reconnecting.
        for i in range(1, 6):
            run.send(i)
        assert sorted(running.wait_for(6, timeout=60)) == list(range(6))
        assert broker._publish_link.generation >= 2 and broker._consume_link.generation >= 2  # reconnected
        later = greenq.Worker(broker, queues=[before], worker_timeout=100)
        later.start()
        try:
            assert sorted(stored.wait_for(21, timeout=60)) == list(range(21))
        finally:
            later.stop(timeout=5000)
    finally:
        worker.stop(timeout=5000)
