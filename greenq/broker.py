"""The broker contract, the middleware chain, and the process-wide broker.

A concrete broker implements a handful of storage verbs (the Huey idea: small
enough that one contract test suite can hold every back end to it):

``_declare_queue(name)``
    make the queue exist (idempotent).
``_enqueue(message, eta, priority)`` / ``_enqueue_many(entries)``
    store a message, ready now (``eta is None``) or due at ``eta`` (epoch ms).
    Delayed messages stay in the broker and are promoted to ready atomically when
    due, never held in a worker's memory.
``consume(queue_name, prefetch, timeout)`` -> ``Consumer``
    a fetch handle for one queue, used by one worker.
``_flush(queue_name)``
    drop everything the queue holds: ready, delayed, dead.

plus ``enqueue_raw`` and the inspection verbs (``queue_counts``,
``dead_letters_of``, ``requeue_dead``, ``purge_dead``), and a ``Consumer`` with
``fetch`` / ``ack`` / ``nack`` / ``requeue`` / ``close``. ``tests/contract/``
holds every broker to the same behaviour.
Everything else here (middleware, hooks, delays, priorities from actors) is
shared, so brokers cannot drift apart in behaviour.
"""

import logging
import os
import threading

from .errors import ActorNotFound, Interrupt, QueueNotFound, SkipMessage
from .message import Message, MessageProxy, current_millis
from .middleware.middleware import implemented_hooks

logger = logging.getLogger("greenq.broker")

#: Dead letters are dropped after this long, as the user guide promises (ms).
DEAD_MESSAGE_TTL = 7 * 24 * 3600 * 1000


class Consumer:
    """Fetches one queue's messages for one worker, and settles them.

    ``fetch`` is called by a single consumer greenlet or thread; ``ack``,
    ``nack`` and ``requeue`` may be called from another greenlet or thread at
    the same time, so implementations guard shared connections accordingly.
    A consumer dead-letters payloads it cannot decode itself (logging the
    message id) and never hands them to the worker.
    """

    def fetch(self, count: int, timeout: float) -> list:
        """Wait up to ``timeout`` seconds for a message; return 1..count ``MessageProxy``, or []."""
        raise NotImplementedError

    def ack(self, messages) -> None:
        """The messages are done: remove them for good (one round trip for the batch)."""
        raise NotImplementedError

    def nack(self, messages) -> None:
        """The messages failed for good: move each (``to_message()``, with its failure) to the dead letters."""
        raise NotImplementedError

    def requeue(self, messages) -> None:
        """Return fetched but unprocessed messages to the queue, at once, as if never fetched."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the consumer; messages it still holds go back to the queue."""

    def __iter__(self):
        return self

    def __next__(self):
        """One message or None on timeout, for code written against Dramatiq's consumer."""
        messages = self.fetch(1, self._iter_timeout)
        return messages[0] if messages else None

    _iter_timeout = 1.0


class Broker:
    """Base class: middleware chain, actor and queue registry, enqueue with delay."""

    def __init__(self, middleware=None):
        from .middleware import default_middleware

        self.actors = {}
        self.queues = set()
        self.middleware = []
        self._hooks = {}
        self._queues_lock = threading.Lock()
        for m in default_middleware() if middleware is None else middleware:
            self.add_middleware(m)

    # --- middleware ---------------------------------------------------------

    def add_middleware(self, middleware, *, before=None, after=None):
        """Add a middleware instance; ``before``/``after`` a middleware class to place it."""
        if isinstance(middleware, type):
            raise TypeError(f"add_middleware() takes a middleware instance, not the class {middleware.__name__}")
        index = len(self.middleware)
        if before is not None or after is not None:
            anchor = before or after
            positions = [i for i, m in enumerate(self.middleware) if isinstance(m, anchor)]
            if not positions:
                raise ValueError(f"cannot place {middleware!r}: no {anchor.__name__} middleware on this broker")
            index = positions[0] if before is not None else positions[-1] + 1
        self.middleware.insert(index, middleware)
        self._rebuild_hooks()
        if "after_declare_actor" in implemented_hooks(middleware):
            for actor in list(self.actors.values()):
                middleware.after_declare_actor(self, actor)

    def remove_middleware(self, middleware):
        """Take a middleware instance off the chain (a no-op if it is not on it)."""
        if middleware in self.middleware:
            self.middleware.remove(middleware)
            self._rebuild_hooks()

    def add_event_consumer(self, consumer):
        """Send lifecycle events to ``consumer``'s ``on_<event>`` methods (see ``greenq.middleware.events``)."""
        from .middleware.events import Events

        Events.on(self).register(consumer)

    def add_metadata_producer_consumer(self, producer_consumer):
        """Carry ``producer_consumer.produce_metadata()`` to the worker (see ``greenq.middleware.metadata``)."""
        from .middleware.metadata import Metadata

        Metadata.on(self).register(producer_consumer)

    def get_middleware(self, kind):
        """The first middleware that is an instance of ``kind``, or None."""
        return next((m for m in self.middleware if isinstance(m, kind)), None)

    def _rebuild_hooks(self):
        """Each hook's callbacks in call order: ``after_*`` ones last-to-first.

        Built once per change of the middleware list, so emitting a hook for every
        message is a dict lookup and a loop.
        """
        hooks = {}
        for m in self.middleware:
            for hook in implemented_hooks(m):
                hooks.setdefault(hook, []).append(getattr(m, hook))
        self._hooks = {hook: tuple(reversed(callbacks)) if hook.startswith("after_") else tuple(callbacks)
                       for hook, callbacks in hooks.items()}

    def emit_before(self, signal, *args, **kwargs):
        callbacks = self._hooks.get("before_" + signal)
        if callbacks:
            self._emit(callbacks, args, kwargs)

    def emit_after(self, signal, *args, **kwargs):
        callbacks = self._hooks.get("after_" + signal)
        if callbacks:
            self._emit(callbacks, args, kwargs)

    def emit_before_each(self, signal, messages, *args):
        """``emit_before(signal, message, *args)`` for each of ``messages``.

        A batch (a fetch's acks, a ``send_many``) looks its callbacks up once, and
        costs nothing per message when no middleware listens, which is the usual case.
        """
        callbacks = self._hooks.get("before_" + signal)
        if callbacks:
            for message in messages:
                self._emit(callbacks, (message, *args), {})

    def emit_after_each(self, signal, messages, *args):
        """``emit_after(signal, message, *args)`` for each of ``messages`` (see ``emit_before_each``)."""
        callbacks = self._hooks.get("after_" + signal)
        if callbacks:
            for message in messages:
                self._emit(callbacks, (message, *args), {})

    def _emit(self, callbacks, args, kwargs):
        """Call each callback; log, don't propagate, a middleware's failure.

        ``SkipMessage`` and interrupts are control flow, not failures, and pass through.
        """
        args = (self, *args)  # once, not once per callback
        for callback in callbacks:
            try:
                callback(*args, **kwargs)
            except (SkipMessage, Interrupt):
                raise
            except Exception:
                logger.exception("Middleware %s failed in %s; carrying on.", callback.__self__, callback.__name__)

    # --- actors and queues --------------------------------------------------

    def declare_actor(self, actor):
        self.emit_before("declare_actor", actor)
        self.declare_queue(actor.queue_name)
        self.actors[actor.actor_name] = actor
        self.emit_after("declare_actor", actor)

    def get_actor(self, actor_name):
        try:
            return self.actors[actor_name]
        except KeyError:
            raise ActorNotFound(f"no actor named {actor_name!r} is declared on {self!r}") from None

    def declare_queue(self, queue_name):
        if queue_name in self.queues:
            return
        with self._queues_lock:
            if queue_name in self.queues:
                return
            self.emit_before("declare_queue", queue_name)
            self._declare_queue(queue_name)
            self.queues.add(queue_name)
        self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self):
        return set(self.queues)

    def _check_queue(self, queue_name):
        if queue_name not in self.queues:
            raise QueueNotFound(f"queue {queue_name!r} is not declared on {self!r}")

    def priority_of(self, message) -> int:
        """A message's priority: its actor's, or 0 for actors this process does not know."""
        actor = self.actors.get(message.actor_name)
        return actor.priority if actor is not None else 0

    # --- enqueueing ---------------------------------------------------------

    def enqueue(self, message, *, delay=None):
        """Store ``message``, runnable now or after ``delay`` milliseconds.

        Returns the message sent, or None when a middleware's ``prepare_enqueue``
        dropped it (a debounced duplicate).
        """
        message = self._prepare(message, delay)
        if message is None:
            return None
        self.emit_before("enqueue", message, delay)
        self._enqueue(message, message.options.get("eta"), self.priority_of(message))
        self.emit_after("enqueue", message, delay)
        return message

    def enqueue_many(self, messages, *, delay=None):
        """Store many messages in as few round trips as the broker allows."""
        prepared = [m for m in (self._prepare(m, delay) for m in messages) if m is not None]
        self.emit_before_each("enqueue", prepared, delay)
        self._enqueue_many([(m, m.options.get("eta"), self.priority_of(m)) for m in prepared])
        self.emit_after_each("enqueue", prepared, delay)
        return prepared

    def _prepare(self, message, delay):
        if isinstance(message, MessageProxy):
            message = message.to_message()
        message.encode()  # an argument that cannot travel fails here, before any hook or write
        self.declare_queue(message.queue_name)
        if delay is not None:
            if delay < 0:
                raise ValueError(f"delay must be >= 0 ms, not {delay}")
            message = message.copy(options={**message.options, "eta": current_millis() + int(delay)})
        for prepare in self._hooks.get("prepare_enqueue", ()):  # may change (metadata, eta) or drop it
            message = prepare(self, message)
            if message is None:
                return None
        return message

    def _enqueue(self, message, eta, priority):
        raise NotImplementedError

    def _enqueue_many(self, entries):
        for message, eta, priority in entries:
            self._enqueue(message, eta, priority)

    def _declare_queue(self, queue_name):
        raise NotImplementedError

    # --- consuming and housekeeping ------------------------------------------

    def consume(self, queue_name, prefetch=1, timeout=1000) -> Consumer:
        raise NotImplementedError

    def flush(self, queue_name):
        """Drop every message of one queue: ready, delayed and dead."""
        self._flush(queue_name)

    def flush_all(self):
        for queue_name in list(self.queues):
            self.flush(queue_name)

    def _flush(self, queue_name):
        raise NotImplementedError

    def enqueue_raw(self, queue_name, payload: bytes):
        """Store bytes as they are, ready now: for other-language producers' tools and bad-input tests."""
        raise NotImplementedError

    # --- inspection and dead letters (the operations commands stand on these) -----

    def queue_counts(self, queue_name) -> dict:
        """``{"ready": n, "delayed": n, "in_flight": n, "dead": n}`` for one queue."""
        raise NotImplementedError

    def dead_letters_of(self, queue_name) -> list:
        """The queue's dead letters as ``Message`` objects, oldest first; each has
        ``options["failure"]`` (one line) and ``options["failed_at"]`` (epoch ms)."""
        raise NotImplementedError

    def requeue_dead(self, queue_name, message_ids=None) -> int:
        """Move dead letters (all, or those ids) back to ready; return how many moved."""
        raise NotImplementedError

    def purge_dead(self, queue_name) -> int:
        """Drop the queue's dead letters; return how many."""
        raise NotImplementedError

    def ping(self):
        """Check the broker answers; raise ``greenq.errors.ConnectionError`` naming it (never its password) if not."""

    def close(self):
        """Release connections. The broker may not be used afterwards."""

    def __repr__(self):
        return f"{type(self).__name__}()"


# --- the process-wide broker --------------------------------------------------

_broker = None
_broker_lock = threading.RLock()


def get_broker() -> Broker:
    """The broker set with ``set_broker``; else one from ``GREENQ_BROKER_URL``; else embedded SQLite."""
    if _broker is None:
        with _broker_lock:
            if _broker is None:
                from .brokers import broker_from_url

                set_broker(broker_from_url(os.environ.get("GREENQ_BROKER_URL")))
    return _broker


def set_broker(broker: Broker):
    """Make ``broker`` the one actors send to, and declare the actors defined so far on it."""
    global _broker
    if not isinstance(broker, Broker):
        raise TypeError(f"set_broker() needs a Broker, not {type(broker).__name__}")
    with _broker_lock:
        _broker = broker
        from .actor import _unbound_actors

        for actor in _unbound_actors():
            broker.declare_actor(actor)


def declare_actors(actors, broker=None):
    """Declare actors on ``broker`` (default: the global one), as the user guide shows."""
    broker = broker or get_broker()
    for actor in actors:
        actor.bind(broker)
    return broker


def _reset_global_broker():
    """For tests: forget the global broker so the next get_broker() builds one again."""
    global _broker
    with _broker_lock:
        _broker = None


__all__ = ["Broker", "Consumer", "Message", "get_broker", "set_broker", "declare_actors", "DEAD_MESSAGE_TTL"]
