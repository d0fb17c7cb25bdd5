"""When a periodic or cron actor is due: pure functions of time, no I/O.

A schedule answers one question, ``next_after(t)``: the first tick strictly
after the instant ``t`` (epoch milliseconds). Every process computes the same
ticks from the same schedule, without talking to each other, so a tick's epoch
value can serve as its identity in the store (see ``scheduler``).

``Every(seconds)`` ticks at whole multiples of the interval since the Unix
epoch (every 25 s: at :00, :25, :50, :15 ...), not "25 s after the process
started", which is what makes ticks agree across processes and restarts.

``Cron(expression, timezone)`` reads the expression in the wall-clock time of
``timezone`` (default UTC) with croniter, imported only when a cron schedule is
built (it is the ``cron`` extra). Daylight-saving changes follow the usual
cron rules, decided here rather than left to croniter:

* a wall time that does not exist (the hour skipped in spring) fires at the
  first minute after the gap: ``30 2 * * *`` in Europe/Paris on 2026-03-29
  fires at 03:00 CEST; several skipped times collapse into that one firing;
* a wall time that happens twice (the hour repeated in autumn) fires once, at
  its first occurrence.

Expressions use the standard crontab order, ``minute hour day-of-month month
day-of-week``. One croniter rejects gets an error naming the field that is
wrong and what it takes; when the fields are only out of order it gives the
corrected expression: ``0 5 tue * *`` (a day name in the day-of-month field)
says "Did you mean '0 5 * * tue'?".
"""

import datetime
import math
import re

from ..errors import ActorOptionError

_UTC = datetime.timezone.utc
_MAX_STEPS = 5000  # candidates looked at before giving up (an expression that never matches)


class ScheduleError(ActorOptionError):
    """A periodic interval, crontab or timezone that cannot be used (raised at decoration time)."""


class Every:
    """Ticks every ``seconds`` (>= 0.1, at most a year), aligned to the Unix epoch."""

    def __init__(self, seconds):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise ScheduleError(f"the interval must be a number of seconds, not {seconds!r}")
        if not 0.1 <= seconds <= 366 * 86400:
            raise ScheduleError(f"the interval must be between 0.1 s and a year, not {seconds!r}")
        self.seconds = seconds
        self.step = int(round(seconds * 1000))

    def next_after(self, t_ms):
        return (int(t_ms) // self.step + 1) * self.step

    def last_at_or_before(self, t_ms):
        return int(t_ms) // self.step * self.step

    def __repr__(self):
        return f"Every({self.seconds!r})"


def _zone(timezone):
    if timezone is None:
        return _UTC
    if isinstance(timezone, datetime.tzinfo):
        return timezone
    if not isinstance(timezone, str):
        raise ScheduleError(f"timezone must be a name like 'Europe/Paris' or a tzinfo, not {timezone!r}")
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise ScheduleError(f"unknown timezone {timezone!r} ({e})") from None


class Cron:
    """Ticks at the times a crontab expression names, in ``timezone`` (a name or tzinfo; default UTC)."""

    def __init__(self, expression, timezone=None):
        try:
            from croniter import croniter
        except ImportError:  # pragma: no cover - depends on the installation
            raise ScheduleError("cron schedules need croniter: pip install 'greenq[cron]'") from None
        if not isinstance(expression, str) or not expression.strip():
            raise ScheduleError(f"a crontab must be a non-empty string, not {expression!r}")
        if not croniter.is_valid(expression):
            raise ScheduleError(f"invalid crontab {expression!r}" + _diagnose(croniter, expression))
        self._croniter = croniter
        self.expression = expression
        self.zone = _zone(timezone)
        self.next_after(0)  # an expression that can never match (e.g. 30 Feb) fails here, not in the scheduler

    def __repr__(self):
        return f"Cron({self.expression!r}, timezone={str(self.zone)!r})"

    # --- wall time <-> instants -------------------------------------------------------

    def _instant(self, naive):
        """Epoch ms of a local wall time; a skipped time maps to the end of its gap."""
        aware = naive.replace(tzinfo=self.zone, fold=0)
        back = aware.astimezone(_UTC).astimezone(self.zone).replace(tzinfo=None)
        if back != naive:  # it does not exist: walk to the first minute that does
            probe = naive.replace(second=0, microsecond=0)
            for _ in range(24 * 60):
                probe += datetime.timedelta(minutes=1)
                aware = probe.replace(tzinfo=self.zone, fold=0)
                if aware.astimezone(_UTC).astimezone(self.zone).replace(tzinfo=None) == probe:
                    break
        return int(aware.astimezone(_UTC).timestamp() * 1000)

    def next_after(self, t_ms):
        local = datetime.datetime.fromtimestamp(t_ms / 1000, _UTC).astimezone(self.zone).replace(tzinfo=None)
        # Start an hour early, so a second pass through a repeated hour is not missed, then keep the
        # first candidate whose instant lies strictly after t.
        iterator = self._croniter(self.expression, local - datetime.timedelta(hours=1))
        for _ in range(_MAX_STEPS):
            try:
                candidate = iterator.get_next(datetime.datetime)
            except ValueError as e:  # croniter's "no such date" errors
                raise ScheduleError(f"crontab {self.expression!r} names no time after {local}: {e}") from None
            instant = self._instant(candidate)
            if instant > t_ms:
                return instant
        raise ScheduleError(f"crontab {self.expression!r} has no time after {local} in {self.zone}")

    def last_at_or_before(self, t_ms, since_ms):
        """The latest tick in ``(since_ms, t_ms]``, or None; walks forward, so keep the span short."""
        last = None
        tick = self.next_after(since_ms)
        for _ in range(_MAX_STEPS):
            if tick > t_ms:
                return last
            last = tick
            tick = self.next_after(tick)
        return last


# --- saying what is wrong with a crontab --------------------------------------------------------

_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_RANGES = ("0-59", "0-23", "1-31", "1-12 or jan-dec", "0-7 or sun-sat")
_ORDER = "minute hour day-of-month month day-of-week"
_DAY_NAME = re.compile(r"(?<![a-z])(mon|tue|wed|thu|fri|sat|sun)(?![a-z])", re.IGNORECASE)
_MONTH_NAME = re.compile(r"(?<![a-z])(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)(?![a-z])", re.IGNORECASE)
_SWAPPABLE = {0: 1, 1: 0, 2: 3, 3: 2}  # the pairs people mix up: hour/minute, day/month


def _fits(croniter, token, position):
    """Whether ``token`` is a valid field at ``position`` of a five-field crontab."""
    fields = ["*"] * 5
    fields[position] = token
    return croniter.is_valid(" ".join(fields))


def _misplaced(croniter, fields):
    """``(position, where it belongs or None, what it is)`` for the first field that is invalid where it stands."""
    for i, token in enumerate(fields):
        if _fits(croniter, token, i):
            continue
        if _DAY_NAME.search(token) and i != 4:
            return i, 4, "a day name"
        if _MONTH_NAME.search(token) and i != 3:
            return i, 3, "a month name"
        j = _SWAPPABLE.get(i)
        if j is not None and _fits(croniter, token, j) and _fits(croniter, fields[j], i):
            return i, j, None
        return i, None, None
    return None


def _diagnose(croniter, expression):
    """Why croniter rejects a crontab, and the corrected expression when its fields are only out of order.

    The usual mistake is the order: ``0 5 tue * *`` puts a day name in the
    day-of-month field (``0 5 * * tue`` is meant); ``5 30 * * *`` swaps minute
    and hour. A name is moved to its field only among the date fields, where
    the ``*`` it swaps with keeps its meaning; a name in the minute or hour
    field is explained without a guess.
    """
    fields = expression.split()
    if len(fields) < 5:
        return f": a crontab has five fields ({_ORDER}), this one has {len(fields)}"
    if len(fields) > 5:
        if "?" in fields:
            return f": '?' is Quartz syntax; a crontab has five fields ({_ORDER}) and uses '*' instead"
        return ""  # croniter's seconds and year fields: nothing more specific to say
    found = _misplaced(croniter, fields)
    if found is None:
        return ""  # each field is fine alone; their combination is not
    i, j, what = found
    token = fields[i]
    if j is None:
        return (f": field {i + 1} ({_FIELDS[i]}) holds {token!r}, which is not valid there "
                f"(it takes {_RANGES[i]}, '*', lists, ranges and steps); the order is {_ORDER}")
    if what is None:
        fixed = list(fields)
        fixed[i], fixed[j] = fixed[j], fixed[i]
        text = (f": field {i + 1} ({_FIELDS[i]}) holds {token!r}, which is not a valid {_FIELDS[i]} "
                f"({_RANGES[i]}) but is a valid {_FIELDS[j]}; standard crontab order is {_ORDER}")
        if croniter.is_valid(" ".join(fixed)):
            text += f". If the two are swapped, you mean {' '.join(fixed)!r}"
        return text
    text = (f": field {i + 1} ({_FIELDS[i]}) holds {token!r}, {what}, which belongs in field {j + 1} "
            f"({_FIELDS[j]}); standard crontab order is {_ORDER}")
    fixed = list(fields)
    for _ in range(2):  # a day name and a month name may both be misplaced
        if i < 2:
            break
        fixed[i], fixed[j] = fixed[j], fixed[i]
        if croniter.is_valid(" ".join(fixed)):
            return text + f". Did you mean {' '.join(fixed)!r}?"
        found = _misplaced(croniter, fixed)
        if found is None or found[1] is None or found[2] is None:
            break
        i, j, _ = found
    return text


def build(actor_name, *, seconds=None, crontab=None, timezone=None):
    """A schedule for an actor, or ``ScheduleError`` naming the actor and the bad value."""
    try:
        if crontab is not None:
            return Cron(crontab, timezone)
        if timezone is not None:
            raise ScheduleError("timezone= applies to cron schedules only")
        return Every(seconds)
    except ScheduleError as e:
        raise ScheduleError(f"actor {actor_name!r}: {e}") from None
