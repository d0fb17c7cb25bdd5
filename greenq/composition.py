"""Pipelines and groups: compose messages, then wait for what they return.

::

    greenq.pipeline([fetch.message(url), parse.message(), store.message()]).run()
    g = greenq.group([fetch.message(u) for u in urls])
    g.add_completion_callback(report.message())
    g.run().get_results(block=True, timeout=60000)

A pipeline is one message carrying the rest of the chain: each message holds
the next one in ``options["pipe_target"]``, and the ``Pipelines`` middleware
enqueues it when the actor succeeds, with the result appended to its
arguments (unless the next message has ``pipe_ignore=True``). Nothing waits in
the producer, and the chain survives restarts like any message. A failure
stops the chain where it happened (after the retries of that step).

A group's children run in parallel. For a completion callback, each child (or
each child pipeline's last message) carries ``options["group_completion"]``:
the group id, its size and the callback messages. When a child succeeds, the
``GroupCallbacks`` middleware records its message id in the shared rate-limit
back end (Redis or SQLite, like the broker; see ``greenq.rate_limits``); the
child whose record completes the set enqueues the callbacks, exactly once even
when children are redelivered. A child that fails for good means the callbacks
never run.

Results (``get_result(s)``, ``wait``) need the ``Results`` middleware and
``store_results=True`` on the actors whose results are read.
"""

import time
import uuid

from .broker import get_broker
from .errors import ResultFailure, ResultMissing
from .message import Message

#: How long a group's completion records are kept (ms): a group must finish within this.
DEFAULT_GROUP_TTL = 24 * 3600 * 1000


def _as_message(child):
    if isinstance(child, Message):
        return child
    if hasattr(child, "to_message"):  # a MessageProxy
        return child.to_message()
    raise TypeError(f"expected a message (actor.message(...)), a pipeline or a group, not {type(child).__name__}")


def _backend(broker, backend):
    if backend is not None:
        return backend
    from .results import Results

    results = broker.get_middleware(Results)
    if results is None:
        raise RuntimeError(f"reading results needs a Results middleware on {broker!r} (or pass backend=)")
    return results.backend


class _Deadline:
    """One timeout (ms) shared by several waits."""

    def __init__(self, timeout):
        from .results.backend import DEFAULT_TIMEOUT

        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.end = time.monotonic() + self.timeout / 1000

    def left_ms(self):
        return max(0, int((self.end - time.monotonic()) * 1000))


class pipeline:  # noqa: N801 - lower case, as in Dramatiq
    """Messages that run one after the other, each result passed on to the next.

    ``pipeline([a.message(1), b.message()])``, or ``a.message(1) | b.message()``
    style with ``pipeline([...]) | c.message()``. Children may be messages or
    pipelines (flattened).
    """

    def __init__(self, children, *, broker=None):
        self.broker = broker
        self.messages = []
        for child in children:
            if isinstance(child, pipeline):
                self.messages.extend(child.messages)
            elif isinstance(child, group):
                raise TypeError("a group cannot be a step of a pipeline; add a completion callback to the group")
            else:
                self.messages.append(_as_message(child))
        if not self.messages:
            raise ValueError("a pipeline needs at least one message")

    def __or__(self, other):
        return pipeline([self, other], broker=self.broker)

    def __len__(self):
        return len(self.messages)

    def __iter__(self):
        return iter(self.messages)

    def __repr__(self):
        return f"pipeline([{', '.join(m.actor_name for m in self.messages)}])"

    def _broker(self):
        return self.broker or get_broker()

    def build(self, last_options=None):
        """The first message, carrying the rest of the chain (``last_options`` go on the last one)."""
        target = None
        for message in reversed(self.messages):
            options = dict(message.options)
            if target is None:
                options.update(last_options or {})
            else:
                options["pipe_target"] = target.asdict()
            target = message.copy(options=options)
        return target

    def run(self, *, delay=None):
        """Enqueue the first step (after ``delay`` ms); returns the pipeline."""
        self._broker().enqueue(self.build(), delay=delay)
        return self

    @property
    def message_ids(self):
        return [m.message_id for m in self.messages]

    def get_result(self, *, block=False, timeout=None, backend=None):
        """The last step's result; raises like ``Message.get_result`` (``timeout`` in ms)."""
        return _backend(self._broker(), backend).get_result(self.messages[-1], block=block, timeout=timeout)

    def get_results(self, *, block=False, timeout=None, backend=None):
        """Every step's result, in order; ``timeout`` (ms) bounds the whole wait."""
        backend = _backend(self._broker(), backend)
        deadline = _Deadline(timeout)
        return [backend.get_result(m, block=block, timeout=deadline.left_ms() if block else None)
                for m in self.messages]

    def wait(self, *, timeout=None, backend=None):
        """Block until the last step has a result (``ResultTimeout`` after ``timeout`` ms)."""
        self.get_result(block=True, timeout=timeout, backend=backend)

    @property
    def completed_count(self):
        """How many steps have a stored result so far."""
        backend = _backend(self._broker(), None)
        count = 0
        for message in self.messages:
            try:
                backend.get_result(message)
            except ResultMissing:
                break
            except ResultFailure:
                count += 1
                break
            count += 1
        return count

    @property
    def completed(self):
        return self.completed_count == len(self.messages)


class group:  # noqa: N801
    """Messages (or pipelines) that run in parallel; an optional callback once all succeeded."""

    def __init__(self, children, *, broker=None, group_id=None, completion_ttl=DEFAULT_GROUP_TTL):
        self.broker = broker
        self.children = []
        for child in children:
            if isinstance(child, (pipeline, group)):
                if isinstance(child, group):
                    self.children.extend(child.children)
                else:
                    self.children.append(child)
            else:
                self.children.append(_as_message(child))
        if not self.children:
            raise ValueError("a group needs at least one message")
        self.group_id = group_id or str(uuid.uuid4())
        self.completion_ttl = completion_ttl
        self.callbacks = []

    def __len__(self):
        return len(self.children)

    def __iter__(self):
        return iter(self.children)

    def __repr__(self):
        return f"group({len(self.children)} children, id={self.group_id})"

    def _broker(self):
        return self.broker or get_broker()

    def add_completion_callback(self, message):
        """Enqueue ``message`` (or a pipeline) once every child has succeeded."""
        if isinstance(message, pipeline):
            message = message.build()
        self.callbacks.append(_as_message(message).asdict())
        return self

    def _completion(self):
        return {"group_completion": {"id": self.group_id, "size": len(self.children),
                                     "ttl": self.completion_ttl, "callbacks": self.callbacks}}

    def _first_messages(self):
        extra = self._completion() if self.callbacks else None
        firsts = []
        for child in self.children:
            if isinstance(child, pipeline):
                firsts.append(child.build(extra))
            elif extra:
                firsts.append(child.copy(options={**child.options, **extra}))
            else:
                firsts.append(child)
        return firsts

    def run(self, *, delay=None):
        """Enqueue every child in as few round trips as the broker allows; returns the group."""
        broker = self._broker()
        if self.callbacks:
            from .rate_limits import backend_for
            backend_for(broker)  # fail here, in the producer, if nothing can count completions
        broker.enqueue_many(self._first_messages(), delay=delay)
        return self

    def _last_messages(self):
        return [child.messages[-1] if isinstance(child, pipeline) else child for child in self.children]

    def get_results(self, *, block=False, timeout=None, backend=None):
        """Each child's result (a pipeline's last one), in order; ``timeout`` (ms) bounds the whole wait."""
        backend = _backend(self._broker(), backend)
        deadline = _Deadline(timeout)
        return [backend.get_result(m, block=block, timeout=deadline.left_ms() if block else None)
                for m in self._last_messages()]

    def wait(self, *, timeout=None, backend=None):
        """Block until every child has a result (``ResultTimeout`` after ``timeout`` ms)."""
        self.get_results(block=True, timeout=timeout, backend=backend)

    @property
    def completed_count(self):
        backend = _backend(self._broker(), None)
        count = 0
        for message in self._last_messages():
            try:
                backend.get_result(message)
            except ResultMissing:
                continue
            except ResultFailure:
                pass
            count += 1
        return count

    @property
    def completed(self):
        return self.completed_count == len(self.children)


__all__ = ["group", "pipeline"]
