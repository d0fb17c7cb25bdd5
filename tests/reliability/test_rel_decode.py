"""Payloads the decoder must turn into ``DecodeError`` (so the broker dead-letters them), not crash on.

Found by the hostile-payload scenario: JSON nested deeper than the interpreter's
recursion limit made ``json.loads`` raise ``RecursionError``, which escaped the
consumer's fetch; the message stayed held and every fetch after it failed,
jamming the queue.
"""

import json

import pytest

from greenq.errors import DecodeError
from greenq.message import Message


def message_with_args(raw_args: bytes) -> bytes:
    fields = {"queue_name": "q", "actor_name": "a", "args": "@@", "kwargs": {}, "options": {},
              "message_id": "m-1", "message_timestamp": 1}
    return json.dumps(fields).encode().replace(b'"@@"', raw_args)


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deep_nesting_is_a_decode_error(depth):
    with pytest.raises(DecodeError):
        Message.decode(message_with_args(b"[" * depth + b"]" * depth))


def test_deep_object_nesting_is_a_decode_error():
    with pytest.raises(DecodeError):
        Message.decode(message_with_args(b'[{"a":' * 50_000 + b"1" + b"}]" * 50_000))


@pytest.mark.parametrize("raw", [b"9" * 5000, b"\xff\xfe", b"", b"[1,"])
def test_other_bad_payloads_are_decode_errors(raw):
    with pytest.raises(DecodeError):
        Message.decode(message_with_args(raw) if raw != b"" else raw)
