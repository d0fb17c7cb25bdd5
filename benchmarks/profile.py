"""Profile greenq's worker processes while they run a workload.

    python -m benchmarks.profile --broker redis --job scrape --n 6000

Starts the workers as ``python -m benchmarks`` does, with ``BENCH_PROFILE``
set: each worker process samples its own stack on every millisecond of CPU
(SIGPROF; see ``workloads.common``), so the profile covers every greenlet.
Loads N gated jobs, opens the gate, and when they are done prints the
functions with the most samples, self and total, summed over the processes.
The counts include the idle start-up, which is small next to N jobs.
"""

import argparse
import collections
import os
import sys

from .run import Case, Run, parse_args


def summarise(folder, top):
    own, total, samples = collections.Counter(), collections.Counter(), 0
    for name in os.listdir(folder):
        if not name.startswith("profile-") or not name.endswith(".txt"):
            continue
        with open(os.path.join(folder, name)) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                if not stack:
                    continue
                count = int(count)
                samples += count
                frames = stack.split(";")
                own[frames[-1]] += count
                for frame in set(frames):
                    total[frame] += count
    print(f"{samples} samples (1 per ms of CPU)")
    for title, counter in (("self", own), ("total", total)):
        print(f"--- top {top} by {title}")
        for frame, count in counter.most_common(top):
            print(f"{count / max(1, samples):6.1%}  {frame}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="redis")
    parser.add_argument("--system", default="greenq")
    parser.add_argument("--job", default="scrape")
    parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    run = Run(parse_args(["--n", str(args.n)]))
    case = None
    try:
        run.start_server()
        case = Case(run, args.system, args.broker, 250)
        os.environ["BENCH_PROFILE"] = case.dir
        case.start()
        result = case.throughput(args.job, args.n, args.keep_alive)
        import time

        time.sleep(1.0)  # the last profile dump
        print(f"{args.system}/{args.broker} {args.job}: {result['rate']:.0f} jobs/s, "
              f"{result['cpu_ms']:.3f} ms CPU/job")
        summarise(case.dir, args.top)
    finally:
        os.environ.pop("BENCH_PROFILE", None)
        if case is not None:
            case.stop()
            case.cleanup()
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
