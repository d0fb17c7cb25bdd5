"""The store on Redis: every verb is one command or one Lua script, so it is atomic.

Keys, under the broker's namespace (``greenq`` by default)::

    <ns>:schedule:lease:<name>     the scheduler lease: holder id, with a TTL
    <ns>:schedule:state:<actor>    a hash: the last tick fired (compare-and-set), the pending
                                   claim, the contested ticks (see the scripts below)
    <ns>:started:<message id>      a one-element list, so waiters block in BLMOVE
    <ns>:cancelled:<message id>    set by message.cancel()
    <ns>:outcome:<message id>      "cancelled before start" / "cancelled while running"
    {<ns>:dq:<queue>}.ready|.items|.tries|.held      a data queue, one hash slot
    {<ns>:dq:<queue>}.dead.ready|...                  its dead letters, same slot

Costs: a scheduler pass is one ``HMGET`` per entry, firing a tick two script
calls (claim, confirm), plus one lease renewal every third of the lease TTL; a
worker starting a scheduled message runs one script. ``wait_started`` blocks
on one pooled connection, no polling (in slices under the client's socket
timeout); the cancel watcher runs one pipelined ``EXISTS`` per 100 ms per
worker process, only while messages are running.
"""

import time

from ..brokers import redact_url
from ..errors import BrokerError
from ..errors import ConnectionError as GreenqConnectionError
from ..message import current_millis
from ..redis_client import given_or_new_client
from .store import CONTESTED_KEPT, Claim, ScheduleState, Store

_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# The schedule of one actor is one hash (one key, so every script is cluster-safe). Fields:
#   last                         the last tick recorded (epoch ms)
#   ptick pprev pcopy pholder    the pending claim: its tick, the tick before it, the copy id, the firer
#   c:<tick>                     a contested tick -> the copy that runs it ('' until one starts)

_INIT = """
local cur = redis.call('HGET', KEYS[1], 'last')
if cur then return cur end
redis.call('HSET', KEYS[1], 'last', ARGV[1])
return ARGV[1]
"""

_SET = """
redis.call('HDEL', KEYS[1], 'ptick', 'pprev', 'pcopy', 'pholder')
redis.call('HSET', KEYS[1], 'last', ARGV[1])
return 1
"""

# ARGV: tick, copy ('' for a final claim), holder
_CLAIM = """
if redis.call('HEXISTS', KEYS[1], 'ptick') == 1 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'last')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'last', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'ptick', ARGV[1], 'pprev', cur or '', 'pcopy', ARGV[2], 'pholder', ARGV[3])
end
return 1
"""

_PENDING_FNS = """
local function pending_is(tick, copy)
  local p = redis.call('HMGET', KEYS[1], 'ptick', 'pcopy')
  return p[1] == tick and p[2] == copy
end
local function drop_pending()
  redis.call('HDEL', KEYS[1], 'ptick', 'pprev', 'pcopy', 'pholder')
end
"""

# ARGV: tick, copy
_CONFIRM = _PENDING_FNS + """
if pending_is(ARGV[1], ARGV[2]) then drop_pending() end
return 1
"""

# ARGV: tick, copy, contested ticks kept
_ABANDON = _PENDING_FNS + """
if not pending_is(ARGV[1], ARGV[2]) then return 0 end
local prev = redis.call('HGET', KEYS[1], 'pprev')
drop_pending()
if redis.call('HGET', KEYS[1], 'last') == ARGV[1] then
  if prev and prev ~= '' then redis.call('HSET', KEYS[1], 'last', prev) else redis.call('HDEL', KEYS[1], 'last') end
end
redis.call('HSETNX', KEYS[1], 'c:' .. ARGV[1], '')
local contested = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'c:' then contested[#contested + 1] = field end
end
local keep = tonumber(ARGV[3])
if #contested > keep then
  table.sort(contested, function(a, b) return tonumber(string.sub(a, 3)) < tonumber(string.sub(b, 3)) end)
  for i = 1, #contested - keep do redis.call('HDEL', KEYS[1], contested[i]) end
end
return 1
"""

# ARGV: tick, copy
_RUN = _PENDING_FNS + """
if pending_is(ARGV[1], ARGV[2]) then drop_pending() end
local field = 'c:' .. ARGV[1]
local runner = redis.call('HGET', KEYS[1], field)
if not runner then return 1 end
if runner == '' then redis.call('HSET', KEYS[1], field, ARGV[2]) return 1 end
if runner == ARGV[2] then return 1 end
return 0
"""

_MARK = """
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: ready items tries held dead.ready dead.items dead.tries
# ARGV: now count vis attempts use_dead queue_name
_DQ_GET = """
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
for i = #expired, 1, -1 do
  local id = expired[i]
  redis.call('ZREM', KEYS[4], id)
  local tries = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  if tries < tonumber(ARGV[4]) then
    redis.call('LPUSH', KEYS[1], id)
  else
    local item = redis.call('HGET', KEYS[2], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    if ARGV[5] == '1' and item then
      redis.call('HSET', KEYS[6], id, '{"queue":' .. cjson.encode(ARGV[6]) .. ',"attempts":' .. tostring(tries)
        .. ',"dead_at":' .. ARGV[1] .. ',"item":' .. item .. '}')
      redis.call('HSET', KEYS[7], id, 0)
      redis.call('RPUSH', KEYS[5], id)
    end
  end
end
local out = {}
local vis = tonumber(ARGV[3])
for i = 1, tonumber(ARGV[2]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local item = redis.call('HGET', KEYS[2], id)
  if item then
    if vis > 0 then
      redis.call('HINCRBY', KEYS[3], id, 1)
      redis.call('ZADD', KEYS[4], now + vis, id)
    else
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
    end
    out[#out + 1] = id
    out[#out + 1] = item
  end
end
return out
"""

# KEYS: held; ARGV: deadline, ids...
_DQ_REFRESH = """
local out = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

# KEYS: items tries held; ARGV: ids...
_DQ_DONE = """
local out = {}
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[3], ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

# KEYS: ready items tries; ARGV: (id, json)...
_DQ_PUT = """
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[3], ARGV[i], 0)
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
return 1
"""


def _text(value):
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


class RedisStore(Store):
    """``RedisStore(url="redis://...", namespace="greenq")`` or ``RedisStore(client=..., namespace=...)``."""

    def __init__(self, url=None, *, client=None, namespace="greenq", max_connections=64):
        import redis

        self._redis = redis
        if client is None:
            url = url or "redis://127.0.0.1:6379/0"
        client, self._owns_client = given_or_new_client(client, url, max_connections=max_connections)
        self.client = client
        self.url = url
        self.namespace = namespace
        self._scripts = {name: client.register_script(text) for name, text in (
            ("lease", _LEASE), ("release", _RELEASE), ("init", _INIT), ("set", _SET), ("claim", _CLAIM),
            ("confirm", _CONFIRM), ("abandon", _ABANDON), ("run", _RUN),
            ("mark", _MARK), ("dq_get", _DQ_GET), ("dq_refresh", _DQ_REFRESH), ("dq_done", _DQ_DONE),
            ("dq_put", _DQ_PUT))}

    def __repr__(self):
        return f"RedisStore({redact_url(self.url) or 'client'!r}, namespace={self.namespace!r})"

    def _call(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError) as e:
            raise GreenqConnectionError(
                f"cannot reach the Redis store at {redact_url(self.url) or 'the given client'} while {what}: {e}"
            ) from None
        except self._redis.exceptions.RedisError as e:
            raise BrokerError(f"the Redis store refused {what}: {e}") from None

    def _run(self, what, name, keys, args):
        return self._call(what, self._scripts[name], keys=keys, args=args)

    def _key(self, *parts):
        return ":".join((self.namespace,) + parts)

    # --- leases and ticks --------------------------------------------------------------

    def acquire_lease(self, name, holder, ttl):
        return bool(self._run("taking the scheduler lease", "lease", [self._key("schedule", "lease", name)],
                              [holder, max(1, int(ttl))]))

    def release_lease(self, name, holder):
        self._run("releasing the scheduler lease", "release", [self._key("schedule", "lease", name)], [holder])

    def _schedule(self, key):
        return self._key("schedule", "state", key)

    def schedule_state(self, key):
        last, tick, copy, holder = self._call("reading a schedule", self.client.hmget, self._schedule(key),
                                              ["last", "ptick", "pcopy", "pholder"])
        pending = None if tick is None else Claim(int(tick), _text(copy), _text(holder) or None)
        return ScheduleState(None if last is None else int(last), pending)

    def init_fired(self, key, tick):
        return int(self._run("recording a schedule", "init", [self._schedule(key)], [int(tick)]))

    def set_fired(self, key, tick):
        self._run("recording a schedule", "set", [self._schedule(key)], [int(tick)])

    def claim_tick(self, key, tick, copy=None, holder=None):
        return bool(self._run("claiming a tick", "claim", [self._schedule(key)],
                              [int(tick), copy or "", holder or ""]))

    def confirm_tick(self, key, tick, copy):
        self._run("confirming a tick", "confirm", [self._schedule(key)], [int(tick), copy])

    def abandon_tick(self, key, tick, copy):
        return bool(self._run("abandoning a claim", "abandon", [self._schedule(key)],
                              [int(tick), copy, CONTESTED_KEPT]))

    def claim_run(self, key, tick, copy):
        return bool(self._run("checking a scheduled run", "run", [self._schedule(key)], [int(tick), copy]))

    # --- started / cancelled ---------------------------------------------------------------

    def mark_started(self, message_id, ttl):
        self._run("marking a message started", "mark", [self._key("started", message_id)], [1, max(1, int(ttl))])

    def wait_started(self, message_id, timeout):
        key = self._key("started", message_id)
        if self._call("reading a start mark", self.client.exists, key):
            return True
        from ..brokers.redis import blocking_wait

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            # BLMOVE onto itself takes nothing: it only waits until the list has an element. In slices
            # shorter than the client's socket timeout, which would otherwise cut a long wait short.
            found = self._call("waiting for a start mark", self.client.blmove, key, key,
                               blocking_wait(self.client, max(left, 0.01)), "RIGHT", "RIGHT")
            if found is not None:
                return True

    def mark_cancelled(self, message_id, ttl):
        self._call("marking a message cancelled", self.client.set, self._key("cancelled", message_id), 1,
                   px=max(1, int(ttl)))

    def cancelled_among(self, message_ids):
        ids = list(message_ids)
        if not ids:
            return set()

        def look():
            pipe = self.client.pipeline(transaction=False)
            for message_id in ids:
                pipe.exists(self._key("cancelled", message_id))
            return pipe.execute()

        return {m for m, hit in zip(ids, self._call("reading cancel marks", look)) if hit}

    def set_outcome(self, message_id, outcome, ttl):
        self._call("recording an outcome", self.client.set, self._key("outcome", message_id), outcome,
                   px=max(1, int(ttl)))

    def get_outcome(self, message_id):
        return _text(self._call("reading an outcome", self.client.get, self._key("outcome", message_id)))

    # --- data queues -------------------------------------------------------------------------

    def _dq_keys(self, queue):
        base, dead = (queue[:-5], ".dead") if queue.endswith(".dead") else (queue, "")
        tag = "{%s:dq:%s}%s" % (self.namespace, base, dead)
        return [f"{tag}.ready", f"{tag}.items", f"{tag}.tries", f"{tag}.held"]

    def dq_put(self, queue, entries):
        ready, items, tries, _ = self._dq_keys(queue)
        for start in range(0, len(entries), 500):
            args = [part for entry in entries[start:start + 500] for part in entry]
            self._run(f"putting data in {queue!r}", "dq_put", [ready, items, tries], args)

    def dq_get(self, queue, count, vis_timeout, attempts, dead_queue):
        # The dead keys are passed even when unused, so the script names every key it could touch.
        keys = self._dq_keys(queue) + self._dq_keys(dead_queue or queue + ".dead")[:3]
        flat = self._run(f"getting data from {queue!r}", "dq_get", keys,
                         [current_millis(), count, int(vis_timeout), attempts, 1 if dead_queue else 0, queue])
        return [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    def dq_refresh(self, queue, ids, vis_timeout):
        if not ids:
            return []
        held = self._dq_keys(queue)[3]
        found = self._run(f"refreshing data in {queue!r}", "dq_refresh", [held],
                          [current_millis() + int(vis_timeout)] + list(ids))
        return [_text(i) for i in found]

    def dq_done(self, queue, ids):
        if not ids:
            return []
        _, items, tries, held = self._dq_keys(queue)
        return [_text(i) for i in self._run(f"finishing data in {queue!r}", "dq_done", [items, tries, held], list(ids))]

    def dq_counts(self, queue, attempts, dead_queue):
        self.dq_get(queue, 0, 0, attempts, dead_queue)
        ready, _, _, held = self._dq_keys(queue)

        def count():
            pipe = self.client.pipeline(transaction=False)
            pipe.llen(ready)
            pipe.zcard(held)
            return pipe.execute()

        n_ready, n_held = self._call(f"counting data in {queue!r}", count)
        return {"ready": n_ready, "held": n_held}

    def flush_data(self, queue):
        """Drop a data queue and its dead letters (for tests)."""
        keys = self._dq_keys(queue) + self._dq_keys(queue + ".dead")
        self._call("flushing data", self.client.delete, *keys)

    def close(self):
        if self._owns_client:
            self.client.close()
