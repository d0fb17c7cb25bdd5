"""Dead-letter messages older than their actor's ``max_age`` instead of running them."""

import logging

from ..errors import SkipMessage
from ..message import current_millis
from .middleware import Middleware, optional, positive_int

logger = logging.getLogger("greenq.middleware.age_limit")


class AgeLimit(Middleware):
    """``max_age`` (ms, per actor or as the default here; None means no limit)."""

    actor_options = {"max_age": optional(positive_int)}

    def __init__(self, *, max_age=None):
        self.max_age = max_age

    def before_process_message(self, broker, message):
        actor = broker.actors[message.actor_name]
        max_age = actor.options.get("max_age", self.max_age)
        if max_age is None:
            return
        age = current_millis() - message.message_timestamp
        if age > max_age:
            logger.warning("Message %s is %d ms old, past its max_age of %d ms; dead-lettering it.",
                           message.message_id, age, max_age)
            message.fail(f"AgeLimit: {age} ms old, max_age {max_age} ms")
            raise SkipMessage("message is too old")
