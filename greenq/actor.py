"""Actors: functions that run in the background when sent a message.

An actor bound to no broker explicitly follows the process-wide one: it is
declared on the broker ``set_broker`` installs, whenever that happens. So a module
of actors can be imported before the app picks its broker, and decorating never
opens a connection.
"""

import logging
import re
import threading

from . import broker as _broker_module
from .errors import ActorOptionError
from .message import Message
from .middleware.middleware import validate_actor_options

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_registry_lock = threading.Lock()
_following_global = []  # actors declared without a broker, in definition order


def _unbound_actors():
    with _registry_lock:
        return list(_following_global)


class Actor:
    """A function plus where its messages go. Calling it runs the function inline."""

    def __init__(self, fn, *, actor_name, queue_name, priority, broker, options):
        if not _QUEUE_NAME.match(queue_name) or queue_name.endswith((".DQ", ".XQ")):
            raise ActorOptionError(
                f"actor {actor_name!r}: bad queue_name {queue_name!r}: use letters, digits, '_', '.', '-', "
                "not starting with '.' or '-' and not ending in .DQ or .XQ"
            )
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ActorOptionError(f"actor {actor_name!r}: bad priority {priority!r}: expected an integer >= 0")
        validate_actor_options(actor_name, options)
        self.fn = fn
        self.actor_name = actor_name
        self.queue_name = queue_name
        self.priority = priority
        self.options = options
        self.logger = logging.getLogger(f"{fn.__module__}.{actor_name}")
        self._broker = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", actor_name)
        self.__wrapped__ = fn
        if broker is not None:
            self.bind(broker)
        else:
            with _registry_lock:
                _following_global.append(self)
            if _broker_module._broker is not None:
                _broker_module._broker.declare_actor(self)

    @property
    def broker(self):
        return self._broker if self._broker is not None else _broker_module.get_broker()

    def bind(self, broker):
        """Tie the actor to ``broker`` for good and declare it there."""
        with _registry_lock:
            if self in _following_global:
                _following_global.remove(self)
        self._broker = broker
        broker.declare_actor(self)

    def message(self, *args, **kwargs) -> Message:
        """Build a message for this actor without sending it (for pipelines and groups)."""
        return self.message_with_options(args=args, kwargs=kwargs)

    def message_with_options(self, *, args=(), kwargs=None, **options) -> Message:
        return Message.fresh(self.queue_name, self.actor_name, args, kwargs, options)

    def send(self, *args, **kwargs) -> Message:
        """Enqueue a message for this actor and return it."""
        return self.send_with_options(args=args, kwargs=kwargs)

    def send_with_options(self, *, args=(), kwargs=None, delay=None, **options) -> Message:
        """Enqueue with options, e.g. ``delay`` in milliseconds. Returns the message sent."""
        message = self.message_with_options(args=args, kwargs=kwargs, **options)
        return self.broker.enqueue(message, delay=delay)

    def send_many(self, arg_tuples, *, delay=None) -> list:
        """Enqueue one message per tuple of positional arguments, in as few round trips as the broker allows."""
        messages = [self.message_with_options(args=tuple(args)) for args in arg_tuples]
        return self.broker.enqueue_many(messages, delay=delay)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"Actor({self.fn!r}, queue_name={self.queue_name!r}, actor_name={self.actor_name!r})"

    def __str__(self):
        return f"Actor({self.actor_name})"


def actor(fn=None, *, actor_class=Actor, actor_name=None, queue_name="default", priority=0, broker=None, **options):
    """Declare a function as an actor. Works bare (``@actor``) or with options (``@actor(max_retries=3)``).

    Options are checked here, against every middleware's ``actor_options``: an
    unknown option or a bad value raises ``ActorOptionError`` naming it.
    """

    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"@actor decorates a function, not {type(fn).__name__}")
        name = actor_name or fn.__name__
        return actor_class(fn, actor_name=name, queue_name=queue_name, priority=priority, broker=broker, options=options)

    if fn is None:
        return decorator
    return decorator(fn)
