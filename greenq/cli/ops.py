"""Operations commands: look at queues and dead letters, put failures back, send a message by hand.

``greenq queues``, ``greenq dead list|requeue|purge QUEUE`` and ``greenq enqueue
ACTOR`` work on every broker through the broker contract's inspection verbs,
so "inspect the dead message and decide whether it goes back on the queue" is
a command rather than a script each user writes.

Bad input (a queue that does not exist, an id that is not a dead letter, JSON
of the wrong shape) is one line on stderr and exit code 2, and is found before
anything changes. A broker that cannot be reached is exit code 3. Broker URLs
are printed with their password replaced.
"""

import functools
import json
import sys

import click

from ..errors import ActorNotFound, BrokerError, QueueNotFound
from ..message import Message, current_millis
from . import ops_broker
from .ops_broker import OpsError

EXIT_USAGE, EXIT_BROKER = 2, 3
#: Dead letters moved per broker call when requeueing many: the unit of progress.
REQUEUE_CHUNK = 500

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _broker_options(fn):
    @click.option("--app", "-A", "app", metavar="MODULE[:BROKER]",
                  help="Import this app module, as a worker would, and use its broker; its actors and queues "
                       "are then known (priorities are kept on requeue, actor names checked on enqueue).")
    @click.option("--broker-url", "-b", metavar="URL",
                  help="The broker to use (redis://...[?namespace=NS], amqp://..., sqlite:///path) "
                       "[default: GREENQ_BROKER_URL, else ./greenq.sqlite3 if it exists].")
    @click.option("--path", "paths", multiple=True, default=(".",), show_default=True,
                  type=click.Path(exists=True, file_okay=False), metavar="DIR",
                  help="Directory to put first on sys.path before importing --app (repeatable).")
    @functools.wraps(fn)
    def wrapper(app, broker_url, paths, **kwargs):
        ctx = click.get_current_context()
        try:
            target = ops_broker.open_target(app, broker_url, paths)
            try:
                return fn(target, **kwargs)
            finally:
                target.close()
        except (OpsError, QueueNotFound, ActorNotFound) as e:
            _fail(ctx, str(e), EXIT_USAGE)
        except BrokerError as e:
            _fail(ctx, f"broker error: {e}", EXIT_BROKER)

    return wrapper


def _fail(ctx, message, code):
    click.echo(f"{ctx.command_path}: error: {message}", err=True)
    ctx.exit(code)


@click.group(context_settings=_CONTEXT)
def ops():
    """greenq operations commands (every other first word runs workers: see `greenq --help`)."""


# --- greenq queues --------------------------------------------------------------------------

@ops.command(context_settings=_CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {queue: {ready, delayed, in_flight, dead}}.")
@click.option("-Q", "--queue", "queues", multiple=True, metavar="QUEUE",
              help="Also show this queue (repeatable); needed on RabbitMQ without --app, where AMQP cannot "
                   "list queues.")
@_broker_options
def queues(target, as_json, queues):
    """Ready, delayed, in-flight and dead messages per queue."""
    names = ops_broker.listed_queues(target, queues)
    counts = {name: target.broker.queue_counts(name) for name in names}
    if as_json:
        click.echo(json.dumps(counts, indent=2, sort_keys=True))
        return
    if not names:
        click.echo(f"No queues on {target.description}.")
        return
    rows = [(name, c["ready"], c["delayed"], c["in_flight"], c["dead"]) for name, c in counts.items()]
    _table(("QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD"), rows, numeric=(1, 2, 3, 4))


# --- greenq dead ... ---------------------------------------------------------------------------

@ops.group(context_settings=_CONTEXT)
def dead():
    """List, requeue or purge a queue's dead letters."""


@dead.command("list", context_settings=_CONTEXT)
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: one object per dead letter, with the message and its failure.")
@_broker_options
def dead_list(target, queue, as_json):
    """Dead letters of QUEUE, oldest first: id, actor, args, failure, age."""
    ops_broker.use_queue(target, queue)
    letters = target.broker.dead_letters_of(queue)
    now = current_millis()
    if as_json:
        out = [{**m.asdict(), "failure": m.options.get("failure"), "failed_at": m.options.get("failed_at")}
               for m in letters]
        click.echo(json.dumps(out, indent=2, default=repr))
        return
    if not letters:
        click.echo(f"No dead letters in queue {queue!r}.")
        return
    rows = []
    for m in letters:
        failed_at = m.options.get("failed_at")
        age = _age(now - failed_at) if isinstance(failed_at, (int, float)) else "?"
        rows.append((m.message_id, m.actor_name, _short(_args_text(m), 40), _short(m.options.get("failure") or "", 60),
                     age))
    _table(("MESSAGE ID", "ACTOR", "ARGS", "FAILURE", "AGE"), rows)
    click.echo(f"{len(letters)} dead letter(s).")


@dead.command("requeue", context_settings=_CONTEXT)
@click.argument("queue")
@click.option("--id", "ids", multiple=True, metavar="ID", help="A dead letter's message id (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every dead letter of the queue.")
@_broker_options
def dead_requeue(target, queue, ids, everything):
    """Put dead letters of QUEUE back on it, ready now (their retry count is kept)."""
    if bool(ids) == everything:
        raise OpsError("give --id ID (repeatable) or --all, not both and not neither")
    ops_broker.use_queue(target, queue)
    present = [m.message_id for m in target.broker.dead_letters_of(queue)]
    if ids:
        missing = [i for i in dict.fromkeys(ids) if i not in set(present)]
        if missing:
            raise OpsError(f"not a dead letter of queue {queue!r}: {', '.join(missing)} (nothing was requeued)")
        chosen = list(dict.fromkeys(ids))
    else:
        chosen = list(dict.fromkeys(present))
    if not chosen:
        click.echo(f"No dead letters in queue {queue!r}; nothing to requeue.")
        return
    moved = _in_chunks(chosen, lambda chunk: target.broker.requeue_dead(queue, chunk),
                       f"Requeueing dead letters of {queue!r}")
    click.echo(f"Requeued {moved} dead letter(s) of queue {queue!r}.")
    if moved < len(chosen):
        click.echo(f"{len(chosen) - moved} were no longer dead letters (requeued or purged meanwhile, or "
                   "expired).", err=True)


@dead.command("purge", context_settings=_CONTEXT)
@click.argument("queue")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation on a terminal.")
@_broker_options
def dead_purge(target, queue, yes):
    """Drop every dead letter of QUEUE for good."""
    ops_broker.use_queue(target, queue)
    count = target.broker.queue_counts(queue)["dead"]
    if count and not yes and sys.stdin.isatty():
        click.confirm(f"Drop {count} dead letter(s) of queue {queue!r} for good?", abort=True)
    purged = target.broker.purge_dead(queue)
    click.echo(f"Purged {purged} dead letter(s) of queue {queue!r}.")


# --- greenq enqueue ---------------------------------------------------------------------------

@ops.command(context_settings=_CONTEXT)
@click.argument("actor")
@click.option("--args", "args_json", default="[]", show_default=True, metavar="JSON",
              help="Positional arguments, a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, metavar="JSON",
              help="Keyword arguments, a JSON object.")
@click.option("-Q", "--queue", metavar="QUEUE",
              help="Queue to send to [default: the actor's queue with --app, else 'default'].")
@click.option("--delay", type=click.IntRange(min=0), metavar="MS", help="Run it no sooner than this many ms from now.")
@click.option("--new-queue", is_flag=True, help="Allow a queue that does not exist yet (it is created).")
@_broker_options
def enqueue(target, actor, args_json, kwargs_json, queue, delay, new_queue):
    """Send one message to ACTOR, as actor.send(*args, **kwargs) would.

    The app's code is not needed: the message is written in the wire format.
    With --app, the actor must exist there, and its queue is the default.
    """
    args = _json_arg("--args", args_json, list, "a JSON list, e.g. '[1, \"two\"]'")
    kwargs = _json_arg("--kwargs", kwargs_json, dict, "a JSON object, e.g. '{\"x\": 1}'")
    broker = target.broker
    if target.app_loaded:
        if actor not in broker.actors:
            known = ", ".join(sorted(broker.actors)) or "none"
            raise OpsError(f"no actor named {actor!r} in the app (its actors: {known})")
        queue = queue or broker.actors[actor].queue_name
    queue = queue or "default"
    if not new_queue and not (target.app_loaded and queue in broker.get_declared_queues()):
        if not ops_broker.queue_exists(broker, queue):
            raise OpsError(f"queue {queue!r} does not exist on {target.description} (pass --new-queue to create "
                           "it, or --app MODULE)")
    message = broker.enqueue(Message(queue_name=queue, actor_name=actor, args=args, kwargs=kwargs, options={}),
                             delay=delay)
    when = f" in {delay} ms" if delay else ""
    click.echo(f"Enqueued message {message.message_id} for actor {actor!r} on queue {queue!r}{when}.")


# --- helpers --------------------------------------------------------------------------------

def _json_arg(name, text, kind, expected):
    try:
        value = json.loads(text)
    except ValueError as e:
        raise OpsError(f"{name} is not valid JSON ({e}); expected {expected}") from None
    if not isinstance(value, kind):
        raise OpsError(f"{name} must be {expected}, not a JSON {type(value).__name__}")
    return value


def _in_chunks(items, act, label):
    """Call ``act(chunk)`` over ``items``; a progress bar on a terminal, a count otherwise. Returns the sum."""
    chunks = [items[i:i + REQUEUE_CHUNK] for i in range(0, len(items), REQUEUE_CHUNK)]
    done = 0
    if sys.stdout.isatty() and len(chunks) > 1:
        with click.progressbar(length=len(items), label=label) as bar:
            for chunk in chunks:
                done += act(chunk)
                bar.update(len(chunk))
        return done
    for chunk in chunks:
        done += act(chunk)
        if len(chunks) > 1:
            click.echo(f"{label}: {done}/{len(items)}", err=True)
    return done


def _args_text(message):
    parts = [json.dumps(a, default=repr) for a in message.args]
    parts += [f"{k}={json.dumps(v, default=repr)}" for k, v in message.kwargs.items()]
    return ", ".join(parts)


def _short(text, width):
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _age(ms):
    seconds = max(0, int(ms // 1000))
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{(seconds % size) // sub_size:02d}{sub_unit}"
    return f"{seconds}s"


def _table(header, rows, numeric=()):
    rows = [tuple(str(cell) for cell in row) for row in rows]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]

    def line(cells):
        out = [cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    click.echo(line(header))
    for row in rows:
        click.echo(line(row))


COMMANDS = tuple(ops.commands)
