"""The ``Scheduler`` middleware: fire periodic and cron actors, each tick exactly once.

Add it to the broker (``broker.add_middleware(Scheduler())``) and every worker
process the worker command starts runs a scheduler loop, from
``after_worker_boot`` to ``before_worker_shutdown``. Processes and machines
share the store (``store_for``: the broker's Redis or SQLite, or ``url=``), and:

* **A lease elects one firer.** The holder renews it every third of
  ``lease_ttl`` (default 10 s); if it dies (even ``kill -9``) the lease expires
  and another process takes over within ``lease_ttl`` plus a third. A graceful
  stop releases it at once. The lease only saves work:
* **Firing is a compare-and-set on the tick, confirmed after the send.**
  Ticks are instants every process computes alike (see ``schedule``). Before
  sending, the firer moves the actor's "last fired" record from the previous
  tick to this one in one atomic store step, as a claim naming the message
  copy it is about to send; a second firer racing for the same tick (a stale
  leader, a split lease) fails that step and sends nothing. Once the broker
  has taken the message, the claim is confirmed.
* **A claim left unconfirmed is taken over.** If the firer dies between
  claiming and confirming (even ``kill -9``), stalls past its lease, or the
  broker refuses the send, the next pass of the leader (another process, or
  the same one) undoes the claim and decides the tick again under the
  missed-tick policy below: normally it sends the tick now. Whether the first
  copy went out cannot be known (the crash may have come just after the send),
  so such a tick is marked *contested*, and a worker starting a copy of a
  contested tick asks the store whether its copy is the tick's runner: the
  first copy to start runs, another is acked without running (logged). Every
  copy has the same message id, ``tick_message_id(actor, tick)``.

  The guarantee, exactly: every tick the missed-tick policy keeps runs its
  actor once, however many processes run schedulers and whichever of them
  dies when (after a takeover its message may have gone out twice; one copy
  runs). That holds when the workers taking the scheduled messages have this
  middleware (it is on the broker, so a one-app deployment does) and reach
  the store as they start one; if a worker cannot, it runs the copy, so a
  second run is then possible, for a contested tick only. The store keeps the
  16 latest contested ticks of each actor: a copy of an older one still
  waiting in a queue runs unchecked. A run cut short by a crash is redelivered
  and runs again, as for any message.
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

Each sent message carries ``options["scheduled_at"]``, the tick (epoch ms),
and ``options["scheduled_copy"]``, the id of this copy.
Cost when idle: one lease call per ``lease_ttl / 3`` per process, plus for the
leader one read per entry per pass; passes happen at ticks and at most every
``max_sleep`` seconds. Firing a tick is two store calls around the send
(claim, confirm); a worker starting a scheduled message makes one.
"""

import logging
import os
import socket
import threading
import time
import uuid

from .. import concurrency
from ..errors import SkipMessage
from ..message import current_millis
from ..middleware.middleware import Middleware
from .periodic import entries as scheduled_entries
from .schedule import Every
from .store import store_for

logger = logging.getLogger("greenq.scheduling")

_TICK_IDS = uuid.UUID("6c1f0b8e-5d3a-4f7e-9a61-1f0c2b7d9e42")  # uuid5 namespace of tick message ids
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
        self.holder = _holder_id()
        self.is_leader = False
        self._stop = threading.Event()
        self._task = None
        self._sent = {}  # key -> (tick, copy) enqueued but not yet confirmed in the store

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
        self.holder = _holder_id()  # fresh per start: a forked or restarted loop is a new holder
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
        """Fire ``entry`` if a tick is due; return the epoch ms at which to look again."""
        now = current_millis()
        last, pending = self.store.schedule_state(entry.key)
        if pending is not None:
            return self._settle(entry, pending, now)
        if last is None:
            last = self.store.init_fired(entry.key, now)
        tick = entry.schedule.next_after(last)
        if tick > now:
            return tick
        latest = self._latest_tick(entry.schedule, now, last)
        late = now - latest > self.misfire_grace
        missed = latest != tick or late
        fire = entry.catch_up or not late
        copy = uuid.uuid4().hex[:16] if fire else None
        if self.store.claim_tick(entry.key, latest, copy, self.holder):
            if fire:
                message = entry.actor.message_with_options(scheduled_at=latest, scheduled_copy=copy).copy(
                    message_id=tick_message_id(entry.key, latest))
                try:
                    broker.enqueue(message)
                except Exception as e:
                    self.store.abandon_tick(entry.key, latest, copy)
                    logger.error("Could not send %r for tick %d (%s: %s); trying again in a second.",
                                 entry.key, latest, type(e).__name__, e)
                    return now + 1000
                self._sent[entry.key] = (latest, copy)  # so a confirm lost with the store is redone, not undone
                self.store.confirm_tick(entry.key, latest, copy)
                del self._sent[entry.key]
                if missed:
                    logger.warning("Actor %r missed %s; fired once for %d (catch_up=True).",
                                   entry.key, _span(tick, latest, now), latest)
                else:
                    logger.debug("Fired %r for tick %d (message %s).", entry.key, latest, message.message_id)
            else:
                logger.warning("Actor %r missed %s; skipped (catch_up=False).", entry.key, _span(tick, latest, now))
        return entry.schedule.next_after(latest)

    def _settle(self, entry, pending, now):
        """A claim whose send was never confirmed: confirm it if this process sent it, else undo it."""
        if self._sent.get(entry.key) == (pending.tick, pending.copy):
            self.store.confirm_tick(entry.key, pending.tick, pending.copy)
            del self._sent[entry.key]
        elif self.store.abandon_tick(entry.key, pending.tick, pending.copy):
            logger.warning("Tick %d of %r was claimed by %s, which did not confirm sending it (it stopped, or "
                           "stalled past its lease); the tick is decided again. A copy it did send runs only if "
                           "no other copy of the tick has.", pending.tick, entry.key, pending.holder)
        return now

    # --- workers: one copy per tick runs --------------------------------------------------

    def before_process_message(self, broker, message):
        copy = message.options.get("scheduled_copy")
        tick = message.options.get("scheduled_at")
        if not isinstance(copy, str) or not isinstance(tick, int):
            return  # not sent by a scheduler (or by one before copies were tracked)
        try:
            store = self.store if self.store is not None else store_for(
                broker=broker, url=self.url, purpose="the scheduler")
            self.store = store
            first = store.claim_run(message.actor_name, tick, copy)
        except Exception as e:  # running a rare duplicate beats dropping the tick
            logger.warning("Could not check whether tick %d of %r already ran (%s: %s); running message %s.",
                           tick, message.actor_name, type(e).__name__, e, message.message_id)
            return
        if not first:
            logger.warning("Message %s is a second copy of tick %d of %r (its first firer stopped before "
                           "confirming the send, and the tick was sent again); acking it without running it.",
                           message.message_id, tick, message.actor_name)
            raise SkipMessage(f"tick {tick} of {message.actor_name!r} already ran from another copy")


def _holder_id():
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def tick_message_id(key, tick):
    """The message id of tick ``tick`` of schedule ``key``: the same in every process, for every copy."""
    return str(uuid.uuid5(_TICK_IDS, f"{key}@{tick}"))


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
