"""Run core scenarios under gevent in a fresh process; print one JSON line of findings.

Usage: python gevent_core.py SCENARIO. The test suite runs in threads mode, so
gevent behaviour is checked here, in a process patched before anything else.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import greenq  # noqa: E402
from greenq import concurrency  # noqa: E402
from greenq.brokers.stub import StubBroker  # noqa: E402


def concurrency_counter():
    """200 sleeping actors on a 200-greenlet pool: how many were in flight at once."""
    broker = StubBroker()
    state = {"now": 0, "max": 0}
    all_in = threading.Event()

    @greenq.actor(broker=broker)
    def nap():
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        if state["now"] == 200:
            all_in.set()
        all_in.wait(30)  # every actor holds its greenlet until all 200 run at once
        state["now"] -= 1

    nap.send_many([()] * 200)
    worker = greenq.Worker(broker, worker_threads=200, worker_timeout=100)
    worker.start()
    broker.join("default", timeout=60000)
    worker.join()
    worker.stop()
    return {"mode": concurrency.mode_name(), "max_in_flight": state["max"]}


def time_limit():
    """A sleeping greenlet past its time limit gets TimeLimitExceeded at once, not after its sleep."""
    broker = StubBroker()
    seen = {}

    @greenq.actor(broker=broker, time_limit=100)
    def sleeper():
        start = time.monotonic()
        try:
            time.sleep(30)
        except greenq.TimeLimitExceeded:
            seen["interrupted_after"] = time.monotonic() - start
            raise

    sleeper.send()
    worker = greenq.Worker(broker, worker_timeout=100)
    worker.start()
    broker.join("default", timeout=20000)
    worker.join()
    worker.stop()
    seen["dead"] = [m.options["failure"] for m in broker.dead_letters]
    return seen


def shutdown():
    """Worker.stop() sends Shutdown to a notify_shutdown actor blocked in IO."""
    broker = StubBroker()
    started = threading.Event()
    seen = {}

    @greenq.actor(broker=broker, notify_shutdown=True)
    def waiter():
        started.set()
        try:
            threading.Event().wait(30)
        except greenq.Shutdown:
            seen["shutdown"] = True
            raise

    waiter.send()
    worker = greenq.Worker(broker, worker_timeout=100)
    worker.start()
    started.wait(10)
    begin = time.monotonic()
    worker.stop(timeout=20000)
    seen["stop_seconds"] = time.monotonic() - begin
    seen["dead"] = len(broker.dead_letters)
    return seen


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
