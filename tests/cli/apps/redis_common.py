"""The Redis broker and a plain client for the apps under test, in the namespace TEST_NS.

The heartbeat timeout (TEST_HEARTBEAT_MS, 10 s by default) is how long a worker
may go unheard before its messages are taken back: long enough that a live
worker on a loaded machine is never taken for dead (which would run its messages
twice). A test that kills a worker and wants its messages back soon sets a
shorter one. A short sigkill_delay makes the TimeLimit watchdog act fast.
"""

import os

import redis

import greenq
from greenq.brokers.redis import RedisBroker
from greenq.middleware import TimeLimit, default_middleware

NS = os.environ["TEST_NS"]
URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

middleware = [TimeLimit(sigkill_delay=500) if isinstance(m, TimeLimit) else m for m in default_middleware()]
HEARTBEAT_MS = int(os.environ.get("TEST_HEARTBEAT_MS", "10000"))
broker = RedisBroker(url=URL, namespace=NS, heartbeat_timeout=HEARTBEAT_MS, middleware=middleware)
greenq.set_broker(broker)
# Enough connections for hundreds of greenlets blocking in BLPOP at once, and no socket timeout under them.
r = redis.Redis.from_url(URL, max_connections=2000, socket_timeout=None)


def key(name):
    return f"{NS}:{name}"
