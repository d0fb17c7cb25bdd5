"""Carry pipelines and groups forward in the worker (see ``greenq.composition``).

``Pipelines``: when an actor succeeds and its message has a ``pipe_target``,
enqueue that next step, with the result appended to its arguments unless the
step says ``pipe_ignore=True``. ``GroupCallbacks``: when a group child
succeeds, record it; the child that completes the group enqueues the group's
completion callbacks. Both run before the message is acked, so a crash in
between repeats a step (at-least-once, like every greenq message) but never
loses the chain.
"""

import logging

from ..message import Message, current_millis
from .middleware import Middleware, boolean

logger = logging.getLogger("greenq.middleware.pipelines")


class Pipelines(Middleware):
    """On by default. ``pipe_ignore=True`` (a message option or an actor option) drops the previous result."""

    actor_options = {"pipe_ignore": boolean}

    def after_process_message(self, broker, message, *, result=None, exception=None):
        target = message.options.get("pipe_target")
        if exception is not None or not target:
            return
        step = Message.from_dict(dict(target))
        actor = broker.actors.get(step.actor_name)
        ignore = step.options.get("pipe_ignore", actor.options.get("pipe_ignore", False) if actor else False)
        changes = {"message_timestamp": current_millis()}
        if not ignore:
            changes["args"] = (*step.args, result)
        broker.enqueue(step.copy(**changes))


class GroupCallbacks(Middleware):
    """On by default; counts finished group children in ``backend`` (default: ``backend_for(broker)``)."""

    def __init__(self, backend=None):
        self.backend = backend

    def after_process_message(self, broker, message, *, result=None, exception=None):
        completion = message.options.get("group_completion")
        if exception is not None or not completion or message.options.get("pipe_target"):
            return  # a failed child never completes its group; a pipeline completes at its last step
        if self.backend is None:
            from ..rate_limits import backend_for

            self.backend = backend_for(broker)
        size = completion["size"]
        added, done = self.backend.add(f"group:{completion['id']}", message.message_id, None, completion["ttl"])
        if added and done == size:
            logger.debug("Group %s complete; enqueueing %d callback(s).", completion["id"],
                         len(completion["callbacks"]))
            for callback in completion["callbacks"]:
                broker.enqueue(Message.from_dict(dict(callback)).copy(message_timestamp=current_millis()))
