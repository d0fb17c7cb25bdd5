"""The Redis broker and a plain client for the apps under test, in the namespace TEST_NS.

A short heartbeat timeout makes a killed worker's messages come back in about
two seconds, and a short sigkill_delay makes the TimeLimit watchdog act fast.
"""

import os

import redis

import greenq
from greenq.brokers.redis import RedisBroker
from greenq.middleware import TimeLimit, default_middleware

NS = os.environ["TEST_NS"]
URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

middleware = [TimeLimit(sigkill_delay=500) if isinstance(m, TimeLimit) else m for m in default_middleware()]
broker = RedisBroker(url=URL, namespace=NS, heartbeat_timeout=1500, middleware=middleware)
greenq.set_broker(broker)
# Enough connections for hundreds of greenlets blocking in BLPOP at once, and no socket timeout under them.
r = redis.Redis.from_url(URL, max_connections=2000, socket_timeout=None)


def key(name):
    return f"{NS}:{name}"
