"""No-op and IO-bound throughput of RabbitmqBroker with an in-process gevent Worker.

    python benchmarks/bench_rabbitmq.py [--url amqp://guest:guest@127.0.0.1:5672/%2F] [--messages 5000]

The measuring runs in a subprocess that patches gevent first (as greenq-gevent
does). For each workload it enqueues the messages (persistent, publisher
confirms on) from 100 greenlets at once (timed separately), then times a Worker
from start until every message has run and been acked. Uses throwaway queue
names and deletes the queues afterwards. Runs in well under a minute.
"""

import argparse
import subprocess
import sys

CHILD = r"""
import gevent.monkey; gevent.monkey.patch_all()
import sys, threading, time, uuid
import gevent
import greenq
from greenq.brokers.rabbitmq import RabbitmqBroker

url, total = sys.argv[1], int(sys.argv[2])

def run(label, threads, sleep_s, total, senders=100):
    broker = RabbitmqBroker(url)
    done = threading.Event()
    count = [0]
    queue_name = f"greenq-bench-{uuid.uuid4().hex[:8]}"

    @greenq.actor(queue_name=queue_name, broker=broker)
    def job(i):
        if sleep_s:
            time.sleep(sleep_s)
        count[0] += 1
        if count[0] == total:
            done.set()

    def send(part):
        for i in range(part, total, senders):
            job.send(i)

    start = time.perf_counter()
    gevent.joinall([gevent.spawn(send, part) for part in range(senders)], raise_error=True)
    enqueue_s = time.perf_counter() - start
    worker = greenq.Worker(broker, worker_threads=threads, worker_timeout=200)
    start = time.perf_counter()
    worker.start()
    done.wait(120)
    worker.join(60000)
    elapsed = time.perf_counter() - start
    worker.stop(timeout=5000)
    counts = broker.queue_counts(queue_name)
    broker.delete_queues()
    broker.close()
    print(f"{label:<28} {total:>6} msgs  enqueue {total / enqueue_s:>8.0f}/s  "
          f"process {total / elapsed:>7.0f}/s  ({elapsed:.2f}s, left {counts['ready']})", flush=True)

run("no-op, 100 greenlets", 100, 0, total)
run("IO 50ms, 500 greenlets", 500, 0.05, total)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    return subprocess.call([sys.executable, "-c", CHILD, args.url, str(args.messages)])


if __name__ == "__main__":
    sys.exit(main())
