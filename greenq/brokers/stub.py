"""An in-memory broker for users' unit tests.

It keeps the same promises as the real brokers (messages are encoded on the way
in and decoded on the way out, delays are held by the broker, priorities order
the queue, failures land in dead letters) so a test against it means something.
``join`` waits for a queue to drain; ``dead_letters`` shows what failed.
"""

import heapq
import itertools
import logging
import threading
import time

from ..broker import DEAD_MESSAGE_TTL, Broker, Consumer
from ..errors import DecodeError, QueueJoinTimeout
from ..message import Message, MessageProxy, current_millis

logger = logging.getLogger("greenq.brokers.stub")


class _Queue:
    __slots__ = ("ready", "delayed", "in_flight", "dead", "failures")

    def __init__(self):
        self.ready = []      # heap of (-priority, seq, payload)
        self.delayed = []    # heap of (eta, seq, priority, payload)
        self.in_flight = {}  # seq -> (-priority, seq, payload)
        self.dead = []       # (dead_at_ms, Message)
        self.failures = []   # exceptions of dead-lettered messages, for join(fail_fast=True)

    def pending(self):
        return len(self.ready) + len(self.delayed) + len(self.in_flight)


class StubBroker(Broker):
    """A broker in this process's memory, for tests. Not shared between processes."""

    def __init__(self, middleware=None):
        super().__init__(middleware=middleware)
        self._state = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()

    def _declare_queue(self, queue_name):
        with self._cond:
            self._state.setdefault(queue_name, _Queue())

    def _enqueue(self, message, eta, priority):
        self._enqueue_many([(message, eta, priority)])

    def _enqueue_many(self, entries):
        encoded = [(m.queue_name, m.encode(), eta, priority) for m, eta, priority in entries]
        with self._cond:
            for queue_name, payload, eta, priority in encoded:
                self._push(queue_name, payload, eta, priority)
            self._cond.notify_all()

    def enqueue_raw(self, queue_name, payload, priority=0):
        """Push bytes as they are, for tests of what workers do with bad payloads."""
        self.declare_queue(queue_name)
        with self._cond:
            self._push(queue_name, payload, None, priority)
            self._cond.notify_all()

    def _push(self, queue_name, payload, eta, priority):
        queue = self._state[queue_name]
        seq = next(self._seq)
        if eta is not None and eta > current_millis():
            heapq.heappush(queue.delayed, (eta, seq, priority, payload))
        else:
            heapq.heappush(queue.ready, (-priority, seq, payload))

    def _promote(self, queue):
        """Move due delayed messages to ready; return seconds until the next one is due."""
        now = current_millis()
        while queue.delayed and queue.delayed[0][0] <= now:
            _, seq, priority, payload = heapq.heappop(queue.delayed)
            heapq.heappush(queue.ready, (-priority, seq, payload))
        return (queue.delayed[0][0] - now) / 1000 if queue.delayed else None

    def consume(self, queue_name, prefetch=1, timeout=1000):
        self.declare_queue(queue_name)
        return _StubConsumer(self, queue_name, timeout / 1000)

    def _flush(self, queue_name):
        with self._cond:
            self._state[queue_name] = _Queue()
            self._cond.notify_all()

    # --- test helpers ------------------------------------------------------------

    @property
    def dead_letters(self):
        """Every dead-lettered message, across queues, oldest first."""
        with self._cond:
            dead = [entry for queue in self._state.values() for entry in queue.dead]
        return [message for _, message in sorted(dead, key=lambda entry: entry[0])]

    def dead_letters_of(self, queue_name):
        self._check_queue(queue_name)
        with self._cond:
            return [message for _, message in self._state[queue_name].dead]

    def queue_counts(self, queue_name):
        self._check_queue(queue_name)
        with self._cond:
            queue = self._state[queue_name]
            return {"ready": len(queue.ready), "delayed": len(queue.delayed),
                    "in_flight": len(queue.in_flight), "dead": len(queue.dead)}

    def requeue_dead(self, queue_name, message_ids=None):
        self._check_queue(queue_name)
        with self._cond:
            queue = self._state[queue_name]
            wanted = None if message_ids is None else set(message_ids)
            moving = [m for _, m in queue.dead if wanted is None or m.message_id in wanted]
            queue.dead = [(t, m) for t, m in queue.dead if not (wanted is None or m.message_id in wanted)]
            queue.failures.clear()
        self._enqueue_many([(m, None, self.priority_of(m)) for m in moving])
        return len(moving)

    def purge_dead(self, queue_name):
        self._check_queue(queue_name)
        with self._cond:
            queue = self._state[queue_name]
            count, queue.dead = len(queue.dead), []
            queue.failures.clear()
            return count

    def join(self, queue_name, *, fail_fast=False, timeout=None):
        """Wait until ``queue_name`` has nothing ready, delayed or in flight.

        With ``fail_fast=True``, raise the exception of the first message of
        this queue dead-lettered since the last flush, instead of waiting for
        the rest. ``timeout``
        is in milliseconds; past it ``QueueJoinTimeout`` is raised.
        """
        self._check_queue(queue_name)
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        with self._cond:
            while True:
                queue = self._state[queue_name]
                if fail_fast and queue.failures:
                    raise queue.failures[0]
                if queue.pending() == 0:
                    return
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise QueueJoinTimeout(f"queue {queue_name!r} still had {queue.pending()} message(s) after {timeout} ms")
                next_due = self._promote(queue)
                if next_due is not None:
                    self._cond.notify_all()
                    wait = next_due if wait is None else min(wait, next_due)
                self._cond.wait(wait)

    def __repr__(self):
        return "StubBroker()"


class _StubConsumer(Consumer):
    def __init__(self, broker, queue_name, timeout):
        self.broker = broker
        self.queue_name = queue_name
        self._iter_timeout = timeout
        self._held = set()

    def fetch(self, count, timeout):
        cond = self.broker._cond
        deadline = time.monotonic() + timeout
        raw = []
        with cond:
            while True:
                queue = self.broker._state[self.queue_name]
                next_due = self.broker._promote(queue)
                if queue.ready:
                    break
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return []
                cond.wait(wait if next_due is None else min(wait, next_due))
            while queue.ready and len(raw) < count:
                entry = heapq.heappop(queue.ready)
                queue.in_flight[entry[1]] = entry
                self._held.add(entry[1])
                raw.append(entry)
        messages = []
        for entry in raw:
            try:
                messages.append(MessageProxy(Message.decode(entry[2]), receipt=entry[1]))
            except DecodeError as e:
                self._dead_letter_raw(entry, e)
        return messages

    def _dead_letter_raw(self, entry, error):
        logger.error("Dead-lettering undecodable message %s on queue %r: %s", error.message_id or "(no id)",
                     self.queue_name, error.reason)
        placeholder = Message(
            queue_name=self.queue_name, actor_name="<undecodable>", args=(), kwargs={},
            options={"failure": f"DecodeError: {error.reason}", "raw": repr(entry[2])[:1000]},
            message_id=error.message_id or f"undecodable-{entry[1]}",
        )
        self._settle([entry[1]], dead=[placeholder], failures=[error])

    def _settle(self, receipts, dead=(), failures=()):
        cond = self.broker._cond
        with cond:
            queue = self.broker._state[self.queue_name]
            for receipt in receipts:
                queue.in_flight.pop(receipt, None)
                self._held.discard(receipt)
            if dead:
                now = current_millis()
                queue.dead = [(t, m) for t, m in queue.dead if now - t < DEAD_MESSAGE_TTL]
                queue.dead.extend((now, m) for m in dead)
                queue.failures.extend(failures)
            cond.notify_all()

    def ack(self, messages):
        self._settle([m.receipt for m in messages])

    def nack(self, messages):
        failures = [m.exception or RuntimeError(m.failure or "message failed") for m in messages]
        self._settle([m.receipt for m in messages], dead=[m.to_message() for m in messages], failures=failures)

    def requeue(self, messages):
        self._return([m.receipt for m in messages])

    def _return(self, receipts):
        cond = self.broker._cond
        with cond:
            queue = self.broker._state[self.queue_name]
            for receipt in receipts:
                entry = queue.in_flight.pop(receipt, None)
                self._held.discard(receipt)
                if entry is not None:
                    heapq.heappush(queue.ready, entry)
            cond.notify_all()

    def close(self):
        self._return(list(self._held))
