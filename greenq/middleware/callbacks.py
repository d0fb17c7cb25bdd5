"""Run another actor when a message succeeds (``on_success``) or fails for good (``on_failure``).

``on_success`` receives ``(message_dict, result)``; ``on_failure`` receives
``(message_dict, {"type": exception type name, "message": str(exception)})``,
once retries are exhausted, never for an attempt that will be retried.
"""

from .middleware import Middleware, actor_name_or_actor


def _name(actor):
    return actor if isinstance(actor, str) else actor.actor_name


class Callbacks(Middleware):
    actor_options = {"on_success": actor_name_or_actor, "on_failure": actor_name_or_actor}

    def after_process_message(self, broker, message, *, result=None, exception=None):
        actor = broker.actors[message.actor_name]
        if exception is None:
            target = message.options.get("on_success") or actor.options.get("on_success")
            if target:
                broker.get_actor(_name(target)).send(message.message.asdict(), result)
        elif not message.retried:
            target = message.options.get("on_failure") or actor.options.get("on_failure")
            if target:
                details = {"type": type(exception).__name__, "message": str(exception)}
                broker.get_actor(_name(target)).send(message.message.asdict(), details)
