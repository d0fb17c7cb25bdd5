"""The benchmark command runs end to end at a tiny N, so it cannot rot. Nothing here asserts on speed.

The peers (Dramatiq, Celery) run only with ``GREENQ_BENCH_PEERS=1`` and an
existing ``benchmarks/.venv-peers`` (``python -m benchmarks.peers``): the suite
never installs them, so it stays fast and offline.
"""

import json
import os
import subprocess
import sys

import pytest
from support import require_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n", "60", "-t", "20", "--latency-samples", "5", "--latency-spacing", "5", "--enqueue-n", "40",
        "--no-chart"]


def run_benchmarks(tmp_path, *args):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "benchmarks", *TINY, "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (json_path,) = out.glob("*.json")
    assert len(list(out.glob("*.csv"))) == 1
    data = json.loads(json_path.read_text())
    return data, done.stdout


def check_row(row, system, with_bare=True):
    assert "error" not in row, row
    for key in ("noop_rate", "scrape_rate", "scrape_ka_rate", "rss_mib"):
        assert row[key] > 0, (key, row)
    assert row["noop_cpu_ms"] >= 0 and row["scrape_cpu_ms"] >= 0  # CPU ticks are 10 ms: tiny N may read 0
    if system != "bare":
        assert row["latency_p50_ms"] >= 0 and row["latency_p99_ms"] >= row["latency_p50_ms"]
        assert row["enqueue_one"] > 0
        if with_bare:
            assert "queue_cpu_noop_ms" in row
    if system == "greenq":
        assert row["enqueue_batch"] > 0


def test_bare_pool_and_greenq_on_sqlite(tmp_path):
    data, stdout = run_benchmarks(tmp_path, "--systems", "bare,greenq", "--brokers", "sqlite", "--small-threads", "0")
    rows = {(r["system"], r["broker"]): r for r in data["rows"]}
    assert set(rows) == {("bare", "none"), ("greenq", "sqlite")}
    check_row(rows["bare", "none"], "bare")
    check_row(rows["greenq", "sqlite"], "greenq")
    assert "scrape/s" in stdout and "Targets" in stdout
    assert any("scrape >= 95% of bare pool (sqlite)" in t[1] for t in data["targets"])


def test_greenq_on_redis_counts_connections(tmp_path):
    require_server("Redis", "127.0.0.1", 6379)
    data, _ = run_benchmarks(tmp_path, "--systems", "greenq", "--brokers", "redis", "--small-threads", "5")
    (row,) = data["rows"]
    check_row(row, "greenq", with_bare=False)
    assert row["conns"] >= 1 and row["conns_small_t"] >= 1


@pytest.mark.skipif(os.environ.get("GREENQ_BENCH_PEERS") != "1", reason="set GREENQ_BENCH_PEERS=1 to run the peers")
def test_peers_side_by_side(tmp_path):
    sys.path.insert(0, ROOT)
    from benchmarks import peers

    if not peers.available():
        pytest.skip(f"{peers.VENV} is missing: python -m benchmarks.peers creates it")
    require_server("Redis", "127.0.0.1", 6379)
    data, _ = run_benchmarks(tmp_path, "--systems", "bare,greenq,dramatiq,celery", "--brokers", "redis",
                             "--small-threads", "0")
    rows = {(r["system"], r["broker"]): r for r in data["rows"]}
    for system in ("greenq", "dramatiq", "celery"):
        check_row(rows[system, "redis"], system)


def test_targets_are_ratios_within_one_repetition():
    sys.path.insert(0, ROOT)
    from benchmarks import report

    base = {"noop_cpu_ms": 0.02, "scrape_cpu_ms": 1.0, "scrape_ka_cpu_ms": 0.8, "rss_mib": 40}
    rows = [
        {"system": "bare", "broker": "none", "rep": 1, "noop_rate": 10000, "scrape_rate": 900,
         "scrape_ka_rate": 1500, **base},
        {"system": "greenq", "broker": "redis", "rep": 1, "noop_rate": 8000, "noop_cpu_ms": 0.06,
         "scrape_rate": 880, "scrape_cpu_ms": 1.1, "scrape_ka_rate": 1400, "scrape_ka_cpu_ms": 0.9,
         "latency_p50_ms": 2, "latency_p99_ms": 30, "enqueue_one": 5000, "enqueue_batch": 50000,
         "rss_mib": 50, "conns": 4, "conns_small_t": 4},
        {"system": "dramatiq", "broker": "redis", "rep": 1, "noop_rate": 1000, "noop_cpu_ms": 0.4,
         "scrape_rate": 400, "scrape_cpu_ms": 1.9, "scrape_ka_rate": 800, "scrape_ka_cpu_ms": 1.2,
         "latency_p50_ms": 8, "latency_p99_ms": 100, "enqueue_one": 4000, "rss_mib": 55},
    ]
    results = {name: ok for _, name, _, ok in report.targets(rows)}
    assert results["noop >= 2x dramatiq (redis)"] is True
    assert results["noop >= 75% of bare pool (redis)"] is True
    assert results["scrape >= 95% of bare pool (redis)"] is True
    assert results["scrape keep-alive >= 95% of bare pool (redis)"] is False
    assert results["queue CPU/job <= 1/3 dramatiq (redis, scrape)"] is True  # 0.1 vs 0.9 ms
    assert results["idle latency p50 < 5 ms, p99 < 20 ms (redis)"] is False
    assert results["batch >= 10x dramatiq send() (redis)"] is True
    assert results["worker RSS <= dramatiq's (redis)"] is True
    assert "MISS" in report.targets_text(report.targets(rows))
    assert "q-cpu scrape" in report.table(rows)
