"""The ``--pid-file``: refuse to start twice, clean up after ourselves.

Created with ``O_EXCL`` so two masters starting at once cannot both win. A pid
file left by a greenq that died without cleaning up (its pid no longer runs, or
now belongs to a process that is not greenq) is replaced with a warning.
"""

import logging
import os

logger = logging.getLogger("greenq.MainProcess")


class PidFileHeld(Exception):
    """Another greenq that is still running owns the pid file (exit code 4)."""


def _running_greenq(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's: do not take it over
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"greenq" in f.read()
    except FileNotFoundError:  # no procfs (macOS): a live pid is taken as ours
        return True
    except OSError:
        return True


def acquire(path):
    """Write our pid to ``path``; raise ``PidFileHeld`` if a running greenq holds it."""
    path = os.path.abspath(path)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    content = f.read().strip()
            except FileNotFoundError:
                continue
            pid = int(content) if content.isdigit() else -1
            if _running_greenq(pid) and pid != os.getpid():
                raise PidFileHeld(f"greenq is already running with pid {pid} (pid file {path})")
            logger.warning("Replacing the stale pid file %s (it held %r).", path, content)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return path
    raise PidFileHeld(f"could not take the pid file {path}: another process keeps recreating it")


def release(path):
    """Remove the pid file if it still holds our pid."""
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("Could not remove the pid file %s: %s", path, e)
