"""Pipelined, confirmed publishing on the publish link.

The channel is always in confirm mode, whatever the broker's
``confirm_delivery``: that option only decides whether ``send()`` waits for the
confirm (``Link.call``) or hands the publish over (``Link.submit``). Either way
the publisher knows which messages RabbitMQ has not confirmed yet, so a lost
connection republishes them and ``close()`` / interpreter exit can wait for them.

pika's ``BlockingChannel`` waits for each publisher confirm before the next
publish, so the link's single owner would publish one message per round trip
(with persistent messages, one disk sync of the server's batch) whatever the
number of greenlets sending. Instead the owner publishes on the channel's
asynchronous side (``BlockingChannel._impl``, pika's ``Channel``), keeps every
unconfirmed message by its delivery tag, and answers each caller when
RabbitMQ's ``Basic.Ack`` (often ``multiple``) covers its messages. Hundreds of
greenlets sending at once share the round trips and the server's disk syncs.

Mandatory publishing: a message RabbitMQ cannot route comes back as
``Basic.Return`` (before its ack); the entry is matched by ``message_id`` and the
caller gets ``QueueNotFound``.

After a lost connection, unconfirmed messages are published again on the new
connection (at-least-once); a channel closed by RabbitMQ itself (e.g. a missing
exchange) fails the messages it carried. A forked child forgets the parent's
unconfirmed messages (the parent publishes them again itself if it must).

Everything here runs in the publish link's owner.
"""

import collections
import logging
import os

import pika.exceptions

from ._amqp_link import Pending

logger = logging.getLogger("greenq.brokers.rabbitmq")


class _Batch:
    """One caller's messages: resolved when all are confirmed, or at the first failure."""

    __slots__ = ("pending", "left")

    def __init__(self, count):
        self.pending = Pending()
        self.left = count

    def confirmed(self):
        self.left -= 1
        if self.left <= 0:
            self.pending.resolve(None)

    def failed(self, error):
        self.left = -1
        self.pending.resolve(error)


class Publisher:
    def __init__(self, broker):
        self.broker = broker
        self._reset()

    def _reset(self):
        self.pid = os.getpid()
        self.channel = None
        self.generation = None
        self.tag = 0
        self.unconfirmed = collections.OrderedDict()  # delivery tag -> (item, batch), in tag order
        self.returned = {}  # message_id -> reply text of a Basic.Return not yet acked

    def _check_fork(self):
        if os.getpid() != self.pid:
            self._reset()  # a forked child: the parent's unconfirmed messages are the parent's

    def on_reconnect(self, link):
        """Publish again what the lost connection left unconfirmed."""
        self._check_fork()
        if self.unconfirmed:
            self._open(link)

    def publish(self, link, items, started):
        """Publish ``[(exchange, routing_key, body, properties)]``; a ``Pending`` for their confirms.

        The ``Pending`` is also appended to ``started`` as soon as the messages are
        registered, so a caller rerun after a lost connection does not send them twice.
        """
        self._check_fork()
        if self.channel is None or self.generation != link.generation or not self.channel.is_open:
            self._open(link)
        batch = _Batch(len(items))
        for item in items:  # registered before sending: if the connection drops midway, all go again
            self.tag += 1
            self.unconfirmed[self.tag] = (item, batch)
        started.append(batch.pending)
        for item in items:
            self._send(item)
        return batch.pending

    def _open(self, link):
        blocking = link.connection.channel()
        channel = blocking._impl
        # Confirm mode on the asynchronous side only: BlockingChannel's own
        # confirm handling expects one blocking publish per ack.
        selected = []
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        while not selected:
            link.connection.process_data_events(time_limit=0.005)  # returns only on its timer here
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(self._on_close)
        self._blocking = blocking
        self.channel = channel
        self.generation = link.generation
        self.tag = 0
        left, self.unconfirmed = list(self.unconfirmed.values()), collections.OrderedDict()
        self.returned.clear()
        if left:
            logger.warning("Publishing %d unconfirmed message(s) again after reconnecting.", len(left))
        left = [(item, batch) for item, batch in left if batch.left >= 0]
        for item, batch in left:
            self.tag += 1
            self.unconfirmed[self.tag] = (item, batch)
        for item, _ in left:
            self._send(item)

    def _send(self, item):
        exchange, routing_key, body, properties = item
        self.channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)

    def _on_confirm(self, frame):
        method = frame.method
        if method.multiple:  # the oldest entries, up to the tag: stop at the first one past it
            tags = []
            for tag in self.unconfirmed:
                if tag > method.delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [method.delivery_tag] if method.delivery_tag in self.unconfirmed else []
        nack = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            item, batch = self.unconfirmed.pop(tag)
            returned = self.returned.pop(item[3].message_id, None) if item[3].message_id else None
            if nack:
                batch.failed(self.broker._publish_refused(item, "RabbitMQ refused to store it (publisher nack)"))
            elif returned is not None:
                batch.failed(self.broker._publish_refused(item, returned))
            else:
                batch.confirmed()

    def _on_return(self, channel, method, properties, body):
        if properties.message_id:
            self.returned[properties.message_id] = f"unroutable ({method.reply_code} {method.reply_text})"

    def _on_close(self, channel, reason):
        if channel is not self.channel:
            return
        self.channel = None
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            error = self.broker._translate(reason)
            failed, self.unconfirmed = list(self.unconfirmed.values()), collections.OrderedDict()
            for _, batch in failed:
                batch.failed(error)
        # otherwise the connection went: on_reconnect publishes the rest again
