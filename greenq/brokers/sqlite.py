"""The embedded broker: one SQLite file, shared by every process on the machine.

It is greenq's zero-setup default (``greenq.sqlite3`` in the working directory)
and needs nothing but the standard library's ``sqlite3``. The file is in WAL
mode, so readers never wait for the writer, and every state change is one short
``BEGIN IMMEDIATE`` transaction.

How it keeps the broker promises:

* **Fetch** claims a batch of ready rows in one transaction (``UPDATE ...
  RETURNING``), highest priority first, then arrival; due delayed rows are
  promoted to ready in the same transaction. Delays stay in the file, never in a
  worker's memory.
* **Waiting without hammering the file.** SQLite has no blocking pop. An idle
  consumer asks ``PRAGMA data_version`` (a read of the WAL index in shared
  memory, a few microseconds, no lock) every ``poll_interval`` at most, and
  opens a write transaction only when another connection has committed and a
  cheap read shows something ready or due. Enqueues in the same process wake
  consumers at once through a condition variable. The cost of an idle consumer
  is one such check and one wake-up per poll (at the default 10 ms, measured at
  2-4% of a core per idle process, heartbeat thread included); the price is a
  cross-process pickup latency of about half a poll interval when idle.
* **Crash safety.** Each broker that consumes registers an *owner* row and
  refreshes its heartbeat from a real OS thread with its own connection, so a
  greenlet that hogs the hub does not make the process look dead. Fetch runs a
  reaper every so often: the messages of owners whose heartbeat is older than
  ``heartbeat_timeout`` go back to ready; past ``max_deliveries`` they are
  dead-lettered with the failure ``MaxDeliveriesExceeded``, as on Redis. Closing a consumer or the broker
  requeues what it holds at once.
* **The gevent hub.** A SQLite call blocks the thread that makes it, and under
  gevent that thread is the hub. Transactions are therefore tiny, batches are
  chunked, and lock waits are short (``busy_timeout`` of a few ms) with the rest
  of the wait done by cooperative sleeps between retries. ``db_stats()`` reports
  the longest call this broker made, to check it under load.

Connections: one per OS thread (under gevent every greenlet shares the hub
thread's connection, behind a lock), reopened after ``fork``. ``fork`` waits for
the heartbeat thread to leave SQLite, so a child never inherits its mutexes
locked; forking while *other* threads of yours are inside SQLite calls is not
safe (the supervisor forks from a master with no broker threads).
Durability: ``synchronous=NORMAL``: a crash of any process loses nothing; a
power cut may lose the last commits, never corrupt the file.
"""

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from urllib.parse import unquote, urlsplit

from .. import concurrency
from ..broker import DEAD_MESSAGE_TTL, Broker, Consumer
from ..errors import BrokerConfigError, ConnectionError, DecodeError, EncodeError, QueueNotFound
from ..message import Message, MessageProxy, current_millis

logger = logging.getLogger("greenq.brokers.sqlite")

#: Marks a SQLite file as greenq's (``PRAGMA application_id``), the ASCII of "grnq".
APPLICATION_ID = 0x67726E71
#: The layout this code reads and writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1

READY, DELAYED, HELD = 0, 1, 2
_STATE_NAMES = {READY: "ready", DELAYED: "delayed", HELD: "in_flight"}

_SCHEMA = """
CREATE TABLE greenq_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE greenq_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,      -- arrival order
    queue TEXT NOT NULL,
    state INTEGER NOT NULL,                    -- 0 ready, 1 delayed, 2 held by a consumer
    priority INTEGER NOT NULL DEFAULT 0,       -- higher first
    eta INTEGER,                               -- epoch ms, for delayed rows
    owner TEXT,                                -- holding broker instance (greenq_owners.id)
    consumer TEXT,                             -- holding consumer
    fetched_at INTEGER,
    deliveries INTEGER NOT NULL DEFAULT 0,
    message_id TEXT,
    payload BLOB NOT NULL
);
CREATE INDEX greenq_messages_ready ON greenq_messages (queue, priority DESC, id) WHERE state = 0;
CREATE INDEX greenq_messages_delayed ON greenq_messages (queue, eta) WHERE state = 1;
CREATE INDEX greenq_messages_held ON greenq_messages (owner, consumer) WHERE state = 2;
CREATE TABLE greenq_dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    message_id TEXT,
    dead_at INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX greenq_dead_queue ON greenq_dead (queue, id);
CREATE INDEX greenq_dead_at ON greenq_dead (dead_at);
CREATE TABLE greenq_owners (
    id TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    started_at INTEGER,
    heartbeat INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE greenq_results (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX greenq_results_expiry ON greenq_results (expires_at);
"""

#: SQLite >= 3.35 claims a batch in one statement; older ones select then update.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_CHUNK = 500  # rows per statement/transaction in batches, to keep each hub stall short


#: Held by heartbeat threads around their SQLite calls, and by ``fork`` (``os.register_at_fork``):
#: a child forked while that thread was inside SQLite would inherit SQLite's mutexes locked by a
#: thread that no longer exists, and hang on its first call. A real OS lock, even under gevent.
_fork_lock = concurrency.original("_thread", "allocate_lock")()


def _release_fork_lock():
    if _fork_lock.locked():
        _fork_lock.release()


os.register_at_fork(before=_fork_lock.acquire, after_in_parent=_release_fork_lock,
                    after_in_child=_release_fork_lock)


class DatabaseFileError(BrokerConfigError, ConnectionError):
    """The file is not a greenq database this greenq can use (foreign content, newer schema).

    A ``BrokerConfigError`` by nature, and a ``ConnectionError`` too, so a
    worker that cannot open its broker exits with the broker-connection code.
    """


def path_from_url(url):
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL, made absolute."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ValueError(f"not a sqlite:// URL: {url!r}")
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"sqlite URL {url!r} names a host; use sqlite:///relative/path or sqlite:////absolute/path")
    path = unquote(parts.path)
    if path.startswith("/"):
        path = path[1:]  # sqlite:///x -> "x" (relative); sqlite:////x -> "/x"
    if not path or path == ":memory:":
        raise ValueError(f"sqlite URL {url!r} needs a file path, shared by every process (not :memory:)")
    return os.path.abspath(path)


def _is_busy(error):
    text = str(error).lower()
    return "locked" in text or "busy" in text


class _Connection:
    __slots__ = ("conn", "lock")

    def __init__(self, conn):
        self.conn = conn
        self.lock = threading.Lock()


class Database:
    """One greenq SQLite file: checked on open, connections per OS thread, short transactions.

    Shared by the broker and the SQLite result backend. ``write(fn)`` runs
    ``fn(conn)`` inside ``BEGIN IMMEDIATE``/``COMMIT`` and retries it while
    another process holds the write lock, with cooperative sleeps between tries,
    for up to ``lock_timeout`` seconds.
    """

    busy_timeout_ms = 2  # a blocking wait inside SQLite stalls the hub: keep it short

    def __init__(self, path, *, lock_timeout=30.0):
        self.path = os.path.abspath(path)
        self.lock_timeout = lock_timeout
        self._pid = os.getpid()
        self._connections = {}
        self._connections_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.calls = 0
        self.slow_calls = 0
        self.longest_call = 0.0
        self.closed = False
        self.background_checkpoints = False
        self._check_location()
        self._open_schema()

    # --- opening and checking the file ---------------------------------------------------

    def _check_location(self):
        folder = os.path.dirname(self.path) or "."
        if not os.path.isdir(folder):
            raise ConnectionError(f"cannot open the SQLite broker file {self.path}: the folder {folder} does not exist")
        if os.path.isdir(self.path):
            raise ConnectionError(f"cannot open the SQLite broker file {self.path}: it is a folder")
        # WAL mode creates -wal and -shm files beside the database, so the folder must be writable too.
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConnectionError(
                f"cannot open the SQLite broker file {self.path}: no permission to write in the folder {folder}"
            )
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK):
            raise ConnectionError(f"cannot open the SQLite broker file {self.path}: no permission to read and write it")

    def _open_schema(self):
        """Check the file, switch it to WAL and create the schema, retrying while siblings do the same.

        Several processes often open one fresh file at the same moment (a
        worker command's children): each step may find the file locked by a
        sibling's WAL switch or schema creation, so every step retries.
        """
        conn = self.connection().conn
        try:
            self._retry_busy(lambda: self._validate(conn, allow_fresh=True))
            mode = self._retry_busy(lambda: conn.execute("PRAGMA journal_mode").fetchone()[0])
            if mode.lower() != "wal":
                self._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            self.write(self._create_schema)
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None

    def _validate(self, conn, allow_fresh):
        """Raise ``DatabaseFileError`` unless the file is a greenq database this code can use; True if empty."""
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as e:
            if _is_busy(e):
                raise
            raise DatabaseFileError(f"{self.path} is not a greenq database (SQLite says: {e})") from None
        if app_id == 0 and tables == 0 and allow_fresh:
            return True
        if app_id != APPLICATION_ID:
            raise DatabaseFileError(
                f"{self.path} is not a greenq database (it is a SQLite file with other content); "
                "point greenq at another file"
            )
        if version > SCHEMA_VERSION:
            raise DatabaseFileError(
                f"{self.path} was written by a newer greenq (schema version {version}; this greenq reads up to "
                f"{SCHEMA_VERSION}); upgrade greenq or use another file"
            )
        return False

    def _create_schema(self, conn):
        if not self._validate(conn, allow_fresh=True):
            return  # another process created it first
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        logger.info("Created the greenq database %s.", self.path)

    def _error(self, error):
        """greenq's error for a ``sqlite3.DatabaseError``, naming the file (what SQLite's own text never does)."""
        text, name = str(error), getattr(error, "sqlite_errorname", "")
        if name == "SQLITE_NOTADB" or "not a database" in text:
            return DatabaseFileError(f"{self.path} is not a greenq database (SQLite says: {error})")
        if name == "SQLITE_CORRUPT" or "malformed" in text:
            return DatabaseFileError(
                f"the SQLite broker file {self.path} is damaged (SQLite says: {error}); restore it from a backup, "
                "or stop every worker and move it aside so greenq starts a fresh one"
            )
        if isinstance(error, sqlite3.OperationalError) and "unable to open" in text:
            return ConnectionError(f"cannot open the SQLite broker file {self.path}: {error}")
        return ConnectionError(f"SQLite broker file {self.path}: {error}")

    # --- connections -------------------------------------------------------------------------

    def connection(self) -> _Connection:
        """This OS thread's connection (all greenlets of a thread share it, behind its lock)."""
        if self.closed:
            raise ConnectionError(f"the SQLite broker on {self.path} is closed")
        if os.getpid() != self._pid:
            self._after_fork()
        key = threading.get_native_id()  # the OS thread, even when gevent patches get_ident
        entry = self._connections.get(key)
        if entry is None:
            entry = _Connection(self.open_connection())
            with self._connections_lock:
                self._connections[key] = entry
        return entry

    def open_connection(self, busy_timeout_ms=None):
        """A new connection in autocommit mode (transactions are explicit)."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None

        def configure():  # may meet the lock of a sibling process switching a fresh file to WAL
            conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms or self.busy_timeout_ms}")
            conn.execute("PRAGMA synchronous = NORMAL")
            if self.background_checkpoints:
                conn.execute("PRAGMA wal_autocheckpoint = 0")

        try:
            self._retry_busy(configure)
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None
        return conn

    def checkpoint_in_background(self):
        """Stop this process's connections from checkpointing on commit: a background thread does it."""
        self.background_checkpoints = True
        for entry in list(self._connections.values()):
            with entry.lock:
                entry.conn.execute("PRAGMA wal_autocheckpoint = 0")

    def _after_fork(self):
        """A forked child must not use its parent's connections: forget them (without closing)."""
        self._pid = os.getpid()
        self.background_checkpoints = False  # the parent's checkpointing thread did not survive the fork
        self._inherited = list(self._connections.values())  # kept referenced, so never closed here
        self._connections = {}
        self._connections_lock = threading.Lock()

    def close(self):
        self.closed = True
        with self._connections_lock:
            connections, self._connections = list(self._connections.values()), {}
        if os.getpid() != self._pid:
            return
        for entry in connections:
            try:
                entry.conn.close()
            except sqlite3.Error as e:
                logger.debug("Closing a connection to %s failed: %s", self.path, e)

    # --- running statements ----------------------------------------------------------------

    def _retry_busy(self, attempt):
        """Call ``attempt()`` until it does not fail with a lock error, for up to ``lock_timeout`` s."""
        deadline = None
        delay = 0.001
        while True:
            try:
                return attempt()
            except sqlite3.DatabaseError as e:  # also a file damaged after it was opened, not only locks
                if not (isinstance(e, sqlite3.OperationalError) and _is_busy(e)):
                    raise self._error(e) from None
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.lock_timeout
                elif now >= deadline:
                    raise ConnectionError(
                        f"SQLite broker file {self.path} stayed locked for {self.lock_timeout:.0f}s: {e}"
                    ) from None
            time.sleep(delay)  # cooperative under gevent: other greenlets run meanwhile
            delay = min(delay * 2, 0.05)

    def write(self, fn):
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction and return its result."""
        entry = self.connection()

        def attempt():
            with entry.lock:
                conn = entry.conn
                start = time.perf_counter()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                finally:
                    self._count(time.perf_counter() - start)
                return result

        return self._retry_busy(attempt)

    def read(self, fn):
        """Run ``fn(conn)`` outside a write transaction (WAL readers never wait for the writer)."""
        entry = self.connection()

        def attempt():
            with entry.lock:
                start = time.perf_counter()
                try:
                    return fn(entry.conn)
                finally:
                    self._count(time.perf_counter() - start)

        return self._retry_busy(attempt)

    def data_version(self):
        """A number that changes when another connection commits (a shared-memory read, no lock).

        Commits through this thread's own connection do not change it; the
        broker's in-process wake-ups cover those. None when it cannot be read.
        """
        entry = self.connection()
        with entry.lock:
            try:
                return entry.conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
                    return None
                raise self._error(e) from None

    def _count(self, seconds):
        with self._stats_lock:
            self.calls += 1
            if seconds > 0.005:
                self.slow_calls += 1
            if seconds > self.longest_call:
                self.longest_call = seconds
        if seconds > 0.1:
            logger.warning("A call to the SQLite file %s took %.0f ms (the thread, or gevent hub, was blocked).",
                           self.path, seconds * 1000)


# --- the broker -----------------------------------------------------------------------------


class SqliteBroker(Broker):
    """A durable broker on one SQLite file, shared by every process on the machine.

    ``path`` or ``url`` (``sqlite:///relative`` / ``sqlite:////absolute``) names
    the file; it is created if missing. Times are in milliseconds:
    ``heartbeat_timeout`` is how long a consuming process may go silent before
    its messages are redelivered; ``visibility_timeout``, if set, also
    redelivers a message held longer than that by a live process (off by
    default: long jobs are fine); ``dead_message_ttl`` is how long dead letters
    are kept; ``max_deliveries`` bounds how many times a message is handed to
    processes that die before it is dead-lettered. ``poll_interval`` is the
    longest an idle consumer waits before it looks at the file again.
    """

    def __init__(self, path=None, *, url=None, visibility_timeout=None, heartbeat_timeout=15000,
                 dead_message_ttl=DEAD_MESSAGE_TTL, max_deliveries=5, poll_interval=10, lock_timeout=30000,
                 middleware=None):
        if (path is None) == (url is None):
            raise ValueError("SqliteBroker needs exactly one of path= or url=")
        if url is not None:
            path = path_from_url(url)
        if heartbeat_timeout <= 0 or dead_message_ttl < 0 or max_deliveries < 1 or poll_interval <= 0:
            raise ValueError("heartbeat_timeout and poll_interval must be > 0, dead_message_ttl >= 0, "
                             "max_deliveries >= 1")
        super().__init__(middleware=middleware)
        self.path = os.path.abspath(os.fspath(path))
        self.heartbeat_timeout = heartbeat_timeout
        self.visibility_timeout = visibility_timeout
        self.dead_message_ttl = dead_message_ttl
        self.max_deliveries = max_deliveries
        self.poll_interval = poll_interval / 1000
        self.db = Database(self.path, lock_timeout=lock_timeout / 1000)
        self._wake = threading.Condition()
        self._generation = 0
        self._owner = None
        self._owner_pid = None
        self._owner_lock = threading.Lock()
        self._heartbeat_running = False
        self._next_reap = 0.0

    def __repr__(self):
        return f"SqliteBroker(path={self.path!r})"

    # --- in-process wake-ups ----------------------------------------------------------------

    def _notify(self):
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def _wait(self, generation, timeout):
        with self._wake:
            if self._generation == generation:
                self._wake.wait(timeout)

    # --- queues and enqueueing ------------------------------------------------------------

    def _declare_queue(self, queue_name):
        self.db.write(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO greenq_queues (name) VALUES (?)", (queue_name,)))

    def _known_queue(self, queue_name):
        if queue_name in self.queues:
            return
        found = self.db.read(lambda conn: conn.execute(
            "SELECT 1 FROM greenq_queues WHERE name = ?", (queue_name,)).fetchone())
        if found is None:
            raise QueueNotFound(f"queue {queue_name!r} is not declared on {self!r}")

    def _enqueue(self, message, eta, priority):
        self._enqueue_many([(message, eta, priority)])

    def _enqueue_many(self, entries):
        now = current_millis()
        rows = []
        for message, eta, priority in entries:
            delayed = eta is not None and eta > now
            rows.append((message.queue_name, DELAYED if delayed else READY, priority,
                         eta if delayed else None, message.message_id, message.encode()))
        self._insert(rows)

    def _insert(self, rows):
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start:start + _CHUNK]
            self.db.write(lambda conn: conn.executemany(
                "INSERT INTO greenq_messages (queue, state, priority, eta, message_id, payload)"
                " VALUES (?, ?, ?, ?, ?, ?)", chunk))
        if rows:
            self._notify()

    def enqueue_raw(self, queue_name, payload, priority=0):
        """Store bytes as they are, ready now: what another language's producer would write."""
        self.declare_queue(queue_name)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        self._insert([(queue_name, READY, priority, None, None, bytes(payload))])

    # --- consuming --------------------------------------------------------------------------

    def consume(self, queue_name, prefetch=1, timeout=1000):
        self.declare_queue(queue_name)
        return _SqliteConsumer(self, queue_name, self._ensure_owner(), timeout / 1000)

    def _ensure_owner(self):
        """Register this process as a holder of messages and start its heartbeat (once per process)."""
        with self._owner_lock:
            if self._owner is None or self._owner_pid != os.getpid():
                self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
                self._owner_pid = os.getpid()
                self._beat(self.db, self._owner)
                self.db.checkpoint_in_background()
                self._heartbeat_running = True
                concurrency.start_os_thread(self._heartbeat_loop, self._owner, name="greenq-sqlite-heartbeat")
            return self._owner

    def _beat(self, db_or_conn, owner):
        now = current_millis()
        sql = ("INSERT INTO greenq_owners (id, host, pid, started_at, heartbeat) VALUES (?, ?, ?, ?, ?)"
               " ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat")
        args = (owner, socket.gethostname(), os.getpid(), now, now)
        if isinstance(db_or_conn, Database):
            db_or_conn.write(lambda conn: conn.execute(sql, args))
        else:
            db_or_conn.execute(sql, args)

    def _heartbeat_loop(self, owner):
        """On a real OS thread with its own connection: keep ``owner`` alive, and checkpoint the WAL.

        Checkpoints copy the WAL back into the database and fsync it: several
        milliseconds that would otherwise land on whichever commit crosses the
        auto-checkpoint size, stalling the gevent hub. Here they cost the hub
        nothing. The thread touches nothing shared with the hub but plain
        attribute reads, and it sleeps with the real ``sleep``.
        """
        interval = self.heartbeat_timeout / 1000 / 4
        with _fork_lock:
            conn = self.db.open_connection(busy_timeout_ms=1000)
        try:
            next_beat = time.monotonic() + interval
            while self._heartbeat_running and self._owner == owner and not self.db.closed:
                try:
                    with _fork_lock:
                        if time.monotonic() >= next_beat:
                            next_beat = time.monotonic() + interval
                            self._beat(conn, owner)
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as e:  # the next beat tries again; the timeout allows a few misses
                    logger.warning("Heartbeat to %s failed: %s", self.path, e)
                concurrency.os_sleep(max(0.0, min(0.1, next_beat - time.monotonic())))
        finally:
            with _fork_lock:
                conn.close()

    def _maybe_reap(self, force=False):
        """Return the messages of dead owners (every quarter heartbeat timeout at most)."""
        now = time.monotonic()
        if not force and now < self._next_reap:
            return 0
        self._next_reap = now + min(self.heartbeat_timeout / 1000 / 4, 5.0)
        cutoff = current_millis() - self.heartbeat_timeout
        stale = self.db.read(lambda conn: conn.execute(
            "SELECT 1 FROM greenq_owners WHERE heartbeat < ? UNION ALL"
            " SELECT 1 FROM (SELECT owner FROM greenq_messages WHERE state = 2) AS held"
            " WHERE held.owner IS NULL OR held.owner NOT IN (SELECT id FROM greenq_owners) LIMIT 1",
            (cutoff,)).fetchone())
        if stale is None and self.visibility_timeout is None:
            return 0
        return self.db.write(lambda conn: self._reap(conn, cutoff))

    def _reap(self, conn, cutoff):
        now = current_millis()
        dead_owners = [row[0] for row in conn.execute("SELECT id FROM greenq_owners WHERE heartbeat < ?", (cutoff,))]
        if dead_owners:
            conn.executemany("DELETE FROM greenq_owners WHERE id = ?", [(o,) for o in dead_owners])
            logger.warning("Consumers %s stopped their heartbeat for over %d ms; returning their messages.",
                           ", ".join(dead_owners), self.heartbeat_timeout)
        condition = "owner IS NULL OR owner NOT IN (SELECT id FROM greenq_owners)"
        args = ()
        if self.visibility_timeout is not None:
            condition += " OR fetched_at < ?"
            args = (now - self.visibility_timeout,)
        rows = conn.execute(
            f"SELECT id, queue, priority, deliveries, message_id, payload, owner FROM greenq_messages"
            f" WHERE state = 2 AND ({condition})", args).fetchall()
        if not rows:
            return 0
        back = [(row[0],) for row in rows if row[3] < self.max_deliveries]
        conn.executemany("UPDATE greenq_messages SET state = 0, owner = NULL, consumer = NULL WHERE id = ?", back)
        dead = [row for row in rows if row[3] >= self.max_deliveries]
        for row_id, queue, priority, deliveries, message_id, payload, owner in dead:
            failure = (f"MaxDeliveriesExceeded: delivered {deliveries} times to consumers that died or stalled "
                       f"(last: {owner}); dead-lettered after max_deliveries={self.max_deliveries}")
            logger.error("Dead-lettering message %s on queue %r: %s", message_id, queue, failure)
            conn.execute("DELETE FROM greenq_messages WHERE id = ?", (row_id,))
            conn.execute("INSERT INTO greenq_dead (queue, priority, message_id, dead_at, payload) VALUES (?, ?, ?, ?, ?)",
                         (queue, priority, message_id, now, _with_failure(payload, queue, row_id, failure, now)))
        self._purge_expired(conn, now)
        if back:
            logger.warning("Returned %d message(s) of dead or stalled consumers to their queues.", len(back))
        return len(rows)

    def _purge_expired(self, conn, now):
        conn.execute("DELETE FROM greenq_dead WHERE dead_at < ?", (now - self.dead_message_ttl,))

    # --- housekeeping and inspection ---------------------------------------------------------

    def _flush(self, queue_name):
        def flush(conn):
            conn.execute("DELETE FROM greenq_messages WHERE queue = ?", (queue_name,))
            conn.execute("DELETE FROM greenq_dead WHERE queue = ?", (queue_name,))
        self.db.write(flush)

    def queue_counts(self, queue_name):
        self._known_queue(queue_name)
        live_since = current_millis() - self.dead_message_ttl

        def count(conn):
            counts = {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
            for state, n in conn.execute(
                    "SELECT state, count(*) FROM greenq_messages WHERE queue = ? GROUP BY state", (queue_name,)):
                counts[_STATE_NAMES[state]] = n
            counts["dead"] = conn.execute("SELECT count(*) FROM greenq_dead WHERE queue = ? AND dead_at >= ?",
                                          (queue_name, live_since)).fetchone()[0]
            return counts

        return self.db.read(count)

    def dead_letters_of(self, queue_name):
        self._known_queue(queue_name)
        rows = self.db.read(lambda conn: conn.execute(
            "SELECT id, payload FROM greenq_dead WHERE queue = ? AND dead_at >= ? ORDER BY id",
            (queue_name, current_millis() - self.dead_message_ttl)).fetchall())
        letters = []
        for row_id, payload in rows:
            try:
                letters.append(Message.decode(payload))
            except DecodeError as e:  # e.g. nested deeper than this thread's stack can decode
                letters.append(_placeholder(queue_name, row_id, e, payload))
        return letters

    def requeue_dead(self, queue_name, message_ids=None):
        self._known_queue(queue_name)
        live_since = current_millis() - self.dead_message_ttl
        wanted = None if message_ids is None else set(message_ids)

        def move(conn):
            rows = conn.execute("SELECT id, priority, message_id, payload FROM greenq_dead"
                                " WHERE queue = ? AND dead_at >= ? ORDER BY id", (queue_name, live_since)).fetchall()
            rows = [row for row in rows if wanted is None or row[2] in wanted]
            conn.executemany("DELETE FROM greenq_dead WHERE id = ?", [(row[0],) for row in rows])
            conn.executemany("INSERT INTO greenq_messages (queue, state, priority, message_id, payload)"
                             " VALUES (?, 0, ?, ?, ?)", [(queue_name, row[1], row[2], row[3]) for row in rows])
            return len(rows)

        moved = self.db.write(move)
        if moved:
            self._notify()
        return moved

    def purge_dead(self, queue_name):
        self._known_queue(queue_name)
        live_since = current_millis() - self.dead_message_ttl

        def purge(conn):
            live = conn.execute("SELECT count(*) FROM greenq_dead WHERE queue = ? AND dead_at >= ?",
                                (queue_name, live_since)).fetchone()[0]
            conn.execute("DELETE FROM greenq_dead WHERE queue = ?", (queue_name,))
            return live

        return self.db.write(purge)

    def db_stats(self, reset=False):
        """SQLite calls made by this process, those over 5 ms, and the longest (ms), wall-clock.

        Under gevent each call blocks the hub for its whole duration, so this is
        the worst stall the broker caused (plus any time the OS descheduled the
        process meanwhile). ``reset=True`` starts counting afresh.
        """
        db = self.db
        with db._stats_lock:
            stats = {"calls": db.calls, "slow_calls": db.slow_calls, "longest_call_ms": round(db.longest_call * 1000, 3)}
            if reset:
                db.calls, db.slow_calls, db.longest_call = 0, 0, 0.0
        return stats

    def ping(self):
        try:
            self.db.read(lambda conn: conn.execute("SELECT count(*) FROM greenq_queues").fetchone())
        except sqlite3.Error as e:
            raise self.db._error(e) from None

    def close(self):
        """Requeue what this process holds, stop the heartbeat, close the connections."""
        if self.db.closed:
            return
        self._heartbeat_running = False
        owner, self._owner = self._owner, None
        if owner is not None and self._owner_pid == os.getpid():
            def release(conn):
                conn.execute("UPDATE greenq_messages SET state = 0, owner = NULL, consumer = NULL,"
                             " deliveries = max(deliveries - 1, 0) WHERE state = 2 AND owner = ?", (owner,))
                conn.execute("DELETE FROM greenq_owners WHERE id = ?", (owner,))
            try:
                self.db.write(release)
            except ConnectionError as e:
                logger.warning("Could not return held messages on close (the heartbeat timeout will): %s", e)
        self.db.close()


def _with_failure(payload, queue_name, row_id, failure, now):
    """The payload with ``failure``/``failed_at`` set in its options, or a placeholder if undecodable."""
    try:
        message = Message.decode(payload)
        options = {**message.options, "failure": failure, "failed_at": now}
        return message.copy(options=options).encode()
    except (DecodeError, EncodeError) as e:  # EncodeError: nesting that decodes but cannot encode again
        return _placeholder(queue_name, row_id, e, payload, failure).encode()


def _placeholder(queue_name, row_id, error, payload, failure=None):
    """A dead letter standing for bytes that are not a message, so it can be listed and inspected."""
    return Message(
        queue_name=queue_name, actor_name="<undecodable>", args=(), kwargs={},
        options={"failure": failure or f"{type(error).__name__}: {getattr(error, 'reason', error)}",
                 "failed_at": current_millis(), "raw": repr(bytes(payload))[:1000]},
        message_id=getattr(error, "message_id", None) or f"undecodable-{row_id}",
    )


class _Burial:
    """A held row about to become a dead letter (what ``_settle`` needs: receipt and message id)."""

    __slots__ = ("receipt", "message_id", "priority", "payload")

    def __init__(self, receipt, message, priority, payload):
        self.receipt, self.message_id, self.priority, self.payload = receipt, message.message_id, priority, payload


class _SqliteConsumer(Consumer):
    """Claims batches of one queue's rows for one worker; the rows say who holds them."""

    def __init__(self, broker, queue_name, owner, timeout):
        self.broker = broker
        self.queue_name = queue_name
        self.owner = owner
        self.id = uuid.uuid4().hex[:12]
        self._iter_timeout = timeout
        self._next_eta = None  # epoch ms of the earliest delayed row, as last seen
        self._maybe_ready = True  # False once a look found nothing, until something changes
        self._data_version = None
        self._generation = None
        self.closed = False

    # --- fetch -------------------------------------------------------------------------------

    def fetch(self, count, timeout):
        broker = self.broker
        deadline = time.monotonic() + timeout
        interval = 0.0005
        while True:
            generation = broker._generation
            if generation != self._generation:  # an enqueue or requeue in this process
                self._generation = generation
                self._maybe_ready = True
            broker._maybe_reap()
            if self._worth_claiming():
                rows = self._claim(count)
                if rows:
                    messages = self._decode(rows)
                    if messages:
                        return messages
                    continue  # all were undecodable (now dead letters): look again at once
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wait = min(interval, left)
            if self._next_eta is not None:
                wait = min(wait, max(0.0, (self._next_eta - current_millis()) / 1000))
            broker._wait(generation, wait)
            if broker._generation != generation:
                interval = 0.0005
            else:
                interval = min(interval * 2, broker.poll_interval)

    def _worth_claiming(self):
        """Cheaply decide whether a write transaction could find anything."""
        db = self.broker.db
        version = db.data_version()
        if version is None or version != self._data_version:  # another connection committed
            self._data_version = version
            self._maybe_ready = True
        if not self._maybe_ready and (self._next_eta is None or current_millis() < self._next_eta):
            return False
        queue = self.queue_name

        def look(conn):
            ready = conn.execute("SELECT 1 FROM greenq_messages WHERE queue = ? AND state = 0 LIMIT 1",
                                 (queue,)).fetchone()
            eta = conn.execute("SELECT min(eta) FROM greenq_messages WHERE queue = ? AND state = 1",
                               (queue,)).fetchone()[0]
            return ready is not None, eta

        ready, self._next_eta = db.read(look)
        self._maybe_ready = False
        return ready or (self._next_eta is not None and self._next_eta <= current_millis())

    def _claim(self, count):
        broker, queue = self.broker, self.queue_name
        holder = (self.owner, self.id)

        def claim(conn):
            now = current_millis()
            conn.execute("UPDATE greenq_messages SET state = 0, eta = NULL WHERE queue = ? AND state = 1 AND eta <= ?",
                         (queue, now))
            pick = ("SELECT id FROM greenq_messages WHERE queue = ? AND state = 0"
                    " ORDER BY priority DESC, id LIMIT ?")
            if HAS_RETURNING:
                rows = conn.execute(
                    f"UPDATE greenq_messages SET state = 2, owner = ?, consumer = ?, fetched_at = ?,"
                    f" deliveries = deliveries + 1 WHERE id IN ({pick})"
                    f" RETURNING id, priority, deliveries, payload", (*holder, now, queue, count)).fetchall()
            else:  # pragma: no cover - SQLite < 3.35
                ids = [row[0] for row in conn.execute(pick, (queue, count))]
                conn.executemany("UPDATE greenq_messages SET state = 2, owner = ?, consumer = ?, fetched_at = ?,"
                                 " deliveries = deliveries + 1 WHERE id = ?", [(*holder, now, i) for i in ids])
                marks = ",".join("?" * len(ids))
                rows = conn.execute(f"SELECT id, priority, deliveries, payload FROM greenq_messages"
                                    f" WHERE id IN ({marks})", ids).fetchall() if ids else []
            if len(rows) < count:
                self._maybe_ready = False
                eta = conn.execute("SELECT min(eta) FROM greenq_messages WHERE queue = ? AND state = 1",
                                   (queue,)).fetchone()[0]
                self._next_eta = eta
            else:
                self._maybe_ready = True
            return rows

        rows = broker.db.write(claim)
        rows.sort(key=lambda row: (-row[1], row[0]))
        return rows

    def _decode(self, rows):
        messages, bad = [], []
        for row_id, _priority, deliveries, payload in rows:
            try:
                messages.append(MessageProxy(Message.decode(payload), receipt=row_id, redelivered=deliveries > 1))
            except DecodeError as e:
                logger.error("Dead-lettering undecodable message %s on queue %r: %s",
                             e.message_id or "(no id)", self.queue_name, e.reason)
                bad.append((row_id, _placeholder(self.queue_name, row_id, e, payload)))
        if bad:
            self._bury(bad)
        return messages

    # --- settle ------------------------------------------------------------------------------
    #
    # A consumer settles only rows it still holds. One whose process stalled past the heartbeat
    # timeout (or held a row past ``visibility_timeout``) has had its rows reaped and maybe handed
    # to another consumer under the same receipt: its late ack, nack or requeue must not delete,
    # dead-letter or return a message someone else is running. Those are skipped with a warning.

    def _held(self, conn, ids):
        """The ids among ``ids`` that this consumer still holds."""
        marks = ",".join("?" * len(ids))
        return {row[0] for row in conn.execute(
            f"SELECT id FROM greenq_messages WHERE id IN ({marks}) AND state = 2 AND owner = ? AND consumer = ?",
            (*ids, self.owner, self.id))}

    def _settle(self, messages, verb, settle_chunk):
        """Run ``settle_chunk(conn, chunk)`` in one transaction per chunk of ``messages``; warn about the rest.

        ``settle_chunk`` settles the rows of the chunk that this consumer still
        holds and returns their receipts. Returns how many were settled.
        """
        lost = []
        for start in range(0, len(messages), _CHUNK):
            chunk = messages[start:start + _CHUNK]
            settled = self.broker.db.write(lambda conn, chunk=chunk: settle_chunk(conn, chunk))
            lost += [m for m in chunk if m.receipt not in settled]
        if lost:
            logger.warning(
                "Did not %s %d message(s) on queue %r (%s): consumer %s no longer holds them; its heartbeat or "
                "visibility timeout lapsed and they went back to the queue, so another consumer may be running them.",
                verb, len(lost), self.queue_name, ", ".join(str(m.message_id) for m in lost[:10]), self.id)
        return len(messages) - len(lost)

    def _held_then(self, apply):
        """A ``settle_chunk`` that finds the rows still held, then runs ``apply(conn, held_messages)``."""
        def settle_chunk(conn, chunk):
            held = self._held(conn, [m.receipt for m in chunk])
            mine = [m for m in chunk if m.receipt in held]
            if mine:
                apply(conn, mine)
            return held

        return settle_chunk

    def ack(self, messages):
        def delete_held(conn, chunk):  # the check and the delete in one statement
            marks = ",".join("?" * len(chunk))
            return {row[0] for row in conn.execute(
                f"DELETE FROM greenq_messages WHERE id IN ({marks}) AND state = 2 AND owner = ? AND consumer = ?"
                " RETURNING id", (*(m.receipt for m in chunk), self.owner, self.id))}

        def delete(conn, mine):  # pragma: no cover - SQLite < 3.35
            conn.executemany("DELETE FROM greenq_messages WHERE id = ?", [(m.receipt,) for m in mine])

        self._settle(list(messages), "ack", delete_held if HAS_RETURNING else self._held_then(delete))

    def nack(self, messages):
        self._bury([(m.receipt, m.to_message()) for m in messages])

    def _bury(self, entries):
        """Move rows this consumer holds to the dead letters as the given ``Message`` objects."""
        broker = self.broker
        rows = [_Burial(row_id, message, broker.priority_of(message), message.encode()) for row_id, message in entries]

        def bury(conn, mine):
            now = current_millis()
            conn.executemany("DELETE FROM greenq_messages WHERE id = ?", [(r.receipt,) for r in mine])
            conn.executemany("INSERT INTO greenq_dead (queue, priority, message_id, dead_at, payload)"
                             " VALUES (?, ?, ?, ?, ?)",
                             [(self.queue_name, r.priority, r.message_id, now, r.payload) for r in mine])
            broker._purge_expired(conn, now)

        self._settle(rows, "dead-letter", self._held_then(bury))

    def requeue(self, messages):
        def give_back(conn, mine):
            conn.executemany("UPDATE greenq_messages SET state = 0, owner = NULL, consumer = NULL,"
                             " deliveries = max(deliveries - 1, 0) WHERE id = ?", [(m.receipt,) for m in mine])

        if self._settle(list(messages), "requeue", self._held_then(give_back)):
            self.broker._notify()

    def close(self):
        """Return every row this consumer still holds, at once, as if never fetched."""
        if self.closed or self.broker.db.closed:
            return
        self.closed = True
        returned = self.broker.db.write(lambda conn: conn.execute(
            "UPDATE greenq_messages SET state = 0, owner = NULL, consumer = NULL,"
            " deliveries = max(deliveries - 1, 0) WHERE state = 2 AND owner = ? AND consumer = ?",
            (self.owner, self.id)).rowcount)
        if returned:
            self.broker._notify()
