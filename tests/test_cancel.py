"""wait_started and cancel on real Redis and SQLite: before start (skipped, acked,
recorded), while running (interrupted, caught, not retried, recorded), under
gevent in a worker process with 20 greenlets of which 10 are cancelled, and on
RabbitMQ with a Redis store named by URL (and the error without one)."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import greenq
from greenq.middleware.cancel import Cancel
from greenq.results import ResultFailure, Results

from support import REDIS_URL, Recorder, drop_redis_namespace, enqueue_twice, require_server

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(params=["redis", "sqlite"])
def broker(request, tmp_path):
    """A broker with Cancel and Results, set as the global one (message.cancel() finds it)."""
    if request.param == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        from greenq.brokers.redis import RedisBroker
        from greenq.results.redis import RedisBackend

        namespace = f"greenq-test-cancel-{uuid.uuid4().hex[:8]}"
        broker = RedisBroker(REDIS_URL, namespace=namespace)
        backend = RedisBackend(REDIS_URL, namespace=namespace)
    else:
        from greenq.brokers.sqlite import SqliteBroker
        from greenq.results.sqlite import SqliteBackend

        broker = SqliteBroker(path=str(tmp_path / "cancel.sqlite3"))
        backend = SqliteBackend(broker=broker)
    broker.add_middleware(Results(backend=backend))
    broker.add_middleware(Cancel(check_interval=50))
    broker.emit_after("process_boot")
    greenq.set_broker(broker)
    yield broker
    if request.param == "redis":
        backend.close()
        broker.flush_all()
        drop_redis_namespace(broker.namespace)
    broker.close()


@pytest.fixture
def worker(broker):
    worker = greenq.Worker(broker, worker_threads=4, worker_timeout=100)
    yield worker
    worker.stop(timeout=5000)


def outcome(broker, message):
    return broker.get_middleware(Cancel).outcome(message.message_id, broker)


def test_wait_started_and_cancel_before_start(broker, worker, queue_name, recorder):
    release = threading.Event()

    @greenq.actor(queue_name=queue_name, store_results=True)
    def held(i):
        recorder.add(i)
        release.wait(30)
        return i

    first = held.send(1)
    second = held.send(2)
    assert first.wait_started(timeout=0.2) is False  # no worker yet
    second.cancel()
    worker.start()
    assert first.wait_started(timeout=10) is True
    wait_until(lambda: outcome(broker, second) == "cancelled before start", 10, "the cancel to be recorded")
    with pytest.raises(ResultFailure) as info:
        second.get_result(block=True, timeout=10000)
    assert info.value.type_name == "Cancelled"
    assert second.wait_started(timeout=0.1) is False  # it never started
    release.set()
    assert first.get_result(block=True, timeout=10000) == 1
    worker.join(10000)
    assert recorder.calls == [1]
    counts = broker.queue_counts(queue_name)
    assert (counts["ready"], counts["in_flight"], counts["dead"]) == (0, 0, 0)  # acked, not dead-lettered
    assert outcome(broker, first) is None


@pytest.mark.parametrize("swallow", [False, True])
def test_cancel_interrupts_a_running_actor_which_may_catch_it(broker, worker, queue_name, recorder, swallow):
    @greenq.actor(queue_name=queue_name, store_results=True, max_retries=3, min_backoff=100)
    def busy():
        try:
            while True:
                time.sleep(0.01)
        except greenq.Cancelled:
            recorder.add("caught")
            if not swallow:
                raise
        return "cleaned up"

    worker.start()
    message = busy.send()
    assert message.wait_started(timeout=10)
    message.cancel()
    recorder.wait_for(1, timeout=10)
    wait_until(lambda: outcome(broker, message) == "cancelled while running", 10, "the cancel to be recorded")
    if swallow:
        assert message.get_result(block=True, timeout=10000) == "cleaned up"
    else:
        with pytest.raises(ResultFailure) as info:
            message.get_result(block=True, timeout=10000)
        assert info.value.type_name == "Cancelled"
    worker.join(10000)
    counts = broker.queue_counts(queue_name)
    assert counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}  # acked: not retried, not dead
    assert recorder.calls == ["caught"]


def test_cancel_needs_the_middleware():
    from greenq.brokers.stub import StubBroker

    broker = StubBroker()
    message = greenq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    with pytest.raises(RuntimeError, match="Cancel middleware"):
        message.cancel(broker=broker)
    with pytest.raises(RuntimeError, match="Cancel middleware"):
        message.wait_started(timeout=0, broker=broker)


def test_cancel_on_the_stub_broker(recorder, queue_name):
    from greenq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.add_middleware(Cancel(check_interval=20))
    broker.emit_after("process_boot")

    @greenq.actor(queue_name=queue_name, broker=broker)
    def busy():
        try:
            while True:
                time.sleep(0.01)
        except greenq.Cancelled:
            recorder.add("caught")
            raise

    worker = greenq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        message = busy.send()
        assert message.wait_started(timeout=10, broker=broker)
        message.cancel(broker=broker)
        recorder.wait_for(1)
        broker.join(queue_name, timeout=10000)
        worker.join(10000)
        assert broker.dead_letters_of(queue_name) == []
    finally:
        worker.stop(timeout=5000)


def test_cancel_reaches_both_deliveries_of_one_message(recorder, queue_name):
    # A redelivery can run beside the first copy under the same id: the cancel is for both.
    from greenq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.add_middleware(Cancel(check_interval=20))
    broker.emit_after("process_boot")
    started = Recorder()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def busy():
        started.add("started")
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except greenq.Cancelled:
            recorder.add("caught")
            raise

    message = enqueue_twice(broker, busy)
    worker = greenq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        started.wait_for(2, timeout=10)
        message.cancel(broker=broker)
        assert recorder.wait_for(2, timeout=5) == ["caught", "caught"]
        broker.join(queue_name, timeout=10000)
        worker.join(10000)
        assert broker.dead_letters_of(queue_name) == []
        cancel = broker.get_middleware(Cancel)
        assert cancel._running == {} and cancel._interrupted == set()
    finally:
        worker.stop(timeout=5000)


def test_under_gevent_only_the_cancelled_greenlets_die(tmp_path, queue_name):
    require_server("Redis", "127.0.0.1", 6379)
    from greenq.brokers.redis import RedisBroker

    namespace = f"greenq-test-cancel-{uuid.uuid4().hex[:8]}"
    ledger = tmp_path / "ledger.txt"
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "scheduling_cancel_worker.py"), REDIS_URL,
                             namespace, queue_name, str(ledger)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    producer = RedisBroker(REDIS_URL, namespace=namespace)
    producer.add_middleware(Cancel())
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()

        @greenq.actor(queue_name=queue_name, broker=producer, max_retries=3)
        def wait_for_release(i):
            pass

        messages = [wait_for_release.send(i) for i in range(20)]
        for message in messages:
            assert message.wait_started(timeout=20, broker=producer)
        for message in messages[::2]:
            message.cancel(broker=producer)

        def lines():
            return ledger.read_text().split("\n") if ledger.exists() else []

        wait_until(lambda: sum(line.startswith("cancelled") for line in lines()) == 10, 20, "10 cancellations")
        producer.client.set(f"{namespace}:release", 1)
        wait_until(lambda: sum(line.startswith("done") for line in lines()) == 10, 20, "10 completions")
        wait_until(lambda: producer.queue_counts(queue_name)["in_flight"] == 0, 20, "every message acked")
        cancelled = sorted(int(line.split()[1]) for line in lines() if line.startswith("cancelled"))
        done = sorted(int(line.split()[1]) for line in lines() if line.startswith("done"))
        assert cancelled == list(range(0, 20, 2)) and done == list(range(1, 20, 2))
        counts = producer.queue_counts(queue_name)
        assert counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}  # none retried nor dead
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        producer.flush_all()
        producer.close()
        drop_redis_namespace(namespace)


def test_a_rabbitmq_deployment_waits_and_cancels_with_a_redis_store_named_by_url(queue_name, recorder):
    require_server("RabbitMQ", "127.0.0.1", 5672)
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    from greenq.brokers.rabbitmq import RabbitmqBroker
    from greenq.scheduling import StoreError
    from greenq.scheduling.redis_store import RedisStore

    broker = RabbitmqBroker("amqp://guest:guest@127.0.0.1:5672/")
    sent = []
    try:
        unconfigured = Cancel()
        broker.add_middleware(unconfigured)
        with pytest.raises(StoreError) as info:
            greenq.Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={}).cancel(broker=broker)
        assert str(info.value) == (
            "Cancel (wait_started/cancel) needs a Redis or SQLite store and cannot keep its state in a "
            "RabbitmqBroker: pass url='redis://host:6379/0' or url='sqlite:///path/to/file' (or store=...)")
        broker.remove_middleware(unconfigured)

        cancel = Cancel(url=REDIS_URL, check_interval=50)
        broker.add_middleware(cancel)
        broker.emit_after("process_boot")

        @greenq.actor(queue_name=queue_name, broker=broker, max_retries=3)
        def busy(i):
            try:
                while True:
                    time.sleep(0.01)
            except greenq.Cancelled:
                recorder.add(i)
                raise

        running = busy.send(1)
        waiting = busy.send(2)
        sent += [running, waiting]
        waiting.cancel(broker=broker)  # before any worker runs: it is skipped
        worker = greenq.Worker(broker, worker_threads=1, worker_timeout=100)
        worker.start()
        try:
            assert running.wait_started(timeout=20, broker=broker)
            running.cancel(broker=broker)
            assert recorder.wait_for(1) == [1]
            wait_until(lambda: cancel.outcome(waiting.message_id, broker) == "cancelled before start", 20,
                       "the skipped message to be recorded")
            wait_until(lambda: cancel.outcome(running.message_id, broker) == "cancelled while running", 20,
                       "the interrupted message to be recorded")
            wait_until(lambda: broker.queue_counts(queue_name)["ready"] == 0, 20, "the queue to drain")
        finally:
            worker.stop(timeout=5000)
        assert isinstance(cancel.store_of(broker), RedisStore) and cancel.store_of(broker).url == REDIS_URL
        assert waiting.wait_started(timeout=0, broker=broker) is False  # never started
        assert broker.queue_counts(queue_name)["dead"] == 0  # acked, not dead-lettered
        assert recorder.calls == [1]
    finally:
        try:
            broker.delete_queues()
        finally:
            broker.close()
            client = redis.Redis.from_url(REDIS_URL)
            for message in sent:
                client.delete(*(f"greenq:{kind}:{message.message_id}" for kind in ("started", "cancelled", "outcome")))
            client.close()


def test_wait_started_on_redis_outlasts_the_clients_socket_timeout():
    """redis-py ends a blocking read at its socket timeout (5 s by default); the wait goes in slices."""
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    from greenq.scheduling.redis_store import RedisStore

    namespace = f"greenq-test-cancel-{uuid.uuid4().hex[:8]}"
    store = RedisStore(client=redis.Redis.from_url(REDIS_URL, socket_timeout=0.3), namespace=namespace)
    try:
        started = time.monotonic()
        assert store.wait_started("never-started", timeout=1.0) is False  # no ConnectionError at 0.3 s
        assert time.monotonic() - started >= 1.0
        waiter = {}
        thread = threading.Thread(target=lambda: waiter.update(found=store.wait_started("soon", timeout=30)))
        thread.start()
        store.mark_started("soon", 60000)
        thread.join(30)
        assert waiter == {"found": True}
    finally:
        store.client.close()
        drop_redis_namespace(namespace)
