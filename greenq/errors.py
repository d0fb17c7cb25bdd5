"""Every exception greenq raises on purpose lives here, so users catch one family.

The interrupts (``TimeLimitExceeded``, ``Shutdown``) derive from
``BaseException`` rather than ``Exception``: they are thrown into a running actor
from outside, and an actor's own ``except Exception:`` must not swallow them by
accident.
"""


class GreenqError(Exception):
    """Base class for the errors greenq raises."""


class ActorOptionError(GreenqError, ValueError):
    """An actor was declared with an unknown option or a bad value for one."""


class ActorNotFound(GreenqError):
    """A message names an actor that is not declared on the broker."""


class QueueNotFound(GreenqError):
    """An operation names a queue that the broker does not know."""


class EncodeError(GreenqError, TypeError):
    """A message, or one of its arguments, cannot be written in the wire format."""


class DecodeError(GreenqError, ValueError):
    """Bytes from a broker are not a message in the wire format.

    ``data`` holds the raw payload so it can be dead-lettered as it came.
    """

    def __init__(self, reason, data=None, message_id=None):
        super().__init__(reason)
        self.reason = reason
        self.data = data
        self.message_id = message_id


class BrokerError(GreenqError):
    """Base class for errors that come from a broker."""


class ConnectionError(BrokerError, OSError):  # noqa: A001 - deliberate, as in Dramatiq
    """The broker cannot be reached. The message names it, never its password."""


class ConnectionClosed(ConnectionError):
    """The connection to the broker was lost while in use."""


class QueueJoinTimeout(GreenqError):
    """``StubBroker.join`` or ``Worker.join`` waited longer than its timeout."""


class BrokerConfigError(BrokerError):
    """The broker holds state that conflicts with how greenq was configured."""


class Interrupt(BaseException):
    """Raised inside a running actor, from outside it, to stop it early."""


class TimeLimitExceeded(Interrupt):
    """The actor ran past its ``time_limit``."""


class Shutdown(Interrupt):
    """The worker is shutting down; sent only to actors with ``notify_shutdown=True``."""


class Cancelled(Interrupt):
    """The message was cancelled (``message.cancel()``) while its actor ran; the actor may catch it."""


class Retry(GreenqError):
    """Raise from an actor to ask for a retry, optionally after ``delay`` milliseconds.

    It is logged at INFO, not as an error, and still counts against ``max_retries``.
    """

    def __init__(self, message="", delay=None):
        super().__init__(message)
        self.delay = delay


class SkipMessage(GreenqError):
    """Raised by a middleware's ``before_process_message`` to skip a message."""


class ResultError(GreenqError):
    """Base class for the errors of ``message.get_result()``."""


class ResultMissing(ResultError):
    """No result is stored for the message (not finished yet, never stored, or expired)."""


class ResultTimeout(ResultError):
    """``get_result(block=True)`` waited ``timeout`` ms and no result arrived."""


class ResultFailure(ResultError):
    """The actor failed for good; ``type_name`` and ``text`` say how (the exception itself stays in the worker)."""

    def __init__(self, message, type_name=None, text=None):
        super().__init__(message)
        self.type_name = type_name
        self.text = text


class RateLimitExceeded(GreenqError):
    """A rate limiter or concurrency limit had no room within the time it was given."""


class BarrierTimeout(GreenqError):
    """``Barrier.wait(timeout=...)`` ran out before every party arrived."""
