"""Results in Redis: one small list per message id, so waiters block in Redis.

The result is the only element of ``<namespace>:result:<message id>``, which
expires after the TTL. A waiter runs ``BLMOVE key key RIGHT RIGHT`` (take nothing,
just wait until the list is not empty), so ``get_result(block=True)`` costs one
blocked connection and no polling, and any number of waiters see the same value.
Each key stands alone, so Redis Cluster serves it as is.
"""

import time

from .backend import ResultBackend
from ..redis_client import given_or_new_client

# Replace the result atomically, in one round trip (also on Redis Cluster, where MULTI is awkward).
_PUT = """
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisBackend(ResultBackend):
    """``RedisBackend(url="redis://...", namespace="greenq", client=None)``.

    ``client`` may be a ``redis.Redis`` or a ``redis.cluster.RedisCluster``.
    Waiters share the client's pool, one connection each while they wait: size
    ``max_connections`` for the number of greenlets that block at once.
    """

    def __init__(self, url="redis://127.0.0.1:6379/0", *, namespace="greenq", client=None, max_connections=64):
        import redis  # only when a Redis back end is built: importing greenq.results must not need redis

        client, self._owns_client = given_or_new_client(client, url, max_connections=max_connections)
        self.client = client
        self.namespace = namespace
        self.url = url
        self._redis = redis
        self._put = client.register_script(_PUT)

    def key(self, message_id):
        return f"{self.namespace}:result:{message_id}"

    def _translated(self, key, call, *args):
        """Run a Redis call on ``key``, turning redis-py's errors into greenq's, naming the server or key."""
        from ..brokers import redact_url
        from ..errors import ConnectionError as GreenqConnectionError
        from ..errors import ResultError, ResultMissing

        errors = self._redis.exceptions
        try:
            return call(*args)
        except (errors.ConnectionError, errors.TimeoutError) as e:
            raise GreenqConnectionError(f"cannot reach the result back end at {redact_url(self.url)}: {e}") from None
        except errors.ResponseError as e:
            if str(e).startswith("WRONGTYPE"):  # someone else's value under our key: no result of ours there
                raise ResultMissing(f"the Redis key {key} holds a {self._type_of(key)}, not a greenq result "
                                    f"(a list); delete it or use another namespace") from None
            raise ResultError(f"the result back end at {redact_url(self.url)} refused a call on {key}: {e}") from None
        except errors.RedisError as e:
            raise ResultError(f"the result back end at {redact_url(self.url)} failed on {key}: {e}") from None

    def _type_of(self, key):
        try:
            kind = self.client.type(key)
        except self._redis.exceptions.RedisError:
            return "value of another type"
        return kind.decode() if isinstance(kind, bytes) else str(kind)

    def _store(self, message_id, data, ttl):
        key = self.key(message_id)
        self._translated(key, lambda: self._put(keys=[key], args=[data, max(1, int(ttl))]))

    def _load(self, message_id):
        key = self.key(message_id)
        return self._translated(key, self.client.lindex, key, 0)

    def _wait(self, message_id, timeout):
        from ..brokers.redis import blocking_wait

        key = self.key(message_id)
        deadline = time.monotonic() + timeout
        data = self._load(message_id)
        while data is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # In slices shorter than the client's socket timeout, which would otherwise cut a long wait short.
            data = self._translated(key, self.client.blmove, key, key, blocking_wait(self.client, max(left, 0.01)),
                                    "RIGHT", "RIGHT")
        return data

    def close(self):
        if self._owns_client:
            self.client.close()
