"""Rate limits and barriers: semantics on every back end, bounds under 500 greenlets in real processes."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from greenq.rate_limits import (
    Barrier, BarrierTimeout, ConcurrentRateLimiter, RateLimitExceeded, StubBackend, WindowRateLimiter, backend_for,
)
from greenq.rate_limits.backend import debounce_eta

from redis_helpers import REDIS_URL, require_server

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(params=["stub", "redis", "sqlite"])
def backend(request, tmp_path):
    if request.param == "stub":
        backend = StubBackend()
    elif request.param == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        from greenq.rate_limits.redis import RedisBackend

        backend = RedisBackend(REDIS_URL, namespace=f"greenq-test-rl-{uuid.uuid4().hex[:8]}", poll_interval=20)
    else:
        from greenq.rate_limits.sqlite import SqliteBackend

        backend = SqliteBackend(path=str(tmp_path / "limits.sqlite3"), poll_interval=20)
    yield backend
    backend.close()


def test_concurrent_limiter_bounds_holders(backend):
    limiter = ConcurrentRateLimiter(backend, "domain", limit=2)
    with limiter.acquire() as first, limiter.acquire() as second:
        assert first and second and limiter.holders() == 2
        with pytest.raises(RateLimitExceeded, match="'domain'"):
            with limiter.acquire():
                pass
        with limiter.acquire(raise_on_failure=False) as third:
            assert third is False
    assert limiter.holders() == 0


def test_a_waiter_gets_the_slot_when_a_holder_leaves(backend):
    limiter = ConcurrentRateLimiter(backend, "one", limit=1)
    tries, results = [], []
    refused_twice = threading.Event()  # the waiter was refused at once and again while waiting
    real_try = limiter._try

    def counted_try(member):
        got = real_try(member)
        tries.append(got)
        if len(tries) >= 2 and not any(tries):
            refused_twice.set()
        return got

    def waiter():
        with limiter.acquire(timeout=20000) as acquired:
            results.append((acquired, limiter.holders()))

    with limiter.acquire():
        limiter._try = counted_try  # the waiter's tries only
        thread = threading.Thread(target=waiter)
        thread.start()
        assert refused_twice.wait(10), tries
        assert not results and thread.is_alive()  # it is waiting inside acquire(), not holding
    thread.join(20)
    assert results == [(True, 1)]
    assert tries[-1] is True and not any(tries[:-1])  # refused until the holder left, then in


def test_a_waiter_times_out(backend):
    limiter = ConcurrentRateLimiter(backend, "busy", limit=1)
    with limiter.acquire():
        with pytest.raises(RateLimitExceeded):
            with limiter.acquire(timeout=50):
                pass


def test_expired_leases_are_given_back(backend):
    limiter = ConcurrentRateLimiter(backend, "crashy", limit=1, ttl=100)
    assert limiter._try("crashed-holder")  # never released, as after kill -9
    with limiter.acquire(timeout=10000) as acquired:
        assert acquired


def test_window_limiter(backend):
    window = 1.0
    for attempt in range(3):  # a fresh key if the machine stalled through the window
        limiter = WindowRateLimiter(backend, f"api-{attempt}", limit=3, window=window)
        first = time.monotonic()
        for _ in range(3):
            with limiter.acquire():
                pass
        with limiter.acquire(raise_on_failure=False) as acquired:
            refused = not acquired
        if time.monotonic() < first + window:  # the fourth was provably inside the first's window
            break
    else:
        pytest.fail(f"the machine stalled past {window} s three times in a row")
    assert refused
    with limiter.acquire(timeout=10000) as acquired:  # room again once the window slides
        assert acquired
    assert time.monotonic() >= first + window - 0.002  # and not before (the back ends count whole ms)


def test_barrier(backend):
    key = f"b-{uuid.uuid4().hex[:6]}"
    opened = []
    threads = [threading.Thread(target=lambda: opened.append(Barrier(backend, key, 3).wait(timeout=20000)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while backend.count(f"barrier:{key}") < 2:  # both threads have arrived and wait
        assert time.monotonic() < deadline, "the waiting parties never arrived"
        time.sleep(0.01)
    assert not opened
    assert Barrier(backend, key, 3).wait(block=False) is True  # the third arrival opens it
    for thread in threads:
        thread.join(20)
    assert opened == [True, True]
    with pytest.raises(BarrierTimeout, match="2 parties"):
        Barrier(backend, key + "-lonely", 2).wait(timeout=50)


def test_backend_verbs(backend):
    assert backend.add("set", "a") == (True, 1)
    assert backend.add("set", "a") == (False, 1)
    assert backend.add("set", "b", limit=1) == (False, 1)
    backend.remove("set", "a")
    assert backend.count("set") == 0
    assert not backend.get_flag("flag")
    backend.set_flag("flag", 10000)
    assert backend.get_flag("flag")
    assert backend.debounce("d", 60000) == 0
    assert 59000 <= backend.debounce("d", 60000) <= 60000
    assert backend.debounce("d", 60000) is None


def test_debounce_rule():
    assert debounce_eta(None, 1000, 100, False) == 1000
    assert debounce_eta(1000, 1050, 100, False) == 1100
    assert debounce_eta(1100, 1060, 100, False) is None
    assert debounce_eta(1000, 1100, 100, False) == 1100
    assert debounce_eta(None, 1000, 100, True) == 1100
    assert debounce_eta(1100, 1000, 100, True) is None


def test_limiter_arguments_are_checked():
    with pytest.raises(ValueError, match="limit"):
        ConcurrentRateLimiter(StubBackend(), "k", limit=0)
    with pytest.raises(ValueError, match="window"):
        WindowRateLimiter(StubBackend(), "k", limit=1, window=0)


def test_backend_for_follows_the_broker(tmp_path):
    from greenq.brokers.sqlite import SqliteBroker
    from greenq.brokers.stub import StubBroker
    from greenq.rate_limits.sqlite import SqliteBackend

    stub = StubBroker()
    assert isinstance(backend_for(stub), StubBackend) and backend_for(stub) is backend_for(stub)
    broker = SqliteBroker(path=str(tmp_path / "b.sqlite3"))
    backend = backend_for(broker)
    assert isinstance(backend, SqliteBackend) and backend.db is broker.db
    broker.close()


# --- 500 greenlets in two real gevent processes ------------------------------------------


def _run_processes(backend_kind, target, kind, limit, window=None, processes=2, greenlets=250):
    import redis

    namespace = f"greenq-test-rl-{uuid.uuid4().hex[:8]}"
    marks = redis.Redis.from_url(REDIS_URL)
    args = [backend_kind, target, namespace, kind, str(greenlets), str(limit)] + ([str(window)] if window else [])
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "composition_limiter_proc.py"), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    try:
        for _ in range(processes):
            assert marks.blpop(f"{namespace}:ready", timeout=60), "a limiter process did not start"
        marks.rpush(f"{namespace}:go", *[1] * processes)
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
        times = [tuple(float(t) for t in pair.split()) for pair in marks.lrange(f"{namespace}:times", 0, -1)]
        return reports, times
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        keys = list(marks.scan_iter(f"{namespace}:*"))
        if keys:
            marks.delete(*keys)


@pytest.mark.parametrize("backend_kind", ["redis", "sqlite"])
def test_concurrent_limit_holds_under_500_greenlets(backend_kind, tmp_path):
    require_server("Redis", "127.0.0.1", 6379)  # the holders' shared counter lives in Redis
    target = REDIS_URL if backend_kind == "redis" else str(tmp_path / "limits.sqlite3")
    reports, _ = _run_processes(backend_kind, target, "concurrent", limit=7)
    assert sum(r["done"] for r in reports) == 500
    # The first holders stay until 7 hold at once: the limit is reached, never passed.
    assert all(r["filled"] for r in reports), reports
    assert max(r["max"] for r in reports) == 7, reports
    assert_waiting_yields(reports)


@pytest.mark.parametrize("backend_kind", ["redis", "sqlite"])
def test_window_limit_holds_under_500_greenlets(backend_kind, tmp_path):
    require_server("Redis", "127.0.0.1", 6379)
    target = REDIS_URL if backend_kind == "redis" else str(tmp_path / "limits.sqlite3")
    limit, window = 100, 0.5
    reports, times = _run_processes(backend_kind, target, "window", limit=limit, window=window)
    assert sum(r["done"] for r in reports) == 500 and len(times) == 500
    assert all(before <= after for before, after in times)
    # Any `limit + 1` acquisitions span at least one window. Each lies between the times noted just
    # before and just after the back end call that took the slot, so the span of a group is at most
    # its latest "after" minus its earliest "before": however late a greenlet ran, that bound holds.
    # The back ends count in whole milliseconds: 2 ms of slack.
    tightest = tightest_span(times, limit + 1)
    assert tightest >= window - 0.002, tightest
    assert_waiting_yields(reports)


def tightest_span(times, size):
    """The least ``max(after) - min(before)`` over every group of ``size`` ``(before, after)`` pairs."""
    by_before = sorted(times)
    best = float("inf")
    for i, (first_before, first_after) in enumerate(by_before):
        later = sorted(after for _, after in by_before[i + 1:])  # the group's other members start later
        if len(later) < size - 1:
            break
        best = min(best, max(first_after, later[size - 2]) - first_before)
    return best


def assert_waiting_yields(reports):
    """While greenlets waited for the limiter, a ticker greenlet (10 ms sleeps) kept ticking: waiting
    left the hub to others. A wait that blocked the hub would let it tick a few times per pause
    of the back end (up to its 100 ms poll interval), far below this."""
    for r in reports:
        assert r["contended_s"] >= 0.2, r  # a phase long enough to say something
        assert r["ticks"] >= 0.3 * r["contended_s"] / 0.01, r  # 30 ticks a second of the 100 possible
