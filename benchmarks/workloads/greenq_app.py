"""The workloads as greenq actors: ``greenq-gevent benchmarks.workloads.greenq_app -Q $BENCH_QUEUE``.

``BENCH_BROKER_URL`` picks the broker (redis://, amqp://, sqlite:///); Redis
keys live under ``BENCH_NAMESPACE`` so a run never meets other users' keys.
The broker keeps greenq's defaults (on RabbitMQ: publisher confirms on); the
enqueue workload builds a second one with ``make_broker(confirm_delivery=False)``.
"""

import os

import greenq
from greenq.brokers import broker_from_url

from . import common

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
ENQUEUE_QUEUE = QUEUE + "-enq"  # producers' target for the enqueue workload; no worker consumes it

_url = os.environ["BENCH_BROKER_URL"]


def make_broker(**options):
    """A broker for the run's URL; ``options`` change its settings (none: greenq's defaults)."""
    if _url.startswith("redis"):
        options.setdefault("namespace", os.environ["BENCH_NAMESPACE"])
    return broker_from_url(_url, **options)


broker = make_broker()
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


def _enqueued(i):
    pass


def enqueued_on(other_broker):
    """The ``enqueued`` actor (same name, same queue) declared on another broker."""
    return greenq.actor(_enqueued, actor_name="enqueued", queue_name=ENQUEUE_QUEUE, max_retries=0,
                        broker=other_broker)


enqueued = enqueued_on(broker)


if os.environ.get("BENCH_WORKER"):
    common.start_probe()
