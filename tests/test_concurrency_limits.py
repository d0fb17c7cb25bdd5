"""Per-actor max_concurrency on the stub, Redis and SQLite brokers.

Process scope runs in this process's worker; the global scope runs two real
worker processes (tests/concurrency_limit_proc.py) that share nothing but the
broker's store, with a cross-process count of concurrent holders.
"""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

import greenq
from greenq.middleware import ConcurrencyLimits, CurrentMessage

from support import REDIS_URL

HERE = os.path.dirname(os.path.abspath(__file__))

#: The process-scope tests run on each of these (``any_broker`` from conftest.py, narrowed).
ON_EVERY_BROKER = pytest.mark.parametrize("any_broker", ["stub", "redis", "sqlite"], indirect=True)


class Gauge:
    """Counts how many actor runs overlap, and the most that ever did."""

    def __init__(self):
        self.now = 0
        self.most = 0
        self.done = 0
        self.lock = threading.Lock()
        self.finished = threading.Condition(self.lock)

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            return self.now

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1
            self.done += 1
            self.finished.notify_all()

    def wait_done(self, count, timeout=60):
        with self.lock:
            assert self.finished.wait_for(lambda: self.done >= count, timeout), f"{self.done} of {count} done"


def _gate(worker):
    (gate,) = worker._gates  # ConcurrencyLimits is the only middleware with a gate
    return gate


def _waiting(worker):
    gate = _gate(worker)
    with gate.lock:
        return sum(len(queue) for queue in gate.waiting.values())


@ON_EVERY_BROKER
def test_at_most_n_run_at_once(any_broker, queue_name):
    gauge = Gauge()
    full = threading.Event()

    @greenq.actor(broker=any_broker, queue_name=queue_name, max_concurrency=2, max_concurrency_wait=120000)
    def limited(i):
        with gauge as now:
            if now >= 2:
                full.set()
            assert full.wait(30), "a second run never joined the first"  # so the bound is reached
            threading.Event().wait(0.005)  # the work: overlap is what is measured

    worker = greenq.Worker(any_broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        limited.send_many([(i,) for i in range(20)])
        gauge.wait_done(20)
        worker.join(20000)
        assert gauge.most == 2  # held, and reached
        assert any_broker.get_middleware(ConcurrencyLimits).running("limited") == 0
        assert any_broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    finally:
        worker.stop(timeout=5000)


@ON_EVERY_BROKER
def test_waiting_messages_hold_no_pool_greenlet(any_broker, queue_name, recorder):
    release = threading.Event()
    started = threading.Event()

    @greenq.actor(broker=any_broker, queue_name=queue_name, max_concurrency=1, max_concurrency_wait=120000)
    def slow(i):
        recorder.add(("slow", i))
        started.set()
        release.wait(60)

    @greenq.actor(broker=any_broker, queue_name=queue_name)
    def quick(i):
        recorder.add(("quick", i))

    slow.send_many([(i,) for i in range(4)])
    quick.send_many([(i,) for i in range(3)])
    # Two pool greenlets: one runs `slow`, three `slow` messages wait for its slot; `quick` still runs
    # on the other. Were a waiting message to hold a pool greenlet, no `quick` could run.
    worker = greenq.Worker(any_broker, worker_threads=2, prefetch_buffer=6, worker_timeout=100)
    worker.start()
    try:
        assert started.wait(30)
        calls = recorder.wait_for(4, timeout=30)
        assert sorted(calls) == [("quick", 0), ("quick", 1), ("quick", 2), ("slow", 0)]
        assert _waiting(worker) == 3  # fetched (before the quick ones), waiting without a greenlet
        release.set()
        calls = recorder.wait_for(7, timeout=30)
        worker.join(20000)
        assert sorted(i for name, i in calls if name == "slow") == [0, 1, 2, 3]
        assert any_broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    finally:
        release.set()
        worker.stop(timeout=5000)


class _Requeues:
    """Event consumer: notes every enqueue of a message sent back by the concurrency limit."""

    def __init__(self):
        self.seen = threading.Event()

    def on_enqueue(self, message):
        if message.options.get("concurrency_requeues"):
            self.seen.set()


@ON_EVERY_BROKER
def test_past_the_wait_a_message_goes_back_without_counting_a_retry(any_broker, queue_name, recorder):
    any_broker.get_middleware(ConcurrencyLimits).requeue_delay = 100
    any_broker.add_middleware(CurrentMessage())
    requeues = _Requeues()
    any_broker.add_event_consumer(requeues)
    release = threading.Event()

    @greenq.actor(broker=any_broker, queue_name=queue_name, max_concurrency=1, max_concurrency_wait=50,
                  max_retries=0)
    def slow(i):
        message = CurrentMessage.get_current_message()
        recorder.add((i, message.options.get("concurrency_requeues", 0), message.options.get("retries")))
        if i == 0:
            release.wait(60)

    worker = greenq.Worker(any_broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        slow.send(0)
        recorder.wait_for(1)  # 0 holds the slot before 1 is sent
        slow.send(1)
        assert requeues.seen.wait(30), "message 1 was never sent back"
        assert recorder.calls == [(0, 0, None)]  # 1 has not run while 0 holds the slot
        release.set()
        calls = recorder.wait_for(2, timeout=30)
        worker.join(20000)
    finally:
        release.set()
        worker.stop(timeout=5000)
    by_number = {i: (requeues_count, retries) for i, requeues_count, retries in calls}
    assert by_number[0] == (0, None)
    assert by_number[1][0] >= 1 and by_number[1][1] is None  # sent back, not retried
    assert len(calls) == 2  # each ran once: the fetched copy was acked when its successor was sent
    assert any_broker.dead_letters_of(queue_name) == []
    assert any_broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}


class _Processes:
    """Worker processes whose output lines (``@@ ...``) are collected, to wait on them with a deadline."""

    def __init__(self):
        self.procs = []
        self.lines = []  # (process index, line)
        self.cond = threading.Condition()

    def start(self, argv):
        index = len(self.procs)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.path.dirname(HERE),
                                                                       os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
        self.procs.append(proc)
        threading.Thread(target=self._read, args=(index, proc), daemon=True).start()

    def _read(self, index, proc):
        for raw in proc.stdout:
            with self.cond:
                self.lines.append((index, raw.decode("utf-8", "replace").rstrip("\n")))
                self.cond.notify_all()

    def matching(self, pattern):
        regex = re.compile(pattern)
        with self.cond:
            return [(i, regex.search(line)) for i, line in self.lines if regex.search(line)]

    def wait_for(self, pattern, count=1, timeout=60, per_process=False):
        regex = re.compile(pattern)

        def enough():
            hits = [i for i, line in self.lines if regex.search(line)]
            if per_process:
                return all(hits.count(i) >= count for i in range(len(self.procs)))
            return len(hits) >= count

        with self.cond:
            assert self.cond.wait_for(enough, timeout), (
                f"expected {count} line(s) matching {pattern!r} within {timeout}s. Output:\n" + self.output())

    def output(self):
        return "\n".join(f"[{i}] {line}" for i, line in self.lines)[-6000:]

    def tell(self, command):
        for proc in self.procs:
            proc.stdin.write(f"{command}\n".encode())
            proc.stdin.flush()

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def _wait_until(predicate, timeout, what):
    """Re-read a cheap broker count until it holds, with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout}s"
        threading.Event().wait(0.05)


def _read_counter(path):
    now, most = path.read_text().split()
    return int(now), int(most)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("any_broker", ["redis", "sqlite"], indirect=True)
def test_global_scope_holds_the_bound_across_two_worker_processes(any_broker, queue_name, tmp_path):
    limit, threads, buffer, count = 3, 8, 2, 40
    kind = "redis" if hasattr(any_broker, "namespace") else "sqlite"
    target = f"{REDIS_URL}#{any_broker.namespace}" if kind == "redis" else any_broker.path
    counter = tmp_path / "holders"

    @greenq.actor(broker=any_broker, queue_name=queue_name, actor_name="crawl", max_concurrency=limit,
                  max_concurrency_scope="global")
    def crawl(i):
        raise AssertionError("runs in the worker processes only")

    procs = _Processes()
    try:
        for _ in range(2):
            procs.start([sys.executable, os.path.join(HERE, "concurrency_limit_proc.py"), kind, target, queue_name,
                         str(counter), str(limit), str(threads), str(buffer)])
        procs.wait_for(r"^@@ ready$", per_process=True)
        crawl.send_many([(i,) for i in range(count)])
        # Holders keep their slots until told to go: the bound is reached, and both processes then
        # fill up with fetched messages that wait for a slot the other process holds.
        procs.wait_for(r"^@@ full$")
        full_house = 2 * (threads + buffer)
        _wait_until(lambda: any_broker.queue_counts(queue_name)["in_flight"] == full_house, 60,
                    f"both processes holding {full_house} messages")
        assert _read_counter(counter) == (limit, limit)
        procs.tell("go")
        procs.wait_for(r"^@@ done ", count=count, timeout=120)
        done = [m for _, m in procs.matching(r"^@@ done (\d+) (\d+)$")]
        assert sorted(int(m.group(1)) for m in done) == list(range(count))
        assert len({m.group(2) for m in done}) == 2  # both processes ran messages
        procs.tell("stop")
        procs.wait_for(r"^@@ stopped$", per_process=True, timeout=60)
        for proc in procs.procs:
            assert proc.wait(60) == 0, procs.output()
        now, most = _read_counter(counter)
        assert now == 0
        assert most == limit, f"{most} concurrent holders with max_concurrency={limit}"
        assert any_broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    finally:
        procs.kill()
        if kind == "redis":  # the leases and the processes' heartbeats live under the namespace too
            keys = [k for pattern in (f"{any_broker.namespace}:*", f"{{{any_broker.namespace}:*")
                    for k in any_broker.client.scan_iter(pattern)]
            if keys:
                any_broker.client.delete(*keys)


def test_bad_options_fail_at_decoration():
    with pytest.raises(greenq.ActorOptionError, match="max_concurrency_scope"):
        @greenq.actor(max_concurrency=2, max_concurrency_scope="planet")
        def f():
            pass
