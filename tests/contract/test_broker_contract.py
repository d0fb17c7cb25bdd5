"""The contract every broker keeps. One suite, run against each broker in CONTRACT_BROKERS.

The first half drives a broker's consumer directly (fetch, ack, nack, requeue,
delays, priorities, dead letters); the second runs a real Worker on it.
"""

import threading
import time

import pytest

import greenq
from greenq.message import Message, current_millis


def make_message(queue_name, actor_name="noop", args=(), **options):
    return Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options=options)


def fetch_all(consumer, expected, timeout=10):
    """Fetch until ``expected`` messages arrived (the broker may hand them over in several batches)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got += consumer.fetch(expected - len(got), 0.5)
    return got


# --- the consumer verbs ---------------------------------------------------------------


def test_enqueue_fetch_ack_round_trip(any_broker, queue_name):
    sent = any_broker.enqueue(make_message(queue_name, args=(1, "two", {"three": [3]})))
    consumer = any_broker.consume(queue_name)
    (got,) = fetch_all(consumer, 1)
    assert got.message == sent
    assert got.args == (1, "two", {"three": [3]})
    consumer.ack([got])
    assert consumer.fetch(1, 0.2) == []
    assert any_broker.queue_counts(queue_name)["in_flight"] == 0
    consumer.close()


def test_fetch_returns_at_most_count_and_times_out_empty(any_broker, queue_name):
    any_broker.declare_queue(queue_name)
    consumer = any_broker.consume(queue_name)
    start = time.monotonic()
    assert consumer.fetch(5, 0.3) == []
    assert time.monotonic() - start >= 0.25
    any_broker.enqueue_many([make_message(queue_name, args=(i,)) for i in range(10)])
    batch = consumer.fetch(4, 5)  # returns as soon as any is there
    assert 1 <= len(batch) <= 4
    rest = fetch_all(consumer, 10 - len(batch))
    assert sorted(m.args[0] for m in batch + rest) == list(range(10))
    consumer.ack(batch + rest)
    consumer.close()


def test_higher_priority_is_fetched_first(any_broker, queue_name):
    @greenq.actor(queue_name=queue_name, priority=0, broker=any_broker)
    def low():
        pass

    @greenq.actor(queue_name=queue_name, priority=5, broker=any_broker)
    def high():
        pass

    for _ in range(3):
        low.send()
    high.send()
    consumer = any_broker.consume(queue_name)
    first = fetch_all(consumer, 1)
    assert first[0].actor_name == "high"
    consumer.ack(first + fetch_all(consumer, 3))
    consumer.close()


#: The delay of the delay test (ms): the checks before it is due need well under half of it.
DELAY = 3000


def test_delayed_message_is_held_by_the_broker_until_due(any_broker, queue_name):
    consumer = None
    for attempt in range(3):
        before = current_millis()
        sent = any_broker.enqueue(make_message(queue_name, args=(attempt,)), delay=DELAY)
        after = current_millis()
        eta = sent.options["eta"]
        assert before + DELAY <= eta <= after + DELAY
        consumer = consumer or any_broker.consume(queue_name)
        early = consumer.fetch(1, 0.2)
        counts = any_broker.queue_counts(queue_name)
        checked = current_millis()
        assert not early or checked >= eta, "delivered before it was due"
        # Both answers came before the first half of the delay ran out, so the message was provably
        # not due yet (nor, on RabbitMQ, between two rungs of the delay ladder, whose first hop comes
        # after at least half of the delay): it must have been held and counted as delayed.
        if checked < before + DELAY // 2:
            break
        # The machine stalled through the window: nothing was proved; let this one come and try again.
        consumer.ack(early or fetch_all(consumer, 1, timeout=DELAY / 1000 + 10))
    else:
        pytest.fail(f"the machine stalled past {DELAY // 2} ms three times in a row")
    assert early == []
    assert counts["delayed"] == 1 and counts["ready"] == 0, counts
    (got,) = fetch_all(consumer, 1, timeout=DELAY / 1000 + 10)
    assert got.message_id == sent.message_id
    assert current_millis() >= eta
    consumer.ack([got])
    consumer.close()


def test_nack_dead_letters_with_the_failure(any_broker, queue_name):
    any_broker.enqueue(make_message(queue_name))
    consumer = any_broker.consume(queue_name)
    (got,) = fetch_all(consumer, 1)
    got.fail("ValueError: boom")
    got.options["failure"] = got.failure
    got.options["failed_at"] = current_millis()
    consumer.nack([got])
    (dead,) = any_broker.dead_letters_of(queue_name)
    assert dead.message_id == got.message_id
    assert dead.options["failure"] == "ValueError: boom"
    assert any_broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    assert any_broker.requeue_dead(queue_name) == 1
    (again,) = fetch_all(consumer, 1)
    assert again.message_id == got.message_id
    consumer.nack([again])
    assert any_broker.purge_dead(queue_name) == 1
    assert any_broker.dead_letters_of(queue_name) == []
    consumer.close()


def test_requeue_and_close_return_messages(any_broker, queue_name):
    any_broker.enqueue_many([make_message(queue_name, args=(i,)) for i in range(3)])
    consumer = any_broker.consume(queue_name)
    got = fetch_all(consumer, 3)
    consumer.requeue(got[:1])
    consumer.close()  # holds two more: they go back too
    other = any_broker.consume(queue_name)
    again = fetch_all(other, 3)
    assert sorted(m.args[0] for m in again) == [0, 1, 2]
    other.ack(again)
    other.close()


def test_undecodable_payloads_are_dead_lettered_not_delivered(any_broker, queue_name):
    any_broker.declare_queue(queue_name)
    any_broker.enqueue_raw(queue_name, b"{not json")
    any_broker.enqueue_raw(queue_name, b'{"queue_name": "x"}')
    good = any_broker.enqueue(make_message(queue_name))
    consumer = any_broker.consume(queue_name)
    got = fetch_all(consumer, 1)
    assert [m.message_id for m in got] == [good.message_id]
    consumer.ack(got)
    deadline = time.monotonic() + 5
    while len(any_broker.dead_letters_of(queue_name)) < 2 and time.monotonic() < deadline:
        consumer.fetch(1, 0.2)
    failures = sorted(m.options["failure"] for m in any_broker.dead_letters_of(queue_name))
    assert len(failures) == 2 and all(f.startswith("DecodeError") for f in failures), failures
    consumer.close()


def test_flush_drops_ready_delayed_and_dead(any_broker, queue_name):
    any_broker.enqueue(make_message(queue_name))
    any_broker.enqueue(make_message(queue_name), delay=60000)
    any_broker.flush(queue_name)
    assert any_broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}


# --- with a worker --------------------------------------------------------------------


@pytest.fixture
def worker_on(any_broker):
    workers = []

    def start(**kwargs):
        kwargs.setdefault("worker_timeout", 100)
        worker = greenq.Worker(any_broker, **kwargs)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5000)


def test_worker_runs_every_message_once(any_broker, worker_on, queue_name, recorder):
    @greenq.actor(queue_name=queue_name, broker=any_broker)
    def record(i):
        recorder.add(i)

    record.send_many([(i,) for i in range(50)])
    worker_on(worker_threads=10)
    calls = recorder.wait_for(50)
    assert sorted(calls) == list(range(50))


def test_two_workers_share_a_queue_without_duplicates(any_broker, worker_on, queue_name, recorder):
    @greenq.actor(queue_name=queue_name, broker=any_broker)
    def record(i):
        recorder.add(i)

    worker_on(worker_threads=4)
    worker_on(worker_threads=4)
    for i in range(40):
        record.send(i)
    calls = recorder.wait_for(40)
    assert sorted(calls) == list(range(40))


def test_failure_is_retried_then_dead_lettered(any_broker, worker_on, queue_name, recorder):
    @greenq.actor(queue_name=queue_name, broker=any_broker, max_retries=2, min_backoff=100, max_backoff=200)
    def flaky():
        recorder.add(time.monotonic())
        raise ValueError("always")

    message = flaky.send()
    worker_on()
    recorder.wait_for(3)
    deadline = time.monotonic() + 10
    while not any_broker.dead_letters_of(queue_name) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the broker's state, which has no event to wait on
    (dead,) = any_broker.dead_letters_of(queue_name)
    assert dead.message_id == message.message_id
    assert dead.options["retries"] == 2
    assert dead.options["failure"] == "ValueError: always"
    assert "Traceback" in dead.options["traceback"]
    assert len(recorder.calls) == 3


def test_graceful_stop_requeues_fetched_messages(any_broker, queue_name):
    started = threading.Event()
    release = threading.Event()
    done = []

    @greenq.actor(queue_name=queue_name, broker=any_broker)
    def block(i):
        started.set()
        release.wait(10)
        done.append(i)

    block.send_many([(i,) for i in range(6)])
    worker = greenq.Worker(any_broker, worker_threads=1, prefetch_buffer=3, worker_timeout=100)
    worker.start()
    assert started.wait(10)
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 10000})
    stopper.start()
    assert worker.stopping.wait(10)
    release.set()
    stopper.join(15)
    assert not stopper.is_alive()
    assert len(done) == 1  # only the message that had started ran
    counts = any_broker.queue_counts(queue_name)
    assert counts["ready"] == 5 and counts["in_flight"] == 0, counts
