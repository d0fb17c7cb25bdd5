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


def test_sqlite_lists_a_dead_letter_it_cannot_decode_as_a_placeholder(tmp_path):
    """Found by the hostile-payload scenario: JSON nested about as deep as the recursion limit decodes
    on a worker's shallow stack, is dead-lettered, then failed to decode when listed from a deeper
    stack, so ``dead_letters_of`` (and ``greenq dead list``) raised instead of listing."""
    import sqlite3

    from greenq.brokers.sqlite import SqliteBroker

    broker = SqliteBroker(path=str(tmp_path / "b.sqlite3"))
    try:
        broker.declare_queue("q")
        stored = message_with_args(b"[" * 100_000 + b"]" * 100_000)
        with sqlite3.connect(broker.path) as conn:
            conn.execute("INSERT INTO greenq_dead (queue, priority, message_id, dead_at, payload) "
                         "VALUES ('q', 0, 'm-1', ?, ?)", (2**62, stored))
        letters = broker.dead_letters_of("q")
        assert [m.actor_name for m in letters] == ["<undecodable>"]
        assert letters[0].options["failure"].startswith("DecodeError")
    finally:
        broker.close()
