"""The ``Results`` middleware: keep what actors return, for ``message.get_result()``.

Per actor: ``store_results=True`` turns it on, ``result_ttl`` (ms) says how long
a result is kept. A return value is stored when the actor returns; a failure is
stored only once the message fails for good (when the worker dead-letters it,
never for an attempt that will be retried), as ``{"type", "message"}``, so a
waiter gets ``ResultFailure`` instead of waiting for a retry that never comes.
"""

import logging

from ..middleware.middleware import Middleware, boolean, positive_int

logger = logging.getLogger("greenq.results")


class Results(Middleware):
    """``Results(backend=..., store_results=False, result_ttl=600000)``; actor options override both."""

    actor_options = {"store_results": boolean, "result_ttl": positive_int}

    def __init__(self, *, backend=None, store_results=False, result_ttl=600000):
        if backend is None:
            from .stub import StubBackend

            backend = StubBackend()
        boolean(store_results)
        positive_int(result_ttl)
        self.backend = backend
        self.store_results = store_results
        self.result_ttl = result_ttl

    def _settings(self, broker, message):
        actor = broker.actors.get(message.actor_name)
        options = actor.options if actor is not None else {}
        return options.get("store_results", self.store_results), options.get("result_ttl", self.result_ttl)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is not None:
            return  # a failure is final only once the message is dead-lettered: see after_nack
        store, ttl = self._settings(broker, message)
        if not store:
            return
        try:
            self.backend.store_result(message, result, ttl)
        except Exception as e:
            logger.error("Could not store the result of message %s (%s): %s", message.message_id,
                         message.actor_name, e)
            self.backend.store_failure(message, type(e).__name__, str(e), ttl)

    def after_nack(self, broker, message):
        store, ttl = self._settings(broker, message)
        if not store:
            return
        exception = getattr(message, "exception", None)
        if exception is not None:
            type_name, text = type(exception).__name__, str(exception)
        else:
            failure = message.failure or message.options.get("failure") or "failed"
            type_name, _, text = failure.partition(": ")
        self.backend.store_failure(message, type_name, text, ttl)

    def __repr__(self):
        return f"Results(backend={type(self.backend).__name__})"
