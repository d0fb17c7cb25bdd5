"""The workloads as Dramatiq actors: ``dramatiq-gevent benchmarks.workloads.dramatiq_app -Q $BENCH_QUEUE``.

Runs only in the peers' virtualenv. Redis keys live under ``BENCH_NAMESPACE``
in the database of ``BENCH_BROKER_URL``; RabbitMQ uses the run's own vhost.
The broker keeps Dramatiq's defaults (on RabbitMQ: ``confirm_delivery=False``);
the enqueue workload builds a second one with ``make_broker(confirm_delivery=True)``.
"""

import os

import dramatiq

from . import common

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
ENQUEUE_QUEUE = QUEUE + "-enq"

_url = os.environ["BENCH_BROKER_URL"]


def make_broker(**options):
    """A broker for the run's URL; ``options`` change its settings (none: Dramatiq's defaults)."""
    if _url.startswith("redis"):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=_url, namespace=os.environ["BENCH_NAMESPACE"], **options)
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=_url, **options)


broker = make_broker()
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(phase):
    common.noop(phase)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def scrape(phase, keep_alive=False):
    common.scrape(phase, keep_alive)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def latency(sent_at):
    common.latency(sent_at)


def _enqueued(i):
    pass


def enqueued_on(other_broker):
    """The ``enqueued`` actor (same name, same queue) declared on another broker."""
    return dramatiq.actor(_enqueued, actor_name="enqueued", queue_name=ENQUEUE_QUEUE, max_retries=0,
                          broker=other_broker)


enqueued = enqueued_on(broker)


if os.environ.get("BENCH_WORKER"):
    common.start_probe()
