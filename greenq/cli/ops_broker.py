"""The broker the operations commands act on, and which queues exist on it.

The broker comes from ``--app`` (the app's modules are imported as a worker
would, so its actors, their queues and priorities are known), else from
``--broker-url`` or ``GREENQ_BROKER_URL``, else from the SQLite file
``greenq.sqlite3`` in the working directory if it exists. An operations command
never creates a broker's storage: a missing SQLite file is an error, not a new
empty database.

The broker contract's inspection verbs check a queue against the queues
declared in this process; an operations command declares nothing of its own,
so it first asks the server which queues exist:

* SQLite: the ``greenq_queues`` table.
* Redis: the namespace's keys (a queue exists while it holds a message, a dead
  letter or a consumer; Redis keeps no record of an empty, idle queue).
* RabbitMQ: AMQP cannot list queues, so a named queue is checked with a
  passive declare, and ``greenq queues`` lists the app's queues or those
  given with ``-Q``.
* Stub: the queues of this process (useful in tests only).

A broker may offer ``existing_queues()`` itself; it is used first.
"""

import os
import re

from ..brokers import DEFAULT_SQLITE_PATH, broker_from_url, redact_url
from . import imports


class OpsError(Exception):
    """Bad input for an operations command: one line, exit code 2, nothing changed."""


class Target:
    """The broker an operations command acts on, and what the app (if any) declared."""

    def __init__(self, broker, description, app_loaded):
        self.broker = broker
        self.description = description
        self.app_loaded = app_loaded

    def close(self):
        try:
            self.broker.close()
        except Exception:  # closing a broker we are done with must not hide the command's outcome
            pass


def open_target(app=None, broker_url=None, paths=(".",)):
    """Build the broker from ``--app`` / ``--broker-url`` / ``GREENQ_BROKER_URL`` / ./greenq.sqlite3."""
    url = broker_url or os.environ.get("GREENQ_BROKER_URL") or None
    if app:
        if broker_url:
            os.environ["GREENQ_BROKER_URL"] = broker_url  # what the app's get_broker() will use
        try:
            broker = imports.load([app], paths)
        except imports.AppImportError as e:
            raise OpsError(str(e)) from None
        return Target(broker, repr(broker), True)
    if url is None:
        if not os.path.exists(DEFAULT_SQLITE_PATH):
            raise OpsError("no broker given: pass --broker-url URL, set GREENQ_BROKER_URL, or --app MODULE "
                           f"(and there is no {DEFAULT_SQLITE_PATH} in the working directory)")
        url = "sqlite:///" + DEFAULT_SQLITE_PATH
    if url.lower().startswith("sqlite:"):
        from ..brokers.sqlite import path_from_url

        try:
            path = path_from_url(url)
        except ValueError as e:
            raise OpsError(str(e)) from None
        if not os.path.exists(path):
            raise OpsError(f"no SQLite broker file at {path}")
    try:
        broker = broker_from_url(url)
    except (ValueError, ImportError) as e:
        raise OpsError(f"cannot build the broker for {redact_url(url)}: {e}") from None
    return Target(broker, repr(broker), False)


def _kind(broker):
    return type(broker).__module__.rsplit(".", 1)[-1]


def existing_queues(broker):
    """The names of the queues that exist on the broker's server, or None if it cannot list them."""
    own = getattr(broker, "existing_queues", None)
    if callable(own):
        return set(own())
    kind = _kind(broker)
    if kind == "sqlite":
        rows = broker.db.read(lambda conn: conn.execute("SELECT name FROM greenq_queues").fetchall())
        return {row[0] for row in rows}
    if kind == "redis":
        return _redis_queues(broker)
    if kind in ("stub", "local"):
        return broker.get_declared_queues()
    return None


def _redis_queues(broker):
    """Queue names from keys ``{namespace:queue}.suffix`` whose suffix is one of the broker's queue keys.

    The suffix check keeps other greenq keys in the namespace (data queues,
    schedules) out. One SCAN over the namespace: fine for an operator's
    command, not for a hot path.
    """
    from ..brokers._redis_scripts import QUEUE_KEYS

    prefix = "{" + broker.namespace + ":"
    suffixes = {"." + name for name in QUEUE_KEYS}
    names = set()
    with broker.translated("listing queues"):
        for key in broker.client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            key = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            end = key.find("}")
            if end <= len(prefix):
                continue
            suffix = key[end + 1:]
            if suffix in suffixes or suffix.startswith(".held."):
                names.add(key[len(prefix):end])
    return names


def _glob_escape(text):
    return re.sub(r"([\[\]*?\\])", r"\\\1", text)


def queue_exists(broker, queue_name):
    """Whether ``queue_name`` exists on the server (declared here counts, for app queues)."""
    names = existing_queues(broker)
    if names is not None:
        return queue_name in names
    if _kind(broker) == "rabbitmq":
        return _rabbitmq_has(broker, queue_name)
    return queue_name in broker.get_declared_queues()


def _rabbitmq_has(broker, queue_name):
    import pika

    def check(link):
        channel = link.connection.channel()
        try:
            channel.queue_declare(queue_name, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return False
            raise
        finally:
            if channel.is_open:
                channel.close()

    return broker._publish_link.call(check, timeout=broker.publish_timeout, retry=True)


def use_queue(target, queue_name):
    """Make the broker accept ``queue_name`` in its inspection verbs, or raise ``OpsError`` if it does not exist.

    Declaring an existing queue changes nothing on any broker (on RabbitMQ it is
    the same declaration the workers make).
    """
    broker = target.broker
    if queue_name in broker.get_declared_queues():
        return
    if not queue_exists(broker, queue_name):
        raise OpsError(f"queue {queue_name!r} does not exist on {target.description}")
    broker.declare_queue(queue_name)


def listed_queues(target, extra=()):
    """The queues ``greenq queues`` shows: the server's, the app's and any named with -Q, sorted."""
    broker = target.broker
    names = existing_queues(broker)
    if names is None and not (extra or (target.app_loaded and broker.get_declared_queues())):
        raise OpsError(f"{target.description} cannot list its queues (AMQP has no such call): name them with "
                       "-Q QUEUE or pass --app MODULE")
    names = set(names or ())
    if target.app_loaded:
        names |= broker.get_declared_queues()
    for name in extra:
        use_queue(target, name)
        names.add(name)
    for name in names:
        if name not in broker.get_declared_queues():
            broker.declare_queue(name)
    return sorted(names)
