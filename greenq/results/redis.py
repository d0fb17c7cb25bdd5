"""Results in Redis: one small list per message id, so waiters block in Redis.

The result is the only element of ``<namespace>:result:<message id>``, which
expires after the TTL. A waiter runs ``BLMOVE key key RIGHT RIGHT`` (take nothing,
just wait until the list is not empty), so ``get_result(block=True)`` costs one
blocked connection and no polling, and any number of waiters see the same value.
Each key stands alone, so Redis Cluster serves it as is.
"""

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

    def _translated(self, call, *args):
        from ..brokers import redact_url
        from ..errors import ConnectionError as GreenqConnectionError

        try:
            return call(*args)
        except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError) as e:
            raise GreenqConnectionError(f"cannot reach the result back end at {redact_url(self.url)}: {e}") from None

    def _store(self, message_id, data, ttl):
        key = self.key(message_id)

        self._translated(lambda: self._put(keys=[key], args=[data, max(1, int(ttl))]))

    def _load(self, message_id):
        return self._translated(self.client.lindex, self.key(message_id), 0)

    def _wait(self, message_id, timeout):
        key = self.key(message_id)
        data = self._load(message_id)
        if data is not None or timeout <= 0:
            return data
        return self._translated(self.client.blmove, key, key, max(timeout, 0.01), "RIGHT", "RIGHT")

    def close(self):
        if self._owns_client:
            self.client.close()
