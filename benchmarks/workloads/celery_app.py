"""The workloads as Celery tasks: ``celery -A benchmarks.workloads.celery_app worker -P gevent -Q $BENCH_QUEUE``.

Runs only in the peers' virtualenv, on Redis. Results are off (as in the
other systems); everything else is Celery's defaults.
"""

import os

from celery import Celery

from . import common

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
ENQUEUE_QUEUE = QUEUE + "-enq"

app = Celery("bench", broker=os.environ["BENCH_BROKER_URL"])
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)


@app.task(name="bench.noop")
def noop(phase):
    common.noop(phase)


@app.task(name="bench.scrape")
def scrape(phase, keep_alive=False):
    common.scrape(phase, keep_alive)


@app.task(name="bench.latency")
def latency(sent_at):
    common.latency(sent_at)


@app.task(name="bench.enqueued", queue=ENQUEUE_QUEUE)
def enqueued(i):
    pass


if os.environ.get("BENCH_WORKER"):
    common.start_probe()
