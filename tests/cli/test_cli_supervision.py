"""Real processes, real signals, a real Redis broker shared between the test and the workers."""

import os
import shutil
import signal

import pytest

from cli_helpers import (  # noqa: F401 - fixtures
    APPS, FAST_TAKEOVER_MS, app_broker, redis_env, redis_ns, run_greenq, send, wait_until,
)

pytestmark = pytest.mark.timeout(150)


def _list(client, ns, name):
    return [v.decode() for v in client.lrange(f"{ns}:{name}", 0, -1)]


@pytest.mark.parametrize("mode", ["threads", "gevent"])
def test_term_during_in_flight_work_loses_nothing(run_greenq, redis_ns, redis_env, mode):
    ns, client = redis_ns
    broker = app_broker(ns)
    proc = run_greenq("redisapp", "-p", "2", "-t", "3", mode=mode, env=redis_env)
    proc.ready(2)
    for i in range(12):
        send(broker, "slow", i, 1.0)
    wait_until(lambda: client.llen(f"{ns}:started") >= 6, what="6 actors started")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    done = _list(client, ns, "done")
    started = _list(client, ns, "started")
    assert len(set(started)) == len(started), started  # nothing ran twice
    assert sorted(done) == sorted(started)  # whatever started, finished
    counts = broker.queue_counts("default")
    assert counts["in_flight"] == 0 and counts["dead"] == 0
    assert len(done) + counts["ready"] == 12  # the rest went back to the queue
    broker.close()


def test_hup_reloads_edited_code_same_master_nothing_lost(run_greenq, redis_ns, redis_env, tmp_path):
    ns, client = redis_ns
    broker = app_broker(ns)
    module = tmp_path / "reloadable.py"
    template = (
        "import time\nimport greenq\nfrom redis_common import key, r\n"
        "VERSION = {version!r}\n\n"
        "@greenq.actor\ndef version(tag, seconds):\n"
        "    time.sleep(seconds)\n"
        "    r.rpush(key('versions'), f'{{VERSION}}:{{tag}}')\n"
    )
    module.write_text(template.format(version="v1"))
    proc = run_greenq("reloadable", "-p", "2", "--path", APPS, "--path", str(tmp_path), cwd=str(tmp_path),
                      env=redis_env)
    proc.ready(2)
    old_workers = proc.worker_pids()
    for i in range(4):
        send(broker, "version", f"before-{i}", 1.5)
    wait_until(lambda: broker.queue_counts("default")["ready"] == 0, what="all four fetched")

    module.write_text(template.format(version="v2-edited"))
    proc.signal(signal.SIGHUP)
    proc.wait_for(r"Reloading \(SIGHUP\)")
    proc.wait_for(r"replaced by pid \d+; draining the old one", 2)
    proc.wait_for(r"Worker process [01] \(pid \d+\) stopped\.", 2)
    send(broker, "version", "after", 0)
    wait_until(lambda: len(_list(client, ns, "versions")) >= 5, what="five versions recorded")

    versions = _list(client, ns, "versions")
    assert len(versions) == 5, versions  # none ran twice
    assert sorted(v for v in versions if "before" in v) == [f"v1:before-{i}" for i in range(4)]
    assert "v2-edited:after" in versions
    assert proc.proc.poll() is None  # the master stayed up: same pid
    assert proc.matching(rf"\[PID {proc.pid}\] .*\[greenq\.MainProcess\] .*Reloading")
    new_workers = proc.worker_pids() - old_workers
    assert len(new_workers) == 2
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    broker.close()


def test_watch_reloads_on_change(run_greenq, redis_ns, redis_env, tmp_path):
    ns, client = redis_ns
    broker = app_broker(ns)
    shutil.copy(os.path.join(APPS, "redis_common.py"), tmp_path / "redis_common.py")
    module = tmp_path / "watched.py"
    source = "import greenq\nfrom redis_common import key, r\n\n@greenq.actor\ndef mark():\n    r.rpush(key('marks'), {!r})\n"
    module.write_text(source.format("one"))
    proc = run_greenq("watched", "-p", "1", "--watch", str(tmp_path), "--path", str(tmp_path), cwd=str(tmp_path),
                      env=redis_env)
    proc.ready(1)
    module.write_text(source.format("two, after the edit"))
    proc.wait_for(r"Reloading \(.*watched\.py changed\)")
    proc.wait_for(r"replaced by pid")
    proc.wait_for(r"Worker process 0 \(pid \d+\) stopped\.")  # the old one may fetch until it stops
    send(broker, "mark")
    wait_until(lambda: client.llen(f"{ns}:marks") >= 1, what="one mark")
    assert _list(client, ns, "marks") == ["two, after the edit"]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    broker.close()


def test_kill_9_of_a_worker_replaces_it_and_redelivers(run_greenq, redis_ns, redis_env):
    ns, client = redis_ns
    broker = app_broker(ns)
    # A short heartbeat timeout, so the killed worker's message comes back soon. Should a stall make a
    # live worker look dead meanwhile, the message would run again early: still "job:2" in the end.
    proc = run_greenq("redisapp", "-p", "2", env={**redis_env, "TEST_HEARTBEAT_MS": str(FAST_TAKEOVER_MS)})
    proc.ready(2)
    send(broker, "hold", "job")
    holder = int(wait_until(lambda: client.lindex(f"{ns}:holders", 0), what="the first delivery"))
    sibling = (proc.worker_pids() - {holder}).pop()
    os.kill(holder, signal.SIGKILL)
    proc.wait_for(rf"\(pid {holder}\) was killed by SIGKILL; starting a new one")
    proc.ready(3)
    wait_until(lambda: client.llen(f"{ns}:done") >= 1, what="the redelivered message done")
    assert _list(client, ns, "done") == ["job:2"]
    os.kill(sibling, 0)  # the sibling kept running
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert broker.queue_counts("default") == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    broker.close()


def test_cpu_loop_past_time_limit_kills_the_worker_and_redelivers(run_greenq, redis_ns, redis_env):
    """Under gevent a CPU loop cannot be interrupted: the hub monitor names it, the watchdog kills it."""
    ns, client = redis_ns
    broker = app_broker(ns)
    # One process: nobody can take the spinning worker's message before it is killed, so the heartbeat
    # timeout may be short and the message come back soon after.
    proc = run_greenq("redisapp", "-p", "1", "--hub-block-threshold", "0.2", mode="gevent",
                      env={**redis_env, "TEST_HEARTBEAT_MS": str(FAST_TAKEOVER_MS)})
    proc.ready(1)
    message = send(broker, "spin", "loop")
    proc.wait_for(rf"A greenlet has blocked the gevent hub for [\d.]+ s: actor 'spin' \(message {message.message_id}\)"
                  r", at .*redisapp\.py:\d+ in spin")
    proc.wait_for(rf"message {message.message_id} \(spin\) ignored its time limit")
    proc.wait_for(r"was killed by SIGKILL; starting a new one")
    proc.ready(2)
    wait_until(lambda: client.llen(f"{ns}:done") >= 1, what="the redelivered message done")
    assert _list(client, ns, "done") == ["loop:2"]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert broker.queue_counts("default") == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    broker.close()


def test_two_processes_run_200_greenlets_each(run_greenq, redis_ns, redis_env):
    """500 barrier actors: each process holds 250 (200 running + its prefetch buffer of 50); the barrier
    opens only when 400 run at the same time, and each process's peak is exactly its pool size."""
    ns, client = redis_ns
    broker = app_broker(ns)
    proc = run_greenq("redisapp", "-p", "2", "-t", "200", "--quiet-messages", mode="gevent-entry", env=redis_env)
    proc.ready(2)
    from greenq.message import Message

    broker.enqueue_many([Message(queue_name="default", actor_name="barrier", args=(i, 400), kwargs={}, options={})
                         for i in range(500)])
    wait_until(lambda: client.llen(f"{ns}:done") >= 500, timeout=90, what="all 500 done")
    peaks = {int(pid): int(peak) for pid, peak in client.hgetall(f"{ns}:peak").items()}
    assert sorted(peaks.values()) == [200, 200], peaks
    assert set(peaks) == proc.worker_pids()
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    # Every message ran exactly once (a duplicate would also have let the barrier open too early).
    assert sorted(int(i) for i in _list(client, ns, "done")) == list(range(500))
    assert broker.queue_counts("default") == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    assert not proc.matching(r"\[ERROR\]")
    broker.close()


def test_max_tasks_per_child_recycles_gracefully(run_greenq, redis_ns, redis_env):
    ns, client = redis_ns
    broker = app_broker(ns)
    proc = run_greenq("redisapp", "-p", "1", "-t", "1", "--max-tasks-per-child", "3", env=redis_env)
    proc.ready(1)
    for i in range(10):
        send(broker, "whoami", i)
    wait_until(lambda: client.llen(f"{ns}:pids") >= 10, what="ten messages done")
    pids = _list(client, ns, "pids")
    assert sorted(int(i) for i in _list(client, ns, "ran")) == list(range(10))  # each once
    per_process = [pids.count(pid) for pid in dict.fromkeys(pids)]  # in order of first appearance
    assert len(per_process) >= 2, pids
    # The limit is soft by at most what the worker already held: -t 1 plus a prefetch buffer of 1.
    assert all(3 <= n <= 5 for n in per_process[:-1]), f"{pids}\n{proc.output()}"
    assert proc.matching(r"Recycling worker process 0 \(pid \d+\): it processed 3 messages")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert not proc.matching(r"killed by SIGKILL")
    broker.close()


def test_max_memory_per_child_recycles(run_greenq, redis_ns, redis_env):
    ns, client = redis_ns
    broker = app_broker(ns)
    proc = run_greenq("redisapp", "-p", "1", "-t", "1", "--max-memory-per-child", "1", env=redis_env)
    proc.ready(1)
    # The limit is soft: after tripping on its first message, a -t 1 worker (capacity 2) may
    # still run the two it held or was already fetching. Five messages need a replacement.
    for i in range(5):
        send(broker, "whoami", i)
    wait_until(lambda: client.llen(f"{ns}:pids") >= 5, what="five messages done")
    assert sorted(int(i) for i in _list(client, ns, "ran")) == [0, 1, 2, 3, 4]  # each once
    assert len(set(_list(client, ns, "pids"))) >= 2
    assert proc.matching(r"Recycling worker process 0 \(pid \d+\): it uses \d+ KiB of memory "
                         r"\(--max-memory-per-child 1 KiB\)")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    broker.close()
