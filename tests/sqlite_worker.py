"""A worker process on a SQLite broker file, for tests that kill processes.

    python tests/sqlite_worker.py DB_PATH LEDGER_PATH QUEUE [GREENLETS] [SLEEP_MS]

Patches gevent first, then runs an in-process ``Worker`` whose actor appends
the message's number to LEDGER_PATH (one ``O_APPEND`` write per line, so lines
from several processes never interleave) after sleeping SLEEP_MS. Prints
``ready`` once consuming; TERM stops it gracefully and prints the broker's
``db_stats()`` as JSON. Warnings (the reaper's, slow SQLite calls) go to stderr.
"""

import sys

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import greenq  # noqa: E402
from greenq.brokers.sqlite import SqliteBroker  # noqa: E402


def main():
    db_path, ledger_path, queue_name = sys.argv[1:4]
    greenlets = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    sleep_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    broker = SqliteBroker(path=db_path, heartbeat_timeout=1000)
    ledger = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @greenq.actor(queue_name=queue_name, broker=broker, max_retries=0)
    def record(i):
        time.sleep(sleep_ms / 1000)
        os.write(ledger, f"{i} {os.getpid()}\n".encode())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = greenq.Worker(broker, worker_threads=greenlets, worker_timeout=200)
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop(timeout=10000)
    stats = broker.db_stats()
    broker.close()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
