"""An app for the worker command, for tests/test_scheduling.py: ``greenq-gevent scheduling_cli_app -p 2``.

Configured by the environment (each worker process imports it afresh after the fork):

    TEST_KIND         redis or sqlite
    TEST_TARGET       the Redis URL or the SQLite file
    TEST_NS           Redis namespace, and the scheduler's lease name
    TEST_QUEUE        the periodic actor's queue (its name is tick_<queue>)
    TEST_LEDGER       file every process appends its lines to
    TEST_INTERVAL     seconds between ticks
    TEST_LEASE_TTL    the scheduler's lease, ms

Ledger lines (one ``O_APPEND`` write each, so lines of several processes never mix):

    F <tick> <pid> <copy>                  this process sent a copy of the tick
    R <tick> <pid> <copy> <redelivered>    this process ran the actor for that copy (redelivered 0/1)
"""

import os

import greenq
from greenq.middleware import CurrentMessage, Middleware
from greenq.scheduling import Scheduler

KIND = os.environ["TEST_KIND"]
TARGET = os.environ["TEST_TARGET"]
NS = os.environ["TEST_NS"]
QUEUE = os.environ["TEST_QUEUE"]
LEDGER = os.open(os.environ["TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class FireLedger(Middleware):
    def after_enqueue(self, broker, message, delay):
        if "scheduled_at" in message.options:
            os.write(LEDGER, f"F {message.options['scheduled_at']} {os.getpid()} "
                             f"{message.options['scheduled_copy']}\n".encode())


if KIND == "redis":
    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker(TARGET, namespace=NS, heartbeat_timeout=1500)
else:
    from greenq.brokers.sqlite import SqliteBroker

    broker = SqliteBroker(path=TARGET, heartbeat_timeout=1500)
broker.add_middleware(CurrentMessage())
broker.add_middleware(FireLedger())
broker.add_middleware(Scheduler(lease_ttl=int(os.environ["TEST_LEASE_TTL"]), lease_name=NS))
greenq.set_broker(broker)


@greenq.periodic(float(os.environ["TEST_INTERVAL"]), queue_name=QUEUE, actor_name=f"tick_{QUEUE}")
def tick():
    message = CurrentMessage.get_current_message()
    os.write(LEDGER, f"R {message.options['scheduled_at']} {os.getpid()} {message.options['scheduled_copy']} "
                     f"{int(bool(message.redelivered))}\n".encode())
