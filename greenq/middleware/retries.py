"""Retry failed messages with a backoff, then dead-letter them.

A retry is a fresh copy of the message (same id, ``options["retries"]`` one
higher) enqueued with a delay that the broker holds; the original is acked only
after the copy is stored, so a crash in between duplicates work but never loses
it.
"""

import logging
import random
import traceback

from ..errors import Cancelled, Retry
from .middleware import Middleware, a_callable, at_least_ms, boolean, non_negative_int, one_of, optional

logger = logging.getLogger("greenq.middleware.retries")

STRATEGIES = ("constant", "linear", "spread_linear", "exponential", "spread_exponential")
MIN_BACKOFF_FLOOR = 100  # ms: the user guide's lower bound
_TRACEBACK_LIMIT = 4000


def compute_backoff(attempt, *, strategy="exponential", min_backoff=15000, max_backoff=3600000,
                    max_retries=20, jitter=True):
    """Milliseconds to wait before retry number ``attempt`` (1 for the first retry).

    The spread strategies reach ``max_backoff`` exactly at the last of
    ``max_retries`` retries: linearly, or geometrically for spread_exponential.
    Jitter adds up to 10% so retries of many messages that failed together do
    not come back together.
    """
    attempt = max(attempt, 1)
    span = max(max_retries - 1, 1)
    fraction = min((attempt - 1) / span, 1.0)
    if strategy == "constant":
        backoff = min_backoff
    elif strategy == "linear":
        backoff = min_backoff * attempt
    elif strategy == "spread_linear":
        backoff = min_backoff + (max_backoff - min_backoff) * fraction
    elif strategy == "exponential":
        backoff = min_backoff * 2 ** min(attempt - 1, 64)
    elif strategy == "spread_exponential":
        backoff = min_backoff * (max_backoff / min_backoff) ** fraction
    else:
        raise ValueError(f"unknown backoff strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    backoff = min(backoff, max_backoff)
    if jitter:
        backoff += random.uniform(0, backoff * 0.1)
    return int(backoff)


def exception_types(value):
    """``retry_on``: an exception class or a tuple/list of them."""
    for kind in _as_tuple(value):
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise ValueError("expected an exception class or a tuple of exception classes")


def _as_tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


class Retries(Middleware):
    """Retry failed messages; dead-letter them once retries are exhausted.

    Defaults follow the user guide: no retries, 15 s minimum and 1 h maximum
    backoff, exponential strategy, with jitter. ``retry_on=(TimeoutError, ...)``
    (Deferrable's ``error_classes``) retries only those exceptions (and
    ``Retry``), within ``max_retries``/``retry_when``; any other goes straight
    to the dead letters.
    """

    actor_options = {
        "max_retries": non_negative_int,
        "min_backoff": at_least_ms(MIN_BACKOFF_FLOOR),
        "max_backoff": at_least_ms(MIN_BACKOFF_FLOOR),
        "retry_when": optional(a_callable),
        "backoff_strategy": one_of(*STRATEGIES),
        "jitter": boolean,
        "retry_on": optional(exception_types),
    }

    def __init__(self, *, max_retries=0, min_backoff=15000, max_backoff=3600000, retry_when=None,
                 backoff_strategy="exponential", jitter=True, retry_on=None):
        for name, value in (("max_retries", max_retries), ("min_backoff", min_backoff),
                            ("max_backoff", max_backoff), ("backoff_strategy", backoff_strategy),
                            ("jitter", jitter)):
            self.actor_options[name](value)
        self.max_retries = max_retries
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.retry_when = retry_when
        self.backoff_strategy = backoff_strategy
        self.jitter = jitter
        self.retry_on = retry_on

    def _option(self, actor, name):
        return actor.options.get(name, getattr(self, name))

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None or isinstance(exception, Cancelled):
            return  # a cancelled message is never retried (the Cancel middleware settles it)
        actor = broker.get_actor(message.actor_name)
        retries = message.options.get("retries", 0)
        max_retries = self._option(actor, "max_retries")
        retry_when = self._option(actor, "retry_when")
        if retry_when is not None:
            should_retry = bool(retry_when(retries, exception))
        else:
            should_retry = retries < max_retries
        reason = f"{type(exception).__name__}: {exception}"
        retry_on = self._option(actor, "retry_on")
        if retry_on is not None and not isinstance(exception, (Retry, *_as_tuple(retry_on))):
            logger.info("Message %s failed with %s, not one of its actor's retry_on; not retrying it.",
                        message.message_id, type(exception).__name__)
            message.fail(reason)
            return
        if not should_retry:
            if retries:
                logger.warning("Retries exceeded for message %s after %d retr%s.", message.message_id, retries,
                               "y" if retries == 1 else "ies")
            message.fail(reason)
            return

        message.options["retries"] = retries + 1
        message.options["failure"] = reason
        message.options["traceback"] = "".join(traceback.format_exception(exception))[-_TRACEBACK_LIMIT:]
        if isinstance(exception, Retry) and exception.delay is not None:
            delay = exception.delay
        else:
            delay = compute_backoff(
                retries + 1,
                strategy=self._option(actor, "backoff_strategy"),
                min_backoff=self._option(actor, "min_backoff"),
                max_backoff=self._option(actor, "max_backoff"),
                max_retries=max_retries,
                jitter=self._option(actor, "jitter"),
            )
        logger.info("Retrying message %s in %d ms (retry %d).", message.message_id, delay, retries + 1)
        broker.enqueue(message.to_message(), delay=delay)
        message.retried = True
