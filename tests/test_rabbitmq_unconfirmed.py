"""RabbitmqBroker(confirm_delivery=False) against the real RabbitMQ on 127.0.0.1:5672.

Unconfirmed sends hand the publish to the publish link's owner and return at
once; the owner still publishes with confirms. These tests pin what that must
keep: nothing is lost (a plain thread's sends, a script that exits without
closing, ``close()`` right after sending, a dropped connection), the number of
outstanding publishes is bounded, an unreachable server is still a
``ConnectionError`` naming it, and a refused publish is logged.

Where a test needs sends to be outstanding, it holds the owner in a request
that waits on an event (``hold_owner``), so nothing depends on timing. Each test
uses its own queue (``queue_name``) and deletes what it declared.
"""

import functools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pika
import pytest

import greenq
from greenq import concurrency
from greenq.errors import ConnectionError

from support import RABBITMQ_URL, require_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _rabbitmq():
    require_server("RabbitMQ", "127.0.0.1", 5672)
    assert not concurrency.using_gevent(), "these tests are about plain threads"


@pytest.fixture
def brokers(rabbitmq_brokers):
    """Unconfirmed RabbitmqBrokers, cleaned up at the end (see conftest.py)."""
    return functools.partial(rabbitmq_brokers, confirm_delivery=False)


@pytest.fixture
def counter():
    """A confirmed broker of its own, to count what reached RabbitMQ from outside the broker under test."""
    from greenq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=RABBITMQ_URL)

    def ready(queue_name):
        broker.declare_queue(queue_name)
        return broker.queue_counts(queue_name)["ready"]

    yield ready
    broker.delete_queues()
    broker.close()


class hold_owner:
    """Keep the publish link's owner busy until the block ends, so requests queue up behind it.

    ``then(link)`` runs in the owner as it is let go (before the queued requests).
    """

    def __init__(self, broker, then=None):
        self.link = broker._publish_link
        self.then = then
        self.holding = threading.Event()
        self.release = threading.Event()
        self.error = []

    def _hold(self, link):
        self.holding.set()
        assert self.release.wait(60), "the test never let the owner go"
        if self.then is not None:
            self.then(link)

    def _run(self):
        try:
            self.link.call(self._hold, timeout=120)
        except Exception as e:  # reported by __exit__
            self.error.append(e)

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.holding.wait(30), "the owner never ran the holding request"
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(30)
        assert not self.thread.is_alive() and not self.error, self.error


def bodies_of(queue_name):
    """Every message body in the queue, read with basic_get and acked (the queue ends empty)."""
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _, body = channel.basic_get(queue_name)
            if method is None:
                return bodies
            bodies.append(json.loads(body))
            channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()


def test_a_plain_thread_sends_unconfirmed_and_every_message_arrives(brokers, queue_name):
    broker = brokers()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def store(i):
        pass

    failures = []

    def produce():
        try:
            for i in range(500):
                store.send(i)
        except Exception as e:  # reported below
            failures.append(e)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(120)
    assert not producer.is_alive() and not failures, failures
    assert broker._publish_link.flush(60) == 0
    assert sorted(m["args"][0] for m in bodies_of(queue_name)) == list(range(500))


def test_sends_return_while_the_owner_is_busy_and_close_waits_for_their_confirms(counter, queue_name):
    from greenq.brokers.rabbitmq import RabbitmqBroker

    assert counter(queue_name) == 0  # declared by the counter first, so it deletes the queue whatever happens
    broker = RabbitmqBroker(url=RABBITMQ_URL, confirm_delivery=False, publish_timeout=60)

    @greenq.actor(queue_name=queue_name, broker=broker)
    def store(i):
        pass

    with hold_owner(broker):
        for i in range(50):
            store.send(i)  # waiting for the owner here would never end
        assert broker._publish_link._detached == 50
    broker.close()  # right away: the 50 are not confirmed yet, or not even published
    assert counter(queue_name) == 50


# A script that sends unconfirmed while the owner is held, lets it go and exits at once, without close().
EXIT_SCRIPT = r"""
import sys, threading
import greenq
from greenq.brokers.rabbitmq import RabbitmqBroker

url, queue_name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
broker = RabbitmqBroker(url=url, confirm_delivery=False, publish_timeout=60)

@greenq.actor(queue_name=queue_name, broker=broker)
def store(i):
    pass

holding, release = threading.Event(), threading.Event()

def hold(link):
    holding.set()
    release.wait()

threading.Thread(target=broker._publish_link.call, args=(hold,), kwargs={"timeout": 120}, daemon=True).start()
assert holding.wait(30)
for i in range(count):
    store.send(i)
print("OUTSTANDING", broker._publish_link._detached, flush=True)
release.set()
"""


def test_a_script_that_exits_without_closing_loses_nothing(counter, queue_name):
    assert counter(queue_name) == 0  # declared by the counter first, so it deletes the queue whatever happens
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, RABBITMQ_URL, queue_name, "300"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "OUTSTANDING 300" in done.stdout  # all 300 still unpublished when the script ended
    assert "may be lost" not in done.stderr, done.stderr
    assert counter(queue_name) == 300


def test_outstanding_publishes_are_bounded_and_a_full_window_times_out_clearly(brokers, counter, queue_name):
    broker = brokers(publish_timeout=0.5)
    broker._publish_link.detached_limit = 3

    @greenq.actor(queue_name=queue_name, broker=broker)
    def store(i):
        pass

    with hold_owner(broker):
        for i in range(3):
            store.send(i)
        started = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            store.send(3)  # no room until the owner confirms some: it waits publish_timeout, then says why
        assert time.monotonic() - started >= 0.5
        assert "127.0.0.1:5672" in str(info.value) and "guest@" not in str(info.value)
        assert "3 earlier publishes still unconfirmed" in str(info.value)
    broker.publish_timeout = 60
    store.send(4)  # room again once the owner confirmed the first three
    assert broker._publish_link.flush(60) == 0
    assert sorted(m["args"][0] for m in bodies_of(queue_name)) == [0, 1, 2, 4]  # the refused send stayed out


def test_publishes_handed_over_before_a_dropped_connection_arrive_after_reconnecting(brokers, queue_name):
    broker = brokers(publish_timeout=60)

    @greenq.actor(queue_name=queue_name, broker=broker)
    def store(i):
        pass

    first_generation = broker._publish_link.generation

    def drop_the_socket(link):  # as a dropped TCP connection: pika finds out at its next read or write
        link.connection._impl._transport._sock.shutdown(socket.SHUT_RDWR)

    with hold_owner(broker, then=drop_the_socket):
        for i in range(40):
            store.send(i)
    assert broker._publish_link.flush(60) == 0
    assert broker._publish_link.generation > first_generation  # it did reconnect
    indices = [m["args"][0] for m in bodies_of(queue_name)]
    assert set(indices) == set(range(40)) and len(indices) >= 40  # at-least-once


def test_a_refused_unconfirmed_publish_is_logged(brokers, queue_name, caplog):
    broker = brokers()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def store(i):
        pass

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        connection.channel().queue_delete(queue_name)  # behind greenq's back: the message is unroutable
    finally:
        connection.close()
    with caplog.at_level(logging.ERROR, logger="greenq.brokers.rabbitmq"):
        store.send(1)  # returns: nobody waits for the refusal
        assert broker._publish_link.flush(60) == 0
    refused = [r.getMessage() for r in caplog.records if r.name == "greenq.brokers.rabbitmq"]
    assert any("QueueNotFound" in text and queue_name in text for text in refused), refused


def test_an_unreachable_server_is_a_connection_error_naming_it():
    from greenq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url="amqp://guest:s3cret@127.0.0.1:16972/%2F", confirm_delivery=False,
                            publish_timeout=0.5)
    try:
        with pytest.raises(ConnectionError) as info:
            broker.enqueue(greenq.Message(queue_name="unreachable", actor_name="a", args=(), kwargs={},
                                          options={}))
        assert "127.0.0.1:16972" in str(info.value) and "s3cret" not in str(info.value)
    finally:
        broker.close()
