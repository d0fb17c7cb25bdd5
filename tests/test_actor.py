"""@actor: options checked at decoration, inline calls, send, and binding to brokers."""

import pytest

import greenq
from greenq.brokers.stub import StubBroker
from greenq.errors import ActorNotFound, ActorOptionError, EncodeError


def test_bare_and_configured_decorators(stub_broker):
    @greenq.actor(broker=stub_broker)
    def add(x, y):
        return x + y

    @greenq.actor(queue_name="low", priority=3, max_retries=2, broker=stub_broker, actor_name="adder")
    def add2(x, y):
        """Adds."""
        return x + y

    assert add(1, 2) == 3 and add2(2, 2) == 4  # calling runs inline
    assert (add.actor_name, add.queue_name, add.priority) == ("add", "default", 0)
    assert (add2.actor_name, add2.queue_name, add2.priority) == ("adder", "low", 3)
    assert add2.__doc__ == "Adds."
    assert add2.logger.name == f"{__name__}.adder"
    assert stub_broker.get_actor("adder") is add2
    assert {"default", "low"} <= stub_broker.get_declared_queues()


def test_bare_decorator_without_parentheses_follows_the_global_broker():
    @greenq.actor
    def later(x):
        return x

    broker = StubBroker()
    greenq.set_broker(broker)
    assert broker.get_actor("later") is later
    message = later.send(5)
    assert broker.queue_counts("default")["ready"] == 1
    assert message.args == (5,)


@pytest.mark.parametrize("options, says", [
    ({"max_retrys": 3}, "unknown option 'max_retrys'"),
    ({"max_retries": -1}, "bad value -1 for option 'max_retries'"),
    ({"max_retries": "3"}, "option 'max_retries'"),
    ({"min_backoff": 50}, "option 'min_backoff'"),
    ({"backoff_strategy": "fibonacci"}, "option 'backoff_strategy'"),
    ({"jitter": 1}, "option 'jitter'"),
    ({"time_limit": 0}, "option 'time_limit'"),
    ({"max_age": -5}, "option 'max_age'"),
    ({"retry_when": 3}, "option 'retry_when'"),
    ({"notify_shutdown": "yes"}, "option 'notify_shutdown'"),
    ({"priority": -1}, "bad priority -1"),
    ({"queue_name": "has space"}, "bad queue_name 'has space'"),
    ({"queue_name": "q.XQ"}, "bad queue_name 'q.XQ'"),
])
def test_bad_options_fail_at_decoration_naming_the_option(stub_broker, options, says):
    with pytest.raises(ActorOptionError, match="actor 'f'") as info:
        @greenq.actor(broker=stub_broker, **options)
        def f():
            pass
    assert says in str(info.value)


def test_unknown_option_error_lists_the_known_ones(stub_broker):
    with pytest.raises(ActorOptionError) as info:
        greenq.actor(broker=stub_broker, timelimit=5)(lambda: None)
    assert "time_limit" in str(info.value) and "max_retries" in str(info.value)


def test_send_returns_the_message_and_enqueues_it(stub_broker):
    @greenq.actor(broker=stub_broker)
    def greet(name, punctuation="!"):
        pass

    message = greet.send("Ada", punctuation="?")
    assert (message.queue_name, message.actor_name, message.args, dict(message.kwargs)) == (
        "default", "greet", ("Ada",), {"punctuation": "?"})
    assert repr(message).startswith("Message(queue_name='default', actor_name='greet', args=('Ada',), "
                                    "kwargs={'punctuation': '?'}, options={}, message_id=")
    delayed = greet.send_with_options(args=("Bob",), delay=10000, on_success="other")
    assert delayed.options["eta"] >= message.message_timestamp + 9000
    assert delayed.options["on_success"] == "other"
    assert stub_broker.queue_counts("default") == {"ready": 1, "delayed": 1, "in_flight": 0, "dead": 0}


def test_unencodable_argument_fails_at_send_and_nothing_is_enqueued(stub_broker):
    @greenq.actor(broker=stub_broker)
    def store(value):
        pass

    with pytest.raises(EncodeError, match="argument 0"):
        store.send({1, 2, 3})
    with pytest.raises(EncodeError, match="keyword argument 'value'"):
        store.send(value=object())
    assert stub_broker.queue_counts("default")["ready"] == 0


def test_unencodable_argument_fails_before_any_middleware_sees_the_message(stub_broker):
    seen = []

    class Spy(greenq.Middleware):
        def before_enqueue(self, broker, message, delay):
            seen.append(message.message_id)

    stub_broker.add_middleware(Spy())

    @greenq.actor(broker=stub_broker)
    def store(value):
        pass

    with pytest.raises(EncodeError, match="argument 0"):
        store.send({1, 2, 3})
    assert seen == []  # no hook ran for a message that was never stored
    store.send([1, 2, 3])
    assert len(seen) == 1


def test_local_broker_rejects_an_unencodable_argument_too():
    from greenq.brokers.local import LocalBroker

    broker = LocalBroker()
    ran = []

    @greenq.actor(broker=broker)
    def store(value):
        ran.append(value)

    with pytest.raises(EncodeError, match="argument 0"):
        store.send({1, 2, 3})
    assert ran == []  # it would not survive a real broker, so it does not run here either
    store.send([1, 2])
    assert ran == [[1, 2]]


def test_send_many_enqueues_one_message_per_tuple(stub_broker):
    @greenq.actor(broker=stub_broker)
    def add(x, y):
        pass

    messages = add.send_many([(1, 2), (3, 4), [5, 6]])
    assert [m.args for m in messages] == [(1, 2), (3, 4), (5, 6)]
    assert stub_broker.queue_counts("default")["ready"] == 3


def test_declare_actors_binds_to_the_global_broker():
    @greenq.actor
    def count_words(url):
        pass

    broker = StubBroker()
    greenq.set_broker(broker)
    other = StubBroker()
    greenq.declare_actors([count_words], broker=other)
    assert other.get_actor("count_words") is count_words
    assert count_words.broker is other
    greenq.set_broker(StubBroker())  # bound actors stay where they were bound
    assert count_words.broker is other


def test_unknown_actor_lookup_names_it(stub_broker):
    with pytest.raises(ActorNotFound, match="no actor named 'ghost'"):
        stub_broker.get_actor("ghost")


def test_set_broker_rejects_non_brokers():
    with pytest.raises(TypeError, match="needs a Broker"):
        greenq.set_broker("redis://localhost")
