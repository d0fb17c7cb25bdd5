"""The worker: fetch messages, run actors on a pool, settle the outcome with the broker.

Shape, per worker::

    consumer loop (one per queue) --fetch--> work queue (priority, then arrival)
                                                   |
                                   pool of N greenlets (or threads) run actors
                                                   |
    settler (one per queue) <--ack/nack/requeue----+

Written for gevent first:

* Demand-driven prefetch. A consumer fetches only when the shared capacity
  (N pool slots plus a small buffer) has room, and only as many messages as fit.
  A process never hoards work that a sibling process could start sooner, and
  shutdown has little to hand back.
* Idle parts block, they do not poll: pool greenlets wait on the work queue,
  consumers wait on capacity, settlers wait on their inbox. The only timeout is
  the broker fetch's (``worker_timeout``), so a consumer notices ``stop``.
* Batched settlement. Acks from hundreds of greenlets that finish together go to
  the broker in one call per queue; acks of greenlets that finish one by one
  wait a few ms for company (see ``_QueueRunner._settle_loop``).
"""

import itertools
import logging
import queue as queue_module
import threading
import time
import traceback
from collections.abc import Mapping

from . import concurrency
from .errors import ActorNotFound, EncodeError, Interrupt, Retry, Shutdown, SkipMessage
from .message import current_millis
from .middleware.middleware import Middleware

logger = logging.getLogger("greenq.worker")

_TRACEBACK_LIMIT = 4000


# --- running one message --------------------------------------------------------

class _Guard:
    """Where a message's actor is in its run, so an interrupt lands only inside it.

    ``state`` moves pending -> running -> done. An interrupt that arrives while
    pending is kept and raised as the actor starts; one that arrives when done is
    dropped. Under gevent the check and the throw happen together in the hub, so
    no interrupt can land in worker code.
    """

    __slots__ = ("state", "handle", "pending")

    #: One real OS lock for every guard: it is held for a few bytecodes and never
    #: across a switch, so it is cheaper than a (cooperative) lock per message.
    lock = concurrency.original("_thread", "allocate_lock")()

    def __init__(self):
        self.state = "pending"
        self.handle = None
        self.pending = None

    def interrupt(self, exception_type):
        with self.lock:
            if self.state == "pending":
                self.pending = exception_type
                return True
            if self.state != "running":
                return False
            handle = self.handle
        concurrency.raise_in(handle, exception_type, guard=lambda: self.state == "running")
        return True


def call_actor(actor, message):
    """Run the actor for ``message`` so that ``message.interrupt()`` can reach it."""
    guard = _Guard()
    message._interrupt = guard.interrupt
    try:
        with guard.lock:
            if guard.pending is not None:
                raise guard.pending()
            guard.handle = concurrency.current()
            guard.state = "running"
        try:
            return actor.fn(*message.args, **message.kwargs)
        finally:
            guard.state = "done"
    finally:
        message._interrupt = None


def process_message(broker, message):
    """Run one message through the middleware and its actor; record the outcome on it.

    Afterwards ``message.failed`` says whether it must be dead-lettered. Shared by
    the Worker and the LocalBroker so both behave the same.
    """
    actor = broker.actors.get(message.actor_name)
    if actor is None:
        logger.error("Message %s names no declared actor %r; dead-lettering it.",
                     message.message_id, message.actor_name)
        message.fail(f"ActorNotFound: no actor named {message.actor_name!r} is declared")
        message.exception = ActorNotFound(message.failure)
        return
    try:
        broker.emit_before("process_message", message)
    except SkipMessage:
        broker.emit_after("skip_message", message)
        return
    except Shutdown:  # the worker stopped before the actor started
        _return_to_broker(broker, actor, message, 0.0)
        return
    except Interrupt as e:  # a limit that ran out before the actor started
        _record_failure(broker, actor, message, e, 0.0)
        return

    log = actor.logger
    verbose = log.isEnabledFor(logging.INFO)
    if verbose:
        log.info("Received args=%r kwargs=%r.", message.args, dict(message.kwargs))
    start = time.perf_counter()
    try:
        result = call_actor(actor, message)
    except Shutdown:
        _return_to_broker(broker, actor, message, (time.perf_counter() - start) * 1000)
        return
    except (Exception, Interrupt) as e:
        _record_failure(broker, actor, message, e, (time.perf_counter() - start) * 1000)
        return
    if verbose:
        log.info("Completed after %.2fms.", (time.perf_counter() - start) * 1000)
    message.result = result
    try:
        broker.emit_after("process_message", message, result=result)
    except Interrupt:  # arrived between the actor's return and here; the work is done
        pass


def _return_to_broker(broker, actor, message, elapsed_ms):
    """The worker's shutdown interrupted this message: it is unfinished work, not a failure.

    It goes back to the broker as it came, to run again on another worker: no
    retry is counted, nothing is dead-lettered, no failure callback or result
    is recorded. Middleware see it as skipped (``after_skip_message``), which
    closes what ``before_process_message`` opened.
    """
    actor.logger.warning("Interrupted by the worker's shutdown after %.2fms; returning message %s to the broker.",
                         elapsed_ms, message.message_id)
    message.returned = True
    try:
        broker.emit_after("skip_message", message)
    except Interrupt:
        pass


def _record_failure(broker, actor, message, exception, elapsed_ms):
    message.exception = exception
    if isinstance(exception, Retry):
        actor.logger.info("Asked for a retry after %.2fms: %s", elapsed_ms, exception)
    else:
        actor.logger.error("Failed after %.2fms with %s: %s (message %s).", elapsed_ms,
                           type(exception).__name__, exception, message.message_id,
                           exc_info=(type(exception), exception, exception.__traceback__))
    try:
        broker.emit_after("process_message", message, exception=exception)
    except Interrupt:
        pass
    if not message.retried and not message.failed:
        message.fail(f"{type(exception).__name__}: {exception}")
    if message.failed:
        message.options["traceback"] = "".join(traceback.format_exception(exception))[-_TRACEBACK_LIMIT:]


# --- the worker -------------------------------------------------------------------

class _Capacity:
    """How many messages this worker may hold: pool size plus a small buffer.

    ``reserved`` slots are promised to a fetch in progress; ``held`` ones carry
    a fetched message until it has run (or is handed back unstarted).
    ``settling`` counts messages that have run and wait for the broker to hear
    of it. Up to ``slack`` of those free their slots at once, so the next
    fetch overlaps the settling call instead of waiting for it; beyond that
    (a broker slow to take acks) they hold their slots, so a worker never
    holds more than ``size + slack`` messages. Held and settling messages
    both keep a worker busy.
    """

    def __init__(self, size, slack):
        self.size = size
        self.slack = slack
        self.held = 0
        self.reserved = 0
        self.settling = 0
        self.wants = []  # how many free slots each blocked reserve() waits for
        self.cond = threading.Condition()
        self.closed = False

    def _free(self):
        return self.size - self.held - self.reserved - max(0, self.settling - self.slack)

    def reserve(self, most, least=1):
        """Block until ``least`` slots are free (or ``most``, if fewer); promise up to ``most`` to a fetch; 0 once closed.

        ``least`` above 1 batches fetches while the pool is busy: the buffer
        still feeds the pool while the freed slots add up to one round trip's worth.
        """
        least = max(1, min(least, most))
        with self.cond:
            if self._free() < least and not self.closed:
                self.wants.append(least)
                try:
                    while self._free() < least and not self.closed:
                        self.cond.wait()
                finally:
                    self.wants.remove(least)
            if self.closed:
                return 0
            n = min(most, self._free())
            self.reserved += n
            return n

    def fill(self, reserved, fetched):
        """A fetch that was promised ``reserved`` slots brought ``fetched`` messages."""
        with self.cond:
            self.reserved -= reserved
            self.held += fetched
            if fetched < reserved:
                self.cond.notify_all()

    def finish(self, n):
        """``n`` held messages have run; their outcomes are on their way to the broker."""
        if n:
            with self.cond:
                self.held -= n
                self.settling += n
                if self.wants and self._free() >= min(self.wants):  # a fetch can go: no wake-up otherwise
                    self.cond.notify_all()

    def release(self, unstarted, finished):
        """The broker has been told about ``unstarted`` held messages and ``finished`` settling ones."""
        if unstarted or finished:
            with self.cond:
                self.held -= unstarted
                self.settling -= finished
                self.cond.notify_all()

    def busy(self):
        return self.held + self.settling

    def wait_idle(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.held or self.settling:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return False
                self.cond.wait(wait)
            return True

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


_STOP = object()

#: A settler that wakes to fewer outcomes than this while actors run waits for more ...
SETTLE_BATCH = 16
#: ... for at most this long (seconds): the most an ack is delayed to share a broker call.
SETTLE_LINGER = 0.005


class _QueueRunner:
    """One queue's consumer loop and settler, sharing the worker's capacity and pool."""

    def __init__(self, worker, queue_name):
        self.worker = worker
        self.queue_name = queue_name
        self.consumer = None
        self.inbox = queue_module.Queue()  # (verb, message) for the settler
        self.running = True
        self.fetcher = None
        self.settler = None

    def start(self):
        self.fetcher = concurrency.spawn(self._fetch_loop, name=f"greenq-consumer({self.queue_name})")
        self.settler = concurrency.spawn(self._settle_loop, name=f"greenq-settler({self.queue_name})")

    def _fetch_loop(self):
        worker = self.worker
        broker = worker.broker
        failures = 0
        busy = False  # did the last fetch fill what it asked for?
        while self.running:
            worker._unpaused.wait()
            if not self.running:
                break
            # A queue that came up short waits for its next message holding one
            # slot, not its share, so idle queues never starve a busy one.
            most = worker._share if busy else 1
            n = worker._capacity.reserve(most, worker._fetch_batch)
            if n == 0:
                break
            try:
                if self.consumer is None:
                    self.consumer = broker.consume(self.queue_name, prefetch=worker._capacity.size,
                                                   timeout=worker.worker_timeout)
                messages = self.consumer.fetch(n, worker.worker_timeout / 1000)
                failures = 0
            except Exception as e:
                worker._capacity.fill(n, 0)
                failures += 1
                delay = min(0.1 * 2 ** failures, 30)
                logger.error("Consumer of queue %r failed to fetch (%s: %s); retrying in %.1fs.",
                             self.queue_name, type(e).__name__, e, delay)
                self._pause(delay)
                continue
            worker._capacity.fill(n, len(messages))
            busy = len(messages) >= n
            if not self.running and messages:
                self.inbox.put(("requeue", messages, False))
                continue
            for message in messages:
                worker._dispatch(message, self)

    def _pause(self, seconds):
        """Back off after a failure, waking early if the worker stops."""
        self.worker.stopping.wait(seconds)

    def _settle_loop(self):
        """Send finished messages to the broker, as many per call as have piled up.

        When actors finish one by one (IO-bound jobs on a busy pool) the settler
        would wake for each and make one broker call per message. So a small
        batch waits up to ``SETTLE_LINGER`` seconds for more while other actors
        are still running: a few ms later to the broker, in one call instead of
        many. Their slots are freed before the wait (see ``_Capacity``), so it
        never holds up fetching; an idle worker or one that is stopping
        settles at once.
        """
        worker = self.worker
        while True:
            batch = self._collect(self.inbox.get())
            if len(batch) < SETTLE_BATCH and worker._running and _STOP not in batch and not worker.stopping.is_set():
                worker.stopping.wait(SETTLE_LINGER)  # stop() cuts it short
                batch += self._collect()
            by_verb = {"ack": [], "nack": [], "requeue": []}
            ran = dict.fromkeys(by_verb, 0)
            for entry in batch:
                if entry is _STOP:
                    continue
                verb, messages, finished = entry
                by_verb[verb].extend(messages)
                if finished:
                    ran[verb] += len(messages)
            for verb, messages in by_verb.items():
                if messages:
                    self._settle(verb, messages, ran[verb])
            if _STOP in batch:
                return

    def _collect(self, first=None):
        """``first`` and whatever else waits in the inbox, without blocking; frees the slots of those that ran.

        Freed here, a batch at a time, rather than by each pool greenlet as its
        actor returns: one lock per batch instead of one per message.
        """
        entries = [] if first is None else [first]
        while True:
            try:
                entries.append(self.inbox.get_nowait())
            except queue_module.Empty:
                break
        self.worker._capacity.finish(sum(1 for entry in entries if entry is not _STOP and entry[2]))
        return entries

    def _settle(self, verb, messages, ran):
        """Tell the broker; ``ran`` of ``messages`` have run (the rest are handed back unstarted)."""
        broker = self.worker.broker
        try:
            if verb != "requeue":
                broker.emit_before_each(verb, messages)
            getattr(self.consumer, verb)(messages)
            if verb != "requeue":
                broker.emit_after_each(verb, messages)
        except Exception:
            logger.exception("Could not %s %d message(s) on queue %r; the broker will redeliver them.",
                             verb, len(messages), self.queue_name)
        finally:
            self.worker._capacity.release(len(messages) - ran, ran)

    def post(self, verb, message, finished=False):
        """Queue ``message`` for the settler; ``finished`` once it has run (the settler frees its slot)."""
        self.inbox.put((verb, [message], finished))


class _FollowQueues(Middleware):
    """Lets a running worker consume queues declared after it started (tests often declare late)."""

    def __init__(self, worker):
        self.worker = worker

    def after_declare_queue(self, broker, queue_name):
        self.worker.add_queue(queue_name)


class Worker:
    """Runs actors for the messages on ``queues`` (default: every declared queue).

    ``worker_threads`` is the size of the pool: greenlets under gevent, OS
    threads otherwise. ``worker_timeout`` (ms) bounds each broker fetch, and so
    how quickly ``stop()`` is noticed by an idle consumer. ``prefetch_buffer``
    is how many messages it may hold beyond the pool (default a quarter of it):
    it fetches again once half the buffer is free, so with IO-bound jobs one
    fetch brings an eighth of the pool's worth (31 at ``-t 250``; fetching
    every 15, as an eighth-of-the-pool buffer did, cost ~10 us more per job).
    """

    def __init__(self, broker, *, queues=None, worker_threads=8, worker_timeout=1000, prefetch_buffer=None):
        if worker_threads < 1:
            raise ValueError(f"worker_threads must be >= 1, not {worker_threads}")
        self.broker = broker
        self.queues = set(queues) if queues else None
        self.worker_threads = worker_threads
        self.worker_timeout = worker_timeout
        buffer = prefetch_buffer if prefetch_buffer is not None else max(1, worker_threads // 4)
        self._fetch_batch = max(1, buffer // 2)  # fetch once half the buffer is free, not per finished job
        self._capacity = _Capacity(worker_threads + buffer, slack=buffer)
        self._share = self._capacity.size
        self._work = queue_module.PriorityQueue()
        self._seq = itertools.count()
        self._runners = {}
        self._runners_lock = threading.Lock()
        self._follower = None
        self._pool = []
        self._gates = []  # per-actor admission (max_concurrency): see _dispatch
        self._running = {}  # id(message) -> (message, runner), processed right now
        self._abandoned = set()  # ids of messages requeued by stop() while still running
        self._unpaused = threading.Event()
        self._unpaused.set()
        self.stopping = threading.Event()  # set as soon as stop() begins
        self._idle = threading.Event()  # set whenever a pool task finishes a message
        self._started = False

    # --- lifecycle -----------------------------------------------------------------

    def start(self):
        self.broker.emit_before("worker_boot", self)
        self._gates = [m.gate_for(self) for m in self.broker.middleware if hasattr(m, "gate_for")]
        names = sorted(self.queues or self.broker.get_declared_queues())
        for name in names:
            self.broker.declare_queue(name)
        self._share = max(1, self._capacity.size // max(1, len(names)))
        for name in names:
            runner = self._runners[name] = _QueueRunner(self, name)
            runner.start()
        self._follower = _FollowQueues(self)
        self.broker.add_middleware(self._follower)
        self._pool = [concurrency.spawn(self._pool_loop, name=f"greenq-worker-{i}")
                      for i in range(self.worker_threads)]
        self._started = True
        self.broker.emit_after("worker_boot", self)
        logger.debug("Worker started: %d %s on queues %s.", self.worker_threads, concurrency.mode_name(), names)

    def add_queue(self, queue_name):
        """Start consuming one more queue (e.g. one declared after start)."""
        with self._runners_lock:
            if self.stopping.is_set() or queue_name in self._runners:
                return
            if self.queues is not None and queue_name not in self.queues:
                return
            self.broker.declare_queue(queue_name)
            runner = self._runners[queue_name] = _QueueRunner(self, queue_name)
            self._share = max(1, self._capacity.size // len(self._runners))
        runner.start()

    def pause(self):
        """Stop fetching new messages; running and buffered ones go on."""
        self._unpaused.clear()

    def resume(self):
        self._unpaused.set()

    def join(self, timeout=None):
        """Wait until every message this worker fetched has run and been settled.

        Call after ``StubBroker.join(queue)`` in tests; ``timeout`` in ms.
        """
        from .errors import QueueJoinTimeout

        if not self._capacity.wait_idle(None if timeout is None else timeout / 1000):
            raise QueueJoinTimeout(f"worker still held {self._capacity.busy()} message(s) after {timeout} ms")

    def stop(self, timeout=600000):
        """Stop gracefully: no new fetches, finish running work for up to ``timeout`` ms, requeue the rest."""
        if not self._started or self.stopping.is_set():
            return
        self.broker.emit_before("worker_shutdown", self)
        with self._runners_lock:
            self.stopping.set()
        if self._follower is not None:
            self.broker.remove_middleware(self._follower)
        deadline = time.monotonic() + timeout / 1000
        for runner in self._runners.values():
            runner.running = False
        self._capacity.close()
        self._unpaused.set()
        for runner in self._runners.values():
            runner.fetcher.join(max(0.0, deadline - time.monotonic()) + self.worker_timeout / 1000)

        requeued = self._requeue_unstarted()
        finished = self._wait_for_running(deadline)
        if not finished:
            self._abandon_running()
        for _ in self._pool:
            self._work.put((float("-inf"), -1, _STOP, None))
        for runner in self._runners.values():
            runner.inbox.put(_STOP)
            runner.settler.join()
            if runner.consumer is not None:
                try:
                    runner.consumer.close()
                except Exception:
                    logger.exception("Closing the consumer of queue %r failed.", runner.queue_name)
        self.broker.emit_after("worker_shutdown", self)
        if requeued:
            logger.info("Returned %d fetched but unstarted message(s) to the broker.", requeued)

    def _requeue_unstarted(self):
        count = 0
        for gate in self._gates:  # messages still waiting for their actor's slot
            for message, runner in gate.drain():
                runner.post("requeue", message)
                count += 1
        while True:
            try:
                _, _, message, runner = self._work.get_nowait()
            except queue_module.Empty:
                return count
            if message is _STOP:
                continue
            self._release_gates(message)
            runner.post("requeue", message)
            count += 1

    def _wait_for_running(self, deadline):
        while self._running:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._idle.wait(left)
            self._idle.clear()
        return True

    def _abandon_running(self):
        """Past the shutdown timeout: hand running messages back and interrupt their actors."""
        for key, (message, runner) in list(self._running.items()):
            logger.warning("Message %s (%s) did not finish within the shutdown timeout; requeueing it.",
                           message.message_id, message.actor_name)
            self._abandoned.add(key)
            runner.post("requeue", message)
            message.interrupt(Shutdown)

    # --- admission -------------------------------------------------------------------

    def _dispatch(self, message, runner):
        """Queue a fetched message for the pool, unless a gate keeps it waiting for its actor's slot.

        A gate (a middleware's ``gate_for(worker)``, e.g. ``max_concurrency``)
        returns True from ``hold(message, runner)`` when it keeps the message;
        it later passes it to ``queue_work`` or settles it itself, and hands it
        back from ``drain()`` on stop. ``release(message)`` is called once the
        message has run (or is given back unstarted). A waiting message holds a
        capacity slot but no pool greenlet.
        """
        for gate in self._gates:
            if gate.hold(message, runner):
                return
        self.queue_work(message, runner)

    def queue_work(self, message, runner):
        self._work.put((-self.broker.priority_of(message), next(self._seq), message, runner))

    def _release_gates(self, message):
        for gate in self._gates:
            try:
                gate.release(message)
            except Exception:
                logger.exception("Releasing message %s from %r failed.", message.message_id, gate)

    # --- the pool --------------------------------------------------------------------

    def _pool_loop(self):
        while True:
            _, _, message, runner = self._work.get()
            if message is _STOP:
                return
            if self.stopping.is_set():  # stop() is draining: hand it back, do not start it
                self._release_gates(message)
                runner.post("requeue", message)
                continue
            key = id(message)
            self._running[key] = (message, runner)
            try:
                process_message(self.broker, message)
            except BaseException as e:  # an interrupt that landed outside the actor; keep the pool alive
                if not isinstance(e, (Exception, Interrupt)):
                    raise
                logger.exception("Unexpected error around message %s.", message.message_id)
            finally:
                self._release_gates(message)
                self._running.pop(key, None)
                if key in self._abandoned:
                    self._abandoned.discard(key)
                else:
                    self._settle(message, runner)
                self._idle.set()

    def _settle(self, message, runner):
        if message.returned:
            runner.post("requeue", message, finished=True)
        elif message.failed:
            message.options["failure"] = message.failure or "failed"
            message.options["failed_at"] = current_millis()
            _make_storable(message)
            runner.post("nack", message, finished=True)
        else:
            runner.post("ack", message, finished=True)


#: Failed messages nested deeper than this are dead-lettered without their arguments (see below).
MAX_STORED_DEPTH = 200


def _nesting_depth(value):
    """How deeply lists and dicts nest in ``value``, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, tuple)):
            children = item
        elif isinstance(item, Mapping):
            children = item.values()
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _make_storable(message):
    """Make sure a failed message can be written to the dead letters, or its nack would fail for ever.

    A payload nested close to the recursion limit decodes in the shallow fetch
    path but may not encode again in the nack, deeper in another thread's
    stack; whether it does depends on that depth, so a trial encode here cannot
    tell. Messages nested deeper than ``MAX_STORED_DEPTH`` levels, or that do
    not encode, are dead-lettered without their arguments and options; their
    id, actor and failure stay, and the failure says what was dropped. Costs a
    walk over the message and one encode per failure.
    """
    depth = _nesting_depth((message.args, dict(message.kwargs), message.options))
    if depth > MAX_STORED_DEPTH:
        reason = f"nested {depth} levels deep, more than the {MAX_STORED_DEPTH} kept in dead letters"
    else:
        try:
            message.to_message().encode()
            return
        except EncodeError as e:
            reason = str(e)
    logger.error("Message %s cannot be stored as it came (%s); dead-lettering it without its arguments.",
                 message.message_id, reason)
    kept = {key: message.options[key] for key in ("failed_at", "traceback") if key in message.options}
    kept["failure"] = f"{message.options['failure']} (arguments and options dropped: {reason[:500]})"
    message.message = message.message.copy(args=(), kwargs={}, options={})
    message.options = kept
