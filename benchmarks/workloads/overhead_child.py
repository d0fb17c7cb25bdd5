"""One measurement for ``benchmarks.overhead``: N queued jobs through one gevent process, CPU read around them.

    python -m benchmarks.workloads.overhead_child SYSTEM BROKER JOB N

SYSTEM is ``bare`` (a ``gevent.pool.Pool`` spawning the jobs), ``greenq`` (a
``greenq.Worker`` in this process) or ``dramatiq`` (a ``dramatiq.Worker`` in
this process, as ``dramatiq-gevent`` runs it; the peers' virtualenv only).
Prints one JSON line: CPU microseconds per job and, for greenq, how many
settle and fetch calls the worker made per job.
"""

from gevent import monkey  # noqa: I001

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402

from ..redis_keys import drop_keys  # noqa: E402

THREADS = 250
QUEUE = os.environ.get("BENCH_OVERHEAD_QUEUE") or f"overhead-{uuid.uuid4().hex[:8]}"
#: ``fill`` only queues the N jobs (on ``BENCH_OVERHEAD_QUEUE``) and leaves them; ``work`` only runs
#: a worker over them: ``benchmarks.instructions --worker`` counts the second without the first.
STEP = os.environ.get("BENCH_OVERHEAD_STEP", "both")


class Jobs:
    """N jobs, the same for every system: noop does nothing; io waits 30-70 ms (cooperatively), seeded;
    scrape fetches the page at ``BENCH_HTTP_URL`` with ``requests``, a new connection each time.

    The waits make IO-bound jobs end one by one, not in a burst. ``done`` is set
    when the last one has run.
    """

    def __init__(self, kind, n):
        rng = random.Random(7)
        self.waits = [rng.uniform(0.03, 0.07) if kind == "io" else 0.0 for _ in range(n)]
        self.url = None
        if kind == "scrape":
            import requests  # here, not in the first job: the import is not the queue's cost

            self.get = requests.get
            self.url = os.environ["BENCH_HTTP_URL"]
        self.n = n
        self.count = 0
        self.done = gevent.event.Event()

    def run(self, i):
        if self.url:
            response = self.get(self.url, timeout=30)
            if response.status_code != 200:
                raise RuntimeError(f"the page answered {response.status_code}")
        elif self.waits[i]:
            gevent.sleep(self.waits[i])
        self.count += 1
        if self.count == self.n:
            self.done.set()

    def timed(self, worker):
        """Start ``worker`` (greenq's or Dramatiq's); CPU microseconds per job until the last has run and been acked."""
        start = time.process_time()
        worker.start()
        if not self.done.wait(300):
            raise SystemExit(f"only {self.count} of {self.n} jobs ran within 300 s")
        worker.join()
        cpu = time.process_time() - start
        worker.stop()
        return cpu * 1e6 / self.n


def bare(kind, n):
    jobs = Jobs(kind, n)
    pool = gevent.pool.Pool(THREADS)
    start = time.process_time()
    for i in range(n):
        pool.spawn(jobs.run, i)
    pool.join()
    if jobs.count != n:
        raise SystemExit(f"only {jobs.count} of {n} jobs ran")
    return {"cpu_us": (time.process_time() - start) * 1e6 / n}


def make_broker(name):
    if name == "sqlite":
        import tempfile

        from greenq.brokers.sqlite import SqliteBroker

        folder = os.path.join(tempfile.gettempdir(), f"greenq-{QUEUE}")  # the same for a fill and its work
        os.makedirs(folder, exist_ok=True)
        return SqliteBroker(os.path.join(folder, "broker.sqlite3")), lambda: shutil.rmtree(folder, ignore_errors=True)
    if name == "redis":
        from greenq.brokers.redis import RedisBroker

        broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), namespace=QUEUE)
        return broker, lambda: drop_keys(broker.client, "{%s:*" % QUEUE, f"{QUEUE}*")
    if name == "rabbitmq":
        from greenq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
        return broker, broker.delete_queues
    raise SystemExit(f"unknown broker {name!r}")


def greenq_run(broker_name, kind, n):
    import greenq
    from greenq import worker as worker_module

    broker, cleanup = make_broker(broker_name)
    jobs = Jobs(kind, n)
    overhead_job = greenq.actor(jobs.run, broker=broker, queue_name=QUEUE, actor_name="overhead_job", max_retries=0)
    try:
        if STEP != "work":
            for start in range(0, n, 1000):
                overhead_job.send_many([(i,) for i in range(start, min(n, start + 1000))])
        if STEP == "fill":
            return {}
        calls = {"settle": 0, "fetch": 0}
        settle, reserve = worker_module._QueueRunner._settle, worker_module._Capacity.reserve

        def counted_settle(self, *args):
            calls["settle"] += 1
            return settle(self, *args)

        def counted_reserve(self, *args):
            calls["fetch"] += 1
            return reserve(self, *args)

        worker_module._QueueRunner._settle = counted_settle
        worker_module._Capacity.reserve = counted_reserve
        cpu_us = jobs.timed(greenq.Worker(broker, worker_threads=THREADS, queues=[QUEUE]))
        return {"cpu_us": cpu_us, "settle_calls": calls["settle"] / n, "fetch_calls": calls["fetch"] / n}
    finally:
        if cleanup is not None and STEP != "fill":
            cleanup()
        broker.close()


def dramatiq_run(broker_name, kind, n):
    import dramatiq

    if broker_name == "redis":
        from dramatiq.brokers.redis import RedisBroker

        import redis

        # A pool bigger than the worker: with redis-py's default cap, 250 greenlets fail with "Too many
        # connections" and wait 5 s to retry. This measures Dramatiq at its best, not at its defaults.
        url = os.environ.get("BENCH_PEER_REDIS_URL", "redis://127.0.0.1:6379/15")
        pool = redis.ConnectionPool.from_url(url, max_connections=4 * THREADS)
        broker = RedisBroker(client=redis.Redis(connection_pool=pool), namespace=QUEUE)

        def cleanup():
            drop_keys(broker.client, f"{QUEUE}*")
    elif broker_name == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))

        def cleanup():
            for name in (QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ"):
                broker.channel.queue_delete(name)
    else:
        raise SystemExit(f"Dramatiq has no {broker_name!r} broker here")
    jobs = Jobs(kind, n)
    overhead_job = dramatiq.actor(jobs.run, broker=broker, queue_name=QUEUE, actor_name="overhead_job",
                                  max_retries=0)
    try:
        if STEP != "work":
            for i in range(n):
                overhead_job.send(i)
        if STEP == "fill":
            return {}
        return {"cpu_us": jobs.timed(dramatiq.Worker(broker, worker_threads=THREADS, queues={QUEUE}))}
    finally:
        if STEP != "fill":
            cleanup()
        broker.close()


def main():
    system, broker, kind, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    run = {"bare": lambda: bare(kind, n), "greenq": lambda: greenq_run(broker, kind, n),
           "dramatiq": lambda: dramatiq_run(broker, kind, n)}[system]
    result = run()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
