"""One process of the rate-limit tests: GREENLETS greenlets hammer one limiter under gevent.

Usage: python tests/composition_limiter_proc.py BACKEND TARGET NAMESPACE KIND GREENLETS LIMIT [WINDOW_S]

BACKEND ``redis`` (TARGET a URL) or ``sqlite`` (TARGET a file). KIND
``concurrent``: each greenlet holds the limiter for a few ms while a shared Redis
counter (``<ns>:holders``) counts holders; the highest count it saw is reported.
KIND ``window``: each greenlet acquires once and records when (``<ns>:times``).
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
        limiter = WindowRateLimiter(backend, "shared", limit=limit, window=float(sys.argv[7]))
    seen = {"max": 0, "done": 0, "ticks": 0}

    def hold():
        with limiter.acquire(timeout=None):
            if kind == "window":
                marks.rpush(f"{namespace}:times", repr(time.time()))
            else:
                holders = marks.incr(f"{namespace}:holders")
                seen["max"] = max(seen["max"], holders)
                time.sleep(random.uniform(0.001, 0.005))
                marks.decr(f"{namespace}:holders")
        seen["done"] += 1

    def tick():
        while True:
            seen["ticks"] += 1
            time.sleep(0.01)

    ticker = gevent.spawn(tick)
    marks.rpush(f"{namespace}:ready", 1)
    marks.blpop(f"{namespace}:go", timeout=60)  # one token per process, pushed when all are ready
    gevent.joinall([gevent.spawn(hold) for _ in range(greenlets)], raise_error=True)
    ticker.kill()
    print(json.dumps(seen), flush=True)
    backend.close()


if __name__ == "__main__":
    main()
