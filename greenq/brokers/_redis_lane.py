"""Script calls on the broker's own connections: the fast path of every send, ack and dead letter.

A one-by-one ``send()`` is one EVALSHA, and through redis-py's client it costs
about 180 us of CPU here against 65 us for the bare round trip: checking a
connection out of the pool (a metrics record, a non-blocking ``recv`` to see
that nothing is left unread, queue locks) is about 40 us, and packing the 19
arguments one by one (the 11 keys of a queue never change) about 20 us.
A ``ScriptLane`` keeps connections of its own for the broker's script calls and
packs the constant head of each call once per queue: the call itself then
costs about 90 us of CPU, and a whole ``send()`` 150-170 us instead of 230
(with a 290 us round trip instead of 360: ``python -m benchmarks`` has the
side-by-side figures).

What stays redis-py's: connecting (handshake, AUTH, SELECT, TLS, from the
pool's own ``connection_class`` and ``connection_kwargs``), writing, and reading
and decoding replies. The lane never lends a connection whose reply was not
read in full: anything but a whole reply (a broken socket, a timeout, a
greenlet killed mid-read) disconnects it, and its next use reconnects.

Bounded like the pool: at most ``max_connections`` connections (the pool's),
opened as calls overlap; past that a call waits for one, up to the pool's
``timeout``. The broker's ``ping`` goes over the lane too, so a worker, which
sends nothing else over the broker's client, opens no pool connection; other
commands (dead-letter reads, a consumer's fetches and blocking wait) keep using
redis-py's pools. A ``send_many`` of more than one script call (several queues,
or over 500 messages) writes them all at once and reads the replies in order:
45k messages a second from one producer here, against 28k through redis-py's
pipeline.

After ``os.fork`` the child leaves the parent's connections alone and opens its
own. Instructions per ``send()`` (``python -m benchmarks.instructions``): 190k
on the lane, 378k through redis-py's pool before it, 504k for Dramatiq's.
"""

import os
import threading
import time

_HEADS_KEPT = 1024  # packed heads (script x queue x consumer) kept before the cache starts over


class ScriptLane:
    """Connections for EVALSHA calls of one redis-py client. See the module docstring."""

    def __init__(self, client):
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        limit = getattr(pool, "max_connections", None)
        self.limit = limit if isinstance(limit, int) and 0 < limit < 2 ** 20 else 64
        self.timeout = getattr(pool, "timeout", None) or 20.0
        self._heads = {}
        self._closed = False
        self._reset()

    def _reset(self):
        self._pid = os.getpid()
        self._idle = []
        self._open = 0  # connections made and not discarded, idle or in use
        self._room = threading.Condition(threading.Lock())

    # --- checkout ------------------------------------------------------------------------

    def checkout(self):
        """A connection of this lane (``connect()`` it: it may be new, or disconnected by a failed call).

        Waits for one when ``limit`` are in use; past the timeout,
        ``redis.exceptions.ConnectionError``.
        """
        if os.getpid() != self._pid:
            self._reset()  # forked: the parent's sockets are the parent's
        with self._room:
            if not self._idle and self._open >= self.limit:
                deadline = time.monotonic() + self.timeout
                while not self._idle:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        import redis

                        raise redis.exceptions.ConnectionError(
                            f"no free connection for script calls: all {self.limit} in use for {self.timeout:g}s")
                    self._room.wait(left)
            if self._idle:
                connection = self._idle.pop()
            else:
                connection = None
                self._open += 1
        if connection is None:
            try:
                connection = self._connection_class(**self._kwargs)
            except BaseException:
                self._discard()
                raise
        return connection

    def checkin(self, connection):
        if os.getpid() != self._pid:
            return
        if self._closed:
            connection.disconnect()
            self._discard()
            return
        with self._room:
            self._idle.append(connection)
            self._room.notify()

    def _discard(self):
        with self._room:
            self._open -= 1
            self._room.notify()

    def close(self):
        self._closed = True
        if os.getpid() != self._pid:
            return
        with self._room:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for connection in idle:
            connection.disconnect()

    def borrow(self):
        """A connection of the lane for one exchange, as a context manager (``connect()`` it first).

        The checkout happens here, so a full lane raises to the caller before its
        ``with`` (and its handlers) begins; see ``_Borrowed`` for the way back.
        """
        return _Borrowed(self, self.checkout())

    def execute(self, *args):
        """One plain command on a lane connection (``PING``): the pool then stays unopened in a worker."""
        with self.borrow() as connection:
            connection.connect()
            connection.send_command(*args)
            return connection.read_response()

    # --- packing -------------------------------------------------------------------------

    def pack(self, connection, sha, keys, args):
        """The RESP request ``EVALSHA sha len(keys) *keys *args``, encoded as redis-py encodes it."""
        encode = connection.encoder.encode
        head = self._heads.get((sha, keys))
        if head is None:
            if len(self._heads) >= _HEADS_KEPT:
                self._heads = {}
            head = self._heads[(sha, keys)] = b"".join(_bulk(encode(part)) for part in ("EVALSHA", sha, len(keys), *keys))
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), head]
        for arg in args:
            if type(arg) is bytes:
                value = arg
            elif type(arg) is int:
                value = b"%d" % arg
            else:
                value = encode(arg)  # str, float; refuses what redis-py refuses (bool, None)
            parts += (b"$%d\r\n" % len(value), value, b"\r\n")
        return b"".join(parts)


class _Borrowed:
    """A lane connection lent for one exchange, and the one place that keeps the lane's promise.

    An exception that leaves the connection clean (an error reply, read in full;
    an argument refused before anything was sent) passes through; any other (a
    broken socket, a timeout, a greenlet killed mid-read) disconnects it first,
    so a reply left unread is never read by the next caller. Either way the
    connection goes back to the lane.
    """

    __slots__ = ("lane", "connection")

    def __init__(self, lane, connection):
        self.lane = lane
        self.connection = connection

    def __enter__(self):
        return self.connection

    def __exit__(self, kind, error, traceback):
        import redis

        try:
            clean = (redis.exceptions.ResponseError, redis.exceptions.DataError)
            if kind is not None and not issubclass(kind, clean):
                self.connection.disconnect()
        finally:
            self.lane.checkin(self.connection)
        return False


def _bulk(value):
    return b"$%d\r\n%s\r\n" % (len(value), value)
