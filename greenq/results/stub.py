"""An in-memory result back end for users' unit tests (with ``StubBroker``)."""

import threading
import time

from .backend import ResultBackend


class StubBackend(ResultBackend):
    """Results in this process's memory, with TTLs; waiters are woken, not polling."""

    def __init__(self):
        self._results = {}  # message id -> (expires at, monotonic s; data)
        self._cond = threading.Condition()

    def _store(self, message_id, data, ttl):
        with self._cond:
            self._results[message_id] = (time.monotonic() + ttl / 1000, data)
            self._cond.notify_all()

    def _load(self, message_id):
        with self._cond:
            entry = self._results.get(message_id)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._results[message_id]
                return None
            return entry[1]

    def _wait(self, message_id, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                data = self._load(message_id)
                if data is not None:
                    return data
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def flush(self):
        with self._cond:
            self._results.clear()
