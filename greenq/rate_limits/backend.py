"""The shared state behind rate limits, barriers, debouncing and group completion.

A back end keeps a few kinds of small, expiring records under string keys and
changes each one atomically (a Lua script in Redis, one transaction in SQLite,
a lock in memory). Every back end implements these verbs:

``_add(key, member, limit, ttl)`` -> ``(added, count)``
    drop the key's expired members; if ``member`` is absent and fewer than
    ``limit`` live members remain (``limit`` None: no bound), add it, expiring
    ``ttl`` ms from now. ``count`` is the number of live members afterwards.
    A concurrency limiter's holders, a window limiter's recent hits, a
    barrier's arrivals and a group's finished children are all such members.
``_remove(key, member)`` / ``_count(key)``
    let a holder go; count live members.
``_set_flag(key, ttl)`` / ``_get_flag(key)``
    a flag that says something happened (a barrier opened).
``_debounce(key, window, always_delay)`` -> delay in ms, or None to drop
    the check-and-set of debouncing: see ``greenq.middleware.debounce``.

Waiting (``wait_for``) never blocks a connection or the process: waiters of
one key in one process share a single retry schedule (at most one attempt per
pause, the pause growing from 2 ms to ``poll_interval``), and a release or
flag set in this process wakes them at once. So 500 greenlets waiting on one
key cost one round trip per pause, not 500; the price is a pickup latency of
up to ``poll_interval`` for releases made by other processes.
"""

import threading
import time

#: The shortest pause between two attempts of waiters of one key (seconds).
MIN_PAUSE = 0.002


def debounce_eta(last, now, window, always_delay):
    """When a debounced send made at ``now`` runs (epoch ms), or None to drop it.

    ``last`` is when the previous accepted send runs (or ran). A send while one
    is still due later is dropped; otherwise it runs at once when the window
    since the last run has passed, else when it passes. ``always_delay`` delays
    every accepted send by the full window. (The Redis and SQLite back ends
    implement the same rule in Lua and SQL.)
    """
    if last is not None and last > now:
        return None
    if always_delay:
        return now + window
    if last is None or last + window <= now:
        return now
    return last + window


class _Waiters:
    """Everyone in this process waiting on one key, and when the next attempt is due."""

    __slots__ = ("cond", "count", "next_try", "pause")

    def __init__(self, lock):
        self.cond = threading.Condition(lock)
        self.count = 0
        self.next_try = 0.0
        self.pause = MIN_PAUSE


class RateLimiterBackend:
    """Base class of the shaping back ends. ``poll_interval`` (ms) caps the pause between attempts."""

    def __init__(self, *, poll_interval=100):
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 ms, not {poll_interval}")
        self.poll_interval = poll_interval / 1000
        self._waiters_lock = threading.Lock()
        self._waiters = {}

    # --- the verbs a back end implements ---------------------------------------------

    def _add(self, key, member, limit, ttl):
        raise NotImplementedError

    def _remove(self, key, member):
        raise NotImplementedError

    def _count(self, key):
        raise NotImplementedError

    def _set_flag(self, key, ttl):
        raise NotImplementedError

    def _get_flag(self, key):
        raise NotImplementedError

    def _debounce(self, key, window, always_delay):
        raise NotImplementedError

    # --- public operations ------------------------------------------------------------

    def add(self, key, member, limit=None, ttl=60000):
        """Add ``member`` to ``key`` unless present or full; ``(added, live count)``."""
        added, count = self._add(key, str(member), limit, int(ttl))
        return bool(added), int(count)

    def remove(self, key, member):
        """Remove ``member`` from ``key`` and wake one waiter of the key in this process."""
        self._remove(key, str(member))
        self.wake(key, everyone=False)

    def count(self, key):
        return int(self._count(key))

    def set_flag(self, key, ttl=60000):
        """Raise a flag (for ``ttl`` ms) and wake every waiter of the key in this process."""
        self._set_flag(key, int(ttl))
        self.wake(key, everyone=True)

    def get_flag(self, key):
        return bool(self._get_flag(key))

    def debounce(self, key, window, always_delay=False):
        """Delay (ms) for a debounced send now, or None when it must be dropped."""
        delay = self._debounce(key, int(window), bool(always_delay))
        return None if delay is None or delay < 0 else int(delay)

    def wait_for(self, key, attempt, timeout):
        """Call ``attempt()`` until it returns something true, or ``timeout`` seconds pass (None: forever).

        Returns the true value, or None on timeout. Attempts of all waiters of
        ``key`` in this process are spaced by one shared, growing pause, and
        ``wake(key)`` cuts the pause short.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._waiters_lock:
            waiters = self._waiters.get(key)
            if waiters is None:
                waiters = self._waiters[key] = _Waiters(self._waiters_lock)
            waiters.count += 1
        try:
            while True:
                with waiters.cond:
                    while True:
                        now = time.monotonic()
                        if now >= waiters.next_try:
                            waiters.next_try = now + waiters.pause
                            waiters.pause = min(waiters.pause * 2, self.poll_interval)
                            break
                        if deadline is not None and now >= deadline:
                            return None
                        wait = waiters.next_try - now
                        if deadline is not None:
                            wait = min(wait, deadline - now)
                        waiters.cond.wait(wait)
                result = attempt()
                if result:
                    self.wake(key, everyone=False)  # let the next waiter try at once
                    return result
                if deadline is not None and time.monotonic() >= deadline:
                    return None
        finally:
            with self._waiters_lock:
                waiters.count -= 1
                if waiters.count == 0 and self._waiters.get(key) is waiters:
                    del self._waiters[key]

    def wake(self, key, everyone=False):
        """Let waiters of ``key`` in this process try again now (one of them, or all)."""
        with self._waiters_lock:
            waiters = self._waiters.get(key)
            if waiters is None:
                return
            waiters.next_try = 0.0
            waiters.pause = MIN_PAUSE
            if everyone:
                waiters.cond.notify_all()
            else:
                waiters.cond.notify()

    def close(self):
        """Release connections."""
