"""No-op and IO-bound throughput of RedisBroker with an in-process gevent Worker.

    python benchmarks/bench_redis.py [--url redis://127.0.0.1:6379/0] [--messages 20000]

The measuring runs in a subprocess that patches gevent first (as greenq-gevent
does). For each workload it enqueues the messages with ``send_many`` (timed
separately), then times a Worker from start until every message has run and
been acked. Uses a throwaway namespace and deletes it afterwards. Runs well
under a minute on a laptop.
"""

import argparse
import subprocess
import sys

CHILD = r"""
import gevent.monkey; gevent.monkey.patch_all()
import sys, threading, time, uuid
import greenq
from greenq.brokers.redis import RedisBroker

url, total = sys.argv[1], int(sys.argv[2])

def run(label, threads, sleep_s, total):
    broker = RedisBroker(url, namespace=f"greenq-bench-{uuid.uuid4().hex[:8]}")
    done = threading.Event()
    count = [0]
    queue_name = "bench"

    @greenq.actor(queue_name=queue_name, broker=broker)
    def job(i):
        if sleep_s:
            time.sleep(sleep_s)
        count[0] += 1
        if count[0] == total:
            done.set()

    start = time.perf_counter()
    for chunk in range(0, total, 1000):
        job.send_many([(i,) for i in range(chunk, min(total, chunk + 1000))])
    enqueue_s = time.perf_counter() - start
    worker = greenq.Worker(broker, worker_threads=threads, worker_timeout=200)
    start = time.perf_counter()
    worker.start()
    done.wait(120)
    worker.join(60000)
    elapsed = time.perf_counter() - start
    worker.stop(timeout=5000)
    counts = broker.queue_counts(queue_name)
    broker.flush_all()
    broker.close()
    print(f"{label:<28} {total:>6} msgs  enqueue {total / enqueue_s:>8.0f}/s  "
          f"process {total / elapsed:>7.0f}/s  ({elapsed:.2f}s, left {counts['ready']})", flush=True)

run("no-op, 100 greenlets", 100, 0, total)
run("IO 50ms, 500 greenlets", 500, 0.05, total)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    return subprocess.call([sys.executable, "-c", CHILD, args.url, str(args.messages)])


if __name__ == "__main__":
    sys.exit(main())
