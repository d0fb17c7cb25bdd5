"""``--max-tasks-per-child`` and ``--max-memory-per-child``: retire a worker gracefully.

A middleware counts finished messages and, when a limit is reached, pauses the
worker and tells the master, which forks a replacement at once; meanwhile the
worker stops as on TERM: it starts nothing new (what it had fetched goes back to
the broker) and finishes what it runs. No message is cut off; the slot runs at
reduced capacity only for the replacement's start-up. The limit is soft: the
worker may still run what it already held when the limit tripped (at most its
pool size plus its prefetch buffer), never more. Memory is read from
``/proc/self/statm`` after each message (one small file read, Linux), else the
peak RSS from ``getrusage``.
"""

import logging
import os
import resource
import sys

from ..middleware import Middleware

logger = logging.getLogger("greenq.recycle")


def resident_kib():
    """This process's resident memory in KiB."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


class Recycle(Middleware):
    def __init__(self, notify, *, max_tasks=None, max_memory_kib=None):
        self.notify = notify
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.count = 0
        self.worker = None
        self.tripped = False

    def before_worker_boot(self, broker, worker):
        self.worker = worker

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self.count += 1
        if self.tripped:
            return
        reason = None
        if self.max_tasks is not None and self.count >= self.max_tasks:
            reason = f"processed {self.count} messages (--max-tasks-per-child {self.max_tasks})"
        elif self.max_memory_kib is not None:
            rss = resident_kib()
            if rss >= self.max_memory_kib:
                reason = f"uses {rss} KiB of memory (--max-memory-per-child {self.max_memory_kib} KiB)"
        if reason is not None:
            self.tripped = True
            if self.worker is not None:
                self.worker.pause()
            logger.info("This worker process %s; asking the master for a replacement.", reason)
            self.notify(reason)

    after_skip_message = after_process_message
