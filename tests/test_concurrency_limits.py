"""Per-actor max_concurrency: process scope on the stub, global scope shared through Redis."""

import threading
import uuid

import pytest

import greenq
from greenq.middleware import ConcurrencyLimits

from redis_helpers import REDIS_URL, require_server


class Gauge:
    """Counts how many actor runs overlap, and the most that ever did."""

    def __init__(self):
        self.now = 0
        self.most = 0
        self.done = 0
        self.lock = threading.Lock()
        self.finished = threading.Condition(self.lock)

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1
            self.done += 1
            self.finished.notify_all()

    def wait_done(self, count, timeout=30):
        with self.lock:
            assert self.finished.wait_for(lambda: self.done >= count, timeout), f"{self.done} of {count} done"


def test_at_most_n_run_at_once(stub_broker, queue_name):
    gauge = Gauge()

    @greenq.actor(broker=stub_broker, queue_name=queue_name, max_concurrency=2)
    def limited(i):
        with gauge:
            threading.Event().wait(0.01)  # the work: overlap is what is measured

    worker = greenq.Worker(stub_broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        for i in range(20):
            limited.send(i)
        gauge.wait_done(20)
        assert gauge.most <= 2
        stub_broker.join(queue_name)
        worker.join(10000)
        assert stub_broker.get_middleware(ConcurrencyLimits).running("limited") == 0
    finally:
        worker.stop(timeout=5000)


def test_waiting_messages_hold_no_pool_greenlet(stub_broker, queue_name):
    release = threading.Event()
    started, others = [], []

    @greenq.actor(broker=stub_broker, queue_name=queue_name, max_concurrency=1, max_concurrency_wait=60000)
    def slow(i):
        started.append(i)
        release.wait(30)

    @greenq.actor(broker=stub_broker, queue_name=queue_name)
    def quick(i):
        others.append(i)

    for i in range(4):
        slow.send(i)
    for i in range(3):
        quick.send(i)
    # Two pool slots: one runs `slow`, three `slow` messages wait for its slot; `quick` still runs.
    worker = greenq.Worker(stub_broker, worker_threads=2, prefetch_buffer=6, worker_timeout=100)
    worker.start()
    try:
        deadline = threading.Event()
        for _ in range(300):
            if len(others) == 3:
                break
            deadline.wait(0.05)
        assert sorted(others) == [0, 1, 2] and len(started) == 1
        release.set()
        stub_broker.join(queue_name)
        worker.join(10000)
        assert sorted(started) == [0, 1, 2, 3]
    finally:
        release.set()
        worker.stop(timeout=5000)


def test_past_the_wait_a_message_goes_back_without_counting_a_retry(stub_broker, queue_name):
    stub_broker.get_middleware(ConcurrencyLimits).requeue_delay = 100
    release = threading.Event()
    seen = []

    @greenq.actor(broker=stub_broker, queue_name=queue_name, max_concurrency=1, max_concurrency_wait=50,
                  max_retries=0)
    def slow(i):
        message = greenq.middleware.CurrentMessage.get_current_message()
        seen.append((i, message.options.get("concurrency_requeues", 0), message.options.get("retries")))
        if i == 0:
            release.wait(30)

    stub_broker.add_middleware(greenq.middleware.CurrentMessage())
    worker = greenq.Worker(stub_broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        slow.send(0)
        slow.send(1)
        for _ in range(400):
            if any(m.options.get("concurrency_requeues") for m in _delayed(stub_broker, queue_name)):
                break
            threading.Event().wait(0.05)
        release.set()
        stub_broker.join(queue_name)
        worker.join(10000)
    finally:
        release.set()
        worker.stop(timeout=5000)
    by_number = dict((i, (requeues, retries)) for i, requeues, retries in seen)
    assert by_number[0] == (0, None)
    assert by_number[1][0] >= 1 and by_number[1][1] is None  # sent back, not retried
    assert stub_broker.dead_letters_of(queue_name) == []


def _delayed(broker, queue_name):
    from greenq.message import Message

    with broker._cond:
        return [Message.decode(payload) for _, _, _, payload in broker._state[queue_name].delayed]


def test_global_scope_shares_the_bound_through_redis(queue_name):
    require_server("Redis", "127.0.0.1", 6379)
    from greenq.brokers.redis import RedisBroker

    namespace = f"greenq-test-maxc-{uuid.uuid4().hex[:8]}"
    gauge = Gauge()
    brokers, workers = [], []
    try:
        for _ in range(2):  # two brokers, two workers: they share nothing but Redis
            broker = RedisBroker(url=REDIS_URL, namespace=namespace)
            broker.get_middleware(ConcurrencyLimits).check_interval = 0.02

            @greenq.actor(broker=broker, queue_name=queue_name, actor_name="crawl", max_concurrency=3,
                          max_concurrency_scope="global", max_concurrency_wait=60000)
            def crawl(i):
                with gauge:
                    threading.Event().wait(0.01)

            brokers.append((broker, crawl))
        brokers[0][1].send_many([(i,) for i in range(40)])
        for broker, _ in brokers:
            worker = greenq.Worker(broker, worker_threads=8, worker_timeout=100)
            worker.start()
            workers.append(worker)
        gauge.wait_done(40, timeout=60)
        assert 1 <= gauge.most <= 3
    finally:
        for worker in workers:
            worker.stop(timeout=5000)
        client = brokers[0][0].client if brokers else None
        if client is not None:
            keys = list(client.scan_iter(f"{namespace}:*")) + list(client.scan_iter(f"{{{namespace}:*"))
            if keys:
                client.delete(*keys)
        for broker, _ in brokers:
            broker.close()


def test_bad_options_fail_at_decoration():
    with pytest.raises(greenq.ActorOptionError, match="max_concurrency_scope"):
        @greenq.actor(max_concurrency=2, max_concurrency_scope="planet")
        def f():
            pass
