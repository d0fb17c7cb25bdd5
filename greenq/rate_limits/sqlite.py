"""Shaping state in the embedded broker's SQLite file, shared by the processes of one machine.

Two tables of greenq's file, created on first use: ``greenq_shaping_members``
(key, member, expiry) and ``greenq_shaping_values`` (key, value, expiry).
Each operation is one short ``BEGIN IMMEDIATE`` transaction on the broker's
``Database``, so it waits for other writers with cooperative sleeps, never by
blocking the gevent hub for long. Expired rows are invisible at once; rows of
keys nobody touches again are deleted by later writes, at most once a second.
"""

import time

from ..message import current_millis
from .backend import RateLimiterBackend, debounce_eta

_TABLES = """
CREATE TABLE IF NOT EXISTS greenq_shaping_members (
    key TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (key, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS greenq_shaping_members_expiry ON greenq_shaping_members (expires_at);
CREATE TABLE IF NOT EXISTS greenq_shaping_values (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS greenq_shaping_values_expiry ON greenq_shaping_values (expires_at);
"""


class SqliteBackend(RateLimiterBackend):
    """``SqliteBackend(path=..., url="sqlite:///...", broker=SqliteBroker)``: give exactly one.

    With ``broker`` it shares the broker's file and connections. Polling for
    other processes' releases costs one indexed read per pause.
    """

    def __init__(self, path=None, *, url=None, broker=None, poll_interval=50):
        super().__init__(poll_interval=poll_interval)
        if sum(x is not None for x in (path, url, broker)) != 1:
            raise ValueError("the SQLite rate-limit back end needs exactly one of path=, url= or broker=")
        from ..brokers.sqlite import Database, path_from_url

        if broker is not None:
            self.db = broker.db
            self._owns_db = False
        else:
            self.db = Database(path_from_url(url) if url is not None else path)
            self._owns_db = True
        self.path = self.db.path
        self._next_purge = 0.0
        self.db.write(self._create_tables)

    @classmethod
    def from_broker(cls, broker, **options):
        return cls(broker=broker, **options)

    def __repr__(self):
        return f"SqliteBackend(path={self.path!r})"

    @staticmethod
    def _create_tables(conn):
        for statement in _TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)

    def _write(self, fn):
        now = current_millis()
        purge = time.monotonic() >= self._next_purge
        if purge:
            self._next_purge = time.monotonic() + 1.0

        def transaction(conn):
            if purge:
                conn.execute("DELETE FROM greenq_shaping_members WHERE expires_at <= ?", (now,))
                conn.execute("DELETE FROM greenq_shaping_values WHERE expires_at <= ?", (now,))
            return fn(conn, now)

        return self.db.write(transaction)

    def _add(self, key, member, limit, ttl):
        def add(conn, now):
            conn.execute("DELETE FROM greenq_shaping_members WHERE key = ? AND expires_at <= ?", (key, now))
            count = conn.execute("SELECT count(*) FROM greenq_shaping_members WHERE key = ?", (key,)).fetchone()[0]
            present = conn.execute("SELECT 1 FROM greenq_shaping_members WHERE key = ? AND member = ?",
                                   (key, member)).fetchone()
            if present or (limit is not None and count >= limit):
                return False, count
            conn.execute("INSERT INTO greenq_shaping_members (key, member, expires_at) VALUES (?, ?, ?)",
                         (key, member, now + ttl))
            return True, count + 1

        return self._write(add)

    def _remove(self, key, member):
        self._write(lambda conn, now: conn.execute(
            "DELETE FROM greenq_shaping_members WHERE key = ? AND member = ?", (key, member)))

    def _count(self, key):
        return self.db.read(lambda conn: conn.execute(
            "SELECT count(*) FROM greenq_shaping_members WHERE key = ? AND expires_at > ?",
            (key, current_millis())).fetchone()[0])

    def _set_flag(self, key, ttl):
        self._write(lambda conn, now: conn.execute(
            "INSERT OR REPLACE INTO greenq_shaping_values (key, value, expires_at) VALUES (?, 1, ?)",
            (key, now + ttl)))

    def _get_flag(self, key):
        row = self.db.read(lambda conn: conn.execute(
            "SELECT 1 FROM greenq_shaping_values WHERE key = ? AND expires_at > ?",
            (key, current_millis())).fetchone())
        return row is not None

    def _debounce(self, key, window, always_delay):
        def debounce(conn, now):
            row = conn.execute("SELECT value FROM greenq_shaping_values WHERE key = ? AND expires_at > ?",
                               (key, now)).fetchone()
            eta = debounce_eta(None if row is None else row[0], now, window, always_delay)
            if eta is None:
                return None
            conn.execute("INSERT OR REPLACE INTO greenq_shaping_values (key, value, expires_at) VALUES (?, ?, ?)",
                         (key, eta, eta + window))
            return eta - now

        return self._write(debounce)

    def flush(self):
        """Drop every shaping record in the file."""
        self.db.write(lambda conn: (conn.execute("DELETE FROM greenq_shaping_members"),
                                    conn.execute("DELETE FROM greenq_shaping_values")))

    def close(self):
        if self._owns_db:
            self.db.close()
