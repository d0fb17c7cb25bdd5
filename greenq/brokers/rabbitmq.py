"""The RabbitMQ broker, on pika, safe to share between hundreds of greenlets.

Connections. A broker opens two AMQP connections per process, whatever the
number of greenlets, queues or consumers: a *publish* link (publisher confirms,
declarations, counts, dead-letter reads) and a *consume* link (one channel per
consumer). Each is owned by one I/O greenlet (or thread) that runs every AMQP
operation for the others (see ``_amqp_link``). Connections are named
``greenq publish pid=...`` / ``greenq consume pid=...`` (client property
``connection_name``), so ``rabbitmqctl list_connections name`` shows whose they are.

Guarantees. Queues are durable, messages persistent (``delivery_mode=2``), and
with ``confirm_delivery=True`` (the default) ``enqueue`` returns only once
RabbitMQ has confirmed it stored the message. With ``confirm_delivery=False``
``enqueue`` hands the message to the publish link's owner and returns at once;
the owner still publishes with confirms, so at most ``detached_limit`` (1000)
are unconfirmed before senders wait, a lost connection republishes them, a
refusal (e.g. the queue was deleted) is logged, and ``close()`` and interpreter
exit wait (up to ``publish_timeout``) until RabbitMQ confirmed them all.
Dead letters are always confirmed before the original is acked.

A consumer's channel has ``basic_qos(prefetch)``, the worker's capacity, so
RabbitMQ dispatches fairly between workers; a message is acked only after the
worker settled it, so a worker that dies (even ``kill -9``) leaves its messages
to be redelivered.
After a dropped connection or a broker restart both links reconnect with backoff;
publishes in progress are retried (at-least-once), consumers subscribe again.

Queues, delays, dead letters: see ``_amqp_topology``. In short, ``<queue>.XQ``
holds dead letters for ``dead_message_ttl`` (7 days), and ``<queue>.DQ.<k>``
form a ladder of queue-level TTLs that RabbitMQ itself walks a delayed message
down, 32 ms precision, no worker memory involved.

Priorities. ``max_priority`` (off by default, as in Dramatiq) sets
``x-max-priority``; an actor priority above it counts as the maximum. Off,
RabbitMQ delivers in arrival order and each worker still runs the most urgent
of the messages it holds. A priority queue is a queue per level inside
RabbitMQ: measured here, it costs 15-60% of the no-op throughput, which is
why it is opt-in. Quorum queues have no priorities on RabbitMQ before 3.13;
``queue_type="quorum"`` declares ``x-queue-type: quorum`` and ``x-delivery-limit``
(``delivery_limit``, 20 by default) instead, so a message that keeps killing its
worker (or keeps being requeued) is dead-lettered to ``<queue>.XQ`` by RabbitMQ.

What the awkward verbs cost:

* ``queue_counts``: a passive ``queue.declare`` per RabbitMQ queue behind the
  greenq queue (27 round trips). ``in_flight`` counts only what *this broker
  instance's* consumers hold; other processes' unacked messages are in neither
  ``ready`` nor ``in_flight``.
* ``dead_letters_of``: reads ``<queue>.XQ`` with ``basic_get`` on a fresh channel
  and closes it, which puts every message back in place: one round trip per dead
  letter, and the messages pass through this process's memory.
* ``requeue_dead``: the same walk; each chosen message is republished (confirmed)
  to the work queue before its dead copy is acked.
* ``nack``: the failed message, with its failure, is published (confirmed) to
  ``<queue>.XQ``, then the original is acked.
"""

import collections
import datetime
import logging
import re
import threading
import uuid
import weakref

import pika
import pika.exceptions

from ..broker import DEAD_MESSAGE_TTL, Broker
from ..errors import BrokerConfigError, BrokerError, DecodeError, QueueNotFound
from ..message import Message, current_millis
from . import _amqp_topology as topology
from . import redact_url
from ._amqp_consumer import RabbitmqConsumer
from ._amqp_link import Link
from ._amqp_publisher import Publisher

logger = logging.getLogger("greenq.brokers.rabbitmq")

if logging.getLogger("pika").level == logging.NOTSET:
    # pika logs every channel opened and closed at INFO; greenq says what matters itself.
    logging.getLogger("pika").setLevel(logging.WARNING)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class RabbitmqBroker(Broker):
    """A broker on RabbitMQ. ``url`` is an AMQP URL; its vhost separates tenants."""

    def __init__(self, url=DEFAULT_URL, *, confirm_delivery=True, max_priority=None, queue_type="classic",
                 dead_message_ttl=DEAD_MESSAGE_TTL, delivery_limit=20, publish_timeout=30.0, middleware=None):
        if queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue_type must be 'classic' or 'quorum', not {queue_type!r}")
        if max_priority is not None:
            if queue_type == "quorum":
                raise ValueError("quorum queues have no priorities (RabbitMQ < 3.13): "
                                 "use queue_type='classic' or leave max_priority unset")
            if isinstance(max_priority, bool) or not isinstance(max_priority, int) or not 1 <= max_priority <= 255:
                raise ValueError(f"max_priority must be an integer from 1 to 255, not {max_priority!r}")
        try:
            pika.URLParameters(url)
        except Exception as e:  # pika raises assorted types for bad URLs
            raise ValueError(f"bad RabbitMQ URL {redact_url(url)!r}: {e}") from None
        super().__init__(middleware=middleware)
        self.url = url
        self.confirm_delivery = confirm_delivery
        self.max_priority = max_priority
        self.queue_type = queue_type
        self.publish_timeout = publish_timeout
        self._arguments = topology.QueueArguments(queue_type, max_priority, delivery_limit, dead_message_ttl)
        self._publish_link = Link(url, "publish", park_when_idle=True)
        self._publisher = Publisher(self)
        self._publish_link.add_on_connect(self._publisher.on_reconnect)
        self._consume_link = Link(url, "consume")
        self._channels = {}  # key -> (generation, channel); touched only by the publish link's owner
        self._shared_declared = False
        self._declared_names = []
        self._in_flight = collections.Counter()
        self._in_flight_lock = threading.Lock()
        self._consumers = weakref.WeakSet()

    def __repr__(self):
        return f"RabbitmqBroker({redact_url(self.url)!r})"

    # --- plumbing (in the publish link's owner) ------------------------------------------------

    def _owner_channel(self, link, key, confirm=False):
        entry = self._channels.get(key)
        if entry is not None and entry[0] == link.generation and entry[1].is_open:
            return entry[1]
        channel = link.connection.channel()
        if confirm:
            channel.confirm_delivery()
        self._channels[key] = (link.generation, channel)
        return channel

    def _translate(self, error, queue_name=None):
        """A greenq error for a channel closed by RabbitMQ."""
        code, text = error.reply_code, error.reply_text
        named = re.search(r"queue '([^']+)'", text or "")
        queue_name = named.group(1) if named else queue_name
        if code == 406:
            return BrokerConfigError(topology.explain_precondition_failed(queue_name, text, redact_url(self.url)))
        if code == 404:
            return QueueNotFound(f"RabbitMQ at {redact_url(self.url)} has no such queue or exchange "
                                 f"(queue {queue_name!r}): {text}")
        return BrokerError(f"RabbitMQ at {redact_url(self.url)} refused an operation on queue {queue_name!r}: "
                           f"({code}) {text}")

    def _admin(self, fn, queue_name=None):
        """Run ``fn(channel)`` on the admin channel of the publish link; greenq errors for refusals."""
        def run(link):
            channel = self._owner_channel(link, "admin")
            try:
                return fn(channel)
            except pika.exceptions.ChannelClosedByBroker as e:
                raise self._translate(e, queue_name) from None

        return self._publish_link.call(run, timeout=self.publish_timeout, retry=True)

    def _properties(self, message_id, priority, headers=None):
        if self.max_priority and priority:
            priority = min(max(int(priority), 0), self.max_priority)
        else:
            priority = None
        return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
                                    message_id=message_id, priority=priority, headers=headers)

    def _publish(self, items, wait=True):
        """Publish ``[(exchange, routing_key, body, properties)]``; with ``wait``, until RabbitMQ confirmed them.

        Pipelined with every other greenlet's publishes (see ``_amqp_publisher``);
        after a reconnection unconfirmed messages go again (at-least-once). Without
        ``wait`` the publish link's owner takes them over and the caller goes on: a
        bounded number are outstanding at a time, ``close()`` and interpreter exit
        wait for their confirms, and a refusal is logged (see ``Link.submit``).
        """
        started = []

        def run(link):
            if started:  # a rerun after a lost connection: the publisher resends them itself
                return started[0]
            return self._publisher.publish(link, items, started)

        if wait:
            self._publish_link.call(run, timeout=self.publish_timeout, retry=True)
        else:
            self._publish_link.submit(run, timeout=self.publish_timeout, retry=True)

    def _publish_refused(self, item, reason):
        exchange, routing_key = item[0], item[1]
        where = f"{routing_key!r}" + (f" via exchange {exchange!r}" if exchange else "")
        if reason.startswith("unroutable"):
            return QueueNotFound(f"RabbitMQ at {redact_url(self.url)} could not route a message to {where}: "
                                 f"the queue does not exist; was it deleted? ({reason})")
        return BrokerError(f"RabbitMQ at {redact_url(self.url)} did not store a message for {where}: {reason}")

    def _publish_messages(self, entries, wait=None):
        """Publish ``[(message, eta, priority)]`` to their queues, ready now or down the delay ladder.

        ``wait`` defaults to ``confirm_delivery``; greenq's own moves of a message
        (sending it round the delay ladder again) always wait, since the original
        is acked right after.
        """
        now = current_millis()
        items = []
        for message, eta, priority in entries:
            route = None
            if eta is not None and eta > now:
                route = topology.delay_route(message.queue_name, eta - now)
            exchange, routing_key = route or ("", message.queue_name)
            items.append((exchange, routing_key, message.encode(), self._properties(message.message_id, priority)))
        self._publish(items, wait=self.confirm_delivery if wait is None else wait)

    def _publish_dead(self, messages, queue_name=None):
        """Dead-letter to ``queue_name``'s ``.XQ`` (default: each message's own queue)."""
        self._publish([("", topology.xq_name(queue_name or m.queue_name), m.encode(),
                        self._properties(m.message_id, 0))
                       for m in messages])

    def _in_flight_add(self, queue_name, n):
        if n:
            with self._in_flight_lock:
                self._in_flight[queue_name] += n

    # --- the broker contract ---------------------------------------------------------------

    def _declare_queue(self, queue_name):
        topology.check_queue_name(queue_name)

        def declare(channel):
            if not self._shared_declared:
                for k in range(-1, topology.DELAY_RUNGS):
                    channel.exchange_declare(topology.rung_exchange(k), exchange_type="topic", durable=True)
                for source, destination, pattern in topology.shared_bindings():
                    channel.exchange_bind(destination, source, routing_key=pattern)
                self._shared_declared = True
            for name, arguments in self._arguments.all_queues(queue_name):
                channel.queue_declare(name, durable=True, arguments=arguments)
            for name, exchange, pattern in topology.queue_bindings(queue_name):
                channel.queue_bind(name, exchange, routing_key=pattern)

        self._admin(declare, queue_name)
        for name in topology.companion_names(queue_name):
            if name not in self._declared_names:
                self._declared_names.append(name)

    def _enqueue(self, message, eta, priority):
        self._publish_messages([(message, eta, priority)])

    def _enqueue_many(self, entries):
        self._publish_messages(entries)

    def enqueue_raw(self, queue_name, payload, priority=0):
        """Publish bytes as they are, ready now, persistent and confirmed."""
        self.declare_queue(queue_name)
        message_id = f"raw-{uuid.uuid4()}"  # lets a Basic.Return be matched to its publish
        self._publish([("", queue_name, bytes(payload), self._properties(message_id, priority))])

    def consume(self, queue_name, prefetch=1, timeout=1000):
        self.declare_queue(queue_name)
        consumer = RabbitmqConsumer(self, queue_name, prefetch, timeout)
        self._consumers.add(consumer)
        return consumer

    def _flush(self, queue_name):
        self._check_queue(queue_name)

        def purge(channel):
            for name in topology.companion_names(queue_name):
                channel.queue_purge(name)

        self._admin(purge, queue_name)

    def queue_counts(self, queue_name):
        self._check_queue(queue_name)

        def count(channel):
            return {name: channel.queue_declare(name, passive=True).method.message_count
                    for name in topology.companion_names(queue_name)}

        counts = self._admin(count, queue_name)
        with self._in_flight_lock:
            in_flight = max(self._in_flight[queue_name], 0)
        ready = counts.pop(queue_name)
        dead = counts.pop(topology.xq_name(queue_name))
        return {"ready": ready, "delayed": sum(counts.values()), "in_flight": in_flight, "dead": dead}

    # --- dead letters ----------------------------------------------------------------------

    def _dead_message(self, queue_name, properties, body):
        """A dead letter as a Message with ``failure`` and ``failed_at``, whoever dead-lettered it."""
        try:
            message = Message.decode(body)
        except DecodeError as e:
            return Message(queue_name=queue_name, actor_name="<undecodable>", args=(), kwargs={},
                           options={"failure": f"DecodeError: {e.reason}", "raw": repr(body)[:1000]},
                           message_id=e.message_id or (properties.message_id or "undecodable"))
        options = dict(message.options)
        if "failure" not in options or "failed_at" not in options:
            deaths = (properties.headers or {}).get("x-death") or [{}]
            death = deaths[0] if isinstance(deaths, list) and deaths else {}
            reason = _text(death.get("reason")) or "dead-lettered by RabbitMQ"
            # A quorum queue's delivery limit is the same fault the other brokers name MaxDeliveriesExceeded.
            kind = "MaxDeliveriesExceeded" if reason == "delivery_limit" else "DeadLettered"
            options.setdefault("failure", f"{kind}: RabbitMQ dead-lettered the message ({reason}) "
                                          f"from queue {_text(death.get('queue')) or queue_name!r}")
            options.setdefault("failed_at", _millis(death.get("time")) or current_millis())
            message = message.copy(options=options)
        return message

    def _walk_dead(self, queue_name, visit):
        """Call ``visit(channel, method, properties, body)`` on each dead letter; unacked ones stay."""
        self._check_queue(queue_name)
        xq = topology.xq_name(queue_name)

        def run(link):
            channel = link.connection.channel()
            try:
                results = []
                while True:
                    method, properties, body = channel.basic_get(xq)
                    if method is None:
                        return results
                    results.append(visit(link, channel, method, properties, body))
            except pika.exceptions.ChannelClosedByBroker as e:
                raise self._translate(e, xq) from None
            finally:
                if channel.is_open:
                    channel.close()  # every dead letter not acked goes back, in place

        return self._publish_link.call(run, timeout=self.publish_timeout, retry=True)

    def dead_letters_of(self, queue_name):
        return self._walk_dead(queue_name, lambda link, ch, method, properties, body:
                               self._dead_message(queue_name, properties, body))

    def requeue_dead(self, queue_name, message_ids=None):
        wanted = None if message_ids is None else set(message_ids)

        def move(link, channel, method, properties, body):
            message = self._dead_message(queue_name, properties, body)
            if wanted is not None and message.message_id not in wanted:
                return 0
            publisher = self._owner_channel(link, "requeue", confirm=True)  # confirmed before the dead letter goes
            publisher.basic_publish("", queue_name, body,
                                    self._properties(message.message_id, self.priority_of(message)))
            channel.basic_ack(method.delivery_tag)
            return 1

        return sum(self._walk_dead(queue_name, move))

    def purge_dead(self, queue_name):
        self._check_queue(queue_name)
        xq = topology.xq_name(queue_name)
        return self._admin(lambda channel: channel.queue_purge(xq).method.message_count, xq)

    # --- lifecycle -------------------------------------------------------------------------

    def delete_queues(self):
        """Delete every RabbitMQ queue this broker instance declared (work, .XQ and .DQ.k), messages included."""
        names = list(self._declared_names)

        def delete(channel):
            for name in names:
                channel.queue_delete(name)

        if names:
            self._admin(delete)
        self._declared_names = [n for n in self._declared_names if n not in names]
        with self._queues_lock:
            self.queues.clear()

    def ping(self):
        self._publish_link.call(lambda link: None, timeout=10.0)

    def close(self):
        """Close consumers and links, once RabbitMQ confirmed what sends handed over (``publish_timeout``)."""
        for consumer in list(self._consumers):
            consumer.close()
        left = self._publish_link.flush(self.publish_timeout)
        if left:
            logger.error("Closing %r with %d publish(es) not confirmed by RabbitMQ after %gs: they may be lost%s",
                         self, left, self.publish_timeout,
                         f" ({self._publish_link.last_error})" if self._publish_link.last_error else "")
        self._publish_link.close()
        self._consume_link.close()


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if value is None else str(value)


def _millis(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp() * 1000)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value * 1000)
    return None
