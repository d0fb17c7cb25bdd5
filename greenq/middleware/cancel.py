"""Know when a message started, and cancel it: ``message.wait_started()`` and ``message.cancel()``.

Opt-in: ``broker.add_middleware(Cancel())`` in producers and workers (it is
the same broker setup for both). The state lives in the store the scheduler
uses (``greenq.scheduling.store_for``: the broker's Redis or SQLite, or ``url=``).

* ``before_process_message`` records "started" under the message id (TTL
  ``ttl`` ms, default a day), which wakes ``wait_started`` waiters: on Redis
  they block in the server, on SQLite they poll with a growing pause.
* ``message.cancel()`` marks the id cancelled. A message that has not started
  yet is skipped when a worker takes it: acked, not run, logged, and recorded
  as cancelled. A running one gets ``Cancelled`` raised inside its actor: each
  worker process has one watcher that checks the ids it runs every
  ``check_interval`` ms (one store round trip, only while something runs), so
  a cancel lands within about that long. The actor may catch ``Cancelled`` to
  clean up; either way the message is acked, never retried nor dead-lettered,
  and recorded as cancelled.

"Recorded" means: ``Cancel.outcome(message_id)`` returns ``"cancelled before
start"`` or ``"cancelled while running"``, and with the ``Results`` middleware
and ``store_results`` on, ``get_result()`` raises ``ResultFailure`` of type
``Cancelled``. Like any interrupt, ``Cancelled`` reaches a greenlet at its next
switch (IO, sleep) and a thread at its next bytecode: a CPU loop that never
yields under gevent is not interrupted.

Cost: two store round trips per message a worker starts (is it cancelled?
mark it started), so add it only where you need it.
"""

import logging
import threading

from .. import concurrency
from ..errors import Cancelled, SkipMessage
from .middleware import Middleware

logger = logging.getLogger("greenq.middleware.cancel")

DAY = 24 * 3600 * 1000


class Cancel(Middleware):
    """``Cancel(url=None, store=None, ttl=86400000, check_interval=100)``; times in ms."""

    def __init__(self, *, url=None, store=None, ttl=DAY, check_interval=100):
        if ttl <= 0 or check_interval <= 0:
            raise ValueError("ttl and check_interval must be > 0 ms")
        self.url = url
        self._store = store
        self.ttl = int(ttl)
        self.check_interval = check_interval / 1000
        # message id -> the deliveries of it this process runs now: a redelivery can run beside the
        # first copy under the same id, and a cancel is for every copy.
        self._running = {}
        self._interrupted = set()  # deliveries Cancelled was raised into
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = None
        self._broker = None

    def __repr__(self):
        return "Cancel()"

    def store_of(self, broker):
        if self._store is None:
            from ..scheduling.store import store_for

            self._store = store_for(broker=broker, url=self.url, purpose="Cancel (wait_started/cancel)")
        return self._store

    # --- what producers call ----------------------------------------------------------

    def cancel(self, broker, message_id):
        self.store_of(broker).mark_cancelled(message_id, self.ttl)

    def wait_started(self, broker, message_id, timeout=None):
        return self.store_of(broker).wait_started(message_id, timeout)

    def outcome(self, message_id, broker=None):
        """``"cancelled before start"``, ``"cancelled while running"`` or None."""
        return self.store_of(broker or self._broker).get_outcome(message_id)

    # --- worker hooks -----------------------------------------------------------------

    def after_worker_boot(self, broker, worker):
        self._start_watcher(broker)

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(5.0)

    def before_process_message(self, broker, message):
        store = self.store_of(broker)
        if store.cancelled_among([message.message_id]):
            logger.warning("Message %s (%s) was cancelled before it started; acking it without running it.",
                           message.message_id, message.actor_name)
            self._record(broker, message, "cancelled before start")
            raise SkipMessage(f"message {message.message_id} was cancelled")
        with self._lock:
            self._running.setdefault(message.message_id, set()).add(message)
        store.mark_started(message.message_id, self.ttl)
        if self._watcher is None:
            self._start_watcher(broker)

    def _forget(self, message):
        """Drop a delivery that ended; whether Cancelled was raised into it."""
        with self._lock:
            deliveries = self._running.get(message.message_id)
            if deliveries is not None:
                deliveries.discard(message)
                if not deliveries:
                    del self._running[message.message_id]
            interrupted = message in self._interrupted
            self._interrupted.discard(message)
        return interrupted

    def after_process_message(self, broker, message, *, result=None, exception=None):
        interrupted = self._forget(message)
        if isinstance(exception, Cancelled):
            # Settled here: ``retried`` tells the worker someone took care of this failure, so it
            # acks the message instead of dead-lettering it (Retries never retries Cancelled).
            message.retried = True
            logger.info("Message %s (%s) was cancelled while running.", message.message_id, message.actor_name)
            self._record(broker, message, "cancelled while running")
        elif interrupted:  # the actor caught Cancelled and returned: its result stands, the cancel is noted
            self._record(broker, message, "cancelled while running", failure=False)

    def after_skip_message(self, broker, message):
        self._forget(message)

    def _record(self, broker, message, outcome, failure=True):
        try:
            self.store_of(broker).set_outcome(message.message_id, outcome, self.ttl)
        except Exception as e:
            logger.error("Could not record that message %s was %s: %s", message.message_id, outcome, e)
        if not failure:
            return
        from ..results import Results

        results = broker.get_middleware(Results)
        if results is not None:
            store, ttl = results._settings(broker, message)
            if store:
                results.backend.store_failure(message, "Cancelled", f"message {message.message_id} was {outcome}", ttl)

    # --- the watcher --------------------------------------------------------------------

    def _start_watcher(self, broker):
        with self._lock:
            if self._watcher is not None:
                return
            self._broker = broker
            self._stop.clear()
            self._watcher = concurrency.spawn(self._watch, broker, name="greenq-cancel-watcher")

    def _watch(self, broker):
        failing = False
        while not self._stop.wait(self.check_interval):
            with self._lock:
                ids = [i for i, deliveries in self._running.items() if not deliveries <= self._interrupted]
            if not ids:
                continue
            try:
                cancelled = self.store_of(broker).cancelled_among(ids)
            except Exception as e:
                if not failing:
                    logger.error("The cancel watcher cannot read its store (%s); running messages cannot be "
                                 "cancelled until it answers.", e)
                failing = True
                continue
            if failing:
                logger.warning("The cancel watcher reads its store again.")
                failing = False
            for message_id in cancelled:
                with self._lock:
                    deliveries = self._running.get(message_id, set()) - self._interrupted
                    self._interrupted |= deliveries
                for message in deliveries:
                    if message.interrupt(Cancelled):
                        logger.warning("Message %s (%s) was cancelled; interrupting it.", message_id,
                                       message.actor_name)
                    else:  # its actor is not reachable yet (or any more): look again next time
                        with self._lock:
                            self._interrupted.discard(message)


def _cancel_middleware(broker):
    if broker is None:
        from ..broker import get_broker

        broker = get_broker()
    middleware = broker.get_middleware(Cancel)
    if middleware is None:
        raise RuntimeError("wait_started() and cancel() need the Cancel middleware: "
                           "broker.add_middleware(greenq.middleware.cancel.Cancel())")
    return broker, middleware


def wait_started(message, timeout=None, broker=None):
    """Block up to ``timeout`` seconds (None: no limit) until a worker starts ``message``; True if it has."""
    broker, middleware = _cancel_middleware(broker)
    return middleware.wait_started(broker, getattr(message, "message_id", message), timeout)


def cancel(message, broker=None):
    """Cancel ``message``: skipped if it has not started, interrupted with ``Cancelled`` if it runs."""
    broker, middleware = _cancel_middleware(broker)
    middleware.cancel(broker, getattr(message, "message_id", message))
