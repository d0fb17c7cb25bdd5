"""Let an actor see the message it is running (its id, retries, options).

The slot is a ``threading.local``, which gevent's patching makes greenlet-local,
so each of hundreds of greenlets sees its own message.
"""

import threading

from .middleware import Middleware

_local = threading.local()


class CurrentMessage(Middleware):
    """Opt-in: ``broker.add_middleware(CurrentMessage())``, then ``CurrentMessage.get_current_message()``."""

    @classmethod
    def get_current_message(cls):
        return getattr(_local, "message", None)

    def before_process_message(self, broker, message):
        _local.message = message

    def after_process_message(self, broker, message, *, result=None, exception=None):
        _local.message = None

    after_skip_message = after_process_message
