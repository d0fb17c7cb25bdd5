"""Queue CPU per job in one worker process, with little noise.

    python -m benchmarks.overhead [--n 20000] [--rounds 3] [--brokers sqlite,redis,rabbitmq] [--jobs noop,io]
    python -m benchmarks.overhead --jobs scrape [--scrape-n 3000]

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
``scrape`` (asked for by name) is the main command's scrape job, ``requests.get``
of the 50 ms local page on a new connection, against a page server this
command starts. Its own CPU (a few ms per job, varying by several percent) hides
a queue's tens of microseconds, so it answers a different question: whether a
worker makes the job itself dearer (it would show as a difference far above
the io job's).
Each round runs every case once, alternating, in a fresh process; medians are
printed with the spread of the rounds and greenq's settle and fetch calls per
job. A minute or two (scrape adds about three).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from . import peers, procs
from .run import ROOT, _env, start_page_server


def measure(python, system, broker, job, n, env):
    done = subprocess.run([python, "-m", "benchmarks.workloads.overhead_child", system, broker, job, str(n)],
                          cwd=ROOT, env=_env(env), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{system}/{broker} {job} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="jobs per measurement [20000]")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per case, alternating [3]")
    parser.add_argument("--brokers", default="sqlite,redis,rabbitmq")
    parser.add_argument("--jobs", default="noop,io", help="comma-separated: noop, io, scrape [noop,io]")
    parser.add_argument("--scrape-n", type=int, default=3000, help="jobs per scrape measurement [3000]")
    parser.add_argument("--no-dramatiq", dest="dramatiq", action="store_false", help="greenq and the bare pool only")
    args = parser.parse_args(argv)
    ours = peers.GREENQ.python() if peers.GREENQ.available() else sys.executable
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = sorted(set(jobs) - {"noop", "io", "scrape"})
    if unknown:
        parser.error(f"unknown job(s) {', '.join(unknown)}: choose from noop, io, scrape")
    brokers = [b for b in args.brokers.split(",") if b]
    cases = [("bare", "-")] + [("greenq", b) for b in brokers]
    if args.dramatiq and peers.PEERS.available():
        cases += [("dramatiq", b) for b in brokers if b in ("redis", "rabbitmq")]
    elif args.dramatiq:
        print(f"Dramatiq skipped: {peers.PEERS.path} is missing (python -m benchmarks.peers)", file=sys.stderr)
    results, env, server = {}, {}, None
    try:
        if "scrape" in jobs:
            server, env["BENCH_HTTP_URL"] = start_page_server()
        for round_ in range(1, args.rounds + 1):
            for job in jobs:
                n = args.scrape_n if job == "scrape" else args.n
                for system, broker in cases:
                    python = peers.PEERS.python() if system == "dramatiq" else ours
                    result = measure(python, system, broker, job, n, env)
                    results.setdefault((system, broker, job), []).append(result)
                    print(f"round {round_}: {system}/{broker} {job}: {result['cpu_us']:.1f} us CPU/job",
                          file=sys.stderr, flush=True)
    finally:
        if server is not None:
            procs.stop_group(server)
    counts = f"{args.n} jobs each" + (f", {args.scrape_n} for scrape" if "scrape" in jobs else "")
    print(f"\nCPU per job in one gevent process with 250 greenlets, median of {args.rounds} ({counts}); "
          "spread: highest minus lowest round")
    print(f"{'system':<8} {'broker':<9} {'job':<6} {'us/job':>7} {'spread':>7} {'queue us/job':>13} {'vs dramatiq':>12}"
          f" {'settles/job':>12} {'fetches/job':>12}")
    for job in jobs:
        median = {case: statistics.median(r["cpu_us"] for r in results[(*case, job)]) for case in cases}
        base = median[("bare", "-")]
        for system, broker in cases:
            runs = results[(system, broker, job)]
            cpu = median[(system, broker)]
            spread = max(r["cpu_us"] for r in runs) - min(r["cpu_us"] for r in runs)
            queue, ratio, settles, fetches = "-", "-", "-", "-"
            if system != "bare":
                queue = f"{cpu - base:.1f}"
                peer = median.get(("dramatiq", broker))
                # not for scrape: its own spread is bigger than either queue's cost
                if system == "greenq" and peer and peer > base and job != "scrape":
                    ratio = f"{(cpu - base) / (peer - base):.2f}x"
            if system == "greenq":
                settles = f"{statistics.median(r['settle_calls'] for r in runs):.3f}"
                fetches = f"{statistics.median(r['fetch_calls'] for r in runs):.3f}"
            print(f"{system:<8} {broker:<9} {job:<6} {cpu:7.1f} {spread:7.1f} {queue:>13} {ratio:>12}"
                  f" {settles:>12} {fetches:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
