"""The ``greenq`` command: parse the command line, then hand over to the supervisor.

``greenq`` runs each worker's pool on OS threads; ``greenq-gevent`` (see
``gevent_main``) patches the standard library first and runs this same
command with greenlets. Bad arguments exit with code 2 and one line that names
the argument, not a usage dump.

The first word picks the command: ``queues``, ``dead`` and ``enqueue`` are the
operations commands (``greenq.cli.ops``); ``run`` or anything else runs
workers, so ``greenq app -p 2`` works as always, and an app module named like
an operations command is run with ``greenq run queues``.
"""

import os
import sys

import click

import greenq

from .. import concurrency
from .options import Options

#: First words that select an operations command (greenq.cli.ops) instead of running workers.
OPS_COMMANDS = ("queues", "dead", "enqueue")

THREADS_DEFAULT = 8
GREENLETS_DEFAULT = 250

_HELP = """Run greenq workers for the actors in MODULES.

\b
MODULES are imported in each worker process, e.g. `app` or `app.tasks`.
`app:broker` also names the broker variable to use; otherwise the broker is the
one the app set with greenq.set_broker(), else GREENQ_BROKER_URL
(redis://, amqp://, sqlite:///path), else an SQLite file greenq.sqlite3 in the
working directory.

\b
Signals to the master process:
  TERM, INT   stop gracefully (a second one kills the workers; exit code 1)
  HUP         rolling reload: fresh workers import the code anew, then the
              old ones drain
\b
Exit codes: 0 graceful, 1 killed, 2 bad argument or module that does not
import, 3 broker unreachable at start-up, 4 pid file held by a running greenq.

\b
Operations commands (see `greenq COMMAND --help`):
  greenq queues [--json]                       messages per queue and state
  greenq dead list QUEUE                       a queue's dead letters
  greenq dead requeue QUEUE --id ID | --all    put dead letters back
  greenq dead purge QUEUE                      drop a queue's dead letters
  greenq enqueue ACTOR --args JSON             send one message by hand
`greenq run MODULES...` is the same as `greenq MODULES...` (for a module
named like an operations command).

\b
Prometheus: with the Prometheus middleware, one worker serves the metrics of
all of them on greenq_prom_host:greenq_prom_port (default 127.0.0.1:9191);
greenq_prom_db names the multi-process directory (default: a temporary one).
"""


def _threads_help():
    if concurrency.using_gevent():
        return (f"Greenlets per worker process [default: {GREENLETS_DEFAULT}]. A greenlet costs a few KiB, so "
                "hundreds per process are cheap when actors wait on the network; the pool size also caps how many "
                "messages a process fetches at once, so it is what bounds the load on your broker and downstream "
                "services.")
    return (f"Worker threads per worker process [default: {THREADS_DEFAULT}]. For hundreds of IO-bound jobs per "
            "process, use greenq-gevent instead.")


def _csv(values):
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


@click.command(help=_HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("modules", nargs=-1, required=True)
@click.option("-p", "--processes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker processes to fork [default: the number of CPU cores].")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, metavar="N", help=_threads_help())
@click.option("--path", "paths", multiple=True, default=(".",), show_default=True,
              type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Directory to put first on sys.path before importing MODULES (repeatable).")
@click.option("-Q", "--queues", multiple=True, metavar="QUEUE",
              help="Only consume these queues (repeatable, or comma-separated) [default: every declared queue].")
@click.option("--pid-file", type=click.Path(dir_okay=False),
              help="Write the master's pid here; refuse to start (exit code 4) if a running greenq holds it.")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="Append logs here instead of writing them to stderr.")
@click.option("--worker-shutdown-timeout", "shutdown_timeout", type=click.IntRange(min=0), default=600000,
              show_default=True, metavar="MS",
              help="Milliseconds a stopping worker waits for in-flight messages before requeueing them.")
@click.option("--watch", multiple=True, type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Reload (as on HUP) when a .py file under this directory changes; polled every second.")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), default=None, metavar="N",
              help="Replace a worker process, gracefully, after it has processed this many messages.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1), default=None, metavar="KIB",
              help="Replace a worker process, gracefully, once its resident memory reaches this many KiB.")
@click.option("--hub-block-threshold", type=click.FloatRange(min=0), default=1.0, show_default=True, metavar="SECONDS",
              help="greenq-gevent: log any greenlet that blocks the event loop for longer than this many "
                   "seconds, with its actor and message id (0 turns it off).")
@click.option("--quiet-messages", is_flag=True,
              help="Do not log the per-message 'Received ...' and 'Completed ...' lines.")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.version_option(greenq.__version__, "--version", prog_name="greenq", message="%(prog)s %(version)s")
@click.pass_context
def command(ctx, modules, processes, threads, paths, queues, pid_file, log_file, shutdown_timeout, watch,
            max_tasks_per_child, max_memory_per_child, hub_block_threshold, quiet_messages, verbose):
    from .supervisor import serve

    if threads is None:
        threads = GREENLETS_DEFAULT if concurrency.using_gevent() else THREADS_DEFAULT
    options = Options(
        modules=modules,
        processes=processes or os.cpu_count() or 1,
        threads=threads,
        paths=paths,
        queues=_csv(queues),
        pid_file=pid_file,
        log_file=log_file,
        shutdown_timeout=shutdown_timeout,
        watch=watch,
        verbose=verbose,
        quiet_messages=quiet_messages,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        hub_block_threshold=hub_block_threshold,
        prog=ctx.info_name or "greenq",
    )
    from .imports import AppImportError, split_spec

    for spec in modules:
        try:
            split_spec(spec)
        except AppImportError as e:
            raise click.BadParameter(str(e), param_hint="MODULES") from None
    ctx.exit(serve(options))


def main(argv=None, prog_name=None):
    """Entry point of ``greenq``; exits the process with the command's exit code."""
    prog_name = prog_name or os.path.basename(sys.argv[0]) or "greenq"
    if prog_name in ("-c", "__main__.py", "main.py"):
        prog_name = "greenq-gevent" if concurrency.using_gevent() else "greenq"
    args = list(sys.argv[1:] if argv is None else argv)
    target = command
    if args and args[0] == "run":
        args = args[1:]
    elif args and args[0] in OPS_COMMANDS:
        from .ops import ops as target
    try:
        code = target.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # `greenq dead` alone: its help
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(2)
        where = e.ctx.command_path if e.ctx is not None and target is not command else prog_name
        hint = f"; see '{where} --help'" if e.ctx is not None else ""
        message = " ".join(e.format_message().split()).rstrip(".")
        click.echo(f"{where}: error: {message}{hint}", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo(f"{prog_name}: aborted", err=True)
        sys.exit(1)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
