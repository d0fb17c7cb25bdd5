"""The master process: fork the workers, relay their logs, replace the ones that die.

One thread, one ``poll`` loop over every worker's log pipe and control pipe
plus a self-pipe for signals. The master never imports the user's code and
never starts a gevent hub (it uses the unpatched ``poll`` and ``waitpid``), so
what it forks is clean, and a reload really loads the code again.

Each of the ``-p`` slots holds a current worker. A reload (HUP, ``--watch``,
or a worker reaching ``--max-tasks-per-child``) forks a replacement for the
slot and, only when the replacement reports ready, sends the old one TERM so it
drains: capacity never drops to zero, at the cost of briefly running two
processes per slot. A replacement that fails to boot (say the new code does
not import) is logged and the old worker keeps serving.

Exit codes: 0 graceful, 1 killed (a second TERM/INT, or workers that would not
stop), 2 and 3 when the first workers cannot import the app or reach the
broker, 4 (from ``main``) when the pid file is held.
"""

import errno
import logging
import os
import signal
import time

import greenq

from .. import concurrency
from . import logs, pidfile, prometheus_setup, worker_process

logger = logging.getLogger("greenq.MainProcess")

EXIT_OK, EXIT_KILLED = 0, 1

#: A worker that dies sooner than this after its start is "crash looping":
#: the next start of its slot waits, doubling up to RESTART_DELAY_MAX.
QUICK_DEATH = 2.0
RESTART_DELAY_MAX = 10.0

#: After TERM, workers get the shutdown timeout plus this long before SIGKILL.
STOP_GRACE = 30.0


class Child:
    """One forked worker process as the master sees it."""

    def __init__(self, slot, pid, log_fd, ctl_fd, reason):
        self.slot = slot
        self.pid = pid
        self.log_fd = log_fd
        self.ctl_fd = ctl_fd
        self.reason = reason  # why it was started: "start", "reload", "restart", "recycle"
        self.started = time.monotonic()
        self.ready = False
        self.draining = False  # sent TERM on purpose
        self.fatal = None  # (code, message) the child reported before exiting
        self.recycle = None
        self.status = None  # waitpid status once reaped
        self.log = logs.LineBuffer()
        self.ctl = logs.LineBuffer()

    @property
    def index(self):
        return self.slot.index

    def describe(self):
        return f"worker process {self.index} (pid {self.pid})"


class Slot:
    def __init__(self, index):
        self.index = index
        self.current = None
        self.replacement = None
        self.restart_at = None
        self.delay = 0.0
        self.restart_reason = None


class Supervisor:
    def __init__(self, options, output, metrics=None):
        self.options = options
        self.output = output
        self.metrics = metrics  # prometheus_setup.MultiprocDir, or None
        self.slots = [Slot(i) for i in range(options.processes)]
        self.children = {}  # pid -> Child, until reaped
        self.fds = {}  # fd -> (child, "log" | "ctl")
        self.signals = []
        self.stopping = False
        self.killing = False
        self.stop_deadline = None
        self.exit_code = EXIT_OK
        self.booted = False
        self.watch_state = None
        self._poll = concurrency.original("select", "poll")()
        self._waitpid = concurrency.original("os", "waitpid")
        self._wake_r = self._wake_w = None

    # --- running ------------------------------------------------------------------------

    def run(self):
        self._install_signals()
        mode = concurrency.mode_name()
        logger.info("greenq %r is booting up.", greenq.__version__)
        logger.info("Starting %d worker process(es) with %d %s each; modules: %s.", self.options.processes,
                    self.options.threads, mode, " ".join(self.options.modules))
        if self.options.watch:
            self.watch_state = _snapshot(self.options.watch)
            logger.info("Watching %s for code changes.", ", ".join(self.options.watch))
        for slot in self.slots:
            slot.current = self._spawn(slot, "start")
        try:
            while self.children or not self.stopping:
                self._step()
        finally:
            self._restore_signals()
        logger.info("All worker processes have stopped; exiting with code %d.", self.exit_code)
        return self.exit_code

    def _step(self):
        timeout = self._next_timeout()
        try:
            events = self._poll.poll(None if timeout is None else int(timeout * 1000))
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            events = []
        for fd, _ in events:
            if fd == self._wake_r:
                self._drain_wakeups()
            else:
                self._read(fd)
        self._handle_signals()
        self._reap()
        self._restart_due_slots()
        self._check_watch()
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            logger.error("Worker processes did not stop within the shutdown timeout; killing them.")
            self._kill_all()

    def _next_timeout(self):
        timeouts = [1.0]
        if any(c.log_fd is None and c.ctl_fd is None for c in self.children.values()):
            timeouts.append(0.05)  # pipes closed, waiting for the kernel to make it reapable
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None:
                timeouts.append(max(0.0, slot.restart_at - now))
        if self.stop_deadline is not None:
            timeouts.append(max(0.0, self.stop_deadline - now))
        return min(timeouts)

    # --- forking --------------------------------------------------------------------------

    def _spawn(self, slot, reason):
        log_r, log_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        inherited = [fd for fd in self.fds] + [log_r, ctl_r, self._wake_r, self._wake_w]
        inherited += self.output.fds()
        master_pid = os.getpid()
        pid = concurrency.fork()
        if pid == 0:
            worker_process.run(slot.index, self.options, log_w, ctl_w, inherited, master_pid)
        os.close(log_w)
        os.close(ctl_w)
        child = Child(slot, pid, log_r, ctl_r, reason)
        for fd, kind in ((log_r, "log"), (ctl_r, "ctl")):
            os.set_blocking(fd, False)
            self.fds[fd] = (child, kind)
            self._poll.register(fd, _POLL_IN)
        self.children[pid] = child
        logger.debug("Forked %s (%s).", child.describe(), reason)
        return child

    # --- pipes --------------------------------------------------------------------------------

    def _read(self, fd):
        child, kind = self.fds[fd]
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                data = b""
            if not data:
                self._close_fd(child, kind)
                return
            if kind == "log":
                self.output.write(child.log.feed(data))
            else:
                for line in child.ctl.feed(data).splitlines():
                    self._control(child, line.decode("utf-8", "replace"))
            if len(data) < 65536:
                return

    def _close_fd(self, child, kind):
        fd = child.log_fd if kind == "log" else child.ctl_fd
        if fd is None:
            return
        self._poll.unregister(fd)
        os.close(fd)
        del self.fds[fd]
        if kind == "log":
            self.output.write(child.log.flush())
            child.log_fd = None
        else:
            rest = child.ctl.flush().strip()
            if rest:
                self._control(child, rest.decode("utf-8", "replace"))
            child.ctl_fd = None

    def _drain_child(self, child):
        for kind in ("log", "ctl"):
            fd = child.log_fd if kind == "log" else child.ctl_fd
            if fd is not None:
                self._read(fd)
                self._close_fd(child, kind)

    def _control(self, child, line):
        verb, _, rest = line.partition(" ")
        if verb == "ready":
            child.ready = True
            self._on_ready(child)
        elif verb == "fatal":
            code, _, message = rest.partition(" ")
            child.fatal = (int(code) if code.isdigit() else EXIT_KILLED, message)
        elif verb == "recycle":
            child.recycle = rest
            slot = child.slot
            if slot.current is child and slot.replacement is None and not self.stopping:
                logger.info("Recycling %s: it %s.", child.describe(), rest)
                slot.replacement = self._spawn(slot, "recycle")
        else:
            logger.warning("Unknown control line from %s: %r", child.describe(), line)

    def _on_ready(self, child):
        slot = child.slot
        if self.stopping:
            self._terminate(child)
            return
        if slot.replacement is child:
            old = slot.current
            slot.current, slot.replacement = child, None
            if old is not None and old.status is None:
                logger.info("Worker process %d (pid %d) replaced by pid %d; draining the old one.",
                            slot.index, old.pid, child.pid)
                self._terminate(old)
        if not self.booted and all(s.current is not None and s.current.ready for s in self.slots):
            self.booted = True

    # --- reaping and replacing ------------------------------------------------------------------

    def _reap(self):
        for pid, child in list(self.children.items()):
            try:
                waited, status = self._waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited, status = pid, 0
            if waited == 0:
                continue
            child.status = status
            del self.children[pid]
            if self.metrics is not None:
                self.metrics.process_dead(pid)
            self._drain_child(child)
            self._on_exit(child)

    def _on_exit(self, child):
        slot = child.slot
        how = _describe_status(child.status)
        if slot.current is child:
            slot.current = None
        if slot.replacement is child:
            slot.replacement = None
        expected = child.draining or self.stopping
        if expected:
            code = os.waitstatus_to_exitcode(child.status)
            clean = code == 0 or (code == -signal.SIGTERM and not child.ready)  # TERM before it booted
            if child.fatal is not None:
                level = logging.DEBUG
            else:
                level = logging.INFO if clean else logging.WARNING
            outcome = "stopped" if code == 0 else "stopped during start-up" if clean else how
            logger.log(level, "%s %s.", _cap(child.describe()), outcome)
            if self.stopping and not clean and self.exit_code == EXIT_OK:
                self.exit_code = EXIT_KILLED
            return
        if child.recycle is not None and os.waitstatus_to_exitcode(child.status) == 0:
            logger.info("%s retired (%s).", _cap(child.describe()), child.recycle)
            if slot.current is None and slot.replacement is None:
                slot.restart_at = time.monotonic()
            return
        if child.fatal is not None and not self.booted and child.reason == "start":
            code, message = child.fatal
            logger.critical("%s", message)
            self._fail(code, message)
            return
        if child.reason in ("reload", "recycle") and not child.ready:
            message = child.fatal[1] if child.fatal else how
            if slot.current is not None:
                logger.error("The replacement for worker process %d failed to start (%s); the old one keeps "
                             "running.", slot.index, message)
                return
            logger.error("The replacement for worker process %d failed to start (%s).", slot.index, message)
        reason = child.fatal[1] if child.fatal else how
        lived = time.monotonic() - child.started
        if lived < QUICK_DEATH:
            slot.delay = min(RESTART_DELAY_MAX, max(0.5, slot.delay * 2))
        else:
            slot.delay = 0.0
        logger.warning("%s %s; starting a new one%s.", _cap(child.describe()), reason,
                       f" in {slot.delay:.1f} s" if slot.delay else "")
        if slot.current is None:
            slot.restart_at = time.monotonic() + slot.delay

    def _restart_due_slots(self):
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                if slot.current is None:
                    if slot.replacement is not None:
                        slot.current, slot.replacement = slot.replacement, None
                    else:
                        slot.current = self._spawn(slot, "restart")

    # --- reload ----------------------------------------------------------------------------------

    def reload(self, why):
        if self.stopping:
            return
        logger.info("Reloading (%s): starting fresh worker processes; each old one drains once its "
                    "replacement is ready.", why)
        for slot in self.slots:
            if slot.replacement is not None:  # a reload already under way: the newer code wins
                self._terminate(slot.replacement)
                slot.replacement = None
            if slot.current is None:
                slot.restart_at = time.monotonic()
            else:
                slot.replacement = self._spawn(slot, "reload")

    def _check_watch(self):
        if self.watch_state is None or self.stopping:
            return
        now = time.monotonic()
        if now < getattr(self, "_next_watch", 0.0):
            return
        self._next_watch = now + 1.0
        snapshot = _snapshot(self.options.watch)
        if snapshot != self.watch_state:
            changed = sorted(set(snapshot.items()) ^ set(self.watch_state.items()))
            self.watch_state = snapshot
            self.reload(f"{changed[0][0]} changed" if changed else "code changed")

    # --- stopping -----------------------------------------------------------------------------------

    def _terminate(self, child):
        child.draining = True
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def stop(self, why):
        if self.stopping:
            return
        self.stopping = True
        for slot in self.slots:
            slot.restart_at = None
        if self.exit_code == EXIT_OK:
            logger.info("Stopping (%s): worker processes finish their in-flight work, for up to %d ms.",
                        why, self.options.shutdown_timeout)
        else:
            logger.info("Stopping (%s).", why)
        for child in self.children.values():
            self._terminate(child)
        self.stop_deadline = time.monotonic() + self.options.shutdown_timeout / 1000 + STOP_GRACE

    def _fail(self, code, message):
        self.exit_code = code
        self.stop("a worker process could not start")

    def _kill_all(self):
        self.killing = True
        self.exit_code = EXIT_KILLED
        self.stop_deadline = None
        for child in self.children.values():
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- signals ------------------------------------------------------------------------------------

    def _install_signals(self):
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poll.register(self._wake_r, _POLL_IN)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w)
        self._old_handlers = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signals(self):
        signal.set_wakeup_fd(self._old_wakeup)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _on_signal(self, signum, frame):
        self.signals.append(signum)

    def _drain_wakeups(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self):
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                self.reload("SIGHUP")
            elif not self.stopping:
                self.stop(f"{name} received")
            elif not self.killing:
                logger.warning("Second %s: killing the worker processes now.", name)
                self._kill_all()


_POLL_IN = 0x001 | 0x008 | 0x010  # POLLIN | POLLERR | POLLHUP, as select defines them


def _describe_status(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _cap(text):
    return text[:1].upper() + text[1:]


def _snapshot(directories):
    """``{path: (mtime, size)}`` of the Python files under ``directories``."""
    state = {}
    for directory in directories:
        for root, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    try:
                        stat = os.stat(path)
                        state[path] = (stat.st_mtime_ns, stat.st_size)
                    except FileNotFoundError:
                        pass
    return state


def serve(options):
    """Run the master until it stops; return the exit code."""
    output = logs.Output(options.log_file)
    logs.configure(output.stream(), options.verbose)
    held = None
    try:
        if options.pid_file:
            try:
                held = pidfile.acquire(options.pid_file)
            except pidfile.PidFileHeld as e:
                logger.critical("%s", e)
                return 4
        metrics = prometheus_setup.prepare()
        try:
            return Supervisor(options, output, metrics).run()
        finally:
            if metrics is not None:
                metrics.cleanup()
    finally:
        if held:
            pidfile.release(held)
