"""Metadata producers and consumers, as in Deferrable: context from the sender to the actor.

An object with a unique ``NAMESPACE``, ``produce_metadata()`` (called in the
producer at each send) and ``consume_metadata(value)`` (called in the worker
before the actor runs) carries item-independent context, e.g. a correlation
id or the sender's host::

    class Hostname(MetadataProducerConsumer):
        NAMESPACE = "hostname"

        def produce_metadata(self):
            return socket.gethostname()

        def consume_metadata(self, value):
            log_context.sent_from = value

    broker.add_metadata_producer_consumer(Hostname())

Register the same objects in producers and workers. Values travel in
``options["metadata"][NAMESPACE]`` and must be JSON. A retry or requeue keeps
the original sender's values. A producer or consumer that raises is logged
and skipped: it never stops a send or a message.
"""

import logging

from .middleware import Middleware

logger = logging.getLogger("greenq.middleware.metadata")


class MetadataProducerConsumer:
    """Optional base class; any object with ``NAMESPACE`` and either method will do."""

    NAMESPACE = None

    def produce_metadata(self):
        return None

    def consume_metadata(self, metadata):
        pass


class Metadata(Middleware):
    """Holds the registered producer/consumers; one per broker (``Metadata.on(broker)``)."""

    def __init__(self, producer_consumers=()):
        self.registered = {}
        for producer_consumer in producer_consumers:
            self.register(producer_consumer)

    @classmethod
    def on(cls, broker):
        """The broker's ``Metadata`` middleware, added if it has none."""
        middleware = broker.get_middleware(cls)
        if middleware is None:
            middleware = cls()
            broker.add_middleware(middleware)
        return middleware

    def register(self, producer_consumer):
        namespace = getattr(producer_consumer, "NAMESPACE", None)
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"{producer_consumer!r} needs a NAMESPACE: a non-empty string")
        if namespace in self.registered:
            raise ValueError(f"metadata namespace {namespace!r} is already taken by {self.registered[namespace]!r}")
        self.registered[namespace] = producer_consumer

    def prepare_enqueue(self, broker, message):
        existing = message.options.get("metadata") or {}
        metadata = dict(existing)
        for namespace, producer in self.registered.items():
            if namespace in metadata or not hasattr(producer, "produce_metadata"):
                continue
            try:
                metadata[namespace] = producer.produce_metadata()
            except Exception:
                logger.exception("Metadata producer %r (namespace %r) failed; sending without it.",
                                 producer, namespace)
        if metadata == existing:
            return message
        return message.copy(options={**message.options, "metadata": metadata})

    def before_process_message(self, broker, message):
        metadata = message.options.get("metadata") or {}
        for namespace, consumer in self.registered.items():
            if namespace not in metadata or not hasattr(consumer, "consume_metadata"):
                continue
            try:
                consumer.consume_metadata(metadata[namespace])
            except Exception:
                logger.exception("Metadata consumer %r (namespace %r) failed on message %s; running it anyway.",
                                 consumer, namespace, message.message_id)

    def __repr__(self):
        return f"Metadata({sorted(self.registered)})"
