"""TimeLimit with deliveries of several limits at once, in threads mode and under gevent.

The middleware keeps one dict of deliveries per limit and a single timer armed
for the earliest deadline of all. These check the cases that design has to get
right: a shorter limit arriving while the timer waits for a longer one, a timer
that fires for a delivery that already finished and must re-arm for the next,
and a long delivery that is never touched. The same scenario runs here and in a
fresh gevent-patched process (tests/scripts/gevent_core.py).
"""

import threading
import time

import greenq
from greenq.brokers.stub import StubBroker
from greenq.middleware import TimeLimit
from support import run_under_gevent


def time_limit_scenario():
    """Run the checks in the current mode; return what was seen, as JSON-friendly data."""
    broker = StubBroker()
    seen = {"mode": greenq.concurrency.mode_name(), "outcomes": {}}
    started = {name: threading.Event() for name in ("long", "shorter", "quick", "late")}
    release = threading.Event()

    def overrun(name):
        """Sleep in short steps (a thread's interrupt lands between calls) until released or 30 s."""
        begin = time.monotonic()
        started[name].set()
        try:
            for _ in range(3000):
                if release.is_set():
                    seen["outcomes"][name] = "returned"
                    return
                time.sleep(0.01)
            seen["outcomes"][name] = "ran 30 s"
        except greenq.TimeLimitExceeded:
            seen["outcomes"][name] = "interrupted"
            seen[f"{name}_after"] = time.monotonic() - begin
            raise

    @greenq.actor(broker=broker, queue_name="long", time_limit=60000, max_retries=0)
    def long():
        overrun("long")

    @greenq.actor(broker=broker, time_limit=300, max_retries=0)
    def short(name):
        if name == "quick":
            started["quick"].set()
            seen["outcomes"]["quick"] = "returned"
            return
        overrun(name)

    worker = greenq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        # The timer waits for long's deadline, a minute away, when a 300 ms limit arrives.
        long.send()
        assert started["long"].wait(10)
        short.send("shorter")
        broker.join(short.queue_name, timeout=20000)
        # quick finishes at once and leaves the timer armed for its deadline; late starts
        # after it, so nothing arms for late's deadline: the timer must find quick gone,
        # and re-arm for late.
        short.send("quick")
        broker.join(short.queue_name, timeout=20000)
        short.send("late")
        broker.join(short.queue_name, timeout=20000)
        release.set()  # long, still well inside its minute, returns by itself
        broker.join(long.queue_name, timeout=20000)
        worker.join()
    finally:
        release.set()
        worker.stop()
    seen["dead"] = sorted(m.args[0] if m.args else m.actor_name for m in broker.dead_letters)
    limit = broker.get_middleware(TimeLimit)
    seen["left"] = {"bucket_of": len(limit._bucket_of), "expired": len(limit._expired),
                    "running": sum(len(running) for running in limit._running.values())}
    return seen


def check(result):
    assert result["outcomes"] == {"long": "returned", "shorter": "interrupted", "quick": "returned",
                                  "late": "interrupted"}, result
    # At their 300 ms limits, not after 30 s of sleeps (the bound is loose for a loaded machine).
    assert result["shorter_after"] < 10 and result["late_after"] < 10, result
    assert result["dead"] == ["late", "shorter"], result
    assert result["left"] == {"bucket_of": 0, "expired": 0, "running": 0}, result


def test_time_limits_in_threads_mode():
    result = time_limit_scenario()
    assert result["mode"] == "threads"
    check(result)


def test_time_limits_under_gevent():
    result, _ = run_under_gevent("time_limits")
    assert result["mode"] == "greenlets"
    check(result)
