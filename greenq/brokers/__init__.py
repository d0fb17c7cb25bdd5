"""Concrete brokers, one module each, and the choice of one from a URL.

Modules are imported only when asked for, so using the Redis broker does not
import pika and the stub needs neither.
"""

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_SQLITE_PATH = "greenq.sqlite3"


def redact_url(url):
    """The URL with its password replaced by ``***``, for logs and errors."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _pop_query(url, name):
    """``url`` without the query parameter ``name``, and that parameter's value (or None)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in pairs if key == name]
    if not values:
        return url, None
    query = urlencode([(key, value) for key, value in pairs if key != name])
    return urlunsplit(parts._replace(query=query)), values[-1]


def broker_from_url(url=None, **options):
    """A broker for ``redis://``, ``rediss://``, ``amqp://``, ``amqps://``, ``sqlite:///path`` or ``stub://``.

    A Redis URL may carry ``?namespace=NAME`` (the key prefix, default ``greenq``),
    so the operations commands and ``GREENQ_BROKER_URL`` can reach an app's namespace.

    With no URL, the embedded SQLite broker on ``greenq.sqlite3`` in the working
    directory: nothing to install to try greenq.
    """
    if not url:
        from .sqlite import SqliteBroker

        return SqliteBroker(path=os.path.abspath(DEFAULT_SQLITE_PATH), **options)
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBroker

        url, namespace = _pop_query(url, "namespace")
        if namespace is not None:
            options.setdefault("namespace", namespace)
        return RedisBroker(url=url, **options)
    if scheme in ("amqp", "amqps"):
        from .rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, **options)
    if scheme == "sqlite":
        from .sqlite import SqliteBroker

        return SqliteBroker(url=url, **options)
    if scheme == "stub":
        from .stub import StubBroker

        return StubBroker(**options)
    raise ValueError(
        f"unsupported broker URL {redact_url(url)!r}: use redis://, rediss://, amqp://, amqps://, sqlite:///path or stub://"
    )
