"""greenq: background jobs for Python on gevent.

Decorate a function with ``@greenq.actor``, call ``.send()`` on it, and run
``greenq-gevent yourapp`` to process the messages with hundreds of greenlets per
process. The public API follows Dramatiq's, so switching is a change of imports.
"""

__version__ = "0.1.0"

from . import errors, middleware, results  # results: registers the store_results / result_ttl options
from .actor import Actor, actor
from .broker import Broker, Consumer, declare_actors, get_broker, set_broker
from .composition import group, pipeline
from .data_queue import DataQueue
from .errors import (
    ActorNotFound, ActorOptionError, BrokerError, Cancelled, ConnectionError, DecodeError, EncodeError,
    GreenqError, QueueJoinTimeout, QueueNotFound, Retry, Shutdown, TimeLimitExceeded,
)
from .message import Encoder, JSONEncoder, Message, MessageProxy, get_encoder, set_encoder
from .middleware import Middleware
from .scheduling import cron, periodic
from .worker import Worker

__all__ = [
    "Actor", "ActorNotFound", "ActorOptionError", "Broker", "BrokerError", "Cancelled", "ConnectionError",
    "Consumer", "DataQueue", "DecodeError", "EncodeError", "Encoder", "GreenqError", "JSONEncoder", "Message",
    "MessageProxy", "Middleware", "QueueJoinTimeout", "QueueNotFound", "Retry", "Shutdown", "TimeLimitExceeded",
    "Worker", "__version__", "actor", "cron", "declare_actors", "errors", "get_broker", "get_encoder", "group",
    "middleware", "periodic", "pipeline", "results", "set_broker", "set_encoder",
]
