"""The broker goes away under load and comes back: nothing is lost.

Redis: a server of the test's own (own port, append-only, fsync always, and a
password, so the logs of every reconnect are also checked for leaks), killed
with SIGKILL mid-run and restarted at once, or kept down for a while.
SQLite: there is no server to kill; its outage is another process holding the
file's write lock (a stuck writer, a long backup) for the same while.
RabbitMQ's restart lives in test_rel_rabbitmq_outage.py (it takes the shared
server down, so it runs alone and briefly).
"""

import sqlite3
import time
import uuid

import pytest

from rel_harness import RedisServer, Target, report, require, stop

N = 1500
FAILURES = 10
SHORT_OUTAGE = 5.0
LONG_OUTAGE = 30.0


@pytest.fixture
def procs():
    started = []
    yield started
    for proc in started:
        proc.kill()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path, password=f"rel-s3cret-{uuid.uuid4().hex[:8]}")
    server.start()
    yield server
    server.stop()


def settle(target, ids, proc, scenario, faults, **figures):
    target.ledger.wait_done(ids, timeout=120)
    target.ledger.wait_done(range(FAILURES), kind="f", timeout=60)
    dead = target.dead_letters()
    reasons = sorted(m.options.get("failure", "") for m in dead)
    assert {m.actor_name for m in dead} == {"fail"}, reasons
    assert {r.split(": ", 1)[-1] for r in reasons} == {f"planned failure {i}" for i in range(FAILURES)}, reasons
    summary = target.ledger.summary(ids)
    report(scenario, target.kind, faults=faults, dead_letters=len(dead), **summary, **figures)
    assert summary["lost"] == 0, summary
    assert stop(proc) == 0


def start_loaded(target, procs):
    ids = list(range(N))
    target.send("work", ids, sleep_ms=100)
    target.send("fail", range(FAILURES))
    proc = target.start()
    procs.append(proc)
    proc.ready(2)
    target.ledger.wait_count(N // 4)
    return ids, proc


def test_redis_killed_and_restarted_mid_run(redis_server, tmp_path, procs):
    target = Target("redis", tmp_path, url=redis_server.url)
    try:
        ids, proc = start_loaded(target, procs)
        redis_server.kill()
        redis_server.start()
        settle(target, ids, proc, "broker restart (kill -9 redis-server)", faults=1)
        assert redis_server.password not in proc.output()
    finally:
        target.cleanup()


def redis_outage(redis_server, tmp_path, procs, seconds):
    target = Target("redis", tmp_path, url=redis_server.url)
    try:
        ids, proc = start_loaded(target, procs)
        down = time.monotonic()
        redis_server.kill()
        proc.wait_for(r"failed to fetch|Heartbeat to Redis", timeout=30)
        time.sleep(max(0.0, seconds - (time.monotonic() - down)))  # the outage window itself
        redis_server.start()
        settle(target, ids, proc, f"broker unreachable {seconds:.0f} s", faults=1,
               outage_seconds=round(time.monotonic() - down, 1))
        output = proc.output()
        assert redis_server.password not in output
        assert ":***@" in output  # the errors do name the server, redacted
    finally:
        target.cleanup()


def test_redis_unreachable_for_a_while(redis_server, tmp_path, procs):
    redis_outage(redis_server, tmp_path, procs, SHORT_OUTAGE)


@pytest.mark.long
def test_redis_unreachable_for_30_seconds(redis_server, tmp_path, procs):
    redis_outage(redis_server, tmp_path, procs, LONG_OUTAGE)


def sqlite_outage(tmp_path, procs, seconds):
    target = Target("sqlite", tmp_path)
    try:
        ids, proc = start_loaded(target, procs)
        blocker = sqlite3.connect(target.url, timeout=30, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # WAL: no other connection may write until we let go
            held = time.monotonic()
            stalled = target.ledger.done()
            time.sleep(seconds)  # the outage window itself
            during = target.ledger.done() - stalled
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        settle(target, ids, proc, f"broker unreachable {seconds:.0f} s (write lock held)", faults=1,
               processed_while_locked=during, lock_held_s=round(time.monotonic() - held, 1))
    finally:
        target.cleanup()


def test_sqlite_write_lock_held_for_a_while(tmp_path, procs):
    sqlite_outage(tmp_path, procs, SHORT_OUTAGE)


@pytest.mark.long
def test_sqlite_write_lock_held_for_30_seconds(tmp_path, procs):
    sqlite_outage(tmp_path, procs, LONG_OUTAGE)
