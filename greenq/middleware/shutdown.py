"""Tell actors that opted in (``notify_shutdown=True``) that the worker is stopping.

They get ``Shutdown`` raised inside them and can clean up and re-raise to be
retried, instead of being cut off when the shutdown timeout runs out.
"""

import logging

from ..errors import Shutdown
from .middleware import Middleware, boolean

logger = logging.getLogger("greenq.middleware.shutdown")


class ShutdownNotifications(Middleware):
    actor_options = {"notify_shutdown": boolean}

    def __init__(self, *, notify_shutdown=False):
        self.notify_shutdown = notify_shutdown
        self._running = set()  # deliveries, not ids: two deliveries of one message may run at once

    def before_process_message(self, broker, message):
        if broker.actors[message.actor_name].options.get("notify_shutdown", self.notify_shutdown):
            self._running.add(message)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._running.discard(message)

    after_skip_message = after_process_message

    def before_worker_shutdown(self, broker, worker):
        for message in list(self._running):
            logger.info("Sending Shutdown to message %s (%s).", message.message_id, message.actor_name)
            message.interrupt(Shutdown)
