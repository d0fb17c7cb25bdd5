"""Metadata producers/consumers and event consumers: in process, and end to end through ``greenq-gevent`` on Redis and SQLite."""

import logging
import os
import signal
import sys
import threading

import pytest

import greenq
from greenq.middleware import Events, Metadata, MetadataProducerConsumer

from support import REDIS_URL

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "cli"))

from cli_helpers import run_greenq  # noqa: E402,F401 - fixture


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


class _Sent:
    """Producer-side event consumer: the metadata of each message this process enqueues."""

    def __init__(self):
        self.enqueued = []

    def on_enqueue(self, message):
        self.enqueued.append((message.actor_name, list(message.args), message.options.get("metadata")))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("any_broker", ["redis", "sqlite"], indirect=True)
def test_end_to_end_through_a_worker_process(any_broker, queue_name, run_greenq):
    redis = hasattr(any_broker, "namespace")
    target = f"{REDIS_URL}#{any_broker.namespace}" if redis else any_broker.path
    proc = run_greenq("composition_events_worker", "-p", "1", "-t", "20", mode="gevent", cwd=HERE,
                      env={"EVENTS_BROKER": "redis" if redis else "sqlite", "EVENTS_TARGET": target,
                           "EVENTS_QUEUE": queue_name})
    try:
        proc.ready(1, timeout=60)
        any_broker.add_metadata_producer_consumer(Constant("tenant", "acme"))
        sent = _Sent()
        any_broker.add_event_consumer(sent)

        @greenq.actor(queue_name=queue_name, broker=any_broker)
        def greet(name):
            raise AssertionError("runs in the worker process only")

        @greenq.actor(queue_name=queue_name, broker=any_broker)
        def fail(reason):
            raise AssertionError("runs in the worker process only")

        greet.send("ada")
        fail.send("boom")
        # on_enqueue in the producer, with the metadata the producer added
        assert sent.enqueued == [("greet", ["ada"], {"tenant": "acme"}), ("fail", ["boom"], {"tenant": "acme"})]

        def event(name, actor, arg):
            return rf"\[events_app\] .*\] EVENT {name} {actor} \[\"{arg}\"\] tenant=acme$"

        for name in ("start", "success", "ack"):
            proc.wait_for(event(name, "greet", "ada"))
        proc.wait_for(event("dead", "fail", "boom"))
        for name, times in (("start", 2), ("failure", 2), ("retry", 1), ("enqueue", 1), ("ack", 1)):
            # enqueue: the retry, sent by the worker, keeps the producer's metadata; the first attempt's
            # copy is acked, the last one dead-lettered. The broken consumer broke none of it.
            proc.wait_for(event(name, "fail", "boom"), count=times)
        # The metadata consumer gave each run the producer's tenant, the retry included.
        proc.wait_for(r"\] SEEN ada tenant=acme$")
        proc.wait_for(r"\] SEEN boom tenant=acme$", count=2)
        assert "this consumer is broken" in proc.output()  # logged
        (dead,) = any_broker.dead_letters_of(queue_name)
        assert (dead.actor_name, dead.options["failure"], dead.options["retries"]) == ("fail", "ValueError: boom", 1)
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.output()[-3000:]
        # Nothing ran more often than expected.
        assert len(proc.matching(r"\] SEEN ")) == 3
        assert len(proc.matching(r"\] EVENT start ")) == 3
        assert len(proc.matching(r"\] EVENT enqueue ")) == 1
        assert any_broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    finally:
        proc.kill()
        if redis:  # the worker's heartbeats live under the namespace too
            keys = [k for pattern in (f"{any_broker.namespace}:*", f"{{{any_broker.namespace}:*")
                    for k in any_broker.client.scan_iter(pattern)]
            if keys:
                any_broker.client.delete(*keys)
