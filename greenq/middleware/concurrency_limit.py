"""Per-actor concurrency limits: ``max_concurrency=N`` runs at most N of an actor's messages at once.

Scope ``"process"`` (the default) needs no server: a counter per actor in the
worker process. Scope ``"global"`` shares the bound across processes and
machines through the rate-limit back end (Redis or SQLite, like the broker):
each running message holds a lease that expires after ``lease_ttl`` ms, so a
killed process gives its slots back.

A message whose actor is full waits *before* the pool: it holds one of the
worker's capacity slots but no pool greenlet, so other actors keep running.
Waiting messages take free slots in arrival order. One that waits longer than
``max_concurrency_wait`` ms goes back to the broker, delayed by
``requeue_delay`` ms (with jitter), and the fetched copy is acked; this is not
a retry and does not count against ``max_retries``
(``options["concurrency_requeues"]`` counts them). A global slot freed by
another process is noticed within ``check_interval`` ms.
"""

import collections
import logging
import random
import threading
import time
import uuid

from .. import concurrency
from .middleware import Middleware, at_least_ms, one_of, optional, positive_int

logger = logging.getLogger("greenq.middleware.concurrency_limit")


class ConcurrencyLimits(Middleware):
    """On by default; acts only on actors with ``max_concurrency``.

    ``max_wait`` (ms): default of ``max_concurrency_wait``. ``backend``: the
    rate-limit back end for the global scope (default ``backend_for(broker)``).
    """

    actor_options = {
        "max_concurrency": optional(positive_int),
        "max_concurrency_scope": one_of("process", "global"),
        "max_concurrency_wait": at_least_ms(0),
    }

    def __init__(self, *, max_wait=5000, requeue_delay=1000, lease_ttl=1800000 + 60000, check_interval=100,
                 backend=None):
        self.max_wait = max_wait
        self.requeue_delay = requeue_delay
        self.lease_ttl = lease_ttl
        self.check_interval = check_interval / 1000
        self.backend = backend
        self._lock = threading.Lock()
        self._running = collections.Counter()  # actor name -> messages running in this process

    def gate_for(self, worker):
        return _Gate(self, worker)

    # --- slots -----------------------------------------------------------------------------

    def settings(self, broker, actor_name):
        actor = broker.actors.get(actor_name)
        if actor is None or not actor.options.get("max_concurrency"):
            return None
        options = actor.options
        return (options["max_concurrency"], options.get("max_concurrency_scope", "process"),
                options.get("max_concurrency_wait", self.max_wait))

    def take(self, broker, actor_name, limit, scope):
        """Take a slot; returns a token for ``give_back``, or None when the actor is full."""
        if scope == "global":
            if self.backend is None:
                from ..rate_limits import backend_for

                self.backend = backend_for(broker)
            token = uuid.uuid4().hex
            added, _ = self.backend.add(f"max_concurrency:{actor_name}", token, limit, self.lease_ttl)
            return token if added else None
        with self._lock:
            if self._running[actor_name] >= limit:
                return None
            self._running[actor_name] += 1
            return True

    def give_back(self, actor_name, scope, token):
        if scope == "global":
            self.backend.remove(f"max_concurrency:{actor_name}", token)
            return
        with self._lock:
            self._running[actor_name] -= 1
            if self._running[actor_name] <= 0:
                del self._running[actor_name]

    def running(self, actor_name):
        """Messages of the actor running in this process (process scope)."""
        with self._lock:
            return self._running[actor_name]


class _Gate:
    """One worker's waiting room for messages of full actors."""

    def __init__(self, limits, worker):
        self.limits = limits
        self.worker = worker
        self.broker = worker.broker
        self.lock = threading.RLock()
        self.waiting = {}   # actor name -> deque of (deadline, message, runner)
        self.holding = {}   # id(message) -> (actor name, scope, token)
        self.sweeper = None

    def __repr__(self):
        return f"ConcurrencyLimits gate({sum(len(q) for q in self.waiting.values())} waiting)"

    def hold(self, message, runner):
        settings = self.limits.settings(self.broker, message.actor_name)
        if settings is None:
            return False
        limit, scope, max_wait = settings
        name = message.actor_name
        with self.lock:
            if not self.waiting.get(name):  # nobody ahead: try for a slot now
                token = self.limits.take(self.broker, name, limit, scope)
                if token is not None:
                    self.holding[id(message)] = (name, scope, token)
                    return False
            self.waiting.setdefault(name, collections.deque()).append(
                (time.monotonic() + max_wait / 1000, message, runner))
            if self.sweeper is None:
                self.sweeper = concurrency.spawn(self._sweep_loop, name="greenq-concurrency-limits")
        return True

    def release(self, message):
        if not self.holding:  # the common case, actors without a limit: nothing to give back, no lock
            return
        with self.lock:
            entry = self.holding.pop(id(message), None)
        if entry is None:
            return
        name, scope, token = entry
        self.limits.give_back(name, scope, token)
        self._admit(name)

    def _admit(self, name):
        """Start waiting messages of ``name`` while slots are free."""
        with self.lock:
            queue = self.waiting.get(name)
            while queue:
                _, message, runner = queue[0]
                settings = self.limits.settings(self.broker, name)
                if settings is None:
                    token = None
                else:
                    token = self.limits.take(self.broker, name, settings[0], settings[1])
                    if token is None:
                        return
                    self.holding[id(message)] = (name, settings[1], token)
                queue.popleft()
                self.worker.queue_work(message, runner)

    def _sweep_loop(self):
        """Admit messages to slots freed elsewhere; send back those that waited too long."""
        while not self.worker.stopping.wait(self.limits.check_interval):
            for name in list(self.waiting):
                try:
                    self._admit(name)
                    self._expire(name)
                except Exception:
                    logger.exception("Admitting waiting messages of %s failed; trying again.", name)

    def _expire(self, name):
        now = time.monotonic()
        expired = []
        with self.lock:
            queue = self.waiting.get(name)
            while queue and queue[0][0] <= now:
                expired.append(queue.popleft())
        for _, message, runner in expired:
            requeues = message.options.get("concurrency_requeues", 0) + 1
            delay = int(self.limits.requeue_delay * random.uniform(1.0, 1.5))
            copy = message.message.copy(options={**message.message.options, "concurrency_requeues": requeues})
            try:
                self.broker.enqueue(copy, delay=delay)
            except Exception:
                logger.exception("Could not send message %s back to the broker; it stays in line.",
                                 message.message_id)
                with self.lock:
                    self.waiting.setdefault(name, collections.deque()).appendleft((now, message, runner))
                continue
            logger.info("Message %s waited too long for a %s slot (max_concurrency); back to the broker for "
                        "%d ms (not a retry).", message.message_id, name, delay)
            runner.post("ack", message)

    def drain(self):
        """Every waiting message, handed back on stop."""
        with self.lock:
            drained = [(m, r) for queue in self.waiting.values() for _, m, r in queue]
            self.waiting.clear()
        return drained
