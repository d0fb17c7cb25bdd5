"""Data queues on real Redis and SQLite (and the memory store): visibility timeouts,
attempts, dead letters, refresh, 0/1 reads, concurrent readers, bad input."""

import threading
import time
import uuid

import pytest

import greenq
from greenq.data_queue import DataQueueError, UnknownDataIds
from greenq.scheduling import MemoryStore, store_for

from redis_helpers import REDIS_URL, require_server


@pytest.fixture(params=["redis", "sqlite", "memory"])
def store(request, tmp_path):
    if request.param == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        from greenq.scheduling.redis_store import RedisStore

        namespace = f"greenq-test-dq-{uuid.uuid4().hex[:8]}"
        store = RedisStore(REDIS_URL, namespace=namespace)
        yield store
        keys = list(store.client.scan_iter(match=f"{{{namespace}:*", count=500))
        if keys:
            store.client.delete(*keys)
        store.close()
    elif request.param == "sqlite":
        from greenq.scheduling.sqlite_store import SqliteStore

        store = SqliteStore(path=str(tmp_path / "dq.sqlite3"))
        yield store
        store.close()
    else:
        yield MemoryStore()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_best_effort_queue_hands_each_item_out_once_in_order(store):
    dq = greenq.DataQueue("best_effort", store=store)
    ids = dq.put_data([1, "two", {"three": [3]}, None, 5.5])
    assert len(set(ids)) == 5
    first = dq.get_data(2)
    assert list(first.items()) == [(ids[0], 1), (ids[1], "two")]
    rest = dq.get_data(1000)
    assert list(rest.values()) == [{"three": [3]}, None, 5.5]
    assert dq.get_data(10) == {}
    assert dq.counts() == {"ready": 0, "held": 0}  # a 0/1 queue holds nothing back


def test_items_not_done_come_back_then_die(store):
    dq = greenq.DataQueue("retry_processing", attempts=2, vis_timeout=0.3, use_dead=True, store=store)
    [a, b, c] = dq.put_data(["a", "b", "c"])
    got = dq.get_data(3)
    assert set(got) == {a, b, c}
    assert dq.done_data([a]) == 1
    assert dq.counts() == {"ready": 0, "held": 2}
    assert dq.get_data(3) == {}  # held items are invisible until their timeout
    again = wait_until(lambda: dq.get_data(3), 10, "b and c to come back")
    assert again == {b: "b", c: "c"}  # same ids, same order: back at the front of the queue
    assert dq.done_data([c]) == 1
    # b was delivered twice (attempts=2) and is not done: it goes to the dead letters.
    # Expired items move on when the queue is next read or counted.
    dead = wait_until(lambda: dq.counts()["held"] == 0 and dq.dead.get_data(10), 10, "b in the dead letters")
    assert dead == {b: {"queue": "retry_processing", "attempts": 2, "dead_at": dead[b]["dead_at"], "item": "b"}}
    assert dq.get_data(10) == {}
    assert dq.counts() == {"ready": 0, "held": 0}


def test_without_use_dead_exhausted_items_are_dropped(store):
    dq = greenq.DataQueue("no_dead", attempts=1, vis_timeout=0.2, store=store)
    dq.put_data(["x"])
    assert len(dq.get_data(1)) == 1
    wait_until(lambda: dq.counts() == {"ready": 0, "held": 0}, 10, "the item to be dropped")
    assert dq.dead.get_data(10) == {}


def test_refresh_keeps_items_held_and_a_read_can_override_the_timeout(store):
    dq = greenq.DataQueue("refreshing", attempts=5, vis_timeout=1, store=store)
    [a, b] = dq.put_data([{"n": 1}, {"n": 2}])
    started = time.monotonic()
    short = dq.get_data(1)
    long = dq.get_data(1, vis_timeout=30)
    assert list(short) == [a] and list(long) == [b]
    assert dq.refresh_data(short, vis_timeout=30) == [a]
    assert dq.refresh_data(["no-such-id", a], vis_timeout=30) == [a]
    # Past the queue's own timeout, refreshed and overridden items stay held.
    wait_until(lambda: time.monotonic() > started + 1.3, 5, "the queue's timeout to pass")
    assert dq.get_data(10) == {}
    assert dq.done_data(list(short) + list(long)) == 2
    assert dq.refresh_data([a]) == []


def test_done_data_with_unknown_ids_finishes_the_others_and_names_the_rest(store):
    dq = greenq.DataQueue("unknown_ids", vis_timeout=30, store=store)
    [a] = dq.put_data(["a"])
    dq.get_data(1)
    with pytest.raises(UnknownDataIds) as info:
        dq.done_data([a, "bogus-1", "bogus-2"])
    assert info.value.ids == ["bogus-1", "bogus-2"]
    assert "bogus-1" in str(info.value) and "'unknown_ids'" in str(info.value)
    assert dq.counts() == {"ready": 0, "held": 0}
    with pytest.raises(UnknownDataIds):
        dq.done_data([a])  # already done


def test_concurrent_readers_never_share_an_item(store):
    dq = greenq.DataQueue("shared", vis_timeout=30, store=store)
    dq.put_data(list(range(600)))
    seen = []
    lock = threading.Lock()

    def read():
        while True:
            got = dq.get_data(7)
            if not got:
                return
            with lock:
                seen.extend(got.values())
            dq.done_data(got)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen) == list(range(600))


@pytest.mark.parametrize("call, message", [
    (lambda dq: dq.get_data(0), "1 to 1000"),
    (lambda dq: dq.get_data(1001), "1 to 1000"),
    (lambda dq: dq.get_data(True), "1 to 1000"),
    (lambda dq: dq.put_data([1, float("nan")]), "item 1"),
    (lambda dq: dq.put_data([{"when": object()}]), "item 0"),
    (lambda dq: dq.put_data("abc"), "list of items"),
    (lambda dq: dq.done_data("abc"), "not one string"),
    (lambda dq: dq.done_data([1]), "ids are strings"),
    (lambda dq: dq.get_data(1, vis_timeout="5"), "vis_timeout"),
])
def test_bad_input_gets_clear_errors(store, call, message):
    dq = greenq.DataQueue("bad_input", vis_timeout=5, store=store)
    with pytest.raises(DataQueueError, match=message):
        call(dq)
    assert dq.counts() == {"ready": 0, "held": 0}  # a rejected put puts nothing


def test_bad_queue_settings():
    with pytest.raises(DataQueueError, match="attempts"):
        greenq.DataQueue("q", attempts=0)
    with pytest.raises(DataQueueError, match="name"):
        greenq.DataQueue("no spaces")


def test_the_store_follows_the_broker(tmp_path):
    from greenq.brokers.sqlite import SqliteBroker
    from greenq.brokers.stub import StubBroker

    broker = SqliteBroker(path=str(tmp_path / "b.sqlite3"))
    try:
        dq = greenq.DataQueue("follow", broker=broker)
        dq.put_data([1])
        assert store_for(broker=broker).db is broker.db
        assert greenq.DataQueue("follow", url=f"sqlite:///{tmp_path / 'b.sqlite3'}").get_data(1) != {}
    finally:
        broker.close()
    stub = StubBroker()
    assert store_for(broker=stub) is store_for(broker=stub)
