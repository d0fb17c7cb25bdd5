"""A gevent worker process on RedisBroker with a metadata consumer and event consumers.

Usage: python tests/composition_events_worker.py URL NAMESPACE QUEUE

Records, in Redis lists under NAMESPACE: ``events`` ("<event> <actor> <args>")
from an event consumer, ``seen`` (the metadata each actor saw) from the actors.
A second event consumer always raises, to show it breaks nothing. Stops when
the test pushes to ``<ns>:stop``.
"""

import gevent.monkey

gevent.monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import redis  # noqa: E402

import greenq  # noqa: E402
from greenq.brokers.redis import RedisBroker  # noqa: E402
from greenq.middleware import MetadataProducerConsumer  # noqa: E402

_context = threading.local()  # greenlet-local under gevent


class Tenant(MetadataProducerConsumer):
    NAMESPACE = "tenant"

    def consume_metadata(self, metadata):
        _context.tenant = metadata


class Recorder:
    def __init__(self, marks, key):
        self.marks, self.key = marks, key

    def _record(self, event, message):
        self.marks.rpush(self.key, f"{event} {message.actor_name} {json.dumps(list(message.args))}")

    def on_start(self, message):
        self._record("start", message)

    def on_success(self, message):
        self._record("success", message)

    def on_failure(self, message):
        self._record("failure", message)

    def on_retry(self, message):
        self._record("retry", message)

    def on_dead(self, message):
        self._record("dead", message)

    def on_ack(self, message):
        self._record("ack", message)


class Broken:
    def on_start(self, message):
        raise RuntimeError("this consumer is broken")

    on_success = on_failure = on_dead = on_start


def main():
    url, namespace, queue = sys.argv[1:4]
    broker = RedisBroker(url, namespace=namespace)
    marks = redis.Redis.from_url(url)
    broker.add_metadata_producer_consumer(Tenant())
    broker.add_event_consumer(Broken())
    broker.add_event_consumer(Recorder(marks, f"{namespace}:events"))

    @greenq.actor(queue_name=queue, broker=broker)
    def greet(name):
        marks.rpush(f"{namespace}:seen", json.dumps([name, getattr(_context, "tenant", None)]))

    @greenq.actor(queue_name=queue, broker=broker, max_retries=1, min_backoff=100, max_backoff=100,
                  retry_on=(ValueError,))
    def fail(reason):
        marks.rpush(f"{namespace}:seen", json.dumps([reason, getattr(_context, "tenant", None)]))
        raise ValueError(reason)

    worker = greenq.Worker(broker, worker_threads=20, worker_timeout=100)
    worker.start()
    marks.rpush(f"{namespace}:ready", 1)
    marks.blpop(f"{namespace}:stop")
    worker.stop(timeout=5000)
    marks.rpush(f"{namespace}:stopped", 1)
    broker.close()


if __name__ == "__main__":
    main()
