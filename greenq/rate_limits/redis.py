"""Shaping state in Redis, shared by every process and machine that uses the same server.

Each key is one Redis key (a sorted set of members scored by their expiry, or a
string), changed by one Lua script that reads the clock with ``TIME``, so
processes on machines whose clocks differ still agree on windows. Each script
touches a single key, so Redis Cluster serves it as is.
"""

from .backend import RateLimiterBackend
from ..redis_client import given_or_new_client

_ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {0, count} end
local limit = tonumber(ARGV[2])
if limit >= 0 and count >= limit then return {0, count} end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, count + 1}
"""

_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

_DEBOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]))
local eta
if last and last > now then return -1 end
if ARGV[2] == '1' then eta = now + window
elseif (not last) or last + window <= now then eta = now
else eta = last + window end
redis.call('SET', KEYS[1], eta, 'PX', eta - now + window)
return eta - now
"""


class RedisBackend(RateLimiterBackend):
    """``RedisBackend(url=..., namespace="greenq", client=None)``, or ``RedisBackend.from_broker(broker)``.

    Keys are ``<namespace>:shaping:<key>``. ``client`` may be a ``redis.Redis``
    or a ``redis.cluster.RedisCluster``; no call blocks a connection while
    waiting, so the pool needs no more connections than greenlets that talk at once.
    """

    def __init__(self, url="redis://127.0.0.1:6379/0", *, namespace="greenq", client=None, max_connections=64,
                 poll_interval=100):
        super().__init__(poll_interval=poll_interval)
        import redis  # only when a Redis back end is built

        client, self._owns_client = given_or_new_client(client, url, max_connections=max_connections)
        self._redis = redis
        self.url = url
        self.client = client
        self.namespace = namespace
        self._scripts = {name: client.register_script(text)
                         for name, text in (("add", _ADD), ("count", _COUNT), ("debounce", _DEBOUNCE))}

    @classmethod
    def from_broker(cls, broker, **options):
        """Share a ``RedisBroker``'s client and namespace."""
        backend = cls(url=broker.url, namespace=broker.namespace, client=broker.client, **options)
        return backend

    def __repr__(self):
        from ..brokers import redact_url

        return f"RedisBackend(url={redact_url(self.url)!r}, namespace={self.namespace!r})"

    def key(self, key):
        return f"{self.namespace}:shaping:{key}"

    def _call(self, fn, *args, **kwargs):
        from ..brokers import redact_url
        from ..errors import ConnectionError as GreenqConnectionError

        try:
            return fn(*args, **kwargs)
        except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError) as e:
            raise GreenqConnectionError(
                f"cannot reach the rate-limit back end at {redact_url(self.url) or 'the given client'}: {e}") from None

    def _add(self, key, member, limit, ttl):
        added, count = self._call(self._scripts["add"], keys=[self.key(key)],
                                  args=[member, -1 if limit is None else int(limit), max(1, ttl)])
        return bool(added), int(count)

    def _remove(self, key, member):
        self._call(self.client.zrem, self.key(key), member)

    def _count(self, key):
        return int(self._call(self._scripts["count"], keys=[self.key(key)]))

    def _set_flag(self, key, ttl):
        self._call(self.client.set, self.key(key), 1, px=max(1, ttl))

    def _get_flag(self, key):
        return bool(self._call(self.client.exists, self.key(key)))

    def _debounce(self, key, window, always_delay):
        delay = int(self._call(self._scripts["debounce"], keys=[self.key(key)],
                               args=[max(1, window), "1" if always_delay else "0"]))
        return None if delay < 0 else delay

    def close(self):
        if self._owns_client:
            self.client.close()
