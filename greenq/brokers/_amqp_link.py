"""One AMQP connection, owned by one I/O task, shared by every greenlet of a process.

pika's ``BlockingConnection`` is not safe for concurrent use, and a connection per
greenlet would put hundreds of connections on the server. So each ``Link`` has a
single owner: one greenlet under gevent, one thread otherwise (spawned through
``greenq.concurrency``). Other greenlets hand it work with ``call(fn)``: the
request goes into a deque, the owner is woken at once through pika's
``add_callback_threadsafe`` (a byte on the I/O loop's wake-up socket, so an idle
owner never makes a caller wait for its poll timeout), runs ``fn(link)`` on its
own connection and hands back the result or the exception. One wake-up serves
every request queued before the owner consumes it: the callback itself clears
the "wake-up pending" flag, so a caller sends a byte only when none is on its way.

``submit(fn)`` is the same hand-off without the wait (unconfirmed sends): the
caller goes on at once and the owner drains many requests per wake-up. At most
``detached_limit`` are outstanding (queued, running, or waiting for their
``Pending``); past it callers wait for room (back-pressure, ``ConnectionError``
past the timeout). ``flush`` waits until all have finished, and an ``atexit``
hook does so before the interpreter goes, so a script that sends and exits
without closing loses nothing. A failed detached request is logged.

What it costs: every waited-for AMQP operation is one hop to the owner and back
(a few microseconds under gevent, two thread switches otherwise, unless the
caller drives the link itself: see below), and the owner
does one thing at a time. A request whose answer comes later (a publisher
confirm) returns a ``Pending`` so the owner goes on meanwhile. Publishers and
consumers use two links (two connections per broker and process): acks never
wait behind publishes or RabbitMQ's flow control of publishing connections.
Under threads the owner and its callers share the GIL: each system call of the
owner can hand the GIL to a busy caller for a switch interval (5 ms), so the
owner joins pika's queued output frames into one ``send`` per batch.

Reconnection: when the connection drops, the owner reconnects with exponential
backoff (0.1 s doubling to 5 s) and runs the ``on_connect`` hooks (consumers
subscribe again). A request marked ``retry=True`` that failed because the
connection was lost is run again on the new connection (a publish may then be
stored twice: at-least-once, never lost). Other requests fail with
``greenq.errors.ConnectionClosed``. ``generation`` counts connections, so
delivery tags of an earlier connection are recognised as stale.

Threaded producers (no gevent): a link made with ``park_when_idle`` (the publish
link) lets its owner thread *park* whenever nothing is outstanding: no request
queued, none waiting for a confirm, no detached one. A parked owner waits on an
event, off the socket, and wakes once a second to answer heartbeats. While it is
parked, a caller of ``call`` takes the link itself: it holds the *baton* (the lock
that says who may touch the connection; the active owner holds it), runs
``fn(link)`` in its own thread and drives pika's I/O until its own confirm is in,
as a plain pika publisher would. One thread does the work instead of two
threads handing it over and back, which costs each send two wake-ups and the
GIL passed between them. A caller that finds the baton taken (the owner is busy,
or another thread is driving) hands its request over as usual, and a request
still outstanding when its caller gives up, or cut short by a lost connection,
goes to the owner, which is unparked for it.

After ``os.fork`` the child must not touch the parent's socket: a link notices
the new pid and starts afresh (the parent's detached requests stay the parent's).
"""

import atexit
import collections
import logging
import os
import threading
import time
import weakref

import pika
import pika.exceptions

from .. import concurrency
from ..errors import ConnectionClosed, ConnectionError
from . import redact_url

logger = logging.getLogger("greenq.brokers.rabbitmq")

#: Exceptions that mean the connection (not just a channel) is gone.
CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    ConnectionResetError,
    BrokenPipeError,
    OSError,
)

#: Detached requests (``submit``) outstanding before a caller waits for room.
DETACHED_LIMIT = 1000

_IDLE_WAIT = 1.0        # seconds the owner waits for I/O when nothing is asked of it
_DRIVE_TICK = 1.0       # seconds between deadline checks of a caller driving the I/O loop
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


class Pending:
    """Returned by a request's ``fn`` whose result comes later (a publisher confirm).

    The owner goes on with other requests; whoever holds the ``Pending`` calls
    ``resolve(error)`` in the owner when the answer arrives, which wakes the caller.
    """

    __slots__ = ("_callback", "_outcome")

    def __init__(self):
        self._callback = None
        self._outcome = None

    def resolve(self, error=None):
        if self._outcome is not None:
            return
        self._outcome = (error,)
        if self._callback is not None:
            self._callback(error)

    def _attach(self, callback):
        self._callback = callback
        if self._outcome is not None:
            callback(self._outcome[0])


class _Request:
    __slots__ = ("fn", "retry", "done", "result", "error", "state", "detached")

    def __init__(self, fn, retry, detached=False, waited=True):
        self.fn = fn
        self.detached = detached
        self.retry = retry
        # Nobody waits for a detached request; a caller driving its own request makes
        # the event (under the link's lock) only if it must hand the request over.
        self.done = threading.Event() if waited and not detached else None
        self.result = None
        self.error = None
        self.state = "queued"  # queued -> running -> done, or queued -> cancelled


class Link:
    """A lazily opened AMQP connection with a single owner task. See the module docstring."""

    def __init__(self, url, role, *, heartbeat=60, park_when_idle=False):
        self.url = url
        self.role = role
        self.park_when_idle = park_when_idle
        self.generation = 0
        self.connection = None
        self.last_error = None
        self._heartbeat = heartbeat
        self._on_connect = []
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # a detached request finished
        self.detached_limit = DETACHED_LIMIT
        self._flush_timeout = 30.0
        self._reset_state()

    def _reset_state(self):
        self._pid = os.getpid()
        self._requests = collections.deque()
        self._pending = set()  # requests whose answer comes later (see Pending)
        self._owner = None
        self._owner_ident = None
        self._closed = False
        self._wake_pending = False  # a wake-up is on its way to the owner: later callers need not send one
        self._detached = 0  # detached requests submitted and not finished
        self._parks = False  # set by the owner: park_when_idle, and OS threads (greenlets hand over cheaply)
        self._parked = False  # the owner waits on _unpark, off the socket, without the baton
        self._unpark = threading.Event()
        self._baton = threading.Lock()  # who may touch the connection: the active owner, or a driving caller
        self._driver = None  # the thread running a request itself while the owner is parked
        self._tick_armed = None  # the connection whose I/O loop has a drive tick armed (see _io_until)
        self.connection = None
        self.connection_name = f"greenq {self.role} pid={self._pid} link={id(self):x}"

    # --- used by everyone ---------------------------------------------------------------

    def add_on_connect(self, hook):
        """Run ``hook(link)`` in the owner after every (re)connection."""
        self._on_connect.append(hook)

    def remove_on_connect(self, hook):
        try:
            self._on_connect.remove(hook)
        except ValueError:
            pass

    def in_owner(self):
        """True in the task that may touch the connection now: the owner, or a caller driving it."""
        if self._owner_ident is None:
            return False
        me = concurrency.current()
        return me == self._owner_ident or me == self._driver

    def call(self, fn, *, timeout=30.0, retry=False):
        """Run ``fn(link)`` in the owner and return its result (or raise its exception).

        Waits up to ``timeout`` seconds, reconnections included; past it raises
        ``greenq.errors.ConnectionError`` naming the server (never its password).
        """
        if self.in_owner():
            return fn(self)
        deadline = time.monotonic() + timeout
        if self._parks:
            request = _Request(fn, retry, waited=False)
            if not self._drive(request, deadline):
                request.done = threading.Event()
                self._submit(request)
            elif not self._await_handed_over(request):
                return self._outcome(request)
        else:
            request = _Request(fn, retry)
            self._submit(request)
        if not request.done.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                if request.state == "queued":
                    request.state = "cancelled"
            if request.state in ("cancelled", "pending"):
                raise self._timeout_error(timeout)
            request.done.wait()  # already running: it finishes soon, one way or the other
        return self._outcome(request)

    @staticmethod
    def _outcome(request):
        if request.error is not None:
            raise request.error
        return request.result

    def _await_handed_over(self, request):
        """After ``_drive``: whether the request is still to finish in the owner (then it has its event)."""
        with self._lock:
            if request.state == "done":
                return False
            request.done = threading.Event()
            return True

    def submit(self, fn, *, timeout=30.0, retry=False):
        """Run ``fn(link)`` in the owner without waiting for it; its errors are logged.

        At most ``detached_limit`` detached requests are outstanding (queued, running
        or waiting for their ``Pending``): past that the caller waits for room, up to
        ``timeout`` seconds, then gets ``greenq.errors.ConnectionError``. ``flush``,
        and at interpreter exit an ``atexit`` hook, wait until all have finished.
        After that hook ran, ``submit`` waits for each request like ``call``.
        """
        request = _Request(fn, retry, detached=True)
        self._flush_timeout = max(self._flush_timeout, timeout)
        if not self.in_owner():  # the owner cannot wait for itself; it drains this next
            self._wait_for_room(timeout)
        _live_links.add(self)
        self._submit(request)
        if _exiting:
            self.flush(timeout)

    def _wait_for_room(self, timeout):
        deadline = time.monotonic() + timeout
        with self._lock:
            if os.getpid() != self._pid:
                self._reset_state()
            while self._detached >= self.detached_limit and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout_error(timeout, f"{self._detached} earlier publishes still unconfirmed")
                self._settled.wait(left)

    def flush(self, timeout):
        """Wait until every detached request has finished; return how many are left."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if os.getpid() != self._pid:
                return 0  # the parent's requests are the parent's to send
            while self._detached and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._settled.wait(left)
            return self._detached

    def _timeout_error(self, timeout, why=None):
        detail = "; ".join(part for part in (why, self.last_error) if part)
        return ConnectionError(f"RabbitMQ at {redact_url(self.url)} did not answer within {timeout:g}s"
                               + (f": {detail}" if detail else ""))

    def _submit(self, request):
        with self._lock:
            if os.getpid() != self._pid:
                self._reset_state()  # forked: the parent's socket and owner are not ours
            if self._closed:
                raise ConnectionClosed(f"the {self.role} link to {redact_url(self.url)} is closed")
            self._requests.append(request)
            if request.detached:
                self._detached += 1
            if self._owner is None:
                self._owner = concurrency.spawn(self._run, name=f"greenq-amqp-{self.role}")
            if self._parked:
                wake = False  # the owner waits on _unpark, not on the socket
            else:
                wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._wake()
        else:
            self._unpark.set()

    def _wake(self):
        connection = self.connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(self._woken)
            except CONNECTION_ERRORS + (AttributeError,):
                pass  # reconnecting: the owner drains the deque once connected (and clears the flag)

    def _woken(self):
        """The wake-up reached the owner, which drains the deque after it: later requests need a new one.

        Cleared here, where the wake-up is consumed, and not when a drain starts: a
        nested ``process_data_events`` inside a request (opening the publish channel)
        can consume it mid-drain, and a flag left set would let the next caller skip
        waking an owner already asleep in its idle wait.
        """
        self._wake_pending = False

    def close(self, timeout=5.0):
        """Close the connection; queued requests fail. Idempotent."""
        with self._lock:
            if os.getpid() != self._pid:
                self._reset_state()
            if self._closed:
                return
            self._closed = True
            owner = self._owner
        self._unpark.set()
        self._wake()
        if owner is not None and not self.in_owner():
            owner.join(timeout)

    # --- the owner --------------------------------------------------------------------

    def _run(self):
        self._owner_ident = concurrency.current()
        self._parks = self.park_when_idle and not concurrency.using_gevent()
        backoff = _BACKOFF_FIRST
        self._baton.acquire()
        try:
            while not self._closed:
                if self.connection is None or not self.connection.is_open:
                    if not self._connect():
                        self._pause(backoff)
                        backoff = min(backoff * 2, _BACKOFF_MAX)
                        continue
                    backoff = _BACKOFF_FIRST
                    self._wake_pending = False  # wake-ups sent to the old connection are gone
                try:
                    self._drain()
                    if self._closed:
                        break
                    self._coalesce_output()
                    if self._may_park():
                        self.connection.process_data_events(time_limit=0)  # heartbeats, and whatever came in
                        self._park()
                    else:
                        self.connection.process_data_events(time_limit=_IDLE_WAIT)
                except CONNECTION_ERRORS as e:
                    self._lost(e)
        finally:
            try:
                self._shutdown()
            finally:
                self._baton.release()

    def _outstanding(self):
        """Anything queued, awaiting its answer or detached, or the link closing (call under ``_lock``)."""
        return bool(self._requests or self._pending or self._detached or self._closed)

    def _may_park(self):
        """Whether the owner can leave the socket alone: nothing queued, awaited or detached."""
        if not self._parks:
            return False
        with self._lock:
            if self._outstanding():
                return False
            self._unpark.clear()
            self._parked = True  # from here on, submitters set _unpark instead of sending a wake-up byte
            return True

    def _park(self):
        """Give the baton up until a request comes or a second passes (heartbeats), then take it back."""
        self._baton.release()
        try:
            self._unpark.wait(_IDLE_WAIT)
        finally:
            self._baton.acquire()  # after a caller still driving, if there is one
            with self._lock:
                self._parked = False

    def _drive(self, request, deadline):
        """Run ``request`` in this (caller's) thread if the owner is parked; whether it did.

        Holding the baton, the caller is the owner for the time being: it runs the
        request and drives pika's I/O until the request is done or ``deadline``
        passes. Whatever is left (a confirm still awaited, a request requeued after
        a lost connection) is the owner's, which is unparked to see to it; ``call``
        then waits for the request as for one handed over.
        """
        if not self._baton.acquire(blocking=False):
            return False  # the owner is active, or another caller is driving: hand over
        try:
            with self._lock:
                connection = self.connection
                if (not self._parked or self._outstanding() or os.getpid() != self._pid
                        or connection is None or not connection.is_open):
                    return False
                request.state = "running"
            self._driver = concurrency.current()
            try:
                self._run_request(request)
                if request.state == "pending":
                    self._coalesce_output()
                    self._io_until(connection, lambda: request.state != "pending", deadline)
            except CONNECTION_ERRORS as e:
                self._lost(e)
            finally:
                self._driver = None
        finally:
            self._baton.release()
        if request.state != "done":
            self._unpark.set()
        return True

    def _io_until(self, connection, done, deadline):
        """Run ``connection``'s I/O in this (driving) thread until ``done()`` or the monotonic ``deadline``.

        ``process_data_events`` returns only on its time limit or pika's own ready
        events and costs two timers a call, each a push into pika's timer heap of
        Python objects; this waits on ``done`` itself. The deadline is checked
        whenever the I/O loop wakes, and a tick timer (``_DRIVE_TICK``) wakes it
        while a caller drives: one timer a second for the link, not one per send,
        so a deadline may pass by up to a tick before it is noticed. It uses two of
        pika's private parts, as ``BlockingChannel`` does: ``_impl`` (the
        asynchronous connection, whose ``ioloop`` keeps the timer) and
        ``_flush_output`` (the loop every blocking call of pika runs in). A closed
        connection raises, as in any blocking call.
        """
        if time.monotonic() >= deadline:
            return
        if self._tick_armed is not connection:
            self._tick_armed = connection
            connection._impl.ioloop.call_later(_DRIVE_TICK, lambda: self._tick(connection))
        connection._flush_output(lambda: done() or time.monotonic() >= deadline)

    def _tick(self, connection):
        """The drive tick fired (in whoever runs the I/O loop): again in a tick while a caller drives."""
        if self._driver is not None and self.connection is connection:
            connection._impl.ioloop.call_later(_DRIVE_TICK, lambda: self._tick(connection))
        elif self._tick_armed is connection:
            self._tick_armed = None

    def _connect(self):
        params = pika.URLParameters(self.url)
        params.client_properties = {"connection_name": self.connection_name, "product": "greenq"}
        if "heartbeat" not in self.url:
            params.heartbeat = self._heartbeat
        params.blocked_connection_timeout = 300
        try:
            self.connection = pika.BlockingConnection(params)
        except CONNECTION_ERRORS + (pika.exceptions.AMQPError,) as e:
            self.connection = None
            self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            logger.warning("Cannot connect to RabbitMQ at %s (%s); retrying.", redact_url(self.url), self.last_error)
            return False
        self.generation += 1
        if self.generation > 1:
            logger.info("Reconnected the %s link to RabbitMQ at %s.", self.role, redact_url(self.url))
        self.last_error = None
        try:
            for hook in list(self._on_connect):
                hook(self)
        except CONNECTION_ERRORS as e:
            self._lost(e)
            return False
        return True

    def _pause(self, seconds):
        """Back off between connection attempts, waking early when closed."""
        deadline = time.monotonic() + seconds
        while not self._closed and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _drain(self):
        while self._requests and not self._closed:
            with self._lock:
                request = self._requests.popleft()
                if request.state == "cancelled":
                    continue
                request.state = "running"
            self._run_request(request)

    def _run_request(self, request):
        """Run one request in the task holding the connection; a lost connection is re-raised."""
        try:
            result = request.fn(self)
            if isinstance(result, Pending):
                request.state = "pending"
                self._pending.add(request)
                result._attach(lambda error, request=request: self._settle_pending(request, error))
                return
            request.result = result
        except CONNECTION_ERRORS as e:
            if request.retry:
                with self._lock:
                    request.state = "queued"
                    self._requests.appendleft(request)
            else:
                self._finish(request, ConnectionClosed(
                    f"lost the connection to RabbitMQ at {redact_url(self.url)} during the request: {e!r}"))
            raise
        except Exception as e:  # handed to the caller, who decides
            self._finish(request, e)
        else:
            self._finish(request, None)

    def _coalesce_output(self):
        """Join the frames pika queued for the socket into one chunk, so they go in one ``send``.

        pika sends each queued frame (three per published message, one per ack) with
        its own ``send``; each costs a system call (a gevent one when patched) and
        releases the GIL, and a caller thread busy sending takes it for up to
        ``sys.getswitchinterval()`` (5 ms) every time. Uses pika's private transport
        buffer (a deque of bytes, kept since pika 1.0); without it, nothing changes.
        """
        transport = getattr(self.connection._impl, "_transport", None)
        buffers = getattr(transport, "_tx_buffers", None)
        if isinstance(buffers, collections.deque) and len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)

    def _settle_pending(self, request, error):
        self._pending.discard(request)
        if request.state != "done":  # not already failed by _shutdown
            self._finish(request, error)
        if self._parks and self._driver is None and not self._pending and self.connection is not None:
            # The owner waits in process_data_events, which returns early only for
            # pika's own ready events (a zero-delay timer is one): it may park now.
            try:
                self.connection.call_later(0, _nothing)
            except CONNECTION_ERRORS + (pika.exceptions.AMQPError, AttributeError):
                pass  # the connection is going: whoever waits on it hears of that anyway

    def _finish(self, request, error):
        request.error = error
        if not request.detached:
            if request.done is None:  # a driven request: its caller may be making its event right now
                with self._lock:
                    request.state = "done"
                    done = request.done
            else:
                request.state = "done"
                done = request.done
            if done is not None:
                done.set()
            return
        request.state = "done"
        if error is not None:
            logger.error("A background RabbitMQ request on the %s link failed: %s: %s",
                         self.role, type(error).__name__, error)
        with self._lock:
            self._detached -= 1
            self._settled.notify_all()

    def _lost(self, error):
        self.last_error = f"{type(error).__name__}: {error}"
        if not self._closed:
            logger.warning("Lost the %s connection to RabbitMQ at %s (%s); reconnecting.",
                           self.role, redact_url(self.url), self.last_error)
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except CONNECTION_ERRORS + (pika.exceptions.AMQPError,):
                pass  # already gone; closing is only to free the socket

    def _shutdown(self):
        connection, self.connection = self.connection, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except CONNECTION_ERRORS + (pika.exceptions.AMQPError,) as e:
                logger.debug("Closing the %s connection failed: %s", self.role, e)
        with self._lock:
            pending, self._requests = list(self._requests) + list(self._pending), collections.deque()
            self._pending = set()
        for request in pending:
            if request.state in ("queued", "pending"):
                self._finish(request, ConnectionClosed(f"the {self.role} link to {redact_url(self.url)} was closed"))



def _nothing():
    pass


_live_links = weakref.WeakSet()  # links that had detached requests, for the exit flush
_exiting = False


@atexit.register
def _flush_at_exit():
    """Let detached requests finish before the interpreter goes (the owner is a daemon thread).

    Runs after non-daemon threads were joined, while daemon threads still run.
    Requests submitted later (another exit hook) are waited for one by one.
    """
    global _exiting
    _exiting = True
    for link in list(_live_links):
        left = link.flush(link._flush_timeout)
        if left:
            logger.error("%d message(s) handed to the %s link were not confirmed by RabbitMQ at %s before "
                         "exit and may be lost%s", left, link.role, redact_url(link.url),
                         f" ({link.last_error})" if link.last_error else "")
