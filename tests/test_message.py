"""The wire format: exactly seven fields, strict decoding, pluggable encoders, never pickle."""

import json

import pytest

import greenq
from greenq.errors import DecodeError, EncodeError
from greenq.message import FIELDS, JSONEncoder, Message


def make(**overrides):
    fields = dict(queue_name="default", actor_name="add", args=[1, 2], kwargs={}, options={},
                  message_id="8cdcae57-af36-40ba-9616-849a336a4316", message_timestamp=1498557015410)
    fields.update(overrides)
    return fields


def test_encodes_exactly_the_wire_fields():
    message = Message(queue_name="default", actor_name="add", args=(1, 2), kwargs={}, options={})
    decoded = json.loads(message.encode())
    assert list(decoded) == list(FIELDS)
    assert decoded["args"] == [1, 2]
    assert isinstance(decoded["message_timestamp"], int)
    assert len(decoded["message_id"]) == 36


def test_round_trip_and_repr_shows_the_wire_fields():
    original = Message.from_dict(make(kwargs={"z": [1, {"a": None}]}, options={"eta": 5}))
    again = Message.decode(original.encode())
    assert again == original
    assert repr(again) == (
        "Message(queue_name='default', actor_name='add', args=(1, 2), kwargs={'z': [1, {'a': None}]}, "
        "options={'eta': 5}, message_id='8cdcae57-af36-40ba-9616-849a336a4316', message_timestamp=1498557015410)"
    )


def test_messages_are_immutable():
    message = Message.from_dict(make(options={"eta": 1}))
    with pytest.raises(AttributeError):
        message.queue_name = "other"
    with pytest.raises(TypeError):
        message.options["eta"] = 2
    with pytest.raises(TypeError):
        message.kwargs["x"] = 1
    changed = message.copy(options={"eta": 2})
    assert changed.options["eta"] == 2 and message.options["eta"] == 1


@pytest.mark.parametrize("payload, says", [
    (b"{not json", "not valid"),
    (b"[1, 2]", "is a list"),
    (json.dumps({k: v for k, v in make().items() if k != "kwargs"}).encode(), "lacks the field(s) kwargs"),
    (json.dumps(make(extra=1)).encode(), "unknown field(s) extra"),
    (json.dumps(make(args={"a": 1})).encode(), "'args' must be list"),
    (json.dumps(make(message_timestamp="soon")).encode(), "'message_timestamp' must be int"),
    (json.dumps(make(message_timestamp=True)).encode(), "'message_timestamp' must be int"),
    (json.dumps(make(actor_name="")).encode(), "must not be empty"),
    (b"\xff\xfe\x00garbage", "not valid"),
    (json.dumps(make()).encode() + b" {}", "Extra data: line 1 column"),
    (b"", "Expecting value: line 1 column 1"),
])
def test_decode_rejects_what_is_not_the_wire_format(payload, says):
    with pytest.raises(DecodeError) as info:
        Message.decode(payload)
    assert says in str(info.value)
    assert info.value.data == payload


def test_a_payload_with_whitespace_around_it_decodes():
    # Another language's producer may pretty-print or end with a newline; greenq's own writes neither.
    payload = b"\n  " + json.dumps(make(), indent=2).encode() + b"\r\n"
    assert Message.decode(payload).asdict() == make()


def test_decode_error_carries_the_message_id_when_there_is_one():
    with pytest.raises(DecodeError) as info:
        Message.decode(json.dumps(make(args="nope")).encode())
    assert info.value.message_id == "8cdcae57-af36-40ba-9616-849a336a4316"


def test_unencodable_argument_is_named():
    message = Message(queue_name="q", actor_name="a", args=(1, {1, 2}), kwargs={}, options={})
    with pytest.raises(EncodeError, match=r"actor 'a': argument 1 \(\{1, 2\}\) cannot be encoded"):
        message.encode()
    message = Message(queue_name="q", actor_name="a", args=(), kwargs={"when": object()}, options={})
    with pytest.raises(EncodeError, match="keyword argument 'when'"):
        message.encode()


def test_a_custom_encoder_is_used_and_pickle_is_never_needed():
    class Upper(JSONEncoder):
        used = 0

        def encode(self, data):
            Upper.used += 1
            return super().encode(data)

    greenq.set_encoder(Upper())
    try:
        Message.from_dict(make()).encode()
        assert Upper.used == 1
    finally:
        greenq.set_encoder(JSONEncoder())
    with pytest.raises(TypeError, match="Encoder instance"):
        greenq.set_encoder(json)


def test_nesting_past_the_recursion_limit_is_an_encode_error_not_a_crash():
    deep = []
    inner = deep
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    message = Message(queue_name="q", actor_name="a", args=(deep,), kwargs={}, options={})
    with pytest.raises(EncodeError, match=r"argument 0 \(\[\[\["):
        message.encode()


def test_message_ids_are_random_rfc_4122_version_4_uuids():
    import uuid

    from greenq.message import generate_unique_id

    ids = [generate_unique_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
    assert {text[19] for text in ids} == set("89ab")  # every variant digit turns up: the bits are random


def test_a_fresh_message_is_the_message_the_constructor_builds():
    fresh = Message.fresh("default", "add", [1, [2]], {"k": 1}, {"eta": 5})
    built = Message(queue_name="default", actor_name="add", args=[1, [2]], kwargs={"k": 1}, options={"eta": 5},
                    message_id=fresh.message_id, message_timestamp=fresh.message_timestamp)
    assert fresh == built and fresh.encode() == built.encode() and repr(fresh) == repr(built)
    assert isinstance(fresh.args, tuple)
    with pytest.raises(TypeError):
        fresh.options["eta"] = 6  # read-only, as the constructor's
    empty = Message.fresh("default", "add", (), None, None)
    assert dict(empty.kwargs) == {} and dict(empty.options) == {}


def test_a_proxy_reads_its_message_fields_and_follows_a_replaced_message():
    import copy

    from greenq.message import MessageProxy

    message = Message(queue_name="q", actor_name="a", args=(1, [2]), kwargs={"k": 3}, options={"o": 4})
    proxy = MessageProxy(message, receipt="r")
    assert (proxy.queue_name, proxy.actor_name, proxy.args, dict(proxy.kwargs), proxy.message_id,
            proxy.message_timestamp) == ("q", "a", (1, [2]), {"k": 3}, message.message_id, message.message_timestamp)
    assert proxy.message is message and proxy.options == {"o": 4} and proxy.encode() == message.encode()
    stripped = message.copy(args=(), kwargs={})  # what the worker does to a message it cannot store
    proxy.message = stripped
    assert proxy.args == () and dict(proxy.kwargs) == {} and proxy.to_message().args == ()
    with pytest.raises(AttributeError):
        proxy.no_such_field
    bare = MessageProxy.__new__(MessageProxy)  # as copy and pickle make one: no endless __getattr__
    with pytest.raises(AttributeError):
        bare.queue_name
    assert copy.copy(proxy).message_id == message.message_id
