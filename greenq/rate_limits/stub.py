"""Shaping state in this process's memory, for unit tests with ``StubBroker``.

Not shared between processes: two workers with a ``StubBackend`` each see their
own limits.
"""

import threading
import time

from .backend import RateLimiterBackend, debounce_eta


def _now_ms():
    return int(time.time() * 1000)


class StubBackend(RateLimiterBackend):
    """All records in dictionaries behind one lock; expiry is checked on each access."""

    def __init__(self, *, poll_interval=20):
        super().__init__(poll_interval=poll_interval)
        self._lock = threading.Lock()
        self._members = {}  # key -> {member: expires at (epoch ms)}
        self._values = {}   # key -> (value, expires at)

    def _live(self, key, now):
        members = self._members.get(key)
        if members is None:
            return {}
        for member, expires in list(members.items()):
            if expires <= now:
                del members[member]
        if not members:
            del self._members[key]
        return members

    def _add(self, key, member, limit, ttl):
        now = _now_ms()
        with self._lock:
            members = self._live(key, now)
            if member in members or (limit is not None and len(members) >= limit):
                return False, len(members)
            members = self._members.setdefault(key, members)
            members[member] = now + ttl
            return True, len(members)

    def _remove(self, key, member):
        with self._lock:
            self._live(key, _now_ms()).pop(member, None)

    def _count(self, key):
        with self._lock:
            return len(self._live(key, _now_ms()))

    def _value(self, key, now):
        entry = self._values.get(key)
        if entry is not None and entry[1] <= now:
            del self._values[key]
            return None
        return None if entry is None else entry[0]

    def _set_flag(self, key, ttl):
        with self._lock:
            self._values[key] = (1, _now_ms() + ttl)

    def _get_flag(self, key):
        with self._lock:
            return self._value(key, _now_ms()) is not None

    def _debounce(self, key, window, always_delay):
        now = _now_ms()
        with self._lock:
            last = self._value(key, now)
            eta = debounce_eta(last, now, window, always_delay)
            if eta is None:
                return None
            self._values[key] = (eta, eta + window)
            return eta - now

    def flush(self):
        with self._lock:
            self._members.clear()
            self._values.clear()

