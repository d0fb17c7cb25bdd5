"""``@greenq.periodic`` and ``@greenq.cron``: ordinary actors plus a schedule entry.

The decorated function becomes a normal actor (it can still be sent by hand or
called inline); the schedule is checked here, at decoration time, so a bad
interval, crontab or timezone fails where it was written, naming the actor.
Firing is the ``Scheduler`` middleware's job (see ``scheduler``): add it to
the broker and every worker process runs it, with a lease electing one firer.
"""

import threading

from ..actor import actor as _actor
from .schedule import ScheduleError, build


class Entry:
    """One scheduled actor: what to send, when, and what to do about missed ticks."""

    __slots__ = ("actor", "schedule", "catch_up")

    def __init__(self, actor, schedule, catch_up):
        self.actor = actor
        self.schedule = schedule
        self.catch_up = catch_up

    @property
    def key(self):
        return self.actor.actor_name

    def __repr__(self):
        return f"Entry({self.actor.actor_name!r}, {self.schedule!r}, catch_up={self.catch_up})"


_lock = threading.Lock()
_entries = {}  # actor name -> Entry


def entries():
    """Every schedule entry declared in this process, in declaration order."""
    with _lock:
        return list(_entries.values())


def _register(actor, schedule, catch_up):
    with _lock:
        _entries[actor.actor_name] = Entry(actor, schedule, catch_up)
    actor.schedule = schedule
    return actor


def _decorate(fn, schedule_args, *, actor_name, queue_name, catch_up, options):
    if not callable(fn):
        raise TypeError(f"a schedule decorator takes a function, not {type(fn).__name__}")
    name = actor_name or fn.__name__
    if not isinstance(catch_up, bool):
        raise ScheduleError(f"actor {name!r}: catch_up must be True or False, not {catch_up!r}")
    schedule = build(name, **schedule_args)
    made = _actor(fn, actor_name=name, queue_name=queue_name, **options)
    return _register(made, schedule, catch_up)


def periodic(seconds, *, queue_name="default", actor_name=None, catch_up=True, **options):
    """Run the actor every ``seconds`` (ticks aligned to the Unix epoch), e.g. ``@periodic(25, queue_name="low")``.

    ``catch_up``: after downtime, fire once for the missed ticks (True) or skip
    them (False). Other keyword arguments are actor options (``broker=``,
    ``priority=``, ``max_retries=`` ...). The actor takes no arguments.
    """
    if callable(seconds):
        raise ScheduleError(f"actor {seconds.__name__!r}: @periodic needs an interval, e.g. @periodic(25)")

    def decorator(fn):
        return _decorate(fn, {"seconds": seconds}, actor_name=actor_name, queue_name=queue_name,
                         catch_up=catch_up, options=options)

    return decorator


def cron(crontab, *, timezone=None, queue_name="default", actor_name=None, catch_up=True, **options):
    """Run the actor at crontab times, e.g. ``@cron("0 5 * * tue", timezone="Europe/Paris")`` (default UTC).

    Needs croniter (``pip install 'greenq[cron]'``). See ``schedule`` for the
    daylight-saving rules and ``periodic`` for the other arguments.
    """
    if callable(crontab):
        raise ScheduleError(f"actor {crontab.__name__!r}: @cron needs a crontab, e.g. @cron('0 5 * * tue')")

    def decorator(fn):
        return _decorate(fn, {"crontab": crontab, "timezone": timezone}, actor_name=actor_name,
                         queue_name=queue_name, catch_up=catch_up, options=options)

    return decorator
