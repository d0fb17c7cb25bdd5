"""Queue CPU per job in one worker process, with little noise.

    python -m benchmarks.overhead [--n 20000] [--rounds 3] [--brokers sqlite,redis,rabbitmq] [--jobs noop,io]

The main command's queue CPU per job is the difference of two figures taken
seconds apart while both cores are shared with the page server and the broker,
so it moves by tens of percent between runs. This one runs a single gevent
process with 250 greenlets, the N jobs already queued, and reads that
process's own CPU time from the start of the pool to the last ack (the
broker's server is not counted). A bare ``gevent.pool.Pool`` runs the same
jobs in the same way, and the difference per job is the queue's cost.
Dramatiq's ``Worker`` runs the same way on Redis and RabbitMQ when the peers'
virtualenv exists (``python -m benchmarks.peers``), with a Redis connection
pool big enough for 250 greenlets (at its defaults it fails with "Too many
connections" and retries after 5 s).

Jobs: ``noop``, and ``io``, a cooperative wait of 30-70 ms: IO-bound jobs end
one by one, not in a burst, so fetches and acks carry fewer messages each.
Each round runs every case once, alternating, in a fresh process; medians are
printed, with greenq's settle and fetch calls per job. A minute or two.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from . import peers
from .run import ROOT, _env


def measure(python, system, broker, job, n):
    done = subprocess.run([python, "-m", "benchmarks.workloads.overhead_child", system, broker, job, str(n)],
                          cwd=ROOT, env=_env({}), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{system}/{broker} {job} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="jobs per measurement [20000]")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per case, alternating [3]")
    parser.add_argument("--brokers", default="sqlite,redis,rabbitmq")
    parser.add_argument("--jobs", default="noop,io")
    parser.add_argument("--no-dramatiq", dest="dramatiq", action="store_false", help="greenq and the bare pool only")
    args = parser.parse_args(argv)
    ours = peers.GREENQ.python() if peers.GREENQ.available() else sys.executable
    jobs = [j for j in args.jobs.split(",") if j]
    brokers = [b for b in args.brokers.split(",") if b]
    cases = [("bare", "-")] + [("greenq", b) for b in brokers]
    if args.dramatiq and peers.PEERS.available():
        cases += [("dramatiq", b) for b in brokers if b in ("redis", "rabbitmq")]
    elif args.dramatiq:
        print(f"Dramatiq skipped: {peers.PEERS.path} is missing (python -m benchmarks.peers)", file=sys.stderr)
    results = {}
    for round_ in range(1, args.rounds + 1):
        for job in jobs:
            for system, broker in cases:
                python = peers.PEERS.python() if system == "dramatiq" else ours
                result = measure(python, system, broker, job, args.n)
                results.setdefault((system, broker, job), []).append(result)
                print(f"round {round_}: {system}/{broker} {job}: {result['cpu_us']:.1f} us CPU/job", file=sys.stderr,
                      flush=True)
    print(f"\nCPU per job in one gevent process with 250 greenlets, median of {args.rounds} ({args.n} jobs each):")
    print(f"{'system':<8} {'broker':<9} {'job':<5} {'us/job':>7} {'queue us/job':>13} {'vs dramatiq':>12}"
          f" {'settles/job':>12} {'fetches/job':>12}")
    for job in jobs:
        median = {case: statistics.median(r["cpu_us"] for r in results[(*case, job)]) for case in cases}
        base = median[("bare", "-")]
        for system, broker in cases:
            cpu = median[(system, broker)]
            row = f"{system:<8} {broker:<9} {job:<5} {cpu:7.1f}"
            if system != "bare":
                peer = median.get(("dramatiq", broker))
                ratio = f"{(cpu - base) / (peer - base):.2f}x" if system == "greenq" and peer else "-"
                row += f" {cpu - base:13.1f} {ratio:>12}"
            if system == "greenq":
                runs = results[(system, broker, job)]
                row += (f" {statistics.median(r['settle_calls'] for r in runs):12.3f}"
                        f" {statistics.median(r['fetch_calls'] for r in runs):12.3f}")
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
