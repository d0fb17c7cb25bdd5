"""Metadata producers/consumers and event consumers: in process, and end to end through a worker process."""

import json
import logging
import os
import subprocess
import sys
import threading
import uuid

import pytest

import greenq
from greenq.middleware import Events, Metadata, MetadataProducerConsumer

from redis_helpers import REDIS_URL, require_server

HERE = os.path.dirname(os.path.abspath(__file__))


class Constant(MetadataProducerConsumer):
    def __init__(self, namespace, value):
        self.NAMESPACE = namespace
        self.value = value
        self.consumed = []

    def produce_metadata(self):
        return self.value

    def consume_metadata(self, metadata):
        self.consumed.append(metadata)


class Log:
    def __init__(self):
        self.events = []
        self._cond = threading.Condition()

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)

        def handler(message):
            with self._cond:
                self.events.append((name[3:], message.actor_name))
                self._cond.notify_all()

        return handler

    def wait_for(self, event, count=1, timeout=20):
        with self._cond:
            assert self._cond.wait_for(lambda: [e for e, _ in self.events].count(event) >= count, timeout), self.events


def test_metadata_travels_from_producer_to_consumer(stub_broker, stub_worker, queue_name):
    producer = Constant("request_id", "r-42")
    stub_broker.add_metadata_producer_consumer(producer)
    seen = []

    @greenq.actor(broker=stub_broker, queue_name=queue_name)
    def job():
        seen.append(list(producer.consumed))

    message = job.send()
    assert message.options["metadata"] == {"request_id": "r-42"}
    stub_broker.join(queue_name)
    stub_worker.join()
    assert seen == [["r-42"]]


def test_one_namespace_one_producer(stub_broker):
    stub_broker.add_metadata_producer_consumer(Constant("ns", 1))
    with pytest.raises(ValueError, match="'ns' is already taken"):
        stub_broker.add_metadata_producer_consumer(Constant("ns", 2))
    with pytest.raises(ValueError, match="NAMESPACE"):
        Metadata([object()])


def test_failing_metadata_code_is_logged_not_fatal(stub_broker, stub_worker, queue_name, caplog):
    class Broken(MetadataProducerConsumer):
        NAMESPACE = "broken"

        def produce_metadata(self):
            raise RuntimeError("no producer today")

    class BadConsumer(Constant):
        def consume_metadata(self, metadata):
            raise RuntimeError("no consumer today")

    stub_broker.add_metadata_producer_consumer(Broken())
    stub_broker.add_metadata_producer_consumer(BadConsumer("fine", 1))
    ran = threading.Event()

    @greenq.actor(broker=stub_broker, queue_name=queue_name)
    def job():
        ran.set()

    with caplog.at_level(logging.ERROR, logger="greenq.middleware.metadata"):
        assert job.send().options["metadata"] == {"fine": 1}
        assert ran.wait(10)
    assert "no producer today" in caplog.text and "no consumer today" in caplog.text


def test_events_of_success_retry_and_death(stub_broker, stub_worker, queue_name):
    log = Log()
    stub_broker.add_event_consumer(log)

    @greenq.actor(broker=stub_broker, queue_name=queue_name)
    def good():
        return 1

    @greenq.actor(broker=stub_broker, queue_name=queue_name, max_retries=1, min_backoff=100, max_backoff=100)
    def bad():
        raise RuntimeError("no")

    good.send()
    bad.send()
    log.wait_for("dead")
    stub_broker.join(queue_name)
    stub_worker.join()
    good_events = [e for e, actor in log.events if actor == "good"]
    bad_events = [e for e, actor in log.events if actor == "bad"]
    assert good_events == ["enqueue", "start", "success", "ack"]
    # The retry is enqueued (by Retries) before the failure is reported; the first attempt's ack
    # may land before or after the retry starts.
    assert sorted(bad_events) == sorted(["enqueue", "start", "enqueue", "failure", "retry", "ack",
                                         "start", "failure", "dead"])
    assert [e for e in bad_events if e in ("failure", "retry", "dead")] == ["failure", "retry", "failure", "dead"]


def test_a_failing_event_consumer_breaks_nothing(stub_broker, stub_worker, queue_name, caplog):
    class Broken:
        def on_start(self, message):
            raise RuntimeError("consumer down")

    log = Log()
    stub_broker.add_event_consumer(Broken())
    stub_broker.add_event_consumer(log)

    @greenq.actor(broker=stub_broker, queue_name=queue_name)
    def job():
        return 1

    with caplog.at_level(logging.ERROR, logger="greenq.middleware.events"):
        job.send()
        log.wait_for("ack")
    assert "consumer down" in caplog.text
    assert ("success", "job") in log.events


def test_event_consumers_need_an_event_method(stub_broker):
    with pytest.raises(ValueError, match="on_enqueue"):
        stub_broker.add_event_consumer(object())
    assert isinstance(Events.on(stub_broker), Events) and Events.on(stub_broker) is Events.on(stub_broker)


def test_end_to_end_through_a_worker_process(queue_name):
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    from greenq.brokers.redis import RedisBroker

    namespace = f"greenq-test-events-{uuid.uuid4().hex[:8]}"
    marks = redis.Redis.from_url(REDIS_URL)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "composition_events_worker.py"),
                             REDIS_URL, namespace, queue_name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    try:
        assert marks.blpop(f"{namespace}:ready", timeout=60), "the worker process did not start"
        broker.add_metadata_producer_consumer(Constant("tenant", "acme"))

        @greenq.actor(queue_name=queue_name, broker=broker)
        def greet(name):
            pass

        @greenq.actor(queue_name=queue_name, broker=broker)
        def fail(reason):
            pass

        greet.send("ada")
        fail.send("boom")
        seen = [json.loads(marks.blpop(f"{namespace}:seen", timeout=30)[1]) for _ in range(3)]
        assert sorted(seen) == [["ada", "acme"], ["boom", "acme"], ["boom", "acme"]]
        expected = {"start greet [\"ada\"]", "success greet [\"ada\"]", "ack greet [\"ada\"]",
                    "failure fail [\"boom\"]", "retry fail [\"boom\"]", "dead fail [\"boom\"]"}
        events = []
        while not expected <= set(events):
            item = marks.blpop(f"{namespace}:events", timeout=30)
            assert item, f"events so far: {events}"
            events.append(item[1].decode())
        assert events.count('start fail ["boom"]') == 2  # the retry ran; the broken consumer broke nothing
        marks.rpush(f"{namespace}:stop", 1)
        assert marks.blpop(f"{namespace}:stopped", timeout=30)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-3000:]
        assert "this consumer is broken" in err  # logged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        keys = list(marks.scan_iter(f"{namespace}:*")) + list(marks.scan_iter(f"{{{namespace}:*"))
        if keys:
            marks.delete(*keys)
        broker.close()
