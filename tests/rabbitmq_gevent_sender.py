"""Run by test_rabbitmq_broker.py: 500 greenlets sending at once through one RabbitmqBroker.

Usage: python rabbitmq_gevent_sender.py URL QUEUE GREENLETS

Protocol on stdout/stdin, so the test can count this process's connections
while the greenlets are alive: prints ``PID <pid>``; after every greenlet sent its
first message (and all are still alive) prints ``HOLDING``, then waits for a
line on stdin; the greenlets then send a second message each, a gevent Worker
runs them all, and ``DONE <processed>`` is printed; a last line on stdin ends it.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

import greenq  # noqa: E402
from greenq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402


def main():
    url, queue_name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    broker = RabbitmqBroker(url=url)
    processed = []
    all_done = gevent.event.Event()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def record(i):
        processed.append(i)
        if len(processed) == 2 * count:
            all_done.set()

    print(f"PID {__import__('os').getpid()}", flush=True)
    hold = gevent.event.Event()
    first_sent = []

    def sender(i):
        record.send(i)
        first_sent.append(i)
        hold.wait()
        record.send(count + i)

    greenlets = [gevent.spawn(sender, i) for i in range(count)]
    while len(first_sent) < count:
        gevent.sleep(0.01)
    assert all(not g.dead for g in greenlets)
    print("HOLDING", flush=True)
    sys.stdin.readline()
    worker = greenq.Worker(broker, worker_threads=50, worker_timeout=100)
    worker.start()
    hold.set()
    gevent.joinall(greenlets, raise_error=True)
    all_done.wait(60)
    print(f"DONE {len(set(processed))}", flush=True)
    sys.stdin.readline()
    worker.stop(timeout=5000)
    broker.delete_queues()
    broker.close()


if __name__ == "__main__":
    main()
