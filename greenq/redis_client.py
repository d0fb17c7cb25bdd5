"""How greenq builds a Redis client from a URL: the broker and every Redis back end use this.

A ``BlockingConnectionPool`` makes a greenlet wait for a free connection
instead of failing when ``max_connections`` are in use, so hundreds of greenlets
share a bounded, flat number of connections. redis-py is imported here, when a
client is built, so importing greenq never needs it.
"""


def client_from_url(url, *, max_connections=64, **options):
    """A ``redis.Redis`` on a blocking pool of at most ``max_connections`` connections to ``url``."""
    import redis

    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30, **options)
    return redis.Redis(connection_pool=pool)


def given_or_new_client(client, url, *, max_connections=64, **options):
    """``(client, owned)``: the caller's client, not ours to close, or a new one from ``url``, which is."""
    if client is not None:
        return client, False
    return client_from_url(url, max_connections=max_connections, **options), True
