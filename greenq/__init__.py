"""greenq: background jobs for Python on gevent.

Decorate a function with ``@greenq.actor``, call ``.send()`` on it, and run
``greenq-gevent yourapp`` to process the messages with hundreds of greenlets per
process. The public API follows Dramatiq's, so switching is a change of imports.
"""

__version__ = "0.1.0"

from . import errors, middleware, results  # results: registers the store_results / result_ttl options
from .actor import Actor, actor
from .broker import Broker, Consumer, declare_actors, get_broker, set_broker
from .errors import (
    ActorNotFound, ActorOptionError, BrokerError, Cancelled, ConnectionError, DecodeError, EncodeError,
    GreenqError, QueueJoinTimeout, QueueNotFound, Retry, Shutdown, TimeLimitExceeded,
)
from .message import Encoder, JSONEncoder, Message, MessageProxy, get_encoder, set_encoder
from .middleware import Middleware
from .worker import Worker

__all__ = [
    "Actor", "ActorNotFound", "ActorOptionError", "Broker", "BrokerError", "Cancelled", "ConnectionError",
    "Consumer", "DataQueue", "DecodeError", "EncodeError", "Encoder", "GreenqError", "JSONEncoder", "Message",
    "MessageProxy", "Middleware", "QueueJoinTimeout", "QueueNotFound", "Retry", "Shutdown", "TimeLimitExceeded",
    "Worker", "__version__", "actor", "cron", "declare_actors", "errors", "get_broker", "get_encoder", "group",
    "middleware", "periodic", "pipeline", "results", "set_broker", "set_encoder",
]


# Loaded on first use (PEP 562), so a process that builds no pipeline or group,
# no data queue and no schedule never imports their code (about 0.3 MiB).
_ON_FIRST_USE = {"group": "composition", "pipeline": "composition", "DataQueue": "data_queue",
                 "cron": "scheduling", "periodic": "scheduling"}


_SUBMODULES_ON_FIRST_USE = frozenset(_ON_FIRST_USE.values())  # greenq.scheduling.run(...) works too


def __getattr__(name):
    import importlib

    if name in _SUBMODULES_ON_FIRST_USE:
        return importlib.import_module(f"{__name__}.{name}")  # importing it sets the attribute for next time
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'greenq' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_ON_FIRST_USE) | _SUBMODULES_ON_FIRST_USE)
