"""Run by the RabbitMQ tests: a gevent Worker whose actor never finishes, to be killed with -9.

Usage: python rabbitmq_gevent_worker.py URL QUEUE

Prints ``STARTED <i>`` each time the actor begins a message, then the actor blocks,
so the messages stay unacked until the process dies.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import gevent.event  # noqa: E402

import greenq  # noqa: E402
from greenq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402


def main():
    url, queue_name = sys.argv[1], sys.argv[2]
    broker = RabbitmqBroker(url=url)
    forever = gevent.event.Event()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def hang(i):
        print(f"STARTED {i}", flush=True)
        forever.wait()

    worker = greenq.Worker(broker, worker_threads=5, worker_timeout=100)
    worker.start()
    forever.wait()


if __name__ == "__main__":
    main()
