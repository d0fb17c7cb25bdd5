"""Actor results: the ``Results`` middleware and its back ends (stub, Redis, SQLite).

Importing this package registers the ``store_results`` and ``result_ttl`` actor
options; it imports no client library (back ends import theirs when built)::

    from greenq.results import Results
    from greenq.results.redis import RedisBackend

    broker.add_middleware(Results(backend=RedisBackend(url="redis://127.0.0.1:6379/0")))

    @greenq.actor(store_results=True, result_ttl=60000)
    def add(x, y):
        return x + y

    add.send(1, 2).get_result(block=True, timeout=5000)  # 3
"""

from ..errors import ResultError, ResultFailure, ResultMissing, ResultTimeout
from .backend import ResultBackend
from .middleware import Results
from .stub import StubBackend

__all__ = ["ResultBackend", "ResultError", "ResultFailure", "ResultMissing", "ResultTimeout", "Results",
           "StubBackend"]
