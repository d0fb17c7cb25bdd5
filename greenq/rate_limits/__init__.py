"""Rate limits and barriers shared across greenlets, processes and machines.

::

    from greenq.rate_limits import ConcurrentRateLimiter, WindowRateLimiter, backend_for

    backend = backend_for(greenq.get_broker())      # Redis or SQLite, like the broker
    per_domain = ConcurrentRateLimiter(backend, "example.com", limit=4)

    @greenq.actor(max_retries=10)
    def fetch(url):
        with per_domain.acquire(timeout=30000):   # waits, yielding to other greenlets
            ...

The same back ends keep the state of debouncing, group completion and global
``max_concurrency``. Importing this package imports no client library.
"""

from ..errors import BarrierTimeout, RateLimitExceeded
from .backend import RateLimiterBackend
from .limiters import Barrier, ConcurrentRateLimiter, RateLimiter, WindowRateLimiter
from .stub import StubBackend


def backend_for(broker, **options):
    """A back end that keeps its state where ``broker`` keeps messages.

    ``RedisBroker``: the same client and namespace; ``SqliteBroker``: the same
    file; ``StubBroker``/``LocalBroker``: one in-memory back end per broker.
    Other brokers (RabbitMQ) have no shared store to borrow: configure a
    ``RedisBackend`` or ``SqliteBackend`` explicitly.
    """
    cached = getattr(broker, "_greenq_shaping_backend", None)
    if cached is not None and not options:
        return cached
    from ..brokers.local import LocalBroker
    from ..brokers.redis import RedisBroker
    from ..brokers.sqlite import SqliteBroker
    from ..brokers.stub import StubBroker

    if isinstance(broker, RedisBroker):
        from .redis import RedisBackend

        backend = RedisBackend.from_broker(broker, **options)
    elif isinstance(broker, SqliteBroker):
        from .sqlite import SqliteBackend

        backend = SqliteBackend.from_broker(broker, **options)
    elif isinstance(broker, (StubBroker, LocalBroker)):
        backend = StubBackend(**options)
    else:
        raise TypeError(f"{broker!r} keeps no state that rate limits can share; pass a RedisBackend or "
                        "SqliteBackend from greenq.rate_limits explicitly")
    if not options:
        broker._greenq_shaping_backend = backend
    return backend


__all__ = ["Barrier", "BarrierTimeout", "ConcurrentRateLimiter", "RateLimitExceeded", "RateLimiter",
           "RateLimiterBackend", "StubBackend", "WindowRateLimiter", "backend_for"]
