"""A worker process that runs the Scheduler, for tests/test_scheduling.py.

    python tests/scheduling_worker.py KIND TARGET NAMESPACE QUEUE LEDGER INTERVAL_S LEASE_TTL_MS

KIND is ``redis`` (TARGET a URL) or ``sqlite`` (TARGET a file). Patches gevent
first, then runs a ``Worker`` whose broker has the ``Scheduler`` middleware and
one ``@periodic`` actor. Each process appends to LEDGER (one ``O_APPEND``
write per line, so lines of several processes never mix):

    F <tick> <pid> <copy>                  this process sent a copy of the tick
    R <tick> <pid> <copy> <redelivered>    this process ran the actor for that copy (redelivered 0/1)

Prints ``ready`` once the worker runs; TERM stops it gracefully.
"""

import gevent.monkey

gevent.monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import greenq  # noqa: E402
from greenq.middleware import CurrentMessage, Middleware  # noqa: E402
from greenq.scheduling import Scheduler  # noqa: E402


class FireLedger(Middleware):
    def __init__(self, fd):
        self.fd = fd

    def after_enqueue(self, broker, message, delay):
        if "scheduled_at" in message.options:
            os.write(self.fd, f"F {message.options['scheduled_at']} {os.getpid()} "
                              f"{message.options['scheduled_copy']}\n".encode())


def main():
    kind, target, namespace, queue, ledger_path, interval, lease_ttl = sys.argv[1:8]
    if kind == "redis":
        from greenq.brokers.redis import RedisBroker

        broker = RedisBroker(target, namespace=namespace, heartbeat_timeout=1000)
    else:
        from greenq.brokers.sqlite import SqliteBroker

        broker = SqliteBroker(path=target, heartbeat_timeout=1000)
    ledger = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(FireLedger(ledger))
    broker.add_middleware(Scheduler(lease_ttl=int(lease_ttl), lease_name=namespace))

    @greenq.periodic(float(interval), queue_name=queue, broker=broker, actor_name=f"tick_{queue}")
    def tick():
        message = CurrentMessage.get_current_message()
        os.write(ledger, f"R {message.options['scheduled_at']} {os.getpid()} {message.options['scheduled_copy']} "
                         f"{int(bool(message.redelivered))}\n".encode())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker.emit_after("process_boot")
    worker = greenq.Worker(broker, worker_threads=4, worker_timeout=200)
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop(timeout=5000)
    broker.close()


if __name__ == "__main__":
    main()
