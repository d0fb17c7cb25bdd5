"""The Redis broker: at-least-once delivery, crash-safe, one queue per hash slot.

Every state change is one Lua script (see ``_redis_scripts``), so a message is
always in exactly one place: ready, delayed, held by one consumer, or dead.

Crash safety. Each consumer has an id and a ``held`` set in Redis; the broker
beats a heartbeat for every open consumer from a real OS thread, so a greenlet
hogging the hub cannot make its messages look abandoned. Each fetch also runs
the reaper: consumers whose heartbeat is older than ``heartbeat_timeout`` give
their messages back to the front of the queue, so after a ``kill -9`` they are
redelivered within ``heartbeat_timeout`` plus one fetch timeout. A message
delivered ``max_deliveries`` times without ever being settled (a job that
keeps killing its process) is dead-lettered instead of looping forever.

Costs. An idle consumer blocks in Redis (``BLMOVE`` on its own connection), so
it costs one idle connection and no polling. A fetch, an ack batch and an
``enqueue_many`` batch per queue are each one round trip. The broker's script
calls (sends, acks, dead letters) go over a ``ScriptLane`` of at most
``max_connections`` connections (see ``_redis_lane``), its other commands over
the client's ``BlockingConnectionPool`` of the same size, so hundreds of
greenlets sending at once wait for a connection instead of opening hundreds.
Inside Redis, whose one thread every worker shares, a fetch or an ack runs a
few commands per batch of up to 1000 messages rather than a few per message;
what remains per message is storing its payload and the script's own loop.

Needs Redis 6.2 or newer (``BLMOVE``, ``LPOP`` with a count, ``SMISMEMBER``).

Redis Cluster works: pass ``client=redis.cluster.RedisCluster(...)``. Each
queue's keys carry the hash tag ``{namespace:queue}`` and live in one slot.
"""

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager

from ..broker import DEAD_MESSAGE_TTL, Broker, Consumer
from ..errors import BrokerError, DecodeError
from ..redis_client import given_or_new_client
from ..errors import ConnectionError as GreenqConnectionError
from ..message import Message, MessageProxy, current_millis
from . import _redis_scripts, redact_url
from ._redis_lane import ScriptLane

logger = logging.getLogger("greenq.brokers.redis")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_id_counter = itertools.count()


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def blocking_wait(client, seconds):
    """How long one blocking command (``BLMOVE``) may wait on ``client``: ``seconds``, capped at half its
    socket timeout.

    redis-py 8 reads with a 5 s socket timeout by default, so a longer block ends in a
    ``TimeoutError`` although the connection is fine. Callers loop until their own
    deadline instead; the cost is one more round trip per idle slice.
    """
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:  # RedisCluster
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None) or {}
    timeout = kwargs.get("socket_timeout", 5.0)  # absent: the connection class's default, 5 s in redis-py 8
    if timeout is None:
        return seconds
    return min(seconds, max(0.01, timeout / 2))


def _is_cluster(client):
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


_THE_USUAL_WAY = object()


def _evalsha_on_a_pooled_connection(redis, client, script, keys, args):
    """EVALSHA on one connection of ``client``'s pool, past redis-py's per-command layers.

    For the clients that are not the broker's own (a consumer's, whose fetches
    share a connection with its ``BLMOVE``; the heartbeat thread's): the broker's
    own client has the faster ``ScriptLane``. redis-py's ``execute_command`` around
    a call (its retry wrapper, observability hooks, response callbacks) is a good
    part of its CPU: a ``PING`` costs 75-100 us, and going to the connection
    directly saves 20-25 us a call. The price, here and on the lane: these calls
    skip redis-py's command hooks (tracing that patches ``execute_command`` does
    not see them).

    Returns ``_THE_USUAL_WAY`` when the script is not loaded on the server (a
    restart, ``SCRIPT FLUSH``: nothing ran) or when no connection could be had or the
    connection broke mid-call (disconnected first, as redis-py does). The caller then
    goes through redis-py's own ``Script``, which loads the script and retries like
    any command: a call whose answer was lost may run twice (at-least-once, as with
    redis-py's own retries).
    """
    pool = client.connection_pool
    try:
        try:
            connection = pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants the command's name
            connection = pool.get_connection("EVALSHA")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return _THE_USUAL_WAY
    try:
        connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return connection.read_response()
    except redis.exceptions.NoScriptError:
        return _THE_USUAL_WAY
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        connection.disconnect()
        return _THE_USUAL_WAY
    finally:  # redis-py disconnects a connection itself when anything else interrupts a command
        pool.release(connection)


def _evalsha_on_the_lane(redis, lane, script, calls):
    """``[(keys, args)]`` as EVALSHA calls of ``script`` on one connection of the broker's ``ScriptLane``.

    All are written at once and their replies read in order (one round trip for
    a multi-queue ``send_many``). Calls Redis refused because it did not know the
    script (the first call, or after a restart or ``SCRIPT FLUSH``: they did not
    run) are sent again once it is loaded, on the same connection. Returns the
    replies in order, raises the first error a script itself returned, or returns
    ``_THE_USUAL_WAY`` when the connection broke mid-call (disconnected first): the
    caller then goes through redis-py, whose retries may run a call whose answer
    was lost a second time (at-least-once, never lost).
    """
    borrowed = lane.borrow()  # a full lane raises here: the caller's error, not a reason to fall back
    try:
        with borrowed as connection:  # disconnected on the way out unless every reply was read
            requests = [lane.pack(connection, script.sha, keys, args) for keys, args in calls]
            connection.connect()  # a no-op when connected
            replies = _replies(redis, connection, requests)
            unknown = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
            if unknown:
                connection.send_command("SCRIPT", "LOAD", script.script)
                connection.read_response()
                for i, reply in zip(unknown, _replies(redis, connection, [requests[i] for i in unknown])):
                    replies[i] = reply
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return _THE_USUAL_WAY
    for reply in replies:
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply  # the script's own error
    return replies


def _replies(redis, connection, requests):
    """Write ``requests`` in one go and read one reply each; an error reply is returned, not raised."""
    connection.send_packed_command((b"".join(requests),))
    replies = []
    for _ in requests:
        try:
            replies.append(connection.read_response())
        except redis.exceptions.ResponseError as e:  # read in full: the next reply follows
            replies.append(e)
    return replies


class RedisBroker(Broker):
    """A broker on Redis (or Redis Cluster) through redis-py.

    ``url``: ``redis://[:password@]host:port/db``, ``rediss://`` for TLS, or
    ``unix://``. ``namespace`` prefixes every key, so apps sharing one Redis do
    not see each other. ``heartbeat_timeout`` (ms): how long a consumer may stay
    silent before its messages are taken back. ``dead_message_ttl`` (ms): how
    long dead letters are kept. ``max_deliveries``: deliveries without a settle
    (crashes) before a message is dead-lettered. ``client``: a ready
    ``redis.Redis`` or ``redis.cluster.RedisCluster`` to use instead of ``url``.
    ``max_connections``: how many connections the process's greenlets and threads share
    for script calls, and again for other commands. Other keyword arguments
    (``socket_timeout``, ``parser_class``...) go to redis-py's connections, all of them.
    """

    def __init__(self, url=None, *, namespace="greenq", heartbeat_timeout=60000, dead_message_ttl=DEAD_MESSAGE_TTL,
                 max_deliveries=5, client=None, middleware=None, max_connections=64, **client_options):
        if not namespace or any(c in namespace for c in "{} "):
            raise ValueError(f"bad namespace {namespace!r}: it must be non-empty, without braces or spaces")
        if heartbeat_timeout <= 0 or max_deliveries < 1:
            raise ValueError("heartbeat_timeout must be > 0 ms and max_deliveries >= 1")
        import redis

        self._redis = redis
        super().__init__(middleware=middleware)
        self.url = url or (None if client is not None else DEFAULT_URL)
        self.namespace = namespace
        self.heartbeat_timeout = int(heartbeat_timeout)
        self.dead_message_ttl = int(dead_message_ttl)
        self.max_deliveries = int(max_deliveries)
        client, self._owns_client = given_or_new_client(client, self.url, max_connections=max_connections,
                                                        **client_options)
        self._client_options = client_options
        self.client = client
        self.cluster = _is_cluster(client)
        self._scripts = {name: client.register_script(text) for name, text in _redis_scripts.SCRIPTS.items()}
        self._lane = None if self.cluster or getattr(client, "connection", None) is not None else ScriptLane(client)
        self._keys = {}  # (queue name, script or None) -> keys_of(queue name, script)
        self._heartbeat = _Heartbeat(self)
        self._closed = False

    # --- naming ----------------------------------------------------------------------

    @property
    def where(self):
        """The Redis this broker talks to, safe to print."""
        if self.url:
            return redact_url(self.url)
        if self.cluster:
            nodes = self.client.get_nodes()
            return "redis-cluster(" + ", ".join(f"{n.host}:{n.port}" for n in nodes[:3]) + ")"
        kwargs = self.client.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def prefix(self, queue_name):
        """The hash-tagged prefix of one queue's keys, e.g. ``{greenq:default}``."""
        return "{%s:%s}" % (self.namespace, queue_name)

    def keys_of(self, queue_name, script=None):
        """The queue's keys that ``script`` is passed (``SCRIPT_KEYS``), or all of them in ``QUEUE_KEYS`` order;
        built once per queue and script (every script call needs them)."""
        keys = self._keys.get((queue_name, script))
        if keys is None:
            prefix = self.prefix(queue_name)
            names = _redis_scripts.QUEUE_KEYS if script is None else _redis_scripts.SCRIPT_KEYS[script]
            keys = self._keys[queue_name, script] = tuple(f"{prefix}.{name}" for name in names)
        return keys

    # --- plumbing --------------------------------------------------------------------

    @contextmanager
    def translated(self, action):
        """Turn redis-py's connection failures into greenq's ``ConnectionError``, naming the server."""
        redis = self._redis
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            detail = str(e)
            if self.url:
                from urllib.parse import urlsplit

                password = urlsplit(self.url).password
                if password:
                    detail = detail.replace(password, "***")
            raise GreenqConnectionError(f"cannot reach Redis at {self.where} while {action}: {detail}") from None
        except redis.exceptions.RedisError as e:
            raise BrokerError(f"Redis at {self.where} refused {action}: {e}{self._too_old_hint(e)}") from None

    #: The oldest Redis whose commands the scripts and consumers use (``BLMOVE``, ``LPOP`` with a count...).
    MIN_REDIS_VERSION = (6, 2)

    def _too_old_hint(self, error):
        """When ``error`` looks like a command this server lacks, and it is older than greenq needs, say so."""
        text = str(error).lower()
        if not any(s in text for s in ("unknown command", "unknown redis command", "wrong number of arg")):
            return ""
        try:
            version = str(self.client.info("server").get("redis_version", ""))
            found = tuple(int(part) for part in version.split(".")[:2])
        except Exception:  # a server that hides its version, or a second failure: keep the first error
            return ""
        if found >= self.MIN_REDIS_VERSION:
            return ""
        needed = ".".join(map(str, self.MIN_REDIS_VERSION))
        return f" (greenq needs Redis {needed} or newer; this server reports version {version})"

    def run(self, name, queue_name, args=(), client=None, extra_keys=()):
        """Run one of the scripts on a queue's keys."""
        client = client or self.client
        keys = self.keys_of(queue_name, name)
        if extra_keys:
            keys = (*keys, *extra_keys)
        script = self._scripts[name]
        if client is self.client and self._lane is not None:
            result = _evalsha_on_the_lane(self._redis, self._lane, script, [(keys, args)])
            if result is not _THE_USUAL_WAY:
                return result[0]
        elif not self.cluster and getattr(client, "connection", None) is None:  # a pool, not one fixed connection
            result = _evalsha_on_a_pooled_connection(self._redis, client, script, keys, args)
        else:
            result = _THE_USUAL_WAY
        if result is not _THE_USUAL_WAY:
            return result
        return script(keys=keys, args=list(args), client=client)

    def new_client(self):
        """A client with its own connections, for blocking calls and the heartbeat thread."""
        redis = self._redis
        if self.cluster:
            from redis.cluster import ClusterNode, RedisCluster

            nodes = [ClusterNode(n.host, n.port) for n in self.client.get_nodes()]
            return RedisCluster(startup_nodes=nodes)
        if self.url:
            return redis.Redis.from_url(self.url, **self._client_options)
        pool = self.client.connection_pool
        return redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class, **pool.connection_kwargs))

    def _warn_quarantined(self, queue_name, moved):
        for key, kind in zip(moved[::2], moved[1::2]):
            logger.warning("Redis key %s (queue %r) held a %s, not a greenq structure; renamed it to %s.invalid "
                           "and carried on.", _text(key), queue_name, _text(kind), _text(key))

    # --- the contract ----------------------------------------------------------------

    def _declare_queue(self, queue_name):
        """Nothing to create: Redis makes keys on first write."""

    def _enqueue(self, message, eta, priority):
        self._enqueue_many([(message, eta, priority)])

    def _enqueue_many(self, entries):
        """One script call per queue and 500 messages; all of them in one round trip."""
        by_queue = {}
        for message, eta, priority in entries:
            by_queue.setdefault(message.queue_name, []).append(
                (message.message_id, message.encode(), int(priority), "" if eta is None else int(eta)))
        now = current_millis()
        with self.translated(f"enqueueing {len(entries)} message(s)"):
            calls = []
            for queue_name, rows in by_queue.items():
                for start in range(0, len(rows), 500):
                    args = [now]
                    for row in rows[start:start + 500]:
                        args.extend(row)
                    calls.append((queue_name, args))
            if self.cluster or len(calls) == 1:
                results = [(q, self.run("enqueue", q, args)) for q, args in calls]
            else:
                replies = _THE_USUAL_WAY
                if self._lane is not None:
                    replies = _evalsha_on_the_lane(self._redis, self._lane, self._scripts["enqueue"],
                                                   [(self.keys_of(q, "enqueue"), args) for q, args in calls])
                if replies is _THE_USUAL_WAY:
                    replies = self._pipelined_enqueue(calls)
                results = list(zip([q for q, _ in calls], replies))
        for queue_name, moved in results:
            if moved:
                self._warn_quarantined(queue_name, moved)

    def _pipelined_enqueue(self, calls):
        """EVALSHA per queue in one redis-py pipeline (when the lane cannot); loads the script and replays
        only if Redis lost it.

        (redis-py's own script-in-pipeline support asks SCRIPT EXISTS first: a second round trip.)
        """
        script = self._scripts["enqueue"]
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for queue_name, args in calls:
                keys = self.keys_of(queue_name, "enqueue")
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
            if attempt == 1 and all(isinstance(r, self._redis.exceptions.NoScriptError) for r in results):
                script.sha = self.client.script_load(script.script)  # nothing ran: safe to replay
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results

    def enqueue_raw(self, queue_name, payload, priority=0):
        """Store bytes as they are under a fresh key, ready now (for other producers' tools and tests)."""
        self.declare_queue(queue_name)
        with self.translated("enqueueing a raw payload"):
            self.run("enqueue", queue_name, [current_millis(), f"raw-{uuid.uuid4().hex}", payload, priority, ""])

    def consume(self, queue_name, prefetch=1, timeout=1000):
        self.declare_queue(queue_name)
        return _RedisConsumer(self, queue_name, timeout / 1000)

    def _flush(self, queue_name):
        with self.translated(f"flushing queue {queue_name!r}"):
            self.run("flush", queue_name, [self.prefix(queue_name)])

    def queue_counts(self, queue_name):
        self._check_queue(queue_name)
        with self.translated("counting messages"):
            ready, delayed, in_flight, dead = self.run(
                "counts", queue_name, [self.prefix(queue_name), current_millis(), self.dead_message_ttl])
        return {"ready": int(ready), "delayed": int(delayed), "in_flight": int(in_flight), "dead": int(dead)}

    def _dead_entries(self, queue_name):
        """[(dead key, Message)] oldest first; undecodable payloads become placeholder messages."""
        keys = self.keys_of(queue_name)
        dead_key, dead_msgs, dead_why = keys[7], keys[8], keys[9]
        with self.translated("reading dead letters"):
            self.queue_counts(queue_name)  # prunes expired ones first
            entries = self.client.zrange(dead_key, 0, -1, withscores=True)
            if not entries:
                return []
            ids = [k for k, _ in entries]
            payloads = self.client.hmget(dead_msgs, ids)
            whys = self.client.hmget(dead_why, ids)
        out = []
        for (key, failed_at), payload, why in zip(entries, payloads, whys):
            key = _text(key)
            why = _text(why) if why is not None else None
            try:
                message = Message.decode(payload)
            except DecodeError as e:
                message = Message(
                    queue_name=queue_name, actor_name="<undecodable>", args=(), kwargs={},
                    options={"failure": why or f"DecodeError: {e.reason}", "failed_at": int(failed_at),
                             "raw": repr(payload)[:1000]},
                    message_id=e.message_id or key)
            else:
                extra = {}
                if "failure" not in message.options or why:
                    extra["failure"] = why or "failed"
                if "failed_at" not in message.options:
                    extra["failed_at"] = int(failed_at)
                if extra:
                    message = message.copy(options={**message.options, **extra})
            out.append((key, message))
        return out

    def dead_letters_of(self, queue_name):
        self._check_queue(queue_name)
        return [message for _, message in self._dead_entries(queue_name)]

    def requeue_dead(self, queue_name, message_ids=None):
        self._check_queue(queue_name)
        wanted = None if message_ids is None else set(message_ids)
        args = []
        for key, message in self._dead_entries(queue_name):
            if wanted is None or message.message_id in wanted:
                args += [key, self.priority_of(message)]
        if not args:
            return 0
        with self.translated("requeueing dead letters"):
            return int(self.run("requeue_dead", queue_name, args))

    def purge_dead(self, queue_name):
        self._check_queue(queue_name)
        with self.translated("purging dead letters"):
            return int(self.run("purge_dead", queue_name))

    def ping(self):
        with self.translated("pinging"):
            if self._lane is not None:
                self._lane.execute("PING")
            else:
                self.client.ping()

    def close(self):
        self._closed = True
        self._heartbeat.stop()
        if self._lane is not None:
            self._lane.close()
        if self._owns_client:
            self.client.close()

    def __repr__(self):
        return f"RedisBroker({self.where!r}, namespace={self.namespace!r})"


class _Heartbeat:
    """One real OS thread per broker beats for every open consumer.

    It runs outside the gevent hub, with its own Redis client, so a greenlet that
    never yields delays nothing here: its worker's messages stay its own. It costs
    one connection and one small script call per consumer every third of
    ``heartbeat_timeout``.
    """

    def __init__(self, broker):
        self.broker = broker
        self.consumers = {}  # cid -> queue name; written by the hub's thread, read here
        self.running = False
        self.started = False
        self._lock = threading.Lock()
        self.interval = max(0.05, broker.heartbeat_timeout / 3000)

    def add(self, cid, queue_name):
        self.consumers[cid] = queue_name
        with self._lock:
            if not self.started:
                self.started = self.running = True
                from ..concurrency import start_os_thread

                start_os_thread(self._loop, name="greenq-redis-heartbeat")

    def remove(self, cid):
        self.consumers.pop(cid, None)

    def stop(self):
        self.running = False

    def _loop(self):
        from ..concurrency import os_sleep, resolve_names_in_this_thread

        resolve_names_in_this_thread()
        client = None
        while self.running:
            os_sleep(self.interval)
            if not self.running:
                break
            try:
                if client is None:
                    client = self.broker.new_client()
                for cid, queue_name in list(self.consumers.items()):
                    self.broker.run("heartbeat", queue_name, [cid], client=client)
            except Exception as e:  # keep beating: a lost beat or two is what the timeout allows for
                logger.warning("Heartbeat to Redis at %s failed (%s: %s); retrying.", self.broker.where,
                               type(e).__name__, e)
                client = None
        if client is not None:
            client.close()


class _RedisConsumer(Consumer):
    """Fetches one queue for one worker; blocks in Redis when the queue is empty."""

    def __init__(self, broker, queue_name, timeout):
        self.broker = broker
        self.queue_name = queue_name
        self._iter_timeout = timeout
        self.cid = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.prefix = broker.prefix(queue_name)
        self.held_key = f"{self.prefix}.held.{self.cid}"
        self.queue_key = f"{self.prefix}.queue"
        self._blocking = None  # its own connection, since BLMOVE holds one for its whole wait
        self._closed = False
        # A script can run in Redis and its reply be lost with the connection (Redis killed or
        # restarted mid-call). Then this live, heartbeating consumer holds messages in Redis that
        # the worker never got, or already finished: nobody else would ever take them back.
        self._outstanding = set()  # receipts handed to the worker and not settled yet
        self._unacked = []  # receipts whose ack failed: acked again once Redis answers
        self._lost_reply = False
        broker._heartbeat.add(self.cid, queue_name)

    def _client(self):
        if self._blocking is None:
            self._blocking = self.broker.client if self.broker.cluster else self.broker.new_client()
        return self._blocking

    def fetch(self, count, timeout):
        deadline = time.monotonic() + timeout
        broker = self.broker
        while True:
            try:
                with broker.translated(f"fetching from queue {self.queue_name!r}"):
                    if self._lost_reply:
                        self._recover()
                    taken, next_eta = self._fetch_once(count)
            except GreenqConnectionError:
                self._lost_reply = True
                raise
            if taken:
                return taken
            wait = deadline - time.monotonic()
            if next_eta is not None:
                wait = min(wait, max(0.0, (next_eta - current_millis()) / 1000))
            if deadline - time.monotonic() <= 0:
                return []
            if wait >= 0.01:
                with broker.translated(f"waiting on queue {self.queue_name!r}"):
                    client = self._client()
                    client.blmove(self.queue_key, self.queue_key, blocking_wait(client, wait), "RIGHT", "RIGHT")
            elif wait > 0:
                time.sleep(wait)

    def _fetch_once(self, count):
        broker = self.broker
        taken, missing, moved, reaped, exhausted, next_eta = broker.run(
            "fetch", self.queue_name,
            [current_millis(), count, self.cid, broker.max_deliveries, broker.dead_message_ttl,
             broker.heartbeat_timeout, self.prefix],
            client=self._client(), extra_keys=[self.held_key])
        if moved:
            broker._warn_quarantined(self.queue_name, moved)
        for key in missing:
            logger.warning("Queue %r listed message key %r with no payload in %s.msgs; skipped it.",
                           self.queue_name, _text(key)[:200], self.prefix)
        if reaped:
            logger.warning("Took back %d message(s) on queue %r from worker(s) whose heartbeat stopped.",
                           reaped, self.queue_name)
        for key in exhausted:
            logger.error("Dead-lettered message %s on queue %r: delivered %d times, its worker died each time.",
                         _text(key), self.queue_name, broker.max_deliveries)
        messages, bad = [], []
        for i in range(0, len(taken), 3):
            key, payload, deliveries = _text(taken[i]), taken[i + 1], int(taken[i + 2])
            try:
                message = Message.decode(payload)
            except DecodeError as e:
                logger.error("Dead-lettering undecodable message %s on queue %r: %s", e.message_id or key,
                             self.queue_name, e.reason)
                bad += [key, payload, f"DecodeError: {e.reason}"]
                continue
            messages.append(MessageProxy(message, receipt=key, redelivered=deliveries > 1))
            self._outstanding.add(key)
        if bad:
            broker.run("nack", self.queue_name, [current_millis(), broker.dead_message_ttl] + bad,
                       extra_keys=[self.held_key])
        return messages, (None if next_eta in (None, False) else float(next_eta))

    def _recover(self):
        """After a lost reply: ack what failed to ack, and give back what the worker never got.

        Costs two or three round trips, once per outage. A message whose nack or
        requeue failed is given back too, so it may run again: at least once,
        never zero times.
        """
        if self._unacked:
            unacked, self._unacked = self._unacked, []
            self.broker.run("ack", self.queue_name, unacked, extra_keys=[self.held_key])
        held = {_text(key) for key in self._client().smembers(self.held_key)}
        stray = held - self._outstanding
        if stray:
            n = self.broker.run("requeue", self.queue_name, [self.cid, "some", *sorted(stray)],
                                extra_keys=[self.held_key])
            if n:
                logger.warning("Returned %d message(s) on queue %r that this worker held in Redis but never got "
                               "or could not settle (a reply was lost with the connection).", n, self.queue_name)
        self._lost_reply = False

    def _settle(self, name, args, action, receipts=()):
        try:
            with self.broker.translated(action):
                return self.broker.run(name, self.queue_name, args, extra_keys=[self.held_key])
        except GreenqConnectionError:
            self._lost_reply = True
            if name == "ack":
                self._unacked.extend(receipts)
            raise
        finally:
            self._outstanding.difference_update(receipts)

    def _warn_unheld(self, verb, messages, settled):
        """Warn about messages the scripts skipped: this consumer no longer held them (they were taken back)."""
        if settled is not None and int(settled) < len(messages):
            logger.warning(
                "Did not %s %d of %d message(s) on queue %r: consumer %s no longer holds them; its heartbeat "
                "lapsed and they went back to the queue, so another consumer may be running them.",
                verb, len(messages) - int(settled), len(messages), self.queue_name, self.cid)

    def ack(self, messages):
        if messages:
            receipts = [m.receipt for m in messages]
            self._warn_unheld("ack", messages,
                              self._settle("ack", receipts, f"acking {len(messages)} message(s)", receipts))

    def nack(self, messages):
        if not messages:
            return
        args = [current_millis(), self.broker.dead_message_ttl]
        for m in messages:
            args += [m.receipt, m.to_message().encode(), ""]
        self._warn_unheld("dead-letter", messages, self._settle(
            "nack", args, f"dead-lettering {len(messages)} message(s)", [m.receipt for m in messages]))

    def requeue(self, messages):
        if messages:
            receipts = [m.receipt for m in messages]
            self._warn_unheld("requeue", messages, self._settle(
                "requeue", [self.cid, "some"] + receipts, f"requeueing {len(messages)} message(s)", receipts))

    def close(self):
        """Give back everything still held, at once, and stop beating."""
        if self._closed:
            return
        self._closed = True
        self.broker._heartbeat.remove(self.cid)
        try:
            self._settle("requeue", [self.cid, "all"], "returning held messages")
        finally:
            if self._blocking is not None and self._blocking is not self.broker.client:
                self._blocking.close()
            self._blocking = None

    def _crash(self):
        """For tests: vanish like a killed process (no requeue, no more heartbeats)."""
        self._closed = True
        self.broker._heartbeat.remove(self.cid)
