"""The workloads as greenq actors: ``greenq-gevent benchmarks.workloads.greenq_app -Q $BENCH_QUEUE``.

``BENCH_BROKER_URL`` picks the broker (redis://, amqp://, sqlite:///); Redis
keys live under ``BENCH_NAMESPACE`` so a run never meets other users' keys.
"""

import os

import greenq
from greenq.brokers import broker_from_url

from . import common

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
ENQUEUE_QUEUE = QUEUE + "-enq"  # producers' target for the enqueue workload; no worker consumes it

_url = os.environ["BENCH_BROKER_URL"]
_options = {"namespace": os.environ["BENCH_NAMESPACE"]} if _url.startswith("redis") else {}
broker = broker_from_url(_url, **_options)
greenq.set_broker(broker)


@greenq.actor(queue_name=QUEUE, max_retries=0)
def noop(phase):
    common.noop(phase)


@greenq.actor(queue_name=QUEUE, max_retries=0)
def scrape(phase, keep_alive=False):
    common.scrape(phase, keep_alive)


@greenq.actor(queue_name=QUEUE, max_retries=0)
def latency(sent_at):
    common.latency(sent_at)


@greenq.actor(queue_name=ENQUEUE_QUEUE, max_retries=0)
def enqueued(i):
    pass


if os.environ.get("BENCH_WORKER"):
    common.start_probe()
