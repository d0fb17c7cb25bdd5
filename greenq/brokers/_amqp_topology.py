"""Names, arguments and routing of the RabbitMQ queues and exchanges greenq uses.

Per greenq queue ``q``:

``q``
    the work queue. Durable; dead-letters (a reject, or a quorum queue's
    ``x-delivery-limit`` exceeded) to ``q.XQ`` through the default exchange;
    ``x-max-priority`` when priorities are on (classic queues only).
``q.XQ``
    dead letters, each dropped after ``x-message-ttl`` (7 days by default).
``q.DQ.0`` .. ``q.DQ.24``
    the delay ladder: rung ``k`` holds messages for ``32 ms * 2**k`` (queue-level
    ``x-message-ttl``), then dead-letters them into exchange ``greenq.delay.<k-1>``.

Shared by every queue of a vhost: topic exchanges ``greenq.delay.24`` ..
``greenq.delay.0`` and ``greenq.delay.deliver``.

How a delay works. A delay of ``d`` ms becomes ``n = ceil(d / 32)`` units, written
in binary into the routing key, highest rung first, followed by the queue name:
``0.0.....1.1.0.0.1.q``. Exchange ``greenq.delay.k`` routes a key whose bit ``k``
is 1 into ``q.DQ.k`` (a binding per queue), and one whose bit is 0 on to
``greenq.delay.<k-1>`` (one exchange-to-exchange binding per vhost). Dead-lettering
keeps the routing key, so after waiting in ``q.DQ.k`` the message goes on to the
next lower bit; past bit 0, ``greenq.delay.deliver`` routes it into ``q``.

Why this shape: every message of a rung has the same TTL, so the queue's head is
always the first to expire; no long delay ever holds up a shorter one, which is
what goes wrong with per-message TTL on a single delay queue. The whole delay is
kept by RabbitMQ (durable, persistent, survives restarts), nothing is held in a
worker's memory and no greenq process needs to run for a delay to elapse.

Precision and cost: delays are rounded up to 32 ms, and each rung passed adds a
dead-lettering hop (well under a millisecond on an idle server), so a message is
due 0-32 ms late plus a few ms, never early. A message passes at most 25 rungs.
Each queue costs 25 extra (idle, empty) queues and bindings, declared once.
The ladder covers up to ``(2**25 - 1) * 32`` ms (about 12.4 days); a longer
delay goes round again: the consumer that receives it early re-delays the rest
at once (it does not hold it).
"""

import math
import re

from ..broker import DEAD_MESSAGE_TTL

DELAY_UNIT_MS = 32
DELAY_RUNGS = 25
MAX_LADDER_MS = (2 ** DELAY_RUNGS - 1) * DELAY_UNIT_MS
DELIVER_EXCHANGE = "greenq.delay.deliver"


def rung_exchange(k):
    return DELIVER_EXCHANGE if k < 0 else f"greenq.delay.{k}"


def xq_name(queue_name):
    return f"{queue_name}.XQ"


def dq_name(queue_name, k):
    return f"{queue_name}.DQ.{k}"


def companion_names(queue_name):
    """Every RabbitMQ queue behind one greenq queue, the work queue first."""
    return [queue_name, xq_name(queue_name)] + [dq_name(queue_name, k) for k in range(DELAY_RUNGS)]


def check_queue_name(queue_name):
    """Topic routing splits names at dots; a word ``*`` or ``#`` would route to other queues."""
    words = queue_name.split(".")
    if any(word in ("*", "#") for word in words):
        raise ValueError(f"queue name {queue_name!r} has a '*' or '#' word, which RabbitMQ topic routing "
                         "(used for delays) treats as a wildcard; choose another name")
    if len(queue_name.encode("utf-8")) > 255 - 2 * DELAY_RUNGS:
        raise ValueError(f"queue name {queue_name!r} is too long for RabbitMQ "
                         f"(at most {255 - 2 * DELAY_RUNGS} bytes, so that delay routing keys fit)")


def delay_route(queue_name, delay_ms):
    """``(exchange, routing_key)`` that delivers into ``queue_name`` after at least ``delay_ms``.

    ``None`` when the delay is below one unit (the message is ready now). Delays
    past the ladder's reach are capped; the consumer re-delays the rest.
    """
    units = min(math.ceil(max(delay_ms, 0) / DELAY_UNIT_MS), 2 ** DELAY_RUNGS - 1)
    if units <= 0:
        return None
    bits = [str((units >> k) & 1) for k in range(DELAY_RUNGS - 1, -1, -1)]
    return rung_exchange(units.bit_length() - 1), ".".join(bits + [queue_name])


def _pattern_for_bit(k, value, tail):
    return ".".join(["*"] * (DELAY_RUNGS - 1 - k) + [value] + tail)


def shared_bindings():
    """Exchange-to-exchange bindings of the ladder: ``(source, destination, pattern)``."""
    return [(rung_exchange(k), rung_exchange(k - 1), _pattern_for_bit(k, "0", ["#"])) for k in range(DELAY_RUNGS)]


def queue_bindings(queue_name):
    """Bindings of one queue's rungs and delivery: ``(queue, exchange, pattern)``."""
    words = [queue_name]
    bindings = [(dq_name(queue_name, k), rung_exchange(k), _pattern_for_bit(k, "1", ["*"] * k + words))
                for k in range(DELAY_RUNGS)]
    bindings.append((queue_name, DELIVER_EXCHANGE, ".".join(["*"] * DELAY_RUNGS + words)))
    return bindings


class QueueArguments:
    """The ``x-`` arguments of each queue, from the broker's settings."""

    def __init__(self, queue_type="classic", max_priority=None, delivery_limit=None,
                 dead_message_ttl=DEAD_MESSAGE_TTL):
        self.queue_type = queue_type
        self.max_priority = max_priority
        self.delivery_limit = delivery_limit
        self.dead_message_ttl = dead_message_ttl

    def _typed(self, args):
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        return args

    def work(self, queue_name):
        args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": xq_name(queue_name)}
        if self.max_priority:
            args["x-max-priority"] = self.max_priority
        if self.queue_type == "quorum" and self.delivery_limit is not None:
            args["x-delivery-limit"] = self.delivery_limit
        return self._typed(args)

    def dead(self):
        return self._typed({"x-message-ttl": self.dead_message_ttl})

    def rung(self, k):
        return self._typed({"x-message-ttl": DELAY_UNIT_MS * 2 ** k, "x-dead-letter-exchange": rung_exchange(k - 1)})

    def all_queues(self, queue_name):
        """``[(name, arguments)]`` for every queue behind ``queue_name``."""
        return ([(queue_name, self.work(queue_name)), (xq_name(queue_name), self.dead())]
                + [(dq_name(queue_name, k), self.rung(k)) for k in range(DELAY_RUNGS)])


#: Which RabbitmqBroker setting decides each queue argument, for error messages.
_SETTING_OF = {
    "x-max-priority": "max_priority",
    "x-queue-type": "queue_type",
    "x-delivery-limit": "delivery_limit",
    "x-message-ttl": "dead_message_ttl (on .XQ queues; fixed on .DQ rungs)",
    "durable": "durability (greenq queues are always durable)",
}


def explain_precondition_failed(queue_name, reply_text, url):
    """A readable ``BrokerConfigError`` message for RabbitMQ's 406 on queue.declare."""
    match = re.search(r"inequivalent arg '([^']+)'", reply_text or "")
    argument = match.group(1) if match else None
    where = f"queue {queue_name!r} on {url}"
    if argument is None:
        return (f"{where} exists with settings that differ from this broker's: {reply_text}. "
                f"Delete the queue (rabbitmqctl delete_queue) or configure RabbitmqBroker to match.")
    setting = _SETTING_OF.get(argument, argument)
    return (f"{where} was declared earlier with a different {argument!r} ({reply_text}). "
            f"Either configure RabbitmqBroker's {setting} to match the existing queue, or delete the queue "
            f"so greenq can declare it again (rabbitmqctl delete_queue {queue_name!r}; its messages are lost).")
