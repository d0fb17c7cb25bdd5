"""Debouncing: at most one run per window for identical sends, on the stub, Redis and SQLite."""

import threading
import uuid

import pytest

import greenq
from greenq.middleware.debounce import debounce_key

from redis_helpers import REDIS_URL, require_server


@pytest.fixture(params=["stub", "redis", "sqlite"])
def broker(request, tmp_path):
    if request.param == "stub":
        from greenq.brokers.stub import StubBroker

        broker = StubBroker()
        yield broker
        broker.close()
    elif request.param == "sqlite":
        from greenq.brokers.sqlite import SqliteBroker

        broker = SqliteBroker(path=str(tmp_path / "debounce.sqlite3"))
        yield broker
        broker.close()
    else:
        require_server("Redis", "127.0.0.1", 6379)
        from greenq.brokers.redis import RedisBroker

        namespace = f"greenq-test-deb-{uuid.uuid4().hex[:8]}"
        broker = RedisBroker(url=REDIS_URL, namespace=namespace)
        yield broker
        keys = list(broker.client.scan_iter(f"{namespace}:*")) + list(broker.client.scan_iter(f"{{{namespace}:*"))
        if keys:
            broker.client.delete(*keys)
        broker.close()


def test_identical_sends_run_at_most_once_per_window(broker, queue_name):
    @greenq.actor(broker=broker, queue_name=queue_name, debounce_seconds=60)
    def refresh(user_id, full=False):
        pass

    first = refresh.send(1)
    second = refresh.send(1)
    third = refresh.send(1)
    assert first is not None and "eta" not in first.options        # runs now
    assert second is not None and second.options["eta"] - second.message_timestamp >= 59000  # after the window
    assert third is None                                            # one is already due: dropped
    assert refresh.send(2) is not None and refresh.send(1, full=True) is not None  # other arguments
    counts = broker.queue_counts(queue_name)
    assert counts["ready"] == 3 and counts["delayed"] == 1


def test_always_delay_delays_even_the_first_send(broker, queue_name):
    @greenq.actor(broker=broker, queue_name=queue_name, debounce_seconds=30, debounce_always_delay=True)
    def rebuild():
        pass

    first = rebuild.send()
    assert first.options["eta"] - first.message_timestamp >= 29000
    assert rebuild.send() is None
    assert broker.queue_counts(queue_name)["delayed"] == 1


def test_concurrent_identical_sends_store_one_now_and_one_later(broker, queue_name):
    @greenq.actor(broker=broker, queue_name=queue_name, debounce_seconds=60)
    def ping(target):
        pass

    broker.declare_queue(queue_name)
    start = threading.Barrier(40)
    sent = []

    def send():
        start.wait(10)
        sent.append(ping.send("example.com"))

    threads = [threading.Thread(target=send) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stored = [m for m in sent if m is not None]
    assert len(sent) == 40 and len(stored) == 2
    counts = broker.queue_counts(queue_name)
    assert counts["ready"] == 1 and counts["delayed"] == 1


def test_retries_are_not_debounced(stub_broker, stub_worker, queue_name):
    attempts = []

    @greenq.actor(broker=stub_broker, queue_name=queue_name, debounce_seconds=60, max_retries=1,
                  min_backoff=100, max_backoff=100)
    def flaky():
        attempts.append(1)
        raise RuntimeError("again")

    flaky.send()
    stub_broker.join(queue_name)
    stub_worker.join()
    assert len(attempts) == 2


def test_debounce_and_delay_do_not_mix(stub_broker, queue_name):
    @greenq.actor(broker=stub_broker, queue_name=queue_name, debounce_seconds=1)
    def job():
        pass

    with pytest.raises(ValueError, match="delay"):
        job.send_with_options(delay=1000)


def test_the_key_ignores_keyword_order():
    a = greenq.Message(queue_name="q", actor_name="a", args=(1,), kwargs={"x": 1, "y": 2}, options={})
    b = greenq.Message(queue_name="q", actor_name="a", args=(1,), kwargs={"y": 2, "x": 1}, options={})
    c = greenq.Message(queue_name="q", actor_name="a", args=(2,), kwargs={"y": 2, "x": 1}, options={})
    assert debounce_key(a) == debounce_key(b) != debounce_key(c)


def test_bad_debounce_options_fail_at_decoration():
    with pytest.raises(greenq.ActorOptionError, match="debounce_seconds"):
        @greenq.actor(debounce_seconds=0)
        def f():
            pass
