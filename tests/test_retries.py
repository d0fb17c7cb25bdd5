"""Retries: every backoff strategy's delays, retry_when, retry_on (stub, Redis, SQLite), Retry, and dead-lettering."""

import threading

import pytest

import greenq
from greenq.middleware import Retries, compute_backoff


@pytest.mark.parametrize("strategy, expected", [
    ("constant", [1000, 1000, 1000, 1000, 1000]),
    ("linear", [1000, 2000, 3000, 4000, 5000]),
    ("spread_linear", [1000, 3250, 5500, 7750, 10000]),
    ("exponential", [1000, 2000, 4000, 8000, 10000]),
    ("spread_exponential", [1000, 1778, 3162, 5623, 10000]),
])
def test_backoff_strategies_without_jitter(strategy, expected):
    delays = [compute_backoff(attempt, strategy=strategy, min_backoff=1000, max_backoff=10000,
                              max_retries=5, jitter=False) for attempt in range(1, 6)]
    assert delays == expected


def test_jitter_adds_at_most_ten_percent():
    delays = {compute_backoff(3, strategy="constant", min_backoff=1000, max_backoff=10000) for _ in range(200)}
    assert all(1000 <= d <= 1100 for d in delays)
    assert len(delays) > 1


def test_backoff_never_exceeds_max_even_after_many_attempts():
    assert compute_backoff(500, strategy="exponential", min_backoff=100, max_backoff=5000, jitter=False) == 5000


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="fibonacci"):
        compute_backoff(1, strategy="fibonacci")
    with pytest.raises(ValueError, match="at least|>= 100"):
        Retries(min_backoff=10)


def _retry_delays(broker):
    """Record the delay of each retry the Retries middleware asks the broker for."""
    delays = []
    original = broker.enqueue

    def enqueue(message, *, delay=None):
        if message.options.get("retries"):
            delays.append(delay)
        return original(message, delay=delay)

    broker.enqueue = enqueue
    return delays


def test_retries_use_the_actors_strategy_then_dead_letter(stub_broker, stub_worker):
    delays = _retry_delays(stub_broker)
    attempts = []

    @greenq.actor(broker=stub_broker, max_retries=3, min_backoff=100, max_backoff=400,
                  backoff_strategy="linear", jitter=False)
    def fails():
        attempts.append(1)
        raise RuntimeError("nope")

    fails.send()
    stub_broker.join(fails.queue_name)
    stub_worker.join()
    assert len(attempts) == 4
    assert delays == [100, 200, 300]
    (dead,) = stub_broker.dead_letters
    assert dead.options["retries"] == 3 and dead.options["failure"] == "RuntimeError: nope"


def test_retry_when_decides_instead_of_max_retries(stub_broker, stub_worker):
    seen = []

    def should_retry(retries_so_far, exception):
        seen.append((retries_so_far, type(exception).__name__))
        return retries_so_far < 2 and isinstance(exception, TimeoutError)

    @greenq.actor(broker=stub_broker, retry_when=should_retry, min_backoff=100, max_backoff=100)
    def flaky():
        raise TimeoutError("slow")

    flaky.send()
    stub_broker.join(flaky.queue_name)
    stub_worker.join()
    assert seen == [(0, "TimeoutError"), (1, "TimeoutError"), (2, "TimeoutError")]
    assert len(stub_broker.dead_letters) == 1


def test_default_is_no_retry(stub_broker, stub_worker):
    calls = []

    @greenq.actor(broker=stub_broker)
    def once():
        calls.append(1)
        raise ValueError("bad input")

    once.send()
    with pytest.raises(ValueError, match="bad input"):
        stub_broker.join(once.queue_name, fail_fast=True)
    stub_worker.join()
    assert calls == [1]


def test_raising_retry_asks_for_its_delay(stub_broker, stub_worker):
    delays = _retry_delays(stub_broker)
    done = threading.Event()

    @greenq.actor(broker=stub_broker, max_retries=1)
    def later():
        if done.is_set():
            return
        done.set()
        raise greenq.Retry("not yet", delay=150)

    later.send()
    stub_broker.join(later.queue_name)
    stub_worker.join()
    assert delays == [150]
    assert stub_broker.dead_letters == []


def test_successful_retry_leaves_no_dead_letter(stub_broker, stub_worker):
    attempts = []

    @greenq.actor(broker=stub_broker, max_retries=2, min_backoff=100, max_backoff=100)
    def second_time_lucky():
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionResetError("flaky network")

    message = second_time_lucky.send()
    stub_broker.join(second_time_lucky.queue_name, fail_fast=True)
    stub_worker.join()
    assert len(attempts) == 2 and stub_broker.dead_letters == []
    assert message.message_id  # the retry kept the id (checked by the broker having nothing left)


class _Deaths:
    """Event consumer: each message that goes to the dead letters."""

    def __init__(self, recorder):
        self.recorder = recorder

    def on_dead(self, message):
        self.recorder.add(message.args[0])


@pytest.mark.parametrize("any_broker", ["stub", "redis", "sqlite"], indirect=True)
def test_retry_on_retries_only_the_listed_errors(any_broker, queue_name, recorder):
    attempts = {"timeout": 0, "value": 0}
    any_broker.add_event_consumer(_Deaths(recorder))

    @greenq.actor(broker=any_broker, queue_name=queue_name, max_retries=2, min_backoff=100, max_backoff=100,
                  retry_on=(TimeoutError,))
    def flaky(kind):
        attempts[kind] += 1
        raise TimeoutError("slow") if kind == "timeout" else ValueError("wrong")

    worker = greenq.Worker(any_broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        flaky.send("timeout")
        flaky.send("value")
        assert sorted(recorder.wait_for(2, timeout=30)) == ["timeout", "value"]
        worker.join(20000)
    finally:
        worker.stop(timeout=5000)
    assert attempts == {"timeout": 3, "value": 1}  # listed: retried twice; not listed: straight to the dead
    dead = {m.args[0]: m.options for m in any_broker.dead_letters_of(queue_name)}
    assert dead["timeout"]["failure"] == "TimeoutError: slow" and dead["timeout"]["retries"] == 2
    assert dead["value"]["failure"] == "ValueError: wrong" and not dead["value"].get("retries")
    assert any_broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 2}


def test_retry_on_is_checked_at_decoration():
    with pytest.raises(greenq.ActorOptionError, match="retry_on"):
        @greenq.actor(retry_on=("TimeoutError",))
        def f():
            pass
