"""A plain threaded producer on RabbitMQ: the caller drives the publish link while its owner is parked.

Without gevent, the publish link's owner thread parks whenever nothing is
outstanding, and a ``call`` (a confirmed send, a declaration) runs in the
caller's own thread, which drives pika until its confirm is in. These tests
pin what that must keep: the work really runs in the caller; several threads
at once lose nothing and duplicate nothing; a caller that gives up hands its
outstanding confirm to the owner, which stops parking until it is settled; and
a parked link still answers RabbitMQ's heartbeats, so an idle producer keeps
its connection. States are awaited with deadlines, never assumed after a sleep.
"""

import os
import threading
import time

import pytest

import greenq
from greenq.brokers._amqp_link import Pending
from greenq.errors import ConnectionError

from support import RABBITMQ_URL, run_in_forked_child
from test_rabbitmq_broker import wait_until
from test_rabbitmq_unconfirmed import _rabbitmq, bodies_of  # noqa: F401 - _rabbitmq: the autouse fixture


def parked(link):
    """Wait until the owner has parked and given up the baton (it keeps it until its last I/O is done)."""
    wait_until(lambda: link._parked and not link._baton.locked(), what="the publish link's owner to park")


@pytest.fixture
def slow_tick(monkeypatch):
    """A parked owner wakes once a minute instead of once a second, so it cannot take the baton back
    in the moment between a test seeing it parked and the test's call."""
    from greenq.brokers import _amqp_link

    monkeypatch.setattr(_amqp_link, "_IDLE_WAIT", 60.0)


def declare_sender(broker, queue_name):
    @greenq.actor(queue_name=queue_name, broker=broker, max_retries=0)
    def sink(i):
        pass

    return sink


def test_a_confirmed_send_runs_in_the_callers_thread_while_the_owner_is_parked(rabbitmq_brokers, queue_name,
                                                                                 slow_tick):
    broker = rabbitmq_brokers()
    sink = declare_sender(broker, queue_name)
    link = broker._publish_link
    sink.send(0)  # the first request starts the owner, which connects
    publishers = []
    publish = broker._publisher.publish
    broker._publisher.publish = lambda *a: publishers.append(threading.get_ident()) or publish(*a)
    for i in range(1, 21):
        parked(link)
        sink.send(i)
    me = threading.get_ident()
    assert publishers == [me] * 20
    assert link._owner.ident != me and link.generation == 1
    assert sorted(body["args"][0] for body in bodies_of(queue_name)) == list(range(21))


def test_threads_sending_at_once_share_the_link_and_lose_nothing(rabbitmq_brokers, queue_name):
    broker = rabbitmq_brokers()
    sink = declare_sender(broker, queue_name)
    sink.send(-1)
    threads_n, each = 8, 50
    publishers = []
    publish = broker._publisher.publish
    broker._publisher.publish = lambda *a: publishers.append(threading.get_ident()) or publish(*a)
    start = threading.Barrier(threads_n)
    errors = []

    def send(first):
        try:
            start.wait(30)
            for i in range(first, first + each):
                sink.send(i)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(k * each,)) for k in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert len(publishers) == threads_n * each
    sent = sorted(body["args"][0] for body in bodies_of(queue_name))
    assert sent == [-1] + list(range(threads_n * each))  # each exactly once


def test_a_caller_that_gives_up_leaves_its_confirm_to_the_owner(rabbitmq_brokers, queue_name, slow_tick):
    broker = rabbitmq_brokers()
    declare_sender(broker, queue_name)
    link = broker._publish_link
    parked(link)
    never = Pending()
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="did not answer within 0.2s"):
        link.call(lambda link: never, timeout=0.2)
    # The caller drove the I/O loop: its deadline is checked on a one-second tick, not left to
    # the next heartbeat timer (30 s here) or to nothing at all.
    assert time.monotonic() - started < 10
    # Outstanding now: the owner watches the socket and runs what callers hand over.
    assert len(link._pending) == 1
    me = threading.get_ident()
    owner = link._owner.ident
    assert link.call(lambda link: threading.get_ident()) == owner != me
    assert not link._parked
    link.call(lambda link: never.resolve())
    parked(link)
    assert link.call(lambda link: threading.get_ident()) == me
    assert not link._pending


def test_a_parked_link_answers_heartbeats_and_keeps_its_connection(rabbitmq_brokers, queue_name):
    broker = rabbitmq_brokers(url=RABBITMQ_URL + "?heartbeat=2")
    sink = declare_sender(broker, queue_name)
    link = broker._publish_link
    parked(link)
    # RabbitMQ closes a connection that misses two heartbeats (4 s here): a link
    # parked for 7 s that keeps its first connection has answered them.
    time.sleep(7)
    assert link.generation == 1 and link.connection.is_open and link.last_error is None
    sink.send(1)
    assert link.generation == 1
    assert [body["args"][0] for body in bodies_of(queue_name)] == [1]


def test_a_forked_child_sends_on_a_link_of_its_own(rabbitmq_brokers, queue_name):
    """A broker made before a fork (a web server's preload): the child's sends never touch the parent's socket."""
    broker = rabbitmq_brokers()
    sink = declare_sender(broker, queue_name)
    link = broker._publish_link
    sink.send(0)
    parked(link)
    parent_connection = link.connection

    def child():  # a confirmed send, on a connection the child opens
        sink.send(1)
        return link.connection is not parent_connection and link._pid == os.getpid()

    assert run_in_forked_child(child) == 0
    sink.send(2)  # the parent's connection is as it was
    assert link.connection is parent_connection and link.generation == 1
    assert sorted(body["args"][0] for body in bodies_of(queue_name)) == [0, 1, 2]
