"""The store in a greenq SQLite file: every verb is one short transaction.

It shares the embedded broker's file (``SqliteStore(db=broker.db)``) or opens
one (``path=`` / ``url="sqlite:///..."``), adding tables of its own
(created if missing, so older files gain them on first use):
``greenq_leases``, ``greenq_schedule`` (last tick fired per actor),
``greenq_schedule_pending`` and ``greenq_schedule_contested`` (claims not yet
confirmed sent, ticks that may have two copies; see ``scheduler``),
``greenq_marks`` (started / cancelled / outcome per message id, with expiry)
and ``greenq_data`` (data queue items).

SQLite cannot block a reader until a row appears, so ``wait_started`` polls
with a pause growing from 1 ms to 50 ms (each look is one indexed read of a few
microseconds); a mark written by this process wakes waiters at once. Leases use
the wall clock, which every process on the one machine shares.
"""

import threading
import time

from ..brokers.sqlite import Database, path_from_url
from ..message import current_millis
from .store import CONTESTED_KEPT, Claim, ScheduleState, Store, dead_entry

_TABLES = """
CREATE TABLE IF NOT EXISTS greenq_leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS greenq_schedule (key TEXT PRIMARY KEY, last_fired INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS greenq_schedule_pending (
    key TEXT PRIMARY KEY, tick INTEGER NOT NULL, previous INTEGER, copy TEXT NOT NULL, holder TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS greenq_schedule_contested (
    key TEXT NOT NULL, tick INTEGER NOT NULL, runner TEXT, PRIMARY KEY (key, tick)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS greenq_marks (
    kind TEXT NOT NULL, message_id TEXT NOT NULL, value TEXT, expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, message_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS greenq_data (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    item_id TEXT NOT NULL UNIQUE,
    state INTEGER NOT NULL,                   -- 0 ready, 1 held until deadline
    deadline INTEGER,
    tries INTEGER NOT NULL DEFAULT 0,
    item TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS greenq_data_ready ON greenq_data (queue, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS greenq_data_held ON greenq_data (queue, deadline) WHERE state = 1;
"""

_CHUNK = 500


class SqliteStore(Store):
    """``SqliteStore(path=...)``, ``SqliteStore(url="sqlite:///...")`` or ``SqliteStore(db=broker.db)``."""

    def __init__(self, path=None, *, url=None, db=None, poll_interval=50):
        if sum(x is not None for x in (path, url, db)) != 1:
            raise ValueError("SqliteStore needs exactly one of path=, url= or db=")
        if db is None:
            db = Database(path_from_url(url) if url is not None else path)
            self._owns_db = True
        else:
            self._owns_db = False
        self.db = db
        self.path = db.path
        self.poll_interval = poll_interval / 1000
        self._cond = threading.Condition()
        self._next_purge = 0.0

        def create(conn):
            for statement in _TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)

        db.write(create)

    def __repr__(self):
        return f"SqliteStore(path={self.path!r})"

    # --- leases and ticks --------------------------------------------------------------

    def acquire_lease(self, name, holder, ttl):
        now = current_millis()

        def take(conn):
            row = conn.execute("SELECT holder, expires_at FROM greenq_leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            conn.execute("INSERT OR REPLACE INTO greenq_leases (name, holder, expires_at) VALUES (?, ?, ?)",
                         (name, holder, now + int(ttl)))
            return True

        return self.db.write(take)

    def release_lease(self, name, holder):
        self.db.write(lambda conn: conn.execute(
            "DELETE FROM greenq_leases WHERE name = ? AND holder = ?", (name, holder)))

    def schedule_state(self, key):
        def read(conn):
            last = conn.execute("SELECT last_fired FROM greenq_schedule WHERE key = ?", (key,)).fetchone()
            pending = conn.execute("SELECT tick, copy, holder FROM greenq_schedule_pending WHERE key = ?",
                                   (key,)).fetchone()
            return ScheduleState(None if last is None else last[0], None if pending is None else Claim(*pending))

        return self.db.read(read)

    def init_fired(self, key, tick):
        def init(conn):
            conn.execute("INSERT OR IGNORE INTO greenq_schedule (key, last_fired) VALUES (?, ?)", (key, int(tick)))
            return conn.execute("SELECT last_fired FROM greenq_schedule WHERE key = ?", (key,)).fetchone()[0]

        return self.db.write(init)

    def set_fired(self, key, tick):
        def overwrite(conn):
            conn.execute("INSERT OR REPLACE INTO greenq_schedule (key, last_fired) VALUES (?, ?)", (key, int(tick)))
            conn.execute("DELETE FROM greenq_schedule_pending WHERE key = ?", (key,))

        self.db.write(overwrite)

    def claim_tick(self, key, tick, copy=None, holder=None):
        def claim(conn):
            if conn.execute("SELECT 1 FROM greenq_schedule_pending WHERE key = ?", (key,)).fetchone():
                return False
            row = conn.execute("SELECT last_fired FROM greenq_schedule WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] >= tick:
                return False
            conn.execute("INSERT OR REPLACE INTO greenq_schedule (key, last_fired) VALUES (?, ?)", (key, int(tick)))
            if copy is not None:
                conn.execute("INSERT INTO greenq_schedule_pending (key, tick, previous, copy, holder) "
                             "VALUES (?, ?, ?, ?, ?)", (key, int(tick), None if row is None else row[0], copy, holder))
            return True

        return self.db.write(claim)

    def confirm_tick(self, key, tick, copy):
        self.db.write(lambda conn: conn.execute(
            "DELETE FROM greenq_schedule_pending WHERE key = ? AND tick = ? AND copy = ?", (key, int(tick), copy)))

    def abandon_tick(self, key, tick, copy):
        def abandon(conn):
            row = conn.execute("SELECT previous FROM greenq_schedule_pending WHERE key = ? AND tick = ? AND copy = ?",
                               (key, int(tick), copy)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM greenq_schedule_pending WHERE key = ?", (key,))
            if row[0] is None:
                conn.execute("DELETE FROM greenq_schedule WHERE key = ? AND last_fired = ?", (key, int(tick)))
            else:
                conn.execute("UPDATE greenq_schedule SET last_fired = ? WHERE key = ? AND last_fired = ?",
                             (row[0], key, int(tick)))
            conn.execute("INSERT OR IGNORE INTO greenq_schedule_contested (key, tick, runner) VALUES (?, ?, NULL)",
                         (key, int(tick)))
            conn.execute("DELETE FROM greenq_schedule_contested WHERE key = ? AND tick NOT IN (SELECT tick FROM "
                         "greenq_schedule_contested WHERE key = ? ORDER BY tick DESC LIMIT ?)",
                         (key, key, CONTESTED_KEPT))
            return True

        return self.db.write(abandon)

    def claim_run(self, key, tick, copy):
        def claim(conn):
            conn.execute("DELETE FROM greenq_schedule_pending WHERE key = ? AND tick = ? AND copy = ?",
                         (key, int(tick), copy))
            row = conn.execute("SELECT runner FROM greenq_schedule_contested WHERE key = ? AND tick = ?",
                               (key, int(tick))).fetchone()
            if row is None:
                return True
            if row[0] is None:
                conn.execute("UPDATE greenq_schedule_contested SET runner = ? WHERE key = ? AND tick = ?",
                             (copy, key, int(tick)))
                return True
            return row[0] == copy

        return self.db.write(claim)

    # --- started / cancelled -----------------------------------------------------------

    def _mark(self, kind, message_id, value, ttl):
        now = current_millis()
        purge = time.monotonic() >= self._next_purge
        if purge:
            self._next_purge = time.monotonic() + 10.0

        def mark(conn):
            conn.execute("INSERT OR REPLACE INTO greenq_marks (kind, message_id, value, expires_at) "
                         "VALUES (?, ?, ?, ?)", (kind, message_id, value, now + int(ttl)))
            if purge:
                conn.execute("DELETE FROM greenq_marks WHERE expires_at <= ?", (now,))

        self.db.write(mark)
        with self._cond:
            self._cond.notify_all()

    def _read(self, kind, message_id):
        row = self.db.read(lambda conn: conn.execute(
            "SELECT value FROM greenq_marks WHERE kind = ? AND message_id = ? AND expires_at > ?",
            (kind, message_id, current_millis())).fetchone())
        return None if row is None else row[0]

    def mark_started(self, message_id, ttl):
        self._mark("started", message_id, "1", ttl)

    def wait_started(self, message_id, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while True:
            if self._read("started", message_id) is not None:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with self._cond:
                self._cond.wait(pause if left is None else min(pause, left))
            pause = min(pause * 2, self.poll_interval)

    def mark_cancelled(self, message_id, ttl):
        self._mark("cancelled", message_id, "1", ttl)

    def cancelled_among(self, message_ids):
        ids = list(message_ids)
        found = set()
        now = current_millis()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.db.read(lambda conn: conn.execute(
                f"SELECT message_id FROM greenq_marks WHERE kind = 'cancelled' AND expires_at > ? "
                f"AND message_id IN ({marks})", [now] + chunk).fetchall())
            found.update(row[0] for row in rows)
        return found

    def set_outcome(self, message_id, outcome, ttl):
        self._mark("outcome", message_id, outcome, ttl)

    def get_outcome(self, message_id):
        return self._read("outcome", message_id)

    # --- data queues -------------------------------------------------------------------

    def dq_put(self, queue, entries):
        for start in range(0, len(entries), _CHUNK):
            chunk = entries[start:start + _CHUNK]
            self.db.write(lambda conn: conn.executemany(
                "INSERT INTO greenq_data (queue, item_id, state, tries, item) VALUES (?, ?, 0, 0, ?)",
                [(queue, item_id, text) for item_id, text in chunk]))

    def _reclaim(self, conn, queue, attempts, dead_queue, now):
        rows = conn.execute("SELECT seq, item_id, tries, item FROM greenq_data WHERE queue = ? AND state = 1 "
                            "AND deadline <= ? ORDER BY deadline LIMIT 1000", (queue, now)).fetchall()
        back = [(seq,) for seq, _, tries, _ in rows if tries < attempts]
        dead = [row for row in rows if row[2] >= attempts]
        conn.executemany("UPDATE greenq_data SET state = 0, deadline = NULL WHERE seq = ?", back)
        conn.executemany("DELETE FROM greenq_data WHERE seq = ?", [(row[0],) for row in dead])
        if dead_queue is not None:
            conn.executemany(
                "INSERT INTO greenq_data (queue, item_id, state, tries, item) VALUES (?, ?, 0, 0, ?)",
                [(dead_queue, item_id, dead_entry(queue, item, tries, now)) for _, item_id, tries, item in dead])

    def dq_get(self, queue, count, vis_timeout, attempts, dead_queue):
        def get(conn):
            now = current_millis()
            self._reclaim(conn, queue, attempts, dead_queue, now)
            if count <= 0:
                return []
            rows = conn.execute("SELECT seq, item_id, item FROM greenq_data WHERE queue = ? AND state = 0 "
                                "ORDER BY seq LIMIT ?", (queue, count)).fetchall()
            if vis_timeout > 0:
                conn.executemany("UPDATE greenq_data SET state = 1, deadline = ?, tries = tries + 1 WHERE seq = ?",
                                 [(now + int(vis_timeout), row[0]) for row in rows])
            else:
                conn.executemany("DELETE FROM greenq_data WHERE seq = ?", [(row[0],) for row in rows])
            return [(item_id, item) for _, item_id, item in rows]

        return self.db.write(get)

    def _held(self, conn, queue, ids):
        held = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            held += [row[0] for row in conn.execute(
                f"SELECT item_id FROM greenq_data WHERE queue = ? AND state = 1 AND item_id IN ({marks})",
                [queue] + chunk)]
        keep = set(held)
        return [i for i in ids if i in keep]

    def dq_refresh(self, queue, ids, vis_timeout):
        def refresh(conn):
            held = self._held(conn, queue, list(ids))
            deadline = current_millis() + int(vis_timeout)
            conn.executemany("UPDATE greenq_data SET deadline = ? WHERE item_id = ?", [(deadline, i) for i in held])
            return held

        return self.db.write(refresh)

    def dq_done(self, queue, ids):
        def done(conn):
            held = self._held(conn, queue, list(ids))
            conn.executemany("DELETE FROM greenq_data WHERE item_id = ?", [(i,) for i in held])
            return held

        return self.db.write(done)

    def dq_counts(self, queue, attempts, dead_queue):
        def count(conn):
            self._reclaim(conn, queue, attempts, dead_queue, current_millis())
            rows = dict(conn.execute("SELECT state, count(*) FROM greenq_data WHERE queue = ? GROUP BY state",
                                     (queue,)).fetchall())
            return {"ready": rows.get(0, 0), "held": rows.get(1, 0)}

        return self.db.write(count)

    def close(self):
        if self._owns_db:
            self.db.close()
