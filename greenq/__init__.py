"""greenq: background jobs for Python on gevent.

Decorate a function with ``@greenq.actor``, call ``.send()`` on it, and run
``greenq-gevent yourapp`` to process the messages with hundreds of greenlets per
process. The public API follows Dramatiq's, so switching is a change of imports.
"""

__version__ = "0.1.0"

from . import errors, middleware
from .actor import Actor, actor
from .composition import group, pipeline
from .broker import Broker, Consumer, declare_actors, get_broker, set_broker
from .errors import (
    ActorNotFound, ActorOptionError, BrokerError, ConnectionError, DecodeError, EncodeError, GreenqError,
    QueueJoinTimeout, QueueNotFound, Retry, Shutdown, TimeLimitExceeded,
)
from .message import Encoder, JSONEncoder, Message, MessageProxy, get_encoder, set_encoder
from .middleware import Middleware
from .worker import Worker
from . import results  # noqa: E402 - registers the store_results / result_ttl actor options
from .data_queue import DataQueue  # noqa: E402
from .errors import Cancelled  # noqa: E402
from .scheduling import cron, periodic  # noqa: E402

__all__ = [
    "Actor", "ActorNotFound", "ActorOptionError", "Broker", "BrokerError", "Cancelled", "ConnectionError", "Consumer",
    "DataQueue", "cron", "periodic",
    "DecodeError", "EncodeError", "Encoder", "GreenqError", "JSONEncoder", "Message", "MessageProxy",
    "Middleware", "QueueJoinTimeout", "QueueNotFound", "Retry", "Shutdown", "TimeLimitExceeded", "Worker",
    "__version__", "actor", "declare_actors", "errors", "get_broker", "get_encoder", "middleware",
    "set_broker", "set_encoder", "group", "pipeline",
]
