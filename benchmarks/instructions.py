"""What one ``send()`` costs the sending process, in CPU instructions: greenq beside Dramatiq.

    python -m benchmarks.instructions                      # redis, rabbitmq (confirms on and off), sqlite
    python -m benchmarks.instructions --brokers redis --n 300

Rates on a shared 2-core machine move by 20-30% from minute to minute, more
than the difference between two producers; an instruction count does not.
Each figure runs the producer (``benchmarks.producer ... calls``) twice under
valgrind's callgrind, with ``--base`` and with ``--base + --n`` sends, and
divides the difference by ``--n``: start-up, imports and the connection cancel
out, and what is left is the cost of one ``send()`` in the sending process
(the broker server's own work is not counted; on RabbitMQ with publisher
confirms, neither is the wait for the confirm). A run takes a minute or two
per figure (callgrind is about fifty times slower than the CPU).

``--worker`` counts the consuming side: the instructions one worker process
(``benchmarks.workloads.overhead_child``: 250 greenlets, no-op jobs) spends per
message it fetches, runs and acks, for greenq, Dramatiq and a bare gevent pool
spawning the same jobs. The jobs are queued by a separate run first, so only
the worker is counted.

``--server`` counts the other side instead: the instructions Redis itself
spends on one ``send()``, each run going to a fresh ``redis-server`` of its
own, started under callgrind on a free port (Redis only; its one thread is
what every producer and worker of an app shares).

Needs ``valgrind`` on PATH, the servers of the brokers asked for (for
``--server``, ``redis-server``), and for Dramatiq ``benchmarks/.venv-peers``
(``python -m benchmarks.peers``).
"""

import argparse
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid

from . import peers
from .run import ROOT, BenchError, Case, Run, _env, log, parse_args

#: (broker, confirms) pairs measured; confirms only mean something on RabbitMQ.
SETTINGS = {"redis": ["default"], "rabbitmq": ["on", "off"], "sqlite": ["default"]}

#: The prefix that runs a command under callgrind, which prints its total on stderr.
CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def collected(stderr, what):
    """The instruction total callgrind printed on ``stderr`` for ``what``."""
    found = re.search(r"Collected\s*:\s*(\d+)", stderr)
    if found is None:
        raise BenchError(f"{what}: callgrind printed no instruction count:\n{stderr[-1500:]}")
    return int(found.group(1))


def per_unit(count, base, n):
    """What one more unit costs: ``count(base + n)`` less ``count(base)``, over ``n`` (start-up cancels out)."""
    return (count(base + n) - count(base)) / n


def instructions(case, n, confirms):
    """Instructions callgrind counted for a producer run of ``n`` sends."""
    out = case.run_producer("calls", "--n", n, "--confirms", confirms, wrapper=CALLGRIND, timeout=1800).stderr
    return collected(out, case.label)


def server_instructions(case, n, confirms):
    """Instructions a fresh redis-server, run under callgrind, spent while the producer made ``n`` sends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [*CALLGRIND, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # callgrind starts slowly; nothing to wait on but the port
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"redis-server under callgrind did not listen on port {port}")
            time.sleep(0.1)
        shared, case.url = case.url, f"redis://127.0.0.1:{port}/0"
        try:
            case.run_producer("calls", "--n", n, "--confirms", confirms, timeout=1800)
        finally:
            case.url = shared  # what the case cleans up afterwards
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"SHUTDOWN NOSAVE\r\n")
        out = server.communicate(timeout=300)[1]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return collected(out, f"{case.label} (redis-server)")


def worker_instructions(system, broker, n, python):
    """Instructions one worker process spends running ``n`` queued no-op jobs (queued by a run not counted)."""
    env = _env({"BENCH_OVERHEAD_QUEUE": f"instr-{uuid.uuid4().hex[:8]}"})
    command = [python, "-m", "benchmarks.workloads.overhead_child", system, broker, "noop", str(n)]
    if system != "bare":
        subprocess.run(command, cwd=ROOT, env={**env, "BENCH_OVERHEAD_STEP": "fill"}, check=True,
                       capture_output=True, timeout=600)
    done = subprocess.run([*CALLGRIND, *command], cwd=ROOT, env={**env, "BENCH_OVERHEAD_STEP": "work"},
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise BenchError(f"{system}/{broker} worker under callgrind failed:\n{done.stderr[-1500:]}")
    return collected(done.stderr, f"{system}/{broker} worker")


def per_message(system, broker, base, n, python):
    return per_unit(lambda total: worker_instructions(system, broker, total, python), base, n)


def workers(args, systems):
    """``--worker``: a row per broker of instructions per message, greenq, Dramatiq and the bare pool."""
    python = {"greenq": peers.GREENQ.python() if peers.GREENQ.available() else sys.executable,
              "dramatiq": peers.PEERS.python()}
    python["bare"] = python["greenq"]
    queues = [s for s in systems if s != "bare"]
    bare = {}
    if "bare" in systems:
        bare["bare"] = per_message("bare", "-", args.base, args.n, python["bare"])
        log(f"   bare pool {bare['bare'] / 1000:8.1f}k instructions a job")
    results = []
    for broker in [b for b in args.brokers.split(",") if b]:
        row = {"broker": broker, "confirms": "-", **bare}
        for system in queues:
            if system == "dramatiq" and broker == "sqlite":
                continue
            row[system] = per_message(system, broker, args.base, args.n, python[system])
            log(f"   {broker:<9} {system:<9} {row[system] / 1000:8.1f}k instructions a message")
        results.append(row)
    print(table(results, [*queues, *bare]))
    return 0


def per_send(case, base, n, confirms, count=instructions):
    return per_unit(lambda total: count(case, total, confirms), base, n)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="redis,rabbitmq,sqlite")
    parser.add_argument("--systems", default=None,
                        help="comma-separated: greenq, dramatiq, and with --worker bare [greenq,dramatiq; "
                             "with --worker greenq,dramatiq,bare]")
    parser.add_argument("--n", type=int, default=300, help="sends counted [300]")
    parser.add_argument("--base", type=int, default=100, help="sends in the baseline run [100]")
    parser.add_argument("--worker", action="store_true",
                        help="count what a worker process spends per no-op message it runs (--n 2000 --base 1000 "
                             "suit it), beside a bare gevent pool")
    parser.add_argument("--server", action="store_true",
                        help="count what Redis itself spends on a send(), not the sending process (Redis only)")
    args = parser.parse_args(argv)
    if args.server:
        if "redis" not in args.brokers.split(","):
            log("--server counts redis-server's instructions: it needs --brokers redis.")
            return 2
        args.brokers = "redis"
    if shutil.which("valgrind") is None:
        log("valgrind is not on PATH: it counts the instructions (apt install valgrind).")
        return 2
    if args.systems is None:
        args.systems = "greenq,dramatiq,bare" if args.worker else "greenq,dramatiq"
    systems = [s for s in args.systems.split(",") if s]
    if "dramatiq" in systems and not peers.PEERS.available():
        log(f"Skipping dramatiq: {peers.PEERS.path} is missing (python -m benchmarks.peers).")
        systems.remove("dramatiq")
    if args.worker:
        return workers(args, systems)
    run = Run(parse_args([]))
    run.http_url = "http://127.0.0.1:9/"  # no page server: the producers fetch nothing
    results = []
    try:
        for broker in [b for b in args.brokers.split(",") if b]:
            for confirms in SETTINGS[broker]:
                row = {"broker": broker, "confirms": confirms}
                for system in systems:
                    if system == "dramatiq" and broker == "sqlite":
                        continue
                    case = Case(run, system, broker, 1, tag="-instructions")
                    try:
                        row[system] = per_send(case, args.base, args.n, confirms,
                                               server_instructions if args.server else instructions)
                    finally:
                        case.cleanup()
                    log(f"   {broker:<9} {'confirms ' + confirms if broker == 'rabbitmq' else '':<13} "
                        f"{system:<9} {row[system] / 1000:8.1f}k instructions a send()"
                        + (" in redis-server" if args.server else ""))
                results.append(row)
    finally:
        run.close()
    print(table(results, systems))
    return 0


def table(results, systems):
    lines = [f"{'broker':<9} {'confirms':<9} " + " ".join(f"{s + ' (k)':>14}" for s in systems)
             + ("   greenq/dramatiq" if {"greenq", "dramatiq"} <= set(systems) else "")]
    for row in results:
        cells = " ".join(f"{row[s] / 1000:14.1f}" if s in row else f"{'-':>14}" for s in systems)
        ratio = f"   {row['greenq'] / row['dramatiq']:.2f}" if "greenq" in row and "dramatiq" in row else ""
        lines.append(f"{row['broker']:<9} {row['confirms'] if row['broker'] == 'rabbitmq' else '-':<9} {cells}{ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
