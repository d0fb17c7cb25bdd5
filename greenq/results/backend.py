"""The result back end interface: store and read one JSON result per message id.

A back end implements three small verbs and inherits the rest:

``_store(message_id, data, ttl)``
    keep ``data`` (a JSON text) under the id for ``ttl`` milliseconds, replacing
    any earlier one.
``_load(message_id)``
    the stored text, or None.
``_wait(message_id, timeout)``
    block up to ``timeout`` seconds for the text to appear; return it or None.
    The default polls ``_load`` with a growing pause (cheap to write, costs a
    few reads per second per waiter); back ends that can block natively
    (Redis) override it.

Results travel as JSON, like messages: ``{"ok": value}`` for a return value,
``{"error": {"type": ..., "message": ...}}`` for an actor that failed for good.
"""

import json
import time

from ..errors import EncodeError, ResultFailure, ResultMissing, ResultTimeout

#: How long ``get_result(block=True)`` waits when given no timeout (ms).
DEFAULT_TIMEOUT = 10000


def _message_id(message):
    return message if isinstance(message, str) else message.message_id


class ResultBackend:
    """Base class of result back ends. Subclasses implement ``_store``, ``_load`` and maybe ``_wait``."""

    def store_result(self, message, result, ttl):
        """Keep ``result`` (JSON-encodable) for ``ttl`` ms; raises ``EncodeError`` if it is not JSON."""
        try:
            data = json.dumps({"ok": result}, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise EncodeError(f"the result of message {_message_id(message)} is not JSON-encodable: {e}") from None
        self._store(_message_id(message), data, int(ttl))

    def store_failure(self, message, type_name, text, ttl):
        """Record that the message failed for good, so waiters get ``ResultFailure``."""
        data = json.dumps({"error": {"type": type_name, "message": text}}, ensure_ascii=False)
        self._store(_message_id(message), data, int(ttl))

    def get_result(self, message, *, block=False, timeout=None):
        """The stored result of ``message`` (a ``Message`` or a message id).

        ``block=False`` raises ``ResultMissing`` at once when there is none;
        ``block=True`` waits up to ``timeout`` ms (default 10 s) and raises
        ``ResultTimeout``. A failed actor raises ``ResultFailure``.
        """
        message_id = _message_id(message)
        if block:
            timeout = DEFAULT_TIMEOUT if timeout is None else timeout
            data = self._wait(message_id, max(0.0, timeout / 1000))
            if data is None:
                raise ResultTimeout(f"no result for message {message_id} within {timeout} ms")
        else:
            data = self._load(message_id)
            if data is None:
                raise ResultMissing(f"no result is stored for message {message_id} (not done yet, or expired)")
        return self._unwrap(message_id, data)

    @staticmethod
    def _unwrap(message_id, data):
        if isinstance(data, (bytes, bytearray)):
            data = data.decode("utf-8")
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if not isinstance(value, dict) or not ("ok" in value or "error" in value):
            raise ResultMissing(f"the value stored for message {message_id} is not a greenq result: {data[:100]!r}")
        if "error" in value:
            error = value["error"] if isinstance(value["error"], dict) else {}
            type_name, text = error.get("type", "Error"), error.get("message", "")
            raise ResultFailure(f"message {message_id} failed: {type_name}: {text}", type_name, text)
        return value["ok"]

    # --- what a back end implements ------------------------------------------------

    def _store(self, message_id, data, ttl):
        raise NotImplementedError

    def _load(self, message_id):
        raise NotImplementedError

    #: How ``_wait`` polls a back end that cannot block on a result: the first pause and the longest (s).
    first_poll = 0.01
    poll_interval = 0.5

    def _wait(self, message_id, timeout):
        """Look for the result with a doubling pause until it arrives or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        pause = self.first_poll
        while True:
            data = self._load(message_id)
            if data is not None:
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pause(min(pause, left))
            pause = min(pause * 2, self.poll_interval)

    def _pause(self, seconds):
        time.sleep(seconds)  # cooperative under gevent

    def close(self):
        """Release connections."""
