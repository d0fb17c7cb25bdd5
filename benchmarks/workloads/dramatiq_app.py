"""The workloads as Dramatiq actors: ``dramatiq-gevent benchmarks.workloads.dramatiq_app -Q $BENCH_QUEUE``.

Runs only in the peers' virtualenv. Redis keys live under ``BENCH_NAMESPACE``
in the database of ``BENCH_BROKER_URL``; RabbitMQ uses the run's own vhost.
"""

import os

import dramatiq

from . import common

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
ENQUEUE_QUEUE = QUEUE + "-enq"

_url = os.environ["BENCH_BROKER_URL"]
if _url.startswith("redis"):
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=_url, namespace=os.environ["BENCH_NAMESPACE"])
else:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=_url)
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


@dramatiq.actor(queue_name=ENQUEUE_QUEUE, max_retries=0)
def enqueued(i):
    pass


if os.environ.get("BENCH_WORKER"):
    common.start_probe()
