"""Throughput and latency of the embedded SQLite broker, with gevent worker processes.

    python benchmarks/bench_sqlite.py [--quick]

Each worker is a subprocess that patches gevent first and runs an in-process
``Worker`` on one temporary SQLite file. The parent enqueues in batches and
times until the queue is empty. Scenarios:

* no-op actors, 1 and 4 processes x 100 greenlets: the broker's own overhead;
* IO-bound actors (a 50 ms cooperative sleep), 4 processes x 100 greenlets;
* cross-process pickup latency: an idle worker, one message every 30 ms;
* the longest single SQLite call each worker made (how long it stalled its hub),
  and the CPU an idle worker burns while polling.

Runs in well under a minute on a laptop. Figures vary with the disk and the
load of the machine; compare runs on the same box.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QUEUE = "bench"


def child(db_path, greenlets):
    """A worker process: patch gevent, consume, and report stats as JSON on TERM."""
    from gevent import monkey

    monkey.patch_all()
    import signal
    import threading

    sys.path.insert(0, ROOT)
    import greenq
    from greenq.brokers.sqlite import SqliteBroker

    broker = SqliteBroker(path=db_path)
    latencies = []

    @greenq.actor(queue_name=QUEUE, broker=broker, max_retries=0)
    def noop():
        pass

    @greenq.actor(queue_name=QUEUE, broker=broker, max_retries=0)
    def io(ms):
        time.sleep(ms / 1000)

    @greenq.actor(queue_name=QUEUE, broker=broker, max_retries=0)
    def ping(sent_at):
        latencies.append(time.time() - sent_at)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = greenq.Worker(broker, worker_threads=greenlets, worker_timeout=500)
    worker.start()
    broker.db_stats(reset=True)  # count the calls made while serving, not opening the file
    print("ready", flush=True)
    cpu_before = time.process_time()
    wall_before = time.monotonic()
    stop.wait()
    cpu = (time.process_time() - cpu_before) / max(1e-9, time.monotonic() - wall_before)
    worker.stop(timeout=10000)
    stats = broker.db_stats()
    broker.close()
    print(json.dumps({**stats, "latencies": latencies, "cpu_share": cpu}), flush=True)


def start_workers(db_path, processes, greenlets):
    procs = [subprocess.Popen([sys.executable, __file__, "--child", db_path, str(greenlets)],
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    for proc in procs:
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"a worker process did not start (said {line!r})")
    return procs


def stop_workers(procs):
    import signal

    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def messages(actor_name, count, args=()):
    from greenq.message import Message

    return [Message(queue_name=QUEUE, actor_name=actor_name, args=args, kwargs={}, options={}) for _ in range(count)]


def drain(broker, timeout=120):
    """Wait until the queue holds nothing (an indexed look, cheap enough to repeat every 5 ms)."""
    deadline = time.monotonic() + timeout
    look = "SELECT 1 FROM greenq_messages WHERE queue = ? LIMIT 1"
    while time.monotonic() < deadline:
        if broker.db.read(lambda conn: conn.execute(look, (QUEUE,)).fetchone()) is None:
            return
        time.sleep(0.005)
    raise SystemExit(f"the queue did not drain within {timeout}s: {broker.queue_counts(QUEUE)}")


def throughput(label, actor_name, count, processes, greenlets, args=()):
    from greenq.brokers.sqlite import SqliteBroker

    with tempfile.TemporaryDirectory() as folder:
        db_path = os.path.join(folder, "bench.sqlite3")
        broker = SqliteBroker(path=db_path)
        broker.declare_queue(QUEUE)
        procs = start_workers(db_path, processes, greenlets)
        batch = messages(actor_name, count, args)
        start = time.perf_counter()
        broker._enqueue_many([(m, None, 0) for m in batch])
        enqueued = time.perf_counter() - start
        drain(broker)
        elapsed = time.perf_counter() - start
        reports = stop_workers(procs)
        broker.close()
    longest = max(r["longest_call_ms"] for r in reports)
    calls = sum(r["calls"] for r in reports)
    slow = sum(r["slow_calls"] for r in reports)
    print(f"{label:<44} {count / elapsed:>7.0f} jobs/s  ({count} jobs in {elapsed:.2f}s; enqueue {count / enqueued:.0f}/s)")
    print(f"{'':<44} workers' SQLite calls: {calls}, {slow} over 5 ms, longest {longest:.1f} ms")


def pickup_latency(samples, spacing):
    from greenq.brokers.sqlite import SqliteBroker
    from greenq.message import Message

    with tempfile.TemporaryDirectory() as folder:
        db_path = os.path.join(folder, "bench.sqlite3")
        broker = SqliteBroker(path=db_path)
        broker.declare_queue(QUEUE)
        (proc,) = start_workers(db_path, 1, 10)
        time.sleep(0.5)  # let the worker go idle, so its poll has backed off fully
        for _ in range(samples):
            broker._enqueue(Message(queue_name=QUEUE, actor_name="ping", args=(time.time(),), kwargs={},
                                    options={}), None, 0)
            time.sleep(spacing)
        drain(broker)
        idle_from = time.monotonic()
        time.sleep(2.0)  # an idle stretch, for the CPU figure
        (report,) = stop_workers([proc])
        idle = time.monotonic() - idle_from
        broker.close()
    lat = sorted(x * 1000 for x in report["latencies"])
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(f"{'cross-process pickup latency (idle worker)':<44} p50 {p(0.5):.1f} ms, p95 {p(0.95):.1f} ms, "
          f"max {lat[-1]:.1f} ms over {len(lat)} messages")
    print(f"{'worker CPU over the run (mostly idle ' + format(idle, '.0f') + 's)':<44} "
          f"{report['cpu_share'] * 100:.1f}% of a core")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--child", nargs=2, metavar=("DB", "GREENLETS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    sys.path.insert(0, ROOT)
    import sqlite3

    scale = 0.3 if args.quick else 1.0
    print(f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)")
    throughput("no-op, 1 process x 100 greenlets", "noop", int(20000 * scale), 1, 100)
    throughput("no-op, 4 processes x 100 greenlets", "noop", int(20000 * scale), 4, 100)
    throughput("IO-bound 50 ms, 4 processes x 100 greenlets", "io", int(4000 * scale), 4, 100, args=(50,))
    pickup_latency(int(100 * scale), 0.03)


if __name__ == "__main__":
    main()
