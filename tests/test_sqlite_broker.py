"""The embedded SQLite broker beyond the shared contract: files, processes, crashes, TTLs.

The contract suite (``GREENQ_CONTRACT_BROKERS=sqlite``) covers the broker verbs;
this file covers what only a file shared by processes has: bad paths and
foreign files, several processes on one file, kill -9 of a worker, heartbeats,
delivery limits, fork, and the dead-letter TTL.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import greenq
from greenq.brokers import broker_from_url
from greenq.brokers.sqlite import SCHEMA_VERSION, DatabaseFileError, SqliteBroker, path_from_url
from greenq.errors import BrokerConfigError, ConnectionError
from greenq.message import Message, current_millis
from greenq.results import ResultFailure, ResultMissing, Results
from greenq.results.sqlite import SqliteBackend

from support import run_in_forked_child

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_message(queue_name, *args):
    return Message(queue_name=queue_name, actor_name="noop", args=args, kwargs={}, options={})


def fetch_all(consumer, expected, timeout=10):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got += consumer.fetch(expected - len(got), 0.5)
    return got


def wait_until(predicate, timeout=30, what="condition"):
    """Poll state that has no event to wait on (another process, a file), up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_python(code, *args, timeout=60, **kwargs):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "greenq.sqlite3")


@pytest.fixture
def broker(db_path):
    broker = SqliteBroker(path=db_path)
    yield broker
    broker.close()


# --- paths and URLs ------------------------------------------------------------------------


def test_urls_name_absolute_and_relative_paths(tmp_path, monkeypatch):
    assert path_from_url("sqlite:////var/lib/greenq.db") == "/var/lib/greenq.db"
    monkeypatch.chdir(tmp_path)
    assert path_from_url("sqlite:///jobs.sqlite3") == str(tmp_path / "jobs.sqlite3")
    assert path_from_url("sqlite://localhost/jobs.sqlite3") == str(tmp_path / "jobs.sqlite3")
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite://example.com/x.db"):
        with pytest.raises(ValueError, match="sqlite"):
            path_from_url(bad)
    broker = broker_from_url("sqlite:///jobs.sqlite3")
    try:
        assert isinstance(broker, SqliteBroker)
        assert broker.path == str(tmp_path / "jobs.sqlite3")
        broker.ping()
    finally:
        broker.close()


def test_default_broker_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GREENQ_BROKER_URL", raising=False)
    broker = greenq.get_broker()
    try:
        assert isinstance(broker, SqliteBroker)
        assert broker.path == str(tmp_path / "greenq.sqlite3")
        assert os.path.exists(broker.path)
    finally:
        broker.close()


def test_missing_folder_is_a_clear_error(tmp_path):
    path = str(tmp_path / "nowhere" / "greenq.sqlite3")
    with pytest.raises(ConnectionError) as info:
        SqliteBroker(path=path)
    assert path in str(info.value) and "does not exist" in str(info.value)


def test_folder_without_write_permission_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    path = str(folder / "greenq.sqlite3")
    if os.geteuid() == 0:
        # Root writes anywhere, so the kernel cannot refuse it: make os.access answer as for a normal user.
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(folder) else real_access(p, mode))
    folder.chmod(0o555)
    try:
        with pytest.raises(ConnectionError) as info:
            SqliteBroker(path=path)
    finally:
        folder.chmod(0o755)
    assert path in str(info.value) and "permission" in str(info.value)
    assert not os.path.exists(path)


def test_a_read_only_file_is_a_clear_error(tmp_path, monkeypatch):
    path = str(tmp_path / "greenq.sqlite3")
    SqliteBroker(path=path).close()
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == path else real_access(p, mode))
    os.chmod(path, 0o444)
    with pytest.raises(ConnectionError) as info:
        SqliteBroker(path=path)
    assert path in str(info.value) and "permission" in str(info.value)


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(db_path):
    with open(db_path, "w") as f:
        f.write("these are my notes, not a database\n" * 100)
    before = open(db_path, "rb").read()
    with pytest.raises(BrokerConfigError) as info:
        SqliteBroker(path=db_path)
    assert db_path in str(info.value) and "not a greenq database" in str(info.value)
    assert isinstance(info.value, ConnectionError)  # so a worker exits with the broker-connection code
    assert open(db_path, "rb").read() == before


def test_a_foreign_sqlite_database_is_refused_and_left_alone(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseFileError) as info:
        SqliteBroker(path=db_path)
    assert db_path in str(info.value) and "not a greenq database" in str(info.value)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"  # not even switched to WAL
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["customers"]
    conn.close()


def test_a_newer_schema_is_refused(db_path):
    SqliteBroker(path=db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseFileError) as info:
        SqliteBroker(path=db_path)
    message = str(info.value)
    assert db_path in message and "newer greenq" in message and str(SCHEMA_VERSION + 1) in message


def test_a_file_damaged_after_opening_is_a_clear_error_naming_it(db_path, queue_name):
    broker = SqliteBroker(path=db_path)
    try:
        broker.enqueue_many([make_message(queue_name, i) for i in range(200)])
        conn = sqlite3.connect(db_path)
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)  # all rows in the file now
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.close()
        pages = os.path.getsize(db_path) // page
        assert pages > 5
        with open(db_path, "r+b") as f:  # keep page 1 (the header and schema), overwrite every table and index
            for n in range(1, pages):
                f.seek(n * page)
                f.write(b"\xff" * page)
        for name, call in [("queue_counts", lambda: broker.queue_counts(queue_name)),
                           ("enqueue", lambda: broker.enqueue(make_message(queue_name, "more"))),
                           ("consume", lambda: broker.consume(queue_name)),
                           ("dead_letters_of", lambda: broker.dead_letters_of(queue_name)),
                           ("ping", broker.ping)]:
            with pytest.raises(DatabaseFileError) as info:
                call()
            message = str(info.value)
            assert db_path in message and "damaged" in message and "malformed" in message, (name, message)
            assert isinstance(info.value, ConnectionError)  # a worker exits with the broker-connection code
    finally:
        broker.close()


def test_reopening_keeps_messages(db_path, queue_name):
    first = SqliteBroker(path=db_path)
    first.enqueue(make_message(queue_name, 1))
    first.enqueue(make_message(queue_name, 2), delay=60000)
    first.close()
    second = SqliteBroker(path=db_path)
    try:
        assert second.queue_counts(queue_name) == {"ready": 1, "delayed": 1, "in_flight": 0, "dead": 0}
        assert second.db.data_version() is not None
        assert sqlite3.connect(db_path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        second.close()


def test_many_processes_create_the_same_fresh_file_at_once(db_path):
    code = """
        import sys
        from greenq.brokers.sqlite import SqliteBroker
        b = SqliteBroker(path=sys.argv[1])
        b.enqueue_raw("q", b"x")
        b.close()
    """
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), db_path], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    broker = SqliteBroker(path=db_path)
    try:
        assert broker.queue_counts("q")["ready"] == 4
    finally:
        broker.close()


# --- dead letters, TTL and priorities --------------------------------------------------------


def test_dead_letter_ttl_is_honoured(db_path, queue_name):
    broker = SqliteBroker(path=db_path, dead_message_ttl=300)
    try:
        broker.enqueue_many([make_message(queue_name, i) for i in range(2)])
        consumer = broker.consume(queue_name)
        first, second = fetch_all(consumer, 2)
        consumer.nack([first])
        assert [m.message_id for m in broker.dead_letters_of(queue_name)] == [first.message_id]
        wait_until(lambda: broker.queue_counts(queue_name)["dead"] == 0, 10, "the dead letter to expire")
        assert broker.dead_letters_of(queue_name) == []
        assert broker.requeue_dead(queue_name) == 0
        consumer.nack([second])  # settling purges expired rows from the file
        rows = sqlite3.connect(db_path).execute("SELECT message_id FROM greenq_dead").fetchall()
        assert rows == [(second.message_id,)]
        consumer.close()
    finally:
        broker.close()


def test_default_dead_letter_ttl_is_seven_days(broker):
    assert broker.dead_message_ttl == 7 * 24 * 3600 * 1000


def test_delayed_higher_priority_goes_first_once_due(broker, queue_name):
    @greenq.actor(queue_name=queue_name, priority=0, broker=broker)
    def low():
        pass

    @greenq.actor(queue_name=queue_name, priority=9, broker=broker)
    def high():
        pass

    low.send()
    eta = high.send_with_options(delay=2000).options["eta"]  # long enough to fetch once before it is due
    low.send()
    consumer = broker.consume(queue_name)
    first = consumer.fetch(1, 2)
    fetched_at = current_millis()
    assert fetched_at < eta, "the first fetch came after the eta: it cannot tell delayed from ready"
    assert [m.actor_name for m in first] == ["low"]
    while current_millis() < eta:  # let the delayed message fall due: the delay itself is what is under test
        time.sleep((eta - current_millis() + 1) / 1000)
    rest = fetch_all(consumer, 2)
    assert [m.actor_name for m in rest] == ["high", "low"]
    consumer.ack(first + rest)
    consumer.close()


# --- processes, crashes and heartbeats -------------------------------------------------------

HOLD_AND_DIE = """
    import os, sys
    from greenq.brokers.sqlite import SqliteBroker
    b = SqliteBroker(path=sys.argv[1], heartbeat_timeout=500)
    c = b.consume(sys.argv[2])
    got = []
    while len(got) < int(sys.argv[3]):
        got += c.fetch(int(sys.argv[3]) - len(got), 1)
    print(" ".join(m.message_id for m in got), flush=True)
    os.kill(os.getpid(), 9)
"""


def test_messages_held_by_a_killed_process_are_redelivered(db_path, queue_name):
    broker = SqliteBroker(path=db_path, heartbeat_timeout=500)
    try:
        sent = broker.enqueue_many([make_message(queue_name, i) for i in range(3)])
        result = run_python(HOLD_AND_DIE, db_path, queue_name, "3")
        assert result.returncode == -9, result.stderr
        assert sorted(result.stdout.split()) == sorted(m.message_id for m in sent)
        assert broker.queue_counts(queue_name)["in_flight"] == 3
        consumer = broker.consume(queue_name)
        again = fetch_all(consumer, 3, timeout=20)
        assert sorted(m.message_id for m in again) == sorted(m.message_id for m in sent)
        assert all(m.redelivered for m in again)
        consumer.ack(again)
        assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
        consumer.close()
    finally:
        broker.close()


def test_a_message_that_keeps_killing_processes_is_dead_lettered(db_path, queue_name):
    broker = SqliteBroker(path=db_path, heartbeat_timeout=500, max_deliveries=2)
    try:
        (sent,) = broker.enqueue_many([make_message(queue_name, "poison")])
        for _ in range(2):
            wait_until(lambda: broker.queue_counts(queue_name)["ready"] == 1 or broker._maybe_reap(force=True) > 0,
                       20, "the message to come back")
            result = run_python(HOLD_AND_DIE, db_path, queue_name, "1")
            assert result.stdout.split() == [sent.message_id], result.stderr
        wait_until(lambda: broker._maybe_reap(force=True) > 0 or broker.queue_counts(queue_name)["dead"] == 1,
                   20, "the reaper")
        (dead,) = broker.dead_letters_of(queue_name)
        assert dead.message_id == sent.message_id
        assert dead.options["failure"].startswith("MaxDeliveriesExceeded: delivered 2 times")  # as on Redis
        assert "max_deliveries=2" in dead.options["failure"]
        assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    finally:
        broker.close()


def test_a_live_process_keeps_its_messages_past_the_heartbeat_timeout(db_path, queue_name):
    timeout = 1000  # ms; the heartbeat thread beats every quarter of it
    holder = SqliteBroker(path=db_path, heartbeat_timeout=timeout)
    other = SqliteBroker(path=db_path, heartbeat_timeout=timeout)
    try:
        holder.enqueue(make_message(queue_name, 1))
        held = fetch_all(holder.consume(queue_name), 1)
        fetched_at = current_millis()
        consumer = other.consume(queue_name)

        def last_beat():
            conn = sqlite3.connect(db_path)
            try:
                return conn.execute("SELECT heartbeat FROM greenq_owners WHERE id = ?", (holder._owner,)).fetchone()[0]
            finally:
                conn.close()

        first_beat = last_beat()
        # Reap and fetch until well past the timeout, as measured from the fetch: only beats keep it held.
        while current_millis() < fetched_at + 2.5 * timeout:
            other._maybe_reap(force=True)
            assert consumer.fetch(1, 0.2) == [], "a live process's message was taken back"
        assert last_beat() >= first_beat + timeout  # the heartbeat thread, not luck, kept it alive
        assert other.queue_counts(queue_name)["in_flight"] == 1
        holder.close()  # graceful: back at once
        assert [m.message_id for m in fetch_all(consumer, 1)] == [held[0].message_id]
    finally:
        other.close()


def test_a_stalled_consumer_cannot_settle_a_message_redelivered_to_another(db_path, queue_name, caplog):
    """A's heartbeat lapses, its message is reaped and fetched by B: A's late nack/ack/requeue change nothing."""
    stalled = SqliteBroker(path=db_path, heartbeat_timeout=60000)  # its thread would beat again only in 15 s
    live = SqliteBroker(path=db_path, heartbeat_timeout=60000)
    try:
        stalled.enqueue(make_message(queue_name, 1))
        a = stalled.consume(queue_name)
        (late,) = fetch_all(a, 1)
        # A's process stalls: its heartbeat stops, and its last beat falls behind the timeout.
        stalled._heartbeat_running = False
        conn = sqlite3.connect(db_path)
        with conn:
            assert conn.execute("UPDATE greenq_owners SET heartbeat = 0 WHERE id = ?", (a.owner,)).rowcount == 1
        conn.close()
        assert live._maybe_reap(force=True) == 1
        b = live.consume(queue_name)
        (mine,) = fetch_all(b, 1)
        assert mine.message_id == late.message_id and mine.receipt == late.receipt  # the same row, now B's
        assert mine.redelivered

        def held_by_b():
            conn = sqlite3.connect(db_path)
            try:
                return conn.execute("SELECT state, owner, consumer FROM greenq_messages").fetchall() == [
                    (2, b.owner, b.id)]
            finally:
                conn.close()

        caplog.clear()
        with caplog.at_level("WARNING", logger="greenq.brokers.sqlite"):
            a.nack([late])
            assert live.dead_letters_of(queue_name) == []
            assert held_by_b()
            a.ack([late])
            assert held_by_b()
            a.requeue([late])
            assert held_by_b()
        warnings = [r.getMessage() for r in caplog.records if "no longer holds" in r.getMessage()]
        assert [w.split()[2] for w in warnings] == ["dead-letter", "ack", "requeue"]
        assert all(late.message_id in w for w in warnings)
        assert live.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 0}
        b.ack([mine])  # B, which does hold it, settles it as usual
        assert live.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
        a.close()
        b.close()
    finally:
        stalled.close()
        live.close()


def test_a_forked_child_uses_its_own_connection(broker, queue_name):
    broker.enqueue_many([make_message(queue_name, i) for i in range(5)])
    broker.consume(queue_name).close()  # the parent has a connection and an owner before the fork

    def child():
        consumer = broker.consume(queue_name)
        got = fetch_all(consumer, 5)
        consumer.ack(got)
        return len(got) == 5

    assert run_in_forked_child(child) == 0
    assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}


def test_messages_enqueued_by_another_process_are_picked_up(broker, queue_name):
    broker.declare_queue(queue_name)
    consumer = broker.consume(queue_name)
    assert consumer.fetch(1, 0.1) == []
    code = """
        import sys
        from greenq.brokers.sqlite import SqliteBroker
        from greenq.message import Message
        b = SqliteBroker(path=sys.argv[1])
        b.enqueue(Message(queue_name=sys.argv[2], actor_name="noop", args=[7], kwargs={}, options={}))
        b.close()
    """
    result = run_python(code, broker.path, queue_name)
    assert result.returncode == 0, result.stderr
    (got,) = fetch_all(consumer, 1)
    assert got.args == (7,)
    consumer.ack([got])
    consumer.close()


def _start_worker(db_path, ledger, queue_name, greenlets=20, sleep_ms=20):
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "sqlite_worker.py"), db_path, ledger, queue_name,
                             str(greenlets), str(sleep_ms)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc


def _ledger(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def test_gevent_worker_processes_lose_nothing_when_one_is_killed(tmp_path, db_path, queue_name):
    """Three gevent worker processes share one file; one is killed -9 mid-run; every message still runs."""
    total = 1500
    ledger = str(tmp_path / "ledger.txt")
    broker = SqliteBroker(path=db_path, heartbeat_timeout=1000)
    procs = []
    try:
        broker.enqueue_many([Message(queue_name=queue_name, actor_name="record", args=(i,), kwargs={}, options={})
                             for i in range(total)])
        procs = [_start_worker(db_path, ledger, queue_name) for _ in range(3)]
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        victim = procs[0]
        wait_until(lambda: sum(1 for _, pid in _ledger(ledger) if int(pid) == victim.pid) >= 20, 60,
                   "the victim to process some messages")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_until(lambda: len({i for i, _ in _ledger(ledger)}) == total, 90, "every message to be processed")
        wait_until(lambda: broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0},
                   30, "the queue to drain")
        done = {int(i) for i, _ in _ledger(ledger)}
        assert done == set(range(total))
        survivors = procs[1:]
        for proc in survivors:
            proc.send_signal(signal.SIGTERM)
        returned, longest = 0, []
        for proc in survivors:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err[-3000:]
            stats = json.loads(out.strip().splitlines()[-1])
            longest.append(stats["longest_call_ms"])
            # The reaper's two warnings: the victim's heartbeat stopped, then how many of its messages came back.
            for owners, count in re.findall(r"Consumers ([^\n]*) stopped their heartbeat[^\n]*\n"
                                            r"[^\n]*Returned (\d+) message", err):
                if f":{victim.pid}:" in owners:
                    returned += int(count)
        assert returned > 0, "no survivor took back messages from the victim: it held none, the test proved nothing"
        # Every SQLite call blocks the gevent hub for its whole duration: none may stall it for long,
        # even on a loaded machine (typical: a few ms).
        assert max(longest) < 100, f"longest SQLite call per survivor: {longest} ms"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        broker.close()


# --- the result back end on the same file ------------------------------------------------------



def test_results_of_workers_on_the_sqlite_file(broker, queue_name):
    backend = SqliteBackend(broker=broker)
    broker.add_middleware(Results(backend=backend))
    greenq.set_broker(broker)

    @greenq.actor(queue_name=queue_name, store_results=True, result_ttl=60000, max_retries=0)
    def divide(x, y):
        return {"quotient": x / y}

    good, bad = divide.send(6, 3), divide.send(1, 0)
    with pytest.raises(ResultMissing):
        good.get_result()
    worker = greenq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        assert good.get_result(block=True, timeout=10000) == {"quotient": 2.0}
        with pytest.raises(ResultFailure, match="ZeroDivisionError"):
            bad.get_result(block=True, timeout=10000)
    finally:
        worker.stop(timeout=5000)
    # another process reads the same file
    code = """
        import sys
        from greenq.results.sqlite import SqliteBackend
        backend = SqliteBackend(url="sqlite:///" + sys.argv[1])  # an absolute path: sqlite:////...
        print(backend.get_result(sys.argv[2]))
        backend.close()
    """
    result = run_python(code, broker.path, good.message_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'quotient': 2.0}"


def test_a_result_stored_by_another_process_wakes_a_waiter(db_path):
    backend = SqliteBackend(path=db_path)
    try:
        code = """
            import sys, time
            from greenq.results.sqlite import SqliteBackend
            backend = SqliteBackend(path=sys.argv[1])
            time.sleep(0.3)
            backend.store_result("mid-1", [1, 2], 60000)
            backend.close()
        """
        env = {**os.environ, "PYTHONPATH": ROOT}
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), db_path], env=env)
        try:
            assert backend.get_result("mid-1", block=True, timeout=20000) == [1, 2]
        finally:
            proc.wait(30)
    finally:
        backend.close()


def test_results_expire_and_are_purged(db_path):
    backend = SqliteBackend(path=db_path)
    try:
        backend.store_result("short", 1, 100)
        backend.store_result("long", 2, 60000)
        assert backend.get_result("short") == 1
        wait_until(lambda: backend._load("short") is None, 10, "the result to expire")
        with pytest.raises(ResultMissing):
            backend.get_result("short")
        backend._next_purge = 0
        backend.store_result("other", 3, 60000)
        keys = {r[0] for r in sqlite3.connect(db_path).execute("SELECT key FROM greenq_results")}
        assert keys == {"long", "other"}
        backend.flush()
        with pytest.raises(ResultMissing):
            backend.get_result("long")
    finally:
        backend.close()


def test_result_backend_refuses_a_foreign_file(db_path):
    with open(db_path, "w") as f:
        f.write("not sqlite\n" * 200)
    with pytest.raises(DatabaseFileError, match="not a greenq database"):
        SqliteBackend(path=db_path)
    with pytest.raises(ValueError):
        SqliteBackend()
