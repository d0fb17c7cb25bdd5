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
"""

import datetime
import math

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
            raise ScheduleError(f"invalid crontab {expression!r}")
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
