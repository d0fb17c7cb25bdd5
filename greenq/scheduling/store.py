"""The state store behind schedules, cancellation and data queues: one interface, three back ends.

Periodic tasks, ``wait_started``/``cancel`` and ``DataQueue`` all need a little
state shared by every process of a deployment. Each back end kind implements
the verbs below once (``MemoryStore`` here for tests with ``StubBroker``,
``RedisStore`` and ``SqliteStore`` beside it), so the features on top never
know where their state lives. Every verb is one atomic step in the back end (a
Lua script, one SQLite transaction, or a lock): that is what lets two
schedulers race for a tick and only one win it (see ``scheduler``).

``store_for(broker=, url=)`` picks one: an explicit store or URL wins; else a
``RedisBroker`` or ``SqliteBroker`` lends its connection (same Redis and
namespace, same SQLite file); a ``StubBroker`` gets a memory store of its own.
A RabbitMQ deployment must name one (``url="redis://..."`` or
``url="sqlite:///path"``), since RabbitMQ cannot hold this kind of state.

Times are epoch milliseconds; TTLs and visibility timeouts are milliseconds.
"""

import collections
import json
import threading
import time
import weakref

from ..errors import GreenqError
from ..message import current_millis


class StoreError(GreenqError):
    """No store can be derived, or a store was misconfigured."""


ScheduleState = collections.namedtuple("ScheduleState", "last pending")
Claim = collections.namedtuple("Claim", "tick copy holder")

CONTESTED_KEPT = 16  # contested ticks remembered per schedule (see ``Store.abandon_tick``)


class Store:
    """What a back end implements. See the module docstring for the units."""

    # --- leases and ticks (the scheduler) -------------------------------------------

    def acquire_lease(self, name, holder, ttl):
        """Take the lease ``name`` for ``holder`` for ``ttl`` ms, or renew it; False if another holds it."""
        raise NotImplementedError

    def release_lease(self, name, holder):
        """Give the lease up, if ``holder`` has it."""
        raise NotImplementedError

    def schedule_state(self, key):
        """``ScheduleState(last, pending)``: the last tick recorded for ``key`` (or None) and its unconfirmed claim.

        ``pending`` is a ``Claim(tick, copy, holder)`` while a firer has claimed
        ``tick`` but not yet confirmed that its message went out, else None.
        """
        raise NotImplementedError

    def last_fired(self, key):
        """The last tick recorded for ``key``, or None."""
        return self.schedule_state(key).last

    def init_fired(self, key, tick):
        """Record ``tick`` for ``key`` unless something is recorded; return what is recorded now."""
        raise NotImplementedError

    def set_fired(self, key, tick):
        """Overwrite the record of ``key`` with ``tick`` and drop its claim (re-baselining a schedule; tests)."""
        raise NotImplementedError

    def claim_tick(self, key, tick, copy=None, holder=None):
        """Record ``tick`` for ``key`` if it is later than the recorded one and no claim is unconfirmed.

        True for the one caller that did. With ``copy`` (the id of the message
        copy about to be sent) the claim stays pending until ``confirm_tick``;
        without it (a tick skipped by policy) it is final at once.
        """
        raise NotImplementedError

    def confirm_tick(self, key, tick, copy):
        """The message copy ``copy`` for ``tick`` went out: drop the pending claim, if it is still this one."""
        raise NotImplementedError

    def abandon_tick(self, key, tick, copy):
        """Undo the pending claim ``(tick, copy)``, whose send failed or whose firer stopped before confirming.

        Puts the previous tick back, so the tick is decided again, and marks it
        contested: a copy that did go out and any copy sent again then settle
        in ``claim_run`` which one runs. True if the claim was still pending.
        """
        raise NotImplementedError

    def claim_run(self, key, tick, copy):
        """Whether the message copy ``copy`` of ``tick`` is the one to run (called as a worker starts it).

        Confirms the pending claim if it is this copy's. For a contested tick
        the first copy to start becomes its runner; it may run again (a
        redelivery), any other copy is a duplicate. Uncontested: always True.
        """
        raise NotImplementedError

    # --- started / cancelled messages -------------------------------------------------

    def mark_started(self, message_id, ttl):
        raise NotImplementedError

    def wait_started(self, message_id, timeout):
        """Block up to ``timeout`` seconds until the message is marked started; return whether it is."""
        raise NotImplementedError

    def mark_cancelled(self, message_id, ttl):
        raise NotImplementedError

    def cancelled_among(self, message_ids):
        """The subset of ``message_ids`` that are marked cancelled (one round trip)."""
        raise NotImplementedError

    def set_outcome(self, message_id, outcome, ttl):
        raise NotImplementedError

    def get_outcome(self, message_id):
        raise NotImplementedError

    # --- data queues ------------------------------------------------------------------

    def dq_put(self, queue, entries):
        """Append ``[(id, json text), ...]`` to the queue."""
        raise NotImplementedError

    def dq_get(self, queue, count, vis_timeout, attempts, dead_queue):
        """Reclaim expired items, then hand out up to ``count`` as ``[(id, json text)]``.

        With ``vis_timeout <= 0`` items leave the queue as they are handed out.
        An expired item delivered ``attempts`` times goes to ``dead_queue`` (a
        queue name) wrapped as ``{"queue", "item", "attempts", "dead_at"}``, or
        is dropped when ``dead_queue`` is None.
        """
        raise NotImplementedError

    def dq_refresh(self, queue, ids, vis_timeout):
        """Extend the visibility of the held ids; return those still held."""
        raise NotImplementedError

    def dq_done(self, queue, ids):
        """Remove the held ids for good; return those that were held."""
        raise NotImplementedError

    def dq_counts(self, queue, attempts, dead_queue):
        """``{"ready": n, "held": n}`` after reclaiming expired items."""
        raise NotImplementedError

    def close(self):
        """Release connections the store opened itself."""


def dead_entry(queue, item_json, attempts, now):
    """The JSON text a dead item is stored as (the same layout in every back end)."""
    return '{"queue":%s,"attempts":%d,"dead_at":%d,"item":%s}' % (json.dumps(queue), attempts, now, item_json)


class MemoryStore(Store):
    """State in this process's memory, for tests with ``StubBroker``. Not shared between processes."""

    def __init__(self):
        self._cond = threading.Condition()
        self._leases = {}    # name -> (holder, expires monotonic)
        self._ticks = {}     # key -> tick
        self._pending = {}   # key -> (tick, previous tick, copy, holder): claimed, send not confirmed
        self._contested = {}  # key -> {tick: copy that runs it, or None}
        self._marks = {}     # (kind, message id) -> (value, expires monotonic)
        self._queues = {}    # queue -> {"ready": [ids], "items": {}, "tries": {}, "held": {id: deadline}}

    def acquire_lease(self, name, holder, ttl):
        with self._cond:
            current = self._leases.get(name)
            if current is None or current[0] == holder or current[1] <= time.monotonic():
                self._leases[name] = (holder, time.monotonic() + ttl / 1000)
                return True
            return False

    def release_lease(self, name, holder):
        with self._cond:
            if self._leases.get(name, (None,))[0] == holder:
                del self._leases[name]

    def schedule_state(self, key):
        with self._cond:
            pending = self._pending.get(key)
            return ScheduleState(self._ticks.get(key),
                                 None if pending is None else Claim(pending[0], pending[2], pending[3]))

    def init_fired(self, key, tick):
        with self._cond:
            return self._ticks.setdefault(key, tick)

    def set_fired(self, key, tick):
        with self._cond:
            self._ticks[key] = tick
            self._pending.pop(key, None)

    def claim_tick(self, key, tick, copy=None, holder=None):
        with self._cond:
            if key in self._pending or self._ticks.get(key, -1) >= tick:
                return False
            previous = self._ticks.get(key)
            self._ticks[key] = tick
            if copy is not None:
                self._pending[key] = (tick, previous, copy, holder)
            return True

    def confirm_tick(self, key, tick, copy):
        with self._cond:
            pending = self._pending.get(key)
            if pending is not None and pending[0] == tick and pending[2] == copy:
                del self._pending[key]

    def abandon_tick(self, key, tick, copy):
        with self._cond:
            pending = self._pending.get(key)
            if pending is None or pending[0] != tick or pending[2] != copy:
                return False
            del self._pending[key]
            if self._ticks.get(key) == tick:
                if pending[1] is None:
                    self._ticks.pop(key, None)
                else:
                    self._ticks[key] = pending[1]
            contested = self._contested.setdefault(key, {})
            contested.setdefault(tick, None)
            for old in sorted(contested)[:-CONTESTED_KEPT]:
                del contested[old]
            return True

    def claim_run(self, key, tick, copy):
        with self._cond:
            pending = self._pending.get(key)
            if pending is not None and pending[0] == tick and pending[2] == copy:
                del self._pending[key]
            contested = self._contested.get(key, {})
            if tick not in contested:
                return True
            if contested[tick] is None:
                contested[tick] = copy
            return contested[tick] == copy

    def _mark(self, kind, message_id, value, ttl):
        with self._cond:
            self._marks[(kind, message_id)] = (value, time.monotonic() + ttl / 1000)
            self._cond.notify_all()

    def _read(self, kind, message_id):
        entry = self._marks.get((kind, message_id))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def mark_started(self, message_id, ttl):
        self._mark("started", message_id, True, ttl)

    def wait_started(self, message_id, timeout):
        with self._cond:
            return bool(self._cond.wait_for(lambda: self._read("started", message_id), timeout))

    def mark_cancelled(self, message_id, ttl):
        self._mark("cancelled", message_id, True, ttl)

    def cancelled_among(self, message_ids):
        with self._cond:
            return {m for m in message_ids if self._read("cancelled", m)}

    def set_outcome(self, message_id, outcome, ttl):
        self._mark("outcome", message_id, outcome, ttl)

    def get_outcome(self, message_id):
        with self._cond:
            return self._read("outcome", message_id)

    def _queue(self, name):
        return self._queues.setdefault(name, {"ready": [], "items": {}, "tries": {}, "held": {}})

    def dq_put(self, queue, entries):
        with self._cond:
            q = self._queue(queue)
            for item_id, text in entries:
                q["items"][item_id] = text
                q["tries"][item_id] = 0
                q["ready"].append(item_id)

    def _reclaim(self, queue, attempts, dead_queue):
        q = self._queue(queue)
        now = current_millis()
        expired = sorted((deadline, i) for i, deadline in q["held"].items() if deadline <= now)
        back = []
        for _, item_id in expired:
            del q["held"][item_id]
            if q["tries"][item_id] < attempts:
                back.append(item_id)
                continue
            text, tries = q["items"].pop(item_id), q["tries"].pop(item_id)
            if dead_queue is not None:
                d = self._queue(dead_queue)
                d["items"][item_id] = dead_entry(queue, text, tries, now)
                d["tries"][item_id] = 0
                d["ready"].append(item_id)
        q["ready"][:0] = back

    def dq_get(self, queue, count, vis_timeout, attempts, dead_queue):
        with self._cond:
            self._reclaim(queue, attempts, dead_queue)
            q = self._queue(queue)
            taken, q["ready"] = q["ready"][:count], q["ready"][count:]
            out = []
            for item_id in taken:
                out.append((item_id, q["items"][item_id]))
                q["tries"][item_id] += 1
                if vis_timeout > 0:
                    q["held"][item_id] = current_millis() + vis_timeout
                else:
                    del q["items"][item_id], q["tries"][item_id]
            return out

    def dq_refresh(self, queue, ids, vis_timeout):
        with self._cond:
            held = self._queue(queue)["held"]
            kept = [i for i in ids if i in held]
            for item_id in kept:
                held[item_id] = current_millis() + vis_timeout
            return kept

    def dq_done(self, queue, ids):
        with self._cond:
            q = self._queue(queue)
            done = [i for i in ids if i in q["held"]]
            for item_id in done:
                del q["held"][item_id], q["items"][item_id], q["tries"][item_id]
            return done

    def dq_counts(self, queue, attempts, dead_queue):
        with self._cond:
            self._reclaim(queue, attempts, dead_queue)
            q = self._queue(queue)
            return {"ready": len(q["ready"]), "held": len(q["held"])}


_memory_stores = weakref.WeakKeyDictionary()
_memory_lock = threading.Lock()


def store_for(broker=None, url=None, store=None, *, purpose="this feature"):
    """The store to use: ``store`` or ``url`` if given, else one derived from ``broker``.

    Raises ``StoreError`` when none can be derived (a RabbitMQ broker), saying what to pass.
    """
    if store is not None:
        if not isinstance(store, Store):
            raise StoreError(f"store= needs a greenq store (RedisStore, SqliteStore, MemoryStore), not {store!r}")
        return store
    if url is not None:
        from urllib.parse import urlsplit

        scheme = urlsplit(url).scheme.lower()
        if scheme in ("redis", "rediss", "unix"):
            from .redis_store import RedisStore

            return _by_url(url, lambda: RedisStore(url=url))
        if scheme == "sqlite":
            from .sqlite_store import SqliteStore

            return _by_url(url, lambda: SqliteStore(url=url))
        from ..brokers import redact_url

        raise StoreError(f"unsupported store URL {redact_url(url)!r} for {purpose}: use redis://... or sqlite:///path")
    if broker is None:
        from ..broker import get_broker

        broker = get_broker()
    # Imported here, not at the top: the store layer never depends on a concrete broker until one is in
    # hand (none of these imports loads redis itself). isinstance, so subclasses of a broker lend theirs too.
    from ..brokers.local import LocalBroker
    from ..brokers.redis import RedisBroker
    from ..brokers.sqlite import SqliteBroker
    from ..brokers.stub import StubBroker

    if isinstance(broker, RedisBroker):
        from .redis_store import RedisStore

        return _shared(broker, lambda: RedisStore(client=broker.client, namespace=broker.namespace, url=broker.url))
    if isinstance(broker, SqliteBroker):
        from .sqlite_store import SqliteStore

        return _shared(broker, lambda: SqliteStore(db=broker.db))
    if isinstance(broker, (StubBroker, LocalBroker)):
        return _shared(broker, MemoryStore)
    raise StoreError(
        f"{purpose} needs a Redis or SQLite store and cannot keep its state in a {type(broker).__name__}: "
        "pass url='redis://host:6379/0' or url='sqlite:///path/to/file' (or store=...)"
    )


_url_stores = {}


def _by_url(url, factory):
    """One store per URL in a process, so many DataQueue objects share one connection pool."""
    with _memory_lock:
        found = _url_stores.get(url)
        if found is None:
            found = _url_stores[url] = factory()
        return found


def _shared(broker, factory):
    """One store per broker, so every feature on a broker sees the same state (and connections)."""
    with _memory_lock:
        found = _memory_stores.get(broker)
        if found is None:
            found = _memory_stores[broker] = factory()
        return found
