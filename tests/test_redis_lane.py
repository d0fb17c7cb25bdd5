"""The Redis broker's script lane: its own connections for EVALSHA, on the real Redis.

What it must keep, beside speed: requests byte for byte as redis-py packs them;
a connection interrupted mid-call is never lent with a reply left unread; a full
lane makes callers wait, then fail with an error that says so; a forked child
leaves the parent's connections alone.
"""

import threading

import pytest

from greenq.errors import ConnectionError
from greenq.message import Message

from redis_helpers import REDIS_URL, require_server
from support import run_in_forked_child
from test_redis_broker import count_pool_checkouts, fetch_all, make, namespace, parser_class  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def _redis():
    require_server("Redis", "127.0.0.1", 6379)


def message_for(queue_name, i):
    return Message(queue_name=queue_name, actor_name="noop", args=(i,), kwargs={}, options={})


def test_requests_are_packed_as_redis_py_packs_them(make):
    import redis

    broker = make()
    lane = broker._lane
    connection = lane.checkout()
    try:
        keys = broker.keys_of("q")
        args = [1733500000000, "d\u00e9j\u00e0-vu", b"\x00{\"raw\": 1}\xff", 0, "", 2.5, -7]
        expected = b"".join(connection.pack_command("EVALSHA", "a" * 40, len(keys), *keys, *args))
        assert lane.pack(connection, "a" * 40, keys, args) == expected
        assert lane.pack(connection, "a" * 40, keys, args) == expected  # from the cached head
        with pytest.raises(redis.exceptions.DataError):
            lane.pack(connection, "a" * 40, keys, [True])  # what redis-py refuses, the lane refuses
    finally:
        lane.checkin(connection)


def test_the_lane_and_a_consumer_read_replies_with_the_parser_asked_for(make, queue_name, parser_class):
    from redis.connection import _HiredisParser

    broker = make()  # the fixture passes parser_class, as a user's client option would
    broker.enqueue(message_for(queue_name, 1))
    consumer = broker.consume(queue_name)
    try:
        assert [m.args[0] for m in fetch_all(consumer, 1)] == [1]
        connections = broker._lane._idle + consumer._client().connection_pool._available_connections
        assert len(connections) == 2
        # redis-py's own parser is the RESP2 or the RESP3 one, by the protocol the connection speaks
        assert {isinstance(c._parser, _HiredisParser) for c in connections} == {parser_class is _HiredisParser}
    finally:
        consumer.close()


class Interrupted(BaseException):
    """Stands for a greenlet killed (a time limit) while it waited for Redis's answer."""


def test_a_call_interrupted_before_its_answer_leaves_no_answer_behind(make, queue_name, monkeypatch):
    broker = make()
    broker.enqueue(message_for(queue_name, 1))
    lane = broker._lane
    connection_class = broker.client.connection_pool.connection_class
    read_response = connection_class.read_response
    interrupted = []

    def interrupt_once(self, *a, **kw):
        if not interrupted:
            interrupted.append(self)
            raise Interrupted()
        return read_response(self, *a, **kw)

    monkeypatch.setattr(connection_class, "read_response", interrupt_once)
    with pytest.raises(Interrupted):
        broker.enqueue(message_for(queue_name, 2))  # it ran; its answer is left unread on the socket
    monkeypatch.setattr(connection_class, "read_response", read_response)
    assert interrupted[0]._sock is None  # disconnected, not lent again with that answer pending
    assert lane._idle == [interrupted[0]] and lane._open == 1
    counts = broker.queue_counts(queue_name)
    broker.enqueue(message_for(queue_name, 3))  # reconnects, and reads its own answer, not the stale one
    assert broker.queue_counts(queue_name)["ready"] == counts["ready"] + 1 == 3
    consumer = broker.consume(queue_name)
    try:
        assert sorted(m.args[0] for m in fetch_all(consumer, 3)) == [1, 2, 3]
    finally:
        consumer.close()


def test_a_full_lane_makes_callers_wait_then_says_so(make, queue_name):
    broker = make(max_connections=1)
    lane = broker._lane
    assert lane.limit == 1
    lane.timeout = 0.2
    held = lane.checkout()  # the only connection the lane may open
    with pytest.raises(ConnectionError, match="no free connection for script calls: all 1 in use for 0.2s"):
        broker.enqueue(message_for(queue_name, 1))
    lane.timeout = 30
    sent = threading.Event()
    sender = threading.Thread(target=lambda: (broker.enqueue(message_for(queue_name, 2)), sent.set()))
    sender.start()
    assert not sent.wait(0.2)  # waiting for the held connection
    lane.checkin(held)
    sender.join(30)
    assert sent.is_set() and lane._open == 1
    assert broker.queue_counts(queue_name)["ready"] == 1


def test_a_forked_child_opens_its_own_connections(make, queue_name):
    broker = make()
    broker.enqueue(message_for(queue_name, 1))
    parents = list(broker._lane._idle)
    assert len(parents) == 1

    def child():  # sends through the broker and leaves without cleaning up
        broker.enqueue(message_for(queue_name, 2))
        mine = broker._lane._idle
        return len(mine) == 1 and mine[0] is not parents[0]

    assert run_in_forked_child(child) == 0
    broker.enqueue(message_for(queue_name, 3))  # the parent's connection still works
    assert broker._lane._idle == parents
    assert broker.queue_counts(queue_name)["ready"] == 3


def test_a_send_many_over_several_queues_is_one_write_on_the_lane(make, monkeypatch):
    import redis

    broker = make()
    broker.ping()  # the lane's connection and its handshake, before the writes are counted
    queues = [f"lane-many-{i}" for i in range(3)]
    admin = redis.Redis.from_url(REDIS_URL)
    admin.script_flush()  # Redis does not know the script: every call is refused unrun, then sent again
    checkouts = count_pool_checkouts(monkeypatch, broker)
    writes = []
    connection_class = broker.client.connection_pool.connection_class
    send_packed = connection_class.send_packed_command

    def counted_write(self, command, *args, **kwargs):
        writes.append(len(command))
        return send_packed(self, command, *args, **kwargs)

    monkeypatch.setattr(connection_class, "send_packed_command", counted_write)
    try:
        # 1200 messages for the first queue (three calls of at most 500) and one for each other queue
        messages = [message_for(queues[0], i) for i in range(1200)] + [message_for(q, 0) for q in queues[1:]]
        broker.enqueue_many(messages)
        assert checkouts == []  # not through redis-py's pool and pipeline
        assert writes == [1, 1, 1]  # the five calls in one write, the script, the five again
        assert [broker.queue_counts(q)["ready"] for q in queues] == [1200, 1, 1]
        del writes[:]
        broker.enqueue_many([message_for(q, 1) for q in queues])
        assert writes == [1] and [broker.queue_counts(q)["ready"] for q in queues] == [1201, 2, 2]
    finally:
        for q in queues:
            broker.flush(q)
        admin.close()
