"""Log format, and the pipes that carry every worker's output to the master.

Every line has the user guide's shape::

    [2017-11-19 13:03:48,188] [PID 22370] [MainThread] [greenq.MainProcess] [INFO] greenq '0.1.0' is booting up.

Each worker process writes its records (and anything an actor prints) to its
own pipe; the master reads whole lines from every pipe and writes each line to
stderr or the ``--log-file`` in one call. Two processes can therefore never
interleave mid-line, however long the line, at the cost of one extra copy per
line in the master.
"""

import io
import logging
import os
import sys
import time

from .. import concurrency

FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"

#: A worker's partial line is passed on once it grows past this, so one endless
#: line (a progress bar without newlines) cannot grow the master's memory.
MAX_LINE = 64 * 1024


class _TaskNameFilter(logging.Filter):
    """Name the greenlet in the ``[thread]`` field (``greenq-worker-12``), not ``Dummy-3``."""

    def filter(self, record):
        record.threadName = concurrency.current_name()
        return True


def configure(stream, verbose=False):
    """Send the root logger's records to ``stream`` in the greenq format; return the handler."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_TaskNameFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


def raw_line(logger_name, level, message, thread):
    """One formatted line, for code that must not take logging's locks (OS threads under gevent)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    return f"[{stamp}] [PID {os.getpid()}] [{thread}] [{logger_name}] [{level}] {message}\n"


def write_raw(logger_name, level, message, thread):
    """Write one line straight to fd 2 (the worker's pipe) with a single ``os.write``."""
    os.write(2, raw_line(logger_name, level, message, thread).encode("utf-8", "replace"))


class LineStream(io.TextIOBase):
    """A worker's ``sys.stdout`` / ``sys.stderr``: whole lines, one ``os.write`` each.

    ``print()`` writes its text and its newline separately, so two threads or
    greenlets printing at once would otherwise mix within a line. Each one's
    partial line waits in its own buffer until its newline arrives; a lock
    shared by both streams keeps one line's write from splitting another's.
    """

    def __init__(self, fd, lock):
        super().__init__()
        self._fd = fd
        self._lock = lock
        self._partial = {}

    @property
    def encoding(self):
        return "utf-8"

    def writable(self):
        return True

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def write(self, text):
        key = concurrency.current()
        data = self._partial.pop(key, "") + text
        cut = data.rfind("\n") + 1
        if len(data) - cut > MAX_LINE:
            cut = len(data)
        if cut:
            self._write(data[:cut])
        if cut < len(data):
            self._partial[key] = data[cut:]
        return len(text)

    def flush(self):
        """Complete every pending partial line (called at exit)."""
        pending, self._partial = self._partial, {}
        for rest in pending.values():
            self._write(rest + "\n")

    def _write(self, text):
        data = text.encode("utf-8", "replace")
        with self._lock:
            while data:
                data = data[os.write(self._fd, data):]


class LineBuffer:
    """Turns a worker's byte stream into whole lines for the master to write."""

    def __init__(self):
        self._pending = b""

    def feed(self, data):
        """Return the complete lines in ``data`` plus what was pending (each ending in a newline)."""
        data = self._pending + data
        cut = data.rfind(b"\n") + 1
        lines, self._pending = data[:cut], data[cut:]
        if len(self._pending) > MAX_LINE:
            lines, self._pending = lines + self._pending + b"\n", b""
        return lines

    def flush(self):
        """What is left when the pipe closes, terminated so the next line starts clean."""
        rest, self._pending = self._pending, b""
        return rest + b"\n" if rest else b""


class Output:
    """Where the master writes: stderr or an append-only log file, one write per batch of whole lines."""

    def __init__(self, path=None):
        self.path = path
        if path:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        else:
            sys.stderr.flush()
            self._fd = 2

    def write(self, data):
        while data:
            try:
                written = os.write(self._fd, data)
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            except BlockingIOError:
                concurrency.original("select", "select")([], [self._fd], [], 1.0)
                continue
            data = data[written:]

    def fds(self):
        """Descriptors a forked worker must close (it writes to its pipe, never here)."""
        return [] if self._fd == 2 else [self._fd]

    def stream(self):
        """A text stream on the same destination, for the master's own logging handler."""
        return _FdStream(self)

    def close(self):
        if self._fd != 2:
            os.close(self._fd)


class _FdStream:
    """Just enough of a text stream for ``logging.StreamHandler``."""

    def __init__(self, output):
        self._output = output

    def write(self, text):
        self._output.write(text.encode("utf-8", "replace"))

    def flush(self):
        pass
