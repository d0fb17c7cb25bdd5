"""Interrupt actors that run past their ``time_limit``.

Under gevent, the limit is a timer on the hub that throws ``TimeLimitExceeded``
into the actor's greenlet: no polling thread, and it lands at the actor's next
IO or sleep. A greenlet that never yields (a CPU loop, a blocking C call) cannot
be interrupted that way; for it, an OS-thread watchdog kills the whole worker
process ``sigkill_delay`` ms after the limit, the supervisor starts a fresh one
and the broker redelivers the message. The watchdog is armed only in worker
processes (``after_process_boot``), never in a process that merely sends.
"""

import contextlib
import logging
import math
import os
import signal
import threading
import time

from .. import concurrency
from ..errors import TimeLimitExceeded
from .middleware import Middleware, optional, positive_int

logger = logging.getLogger("greenq.middleware.time_limit")


class TimeLimit(Middleware):
    """``time_limit`` in ms (default 30 minutes); ``sigkill_delay`` in ms (default 10 s, None disables)."""

    actor_options = {"time_limit": optional(positive_int)}

    def __init__(self, *, time_limit=1800000, sigkill_delay=10000):
        self.time_limit = time_limit
        self.sigkill_delay = sigkill_delay
        # limit (ms) -> {delivery: monotonic deadline}. One dict per limit holds its deliveries in
        # start order, which is deadline order, so its first entry is the next one due, and one
        # timer, armed for the earliest deadline of all, serves every delivery. A delivery costs
        # two dict inserts and two pops: half what a timer of its own cost (21.6k instructions).
        # Keyed by the delivery (the MessageProxy), not the message id: two deliveries of one
        # message (a redelivery, a scheduler's second copy of a tick) can run at once, and the
        # first to finish must not take the other's limit with it.
        self._running = {}
        self._bucket_of = {}  # delivery -> its limit's dict in _running
        self._expired = {}  # delivery -> deadline: interrupted, not finished yet (the watchdog still sees it)
        self._timer = None
        self._timer_due = math.inf
        # Under gevent the hooks and the timer's callback all run on one hub and never switch in
        # the middle of this bookkeeping, so they need no lock (a lock per hook cost as much as the
        # rest of it). Under threads one keeps each dict in deadline order and the timer thread's
        # scan apart from the workers' changes. Patching cannot be undone, so the choice made here
        # stays right.
        self._lock = None if concurrency.using_gevent() else threading.Lock()
        self._watchdog = False

    def after_process_boot(self, broker):
        if self.sigkill_delay is not None and not self._watchdog:
            self._watchdog = True
            concurrency.start_os_thread(self._watch, name="greenq-time-limit-watchdog")

    def before_process_message(self, broker, message):
        limit = broker.actors[message.actor_name].options.get("time_limit", self.time_limit)
        if limit is None:
            return
        if self._lock is None:
            self._start(message, limit)
        else:
            with self._lock:
                self._start(message, limit)

    def _start(self, message, limit):
        deadline = time.monotonic() + limit / 1000  # read under the lock (threads): the dict stays in order
        running = self._running.get(limit)
        if running is None:
            running = self._running[limit] = {}
        running[message] = deadline
        self._bucket_of[message] = running
        if deadline < self._timer_due:
            self._arm(deadline)

    def _arm(self, due):
        """Set the one timer for ``due`` (under the lock). Under gevent it fires on the hub that
        armed it: a worker runs every delivery of its process on one hub."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = concurrency.Timer(due - time.monotonic(), self._on_timer)

    def _on_timer(self):
        """Interrupt every delivery past its deadline, then arm for the next one due."""
        expired = []
        with self._lock or contextlib.nullcontext():
            self._timer, self._timer_due = None, math.inf
            now, next_due = time.monotonic(), math.inf
            for limit, running in self._running.items():
                due = []
                for message, deadline in running.items():
                    if deadline > now:
                        next_due = min(next_due, deadline)
                        break
                    due.append((message, deadline))
                for message, deadline in due:
                    del running[message]
                    self._expired[message] = deadline
                    expired.append((message, limit))
            if next_due < math.inf:
                self._arm(next_due)
        for message, limit in expired:  # outside the lock: logging may switch
            if message.interrupt(TimeLimitExceeded):
                logger.warning("Time limit of %d ms exceeded by message %s (%s); interrupting it.",
                               limit, message.message_id, message.actor_name)

    def _clear(self, message):
        running = self._bucket_of.pop(message, None)
        if running is None:
            return
        if self._lock is None:
            self._stop(message, running)
        else:
            with self._lock:
                self._stop(message, running)

    def _stop(self, message, running):
        if running.pop(message, None) is None:  # its timer fired: it was interrupted
            del self._expired[message]

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._clear(message)

    def after_skip_message(self, broker, message):
        self._clear(message)

    def _watch(self):
        """Runs on a real OS thread; writes with os.write because logging's locks belong to the hub.

        It reads the deadlines without the lock (each ``list()`` copy is taken whole under the
        GIL), so a hub held by a CPU-bound actor, whose timer never fires, is still seen.
        """
        delay = self.sigkill_delay / 1000
        while True:
            concurrency.os_sleep(0.5)
            now = time.monotonic()
            for message, deadline in list(self._expired.items()):
                if now > deadline + delay:
                    self._kill(message)
            for running in list(self._running.values()):
                for message, deadline in list(running.items()):
                    if now <= deadline + delay:
                        break  # the rest of this limit's deliveries started later
                    self._kill(message)

    def _kill(self, message):
        line = (f"greenq: message {message.message_id} ({message.actor_name}) ignored its time limit for "
                f"{self.sigkill_delay} ms more; killing worker process {os.getpid()} so the broker "
                "redelivers it.\n")
        os.write(2, line.encode())
        os.kill(os.getpid(), signal.SIGKILL)
