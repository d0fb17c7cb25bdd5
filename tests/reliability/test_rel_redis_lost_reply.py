"""Redis replies lost with the connection: a consumer that lives on must not sit on messages.

When Redis is killed or restarted mid-call, a script may have run (and been
persisted) while its reply never arrived. Found by the broker-restart scenario:
a fetch that moved messages into the consumer's ``held`` set, or an ack that
never reached Redis, left messages held by a live, heartbeating consumer, so
no reaper ever took them back and they were never processed. Here the lost
reply is simulated exactly, on the shared Redis, so it fails deterministically.
"""

import uuid

import pytest

from greenq.errors import ConnectionError as GreenqConnectionError
from greenq.message import Message
from rel_harness import REDIS_URL, require


@pytest.fixture
def broker():
    require("redis")
    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker(url=REDIS_URL, namespace=f"greenq-rel-{uuid.uuid4().hex[:10]}", heartbeat_timeout=60000)
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


def lose_reply(monkeypatch, broker, script, *, after_running):
    """Make the next call of ``script`` fail as if Redis went away, before or after it ran."""
    import redis

    real_run = broker.run
    armed = [True]

    def run(name, *args, **kwargs):
        if name == script and armed[0]:
            armed[0] = False
            if after_running:
                real_run(name, *args, **kwargs)
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return real_run(name, *args, **kwargs)

    monkeypatch.setattr(broker, "run", run)


def send(broker, queue, n=1):
    return broker.enqueue_many([Message(queue_name=queue, actor_name="a", args=(i,), kwargs={}, options={})
                                for i in range(n)])


def test_a_fetch_whose_reply_was_lost_gives_its_messages_back(broker, monkeypatch):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    sent = send(broker, queue, 3)
    consumer = broker.consume(queue)
    lose_reply(monkeypatch, broker, "fetch", after_running=True)
    with pytest.raises(GreenqConnectionError):
        consumer.fetch(3, 1.0)
    got = consumer.fetch(3, 2.0)
    assert sorted(m.message_id for m in got) == sorted(m.message_id for m in sent)
    consumer.ack(got)
    assert broker.queue_counts(queue) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    consumer.close()


def test_an_ack_that_never_reached_redis_is_made_once_it_answers(broker, monkeypatch):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    send(broker, queue, 2)
    consumer = broker.consume(queue)
    got = consumer.fetch(2, 2.0)
    assert len(got) == 2
    lose_reply(monkeypatch, broker, "ack", after_running=False)
    with pytest.raises(GreenqConnectionError):
        consumer.ack(got)
    assert consumer.fetch(2, 0.2) == []  # the next round trip settles it: no redelivery, nothing held
    assert broker.queue_counts(queue) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    consumer.close()


def test_a_message_still_running_is_not_given_back(broker, monkeypatch):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    send(broker, queue, 2)
    consumer = broker.consume(queue)
    first = consumer.fetch(1, 2.0)
    lose_reply(monkeypatch, broker, "fetch", after_running=True)
    with pytest.raises(GreenqConnectionError):
        consumer.fetch(1, 1.0)
    second = consumer.fetch(1, 2.0)  # the lost one comes back; the running one stays held
    assert {m.args for m in first + second} == {(0,), (1,)}
    assert broker.queue_counts(queue)["in_flight"] == 2
    consumer.ack(first + second)
    assert broker.queue_counts(queue)["in_flight"] == 0
    consumer.close()
