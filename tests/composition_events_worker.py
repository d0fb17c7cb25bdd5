"""An app for ``greenq-gevent`` with a metadata consumer and event consumers, on Redis or SQLite.

    EVENTS_BROKER=redis EVENTS_TARGET=URL#NAMESPACE EVENTS_QUEUE=q greenq-gevent composition_events_worker
    EVENTS_BROKER=sqlite EVENTS_TARGET=/path/to/file EVENTS_QUEUE=q greenq-gevent composition_events_worker

Reports through its log lines (the command's stderr), which
tests/test_metadata_events.py waits on: ``EVENT <event> <actor> <args> tenant=<t>``
from an event consumer (the tenant from the message's metadata), and
``SEEN <arg> tenant=<t>`` from the actors (the tenant the metadata consumer set
for the greenlet running them). A second event consumer always raises, to
show that it breaks nothing.
"""

import json
import logging
import os
import threading

import greenq
from greenq.middleware import MetadataProducerConsumer

logger = logging.getLogger("events_app")
_context = threading.local()  # greenlet-local under gevent


class Tenant(MetadataProducerConsumer):
    NAMESPACE = "tenant"

    def consume_metadata(self, metadata):
        _context.tenant = metadata


class Reporter:
    """Logs every event it receives."""

    def _report(self, event, message):
        tenant = (message.options.get("metadata") or {}).get("tenant")
        logger.info("EVENT %s %s %s tenant=%s", event, message.actor_name, json.dumps(list(message.args)), tenant)

    def on_enqueue(self, message):  # here: the retry, enqueued by the worker
        self._report("enqueue", message)

    def on_start(self, message):
        self._report("start", message)

    def on_success(self, message):
        self._report("success", message)

    def on_failure(self, message):
        self._report("failure", message)

    def on_retry(self, message):
        self._report("retry", message)

    def on_dead(self, message):
        self._report("dead", message)

    def on_ack(self, message):
        self._report("ack", message)


class Broken:
    def on_start(self, message):
        raise RuntimeError("this consumer is broken")

    on_enqueue = on_success = on_failure = on_dead = on_start


def make_broker():
    kind, target = os.environ["EVENTS_BROKER"], os.environ["EVENTS_TARGET"]
    if kind == "redis":
        from greenq.brokers.redis import RedisBroker

        url, namespace = target.rsplit("#", 1)
        return RedisBroker(url=url, namespace=namespace)
    from greenq.brokers.sqlite import SqliteBroker

    return SqliteBroker(path=target)


broker = make_broker()
greenq.set_broker(broker)
broker.add_metadata_producer_consumer(Tenant())
broker.add_event_consumer(Broken())  # first, so the reporter runs after it has raised
broker.add_event_consumer(Reporter())
QUEUE = os.environ["EVENTS_QUEUE"]


def _seen(arg):
    logger.info("SEEN %s tenant=%s", arg, getattr(_context, "tenant", None))
    _context.tenant = None  # the next message on this greenlet must get it from its own metadata


@greenq.actor(queue_name=QUEUE)
def greet(name):
    _seen(name)


@greenq.actor(queue_name=QUEUE, max_retries=1, min_backoff=100, max_backoff=100, retry_on=(ValueError,))
def fail(reason):
    _seen(reason)
    raise ValueError(reason)
