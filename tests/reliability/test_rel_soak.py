"""Load: a soak through ``greenq-gevent relapp -p 2 -t 250``, with worker memory sampled as it runs.

The bound: after warm-up (the first fifth of the messages), no worker's resident
memory grows by more than ``RSS_GROWTH_BOUND_KIB``. The default run soaks 20,000
messages per broker; ``--long`` soaks 100,000. The figures (messages, lost,
duplicates, RSS at warm-up and at the end, growth) are reported per broker.
"""

import threading
import time

import pytest

from rel_harness import BROKERS, Target, report, require, rss_kib, stop

RSS_GROWTH_BOUND_KIB = 20 * 1024


class RssSampler:
    """Samples the workers' RSS on a thread, every ``interval`` seconds (monitoring, not synchronisation)."""

    def __init__(self, pids, ledger, interval=0.2):
        self.pids = sorted(pids)
        self.ledger = ledger
        self.interval = interval
        self.samples = []  # (done, {pid: kib})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self):
        self.samples.append((self.ledger.done(), {pid: rss_kib(pid) for pid in self.pids}))

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.sample()

    def growth(self, warm_up):
        """Per worker: (RSS at the first sample past ``warm_up`` messages, peak RSS after it) in KiB."""
        after = [rss for done, rss in self.samples if done >= warm_up]
        out = {}
        for pid in self.pids:
            values = [s[pid] for s in after if s.get(pid) is not None]
            if values:
                out[pid] = (values[0], max(values))
        return out


def soak(kind, tmp_path, n):
    require(kind)
    target = Target(kind, tmp_path)
    proc = None
    try:
        ids = list(range(n))
        started = time.monotonic()
        for start in range(0, n, 10000):
            target.send("work", ids[start:start + 10000], sleep_ms=1)
        sent = time.monotonic()
        proc = target.start("--quiet-messages", threads=250)
        proc.ready(2)
        sampler = RssSampler(proc.worker_pids(), target.ledger)
        sampler.start()
        try:
            target.ledger.wait_done(ids, timeout=max(120, n / 100))
        finally:
            sampler.stop()
        finished = time.monotonic()
        growth = sampler.growth(n // 5)
        summary = target.ledger.summary(ids)
        worst = max((peak - first for first, peak in growth.values()), default=0)
        report("soak -p 2 -t 250", kind, faults=0, **summary, samples=len(sampler.samples),
               rss_warm_kib=[first for first, _ in growth.values()], rss_peak_kib=[p for _, p in growth.values()],
               rss_growth_kib=worst, bound_kib=RSS_GROWTH_BOUND_KIB, enqueue_s=round(sent - started, 1),
               process_s=round(finished - sent, 1))
        assert summary["lost"] == 0, summary
        assert growth, "no RSS samples after warm-up"
        assert worst < RSS_GROWTH_BOUND_KIB, growth
        assert stop(proc) == 0
    finally:
        if proc is not None:
            proc.kill()
        target.cleanup()


@pytest.mark.parametrize("kind", BROKERS)
def test_soak(kind, tmp_path):
    soak(kind, tmp_path, 20_000)


@pytest.mark.long
@pytest.mark.parametrize("kind", BROKERS)
def test_soak_100k(kind, tmp_path):
    soak(kind, tmp_path, 100_000)
