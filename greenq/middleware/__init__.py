"""Middleware: every feature around the core loop, one module each.

``default_middleware()`` is what a broker gets when it is not given a list.
"""

from .age_limit import AgeLimit
from .callbacks import Callbacks
from .concurrency_limit import ConcurrencyLimits
from .current_message import CurrentMessage
from .debounce import Debounce
from .events import Events
from .metadata import Metadata, MetadataProducerConsumer
from .middleware import HOOKS, Middleware
from .pipelines import GroupCallbacks, Pipelines
from .prometheus import Prometheus  # prometheus_client is imported only when one is created
from .retries import Retries, compute_backoff
from .shutdown import ShutdownNotifications
from .time_limit import TimeLimit
from ..errors import Interrupt, Shutdown, SkipMessage, TimeLimitExceeded


def default_middleware():
    """Fresh instances of the middleware every broker runs unless told otherwise.

    Order matters for ``after_*`` hooks, which run last-to-first: Retries decides
    whether a failure is final (``message.retried`` / ``message.failed``) before
    Callbacks, GroupCallbacks and Pipelines look at the outcome.
    """
    return [AgeLimit(), TimeLimit(), ShutdownNotifications(), Debounce(), ConcurrencyLimits(), Pipelines(),
            GroupCallbacks(), Callbacks(), Retries()]


__all__ = [
    "AgeLimit", "Callbacks", "ConcurrencyLimits", "CurrentMessage", "Debounce", "Events", "GroupCallbacks", "Metadata",
    "MetadataProducerConsumer", "HOOKS", "Interrupt", "Middleware", "Pipelines", "Prometheus",
    "Retries",
    "Shutdown", "ShutdownNotifications", "SkipMessage", "TimeLimit", "TimeLimitExceeded",
    "compute_backoff", "default_middleware",
]
