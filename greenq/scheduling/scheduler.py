"""The ``Scheduler`` middleware: fire periodic and cron actors, each tick exactly once.

Add it to the broker (``broker.add_middleware(Scheduler())``) and every worker
process the worker command starts runs a scheduler loop, from
``after_worker_boot`` to ``before_worker_shutdown``. Processes and machines
share the store (``store_for``: the broker's Redis or SQLite, or ``url=``), and:

* **A lease elects one firer.** The holder renews it every third of
  ``lease_ttl`` (default 10 s); if it dies (even ``kill -9``) the lease expires
  and another process takes over within ``lease_ttl`` plus a third. A graceful
  stop releases it at once. The lease only saves work:
* **Firing is a compare-and-set on the tick.** Ticks are instants every
  process computes alike (see ``schedule``). Before sending, the firer moves
  the actor's "last fired" record from the previous tick to this one in one
  atomic store step; a second firer racing for the same tick (a stale leader,
  a split lease) fails that step and sends nothing. If the send fails, the
  record is put back, so the tick is tried again. A process that dies between
  the record and the send loses that one tick (at most once, never twice).
* **Missed ticks.** A schedule seen for the first time starts counting from
  now: nothing fires for the past. After downtime (no scheduler ran, or the
  store was unreachable), an actor with ``catch_up=True`` (the default) fires
  once, for the latest missed tick, however many were missed; with
  ``catch_up=False`` the missed ticks are skipped and logged. A tick reached
  up to ``misfire_grace`` ms late (default: ``lease_ttl`` + 1 s, which covers
  a leader handover) is not missed.
* **Losing the store** stops firing at once, logged as an error; the loop keeps
  retrying and logs when the store answers again. Because the record lives in
  the store, resuming never fires a tick twice. A broker that refuses the send
  is logged too, and the tick is tried again a second later.

Each sent message carries ``options["scheduled_at"]``, the tick (epoch ms).
Cost when idle: one lease call per ``lease_ttl / 3`` per process, plus for the
leader one read per entry per pass; passes happen at ticks and at most every
``max_sleep`` seconds.
"""

import logging
import os
import socket
import threading
import time
import uuid

from .. import concurrency
from ..message import current_millis
from ..middleware.middleware import Middleware
from .periodic import entries as scheduled_entries
from .schedule import Every
from .store import store_for

logger = logging.getLogger("greenq.scheduling")

_CRON_WINDOW = 2 * 86400 * 1000  # how far back the latest missed cron tick is looked for first


class Scheduler(Middleware):
    """``Scheduler(url=None, store=None, lease_ttl=10000, misfire_grace=None, lease_name="default")``.

    Fires the ``@periodic`` / ``@cron`` actors declared on the broker it is added
    to. Schedulers with the same store and ``lease_name`` elect one leader.
    """

    def __init__(self, *, url=None, store=None, lease_ttl=10000, misfire_grace=None, lease_name="default",
                 max_sleep=1.0):
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float)) or lease_ttl < 300:
            raise ValueError(f"lease_ttl must be >= 300 ms, not {lease_ttl!r}")
        self.url = url
        self.store = store
        self.lease_ttl = int(lease_ttl)
        self.misfire_grace = self.lease_ttl + 1000 if misfire_grace is None else int(misfire_grace)
        self.lease_name = lease_name
        self.max_sleep = max_sleep
        self.holder = None
        self.is_leader = False
        self._stop = threading.Event()
        self._task = None

    def __repr__(self):
        return f"Scheduler(lease_name={self.lease_name!r})"

    # --- lifecycle ------------------------------------------------------------------

    def after_worker_boot(self, broker, worker):
        self.start(broker)

    def before_worker_shutdown(self, broker, worker):
        self.stop()

    def entries_for(self, broker):
        return [e for e in scheduled_entries() if broker.actors.get(e.actor.actor_name) is e.actor]

    def start(self, broker):
        """Start the loop (a greenlet or thread) for the scheduled actors declared on ``broker``."""
        if self._task is not None and self._task.is_alive():
            return
        entries = self.entries_for(broker)
        if not entries:
            logger.debug("No periodic or cron actors on %r; the scheduler stays idle.", broker)
            return
        self.store = store_for(broker=broker, url=self.url, store=self.store, purpose="the scheduler")
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop.clear()
        self._task = concurrency.spawn(self._loop, broker, entries, name="greenq-scheduler")

    def stop(self, timeout=10.0):
        """Stop the loop and give the lease up, so another process takes over at once."""
        task = self._task
        if task is None:
            return
        self._stop.set()
        task.join(timeout)
        self._task = None

    # --- the loop ---------------------------------------------------------------------

    def _loop(self, broker, entries):
        logger.info("Scheduler started for %d actor(s): %s.", len(entries),
                    ", ".join(e.actor.actor_name for e in entries))
        healthy = True
        next_renew = 0.0
        failures = 0
        while not self._stop.is_set():
            wait = self.max_sleep
            try:
                if time.monotonic() >= next_renew:
                    leader = self.store.acquire_lease(self.lease_name, self.holder, self.lease_ttl)
                    next_renew = time.monotonic() + self.lease_ttl / 3000
                    if leader != self.is_leader:
                        logger.info("Scheduler %s %s the lease %r.", self.holder,
                                    "holds" if leader else "lost", self.lease_name)
                    self.is_leader = leader
                if not healthy:
                    logger.warning("The scheduler's store %r answers again; firing resumes.", self.store)
                    healthy, failures = True, 0
                if self.is_leader:
                    due = min(self._fire_due(broker, entry) for entry in entries)
                    wait = min(wait, (due - current_millis()) / 1000)
                wait = min(wait, next_renew - time.monotonic())
            except Exception as e:
                if healthy:
                    logger.error("The scheduler lost its store %r (%s: %s); no periodic or cron actor fires until "
                                 "it answers again.", self.store, type(e).__name__, e)
                healthy, self.is_leader, next_renew = False, False, 0.0
                failures += 1
                wait = min(0.2 * 2 ** failures, self.lease_ttl / 3000, 5.0)
            self._stop.wait(max(wait, 0.005))
        if self.is_leader:
            self.is_leader = False
            try:
                self.store.release_lease(self.lease_name, self.holder)
            except Exception as e:
                logger.warning("The scheduler could not release its lease (%s); it expires in %d ms.", e,
                               self.lease_ttl)
        logger.info("Scheduler stopped.")

    def _latest_tick(self, schedule, now, last):
        if isinstance(schedule, Every):
            return schedule.last_at_or_before(now)
        return (schedule.last_at_or_before(now, max(last, now - _CRON_WINDOW))
                or schedule.last_at_or_before(now, last))

    def _fire_due(self, broker, entry):
        """Fire ``entry`` if a tick is due; return the epoch ms of its next tick."""
        now = current_millis()
        last = self.store.last_fired(entry.key)
        if last is None:
            last = self.store.init_fired(entry.key, now)
        tick = entry.schedule.next_after(last)
        if tick > now:
            return tick
        latest = self._latest_tick(entry.schedule, now, last)
        late = now - latest > self.misfire_grace
        missed = latest != tick or late
        fire = entry.catch_up or not late
        if self.store.claim_tick(entry.key, latest):
            if fire:
                message = entry.actor.message_with_options(scheduled_at=latest)
                try:
                    broker.enqueue(message)
                except Exception as e:
                    self.store.unclaim_tick(entry.key, latest, last)
                    logger.error("Could not send %r for tick %d (%s: %s); trying again in a second.",
                                 entry.key, latest, type(e).__name__, e)
                    return now + 1000
                if missed:
                    logger.warning("Actor %r missed %s; fired once for %d (catch_up=True).",
                                   entry.key, _span(tick, latest, now), latest)
                else:
                    logger.debug("Fired %r for tick %d (message %s).", entry.key, latest, message.message_id)
            else:
                logger.warning("Actor %r missed %s; skipped (catch_up=False).", entry.key, _span(tick, latest, now))
        return entry.schedule.next_after(latest)


def _span(first, last, now):
    if first == last:
        return f"its tick {first} (epoch ms) by {now - last} ms"
    return f"ticks from {first} to {last} (epoch ms)"


def run(broker, *, stop_event=None, **options):
    """Run a scheduler in this process, without a worker, until ``stop_event`` is set.

    For a process of your own that only fires schedules (a script that imports
    the app and calls ``run(broker)``, setting ``stop_event`` on TERM). The
    worker command has no scheduler mode of its own: with the ``Scheduler``
    middleware on the broker, every process ``greenq``/``greenq-gevent`` starts
    runs the loop and the lease elects one firer; a process started with
    ``run`` joins the same election. ``options`` are ``Scheduler``'s.
    """
    scheduler = Scheduler(**options)
    stop_event = stop_event or threading.Event()
    scheduler.start(broker)
    try:
        stop_event.wait()
    finally:
        scheduler.stop()
    return scheduler
