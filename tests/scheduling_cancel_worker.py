"""A gevent worker process with the Cancel middleware, for tests/test_cancel.py.

    python tests/scheduling_cancel_worker.py REDIS_URL NAMESPACE QUEUE LEDGER

Patches gevent first. The ``wait_for_release`` actor sleeps (cooperatively)
until the Redis key ``<ns>:release`` exists, then writes ``done <i>`` to LEDGER;
if it is cancelled meanwhile it writes ``cancelled <i>`` and re-raises.
Prints ``ready`` once the worker runs; TERM stops it.
"""

import gevent.monkey

gevent.monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402

import greenq  # noqa: E402
from greenq.brokers.redis import RedisBroker  # noqa: E402
from greenq.middleware.cancel import Cancel  # noqa: E402


def main():
    url, namespace, queue, ledger_path = sys.argv[1:5]
    broker = RedisBroker(url, namespace=namespace, heartbeat_timeout=2000)
    broker.add_middleware(Cancel())
    marks = redis.Redis.from_url(url)
    ledger = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @greenq.actor(queue_name=queue, broker=broker, max_retries=3)
    def wait_for_release(i):
        try:
            while not marks.exists(f"{namespace}:release"):
                time.sleep(0.02)
        except greenq.Cancelled:
            os.write(ledger, f"cancelled {i}\n".encode())
            raise
        os.write(ledger, f"done {i}\n".encode())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker.emit_after("process_boot")
    worker = greenq.Worker(broker, worker_threads=50, worker_timeout=200)
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop(timeout=5000)
    broker.close()


if __name__ == "__main__":
    main()
