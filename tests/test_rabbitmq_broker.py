"""RabbitmqBroker against the real RabbitMQ on 127.0.0.1:5672 (the contract suite covers the common verbs).

Each test uses its own queue names (or its own vhost) and deletes what it
declared, so tests of other helpers on the same server never see each other.
Restart tests (stop_app / start_app) live in test_rabbitmq_restart.py.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pika
import pytest

import greenq
from greenq.brokers import broker_from_url
from greenq.errors import BrokerConfigError
from greenq.message import Message, current_millis

from support import RABBITMQ_URL, Recorder, require_server

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(autouse=True)
def _rabbitmq():
    require_server("RabbitMQ", "127.0.0.1", 5672)


@pytest.fixture
def brokers():
    """Build RabbitmqBrokers; each one's queues are deleted and its links closed at the end."""
    from greenq.brokers.rabbitmq import RabbitmqBroker

    made = []

    def make(url=RABBITMQ_URL, **options):
        broker = RabbitmqBroker(url=url, **options)
        broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield make
    for broker in made:
        try:
            broker.delete_queues()
        finally:
            broker.close()


@pytest.fixture
def workers():
    started = []

    def start(broker, **kwargs):
        kwargs.setdefault("worker_timeout", 100)
        worker = greenq.Worker(broker, **kwargs)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=5000)


def rabbitmqctl(*args, timeout=60):
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}"
    return result.stdout


def list_connections():
    """``[(erlang_pid, connection_name)]`` of every AMQP connection, from the client properties we set."""
    out = rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties")
    found = []
    for line in out.splitlines():
        match = re.search(r'\{"connection_name","([^"]*)"\}', line)
        if match:
            found.append((line.split()[0], match.group(1)))
    return found


def connections_of(pid):
    """Names of the AMQP connections a process opened, as RabbitMQ sees them."""
    return [name for _, name in list_connections() if f"pid={pid} " in name]


def fetch_all(consumer, expected, timeout=10):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got += consumer.fetch(expected - len(got), 0.5)
    return got


def wait_until(predicate, timeout=15, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling server state, which has no event to wait on


# --- construction ---------------------------------------------------------------------------


def test_amqp_urls_pick_the_rabbitmq_broker():
    from greenq.brokers.rabbitmq import RabbitmqBroker

    broker = broker_from_url(RABBITMQ_URL)
    try:
        assert isinstance(broker, RabbitmqBroker)
        assert "guest:***@" in repr(broker)
        broker.ping()
    finally:
        broker.close()


def test_ping_names_an_unreachable_server_without_its_password():
    from greenq.brokers.rabbitmq import RabbitmqBroker
    from greenq.errors import ConnectionError

    broker = RabbitmqBroker(url="amqp://guest:s3cret@127.0.0.1:16972/%2F")
    try:
        with pytest.raises(ConnectionError) as info:
            broker._publish_link.call(lambda link: None, timeout=1.0)
        assert "127.0.0.1:16972" in str(info.value) and "s3cret" not in str(info.value)
    finally:
        broker.close()


def test_quorum_queues_refuse_priorities():
    from greenq.brokers.rabbitmq import RabbitmqBroker

    with pytest.raises(ValueError, match="quorum"):
        RabbitmqBroker(url=RABBITMQ_URL, queue_type="quorum", max_priority=5)


# --- durability and confirms -------------------------------------------------------------------


def test_queues_are_durable_and_messages_persistent(brokers, queue_name):
    broker = brokers()
    broker.enqueue(Message(queue_name=queue_name, actor_name="a", args=(1,), kwargs={}, options={}))
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        # Declaring again with the same arguments succeeds only if they are equal (else 406).
        channel.queue_declare(f"{queue_name}.XQ", durable=True, arguments={"x-message-ttl": 7 * 24 * 3600 * 1000})
        channel.queue_declare(queue_name, passive=True)
        method, properties, body = channel.basic_get(queue_name)
        assert properties.delivery_mode == 2
        assert json.loads(body)["args"] == [1]
        channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()


def test_redeclaring_with_other_arguments_gives_a_clear_error(brokers, queue_name):
    brokers(max_priority=5).declare_queue(queue_name)
    other = brokers(max_priority=9)
    with pytest.raises(BrokerConfigError) as info:
        other.declare_queue(queue_name)
    text = str(info.value)
    assert "x-max-priority" in text and "max_priority" in text and "delete" in text and queue_name in text
    assert "guest:***@" in text or "guest" not in text


# --- priorities, delays, dead letters -----------------------------------------------------------


def test_priorities_above_the_maximum_count_as_the_maximum(brokers, queue_name):
    broker = brokers(max_priority=3)

    @greenq.actor(queue_name=queue_name, priority=0, broker=broker)
    def low():
        pass

    @greenq.actor(queue_name=queue_name, priority=2, broker=broker)
    def middle():
        pass

    @greenq.actor(queue_name=queue_name, priority=100, broker=broker)
    def top():
        pass

    low.send()
    middle.send()
    top.send()
    consumer = broker.consume(queue_name, prefetch=3)
    got = fetch_all(consumer, 3)
    assert [m.actor_name for m in got] == ["top", "middle", "low"]
    consumer.ack(got)
    consumer.close()


def test_a_long_delay_does_not_hold_up_a_shorter_one(brokers, queue_name):
    broker = brokers()
    make = lambda i: Message(queue_name=queue_name, actor_name="a", args=(i,), kwargs={}, options={})  # noqa: E731
    long_one = broker.enqueue(make("long"), delay=60000)
    short_one = broker.enqueue(make("short"), delay=300)
    assert broker.queue_counts(queue_name)["delayed"] == 2
    consumer = broker.consume(queue_name)
    (got,) = fetch_all(consumer, 1, timeout=10)
    assert got.message_id == short_one.message_id
    assert current_millis() >= short_one.options["eta"]
    assert current_millis() < long_one.options["eta"]
    counts = broker.queue_counts(queue_name)
    assert counts["delayed"] == 1 and counts["in_flight"] == 1, counts
    consumer.ack([got])
    consumer.close()


def test_delay_routes_add_up_to_the_delay():
    from greenq.brokers import _amqp_topology as topology

    assert topology.delay_route("q", 0) is None
    for delay in (1, 31, 32, 33, 800, 60000, 7 * 24 * 3600 * 1000):
        exchange, key = topology.delay_route("q.sub", delay)
        words = key.split(".")
        bits = words[: topology.DELAY_RUNGS]
        assert words[topology.DELAY_RUNGS:] == ["q", "sub"]
        total = sum(topology.DELAY_UNIT_MS * 2 ** k for k, bit in enumerate(reversed(bits)) if bit == "1")
        assert delay <= total < delay + topology.DELAY_UNIT_MS
        assert exchange == f"greenq.delay.{len(bits) - 1 - bits.index('1')}"
    _, key = topology.delay_route("q", 10 ** 12)  # past the ladder: capped, re-delayed by the consumer
    assert set(key.split(".")[: topology.DELAY_RUNGS]) == {"1"}


def test_a_message_due_later_than_the_ladder_reaches_is_delayed_again(brokers, queue_name):
    broker = brokers()
    broker.declare_queue(queue_name)
    eta = current_millis() + 600
    message = Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={"eta": eta})
    broker.enqueue_raw(queue_name, message.encode())  # arrives "early", as after a full ladder
    consumer = broker.consume(queue_name)
    assert consumer.fetch(1, 0.2) == []
    (got,) = fetch_all(consumer, 1, timeout=10)
    assert got.message_id == message.message_id and current_millis() >= eta
    consumer.ack([got])
    consumer.close()


def test_bad_payloads_and_unknown_actors_are_dead_lettered_and_logged(brokers, workers, queue_name, caplog):
    broker = brokers()
    broker.declare_queue(queue_name)
    broker.enqueue_raw(queue_name, b"\xff not json")
    stray = Message(queue_name=queue_name, actor_name="nobody_declared_me", args=(), kwargs={}, options={})
    broker.enqueue_raw(queue_name, stray.encode())
    with caplog.at_level(logging.ERROR):
        workers(broker)
        wait_until(lambda: broker.queue_counts(queue_name)["dead"] == 2, what="two dead letters")
    dead = {m.actor_name: m for m in broker.dead_letters_of(queue_name)}
    assert dead["<undecodable>"].options["failure"].startswith("DecodeError")
    assert dead["nobody_declared_me"].options["failure"].startswith("ActorNotFound")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert stray.message_id in logged
    assert dead["<undecodable>"].message_id in logged
    assert broker.queue_counts(queue_name)["ready"] == 0


def test_dead_letters_can_be_read_repeatedly_and_requeued_by_id(brokers, queue_name):
    broker = brokers()
    sent = broker.enqueue_many([Message(queue_name=queue_name, actor_name="a", args=(i,), kwargs={}, options={})
                                for i in range(3)])
    consumer = broker.consume(queue_name, prefetch=3)
    got = fetch_all(consumer, 3)
    for m in got:
        m.options.update(failure="ValueError: no", failed_at=current_millis())
    consumer.nack(got)
    assert [m.message_id for m in broker.dead_letters_of(queue_name)] == [m.message_id for m in sent]
    assert len(broker.dead_letters_of(queue_name)) == 3  # reading does not consume
    assert broker.requeue_dead(queue_name, [sent[1].message_id]) == 1
    (again,) = fetch_all(consumer, 1)
    assert again.message_id == sent[1].message_id
    consumer.ack([again])
    assert broker.queue_counts(queue_name)["dead"] == 2
    assert broker.purge_dead(queue_name) == 2
    consumer.close()


def test_quorum_queue_dead_letters_a_message_that_keeps_killing_its_worker(brokers, queue_name):
    broker = brokers(queue_type="quorum", delivery_limit=1)
    sent = broker.enqueue(Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={}))
    for _ in range(3):  # each consumer "dies" holding the message
        consumer = broker.consume(queue_name)
        got = consumer.fetch(1, 2)
        consumer.close()
        if not got:
            break
    wait_until(lambda: broker.queue_counts(queue_name)["dead"] == 1, what="the delivery limit to dead-letter it")
    (dead,) = broker.dead_letters_of(queue_name)
    assert dead.message_id == sent.message_id
    assert "delivery_limit" in dead.options["failure"]
    assert broker.queue_counts(queue_name)["ready"] == 0


# --- gevent, connections, processes -------------------------------------------------------------


def test_500_greenlets_send_through_a_flat_number_of_connections(queue_name):
    script = os.path.join(HERE, "rabbitmq_gevent_sender.py")
    proc = subprocess.Popen([sys.executable, script, RABBITMQ_URL, queue_name, "500"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline().split()[1])
        assert proc.stdout.readline().strip() == "HOLDING"
        while_sending = connections_of(pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "DONE 1000"
        after_processing = connections_of(pid)
        proc.stdin.write("end\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(while_sending) == 1, while_sending  # one publish connection for 500 greenlets
    assert len(after_processing) == 2, after_processing  # plus one consume connection for the worker
    assert any("greenq publish" in name for name in after_processing)


def test_killed_worker_messages_are_redelivered_to_another(brokers, workers, queue_name):
    broker = brokers()
    recorder = Recorder()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def hang(i):
        recorder.add(i)

    hang.send_many([(i,) for i in range(3)])
    script = os.path.join(HERE, "rabbitmq_gevent_worker.py")
    proc = subprocess.Popen([sys.executable, script, RABBITMQ_URL, queue_name], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        started = {proc.stdout.readline().strip() for _ in range(3)}
        assert started == {"STARTED 0", "STARTED 1", "STARTED 2"}
        assert broker.queue_counts(queue_name)["ready"] == 0  # all three held, unacked, by the child
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    workers(broker)
    assert sorted(recorder.wait_for(3)) == [0, 1, 2]


def test_dropped_connections_are_reopened_for_producers_and_workers(brokers, workers, queue_name):
    broker = brokers()
    recorder = Recorder()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def record(i):
        recorder.add(i)

    workers(broker)
    record.send(0)
    recorder.wait_for(1)
    wanted = {broker._publish_link.connection_name, broker._consume_link.connection_name}
    mine = [erlang_pid for erlang_pid, name in list_connections() if name in wanted]
    assert len(mine) == 2, list_connections()
    for erlang_pid in mine:
        rabbitmqctl("close_connection", erlang_pid, "greenq test: dropping the connection")
    for i in range(1, 6):
        record.send(i)
    assert sorted(recorder.wait_for(6, timeout=30)) == list(range(6))
    assert broker._publish_link.generation >= 2 and broker._consume_link.generation >= 2


# --- tenants and other languages ----------------------------------------------------------------


@pytest.fixture
def vhost_url():
    vhost = f"greenq-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def test_a_vhost_in_the_url_separates_tenants(vhost_url, brokers, queue_name):
    tenant = brokers(url=vhost_url)
    other = brokers()
    tenant.enqueue(Message(queue_name=queue_name, actor_name="a", args=("tenant",), kwargs={}, options={}))
    other.enqueue(Message(queue_name=queue_name, actor_name="a", args=("default",), kwargs={}, options={}))
    other.enqueue(Message(queue_name=queue_name, actor_name="a", args=("default",), kwargs={}, options={}))
    assert tenant.queue_counts(queue_name)["ready"] == 1
    assert other.queue_counts(queue_name)["ready"] == 2
    consumer = tenant.consume(queue_name)
    (got,) = fetch_all(consumer, 1)
    assert got.args == ("tenant",)
    assert consumer.fetch(1, 0.3) == []
    consumer.ack([got])
    consumer.close()


def test_a_plain_pika_producer_can_enqueue_work(brokers, workers, queue_name):
    broker = brokers()
    recorder = Recorder()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def add(x, y):
        recorder.add(x + y)

    # What another language's producer does: one persistent JSON document on the queue.
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        body = json.dumps({"queue_name": queue_name, "actor_name": "add", "args": [1, 2], "kwargs": {},
                           "options": {}, "message_id": str(uuid.uuid4()),
                           "message_timestamp": int(time.time() * 1000)})
        channel.basic_publish(exchange="", routing_key=queue_name, body=body,
                              properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"))
    finally:
        connection.close()
    workers(broker)
    assert recorder.wait_for(1) == [3]


def test_consumer_acks_are_not_held_up_by_an_idle_fetch(brokers, queue_name):
    broker = brokers()
    broker.enqueue(Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={}))
    consumer = broker.consume(queue_name)
    (got,) = fetch_all(consumer, 1)
    fetching = threading.Thread(target=consumer.fetch, args=(1, 5.0))
    fetching.start()
    start = time.monotonic()
    consumer.ack([got])
    took = time.monotonic() - start
    fetching_still = fetching.is_alive()
    consumer.close()
    fetching.join(10)
    assert fetching_still and took < 4.0, took  # the ack did not wait for the 5 s fetch to time out
    assert broker.queue_counts(queue_name)["in_flight"] == 0
