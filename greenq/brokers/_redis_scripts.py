"""The Lua scripts behind ``RedisBroker``: every state change of a message is one of these.

A script runs atomically inside Redis, so a message is always in exactly one
place: ready (the ``queue`` list or the ``prio`` sorted set), delayed, held by one
consumer, or dead. Each script receives the queue's keys it uses, in the order
``SCRIPT_KEYS`` gives (all sharing the ``{namespace:queue}`` hash tag, hence one
Redis Cluster slot), then a consumer's ``held`` set where it needs one: Redis
parses and copies every key of every call, so a send is not passed the dead
letters' keys.

Per queue ``{ns:q}``:

==================  ======  ==========================================================
key                 type    holds
==================  ======  ==========================================================
``.msgs``           hash    message key -> payload (the JSON wire format)
``.queue``          list    keys ready at priority 0, oldest first (the hand-written
                            recipe RPUSHes here), plus empty wake-up tokens
``.prio``           zset    keys ready at priority > 0, score ``-priority*2^40 + seq``
``.delayed``        zset    keys waiting for their eta (score: eta, epoch ms)
``.pri``            hash    key -> priority, for messages with priority > 0
``.deliveries``     hash    key -> how many of its deliveries were lost with their consumer
                            (taken back by the reaper); absent while none was
``.heartbeats``     zset    consumer id -> last heartbeat (Redis server time, ms)
``.held.<cid>``     set     keys a consumer holds (in flight)
``.dead``           zset    dead keys by failure time (ms)
``.dead.msgs``      hash    dead key -> payload
``.dead.why``       hash    dead key -> failure, when the payload cannot carry it
``.meta``           hash    ``seq`` (ordering counter), ``tokens`` (wake-ups in .queue)
==================  ======  ==========================================================

Consumers block with a non-consuming ``BLMOVE queue queue RIGHT RIGHT``: it
returns as soon as the list holds anything, and takes nothing. Whatever makes a
message ready at priority > 0 also leaves one wake-up token in an empty list, so
a blocked consumer hears of it.
"""

QUEUE_KEYS = ("msgs", "queue", "prio", "delayed", "pri", "deliveries", "heartbeats",
              "dead", "dead.msgs", "dead.why", "meta")

#: Each queue key's Lua name and type.
_LUA = {"msgs": ("K_MSGS", "hash"), "queue": ("K_QUEUE", "list"), "prio": ("K_PRIO", "zset"),
        "delayed": ("K_DELAYED", "zset"), "pri": ("K_PRI", "hash"), "deliveries": ("K_DELIV", "hash"),
        "heartbeats": ("K_HB", "zset"), "dead": ("K_DEAD", "zset"), "dead.msgs": ("K_DEADMSGS", "hash"),
        "dead.why": ("K_DEADWHY", "hash"), "meta": ("K_META", "hash")}
_DEAD_KEYS = ("dead", "dead.msgs", "dead.why")
_READY_KEYS = ("pri", "prio", "queue", "meta")  # what make_ready() and next_seq() touch

#: The queue keys each script is passed, in order; those with a ``held`` set get it after them.
SCRIPT_KEYS = {
    "enqueue": ("msgs", "delayed", *_READY_KEYS),
    "fetch": QUEUE_KEYS,
    "ack": ("msgs", "pri", "deliveries"),
    "nack": ("msgs", "pri", "deliveries", "meta", *_DEAD_KEYS),
    "requeue": ("msgs", "heartbeats", *_READY_KEYS),
    "heartbeat": ("heartbeats",),
    "requeue_dead": ("msgs", *_READY_KEYS, *_DEAD_KEYS),
    "purge_dead": _DEAD_KEYS,
    "flush": QUEUE_KEYS,
    "counts": ("queue", "prio", "delayed", "heartbeats", "meta", *_DEAD_KEYS),
}
_HELD = {"fetch", "ack", "nack", "requeue"}


def _keys(script):
    """The Lua that names the keys ``script`` is passed, and ``expected(key)``, their types.

    A script whose code touches a key it is not passed fails in Redis
    ("nonexistent global variable") the first time that code runs, never
    silently on another key.
    """
    names = SCRIPT_KEYS[script]
    lines = [f"local {_LUA[name][0]} = KEYS[{i}]" for i, name in enumerate(names, 1)]
    if script in _HELD:
        lines.append(f"local K_HELD = KEYS[{len(names) + 1}]")
    types = ", ".join(f"[{_LUA[name][0]}] = '{_LUA[name][1]}'" for name in names)
    lines += [f"local function expected(key) return ({{{types}}})[key] end",
              "local SHIFT = 1099511627776",
              "local CHUNK = 1000  -- keys per batched command: well inside the stack that unpack() may fill"]
    return "\n" + "\n".join(lines) + "\n"


# The scripts' shared Lua, in pieces: each script is built from the pieces it uses, since Redis
# runs the whole text of a script, defining every helper in it again, on each call.
_TYPES = r"""
-- A key of ours holding another type (someone else's value) is renamed to <key>.invalid, not
-- crashed on: a command failing midway would leave the script's earlier writes done and the rest
-- not. The scripts that take in messages (enqueue, fetch, counts) call check_types() first. Their
-- hot path runs its commands through rcall(), which tries the command and, only if Redis answers
-- WRONGTYPE (the command did nothing), moves the key aside and runs it again: no TYPE at all while
-- the keys are sound. Rarer paths call own(key) before their first command on a key, which looks
-- at its type once. moved lists the renamed keys and their types, for the caller to log. In the
-- other scripts both are plain: own(key) is key, rcall() is redis.call().
local moved, checked = {}, nil
local function check_types()
  checked = {}
end
local function quarantine(key)
  checked[key] = true
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= expected(key) then
    redis.call('RENAME', key, key .. '.invalid')
    table.insert(moved, key)
    table.insert(moved, t)
  end
end
local function own(key)
  if checked and not checked[key] then quarantine(key) end
  return key
end
-- For commands that work on one type only: one that succeeds shows the key is sound (or absent).
local function rcall(cmd, key, ...)
  if not checked or checked[key] then return redis.call(cmd, key, ...) end
  local reply = redis.pcall(cmd, key, ...)
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'WRONGTYPE', 1, true) then error(reply) end
    quarantine(key)
    return redis.call(cmd, key, ...)
  end
  checked[key] = true
  return reply
end
"""

# next_seq(); it needs _TYPES.
_SEQ = r"""
local function next_seq()
  return redis.call('HINCRBY', own(K_META), 'seq', 1) % SHIFT
end
"""

# make_ready(); it needs _TYPES and _SEQ.
_READY = r"""

-- Make a stored message ready: at the back of its priority, or at the front when it returns unprocessed.
-- p: its priority when the caller knows it (else it is read from .pri).
local function make_ready(id, front, p)
  p = p or tonumber(redis.call('HGET', own(K_PRI), id) or '0') or 0
  if p > 0 then
    local score = -p * SHIFT
    if not front then score = score + next_seq() end
    redis.call('ZADD', own(K_PRIO), score, id)
    if redis.call('LLEN', own(K_QUEUE)) == 0 then
      redis.call('RPUSH', K_QUEUE, '')
      redis.call('HINCRBY', own(K_META), 'tokens', 1)
    end
  elseif front then
    redis.call('LPUSH', own(K_QUEUE), id)
  else
    redis.call('RPUSH', own(K_QUEUE), id)
  end
end
"""

# forget(); it needs _TYPES.
_FORGET = r"""
-- Drop what is stored about the keys in ids (at most CHUNK of them).
local function forget(ids)
  redis.call('HDEL', own(K_MSGS), unpack(ids))
  redis.call('HDEL', own(K_PRI), unpack(ids))
  redis.call('HDEL', own(K_DELIV), unpack(ids))
end
"""

# prune_dead(); it needs _TYPES.
_PRUNE = r"""
-- Drop up to limit dead letters older than ttl.
local function prune_dead(now, ttl, limit)
  for _, k in ipairs(redis.call('ZRANGEBYSCORE', own(K_DEAD), '-inf', now - ttl, 'LIMIT', 0, limit)) do
    redis.call('ZREM', K_DEAD, k)
    redis.call('HDEL', own(K_DEADMSGS), k)
    redis.call('HDEL', own(K_DEADWHY), k)
  end
end
"""

# dead_letter(); it needs _TYPES, _SEQ, _FORGET and _PRUNE.
_DEAD = r"""
local function dead_letter(id, payload, why, now, ttl)
  own(K_DEAD)
  own(K_DEADMSGS)
  own(K_DEADWHY)
  local key = id
  if redis.call('ZSCORE', K_DEAD, key) then key = id .. '.' .. next_seq() end
  redis.call('ZADD', K_DEAD, now, key)
  redis.call('HSET', K_DEADMSGS, key, payload)
  if why and why ~= '' then redis.call('HSET', K_DEADWHY, key, why) end
  forget({id})
  prune_dead(now, ttl, 100)
  redis.call('PEXPIRE', K_DEAD, ttl)
  redis.call('PEXPIRE', K_DEADMSGS, ttl)
  redis.call('PEXPIRE', K_DEADWHY, ttl)
end
"""

_TIME = r"""
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# ARGV: now_ms, then (key, payload, priority, eta or "") per message. Returns quarantined keys.
ENQUEUE = _keys("enqueue") + _TYPES + _SEQ + _READY + r"""
check_types()
local now = tonumber(ARGV[1])
-- Keys ready at priority 0 go onto the list in one RPUSH, in order; pushed before any
-- other kind of make_ready, which looks at the list's length.
local pending = {}
local function push_pending()
  if #pending > 0 then
    rcall('RPUSH', K_QUEUE, unpack(pending))
    pending = {}
  end
end
for i = 2, #ARGV, 4 do
  local id, payload, p, eta = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]) or 0, tonumber(ARGV[i + 3])
  if rcall('HSETNX', K_MSGS, id, payload) == 0 then
    id = id .. '.' .. next_seq()
    redis.call('HSET', K_MSGS, id, payload)
  end
  if p > 0 then rcall('HSET', K_PRI, id, p) end
  if eta and eta > now then
    rcall('ZADD', K_DELAYED, eta, id)
  elseif p > 0 then
    push_pending()
    make_ready(id, false, p)
  else
    table.insert(pending, id)
    if #pending >= CHUNK then push_pending() end
  end
end
push_pending()
return moved
"""

# KEYS + held. ARGV: now_ms, count, cid, max_deliveries, dead_ttl, heartbeat_timeout, key prefix.
# Returns {taken (key, payload, deliveries)*, missing keys, quarantined keys, reaped count,
#          keys dead-lettered for too many deliveries, next eta or false}.
FETCH = _keys("fetch") + _TYPES + _SEQ + _READY + _FORGET + _PRUNE + _DEAD + _TIME + r"""
local now, count, cid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local max_deliveries, ttl, hb_timeout, prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
check_types()
local rnow = server_ms()
rcall('ZADD', K_HB, rnow, cid)

-- The reaper: consumers silent for longer than the heartbeat timeout give back what they held.
local reaped, exhausted = 0, {}
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', K_HB, '-inf', rnow - hb_timeout, 'LIMIT', 0, 10)) do
  local hk = prefix .. '.held.' .. gone
  for _, id in ipairs(redis.call('SMEMBERS', hk)) do
    local payload = redis.call('HGET', own(K_MSGS), id)
    if payload then
      local n = redis.call('HINCRBY', own(K_DELIV), id, 1)  -- one more delivery lost with its consumer
      if n >= max_deliveries then
        dead_letter(id, payload, 'MaxDeliveriesExceeded: delivered ' .. n ..
          ' times and its worker died each time (heartbeat lost)', now, ttl)
        table.insert(exhausted, id)
      else
        make_ready(id, true)
        reaped = reaped + 1
      end
    end
  end
  redis.call('DEL', hk)
  redis.call('ZREM', K_HB, gone)
end

-- Promote due delayed messages, at most a bounded batch per call.
for _, id in ipairs(rcall('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', K_DELAYED, id)
  make_ready(id, false)
end

-- Take keys (popped from .prio or .queue) for this consumer, CHUNK at a time: a few commands per
-- batch, not per message. Returns how many were taken.
local taken, missing = {}, {}
local function take(ids)
  local got = 0
  for s = 1, #ids, CHUNK do
    local e = math.min(s + CHUNK - 1, #ids)
    local payloads = rcall('HMGET', K_MSGS, unpack(ids, s, e))
    local lost = rcall('HMGET', K_DELIV, unpack(ids, s, e))
    local held = {}
    for i = s, e do
      local id, payload = ids[i], payloads[i - s + 1]
      if payload then
        table.insert(held, id)
        table.insert(taken, id)
        table.insert(taken, payload)
        table.insert(taken, (tonumber(lost[i - s + 1]) or 0) + 1)  -- this delivery's number
      else
        if string.sub(id, 1, 1) == '{' then
          dead_letter('pushed-' .. next_seq(), id, 'DecodeError: the queue list holds a payload instead of a ' ..
            'message key (HSET the payload into .msgs, then RPUSH its key)', now, ttl)
        end
        table.insert(missing, id)
      end
    end
    if #held > 0 then redis.call('SADD', K_HELD, unpack(held)) end
    got = got + #held
  end
  return got
end

local got = 0
if count > 0 then
  local popped, ids = rcall('ZPOPMIN', K_PRIO, count), {}
  for i = 1, #popped, 2 do table.insert(ids, popped[i]) end
  got = take(ids)
end
local budget = count + 100  -- pops, wake-up tokens and missing keys included
while got < count and budget > 0 do
  local want = math.min(count - got, budget, CHUNK)
  local popped = rcall('LPOP', K_QUEUE, want)
  if not popped then break end
  budget = budget - #popped
  local ids, tokens = {}, 0
  for _, id in ipairs(popped) do
    if id == '' then tokens = tokens + 1 else table.insert(ids, id) end
  end
  if tokens > 0 and rcall('HINCRBY', K_META, 'tokens', -tokens) < 0 then
    redis.call('HSET', K_META, 'tokens', 0)
  end
  got = got + take(ids)
  if #popped < want then break end
end

local next_eta = false
local first = rcall('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
if first[2] then next_eta = first[2] end
return {taken, missing, moved, reaped, exhausted, next_eta}
"""

# KEYS + held. ARGV: keys. Forgets the messages this consumer still held. Returns how many.
ACK = _keys("ack") + _TYPES + _FORGET + r"""
local n = 0
for s = 1, #ARGV, CHUNK do
  local e = math.min(s + CHUNK - 1, #ARGV)
  local flags = redis.call('SMISMEMBER', K_HELD, unpack(ARGV, s, e))
  local mine = {}
  for i = s, e do
    if flags[i - s + 1] == 1 then table.insert(mine, ARGV[i]) end
  end
  if #mine > 0 then
    n = n + redis.call('SREM', K_HELD, unpack(mine))
    forget(mine)
  end
end
return n
"""

# KEYS + held. ARGV: now_ms, dead_ttl, then (key, payload, why or "") per message.
NACK = _keys("nack") + _TYPES + _SEQ + _FORGET + _PRUNE + _DEAD + r"""
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV, 3 do
  if redis.call('SREM', K_HELD, ARGV[i]) == 1 then
    dead_letter(ARGV[i], ARGV[i + 1], ARGV[i + 2], now, ttl)
    n = n + 1
  end
end
return n
"""

# KEYS + held. ARGV: cid, "all" or "some", then keys. Returns messages to the front of the queue
# as if never fetched; "all" also retires the consumer.
REQUEUE = _keys("requeue") + _TYPES + _SEQ + _READY + r"""
local ids = {}
if ARGV[2] == 'all' then
  ids = redis.call('SMEMBERS', K_HELD)
else
  for i = 3, #ARGV do table.insert(ids, ARGV[i]) end
end
local n = 0
for i = #ids, 1, -1 do
  local id = ids[i]
  if redis.call('SREM', K_HELD, id) == 1 and redis.call('HEXISTS', K_MSGS, id) == 1 then
    make_ready(id, true)  -- as if never fetched: a delivery given back is not a lost one
    n = n + 1
  end
end
if ARGV[2] == 'all' then
  redis.call('DEL', K_HELD)
  redis.call('ZREM', K_HB, ARGV[1])
end
return n
"""

# ARGV: cid. The heartbeat, in Redis server time so clocks of worker machines do not matter.
HEARTBEAT = _keys("heartbeat") + _TIME + r"""
redis.call('ZADD', K_HB, server_ms(), ARGV[1])
return 1
"""

# ARGV: (dead key, priority) pairs. Moves dead letters back to ready. Returns how many moved.
REQUEUE_DEAD = _keys("requeue_dead") + _TYPES + _SEQ + _READY + r"""
local n = 0
for i = 1, #ARGV, 2 do
  local key, p = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('ZREM', K_DEAD, key) == 1 then
    local payload = redis.call('HGET', K_DEADMSGS, key)
    redis.call('HDEL', K_DEADMSGS, key)
    redis.call('HDEL', K_DEADWHY, key)
    if payload then
      local id = key
      if redis.call('HSETNX', K_MSGS, id, payload) == 0 then
        id = key .. '.' .. next_seq()
        redis.call('HSET', K_MSGS, id, payload)
      end
      if p and p > 0 then redis.call('HSET', K_PRI, id, p) end
      make_ready(id, false)
      n = n + 1
    end
  end
end
return n
"""

PURGE_DEAD = _keys("purge_dead") + r"""
local n = redis.call('ZCARD', K_DEAD)
redis.call('DEL', K_DEAD, K_DEADMSGS, K_DEADWHY)
return n
"""

# ARGV: key prefix. Drops everything the queue holds, including what consumers hold.
FLUSH = _keys("flush") + r"""
if redis.call('TYPE', K_HB)['ok'] == 'zset' then
  for _, cid in ipairs(redis.call('ZRANGE', K_HB, 0, -1)) do
    redis.call('DEL', ARGV[1] .. '.held.' .. cid)
  end
end
redis.call('DEL', K_MSGS, K_QUEUE, K_PRIO, K_DELAYED, K_PRI, K_DELIV, K_HB, K_DEAD, K_DEADMSGS, K_DEADWHY, K_META)
return 1
"""

# ARGV: key prefix, now_ms, dead_ttl. Returns {ready, delayed, in_flight, dead}.
COUNTS = _keys("counts") + _TYPES + _PRUNE + r"""
check_types()
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
prune_dead(now, ttl, 1000)
local tokens = tonumber(redis.call('HGET', own(K_META), 'tokens') or '0') or 0
local ready = redis.call('ZCARD', own(K_PRIO)) + redis.call('LLEN', own(K_QUEUE)) - tokens
if ready < 0 then ready = 0 end
local held = 0
for _, cid in ipairs(redis.call('ZRANGE', own(K_HB), 0, -1)) do
  held = held + redis.call('SCARD', ARGV[1] .. '.held.' .. cid)
end
return {ready, redis.call('ZCARD', own(K_DELAYED)), held, redis.call('ZCARD', K_DEAD)}
"""

SCRIPTS = {
    "enqueue": ENQUEUE, "fetch": FETCH, "ack": ACK, "nack": NACK, "requeue": REQUEUE,
    "heartbeat": HEARTBEAT, "requeue_dead": REQUEUE_DEAD, "purge_dead": PURGE_DEAD,
    "flush": FLUSH, "counts": COUNTS,
}
