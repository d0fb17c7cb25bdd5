"""Event consumers, as in Deferrable: any object with ``on_<event>`` methods sees the lifecycle.

::

    class Audit:
        def on_success(self, message):
            log.info("%s returned %r", message.message_id, message.result)

    broker.add_event_consumer(Audit())

Each handler takes the message: a ``Message`` for ``on_enqueue`` (in the
producer), the worker's ``MessageProxy`` otherwise, with ``.result`` and
``.exception`` set. Events and when they fire:

=============== ===========================================================
on_enqueue      a message was stored (a send, a retry, a pipeline step)
on_start        the worker is about to run the actor
on_success      the actor returned (``message.result``)
on_failure      the actor raised (``message.exception``), each attempt
on_retry        after on_failure, when the attempt will be retried
on_skip         a middleware skipped the message (age limit...)
on_ack          the message is done and acknowledged
on_dead         the message failed for good and went to the dead letters
=============== ===========================================================

Handlers run inline, in the greenlet handling the message: keep them quick.
One that raises is logged and skipped; it never breaks processing.
"""

import logging

from .middleware import Middleware

logger = logging.getLogger("greenq.middleware.events")

EVENTS = ("enqueue", "start", "success", "failure", "retry", "skip", "ack", "dead")


class Events(Middleware):
    """Dispatches events to the registered consumers; one per broker (``Events.on(broker)``).

    It must sit before ``Retries`` in the chain, so that ``after_*`` hooks see
    whether a failure is retried; ``Events.on`` places it so.
    """

    def __init__(self, consumers=()):
        self.consumers = []
        for consumer in consumers:
            self.register(consumer)

    @classmethod
    def on(cls, broker):
        """The broker's ``Events`` middleware, added (before Retries) if it has none."""
        from .retries import Retries

        middleware = broker.get_middleware(cls)
        if middleware is None:
            middleware = cls()
            if broker.get_middleware(Retries) is not None:
                broker.add_middleware(middleware, before=Retries)
            else:
                broker.add_middleware(middleware)
        return middleware

    def register(self, consumer):
        if not any(callable(getattr(consumer, f"on_{event}", None)) for event in EVENTS):
            raise ValueError(f"{consumer!r} has none of the event methods {', '.join('on_' + e for e in EVENTS)}")
        self.consumers.append(consumer)

    def emit(self, event, message):
        for consumer in self.consumers:
            handler = getattr(consumer, f"on_{event}", None)
            if handler is None:
                continue
            try:
                handler(message)
            except Exception:
                logger.exception("Event consumer %r failed in on_%s for message %s; carrying on.",
                                 consumer, event, message.message_id)

    def after_enqueue(self, broker, message, delay):
        self.emit("enqueue", message)

    def before_process_message(self, broker, message):
        self.emit("start", message)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            self.emit("success", message)
            return
        self.emit("failure", message)
        if message.retried:
            self.emit("retry", message)

    def after_skip_message(self, broker, message):
        self.emit("skip", message)

    def after_ack(self, broker, message):
        self.emit("ack", message)

    def after_nack(self, broker, message):
        self.emit("dead", message)

    def __repr__(self):
        return f"Events({len(self.consumers)} consumer(s))"
