"""Results: success, failure for good, missing, timeout and TTL, on the stub and on real Redis."""

import threading
import time
import uuid

import pytest

import greenq
from greenq.results import ResultFailure, ResultMissing, Results, ResultTimeout, StubBackend

from redis_helpers import REDIS_URL, require_server


@pytest.fixture(params=["stub", "sqlite", "redis"])
def backend(request, tmp_path):
    if request.param == "stub":
        backend = StubBackend()
    elif request.param == "sqlite":
        from greenq.results.sqlite import SqliteBackend

        backend = SqliteBackend(path=str(tmp_path / "results.sqlite3"))
    else:
        require_server("Redis", "127.0.0.1", 6379)
        from greenq.results.redis import RedisBackend

        backend = RedisBackend(REDIS_URL, namespace=f"greenq-test-results-{uuid.uuid4().hex[:8]}")
    yield backend
    backend.close()


@pytest.fixture
def broker_with_results(backend):
    from greenq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.add_middleware(Results(backend=backend))
    greenq.set_broker(broker)
    worker = greenq.Worker(broker, worker_timeout=100, worker_threads=4)
    yield broker, worker
    worker.stop(timeout=5000)
    broker.close()


def test_result_of_a_successful_actor(broker_with_results, queue_name):
    broker, worker = broker_with_results

    @greenq.actor(queue_name=queue_name, store_results=True, result_ttl=60000)
    def add(x, y):
        return {"sum": x + y}

    message = add.send(1, 2)
    with pytest.raises(ResultMissing):
        message.get_result()
    worker.start()
    assert message.get_result(block=True, timeout=10000) == {"sum": 3}
    assert message.get_result() == {"sum": 3}  # reading does not consume it


def test_failure_is_stored_only_once_final(broker_with_results, queue_name):
    broker, worker = broker_with_results
    attempts = []

    @greenq.actor(queue_name=queue_name, store_results=True, max_retries=1, min_backoff=100, max_backoff=100)
    def broken():
        attempts.append(1)
        raise ValueError("nope")

    message = broken.send()
    worker.start()
    with pytest.raises(ResultFailure) as info:
        message.get_result(block=True, timeout=10000)
    assert len(attempts) == 2  # the first failure was retried, not reported
    assert info.value.type_name == "ValueError" and info.value.text == "nope"


def test_block_times_out_and_no_store_without_the_option(broker_with_results, queue_name):
    broker, worker = broker_with_results
    done = threading.Event()

    @greenq.actor(queue_name=queue_name)
    def plain():
        done.set()
        return 1

    message = plain.send()
    worker.start()
    assert done.wait(10)
    worker.join(5000)
    with pytest.raises(ResultTimeout):
        message.get_result(block=True, timeout=300)


def test_blocked_waiter_wakes_when_the_result_lands(backend):
    got = []
    waiter = threading.Thread(target=lambda: got.append(backend.get_result("m-1", block=True, timeout=10000)))
    waiter.start()
    backend.store_result("m-1", [1, "two"], 60000)
    waiter.join(10)
    assert got == [[1, "two"]]


def test_result_expires_after_its_ttl(backend):
    backend.store_result("m-ttl", 42, 200)
    assert backend.get_result("m-ttl") == 42
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            backend.get_result("m-ttl")
        except ResultMissing:
            return
        time.sleep(0.05)  # waiting for the TTL to pass, which has no event
    pytest.fail("the result outlived its TTL")


def test_results_must_be_json(backend):
    with pytest.raises(greenq.EncodeError):
        backend.store_result("m-bad", object(), 1000)


def test_bad_result_options_fail_at_decoration():
    with pytest.raises(greenq.ActorOptionError, match="result_ttl"):
        @greenq.actor(result_ttl=-1)
        def f():
            pass


def test_redis_backend_reports_unreachable_server():
    from greenq.results.redis import RedisBackend

    backend = RedisBackend("redis://:s3cret@127.0.0.1:16999/0")
    with pytest.raises(greenq.ConnectionError) as info:
        backend.get_result("x")
    assert "s3cret" not in str(info.value) and "127.0.0.1:16999" in str(info.value)


@pytest.fixture
def redis_backend():
    require_server("Redis", "127.0.0.1", 6379)
    from greenq.results.redis import RedisBackend

    backend = RedisBackend(REDIS_URL, namespace=f"greenq-test-results-{uuid.uuid4().hex[:8]}")
    yield backend
    backend.close()


@pytest.mark.parametrize("kind", ["string", "hash"])
def test_redis_result_key_holding_a_foreign_type_is_a_clear_error(redis_backend, kind):
    key = redis_backend.key("m-foreign")
    if kind == "string":
        redis_backend.client.set(key, "someone else's value", px=60000)
    else:
        redis_backend.client.hset(key, "field", "value")
    try:
        for block in (False, True):
            with pytest.raises(ResultMissing) as info:
                redis_backend.get_result("m-foreign", block=block, timeout=5000)
            assert key in str(info.value) and f"holds a {kind}" in str(info.value)
        redis_backend.store_result("m-foreign", 7, 60000)  # storing replaces the foreign value
        assert redis_backend.get_result("m-foreign") == 7
    finally:
        redis_backend.client.delete(key)


def test_redis_waiter_may_wait_longer_than_the_socket_timeout():
    """redis-py reads with a socket timeout (5 s by default); get_result(block=True) waits in slices."""
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    from greenq.results.redis import RedisBackend

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=0.5)
    backend = RedisBackend(client=client, namespace=f"greenq-test-results-{uuid.uuid4().hex[:8]}")
    try:
        start = time.monotonic()
        with pytest.raises(ResultTimeout):
            backend.get_result("m-never", block=True, timeout=1200)
        assert time.monotonic() - start >= 1.2
        late = threading.Timer(1.0, lambda: backend.store_result("m-late", "done", 60000))
        late.start()
        try:
            assert backend.get_result("m-late", block=True, timeout=20000) == "done"
        finally:
            late.join()
    finally:
        backend.client.delete(backend.key("m-late"))
        client.close()
