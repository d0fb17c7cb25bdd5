"""One worker process of the global ``max_concurrency`` test, under gevent.

Usage: python tests/concurrency_limit_proc.py BROKER TARGET QUEUE COUNTER LIMIT THREADS BUFFER

BROKER ``redis`` (TARGET ``URL#NAMESPACE``) or ``sqlite`` (TARGET the file).
The ``crawl`` actor has ``max_concurrency=LIMIT`` with the global scope. While
it runs it is counted in COUNTER, a file shared by every process (``now most``
under an exclusive ``flock``): the count goes up once the actor holds its slot
and down before it gives the slot back, so it never exceeds the true number of
holders. Runs hold their slot until the test writes ``go`` on stdin; the run
whose count reaches LIMIT prints ``@@ full``. Every finished run prints
``@@ done <i> <pid>``. ``stop`` on stdin (or EOF) stops the worker gracefully
and prints ``@@ stopped``.
"""

import gevent.monkey

gevent.monkey.patch_all()

import fcntl  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402

import greenq  # noqa: E402
from greenq.middleware import ConcurrencyLimits  # noqa: E402


def bump(path, delta):
    """Add ``delta`` to the shared count of holders; returns the new count."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds; blocking the hub that long is fine
        raw = os.pread(fd, 64, 0).decode().split()
        now, most = (int(raw[0]), int(raw[1])) if raw else (0, 0)
        now += delta
        most = max(most, now)
        os.pwrite(fd, f"{now} {most}".ljust(40).encode(), 0)
        return now
    finally:
        os.close(fd)  # releases the lock


def say(line):
    sys.stdout.write(f"@@ {line}\n")
    sys.stdout.flush()


def main():
    kind, target, queue, counter, limit, threads, buffer = sys.argv[1:8]
    limit, threads, buffer = int(limit), int(threads), int(buffer)
    if kind == "redis":
        from greenq.brokers.redis import RedisBroker

        url, namespace = target.rsplit("#", 1)
        broker = RedisBroker(url=url, namespace=namespace)
    else:
        from greenq.brokers.sqlite import SqliteBroker

        broker = SqliteBroker(path=target)
    broker.get_middleware(ConcurrencyLimits).check_interval = 0.02  # notice slots freed by the other process
    broker.emit_after("process_boot")
    released = gevent.event.Event()

    @greenq.actor(broker=broker, queue_name=queue, actor_name="crawl", max_concurrency=limit,
                  max_concurrency_scope="global", max_concurrency_wait=120000)
    def crawl(i):
        now = bump(counter, +1)
        try:
            if now == limit:
                say("full")
            if not released.wait(120):
                raise RuntimeError("never released")
            time.sleep(random.uniform(0.001, 0.004))  # overlap with the other process's holders
        finally:
            bump(counter, -1)
        say(f"done {i} {os.getpid()}")

    worker = greenq.Worker(broker, worker_threads=threads, prefetch_buffer=buffer, worker_timeout=100)
    worker.start()
    say("ready")
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb")  # cooperative: the worker runs while we wait
    for line in stdin:
        command = line.decode().strip()
        if command == "go":
            released.set()
        elif command == "stop":
            break
    released.set()
    worker.stop(timeout=10000)
    broker.close()
    say("stopped")


if __name__ == "__main__":
    main()
