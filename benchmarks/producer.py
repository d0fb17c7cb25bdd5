"""The producer side of each workload, run in the system's own interpreter.

    python -m benchmarks.producer SYSTEM ACTION [options]

SYSTEM is greenq, dramatiq or celery (its app module in ``workloads`` is
imported with the broker from ``BENCH_BROKER_URL``). Actions:

``load JOB --phase P --n N``  put N gated jobs on the queue as fast as the
    system allows (greenq: ``send_many``); the timed part is processing.
``enqueue --n N``  time N ``send()`` calls one by one, then (greenq only) N
    through the batch API, to a queue no worker reads (purged after each
    figure). On RabbitMQ, also N ``send()`` calls through a second broker with
    publisher confirms the other way round from the system's default (greenq:
    ``confirm_delivery=False``; Dramatiq: ``confirm_delivery=True``), so both
    systems have a figure with confirms and one without.
``sends --n N``  what ``enqueue`` measures, for the paired rounds in which
    ``benchmarks.run`` alternates greenq's and Dramatiq's producers.
``calls --n N [--confirms on|off]``  N ``send()`` calls and nothing else, untimed,
    for ``benchmarks.instructions`` to count under callgrind.
``latency --n N --spacing MS``  send one latency job every MS milliseconds.

Prints one JSON line. No gevent here: a plain producer process, as a web app
that enqueues would be.
"""

import argparse
import importlib
import json
import os
import sys
import time

CHUNK = 1000


def _app(system):
    return importlib.import_module(f"benchmarks.workloads.{system}_app")


def _send(system, task, *args):
    if system == "celery":
        return task.delay(*args)
    return task.send(*args)


def load(system, app, job, phase, n, keep_alive):
    task = getattr(app, job)
    args = (phase, True) if keep_alive else (phase,)
    start = time.perf_counter()
    if system == "greenq":
        for first in range(0, n, CHUNK):
            task.send_many([args] * min(CHUNK, n - first))
    else:
        for _ in range(n):
            _send(system, task, *args)
    return {"seconds": time.perf_counter() - start}


def _purge(system, app):
    if system == "greenq":
        app.broker.flush(app.ENQUEUE_QUEUE)
    elif system == "dramatiq":
        app.broker.flush(app.ENQUEUE_QUEUE)
    else:
        with app.app.connection_for_write() as conn:
            conn.default_channel.queue_purge(app.ENQUEUE_QUEUE)


def _one_by_one(system, task, n):
    _send(system, task, -1)  # connect and declare outside the clock
    start = time.perf_counter()
    for i in range(n):
        _send(system, task, i)
    return n / (time.perf_counter() - start)


def sends(system, app, n):
    """N ``send()`` calls one by one with the system's defaults; on RabbitMQ also with the other confirm setting;
    greenq's batch API last."""
    result = {"one_by_one": _one_by_one(system, app.enqueued, n)}
    _purge(system, app)
    if system != "celery" and os.environ["BENCH_BROKER_URL"].startswith("amqp"):
        # the default's figure is the one for its own setting; measure the other setting
        default = bool(app.broker.confirm_delivery)
        other_broker = app.make_broker(confirm_delivery=not default)
        try:
            other = _one_by_one(system, app.enqueued_on(other_broker), n)
        finally:
            other_broker.close()
        _purge(system, app)
        result["default_confirms"] = default
        result["confirmed"], result["unconfirmed"] = ((result["one_by_one"], other) if default
                                                      else (other, result["one_by_one"]))
    if system == "greenq":
        result["batch"] = _batch(app, n)
    return result


def _batch(app, n):
    """N messages through greenq's batch API, in chunks of ``CHUNK``: messages a second."""
    task = app.enqueued
    start = time.perf_counter()
    for first in range(0, n, CHUNK):
        task.send_many([(i,) for i in range(first, min(n, first + CHUNK))])
    rate = n / (time.perf_counter() - start)
    _purge("greenq", app)
    return rate


def calls(system, app, n, confirms):
    """Just N ``send()`` calls one by one, untimed: what ``benchmarks.instructions`` counts under callgrind.

    ``confirms`` (RabbitMQ only): ``default``, ``on`` or ``off`` for publisher confirms.
    """
    broker = app.broker
    if confirms != "default":
        broker = app.make_broker(confirm_delivery=confirms == "on")
    task = app.enqueued_on(broker) if broker is not app.broker else app.enqueued
    _send(system, task, -1)  # connect and declare first, as in the timed workloads
    for i in range(n):
        _send(system, task, i)
    if broker is not app.broker:
        broker.close()
    _purge(system, app)
    return {"sent": n + 1}


def enqueue(system, app, n):
    """``sends``, with ``batch`` None for the systems that have no batch API."""
    return {"batch": None, **sends(system, app, n)}


def latency(system, app, n, spacing_ms):
    _send(system, app.latency, 0)  # warm the connection; the worker ignores it
    time.sleep(spacing_ms / 1000)
    for _ in range(n):
        _send(system, app.latency, time.time())
        time.sleep(spacing_ms / 1000)
    return {"sent": n}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=["greenq", "dramatiq", "celery"])
    parser.add_argument("action", choices=["load", "enqueue", "sends", "calls", "latency"])
    parser.add_argument("job", nargs="?", default="noop")
    parser.add_argument("--phase", type=int, default=0)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--spacing", type=float, default=20.0)
    parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("--confirms", choices=["default", "on", "off"], default="default")
    args = parser.parse_args()
    app = _app(args.system)
    if args.action == "load":
        result = load(args.system, app, args.job, args.phase, args.n, args.keep_alive)
    elif args.action == "enqueue":
        result = enqueue(args.system, app, args.n)
    elif args.action == "sends":
        result = sends(args.system, app, args.n)
    elif args.action == "calls":
        result = calls(args.system, app, args.n, args.confirms)
    else:
        result = latency(args.system, app, args.n, args.spacing)
    if args.system != "celery":
        app.broker.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
