"""Debouncing, as in Deferrable: identical sends of an actor run at most once per window.

``@greenq.actor(debounce_seconds=30)``: a send with the same actor, arguments
and keyword arguments as one accepted less than 30 s ago is delayed to the end
of the window, and dropped (``send`` returns None) if such a delayed one is
already waiting. ``debounce_always_delay=True`` delays even the first send by
the full window, so a burst of sends collapses into one run at its end.

The decision is made in the producer, atomically, in the shared rate-limit
back end (Redis or SQLite, like the broker: see ``greenq.rate_limits``): one
round trip per send of a debounced actor, none for other actors. Retries and
requeues of a message that was already let through are never debounced again.
Use it only for idempotent work: dropped sends are gone.
"""

import hashlib
import json
import logging

from ..message import current_millis
from .middleware import Middleware, boolean

logger = logging.getLogger("greenq.middleware.debounce")


def positive_seconds(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("expected a number of seconds > 0")


def debounce_key(message):
    """The identity of a send: actor, arguments and keyword arguments (canonical JSON, hashed)."""
    body = json.dumps([list(message.args), dict(message.kwargs)], sort_keys=True, separators=(",", ":"),
                      default=str)
    return f"debounce:{message.actor_name}:{hashlib.sha256(body.encode()).hexdigest()[:32]}"


class Debounce(Middleware):
    """On by default; ``backend`` defaults to ``greenq.rate_limits.backend_for(broker)``."""

    actor_options = {"debounce_seconds": positive_seconds, "debounce_always_delay": boolean}

    def __init__(self, backend=None):
        self.backend = backend

    def prepare_enqueue(self, broker, message):
        actor = broker.actors.get(message.actor_name)
        if actor is None:
            return message
        seconds = actor.options.get("debounce_seconds")
        if not seconds or message.options.get("debounced") or "retries" in message.options \
                or "concurrency_requeues" in message.options:
            return message
        if "eta" in message.options:
            raise ValueError(f"actor {actor.actor_name!r} has debounce_seconds; it cannot also be sent with a delay")
        if self.backend is None:
            from ..rate_limits import backend_for

            self.backend = backend_for(broker)
        delay = self.backend.debounce(debounce_key(message), int(seconds * 1000),
                                      actor.options.get("debounce_always_delay", False))
        if delay is None:
            logger.debug("Dropped a debounced send of %s (one is already due).", actor.actor_name)
            return None
        options = {**message.options, "debounced": True}
        if delay > 0:
            options["eta"] = current_millis() + delay
        return message.copy(options=options)
