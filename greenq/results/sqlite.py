"""Results in the embedded broker's SQLite file, so the zero-setup default has results too.

One row per message id in ``greenq_results`` (key, JSON text, expiry in epoch
ms). Expired rows are invisible at once and deleted by later stores, at most
once a second, in the same short transaction. A waiter in the same process is
woken when the result is stored; across processes it polls with a pause that
grows from 1 ms to ``poll_interval`` (each look is one indexed read, about
10 microseconds), so an idle waiter costs little and a result stored by a worker
process is seen within one pause.
"""

import threading
import time

from ..brokers.sqlite import Database, path_from_url
from ..message import current_millis
from .backend import ResultBackend


class SqliteBackend(ResultBackend):
    """``SqliteBackend(path=..., url="sqlite:///...", broker=SqliteBroker)``: give exactly one.

    With ``broker``, the back end shares that broker's file and connections;
    otherwise it opens the file itself (creating it, with the same checks as the
    broker: a foreign or newer file is refused with an error naming the path).
    """

    def __init__(self, path=None, *, url=None, broker=None, poll_interval=50):
        if sum(x is not None for x in (path, url, broker)) != 1:
            raise ValueError("SqliteBackend needs exactly one of path=, url= or broker=")
        if broker is not None:
            self.db = broker.db
            self._owns_db = False
        else:
            self.db = Database(path_from_url(url) if url is not None else path)
            self._owns_db = True
        self.path = self.db.path
        self.poll_interval = poll_interval / 1000
        self._cond = threading.Condition()
        self._next_purge = 0.0

    def __repr__(self):
        return f"SqliteBackend(path={self.path!r})"

    def _store(self, message_id, data, ttl):
        now = current_millis()
        purge = time.monotonic() >= self._next_purge
        if purge:
            self._next_purge = time.monotonic() + 1.0

        def store(conn):
            conn.execute("INSERT OR REPLACE INTO greenq_results (key, value, expires_at) VALUES (?, ?, ?)",
                         (message_id, data, now + ttl))
            if purge:
                conn.execute("DELETE FROM greenq_results WHERE expires_at <= ?", (now,))

        self.db.write(store)
        with self._cond:
            self._cond.notify_all()

    def _load(self, message_id):
        row = self.db.read(lambda conn: conn.execute(
            "SELECT value FROM greenq_results WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (message_id, current_millis())).fetchone())
        return None if row is None else row[0]

    first_poll = 0.001

    def _pause(self, seconds):
        with self._cond:  # a store in this process wakes the wait at once
            self._cond.wait(seconds)

    def flush(self):
        """Drop every stored result."""
        self.db.write(lambda conn: conn.execute("DELETE FROM greenq_results"))

    def close(self):
        if self._owns_db:
            self.db.close()
