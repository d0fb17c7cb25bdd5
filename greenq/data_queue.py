"""Data queues: put data in queues, not tasks (rpqueue's ``Data``), on Redis or SQLite.

A ``DataQueue`` holds JSON items. Readers take up to 1000 at a time and get
``{id: item}``; with a visibility timeout the items stay held, not gone, until
the reader calls ``done_data(ids)``. An item not done in time comes back to the
front of the queue, up to ``attempts`` deliveries in all, then goes to the dead
letter queue ``<name>.dead`` (with ``use_dead=True``) or is dropped.
Without a visibility timeout (``vis_timeout <= 0``, the default) a read removes
the items: a 0/1 queue, and ``done_data`` is not needed.

Expired items are moved when any process next calls ``get_data`` or
``counts`` on the queue (each is one atomic step in the store), so a queue
nobody reads keeps its held items where they are.

Readers are not identified: ``refresh_data``/``done_data`` by anyone who knows
an id act on it. Take a lock of your own if exclusivity matters.
"""

import json
import logging
import math
import re
import uuid
from collections.abc import Mapping

from .errors import GreenqError

logger = logging.getLogger("greenq.data_queue")

MAX_ITEMS = 1000
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class DataQueueError(GreenqError, ValueError):
    """A data queue was misused: bad arguments, non-JSON items, unknown ids."""


class UnknownDataIds(DataQueueError, KeyError):
    """``done_data`` named ids the queue does not hold; ``.ids`` lists them. The others were done."""

    def __init__(self, message, ids):
        super().__init__(message)
        self.ids = ids

    def __str__(self):
        return self.args[0]


def _timeout(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataQueueError(f"{name} must be a number of seconds, not {value!r}")
    return value


def _ids(ids, verb):
    if isinstance(ids, (str, bytes)):
        raise DataQueueError(f"{verb}() takes an iterable of ids (a dict from get_data() works), not one string")
    if isinstance(ids, Mapping):
        ids = list(ids)
    try:
        ids = list(dict.fromkeys(ids))
    except TypeError:
        raise DataQueueError(f"{verb}() takes an iterable of ids, not {type(ids).__name__}") from None
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:
        raise DataQueueError(f"{verb}(): ids are strings from get_data(), not {bad[0]!r}")
    return ids


class DataQueue:
    """``DataQueue(name, attempts=1, vis_timeout=0, use_dead=False, url=None, store=None, broker=None)``.

    ``vis_timeout`` is in seconds (as in rpqueue). The store is ``store``, or
    one built from ``url`` (``redis://...`` or ``sqlite:///path``), or derived
    from ``broker`` (default: the global broker) when it is a Redis or SQLite
    broker; a RabbitMQ deployment must pass ``url``.
    """

    def __init__(self, name, attempts=1, vis_timeout=0, use_dead=False, *, url=None, store=None, broker=None):
        if not isinstance(name, str) or not _NAME.match(name):
            raise DataQueueError(f"bad data queue name {name!r}: use letters, digits, '_', '.', '-'")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise DataQueueError(f"data queue {name!r}: attempts must be an integer >= 1, not {attempts!r}")
        self.name = name
        self.attempts = attempts
        self.vis_timeout = _timeout(f"data queue {name!r}: vis_timeout", vis_timeout)
        self.use_dead = bool(use_dead)
        self._store_args = (broker, url, store)
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from .scheduling.store import store_for

            broker, url, store = self._store_args
            self._store = store_for(broker=broker, url=url, store=store, purpose=f"data queue {self.name!r}")
        return self._store

    @property
    def dead_name(self):
        return f"{self.name}.dead"

    @property
    def dead(self):
        """The dead-letter data queue, read like any other.

        Its items are ``{"queue": name, "item": the item, "attempts": n, "dead_at": epoch ms}``.
        """
        return DataQueue(self.dead_name, store=self.store)

    def __repr__(self):
        return (f"DataQueue({self.name!r}, attempts={self.attempts}, vis_timeout={self.vis_timeout}, "
                f"use_dead={self.use_dead})")

    def put_data(self, items):
        """Append JSON items (a list or other iterable); return their ids, in order."""
        if isinstance(items, (str, bytes, Mapping)) or not hasattr(items, "__iter__"):
            raise DataQueueError(f"put_data() on {self.name!r} takes a list of items, not one {type(items).__name__}")
        entries = []
        for index, item in enumerate(items):
            try:
                text = json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise DataQueueError(
                    f"put_data() on {self.name!r}: item {index} ({item!r:.60}) is not JSON: {e}; nothing was put"
                ) from None
            entries.append((uuid.uuid4().hex, text))
        if entries:
            self.store.dq_put(self.name, entries)
        return [item_id for item_id, _ in entries]

    def get_data(self, items=1, vis_timeout=None):
        """Take up to ``items`` (1..1000) items as ``{id: item}``; ``vis_timeout`` (s) overrides the queue's."""
        if isinstance(items, bool) or not isinstance(items, int) or not 1 <= items <= MAX_ITEMS:
            raise DataQueueError(f"get_data() on {self.name!r} takes 1 to {MAX_ITEMS} items, not {items!r}")
        vis = self.vis_timeout if vis_timeout is None else _timeout("vis_timeout", vis_timeout)
        found = self.store.dq_get(self.name, items, int(vis * 1000), self.attempts,
                                  self.dead_name if self.use_dead else None)
        return {item_id: json.loads(text) for item_id, text in found}

    def refresh_data(self, ids, vis_timeout=None):
        """Hold these ids ``vis_timeout`` s more (default: the queue's); return the ids still held."""
        ids = _ids(ids, "refresh_data")
        vis = self.vis_timeout if vis_timeout is None else _timeout("vis_timeout", vis_timeout)
        if vis <= 0:
            raise DataQueueError(f"refresh_data() on {self.name!r} needs a vis_timeout > 0, not {vis!r}")
        return self.store.dq_refresh(self.name, ids, int(vis * 1000))

    def done_data(self, ids):
        """Finish held items for good. Ids not held raise ``UnknownDataIds`` after the others are done."""
        ids = _ids(ids, "done_data")
        done = set(self.store.dq_done(self.name, ids))
        unknown = [i for i in ids if i not in done]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise UnknownDataIds(
                f"data queue {self.name!r} does not hold {len(unknown)} of the {len(ids)} id(s) given to done_data(): "
                f"{shown} (never delivered, already done, taken without a visibility timeout, or past their "
                f"visibility timeout and back in the queue); the other {len(done)} are done", unknown)
        return len(done)

    def counts(self):
        """``{"ready": n, "held": n}``, after moving expired items on."""
        return self.store.dq_counts(self.name, self.attempts, self.dead_name if self.use_dead else None)
