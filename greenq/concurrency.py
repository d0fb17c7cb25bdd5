"""The one place that knows whether greenq runs on greenlets or OS threads.

``greenq-gevent`` monkeypatches the standard library before anything else is
imported. After that, ``threading``, ``queue`` and ``time.sleep`` are already
cooperative, so the rest of greenq uses them as usual and never asks which mode it
is in. What patching cannot hide is listed here:

* spawning a unit of work and interrupting it from outside (a greenlet is killed
  with ``throw``; an OS thread only through CPython's async-exception call, which
  fires at the next bytecode and cannot break a blocking system call);
* timers that fire without a thread each (one heap of deadlines behind a single
  loop timer per hub; under threads, the same heap on one shared timer thread);
* real OS threads for watchdogs and heartbeats, which must keep running while a
  greenlet hogs the hub.
"""

import heapq
import itertools
import logging
import os
import threading
import time

try:  # gevent is a dependency, but the threaded mode must not need it to be importable.
    import gevent
    import gevent.monkey
    import gevent.resolver.blocking  # here, not in an OS thread: imports across threads can deadlock under gevent
except ImportError:  # pragma: no cover
    gevent = None


_patched = False


def using_gevent() -> bool:
    """True when the threading module has been monkeypatched by gevent (which cannot be undone)."""
    global _patched
    if not _patched:
        _patched = gevent is not None and gevent.monkey.is_module_patched("threading")
    return _patched


def mode_name() -> str:
    return "greenlets" if using_gevent() else "threads"


class Task:
    """A spawned unit of work: a greenlet under gevent, an OS thread otherwise."""

    def __init__(self, target, args, name):
        self.name = name
        self._target = target
        self._args = args
        self._done = threading.Event()
        self.ident = None
        if using_gevent():
            self._impl = gevent.spawn(self._run)
            self._impl.name = name
        else:
            self._impl = threading.Thread(target=self._run, name=name, daemon=True)
            self._impl.start()

    def _run(self):
        self.ident = current()
        try:
            self._target(*self._args)
        finally:
            self._done.set()

    def join(self, timeout=None) -> bool:
        """Wait for the task to end; return whether it has."""
        return self._done.wait(timeout)

    def is_alive(self) -> bool:
        return not self._done.is_set()

    def kill(self, exception_type):
        """Raise ``exception_type`` inside the task at its next switch (or bytecode)."""
        if self.ident is not None and self.is_alive():
            raise_in(self.ident, exception_type, guard=self.is_alive)


def spawn(target, *args, name="greenq") -> Task:
    return Task(target, args, name)


def current():
    """A handle on the running greenlet or thread, for ``raise_in``."""
    if using_gevent():
        return gevent.getcurrent()
    return threading.get_ident()


def raise_in(handle, exception_type, guard=None):
    """Deliver ``exception_type`` into the greenlet or thread behind ``handle``.

    ``guard()`` is checked at the moment of delivery; if it returns False the
    exception is dropped (the target has moved on). Under gevent this must be
    called from the hub's thread (a timer callback or another greenlet); the
    exception lands the next time the target switches, and a greenlet spinning
    on the CPU never gets it, which is what the TimeLimit watchdog is for.
    """
    if using_gevent():
        if handle is gevent.getcurrent():
            raise exception_type()
        # Delivered from the hub's callback queue, where the guard and the throw
        # run back to back with the target suspended: nothing can move in between.
        gevent.get_hub().loop.run_callback(_throw_if_alive, handle, exception_type, guard)
    else:
        if guard is not None and not guard():
            return
        import ctypes  # only threads need it: a gevent worker never loads it

        result = ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(handle), ctypes.py_object(exception_type)
        )
        if result > 1:  # pragma: no cover - would corrupt the target thread's state
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(handle), None)


def _throw_if_alive(glet, exception_type, guard):
    if not glet.dead and (guard is None or guard()):
        glet.throw(exception_type)


class _TimerHeap:
    """Timer entries ``[deadline, seq, callback, args, live]`` in one heap.

    Cancelling only marks an entry dead: it leaves the heap when it reaches the
    top. A time limit of 30 minutes cancelled a millisecond after it was set
    would otherwise sit there for 30 minutes, so the heap is rebuilt from its
    live entries whenever the dead ones outnumber them.
    """

    __slots__ = ("heap", "live", "_counter")

    def __init__(self):
        self.heap = []
        self.live = 0
        self._counter = itertools.count()

    def push(self, delay, callback, args):
        entry = [time.monotonic() + delay, next(self._counter), callback, args, True]
        heapq.heappush(self.heap, entry)
        self.live += 1
        return entry

    def cancel(self, entry):
        if entry[4]:
            entry[4] = False
            entry[2] = entry[3] = None  # a dead entry must not keep its message (its args) alive
            self.live -= 1
            if len(self.heap) > 1024 and len(self.heap) > 2 * self.live:
                self.heap = [e for e in self.heap if e[4]]
                heapq.heapify(self.heap)

    def pop_due(self, now):
        """Take out the live entries due by ``now`` (and the dead ones on top)."""
        heap, due = self.heap, []
        while heap and (heap[0][0] <= now or not heap[0][4]):
            entry = heapq.heappop(heap)
            if entry[4]:
                entry[4] = False
                self.live -= 1
                due.append(entry)
        return due

    def next_deadline(self):
        return self.heap[0][0] if self.heap else None


def _fire(entries):
    for entry in entries:
        try:
            entry[2](*entry[3])
        except Exception:  # one callback's bug must not stop the others
            logging.getLogger("greenq.concurrency").exception("A timer callback failed.")


class _TimerThread:
    """Threaded mode: one OS thread serves every timer from the heap."""

    def __init__(self):
        self._timers = _TimerHeap()
        self._cond = threading.Condition()
        self._thread = None

    def schedule(self, delay, callback, args):
        with self._cond:
            entry = self._timers.push(delay, callback, args)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="greenq-timers", daemon=True)
                self._thread.start()
            if self._timers.heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry):
        with self._cond:
            self._timers.cancel(entry)

    def _loop(self):
        while True:
            with self._cond:
                due = self._timers.pop_due(time.monotonic())
                if not due:
                    deadline = self._timers.next_deadline()
                    self._cond.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                    continue
            _fire(due)


class _HubTimers:
    """Under gevent: every timer of one hub in the heap, behind one loop timer armed for the earliest.

    A loop timer per message costs more than the message's own work in a no-op
    job; pushing on a heap costs a fraction of it. The loop timer is unreferenced,
    so timers alone (a cancelled time limit in particular) never keep a hub alive.
    """

    def __init__(self, hub):
        self._loop = hub.loop
        self._timers = _TimerHeap()
        self._watcher = None
        self._armed = None  # the deadline the loop timer is set for

    def schedule(self, delay, callback, args):
        entry = self._timers.push(delay, callback, args)
        if self._armed is None or entry[0] < self._armed:
            self._arm(entry[0])
        return entry

    def cancel(self, entry):
        self._timers.cancel(entry)  # the loop timer stays: when it fires with nothing due it re-arms

    def _arm(self, deadline):
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
        self._armed = deadline
        self._watcher = self._loop.timer(max(0.0, deadline - time.monotonic()), ref=False)
        self._watcher.start(self._on_timer)

    def _on_timer(self):
        self._watcher.close()
        self._watcher = self._armed = None
        _fire(self._timers.pop_due(time.monotonic()))
        deadline = self._timers.next_deadline()
        # A callback may have armed the loop timer already, possibly for a later deadline.
        if deadline is not None and (self._armed is None or deadline < self._armed):
            self._arm(deadline)


_timer_thread = _TimerThread()
_hub_timers = {}  # hub -> _HubTimers


def _timers_of_this_hub():
    hub = gevent.get_hub()
    timers = _hub_timers.get(hub)
    if timers is None:
        timers = _hub_timers[hub] = _HubTimers(hub)
    return timers


def _forget_hubs():
    """A forked child starts a fresh loop: the parent's timers are not its own."""
    _hub_timers.clear()


os.register_at_fork(after_in_child=_forget_hubs)


class Timer:
    """Calls ``callback(*args)`` once after ``delay`` seconds unless cancelled.

    Under gevent the callback runs in the hub (so it must not block), from one
    heap per hub; under threads, on the shared timer thread.
    """

    __slots__ = ("_owner", "_entry")

    def __init__(self, delay, callback, *args):
        self._owner = _timers_of_this_hub() if using_gevent() else _timer_thread
        self._entry = self._owner.schedule(max(delay, 0), callback, args)

    def cancel(self):
        self._owner.cancel(self._entry)


def start_os_thread(target, *args, name="greenq-os-thread"):
    """Run ``target`` on a real OS thread, even when threading is monkeypatched.

    For watchdogs and heartbeats that must keep time while a greenlet blocks the
    hub. The target must not touch greenlets, gevent events or objects shared
    with the hub's thread other than plain reads and atomic writes.
    """
    if using_gevent():
        start_new_thread = gevent.monkey.get_original("_thread", "start_new_thread")
        return start_new_thread(target, args)
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread.ident


def resolve_names_in_this_thread():
    """On an OS thread of greenq's own that opens (patched) sockets: look host names up on it.

    gevent's default resolver hands each lookup to a pool of native threads
    belonging to the calling thread's hub: one more thread, and its memory, for
    every OS thread that connects anywhere. A heartbeat thread exists to block
    without holding anyone up, so it can just as well block in the lookup.
    """
    if using_gevent():
        gevent.get_hub().resolver = gevent.resolver.blocking.Resolver()


def os_sleep(seconds):
    """Sleep on a real OS thread (``time.sleep`` may be patched into a hub switch)."""
    if using_gevent():
        gevent.monkey.get_original("time", "sleep")(seconds)
    else:
        time.sleep(seconds)


def original(module_name, attribute):
    """The standard library's own ``module_name.attribute``, even under monkeypatching.

    The process supervisor uses the unpatched ``select.poll`` and ``os.waitpid``
    so the master process never starts a gevent hub: its children are forked
    from a process with no event loop to inherit.
    """
    if using_gevent():
        return gevent.monkey.get_original(module_name, attribute)
    import importlib

    return getattr(importlib.import_module(module_name), attribute)


def fork():
    """``os.fork`` that leaves the child ready to run gevent (a fresh hub, a reset loop).

    Under gevent this skips the child watcher that the patched ``os.fork``
    installs, which would start a hub in the parent; the supervisor reaps its
    children itself with ``original("os", "waitpid")``.
    """
    if using_gevent():
        import gevent.os

        return gevent.os.fork_gevent()
    import os

    return os.fork()


def on_signal(signum, callback):
    """Call ``callback()`` when the process receives ``signum``.

    Under gevent the callback runs in the hub (``gevent.signal_handler``), so
    it may set events and spawn greenlets; under threads it runs in the main
    thread between bytecodes. Either way it must return quickly.
    """
    if using_gevent():
        return gevent.signal_handler(signum, callback)
    import signal

    return signal.signal(signum, lambda _signum, _frame: callback())


def current_name():
    """A name for the running greenlet or thread, for log records."""
    if using_gevent():
        glet = gevent.getcurrent()
        name = getattr(glet, "name", None)
        if isinstance(glet, gevent.Greenlet) and name:
            return name
        if glet.parent is None:  # the main greenlet of the main thread
            return threading.main_thread().name
        return name or "Greenlet"
    return threading.current_thread().name


def hub_blocked_monitor(threshold, report):
    """Report when one greenlet keeps the hub busy for longer than ``threshold`` seconds.

    ``report(seconds, frame)`` is called from a real OS thread, while the
    offender is still running; ``frame`` is the hub thread's current frame (or
    None), so the reporter can walk it to the actor and message the blocked
    greenlet holds. Costs one loop timer every ``threshold / 4`` seconds and
    one sleeping OS thread. Returns a callable that stops the monitor. Does
    nothing under threads, where one busy thread does not stall the others.
    """
    if not using_gevent():
        return lambda: None
    import sys

    hub = gevent.get_hub()
    hub_thread = gevent.monkey.get_original("_thread", "get_ident")()
    state = {"beat": time.monotonic(), "reported": False, "running": True}

    def tick():
        state["beat"] = time.monotonic()
        state["reported"] = False

    timer = hub.loop.timer(threshold / 4, threshold / 4)
    timer.start(tick)

    def watch():
        while state["running"]:
            os_sleep(threshold / 4)
            stalled = time.monotonic() - state["beat"]
            if stalled > threshold and not state["reported"] and state["running"]:
                state["reported"] = True
                try:
                    report(stalled, sys._current_frames().get(hub_thread))
                except Exception:  # a reporter bug must not end the watch
                    logging.getLogger("greenq.concurrency").exception("The hub monitor's report failed.")

    start_os_thread(watch, name="greenq-hub-monitor")

    def stop():
        state["running"] = False
        timer.stop()

    return stop
