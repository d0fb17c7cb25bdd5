"""Messages and the wire format.

A message is one JSON object with exactly seven fields::

    {"queue_name": "default", "actor_name": "add", "args": [1, 2], "kwargs": {},
     "options": {}, "message_id": "<uuid4>", "message_timestamp": 1498557015410}

Other languages enqueue work by writing that object straight into a broker, so
decoding is strict: a payload that is not exactly this shape raises
``DecodeError`` saying which field is wrong, and the broker dead-letters it.

``Message`` is immutable (``kwargs`` and ``options`` are read-only views) so a
message can be shared between greenlets without copies. State that middleware
changes while a message is processed lives on ``MessageProxy``.
"""

import json
import os
import reprlib
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import DecodeError, EncodeError

FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp")
_FIELD_TYPES = {
    "queue_name": str,
    "actor_name": str,
    "args": list,
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": int,
}
_FIELD_SET = frozenset(FIELDS)


class Encoder:
    """Turns the dict form of a message into bytes and back. Subclass to change the format."""

    def encode(self, data: dict) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> dict:
        raise NotImplementedError


class JSONEncoder(Encoder):
    """The default, and the only format other languages can rely on. Never pickle:
    a message must never be able to run code that is not an actor."""

    # One encoder for every call: ``json.dumps`` with any non-default option builds a new one each time.
    _json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

    def encode(self, data):
        return self._json.encode(data).encode("utf-8")

    _raw_decode = json.JSONDecoder().raw_decode

    def decode(self, data):
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8")
        # ``json.loads`` wraps the same scanner in two whitespace matches and a Python call more,
        # a third of what parsing a message costs. A payload with whitespace around it, or a bad
        # one, takes ``json.loads``, whose error names the place.
        try:
            fields, end = self._raw_decode(data)
        except ValueError:
            pass
        else:
            if end == len(data):
                return fields
        return json.loads(data)


_encoder: Encoder = JSONEncoder()


def get_encoder() -> Encoder:
    return _encoder


def set_encoder(encoder: Encoder) -> None:
    """Change how messages are written on the wire, for every broker in this process."""
    global _encoder
    if not isinstance(encoder, Encoder):
        raise TypeError(f"set_encoder() needs an Encoder instance, not {type(encoder).__name__}")
    _encoder = encoder


# The first hex digit of an RFC 4122 variant byte, for each random first digit: 8, 9, a or b.
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def generate_unique_id() -> str:
    """A random (version 4) UUID as text, the same as ``str(uuid.uuid4())`` at a third of the cost."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:]}"


def current_millis() -> int:
    return int(time.time() * 1000)


def _thaw(value):
    """Read-only views back into plain containers, recursively, for encoding."""
    if isinstance(value, MappingProxyType):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True, repr=False, eq=True)
class Message:
    queue_name: str
    actor_name: str
    args: tuple
    kwargs: Any
    options: Any
    message_id: str = field(default_factory=generate_unique_id)
    message_timestamp: int = field(default_factory=current_millis)

    def __post_init__(self):
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs or {})))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options or {})))

    def __hash__(self):
        return hash(self.message_id)

    def __repr__(self):
        return (
            f"Message(queue_name={self.queue_name!r}, actor_name={self.actor_name!r}, "
            f"args={self.args!r}, kwargs={dict(self.kwargs)!r}, options={dict(self.options)!r}, "
            f"message_id={self.message_id!r}, message_timestamp={self.message_timestamp!r})"
        )

    def asdict(self) -> dict:
        return {
            "queue_name": self.queue_name,
            "actor_name": self.actor_name,
            "args": _thaw(self.args),
            "kwargs": _thaw(self.kwargs),
            "options": _thaw(self.options),
            "message_id": self.message_id,
            "message_timestamp": self.message_timestamp,
        }

    def encode(self) -> bytes:
        """The payload bytes, computed once per message and encoder.

        ``Broker.enqueue`` encodes before any middleware runs, so an argument
        that cannot travel fails at send time; the broker's own write reuses
        those bytes instead of encoding again.
        """
        cached = self.__dict__.get("_payload")
        if cached is not None and cached[0] is _encoder:
            return cached[1]
        try:
            payload = _encoder.encode(self.asdict())
        except (TypeError, ValueError, RecursionError) as e:  # RecursionError: nesting past the limit
            raise EncodeError(f"actor {self.actor_name!r}: {self._unencodable_part()} cannot be encoded: {e}") from None
        object.__setattr__(self, "_payload", (_encoder, payload))
        return payload

    def _unencodable_part(self) -> str:
        """Name the argument (or option) that broke encoding, for the error message."""
        parts = [(f"argument {i} ({reprlib.repr(arg)})", arg) for i, arg in enumerate(self.args)]
        parts += [(f"keyword argument {k!r}", v) for k, v in self.kwargs.items()]
        parts += [(f"option {k!r}", v) for k, v in self.options.items()]
        for label, value in parts:
            try:
                _encoder.encode({"value": _thaw(value)})
            except (TypeError, ValueError, RecursionError):
                return label
        return f"message {self.message_id}"

    @classmethod
    def fresh(cls, queue_name, actor_name, args, kwargs, options) -> "Message":
        """A new message with its own id and timestamp: ``Message(...)`` at half the cost, for every send.

        The frozen dataclass's ``__init__`` sets each field through
        ``object.__setattr__`` and then rewraps three of them; this fills the
        instance's ``__dict__`` once, with the same wrapped values.
        """
        message = object.__new__(cls)
        message.__dict__.update(
            queue_name=queue_name, actor_name=actor_name, args=tuple(args),
            kwargs=MappingProxyType(dict(kwargs) if kwargs else {}),
            options=MappingProxyType(dict(options) if options else {}),
            message_id=generate_unique_id(), message_timestamp=current_millis(),
        )
        return message

    @classmethod
    def decode(cls, data) -> "Message":
        """Parse one payload, or raise ``DecodeError`` naming what is wrong with it."""
        try:
            fields = _encoder.decode(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nesting too deep
            raise DecodeError(f"payload is not valid {type(_encoder).__name__} data: {e}", data) from None
        # The common case, checked in one pass: exactly the seven fields with their
        # plain JSON types. The containers were just parsed, so nobody else holds
        # them and they are wrapped without the copies ``__init__`` makes. Anything
        # else takes the slow path, which names what is wrong.
        if type(fields) is dict and fields.keys() == _FIELD_SET:
            queue_name, actor_name, message_id = fields["queue_name"], fields["actor_name"], fields["message_id"]
            args, kwargs, options = fields["args"], fields["kwargs"], fields["options"]
            timestamp = fields["message_timestamp"]
            if (type(queue_name) is str and type(actor_name) is str and type(message_id) is str
                    and queue_name and actor_name and message_id and type(args) is list
                    and type(kwargs) is dict and type(options) is dict and type(timestamp) is int):
                message = object.__new__(cls)
                message.__dict__.update(
                    queue_name=queue_name, actor_name=actor_name, args=tuple(args),
                    kwargs=MappingProxyType(kwargs), options=MappingProxyType(options),
                    message_id=message_id, message_timestamp=timestamp,
                )
                return message
        return cls.from_dict(fields, data)

    @classmethod
    def from_dict(cls, fields, data=None) -> "Message":
        if not isinstance(fields, dict):
            raise DecodeError(f"payload is a {type(fields).__name__}, not an object with the message fields", data)
        message_id = fields.get("message_id") if isinstance(fields.get("message_id"), str) else None
        missing = [name for name in FIELDS if name not in fields]
        if missing:
            raise DecodeError(f"payload lacks the field(s) {', '.join(missing)}", data, message_id)
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise DecodeError(f"payload has unknown field(s) {', '.join(unknown)}", data, message_id)
        for name, kind in _FIELD_TYPES.items():
            value = fields[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise DecodeError(
                    f"field {name!r} must be {kind.__name__}, not {type(value).__name__}", data, message_id
                )
        if not fields["queue_name"] or not fields["actor_name"] or not fields["message_id"]:
            raise DecodeError("queue_name, actor_name and message_id must not be empty", data, message_id)
        return cls(**{name: fields[name] for name in FIELDS})

    def get_result(self, *, backend=None, block=False, timeout=None):
        """This message's stored result (see ``greenq.results``); ``timeout`` in ms when ``block``.

        ``backend`` defaults to the one of the ``Results`` middleware on the global broker.
        """
        if backend is None:
            from .broker import get_broker
            from .results import Results

            results = get_broker().get_middleware(Results)
            if results is None:
                raise RuntimeError("get_result() needs a backend: add a Results middleware to the broker or pass backend=")
            backend = results.backend
        return backend.get_result(self, block=block, timeout=timeout)

    def wait_started(self, timeout=None, *, broker=None) -> bool:
        """Block up to ``timeout`` seconds (None: no limit) until a worker starts this message.

        True once it has started (it may have finished too). Needs the ``Cancel``
        middleware on ``broker`` (default: the global one); see ``greenq.middleware.cancel``.
        """
        from .middleware.cancel import wait_started

        return wait_started(self, timeout, broker)

    def cancel(self, *, broker=None) -> None:
        """Cancel this message: skipped if not started yet, interrupted with ``Cancelled`` if running."""
        from .middleware.cancel import cancel

        cancel(self, broker)

    def copy(self, **changes) -> "Message":
        values = {name: getattr(self, name) for name in FIELDS}
        values.update(changes)
        return Message(**values)


class MessageProxy:
    """A message while a worker holds it: the read-only message plus what changes.

    ``options`` is a private, writable copy; middleware records retries,
    failures and the like there, and ``to_message()`` folds it back into a new
    ``Message`` for re-enqueueing or dead-lettering. ``receipt`` is the broker's
    handle for ack/nack (a delivery tag, a row id...), opaque to everything else.
    """

    __slots__ = (
        "_message", "queue_name", "actor_name", "args", "kwargs", "message_id", "message_timestamp",
        "receipt", "options", "failed", "failure", "exception", "result",
        "retried", "redelivered", "returned", "_interrupt", "__weakref__",
    )

    def __init__(self, message: Message, receipt=None, redelivered=False):
        self.message = message
        self.receipt = receipt
        self.options = dict(message.options)
        self.failed = False
        self.failure = None
        self.exception = None
        self.result = None
        self.retried = False
        self.redelivered = redelivered
        self.returned = False  # a worker shutdown interrupted it: it goes back to the broker as it came
        self._interrupt = None

    @property
    def message(self) -> Message:
        return self._message

    @message.setter
    def message(self, message):
        # The fields every hook and the worker read are copied into slots: a slot is
        # read without a call, where a property per field cost a Python call per read
        # (a dozen per message) and ``__getattr__`` an AttributeError first.
        self._message = message
        self.queue_name = message.queue_name
        self.actor_name = message.actor_name
        self.args = message.args
        self.kwargs = message.kwargs
        self.message_id = message.message_id
        self.message_timestamp = message.message_timestamp

    def __getattr__(self, name):
        if name == "_message":  # not set yet (a copy made without __init__): no endless recursion
            raise AttributeError(name)
        return getattr(self._message, name)

    def __repr__(self):
        return f"MessageProxy({self.to_message()!r})"

    def __lt__(self, other):
        return self.message_timestamp < other.message_timestamp

    def fail(self, reason=None):
        """Mark the message failed: the worker dead-letters it instead of acking it."""
        self.failed = True
        if reason is not None:
            self.failure = str(reason)

    def interrupt(self, exception_type) -> bool:
        """Raise ``exception_type`` inside the actor running this message, if it is running.

        Safe to call from any greenlet or thread; the worker installs the hook
        while the message is being processed. Returns whether it was delivered
        (or queued for the moment the actor starts).
        """
        hook = self._interrupt
        return bool(hook and hook(exception_type))

    def to_message(self) -> Message:
        return self._message.copy(options=self.options)
