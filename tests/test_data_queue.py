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


#: Visibility timeout (s) of the tests that check items stay held: wide enough that a loaded machine
#: nearly always finishes the checks inside it; when it does not, the scenario is run again.
VIS = 2.0
#: The stores stamp deadlines with whole milliseconds of ``time.time()``; keep this far from the edge.
EDGE = 0.01


class WindowMissed(Exception):
    """A check of "still held" could not be made inside the visibility window: the machine stalled."""


def inside(read_at, value, vis=VIS):
    """``value``, a store answer obtained after ``read_at``, if it provably came before the hold ending.

    ``read_at`` is ``time.time()`` taken before the read that set the deadline, so the deadline is at
    least ``read_at + vis``; this is called after the later store call returned, so that call saw a
    clock no later than now. Past that, the answer proves nothing: the scenario is run again.
    """
    if time.time() >= read_at + vis - EDGE:
        raise WindowMissed
    return value


def run_in_window(scenario, tries=5):
    """Run ``scenario(suffix)`` (a fresh queue each time) until its checks fit their windows."""
    for n in range(tries):
        try:
            return scenario(f"-{n}")
        except WindowMissed:
            continue
    raise AssertionError(f"the machine stalled past a {VIS} s visibility window in {tries} runs in a row")


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
    def scenario(suffix):
        dq = greenq.DataQueue("retry_processing" + suffix, attempts=2, vis_timeout=VIS, use_dead=True, store=store)
        [a, b, c] = dq.put_data(["a", "b", "c"])
        first_read = time.time()
        got = dq.get_data(3)
        assert set(got) == {a, b, c}
        assert dq.done_data([a]) == 1
        assert inside(first_read, dq.counts()) == {"ready": 0, "held": 2}
        assert inside(first_read, dq.get_data(3)) == {}  # held items are invisible until their timeout
        reads = []

        def read_again():
            before = time.time()
            got = dq.get_data(3)
            reads.append((before, time.time()))
            return got

        again = wait_until(read_again, VIS + 10, "b and c to come back")
        second_read, back_at = reads[-1]
        assert again == {b: "b", c: "c"}  # same ids, same order: back at the front of the queue
        assert back_at > first_read + VIS - 0.001  # and not before their timeout (deadlines in whole ms)
        assert dq.done_data([c]) == 1
        # b was delivered twice (attempts=2) and is not done: it goes to the dead letters.
        # Expired items move on when the queue is next read or counted.
        dead = wait_until(lambda: dq.counts()["held"] == 0 and dq.dead.get_data(10), VIS + 10,
                          "b in the dead letters")
        assert dead == {b: {"queue": dq.name, "attempts": 2, "dead_at": dead[b]["dead_at"], "item": "b"}}
        assert dead[b]["dead_at"] >= int((second_read + VIS) * 1000) - 1
        assert dq.get_data(10) == {}
        assert dq.counts() == {"ready": 0, "held": 0}

    run_in_window(scenario)


def test_without_use_dead_exhausted_items_are_dropped(store):
    dq = greenq.DataQueue("no_dead", attempts=1, vis_timeout=0.2, store=store)
    dq.put_data(["x"])
    assert len(dq.get_data(1)) == 1
    wait_until(lambda: dq.counts() == {"ready": 0, "held": 0}, 10, "the item to be dropped")
    assert dq.dead.get_data(10) == {}


def test_refresh_keeps_items_held_and_a_read_can_override_the_timeout(store):
    def scenario(suffix):
        dq = greenq.DataQueue("refreshing" + suffix, attempts=5, vis_timeout=VIS, store=store)
        [a, b, c] = dq.put_data([{"n": 1}, {"n": 2}, {"n": 3}])
        first_read = time.time()
        short = dq.get_data(1)
        long = inside(first_read, dq.get_data(1, vis_timeout=30))  # a read: a must not have come back yet
        plain = inside(first_read, dq.get_data(1))  # c keeps the queue's timeout: the control
        assert list(short) == [a] and list(long) == [b] and list(plain) == [c]
        assert dq.refresh_data(short, vis_timeout=30) == [a]
        assert dq.refresh_data(["no-such-id", a], vis_timeout=30) == [a]
        read_done = time.time()  # c's deadline was set before this
        # Past the queue's own timeout the control comes back; refreshed and overridden items stay held.
        wait_until(lambda: time.time() > read_done + VIS + EDGE, VIS + 5, "the queue's timeout to pass")
        assert inside(first_read, dq.get_data(10), vis=30) == {c: {"n": 3}}
        assert dq.done_data(list(short) + list(long) + list(plain)) == 3
        assert dq.refresh_data([a]) == []

    run_in_window(scenario)


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
