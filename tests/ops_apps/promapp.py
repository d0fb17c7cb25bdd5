"""An app with the Prometheus middleware on Redis (namespace TEST_NS), for tests/test_prometheus.py.

Each actor leaves a trace in Redis so the test knows what work was done
without trusting the metrics it checks.
"""

import os
import time

import redis

import greenq
from greenq.brokers.redis import RedisBroker
from greenq.middleware import Prometheus

NS = os.environ["TEST_NS"]
URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

broker = RedisBroker(url=URL, namespace=NS, heartbeat_timeout=1500)
broker.add_middleware(Prometheus())
greenq.set_broker(broker)
r = redis.Redis.from_url(URL, socket_timeout=None)


def key(name):
    return f"{NS}:{name}"


@greenq.actor
def ok(i):
    r.rpush(key("ok"), os.getpid())


@greenq.actor(queue_name="slowq")
def nap(ms):
    time.sleep(ms / 1000)
    r.rpush(key("nap"), os.getpid())


@greenq.actor(max_retries=1, min_backoff=100, max_backoff=100, jitter=False)
def flaky(name):
    """Fails on its first delivery, succeeds on the retry."""
    if r.incr(key(f"flaky:{name}")) == 1:
        raise RuntimeError("first try fails on purpose")
    r.rpush(key("flaky-done"), name)


@greenq.actor(max_retries=1, min_backoff=100, max_backoff=100, jitter=False)
def doomed(name):
    r.rpush(key("doomed"), name)
    raise ValueError("always fails on purpose")


@greenq.actor
def hold(i):
    """Runs until the test pushes a token on ``release``."""
    r.rpush(key("held"), os.getpid())
    if r.blpop(key("release"), timeout=60) is None:
        raise RuntimeError("never released")


@greenq.actor
def defer(seconds):
    """Enqueues ok(-1) with a delay from inside the worker: the delayed gauge counts it."""
    ok.send_with_options(args=(-1,), delay=int(seconds * 1000))
    r.rpush(key("deferred"), os.getpid())
