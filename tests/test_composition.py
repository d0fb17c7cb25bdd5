"""Pipelines, groups and completion callbacks, with results, on the stub, Redis and SQLite."""

import threading

import pytest

import greenq
from greenq.errors import ResultFailure, ResultTimeout
from greenq.middleware import GroupCallbacks
from greenq.results import Results, StubBackend

from conftest import make_broker
from support import REDIS_URL


def _results_backend(kind, broker):
    if kind == "stub":
        return StubBackend()
    if kind == "sqlite":
        from greenq.results.sqlite import SqliteBackend

        return SqliteBackend(broker=broker)
    from greenq.results.redis import RedisBackend

    return RedisBackend(REDIS_URL, namespace=broker.namespace)


@pytest.fixture(params=["stub", "redis", "sqlite"])
def setup(request, tmp_path):
    broker, cleanup = make_broker(request.param, tmp_path)
    results = _results_backend(request.param, broker)
    broker.add_middleware(Results(backend=results, store_results=True))
    greenq.set_broker(broker)
    worker = greenq.Worker(broker, worker_threads=16, worker_timeout=100)
    yield broker, worker
    worker.stop(timeout=5000)
    if request.param == "redis":  # results and group completions live beside the queues
        keys = [k for pattern in (f"{broker.namespace}:*", f"{{{broker.namespace}:*")
                for k in broker.client.scan_iter(pattern)]
        if keys:
            broker.client.delete(*keys)
        results.close()
    cleanup()


def test_three_step_pipeline_passes_results_on(setup, queue_name):
    broker, worker = setup

    @greenq.actor(queue_name=queue_name)
    def add_one(x):
        return x + 1

    @greenq.actor(queue_name=queue_name)
    def double(x):
        return x * 2

    @greenq.actor(queue_name=queue_name)
    def describe(x, unit="cm"):
        return f"{x} {unit}"

    pipe = greenq.pipeline([add_one.message(4), double.message(), describe.message_with_options(kwargs={"unit": "m"})])
    assert len(pipe) == 3
    worker.start()
    pipe.run()
    assert pipe.get_result(block=True, timeout=20000) == "10 m"
    assert pipe.get_results(block=True, timeout=20000) == [5, 10, "10 m"]
    assert pipe.completed and pipe.completed_count == 3


def test_pipe_ignore_and_the_or_operator(setup, queue_name):
    broker, worker = setup

    @greenq.actor(queue_name=queue_name)
    def first():
        return "ignored"

    @greenq.actor(queue_name=queue_name)
    def second(*args):
        return list(args)

    pipe = greenq.pipeline([first.message()]) | second.message_with_options(args=(1,), pipe_ignore=True)
    worker.start()
    assert pipe.run().get_result(block=True, timeout=20000) == [1]


def test_a_failing_step_stops_the_pipeline(setup, queue_name):
    broker, worker = setup
    ran = []

    @greenq.actor(queue_name=queue_name)
    def ok():
        return 1

    @greenq.actor(queue_name=queue_name)
    def broken(x):
        raise ValueError(f"bad {x}")

    @greenq.actor(queue_name=queue_name)
    def never(x):
        ran.append(x)

    pipe = greenq.pipeline([ok.message(), broken.message(), never.message()])
    worker.start()
    pipe.run()
    with pytest.raises(ResultFailure, match="bad 1"):
        pipe.get_results(block=True, timeout=20000)
    with pytest.raises(ResultTimeout):
        pipe.get_result(block=True, timeout=200)
    assert ran == [] and pipe.completed_count == 2 and not pipe.completed


def test_group_of_100_with_results_and_a_completion_callback(setup, queue_name):
    broker, worker = setup
    done = threading.Event()
    seen = []

    @greenq.actor(queue_name=queue_name)
    def square(x):
        return x * x

    @greenq.actor(queue_name=queue_name)
    def finished(label):
        seen.append(label)
        done.set()

    g = greenq.group([square.message(i) for i in range(100)])
    g.add_completion_callback(finished.message("all squared"))
    worker.start()
    g.run()
    assert g.get_results(block=True, timeout=60000) == [i * i for i in range(100)]
    assert done.wait(30)
    g.wait(timeout=1000)
    assert g.completed and g.completed_count == 100
    worker.join(10000)
    assert seen == ["all squared"]  # exactly once


def test_group_of_pipelines(setup, queue_name):
    broker, worker = setup
    done = threading.Event()

    @greenq.actor(queue_name=queue_name)
    def inc(x):
        return x + 1

    @greenq.actor(queue_name=queue_name)
    def callback():
        done.set()

    g = greenq.group([greenq.pipeline([inc.message(i), inc.message()]) for i in range(5)] + [inc.message(100)])
    g.add_completion_callback(callback.message())
    worker.start()
    assert g.run().get_results(block=True, timeout=30000) == [2, 3, 4, 5, 6, 101]
    assert done.wait(30)


def test_a_redelivered_child_completes_its_group_once(stub_broker):
    calls = []

    @greenq.actor(broker=stub_broker, queue_name="cb")
    def callback():
        calls.append(1)

    middleware = stub_broker.get_middleware(GroupCallbacks)
    g = greenq.group([callback.message(), callback.message()], broker=stub_broker)
    g.add_completion_callback(callback.message())
    first, second = [greenq.MessageProxy(m) for m in g._first_messages()]
    for message in (first, first, second, second):  # each child finishes twice, as after a redelivery
        middleware.after_process_message(stub_broker, message, result=None)
    assert stub_broker.queue_counts("cb")["ready"] == 1


def test_composition_refuses_bad_children():
    with pytest.raises(TypeError, match="message"):
        greenq.pipeline([1])
    with pytest.raises(ValueError, match="at least one"):
        greenq.group([])


class _Acks:
    """Event consumer: the actor of each acknowledged message (its result is stored by then)."""

    def __init__(self, recorder):
        self.recorder = recorder

    def on_ack(self, message):
        self.recorder.add(message.actor_name)


class _Waiter:
    """Calls ``composed.wait()`` in a thread; notes when it is inside and what held when it returned."""

    def __init__(self, broker, composed, released):
        self.composed = composed
        self.released = released
        self.inside = threading.Event()
        self.returned = threading.Event()
        self.outcome = None
        backend = broker.get_middleware(Results).backend
        original = backend.get_result

        def get_result(message, **kwargs):
            if kwargs.get("block"):
                self.inside.set()
            return original(message, **kwargs)

        backend.get_result = get_result  # this backend instance only; the fixture drops it afterwards
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.composed.wait(timeout=60000)
            # Only now may every result be in: read them without blocking, and note the gate's state.
            self.outcome = ("returned", self.released.is_set(), self.composed.completed)
        except Exception as e:
            self.outcome = ("raised", repr(e))
        finally:
            self.returned.set()


def test_pipeline_wait_blocks_until_the_last_step_has_run(setup, queue_name, recorder):
    broker, worker = setup
    broker.add_event_consumer(_Acks(recorder))
    release = threading.Event()

    @greenq.actor(queue_name=queue_name)
    def fetch(x):
        return x + 1

    @greenq.actor(queue_name=queue_name)
    def parse(x):
        return x * 10

    @greenq.actor(queue_name=queue_name)
    def store(x):
        assert release.wait(60), "the test never released the last step"
        return f"stored {x}"

    pipe = greenq.pipeline([fetch.message(1), parse.message(), store.message()])
    worker.start()
    pipe.run()
    waiter = _Waiter(broker, pipe, release)
    assert waiter.inside.wait(30), "wait() never asked for a result"
    assert sorted(recorder.wait_for(2)) == ["fetch", "parse"]  # two steps done, the last one held
    with pytest.raises(ResultTimeout):
        pipe.wait(timeout=300)  # blocks for its timeout, then says so
    assert not waiter.returned.is_set() and pipe.completed_count == 2
    release.set()
    assert waiter.returned.wait(60)
    assert waiter.outcome == ("returned", True, True)
    assert pipe.get_result() == "stored 20"


def test_group_wait_blocks_until_every_child_has_run(setup, queue_name, recorder):
    broker, worker = setup
    broker.add_event_consumer(_Acks(recorder))
    release_most, release_last = threading.Event(), threading.Event()

    @greenq.actor(queue_name=queue_name)
    def work(i):
        gate = release_last if i == 0 else release_most
        assert gate.wait(60), f"the test never released child {i}"
        return i * 3

    g = greenq.group([work.message(i) for i in range(10)])
    worker.start()
    g.run()
    waiter = _Waiter(broker, g, release_last)
    assert waiter.inside.wait(30), "wait() never asked for a result"
    with pytest.raises(ResultTimeout):
        g.wait(timeout=300)  # nothing is done yet
    assert not waiter.returned.is_set() and g.completed_count == 0
    release_most.set()
    recorder.wait_for(9)  # every child but the first has finished and stored its result
    with pytest.raises(ResultTimeout):
        g.wait(timeout=300)  # one child is still running
    assert not waiter.returned.is_set() and g.completed_count == 9
    release_last.set()
    assert waiter.returned.wait(60)
    assert waiter.outcome == ("returned", True, True)
    assert g.get_results() == [i * 3 for i in range(10)]
