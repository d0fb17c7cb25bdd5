"""Shared fixtures: real brokers and isolation between tests. Helpers live in support.py."""

import os
import sys
import uuid

import pytest

import greenq
import greenq.actor
import greenq.broker

from support import RABBITMQ_URL, REDIS_URL, Recorder, require_server

actor_module = sys.modules["greenq.actor"]  # the package's ``actor`` attribute is the decorator
broker_module = sys.modules["greenq.broker"]

#: The user guide's example app is run by tests/test_user_guide.py in its own pytest process.
collect_ignore = ["user_guide"]

#: Brokers the contract suite runs against. GREENQ_CONTRACT_BROKERS=redis,sqlite narrows a local run.
CONTRACT_BROKERS = [name for name in os.environ.get("GREENQ_CONTRACT_BROKERS", "stub,sqlite,redis,rabbitmq").split(",") if name]


@pytest.fixture(autouse=True)
def _isolate_global_state():
    """Each test starts with no global broker and no actors following it."""
    yield
    broker_module._reset_global_broker()
    with actor_module._registry_lock:
        actor_module._following_global.clear()


@pytest.fixture
def stub_broker():
    from greenq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.emit_after("process_boot")
    yield broker
    broker.close()


@pytest.fixture
def stub_worker(stub_broker):
    worker = greenq.Worker(stub_broker, worker_timeout=100)
    worker.start()
    yield worker
    worker.stop()


def make_broker(name, tmp_path):
    """Build a fresh, isolated broker of kind ``name``; returns (broker, cleanup)."""
    if name == "stub":
        from greenq.brokers.stub import StubBroker

        broker = StubBroker()
        return broker, broker.close
    if name == "sqlite":
        from greenq.brokers.sqlite import SqliteBroker

        broker = SqliteBroker(path=str(tmp_path / "greenq-test.sqlite3"))
        return broker, broker.close
    if name == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        from greenq.brokers.redis import RedisBroker

        broker = RedisBroker(url=REDIS_URL, namespace=f"greenq-test-{uuid.uuid4().hex[:8]}")

        def cleanup():
            broker.flush_all()
            broker.close()

        return broker, cleanup
    if name == "rabbitmq":
        require_server("RabbitMQ", "127.0.0.1", 5672)
        from greenq.brokers.rabbitmq import RabbitmqBroker

        # The contract includes broker-side priorities, which RabbitMQ has only when asked for.
        broker = RabbitmqBroker(url=RABBITMQ_URL, max_priority=10)

        def cleanup():
            broker.delete_queues()
            broker.close()

        return broker, cleanup
    raise ValueError(name)


@pytest.fixture(params=CONTRACT_BROKERS)
def any_broker(request, tmp_path):
    broker, cleanup = make_broker(request.param, tmp_path)
    broker.emit_after("process_boot")
    yield broker
    cleanup()


@pytest.fixture
def queue_name():
    """A queue name no other test uses, so tests on shared servers cannot see each other."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def recorder():
    return Recorder()


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="also run the long reliability variants (@pytest.mark.long: 100k soak, 30 s outage)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --long")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)


@pytest.fixture
def rabbitmq_brokers():
    """Build RabbitmqBrokers (``boot=True`` also runs ``process_boot``); each one's queues are deleted and its
    links closed at the end."""
    require_server("RabbitMQ", "127.0.0.1", 5672)
    from greenq.brokers.rabbitmq import RabbitmqBroker

    made = []

    def make(url=RABBITMQ_URL, *, boot=False, **options):
        broker = RabbitmqBroker(url=url, **options)
        if boot:
            broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield make
    for broker in made:
        try:
            broker.delete_queues()
        finally:
            broker.close()
