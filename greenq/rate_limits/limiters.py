"""Limits shared across greenlets, processes and machines: concurrency, windows, barriers.

All three keep their state in a ``RateLimiterBackend`` (Redis across machines,
SQLite across the processes of one machine, memory for unit tests) and wait
cooperatively: a greenlet that waits for room sleeps on a condition that
``time.sleep``/gevent turn into a hub switch, so the other greenlets of the
process keep running.
"""

import logging
import uuid
from contextlib import contextmanager

from ..errors import BarrierTimeout, RateLimitExceeded

logger = logging.getLogger("greenq.rate_limits")


def _seconds(timeout_ms):
    return None if timeout_ms is None else max(0.0, timeout_ms / 1000)


class RateLimiter:
    """Base of the limiters: ``with limiter.acquire(...) as acquired:``.

    ``timeout`` (ms) is how long to wait for room: 0 (the default, as in
    Dramatiq) tries once, None waits as long as it takes. Without room,
    ``raise_on_failure=True`` raises ``RateLimitExceeded``; with False the
    block runs with ``acquired`` False, and must check it.
    """

    def __init__(self, backend, key, *, limit):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, not {limit!r}")
        if not key:
            raise ValueError("a rate limiter needs a non-empty key")
        self.backend = backend
        self.key = key
        self.limit = limit

    def _try(self, member):
        raise NotImplementedError

    def _release(self, member):
        pass

    def _acquire(self, timeout):
        member = uuid.uuid4().hex
        if self._try(member):
            return member
        if timeout is not None and timeout <= 0:
            return None
        got = self.backend.wait_for(self._store_key, lambda: self._try(member), _seconds(timeout))
        return member if got else None

    @property
    def _store_key(self):
        return f"{self.kind}:{self.key}"

    @contextmanager
    def acquire(self, *, raise_on_failure=True, timeout=0):
        member = self._acquire(timeout)
        if member is None:
            if raise_on_failure:
                raise RateLimitExceeded(f"{type(self).__name__} {self.key!r}: no room for another holder "
                                        f"(limit {self.limit}) within {timeout} ms")
            yield False
            return
        try:
            yield True
        finally:
            self._release(member)

    def __repr__(self):
        return f"{type(self).__name__}({self.backend!r}, {self.key!r}, limit={self.limit})"


class ConcurrentRateLimiter(RateLimiter):
    """At most ``limit`` holders of ``key`` at once, e.g. connections to one domain.

    Each holder is a lease that expires after ``ttl`` ms, so a process killed
    while holding one gives it back after that long at the latest; set ``ttl``
    above the longest time a holder keeps it. Releases in this process wake a
    local waiter at once; releases elsewhere are noticed within the back end's
    ``poll_interval``.
    """

    kind = "concurrent"

    def __init__(self, backend, key, *, limit, ttl=900000):
        super().__init__(backend, key, limit=limit)
        self.ttl = ttl

    def _try(self, member):
        added, _ = self.backend.add(self._store_key, member, self.limit, self.ttl)
        return added

    def _release(self, member):
        self.backend.remove(self._store_key, member)

    def holders(self):
        """How many hold the key right now."""
        return self.backend.count(self._store_key)


class WindowRateLimiter(RateLimiter):
    """At most ``limit`` acquisitions of ``key`` in any ``window`` seconds (a sliding window).

    ``window`` is in seconds, as in Dramatiq. Each acquisition is remembered
    for one window, so the state of a key is at most ``limit`` small records.
    """

    kind = "window"

    def __init__(self, backend, key, *, limit, window):
        super().__init__(backend, key, limit=limit)
        if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
            raise ValueError(f"window must be a number of seconds > 0, not {window!r}")
        self.window = window

    def _try(self, member):
        added, _ = self.backend.add(self._store_key, member, self.limit, int(self.window * 1000))
        return added

    def __repr__(self):
        return f"WindowRateLimiter({self.backend!r}, {self.key!r}, limit={self.limit}, window={self.window})"


class Barrier:
    """Wait until ``parties`` callers of ``wait()`` have arrived, across processes.

    ``Barrier(backend, key, parties)``; each ``wait()`` is one arrival. The
    last arrival opens the barrier for everyone. A barrier opens once and is
    forgotten ``ttl`` ms after the last arrival; use a fresh key per round.
    """

    def __init__(self, backend, key, parties=None, *, ttl=900000):
        self.backend = backend
        self.key = key
        self.parties = parties
        self.ttl = ttl

    def create(self, parties=None):
        """Set the number of parties (Dramatiq's call shape); True."""
        if parties is not None:
            self.parties = parties
        if isinstance(self.parties, bool) or not isinstance(self.parties, int) or self.parties < 1:
            raise ValueError(f"a barrier needs parties >= 1, not {self.parties!r}")
        return True

    def wait(self, *, block=True, timeout=None):
        """Arrive; with ``block``, wait (``timeout`` ms, None: forever) for the rest.

        Returns True once the barrier is open. Without ``block`` it returns
        whether this arrival opened it (or it was open already). A blocking wait
        that runs out raises ``BarrierTimeout``.
        """
        self.create()
        _, arrived = self.backend.add(f"barrier:{self.key}", uuid.uuid4().hex, None, self.ttl)
        open_key = f"barrier-open:{self.key}"
        if arrived >= self.parties:
            self.backend.set_flag(open_key, self.ttl)
            return True
        if self.backend.get_flag(open_key):
            return True
        if not block:
            return False
        if self.backend.wait_for(open_key, lambda: self.backend.get_flag(open_key), _seconds(timeout)):
            return True
        raise BarrierTimeout(f"barrier {self.key!r}: {self.parties} parties expected, "
                             f"{self.backend.count(f'barrier:{self.key}')} arrived within {timeout} ms")

    def __repr__(self):
        return f"Barrier({self.backend!r}, {self.key!r}, parties={self.parties})"
