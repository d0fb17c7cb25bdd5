"""A worker process on RedisBroker under gevent, driven by tests/test_redis_broker.py.

Usage: python tests/redis_worker.py URL NAMESPACE QUEUE HEARTBEAT_MS MODE [THREADS] [HOG_MS]

MODE ``sleep``: the ``hold`` actor records its start then sleeps (for kill -9 and
graceful stop); MODE ``hog``: it spins on the CPU for HOG_MS (default 3 heartbeat
timeouts) without yielding, then records that it finished. The process stops gracefully
when the test pushes to ``<ns>:stop``. Progress is written to Redis lists ``<ns>:started``,
``<ns>:finished``, ``<ns>:ready`` and ``<ns>:stopped``.
"""

import gevent.monkey

gevent.monkey.patch_all()

import sys  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402

import greenq  # noqa: E402
from greenq.brokers.redis import RedisBroker  # noqa: E402


def main():
    url, namespace, queue, heartbeat, mode = sys.argv[1:6]
    threads = int(sys.argv[6]) if len(sys.argv) > 6 else 5
    heartbeat = int(heartbeat)
    hog_ms = int(sys.argv[7]) if len(sys.argv) > 7 else 3 * heartbeat
    broker = RedisBroker(url, namespace=namespace, heartbeat_timeout=heartbeat)
    marks = redis.Redis.from_url(url, socket_timeout=None)  # it waits for ``stop`` as long as the test takes

    @greenq.actor(queue_name=queue, broker=broker, actor_name="hold")
    def hold(i):
        marks.rpush(f"{namespace}:started", i)
        if mode == "hog":
            end = time.perf_counter() + hog_ms / 1000
            while time.perf_counter() < end:  # never yields to the hub
                pass
            marks.rpush(f"{namespace}:finished", i)
        else:
            time.sleep(3600)

    worker = greenq.Worker(broker, worker_threads=threads, prefetch_buffer=1, worker_timeout=100)
    worker.start()
    marks.rpush(f"{namespace}:ready", 1)
    marks.blpop(f"{namespace}:stop")  # until the test asks (cooperative, unlike reading stdin)
    worker.stop(timeout=500)
    marks.rpush(f"{namespace}:stopped", 1)
    broker.close()


if __name__ == "__main__":
    main()
