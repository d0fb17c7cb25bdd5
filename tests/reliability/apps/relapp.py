"""The app every reliability scenario runs under ``greenq-gevent``, on the broker the test picks.

Configured by the environment, so one module serves every broker:

``REL_BROKER``  redis | rabbitmq | sqlite
``REL_URL``     the broker URL (Redis, RabbitMQ) or the SQLite file path
``REL_NS``      Redis namespace (isolation on a shared server)
``REL_QUEUE``   the queue every actor uses (isolation on a shared RabbitMQ)
``REL_LEDGER``  the ledger file: one line per processed message, ``<kind> <id> <pid>``

The ledger is a plain file written with ``O_APPEND`` (one ``os.write`` per line,
atomic on a local file system), so it survives a broker outage and needs no
broker to read: the test compares it with the ids it sent.
Short heartbeat timeouts make a killed worker's messages come back in about two
seconds; a short ``sigkill_delay`` makes the time-limit watchdog act fast.
"""

import os
import time

import greenq
from greenq.middleware import TimeLimit, default_middleware

KIND = os.environ["REL_BROKER"]
URL = os.environ.get("REL_URL", "")
QUEUE = os.environ["REL_QUEUE"]
LEDGER = os.environ["REL_LEDGER"]
MARKS = LEDGER + ".marks"

middleware = [TimeLimit(sigkill_delay=500) if isinstance(m, TimeLimit) else m for m in default_middleware()]

if KIND == "redis":
    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker(url=URL, namespace=os.environ["REL_NS"], heartbeat_timeout=1500, middleware=middleware)
elif KIND == "rabbitmq":
    from greenq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=URL, middleware=middleware,
                            publish_timeout=float(os.environ.get("REL_PUBLISH_TIMEOUT", "30")))
elif KIND == "sqlite":
    from greenq.brokers.sqlite import SqliteBroker

    broker = SqliteBroker(path=URL, heartbeat_timeout=1500, middleware=middleware)
else:
    raise SystemExit(f"unknown REL_BROKER {KIND!r}")
greenq.set_broker(broker)

_fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(kind, i):
    os.write(_fd, f"{kind} {i} {os.getpid()}\n".encode())


def first_attempt(name):
    """True for exactly one delivery of ``name`` across every process (an O_EXCL marker file)."""
    os.makedirs(MARKS, exist_ok=True)
    try:
        os.close(os.open(os.path.join(MARKS, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


@greenq.actor(queue_name=QUEUE, max_retries=0)
def work(i, sleep_ms=5):
    """A short IO-bound job (the sleep yields under gevent), so faults always hit in-flight work."""
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    record("w", i)


@greenq.actor(queue_name=QUEUE, max_retries=0)
def fail(i):
    """Always fails: it must end in the dead letters with this reason."""
    record("f", i)
    raise ValueError(f"planned failure {i}")


@greenq.actor(queue_name=QUEUE, max_retries=0, time_limit=300)
def spin(i):
    """The first delivery loops on the CPU and never yields; the redelivery finishes."""
    if first_attempt(f"spin-{i}"):
        record("s", i)
        while True:
            pass
    record("w", f"spin{i}")


_leaked = []


@greenq.actor(queue_name=QUEUE, max_retries=0)
def leak(i, kib=1024):
    """Keeps ``kib`` KiB for the life of the process, so --max-memory-per-child must recycle it."""
    _leaked.append(os.urandom(1024) * kib)
    time.sleep(0.002)
    record("w", i)
