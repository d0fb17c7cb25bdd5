"""A broker that runs each actor at send time, in the sender, for development.

Messages go through the same middleware and processing as in a worker (so
Results, Callbacks and AgeLimit behave), but nothing is stored: delays are
ignored, retries run at once, and an actor's exception reaches the caller of
``send`` once retries are exhausted.
"""

from ..broker import Broker
from ..message import MessageProxy


class LocalBroker(Broker):
    def _declare_queue(self, queue_name):
        pass

    def _enqueue(self, message, eta, priority):
        from ..worker import process_message

        proxy = MessageProxy(message)
        process_message(self, proxy)
        if proxy.failed and proxy.exception is not None:
            raise proxy.exception

    def consume(self, queue_name, prefetch=1, timeout=1000):
        raise NotImplementedError("LocalBroker runs actors at send time; it has nothing for a worker to consume")

    def _flush(self, queue_name):
        pass

    def __repr__(self):
        return "LocalBroker()"
