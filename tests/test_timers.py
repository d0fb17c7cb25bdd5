"""``greenq.concurrency.Timer``: order, cancellation, failing callbacks, and no pile-up of cancelled timers.

TimeLimit re-arms its one timer as deliveries come and go, cancelling the one
before, so a cancelled timer must cost nothing once gone. The same scenario
runs in threads mode here and under gevent in a fresh patched process
(tests/scripts/gevent_core.py).
"""

import gc
import threading
import time
import weakref

from greenq import concurrency
from support import run_under_gevent


def _timers_in_use():
    if concurrency.using_gevent():
        return concurrency._timers_of_this_hub()._timers
    return concurrency._timer_thread._timers


def timer_scenario():
    """Run the checks in the current mode; return what was seen, as JSON-friendly data."""
    fired, done = [], threading.Event()
    # Threads mode shares one timer heap with whatever else this process runs (another test's
    # worker); count only the timers armed here.
    live_before = _timers_in_use().live

    def record(name):
        fired.append(name)
        if name == "last":
            done.set()

    def broken():
        raise RuntimeError("a timer callback's bug")

    chained_due = []

    def chain():
        # A callback that schedules a later timer must not hold up the earlier ones already waiting.
        chained_due.append(time.monotonic() + 5)
        concurrency.Timer(5, record, "chained")

    last_at = []

    def record_last(name):
        last_at.append(time.monotonic())
        record(name)

    # Scheduled out of order: the later-armed short timers must still fire first.
    concurrency.Timer(0.30, record_last, "last")
    concurrency.Timer(0.02, chain)
    concurrency.Timer(0.20, record, "third")
    concurrency.Timer(0.05, broken)
    concurrency.Timer(0.10, record, "second")
    concurrency.Timer(0.01, record, "first")
    concurrency.Timer(0.15, record, "cancelled").cancel()

    # A cancelled timer still in the heap must not keep its arguments (a time limit's message) alive
    # (few entries yet, so no rebuild of the heap drops it instead).
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    concurrency.Timer(3600, record, payload).cancel()
    del payload
    gc.collect()
    cancelled_args_freed = ref() is None

    # Thousands of long timers cancelled at once, as a busy worker's time limits are.
    timers = [concurrency.Timer(3600, record, "never") for _ in range(5000)]
    for timer in timers:
        timer.cancel()
    heap = _timers_in_use()
    after_cancel = {"heap": len(heap.heap), "live": heap.live - live_before}

    ok = done.wait(30)
    return {"mode": concurrency.mode_name(), "fired_in_time": ok, "fired": fired, "after_cancel": after_cancel,
            "cancelled_args_freed": cancelled_args_freed,
            "last_before_chained_was_due": bool(last_at and chained_due and last_at[0] < chained_due[0])}


def check(result):
    assert result["fired_in_time"]
    # In deadline order whatever the order of scheduling; the broken callback did not stop the rest.
    assert result["fired"] == ["first", "second", "third", "last"]
    # The 5,000 cancelled timers were dropped from the heap, not kept for their hour.
    assert result["after_cancel"]["heap"] <= 2048
    assert result["after_cancel"]["live"] <= 6
    assert result["cancelled_args_freed"]
    assert result["last_before_chained_was_due"]


def test_timers_in_threads_mode():
    result = timer_scenario()
    assert result["mode"] == "threads"
    check(result)


def test_timers_under_gevent():
    result, stderr = run_under_gevent("timers")
    assert result["mode"] == "greenlets"
    check(result)
    assert "a timer callback's bug" in stderr  # logged, not swallowed
