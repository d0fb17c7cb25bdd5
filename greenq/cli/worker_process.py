"""What runs in a forked worker process, from the fork to ``os._exit``.

The master forks before importing the user's code, so each worker imports it
afresh (that is what makes HUP a real reload). The child then boots the
broker, checks it answers, starts a ``Worker`` and tells the master over its
control pipe that it is ready. TERM starts a graceful stop; INT and HUP are
ignored, because a terminal sends them to the whole process group and the
master alone decides what they mean.

Control lines to the master (one ``os.write`` each, so they are atomic)::

    ready
    fatal <exit code> <one-line reason>
    recycle <reason>
"""

import logging
import os
import select
import signal
import sys
import threading

from .. import concurrency
from ..errors import ConnectionError as BrokerConnectionError
from ..worker import Worker, call_actor
from . import imports, logs
from .recycle import Recycle

EXIT_OK, EXIT_KILLED, EXIT_USAGE, EXIT_BROKER = 0, 1, 2, 3


class _Control:
    def __init__(self, fd):
        self.fd = fd

    def send(self, *words):
        line = " ".join(str(w) for w in words).replace("\n", " ") + "\n"
        try:
            os.write(self.fd, line.encode("utf-8", "replace"))
        except OSError:  # the master is gone; nothing to tell
            pass


def _exit(code):
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _prepare_process(log_fd, close_fds):
    """Undo what the child inherited from the master: its signals, its fds."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    lock = threading.Lock()
    sys.stdout = logs.LineStream(1, lock)
    sys.stderr = logs.LineStream(2, lock)


def run(index, options, log_fd, ctl_fd, close_fds, master_pid):
    """The worker process's whole life. Never returns."""
    control = _Control(ctl_fd)
    try:
        code = _run(index, options, log_fd, control, close_fds, master_pid)
    except BaseException:  # the last resort of a forked child: report, never return into the master's code
        try:
            logging.getLogger(f"greenq.WorkerProcess({index})").exception("Worker process crashed.")
        finally:
            code = EXIT_KILLED
    _exit(code)


def _run(index, options, log_fd, control, close_fds, master_pid):
    _prepare_process(log_fd, close_fds)
    logs.configure(sys.stderr, options.verbose)
    logger = logging.getLogger(f"greenq.WorkerProcess({index})")

    try:
        broker = imports.load(options.modules, options.paths)
    except imports.AppImportError as e:
        control.send("fatal", EXIT_USAGE, e)
        return EXIT_USAGE
    except BrokerConnectionError as e:  # the app's module reached for the broker as it was imported
        control.send("fatal", EXIT_BROKER, f"cannot reach the broker: {e}")
        return EXIT_BROKER
    if options.quiet_messages:
        for actor in broker.actors.values():
            actor.logger.setLevel(logging.WARNING)

    broker.emit_after("process_boot")
    try:
        broker.ping()
    except BrokerConnectionError as e:
        control.send("fatal", EXIT_BROKER, f"cannot reach the broker: {e}")
        return EXIT_BROKER
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def request_stop():
        try:
            os.write(wake_w, b"x")
        except BlockingIOError:
            pass

    if options.max_tasks_per_child or options.max_memory_per_child:
        def retire(reason):
            control.send("recycle", reason)
            request_stop()

        broker.add_middleware(Recycle(retire, max_tasks=options.max_tasks_per_child,
                                      max_memory_kib=options.max_memory_per_child))

    concurrency.on_signal(signal.SIGTERM, request_stop)

    worker = Worker(broker, queues=options.queues or None, worker_threads=options.threads,
                    worker_timeout=options.worker_timeout)
    try:
        worker.start()
    except BrokerConnectionError as e:
        control.send("fatal", EXIT_BROKER, f"cannot reach the broker: {e}")
        return EXIT_BROKER
    stop_monitor = lambda: None  # noqa: E731
    if options.hub_block_threshold and concurrency.using_gevent():
        stop_monitor = concurrency.hub_blocked_monitor(options.hub_block_threshold, _BlockReporter(index))

    logger.info("Worker process is ready for action.")
    control.send("ready")

    while True:  # wait for TERM, or for the master to vanish
        readable, _, _ = select.select([wake_r], [], [], 1.0)
        if readable:
            break
        if os.getppid() != master_pid:
            logger.warning("The master process is gone; stopping.")
            break

    logger.debug("Stopping: finishing in-flight work for up to %d ms.", options.shutdown_timeout)
    stop_monitor()
    worker.stop(timeout=options.shutdown_timeout)
    broker.emit_before("process_stop")
    try:
        broker.close()
    except Exception:
        logger.exception("Closing the broker failed.")
    logger.debug("Worker process stopped.")
    return EXIT_OK


class _BlockReporter:
    """Names the actor, message and line behind a blocked hub. Called on an OS thread."""

    def __init__(self, index):
        self.logger_name = f"greenq.WorkerProcess({index})"

    def __call__(self, seconds, frame):
        where, actor_name, message_id = None, None, None
        inner = frame
        while frame is not None:
            if where is None and frame.f_code.co_filename != __file__:
                where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            if frame.f_code is call_actor.__code__:
                message = frame.f_locals.get("message")
                actor_name = getattr(message, "actor_name", None)
                message_id = getattr(message, "message_id", None)
                break
            frame = frame.f_back
        if inner is None:
            where = "an unknown place"
        if actor_name is not None:
            what = f"actor {actor_name!r} (message {message_id})"
        else:
            what = "code outside any actor"
        logs.write_raw(self.logger_name, "WARNING",
                       f"A greenlet has blocked the gevent hub for {seconds:.2f} s: {what}, at {where}. "
                       "Nothing else in this process runs until it yields: make the call cooperative "
                       "(patched IO, gevent.sleep(0) in loops) or run it in a thread pool.",
                       "greenq-hub-monitor")
