"""The RabbitMQ consumer: one channel with ``basic_consume`` per Consumer, on the shared consume link.

RabbitMQ pushes up to ``prefetch`` unacked deliveries (``basic_qos``) into the
channel; the link's owner appends them to this consumer's buffer and wakes a
waiting ``fetch``. ``fetch`` only takes from the buffer, so it never talks to the
server and never holds the connection (except to raise the prefetch once when a
caller holds more than ``prefetch`` messages and asks for more: the limit is
``max(prefetch, held + count)``, which for a worker is its capacity; classic queues only, as quorum
queues cannot change a running consumer's limit): ``ack`` / ``nack`` / ``requeue`` from the
settler greenlet go straight to the owner, which is woken at once, and an idle
fetch cannot delay them.

A receipt is ``(generation, delivery_tag)``. After a reconnection, receipts of
the old connection are stale: RabbitMQ has already put those messages back, so
settling them is skipped (the worker's result is lost, the message runs again:
at-least-once).

``in_flight`` bookkeeping (for ``queue_counts``) counts what this process's
consumers hold: RabbitMQ only reports unacked totals through its management
API, which greenq does not require.
"""

import collections
import logging
import threading
import time

import pika.exceptions

from ..broker import Consumer
from ..errors import ConnectionError, DecodeError
from ..message import Message, MessageProxy, current_millis
from . import _amqp_topology as topology

logger = logging.getLogger("greenq.brokers.rabbitmq")


class RabbitmqConsumer(Consumer):
    def __init__(self, broker, queue_name, prefetch, timeout):
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, int(prefetch))
        self._qos = self.prefetch
        # A per-channel limit can be raised while consuming; quorum queues only
        # take per-consumer limits, fixed when the consumer starts.
        self._global_qos = broker.queue_type == "classic"
        self._iter_timeout = timeout / 1000
        self._link = broker._consume_link
        self._cond = threading.Condition()
        self._buffer = collections.deque()  # (generation, tag, body, redelivered, headers)
        self._waiting = False               # a fetch waits on _cond for a delivery
        self._held = set()                  # receipts handed out and not yet settled
        self._channel = None                # owner only
        self._generation = None
        self._closed = False
        self._cancelled = False
        self._link.add_on_connect(self._on_reconnect)
        self._link.call(self._subscribe)

    # --- in the link's owner -------------------------------------------------------------

    def _subscribe(self, link):
        old, self._channel = self._channel, None
        if old is not None and old.is_open and self._generation == link.generation:
            old.close()  # a consumer cancelled by the server leaves its channel open
        channel = link.connection.channel()
        channel.basic_qos(prefetch_count=self._qos, global_qos=self._global_qos)
        channel.add_on_cancel_callback(self._on_cancel)
        self._generation = link.generation
        self._cancelled = False
        self._drop_stale()
        try:
            channel.basic_consume(self.queue_name, self._on_delivery)
        except pika.exceptions.ChannelClosedByBroker as e:
            raise self.broker._translate(e, self.queue_name) from None
        self._channel = channel

    def _on_reconnect(self, link):
        if self._closed:
            return
        try:
            self._subscribe(link)
        except pika.exceptions.AMQPChannelError as e:
            logger.error("Could not consume queue %r again after reconnecting: %s", self.queue_name, e)
            self._on_cancel(None)

    def _on_delivery(self, channel, method, properties, body):
        """Buffer one delivery; take the lock only to wake a ``fetch`` that waits.

        ``deque.append`` is atomic, and a fetch sets ``_waiting`` before it looks
        at the buffer, so either it sees this entry or this sees it waiting. A
        lock and a notify per delivery cost 3-4 us that a busy consumer, whose
        fetches find the buffer full, never needs.
        """
        self._buffer.append((self._generation, method.delivery_tag, body, method.redelivered, properties.headers))
        self.broker._in_flight_add(self.queue_name, 1)
        if self._waiting:
            with self._cond:
                self._cond.notify_all()

    def _on_cancel(self, _frame):
        """RabbitMQ cancelled the consumer (queue deleted, or a quorum leader moved)."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def _drop_stale(self):
        with self._cond:
            stale = [e for e in self._buffer if e[0] != self._generation]
            stale_held = [r for r in self._held if r[0] != self._generation]
            if stale:
                self._buffer = collections.deque(e for e in self._buffer if e[0] == self._generation)
            self._held.difference_update(stale_held)
            self.broker._in_flight_add(self.queue_name, -(len(stale) + len(stale_held)))
        if stale_held:
            logger.warning("%d message(s) of queue %r were held across a lost connection; RabbitMQ redelivers them.",
                           len(stale_held), self.queue_name)

    def _settle_in_owner(self, link, receipts, requeue=False):
        live = [tag for generation, tag in receipts
                if generation == link.generation and self._channel is not None and self._channel.is_open]
        stale = len(receipts) - len(live)
        if not requeue and len(live) > 1:
            frames = self._ack_prefix(link, live)
        else:
            frames = [(tag, False) for tag in live]  # (delivery tag, multiple)
        for i, (tag, multiple) in enumerate(frames):
            # Frames queue on the asynchronous side and are joined into one write;
            # the last call, on the blocking side, flushes them (pika's blocking ack
            # flushes its I/O loop every time, and would send each frame on its own).
            last = i == len(frames) - 1
            if last:
                link._coalesce_output()
            channel = self._channel if last else self._channel._impl
            if requeue:
                channel.basic_nack(tag, requeue=True)
            else:
                channel.basic_ack(tag, multiple=multiple)
        if requeue and live:
            # A round trip through the same channel: RabbitMQ has put the messages
            # back before it answers, so counts read afterwards include them.
            self._channel.queue_declare(self.queue_name, passive=True)
        return stale

    def _ack_prefix(self, link, tags):
        """``[(tag, multiple)]``: one cumulative ack for the tags below every delivery still outstanding, then the rest.

        Each ``basic_ack`` costs a frame; a batch of finished messages usually
        starts with the channel's oldest unsettled deliveries, so one cumulative
        ack covers most of it. Tags of deliveries not in the batch (held by
        running actors, or still buffered) bound it; IO-bound actors finishing
        out of order leave the rest to be acked one by one.
        """
        batch = set(tags)
        with self._cond:
            others = [tag for generation, tag in self._held
                      if generation == link.generation and tag not in batch]
            others += [entry[1] for entry in self._buffer if entry[0] == link.generation]
        bound = min(others, default=None)
        covered = sorted(tag for tag in tags if bound is None or tag < bound)
        if len(covered) > 1:
            covered_set = set(covered)
            return [(covered[-1], True)] + [(tag, False) for tag in tags if tag not in covered_set]
        return [(tag, False) for tag in tags]

    # --- the Consumer contract ---------------------------------------------------------------

    def _raise_qos(self, wanted):
        """Let RabbitMQ push up to ``wanted`` unacked messages (a fetch asked for more than prefetch)."""
        def run(link):
            if self._channel is not None and self._channel.is_open and wanted > self._qos:
                self._channel.basic_qos(prefetch_count=wanted, global_qos=True)
            self._qos = max(self._qos, wanted)

        self._link.call(run)

    def fetch(self, count, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            wanted = len(self._held) + count  # unacked after this fetch; buffered deliveries are part of count
        if wanted > self._qos and count > len(self._buffer) and self._global_qos:
            self._raise_qos(wanted)
        with self._cond:
            while not self._buffer and not self._closed and not self._cancelled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._waiting = True  # before the next look at the buffer (see _on_delivery)
                try:
                    if not self._buffer:
                        self._cond.wait(remaining)
                finally:
                    self._waiting = False
            cancelled = self._cancelled and not self._buffer
            taken = [self._buffer.popleft() for _ in range(min(count, len(self._buffer)))]
            self._held.update((e[0], e[1]) for e in taken)
        if cancelled and not self._closed:
            logger.warning("RabbitMQ cancelled the consumer of queue %r; subscribing again.", self.queue_name)
            self._link.call(self._subscribe)
            return []
        messages = []
        for generation, tag, body, redelivered, headers in taken:
            receipt = (generation, tag)
            try:
                message = Message.decode(body)
            except DecodeError as e:
                self._dead_letter_undecodable(receipt, body, e)
                continue
            eta = message.options.get("eta")
            if isinstance(eta, int) and eta - current_millis() > topology.DELAY_UNIT_MS:
                self._redelay(receipt, message, eta)
                continue
            messages.append(MessageProxy(message, receipt=receipt, redelivered=redelivered))
        return messages

    def _dead_letter_undecodable(self, receipt, body, error):
        message_id = error.message_id or f"undecodable-{receipt[0]}-{receipt[1]}"
        logger.error("Dead-lettering undecodable message %s on queue %r: %s", message_id, self.queue_name,
                     error.reason)
        placeholder = Message(
            queue_name=self.queue_name, actor_name="<undecodable>", args=(), kwargs={},
            options={"failure": f"DecodeError: {error.reason}", "failed_at": current_millis(),
                     "raw": repr(body)[:1000]},
            message_id=message_id,
        )
        self.broker._publish_dead([placeholder])
        self._settle([receipt])

    def _redelay(self, receipt, message, eta):
        """A message that came off the delay ladder early (a delay past its reach): send it round again."""
        logger.debug("Message %s is due in %d ms; delaying it again.", message.message_id, eta - current_millis())
        self.broker._publish_messages([(message, eta, self.broker.priority_of(message))], wait=True)
        self._settle([receipt])

    def _settle(self, receipts, requeue=False):
        if not receipts:
            return
        try:
            stale = self._link.call(lambda link: self._settle_in_owner(link, receipts, requeue))
        finally:
            with self._cond:
                mine = [r for r in receipts if r in self._held]
                self._held.difference_update(mine)
                self.broker._in_flight_add(self.queue_name, -len(mine))
        if stale:
            logger.warning("%d message(s) of queue %r were fetched on an earlier connection; "
                           "RabbitMQ redelivers them instead.", stale, self.queue_name)

    def ack(self, messages):
        self._settle([m.receipt for m in messages])

    def nack(self, messages):
        """Store each failed message (with its failure) in ``<queue>.XQ``, confirmed, then ack the original.

        ``<queue>`` is the queue it was consumed from, whatever its payload's ``queue_name`` says.
        """
        self.broker._publish_dead([m.to_message() for m in messages], self.queue_name)
        self._settle([m.receipt for m in messages])

    def requeue(self, messages):
        self._settle([m.receipt for m in messages], requeue=True)

    def close(self):
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._link.remove_on_connect(self._on_reconnect)

        def close_channel(link):
            channel, self._channel = self._channel, None
            if channel is not None and channel.is_open and self._generation == link.generation:
                channel.close()  # RabbitMQ puts every unacked delivery back before it answers

        try:
            self._link.call(close_channel, timeout=5.0)
        except ConnectionError as e:  # the server is gone: it puts the unacked messages back itself
            logger.warning("Closing the consumer of queue %r: %s", self.queue_name, e)
        finally:
            with self._cond:
                count = len(self._buffer) + len(self._held)
                self._buffer.clear()
                self._held.clear()
                self.broker._in_flight_add(self.queue_name, -count)
