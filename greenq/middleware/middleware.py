"""The middleware contract: one class, a fixed list of named hooks.

Everything that is not the core loop (retries, limits, results, metrics...) is a
middleware that implements only the hooks it needs. Learn the lifecycle here once,
then read each feature on its own.

Hooks are called as ``hook(broker, *args, **kwargs)``:

========================== ==================================================
hook                       called
========================== ==================================================
before/after_declare_actor  when an actor is declared on the broker
before/after_declare_queue  when a queue is first declared
prepare_enqueue             before a message is stored: return it, a changed
                            copy (metadata, eta), or None to drop it
before/after_enqueue        around ``broker.enqueue(message, delay=)``
before_process_message      in the worker, before the actor runs; raise
                            ``SkipMessage`` to skip it
after_process_message       after the actor, with ``result=`` or ``exception=``
after_skip_message          instead of the above when the message was skipped
before/after_ack            around acknowledging a finished message
before/after_nack           around dead-lettering a failed message
after_process_boot          in a worker process, once, before its Worker starts
before_process_stop         in a worker process, once, before it exits
before/after_worker_boot    around ``Worker.start()``
before/after_worker_shutdown around ``Worker.stop()``
========================== ==================================================

Each middleware lists the actor options it understands in ``actor_options``,
mapping the option's name to a validator that raises ``ValueError`` for a bad
value. ``@actor`` checks every option against all middleware classes at
decoration time, so a typo fails where it was written.
"""

HOOKS = (
    "before_declare_actor", "after_declare_actor",
    "before_declare_queue", "after_declare_queue",
    "prepare_enqueue", "before_enqueue", "after_enqueue",
    "before_process_message", "after_process_message", "after_skip_message",
    "before_ack", "after_ack", "before_nack", "after_nack",
    "after_process_boot", "before_process_stop",
    "before_worker_boot", "after_worker_boot",
    "before_worker_shutdown", "after_worker_shutdown",
)

#: option name -> (validator, name of the middleware class that declared it)
_OPTION_VALIDATORS = {}


class Middleware:
    """Base class for middleware. Override only the hooks you need."""

    #: ``{"option_name": validator}``; see the module docstring.
    actor_options = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, validator in cls.__dict__.get("actor_options", {}).items():
            _OPTION_VALIDATORS[name] = (validator, cls.__name__)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _noop(self, broker, *args, **kwargs):
    return None


for _hook in HOOKS:
    setattr(Middleware, _hook, _noop)


def implemented_hooks(middleware):
    """The hooks this middleware overrides, so the broker calls nothing else."""
    return [hook for hook in HOOKS if getattr(type(middleware), hook) is not _noop]


def validate_actor_options(actor_name, options):
    """Raise ``ActorOptionError`` naming the first unknown option or bad value."""
    from ..errors import ActorOptionError

    for name, value in options.items():
        entry = _OPTION_VALIDATORS.get(name)
        if entry is None:
            known = ", ".join(sorted(_OPTION_VALIDATORS))
            raise ActorOptionError(
                f"actor {actor_name!r}: unknown option {name!r}. Options the loaded middleware accept: {known}."
            )
        validator, owner = entry
        try:
            validator(value)
        except (TypeError, ValueError) as e:
            raise ActorOptionError(f"actor {actor_name!r}: bad value {value!r} for option {name!r} ({owner}): {e}") from None


def option_owner(name):
    """The middleware class name that declared an actor option, or None."""
    entry = _OPTION_VALIDATORS.get(name)
    return entry[1] if entry else None


# Validators shared by the middleware modules.

def optional(validator):
    def check(value):
        if value is not None:
            validator(value)
    return check


def non_negative_int(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected an integer >= 0")


def positive_int(value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected an integer > 0")


def at_least_ms(minimum):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ValueError(f"expected a number of milliseconds >= {minimum}")
    return check


def boolean(value):
    if not isinstance(value, bool):
        raise ValueError("expected True or False")


def a_callable(value):
    if not callable(value):
        raise ValueError("expected a callable")


def one_of(*choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}")
    return check


def actor_name_or_actor(value):
    """Callbacks may name an actor or pass it; the name is what travels."""
    if not isinstance(value, str) and not hasattr(value, "actor_name"):
        raise ValueError("expected an actor or an actor's name")
