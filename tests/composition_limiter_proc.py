"""One process of the rate-limit tests: GREENLETS greenlets hammer one limiter under gevent.

Usage: python tests/composition_limiter_proc.py BACKEND TARGET NAMESPACE KIND GREENLETS LIMIT [WINDOW_S]

BACKEND ``redis`` (TARGET a URL) or ``sqlite`` (TARGET a file). KIND
``concurrent``: each greenlet holds the limiter for a few ms while a shared Redis
counter (``<ns>:holders``) counts holders; the highest count it saw is reported.
The first holders stay until LIMIT hold it at once (across all processes, flag
``<ns>:filled``), so a limiter that lets LIMIT in reaches LIMIT for certain.
KIND ``window``: each greenlet acquires once; each acquisition is recorded in
``<ns>:times`` as ``"before after"``, the ``time.time()`` just before and just
after the back end call that took the slot, so the instant the back end counted
lies in between whatever the scheduling.
A ticker greenlet counts its 10 ms ticks while some greenlet waits for the
limiter: ``ticks`` over ``contended_s`` seconds (from the go to the last
acquisition) says whether waiting left the hub to others.
Waits for the test's go (``<ns>:go``) so processes start together; prints one
JSON line with what it saw.
"""

import gevent.monkey

gevent.monkey.patch_all()

import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402

from greenq.rate_limits import ConcurrentRateLimiter, WindowRateLimiter  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"


def main():
    backend_kind, target, namespace, kind, greenlets, limit = sys.argv[1:7]
    greenlets, limit = int(greenlets), int(limit)
    marks = redis.Redis.from_url(REDIS_URL)
    if backend_kind == "redis":
        from greenq.rate_limits.redis import RedisBackend

        backend = RedisBackend(target, namespace=namespace, max_connections=32)
    else:
        from greenq.rate_limits.sqlite import SqliteBackend

        backend = SqliteBackend(path=target)
    if kind == "concurrent":
        limiter = ConcurrentRateLimiter(backend, "shared", limit=limit, ttl=60000)
    else:
        limiter = TimedWindowRateLimiter(backend, "shared", limit=limit, window=float(sys.argv[7]))
        limiter.record = lambda before, after: marks.rpush(f"{namespace}:times", f"{before!r} {after!r}")
    seen = {"max": 0, "done": 0, "ticks": 0, "filled": False, "contended_s": 0.0}
    waiting = [0]
    filled_key = f"{namespace}:filled"

    def wait_for_the_others():
        """Hold on until ``limit`` holders are in at once (someone sets the flag), 30 s at most."""
        deadline = time.monotonic() + 30
        while not seen["filled"] and time.monotonic() < deadline:
            if marks.get(filled_key):
                seen["filled"] = True
            else:
                gevent.sleep(0.005)

    def hold():
        waiting[0] += 1
        with limiter.acquire(timeout=None):
            waiting[0] -= 1
            seen["last_in"] = time.monotonic()
            if kind == "concurrent":
                holders = marks.incr(f"{namespace}:holders")
                seen["max"] = max(seen["max"], holders)
                if holders >= limit:
                    marks.set(filled_key, 1)
                    seen["filled"] = True
                if not seen["filled"]:
                    wait_for_the_others()
                time.sleep(random.uniform(0.001, 0.005))
                marks.decr(f"{namespace}:holders")
        seen["done"] += 1

    def tick():
        while True:
            if waiting[0]:
                seen["ticks"] += 1
            time.sleep(0.01)

    marks.rpush(f"{namespace}:ready", 1)
    marks.blpop(f"{namespace}:go", timeout=60)  # one token per process, pushed when all are ready
    go = time.monotonic()
    ticker = gevent.spawn(tick)  # only now: the wait above is not the contended phase
    gevent.joinall([gevent.spawn(hold) for _ in range(greenlets)], raise_error=True)
    ticker.kill()
    seen["contended_s"] = round(seen.pop("last_in") - go, 3)
    if kind == "concurrent":
        seen["filled"] = seen["filled"] or bool(marks.get(filled_key))
    print(json.dumps(seen), flush=True)
    backend.close()


class TimedWindowRateLimiter(WindowRateLimiter):
    """Notes when each successful try ran: before and after the back end call that took the slot."""

    record = None

    def _try(self, member):
        before = time.time()
        added = super()._try(member)
        if added:
            self.record(before, time.time())
        return added


if __name__ == "__main__":
    main()
