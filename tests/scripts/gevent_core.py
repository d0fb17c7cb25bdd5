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


def idle_queues():
    """One busy queue beside three idle ones: the idle consumers must not hold back pool slots.

    Each idle queue's consumer waits in a blocking fetch; if it kept its share
    of the capacity reserved meanwhile, the busy queue could not fill the pool.
    """
    broker = StubBroker()
    state = {"now": 0, "max": 0}
    all_in = threading.Event()
    size = 100

    @greenq.actor(broker=broker, queue_name="busy")
    def nap():
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        if state["now"] == size:
            all_in.set()
        all_in.wait(5)  # holds its greenlet until the whole pool runs at once (or 5 s pass)
        state["now"] -= 1

    idle = ("idle-a", "idle-b", "idle-c")
    wakers = [greenq.actor(lambda: None, broker=broker, actor_name=f"wake_{name}", queue_name=name)
              for name in ("busy", *idle)]
    # A fetch waits up to worker_timeout for a message: longer than the actors wait, so
    # an idle consumer that kept its share reserved would hold it through the whole test.
    worker = greenq.Worker(broker, worker_threads=size, worker_timeout=20000)
    worker.start()
    deadline = time.monotonic() + 30
    while not all(runner.consumer is not None for runner in worker._runners.values()):
        assert time.monotonic() < deadline, "consumers did not start"
        time.sleep(0.01)  # every consumer is now in its first (blocking) fetch
    nap.send_many([()] * size)
    broker.join("busy", timeout=60000)
    worker.join()
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    worker.stopping.wait(30)
    for waker in wakers:  # end the idle consumers' long fetches so stop() is quick
        waker.send()
    stopper.join(60)
    return {"max_in_flight": state["max"], "pool": size}


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
    seen["counts"] = broker.queue_counts(waiter.queue_name)
    return seen


def timers():
    """concurrency.Timer under gevent: the scenario tests/test_timers.py also runs in threads mode."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
    from test_timers import timer_scenario

    return timer_scenario()


def time_limits():
    """TimeLimit's one timer under gevent: the scenario tests/test_time_limits.py also runs in threads mode."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
    from test_time_limits import time_limit_scenario

    return time_limit_scenario()


def lookup_in_os_thread():
    """An OS thread that connects by host name after resolve_names_in_this_thread(): no resolver thread."""
    import os
    import socket

    def threads():
        return len(os.listdir("/proc/self/task"))

    seen = {}
    done = threading.Event()

    def connect(resolve_here):
        try:
            if resolve_here:
                concurrency.resolve_names_in_this_thread()
            before = threads()
            socket.create_connection(("localhost", 6379), timeout=10).close()
            seen["added"] = threads() - before
        except Exception as e:  # reported, not lost in a thread nobody joins
            seen["error"] = repr(e)
        done.set()

    import gevent

    gevent.get_hub()  # as in a worker: the hub runs before any OS thread of ours starts
    concurrency.start_os_thread(connect, sys.argv[2] == "here")
    done.wait(30)
    return seen


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
