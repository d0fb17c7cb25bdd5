"""The ceiling: the same jobs on a bare gevent pool, with no queue at all.

    python -m benchmarks.workloads.bare -t 250

One process = one ``gevent.pool.Pool(t)``. Work arrives as order files
(``order-<phase>.json`` in ``BENCH_RUN_DIR``: job name, argument list, count
for this process) which the process picks up by polling, then spawns into the
pool, so the orchestrator times it exactly like a worker fed by a broker: the
jobs wait at the phase gate, the gate opens, the clock runs. Start one process
per ``-p`` with ``BENCH_BARE_INDEX`` set so each takes its own orders.
"""

from gevent import monkey  # noqa: I001 - patch before anything else

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402

from . import common  # noqa: E402

JOBS = {"noop": common.noop, "scrape": common.scrape}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-t", "--threads", type=int, default=250)
    args = parser.parse_args()
    index = os.environ.get("BENCH_BARE_INDEX", "0")
    pool = gevent.pool.Pool(args.threads)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    common.start_probe()
    seen = set()

    def feed(order):
        fn = JOBS[order["job"]]
        for _ in range(order["count"]):
            pool.spawn(fn, *order["args"])

    while not stop.is_set():
        for name in sorted(os.listdir(common.run_dir())):
            if name.startswith(f"order-{index}-") and name.endswith(".json") and name not in seen:
                seen.add(name)
                with open(os.path.join(common.run_dir(), name)) as f:
                    gevent.spawn(feed, json.load(f))
        stop.wait(0.01)
    pool.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
