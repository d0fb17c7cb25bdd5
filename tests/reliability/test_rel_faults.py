"""Process faults under load, on every broker, through ``greenq-gevent relapp -p 2 -t 100``.

Each scenario sends N ``work`` messages (100 ms of cooperative sleep each, so a
fault always lands on in-flight work) and F ``fail`` messages, injects its fault
once a quarter of the work is done, and then checks the ledger: every id
processed at least once (lost = 0; duplicates are counted and reported), and
every ``fail`` message in the dead letters with its reason. The run is paced
by the 100 ms jobs, never by sleeps in the test.
"""

import os
import signal

import pytest

from rel_harness import BROKERS, Target, pid_gone, report, require, stop, wait_until

N = 1500
FAILURES = 10


@pytest.fixture(params=BROKERS)
def target(request, tmp_path):
    require(request.param)
    target = Target(request.param, tmp_path)
    yield target
    target.cleanup()


@pytest.fixture
def procs():
    started = []
    yield started
    for proc in started:
        proc.kill()


def load(target, sleep_ms=100):
    ids = list(range(N))
    target.send("work", ids, sleep_ms=sleep_ms)
    target.send("fail", range(FAILURES))
    return ids


def settle(target, ids, scenario, faults, **figures):
    """The common end of every scenario: nothing lost, every failure dead-lettered with its reason."""
    target.ledger.wait_done(ids)
    target.ledger.wait_done(range(FAILURES), kind="f")
    wanted = {f"planned failure {i}" for i in range(FAILURES)}

    def dead_reasons():
        return {m.options.get("failure", "").split(": ", 1)[-1] for m in target.dead_letters()}

    wait_until(lambda: dead_reasons() >= wanted, 30, "every failure dead-lettered")
    dead = target.dead_letters()
    assert all(m.actor_name == "fail" for m in dead), [(m.actor_name, m.options.get("failure")) for m in dead]
    assert all(m.options["failure"].startswith("ValueError: planned failure") for m in dead)
    summary = target.ledger.summary(ids)
    report(scenario, target.kind, faults=faults, dead_letters=len(dead), **summary, **figures)
    assert summary["lost"] == 0, summary
    return summary


def test_kill_9_of_a_worker(target, procs):
    ids = load(target)
    proc = target.start()
    procs.append(proc)
    proc.ready(2)
    target.ledger.wait_count(N // 4)
    victim = min(proc.worker_pids())
    os.kill(victim, signal.SIGKILL)
    proc.wait_for(rf"pid {victim}\).*was killed by SIGKILL")
    proc.ready(3)
    settle(target, ids, "kill -9 worker", faults=1)
    assert stop(proc) == 0


def test_kill_9_of_the_master(target, procs):
    ids = load(target, sleep_ms=500)  # slow enough that the orphans still have work when they notice
    proc = target.start()
    procs.append(proc)
    proc.ready(2)
    workers = proc.worker_pids()
    target.ledger.wait_count(N // 4)
    os.kill(proc.pid, signal.SIGKILL)
    try:
        # Orphaned workers notice their parent is gone, finish what they run and hand back the rest.
        wait_until(lambda: all(pid_gone(pid) for pid in workers), 30, "orphaned workers exiting")
    finally:
        for pid in workers:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)
    done_by_orphans = target.ledger.done()
    again = target.start()
    procs.append(again)
    again.ready(2)
    settle(target, ids, "kill -9 master", faults=1, done_before_restart=done_by_orphans)
    assert stop(again) == 0


def test_term_under_load(target, procs):
    ids = load(target)
    proc = target.start()
    procs.append(proc)
    proc.ready(2)
    target.ledger.wait_count(N // 4)
    assert stop(proc) == 0
    done_before = target.ledger.done()
    again = target.start()
    procs.append(again)
    again.ready(2)
    settle(target, ids, "TERM under load", faults=1, done_before_restart=done_before)
    assert stop(again) == 0


def test_hup_under_load(target, procs):
    ids = load(target)
    proc = target.start()
    procs.append(proc)
    proc.ready(2)
    target.ledger.wait_count(N // 4)
    proc.signal(signal.SIGHUP)
    proc.ready(4)  # two fresh workers, while the old ones drain
    settle(target, ids, "HUP under load", faults=1)
    assert stop(proc) == 0


def test_actor_that_never_yields_past_its_time_limit(target, procs):
    ids = load(target)
    spinners = range(2)
    target.send("spin", spinners)
    proc = target.start()
    procs.append(proc)
    proc.ready(2)
    target.ledger.wait_done([f"spin{i}" for i in spinners], timeout=60)
    proc.wait_for(r"ignored its time limit")
    settle(target, ids, "actor never yields past time_limit", faults=len(spinners),
           kills=len(proc.matching(r"was killed by SIGKILL")))
    assert stop(proc) == 0


def test_actor_leaking_memory_past_max_memory_per_child(target, procs):
    ids = list(range(400))
    target.send("leak", ids, kib=512)
    target.send("fail", range(FAILURES))
    # A fresh worker holds about 30-40 MB here; 400 x 512 KiB spread over two would reach about 140 MB each.
    proc = target.start("--max-memory-per-child", "80000")
    procs.append(proc)
    proc.ready(2)
    target.ledger.wait_done(ids, timeout=90)
    recycled = proc.wait_for(r"asking the master for a replacement")
    settle(target, ids, "memory leak past --max-memory-per-child", faults=len(recycled), recycles=len(recycled))
    assert stop(proc) == 0
