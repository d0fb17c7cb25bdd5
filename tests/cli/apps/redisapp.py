"""Actors for the cross-process tests; each leaves its traces in Redis under TEST_NS."""

import os
import time

import greenq
from redis_common import broker, key, r  # noqa: F401 - broker is set as the global one


@greenq.actor
def slow(i, seconds):
    r.rpush(key("started"), i)
    time.sleep(seconds)
    r.rpush(key("done"), i)


@greenq.actor
def hold(name):
    """The first delivery records its pid and waits to be killed; the redelivery finishes."""
    attempt = r.incr(key(f"attempt:{name}"))
    r.rpush(key("holders"), os.getpid())
    if attempt == 1:
        time.sleep(120)
    r.rpush(key("done"), f"{name}:{attempt}")


@greenq.actor(time_limit=300)
def spin(name):
    """The first delivery loops on the CPU and never yields; the redelivery finishes."""
    attempt = r.incr(key(f"attempt:{name}"))
    r.rpush(key("holders"), os.getpid())
    if attempt == 1:
        while True:
            pass
    r.rpush(key("done"), f"{name}:{attempt}")


_state = {"current": 0, "peak": 0}


@greenq.actor
def barrier(i, total):
    """Waits until ``total`` of these run at once across all processes; records each process's peak.

    Leaves ``i`` in ``done``, so a message run twice shows.
    """
    _state["current"] += 1
    _state["peak"] = max(_state["peak"], _state["current"])
    r.hset(key("peak"), os.getpid(), _state["peak"])
    try:
        arrived = r.incr(key("arrived"))
        if arrived == total:
            r.rpush(key("release"), *([1] * total))
        if arrived <= total:
            if r.blpop(key("release"), timeout=60) is None:
                raise RuntimeError("the barrier was never released")
    finally:
        _state["current"] -= 1
    r.rpush(key("done"), i)


@greenq.actor
def whoami(i):
    with r.pipeline() as both:  # MULTI/EXEC: whoever sees the pid sees the index too
        both.rpush(key("pids"), os.getpid())
        both.rpush(key("ran"), i)
        both.execute()
