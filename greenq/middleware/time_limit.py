"""Interrupt actors that run past their ``time_limit``.

Under gevent, the limit is a timer on the hub that throws ``TimeLimitExceeded``
into the actor's greenlet: no polling thread, and it lands at the actor's next
IO or sleep. A greenlet that never yields (a CPU loop, a blocking C call) cannot
be interrupted that way; for it, an OS-thread watchdog kills the whole worker
process ``sigkill_delay`` ms after the limit, the supervisor starts a fresh one
and the broker redelivers the message. The watchdog is armed only in worker
processes (``after_process_boot``), never in a process that merely sends.
"""

import logging
import os
import signal
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
        # Keyed by the delivery (the MessageProxy), not the message id: two deliveries of one
        # message (a redelivery, a scheduler's second copy of a tick) can run at once, and the
        # first to finish must not cancel the other's limit or leave its own timer armed.
        self._timers = {}
        self._deadlines = {}  # delivery -> monotonic time past which the process is killed
        self._watchdog = False

    def after_process_boot(self, broker):
        if self.sigkill_delay is not None and not self._watchdog:
            self._watchdog = True
            concurrency.start_os_thread(self._watch, name="greenq-time-limit-watchdog")

    def before_process_message(self, broker, message):
        limit = broker.get_actor(message.actor_name).options.get("time_limit", self.time_limit)
        if limit is None:
            return
        timer = concurrency.Timer(limit / 1000, self._expire, message, limit)
        self._timers[message] = timer
        if self._watchdog:
            self._deadlines[message] = time.monotonic() + (limit + self.sigkill_delay) / 1000

    def _expire(self, message, limit):
        if message.interrupt(TimeLimitExceeded):
            logger.warning("Time limit of %d ms exceeded by message %s (%s); interrupting it.",
                           limit, message.message_id, message.actor_name)

    def _clear(self, message):
        timer = self._timers.pop(message, None)
        if timer is not None:
            timer.cancel()
        self._deadlines.pop(message, None)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._clear(message)

    def after_skip_message(self, broker, message):
        self._clear(message)

    def _watch(self):
        """Runs on a real OS thread; writes with os.write because logging's locks belong to the hub."""
        while True:
            concurrency.os_sleep(0.5)
            now = time.monotonic()
            for message, deadline in list(self._deadlines.items()):
                if now > deadline:
                    line = (f"greenq: message {message.message_id} ({message.actor_name}) ignored its time limit for "
                            f"{self.sigkill_delay} ms more; killing worker process {os.getpid()} so the broker "
                            "redelivers it.\n")
                    os.write(2, line.encode())
                    os.kill(os.getpid(), signal.SIGKILL)
