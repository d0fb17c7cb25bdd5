"""The worker on the StubBroker, in threads mode (gevent mode: tests/test_gevent_worker.py)."""

import logging
import threading
import time

import pytest

import greenq
from greenq.brokers.local import LocalBroker
from greenq.middleware import CurrentMessage, Middleware, TimeLimit

from support import Recorder, enqueue_twice


def test_higher_priority_runs_first_when_work_competes(stub_broker):
    order = []
    started = threading.Event()
    gate = threading.Event()

    @greenq.actor(broker=stub_broker, queue_name="shared")
    def blocker():
        started.set()
        gate.wait(10)

    @greenq.actor(broker=stub_broker, queue_name="shared", priority=0)
    def low(i):
        order.append(("low", i))

    @greenq.actor(broker=stub_broker, queue_name="shared", priority=9)
    def high(i):
        order.append(("high", i))

    blocker.send()
    worker = greenq.Worker(stub_broker, worker_threads=1, prefetch_buffer=10, worker_timeout=100)
    worker.start()
    try:
        assert started.wait(10)
        for i in range(3):
            low.send(i)
        for i in range(3):
            high.send(i)
        # The one pool thread is busy: wait until the worker holds all six, so only its
        # work queue decides the order (a deadline loop on broker state, which has no event).
        deadline = time.monotonic() + 10
        while stub_broker.queue_counts("shared")["in_flight"] < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stub_broker.queue_counts("shared")["in_flight"] == 7
        gate.set()
        stub_broker.join("shared")
        worker.join()
    finally:
        gate.set()
        worker.stop()
    assert order == [("high", 0), ("high", 1), ("high", 2), ("low", 0), ("low", 1), ("low", 2)]


def test_delayed_message_runs_after_its_delay(stub_broker, stub_worker):
    ran_at = []

    @greenq.actor(broker=stub_broker)
    def later():
        ran_at.append(time.time() * 1000)

    message = later.send_with_options(delay=300)
    stub_broker.join(later.queue_name)
    stub_worker.join()
    assert len(ran_at) == 1 and ran_at[0] >= message.options["eta"]


def test_time_limit_interrupts_a_busy_thread(stub_broker, stub_worker):
    outcome = []

    @greenq.actor(broker=stub_broker, time_limit=200)
    def spin():
        try:
            while True:  # pure bytecode: the async exception lands between instructions
                pass
        except greenq.TimeLimitExceeded:
            outcome.append("interrupted")
            raise

    spin.send()
    stub_broker.join(spin.queue_name)
    stub_worker.join()
    assert outcome == ["interrupted"]
    (dead,) = stub_broker.dead_letters
    assert dead.options["failure"].startswith("TimeLimitExceeded")


def test_time_limit_caught_by_the_actor_lets_it_clean_up(stub_broker, stub_worker):
    steps = []

    @greenq.actor(broker=stub_broker, time_limit=200)
    def long_running():
        try:
            steps.append("setup")
            for _ in range(500):  # under threads an interrupt lands between calls, not inside one
                time.sleep(0.01)
            steps.append("launch")
        except greenq.TimeLimitExceeded:
            steps.append("teardown")

    long_running.send()
    stub_broker.join(long_running.queue_name)
    stub_worker.join()
    assert steps == ["setup", "teardown"]
    assert stub_broker.dead_letters == []  # it handled the interrupt and returned


def test_two_deliveries_of_one_message_each_keep_their_own_time_limit(stub_broker, stub_worker):
    # A redelivery or a scheduler's second copy of a tick runs beside the first under the same
    # message id; the copy that finishes first must not take the other's limit with it.
    lock, starts, outcome = threading.Lock(), [], []
    second_started, interrupted = threading.Event(), threading.Event()

    @greenq.actor(broker=stub_broker, time_limit=1000, max_retries=0)
    def twice():
        with lock:
            starts.append(len(starts))
            first = len(starts) == 1
        if first:
            assert second_started.wait(10)
            outcome.append("first returned")
            return
        second_started.set()
        try:
            for _ in range(1000):
                time.sleep(0.01)
            outcome.append("second ran on")
        except greenq.TimeLimitExceeded:
            outcome.append("second interrupted")
            interrupted.set()
            raise

    message = enqueue_twice(stub_broker, twice)
    assert interrupted.wait(8), outcome  # at its 1 s limit, not after its 10 s of sleeps
    stub_broker.join(twice.queue_name)
    stub_worker.join()
    assert outcome == ["first returned", "second interrupted"]
    (dead,) = stub_broker.dead_letters
    assert dead.message_id == message.message_id and dead.options["failure"].startswith("TimeLimitExceeded")
    time_limit = stub_broker.get_middleware(TimeLimit)
    # neither delivery is left behind, and nothing is left for the watchdog
    assert time_limit._bucket_of == {} and time_limit._expired == {}
    assert all(running == {} for running in time_limit._running.values())


def test_age_limit_dead_letters_old_messages_without_running_them(stub_broker, stub_worker):
    ran = []

    @greenq.actor(broker=stub_broker, max_age=1000)
    def fresh_only():
        ran.append(1)

    old = fresh_only.message().copy(message_timestamp=int(time.time() * 1000) - 5000)
    stub_broker.enqueue(old)
    fresh_only.send()
    stub_broker.join(fresh_only.queue_name)
    stub_worker.join()
    assert ran == [1]
    (dead,) = stub_broker.dead_letters
    assert dead.message_id == old.message_id and dead.options["failure"].startswith("AgeLimit")


def test_unknown_actor_and_undecodable_payloads_are_dead_lettered_and_logged(stub_broker, stub_worker, caplog):
    @greenq.actor(broker=stub_broker)
    def known():
        pass

    ghost = known.message().copy(actor_name="ghost")
    stub_broker.enqueue(ghost)
    stub_broker.enqueue_raw("default", b'{"truncated": ')
    known.send()
    with caplog.at_level(logging.ERROR):
        stub_broker.join("default")
        stub_worker.join()
    failures = sorted(m.options["failure"] for m in stub_broker.dead_letters)
    assert failures[0].startswith("ActorNotFound: no actor named 'ghost'")
    assert failures[1].startswith("DecodeError")
    assert ghost.message_id in caplog.text and "ghost" in caplog.text
    assert "undecodable" in caplog.text


def test_a_failing_middleware_hook_is_logged_and_processing_goes_on(stub_broker, stub_worker, caplog):
    class Broken(Middleware):
        def before_process_message(self, broker, message):
            raise RuntimeError("middleware bug")

        def after_process_message(self, broker, message, *, result=None, exception=None):
            raise RuntimeError("another bug")

    stub_broker.add_middleware(Broken())
    ran = []

    @greenq.actor(broker=stub_broker)
    def work():
        ran.append(1)

    with caplog.at_level(logging.ERROR):
        work.send()
        work.send()
        stub_broker.join(work.queue_name)
        stub_worker.join()
    assert ran == [1, 1]
    assert "middleware bug" in caplog.text and "another bug" in caplog.text
    assert stub_broker.dead_letters == []


def test_enqueue_ack_and_nack_hooks_run_once_for_each_message_of_a_batch(stub_broker, stub_worker):
    # send_many and the settler hand the hooks whole batches; each message must still get its own call.
    calls = []

    class Spy(Middleware):
        def before_enqueue(self, broker, message, delay):
            calls.append(("before_enqueue", message.args[0], delay))

        def after_enqueue(self, broker, message, delay):
            calls.append(("after_enqueue", message.args[0], delay))

        def before_ack(self, broker, message):
            calls.append(("before_ack", message.args[0]))

        def after_ack(self, broker, message):
            calls.append(("after_ack", message.args[0]))

        def before_nack(self, broker, message):
            calls.append(("before_nack", message.args[0]))

        def after_nack(self, broker, message):
            calls.append(("after_nack", message.args[0]))

    stub_broker.add_middleware(Spy())

    @greenq.actor(broker=stub_broker, max_retries=0)
    def odd_fails(n):
        if n % 2:
            raise ValueError(n)

    odd_fails.send_many([(n,) for n in range(5)])
    assert calls == ([("before_enqueue", n, None) for n in range(5)]
                     + [("after_enqueue", n, None) for n in range(5)])
    stub_broker.join(odd_fails.queue_name)
    stub_worker.join()
    settled = sorted(calls[10:])
    assert settled == sorted([(hook, n) for n in (0, 2, 4) for hook in ("before_ack", "after_ack")]
                             + [(hook, n) for n in (1, 3) for hook in ("before_nack", "after_nack")])
    for n in range(5):  # each message's before hook ran ahead of its after hook
        verb = "nack" if n % 2 else "ack"
        assert calls.index((f"before_{verb}", n)) < calls.index((f"after_{verb}", n))


def test_shutdown_notification_reaches_opted_in_actors(stub_broker):
    started = threading.Event()
    outcome = []

    @greenq.actor(broker=stub_broker)
    def on_failure(message, details):
        pass

    @greenq.actor(broker=stub_broker, notify_shutdown=True, max_retries=1, on_failure=on_failure)
    def patient():
        started.set()
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except greenq.Shutdown:
            outcome.append("shutdown")
            raise

    patient.send()
    worker = greenq.Worker(stub_broker, worker_timeout=100)
    worker.start()
    assert started.wait(10)
    worker.stop(timeout=5000)
    assert outcome == ["shutdown"]
    # Unfinished work goes back as it came: not a retry (delayed), not dead, and no
    # on_failure message (it would be a second ready message on this queue).
    assert stub_broker.queue_counts(patient.queue_name) == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0}


def test_shutdown_notification_reaches_both_deliveries_of_one_message(stub_broker):
    started, outcome = Recorder(), Recorder()

    @greenq.actor(broker=stub_broker, notify_shutdown=True)
    def patient():
        started.add("started")
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except greenq.Shutdown:
            outcome.add("shutdown")
            raise

    enqueue_twice(stub_broker, patient)
    worker = greenq.Worker(stub_broker, worker_threads=2, worker_timeout=100)
    worker.start()
    started.wait_for(2, timeout=10)
    worker.stop(timeout=5000)
    assert outcome.calls == ["shutdown", "shutdown"]
    assert stub_broker.queue_counts(patient.queue_name)["ready"] == 2  # both went back as they came


def test_shutdown_timeout_requeues_work_that_did_not_finish(stub_broker):
    started = threading.Event()

    @greenq.actor(broker=stub_broker)
    def stubborn():
        started.set()
        for _ in range(300):  # short sleeps: the Shutdown sent past the timeout lands between them
            time.sleep(0.01)

    message = stubborn.send()
    worker = greenq.Worker(stub_broker, worker_timeout=100)
    worker.start()
    assert started.wait(10)
    worker.stop(timeout=200)
    counts = stub_broker.queue_counts(stubborn.queue_name)
    assert counts["ready"] == 1 and counts["in_flight"] == 0
    assert stub_broker.dead_letters == []
    assert message.message_id


def test_work_cut_off_by_the_shutdown_timeout_is_requeued_once_not_also_retried(stub_broker):
    started = threading.Event()

    @greenq.actor(broker=stub_broker)
    def on_failure(message, details):
        pass

    @greenq.actor(broker=stub_broker, max_retries=3, min_backoff=100, on_failure=on_failure)
    def stubborn():
        started.set()
        for _ in range(300):
            time.sleep(0.01)

    finished = threading.Event()

    class LastWord(greenq.Middleware):
        """Placed first, so its after-hooks run after every other middleware's (Retries' included)."""

        def after_process_message(self, broker, message, *, result=None, exception=None):
            finished.set()

        def after_skip_message(self, broker, message):
            finished.set()

    stub_broker.add_middleware(LastWord(), before=type(stub_broker.middleware[0]))
    stubborn.send()
    worker = greenq.Worker(stub_broker, worker_timeout=100)
    worker.start()
    assert started.wait(10)
    worker.stop(timeout=200)
    assert finished.wait(10)  # the interrupted actor has ended and every hook has run
    # One copy back on the queue: no retry copy (delayed), no on_failure message (a second ready one).
    assert stub_broker.queue_counts(stubborn.queue_name) == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0}


def test_pause_stops_fetching_and_resume_goes_on(stub_broker, stub_worker, recorder):
    @greenq.actor(broker=stub_broker)
    def record(i):
        recorder.add(i)

    record.send(0)
    recorder.wait_for(1)
    stub_worker.pause()
    stub_worker.join()
    # a paused consumer may finish the fetch it had begun; after that nothing more is fetched
    record.send(1)
    record.send(2)
    stub_worker.resume()
    assert sorted(recorder.wait_for(3)) == [0, 1, 2]


def test_callbacks_on_success_and_on_failure(stub_broker, stub_worker):
    seen = []

    @greenq.actor(broker=stub_broker)
    def succeeded(message, result):
        seen.append(("ok", message["actor_name"], result))

    @greenq.actor(broker=stub_broker)
    def failed(message, error):
        seen.append(("failed", message["actor_name"], error))

    @greenq.actor(broker=stub_broker, on_success=succeeded, on_failure="failed")
    def divide(a, b):
        return a / b

    divide.send(6, 3)
    divide.send(1, 0)
    stub_broker.join("default")
    stub_worker.join()
    assert sorted(seen, key=str) == sorted([
        ("ok", "divide", 2.0),
        ("failed", "divide", {"type": "ZeroDivisionError", "message": "division by zero"}),
    ], key=str)


def test_current_message_is_visible_to_the_actor(stub_broker, stub_worker):
    stub_broker.add_middleware(CurrentMessage())
    seen = []

    @greenq.actor(broker=stub_broker)
    def whoami():
        seen.append(CurrentMessage.get_current_message().message_id)

    message = whoami.send()
    stub_broker.join(whoami.queue_name)
    stub_worker.join()
    assert seen == [message.message_id]


def test_worker_consumes_only_its_queues(stub_broker, recorder):
    @greenq.actor(broker=stub_broker, queue_name="mine")
    def mine():
        recorder.add("mine")

    @greenq.actor(broker=stub_broker, queue_name="theirs")
    def theirs():
        recorder.add("theirs")

    worker = greenq.Worker(stub_broker, queues=["mine"], worker_timeout=100)
    worker.start()
    try:
        theirs.send()
        mine.send()
        stub_broker.join("mine")
        worker.join()
    finally:
        worker.stop()
    assert recorder.calls == ["mine"]
    assert stub_broker.queue_counts("theirs")["ready"] == 1


def test_worker_join_times_out_with_a_clear_error(stub_broker):
    gate = threading.Event()

    @greenq.actor(broker=stub_broker)
    def wait_for_gate():
        gate.wait(10)

    worker = greenq.Worker(stub_broker, worker_timeout=100)
    worker.start()
    try:
        wait_for_gate.send()
        with pytest.raises(greenq.QueueJoinTimeout):
            stub_broker.join("default", timeout=100)
        gate.set()
        stub_broker.join("default")
        worker.join(timeout=5000)
    finally:
        gate.set()
        worker.stop()


def test_local_broker_runs_actors_at_send_time():
    broker = LocalBroker()
    seen = []

    @greenq.actor(broker=broker)
    def add(x, y):
        seen.append(x + y)
        return x + y

    @greenq.actor(broker=broker)
    def boom():
        raise ValueError("raised to the sender")

    add.send(1, 2)
    assert seen == [3]
    with pytest.raises(ValueError, match="raised to the sender"):
        boom.send()


def test_a_failed_message_that_cannot_be_encoded_again_is_still_dead_lettered(stub_broker, stub_worker):
    """A payload nested near the recursion limit decodes when fetched but may not encode when
    dead-lettered deeper in the stack; it must not stay in flight. An encoder that fails the
    same way on that payload makes the case deterministic."""
    from greenq.message import JSONEncoder, set_encoder

    class DeepOnReencode(JSONEncoder):
        def encode(self, data):
            if data.get("args") == ["too deep"]:
                raise RecursionError("maximum recursion depth exceeded while encoding a JSON object")
            return super().encode(data)

    @greenq.actor(broker=stub_broker)
    def boom(value):
        raise ValueError("rejected")

    raw = boom.message("too deep").encode()  # written before the encoder starts failing
    set_encoder(DeepOnReencode())
    try:
        stub_broker.enqueue_raw("default", raw)
        stub_broker.join("default")
        stub_worker.join()
    finally:
        set_encoder(JSONEncoder())
    (dead,) = stub_broker.dead_letters
    assert dead.args == () and dead.actor_name == "boom"
    assert dead.options["failure"].startswith("ValueError: rejected (arguments and options dropped:")
    assert stub_broker.queue_counts("default")["in_flight"] == 0


def test_a_failed_message_nested_too_deep_is_dead_lettered_without_its_arguments(stub_broker, stub_worker):
    """Whether such a payload encodes again depends on the stack depth of the nack, so the
    worker goes by nesting depth instead of a trial encode."""
    from greenq.worker import MAX_STORED_DEPTH

    @greenq.actor(broker=stub_broker)
    def boom(value):
        raise ValueError("rejected")

    deep = []
    inner = deep
    for _ in range(MAX_STORED_DEPTH + 5):
        inner.append([])
        inner = inner[0]
    boom.send(deep)
    boom.send([[["shallow"]]])
    stub_broker.join("default")
    stub_worker.join()
    dead = sorted(stub_broker.dead_letters, key=lambda m: len(m.args))
    assert dead[0].args == () and "nested" in dead[0].options["failure"]
    assert dead[1].args == ([[["shallow"]]],) and dead[1].options["failure"] == "ValueError: rejected"


def test_messages_that_finish_while_others_run_are_acked_together(stub_broker, monkeypatch):
    """The settler holds a small batch back while other actors run, so IO-bound jobs share ack calls."""
    from greenq import worker as worker_module

    monkeypatch.setattr(worker_module, "SETTLE_LINGER", 60.0)  # only stop() ends the wait here
    gates = {name: threading.Event() for name in ("a", "b", "anchor")}
    started = {name: threading.Event() for name in gates}
    finished = {name: threading.Event() for name in gates}

    @greenq.actor(broker=stub_broker)
    def step(name):
        started[name].set()
        gates[name].wait(10)

    class Finished(Middleware):
        def after_process_message(self, broker, message, *, result=None, exception=None):
            finished[message.args[0]].set()

    stub_broker.add_middleware(Finished())
    ids = {name: step.send(name).message_id for name in gates}
    worker = greenq.Worker(stub_broker, worker_threads=3, worker_timeout=100)
    worker.start()
    acked = []
    try:
        assert all(event.wait(10) for event in started.values())
        consumer = worker._runners["default"].consumer
        ack = consumer.ack
        monkeypatch.setattr(consumer, "ack", lambda messages: (acked.append({m.message_id for m in messages}),
                                                               ack(messages)))
        gates["a"].set()
        assert finished["a"].wait(10)
        gates["b"].set()
        assert finished["b"].wait(10)
        assert acked == []  # "anchor" still runs: a and b wait for company
        gates["anchor"].set()
        assert finished["anchor"].wait(10)
    finally:
        for gate in gates.values():
            gate.set()
        worker.stop()
    assert {ids["a"], ids["b"]} <= acked[0]  # one call for both
    assert set().union(*acked) == set(ids.values())
    assert stub_broker.queue_counts("default")["in_flight"] == 0


def test_a_finished_message_frees_its_slot_before_its_ack_is_sent():
    from greenq.worker import _Capacity

    capacity = _Capacity(2, slack=1)
    assert capacity.reserve(2) == 2
    capacity.fill(2, 2)
    capacity.finish(1)  # ran; its ack not sent yet
    assert capacity.reserve(2) == 1  # the next fetch need not wait for the broker's answer
    capacity.fill(1, 1)
    assert not capacity.wait_idle(timeout=0)  # but the worker is not idle until the ack is sent
    capacity.finish(2)
    capacity.release(0, 3)
    assert capacity.busy() == 0 and capacity.wait_idle(timeout=0)


def test_acks_the_broker_does_not_take_hold_fetching_back_past_the_slack():
    from greenq.worker import _Capacity

    capacity = _Capacity(4, slack=2)
    assert capacity.reserve(4) == 4
    capacity.fill(4, 4)
    capacity.finish(4)  # four ran, none acked yet: two slots come free at once, two wait for the broker
    assert capacity.settling == 4 and capacity._free() == 2
    assert capacity.reserve(4) == 2
    capacity.fill(2, 2)
    assert capacity._free() == 0  # held + unacked beyond the slack = the whole capacity: a reserve() would wait
    capacity.release(0, 4)
    assert capacity._free() == 2
