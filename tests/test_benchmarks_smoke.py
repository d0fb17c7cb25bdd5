"""The benchmark command runs end to end at a tiny N, so it cannot rot. Nothing here asserts on speed.

The peers (Dramatiq, Celery) run only with ``GREENQ_BENCH_PEERS=1`` and an
existing ``benchmarks/.venv-peers`` (``python -m benchmarks.peers``): the suite
never installs them, so it stays fast and offline.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from support import require_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import peers, report, run  # noqa: E402
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


def require_rabbitmq():
    require_server("RabbitMQ", "127.0.0.1", 5672)
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH (the benchmark makes a vhost per run with it)")


def vhosts():
    done = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def check_rabbitmq_sends(row, confirms_by_default):
    assert row["enqueue_default_confirms"] is confirms_by_default
    assert row["enqueue_one_confirmed"] > 0 and row["enqueue_one_unconfirmed"] > 0
    default = "enqueue_one_confirmed" if confirms_by_default else "enqueue_one_unconfirmed"
    assert row[default] == row["enqueue_one"]  # the default's own figure, not a second run of it


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
    for job in ("noop", "scrape", "scrape_ka"):  # the bare pool measured beside greenq, around each phase
        assert rows["greenq", "sqlite"][f"pair_{job}_rate"] > 0
    assert "scrape/s" in stdout and "Targets" in stdout
    texts = {t[1]: t[2] for t in data["targets"]}
    assert texts["scrape >= 95% of bare pool (sqlite)"].endswith(", paired)")
    # both ran on .venv-greenq (the peers' set-up) when it exists, else on this interpreter, and the run says which
    assert data["meta"]["greenq_python"] == (peers.GREENQ.python() if peers.GREENQ.available() else sys.executable)


def test_greenq_on_redis_counts_connections(tmp_path):
    require_server("Redis", "127.0.0.1", 6379)
    data, _ = run_benchmarks(tmp_path, "--systems", "greenq", "--brokers", "redis", "--small-threads", "5")
    (row,) = data["rows"]
    check_row(row, "greenq", with_bare=False)
    assert row["conns"] >= 1 and row["conns_small_t"] >= 1
    assert row["server_cpu_noop_ms"] >= 0 and row["server_cpu_scrape_ms"] >= 0  # redis-server's CPU, read per phase
    # flat: 2 x 20 greenlets busy at once hold no more connections than 2 x 5 (a pool per greenlet would)
    assert row["conns"] <= row["conns_small_t"] + report.CONNS_MARGIN, row


def test_greenq_on_rabbitmq_in_its_own_vhost(tmp_path):
    require_rabbitmq()
    data, stdout = run_benchmarks(tmp_path, "--systems", "greenq", "--brokers", "rabbitmq", "--small-threads", "0")
    (row,) = data["rows"]
    check_row(row, "greenq", with_bare=False)
    check_rabbitmq_sends(row, confirms_by_default=True)
    assert row["conns"] >= 1
    assert "send conf/s" in stdout and "send unconf/s" in stdout
    vhost = f"greenq-bench-{data['meta']['run_id']}"
    assert vhost not in vhosts()  # the run made it (the workers ran in it) and deleted it


@pytest.mark.skipif(os.environ.get("GREENQ_BENCH_PEERS") != "1", reason="set GREENQ_BENCH_PEERS=1 to run the peers")
def test_peers_side_by_side(tmp_path):
    if not peers.PEERS.available():
        pytest.skip(f"{peers.PEERS.path} is missing: python -m benchmarks.peers creates it")
    require_server("Redis", "127.0.0.1", 6379)
    require_rabbitmq()
    data, _ = run_benchmarks(tmp_path, "--systems", "bare,greenq,dramatiq,celery", "--brokers", "redis,rabbitmq",
                             "--small-threads", "0")
    rows = {(r["system"], r["broker"]): r for r in data["rows"]}
    for system in ("greenq", "dramatiq", "celery"):
        check_row(rows[system, "redis"], system)
        assert rows[system, "redis"]["pair_scrape_rate"] > 0  # every queue beside its own bare pool
    for system, confirms in (("greenq", True), ("dramatiq", False)):
        check_row(rows[system, "rabbitmq"], system)
        check_rabbitmq_sends(rows[system, "rabbitmq"], confirms_by_default=confirms)
    names = {t[1]: t[2] for t in data["targets"]}
    assert "send() >= dramatiq's (rabbitmq, both with publisher confirms)" in names
    assert "send() >= dramatiq's (rabbitmq, both without publisher confirms)" in names
    assert "median of 3 alternating rounds" in names["send() >= dramatiq's (redis)"]
    rounds = {r["broker"]: r["rounds"] for r in data["rows"] if r["system"] == "sends"}
    assert set(rounds) == {"redis", "rabbitmq"} and all(len(each) == 3 for each in rounds.values())
    assert all(r["greenq"]["confirmed"] > 0 and r["dramatiq"]["unconfirmed"] > 0 for r in rounds["rabbitmq"])
    assert all(r["greenq"]["batch"] > 0 and "batch" not in r["dramatiq"] for r in rounds["redis"])
    assert "median of 3 alternating rounds" in names["batch >= 10x dramatiq send() (redis)"]


def _instruction_table(*args, timeout=600):
    """Run ``benchmarks.instructions`` for greenq alone; its one table row's cells, and its stderr."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not on PATH")
    done = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "--systems", "greenq", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    header, row = done.stdout.strip().splitlines()
    assert header.split()[:3] == ["broker", "confirms", "greenq"]
    return row.split(), done.stderr


def test_instruction_counts_of_a_send(tmp_path):
    (broker, _, count), _ = _instruction_table("--brokers", "sqlite", "--n", "10", "--base", "2")
    # a send() is some tens of thousands of instructions at the very least, and not tens of millions
    assert broker == "sqlite" and 20 < float(count) < 20000, (broker, count)


def test_instruction_counts_of_a_send_in_the_redis_server(tmp_path):
    (broker, _, count), stderr = _instruction_table("--server", "--brokers", "redis", "--n", "10", "--base", "2")
    # Redis's side of a send() (parsing, the script, two commands) is thousands of instructions, not millions
    assert broker == "redis" and 5 < float(count) < 5000, (broker, count)
    assert "in redis-server" in stderr
    refused = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "--server", "--brokers", "sqlite"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "needs --brokers redis" in refused.stderr


def test_instruction_counts_of_a_worker_per_message(tmp_path):
    # greenq alone (the bare pool's two runs under callgrind would double the time)
    (broker, _, greenq), stderr = _instruction_table("--worker", "--brokers", "sqlite", "--n", "20", "--base", "10",
                                                     timeout=900)
    # fetching, running and acking a message is tens of thousands of instructions at least, not tens of millions
    assert broker == "sqlite" and 10 < float(greenq) < 10000, (broker, greenq)
    assert "instructions a message" in stderr


def _chart_python():
    """An interpreter whose matplotlib imports: this one, else the peers' virtualenv's (as report.make_chart does)."""
    if importlib.util.find_spec("matplotlib") is not None:
        return sys.executable
    if os.path.exists(peers.PEERS.python()):
        check = subprocess.run([peers.PEERS.python(), "-c", "import matplotlib"], capture_output=True)
        if check.returncode == 0:
            return peers.PEERS.python()
    return None


def test_chart_is_drawn(tmp_path):
    if _chart_python() is None:
        pytest.skip("matplotlib imports neither here nor in benchmarks/.venv-peers: the chart is skipped")
    rows = [dict(row, rep=1) for row in SAMPLE_ROWS]
    rows.append({"system": "greenq", "broker": "sqlite", "rep": 1, "error": "a failed case is left out"})
    meta = {"n": 60, "processes": 2, "threads": 20, "repeat": 1, "cpus": 2, "when": "now"}
    paths = report.write(rows, meta, str(tmp_path), chart=True)
    pngs = [p for p in paths if p.endswith(".png")]
    assert len(pngs) == 1, paths
    with open(pngs[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _fail_in_start(monkeypatch, log_dir, exc_for):
    """Case.start raises ``exc_for(call number)`` (if not None) instead of starting any process."""
    calls = []
    log_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(log_dir))  # a failed run keeps its logs: keep them in the test's

    def start(case):
        calls.append(case.label)
        exc = exc_for(len(calls))
        if exc is not None:
            raise exc

    monkeypatch.setattr(run.Case, "start", start)
    monkeypatch.setattr(run.Case, "latency", lambda case, *a: {"p50": 1.0, "p99": 2.0})
    monkeypatch.setattr(run.Case, "throughput", lambda case, *a, **k: {"rate": 100.0, "cpu_ms": 0.1, "conns": 0})
    monkeypatch.setattr(run.Case, "produce", lambda case, *a, **k: {"one_by_one": 10.0, "batch": 20.0})
    return calls


def test_an_unexpected_error_fails_one_case_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    timeout = subprocess.TimeoutExpired([sys.executable, "-m", "benchmarks.producer", "greenq", "enqueue"], 300)
    calls = _fail_in_start(monkeypatch, tmp_path / "logs", lambda i: timeout if i == 1 else None)
    code = run.main(["--systems", "greenq", "--brokers", "sqlite", "--repeat", "2", "--no-chart", "--no-pair-bare",
                     "--out", str(tmp_path)])
    assert code == 1 and len(calls) == 2
    (json_path,) = tmp_path.glob("*.json")
    data = json.loads(json_path.read_text())
    first, second = data["rows"]
    assert first["error"].startswith("TimeoutExpired:") and "300 s" in first["error"]
    assert "error" not in second and second["noop_rate"] == 100.0
    assert data["meta"]["complete"] is True
    assert "TimeoutExpired" in capsys.readouterr().out


def test_an_interrupted_run_still_writes_its_rows(tmp_path, monkeypatch):
    _fail_in_start(monkeypatch, tmp_path / "logs", lambda i: KeyboardInterrupt() if i == 2 else None)
    with pytest.raises(KeyboardInterrupt):
        run.main(["--systems", "greenq", "--brokers", "sqlite", "--repeat", "3", "--no-chart", "--no-pair-bare",
                  "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    data = json.loads(json_path.read_text())
    assert [r["rep"] for r in data["rows"]] == [1] and "error" not in data["rows"][0]
    assert data["meta"]["complete"] is False


BASE = {"noop_cpu_ms": 0.02, "scrape_cpu_ms": 1.0, "scrape_ka_cpu_ms": 0.8, "rss_mib": 40}
SAMPLE_ROWS = [
    {"system": "bare", "broker": "none", "noop_rate": 10000, "scrape_rate": 900, "scrape_ka_rate": 1500, **BASE},
    {"system": "greenq", "broker": "redis", "noop_rate": 8000, "noop_cpu_ms": 0.06,
     "scrape_rate": 880, "scrape_cpu_ms": 1.1, "scrape_ka_rate": 1400, "scrape_ka_cpu_ms": 0.9,
     "latency_p50_ms": 2, "latency_p99_ms": 30, "enqueue_one": 5000, "enqueue_batch": 50000,
     "rss_mib": 50, "conns": 4, "conns_small_t": 4},
    {"system": "dramatiq", "broker": "redis", "noop_rate": 1000, "noop_cpu_ms": 0.4,
     "scrape_rate": 400, "scrape_cpu_ms": 1.9, "scrape_ka_rate": 800, "scrape_ka_cpu_ms": 1.2,
     "latency_p50_ms": 8, "latency_p99_ms": 100, "enqueue_one": 4000, "rss_mib": 55},
    {"system": "greenq", "broker": "rabbitmq", "noop_rate": 7000, "scrape_rate": 870, "scrape_ka_rate": 1400,
     "enqueue_one": 900, "enqueue_one_confirmed": 900, "enqueue_one_unconfirmed": 9000,
     "enqueue_default_confirms": True, "enqueue_batch": 9000},
    {"system": "dramatiq", "broker": "rabbitmq", "noop_rate": 900, "scrape_rate": 400, "scrape_ka_rate": 800,
     "enqueue_one": 8000, "enqueue_one_confirmed": 800, "enqueue_one_unconfirmed": 8000,
     "enqueue_default_confirms": False},
]


def test_targets_are_ratios_within_one_repetition():
    rows = [dict(row, rep=1) for row in SAMPLE_ROWS]
    results = {name: ok for _, name, _, ok in report.targets(rows)}
    assert results["noop >= 2x dramatiq (redis)"] is True
    assert results["noop >= 75% of bare pool (redis)"] is True
    assert results["scrape >= 95% of bare pool (redis)"] is True
    assert results["scrape keep-alive >= 95% of bare pool (redis)"] is False
    assert results["queue CPU/job <= 1/3 dramatiq (redis, scrape)"] is True  # 0.1 vs 0.9 ms
    assert results["idle latency p50 < 5 ms, p99 < 20 ms (redis)"] is False
    assert results["batch >= 10x dramatiq send() (redis)"] is True
    assert results["worker RSS <= dramatiq's (redis)"] is True
    assert results["send() >= dramatiq's (redis)"] is True
    text = report.targets_text(report.targets(rows))
    assert "MISS" in text
    table = report.table(rows)
    assert "q-cpu scrape" in table and "send conf/s" in table and "send unconf/s" in table


def test_paired_figures_decide_the_targets_when_the_run_has_them():
    rows = [dict(row, rep=1) for row in SAMPLE_ROWS if row["broker"] in ("none", "redis")]
    greenq = next(row for row in rows if row["system"] == "greenq")
    # the bare case (minutes away) says 8000/10000 = 80%; the bare pool beside greenq says 8000/12000
    greenq.update(pair_noop_rate=12000, pair_noop_cpu_ms=0.03, pair_scrape_rate=900, pair_scrape_ka_rate=1400)
    rounds = [{"greenq": {"one_by_one": g, "batch": 10 * g}, "dramatiq": {"one_by_one": d}}
              for g, d in ((90, 100), (120, 100), (110, 100))]
    rows.append({"system": "sends", "broker": "redis", "rep": 1, "rounds": rounds})
    results = {name: (text, ok) for _, name, text, ok in report.targets(rows)}
    assert results["noop >= 75% of bare pool (redis)"] == ("67% (8000 vs 12000/s, paired)", False)
    assert results["scrape keep-alive >= 95% of bare pool (redis)"][1] is True  # 1400 vs 1400
    assert results["send() >= dramatiq's (redis)"] == (
        "1.10x, median of 3 alternating rounds (0.90x, 1.20x, 1.10x)", True)
    assert results["batch >= 10x dramatiq send() (redis)"] == (  # the case's own figures say 12.5x
        "11.0x, median of 3 alternating rounds (9.0x, 12.0x, 11.0x)", True)
    assert greenq["queue_cpu_noop_ms"] == pytest.approx(0.06 - 0.03)  # the paired bare pool's CPU, not the case's
    table = report.table(rows)
    assert "sends" not in table  # the rounds are in the targets, not rows of the table


def test_in_process_overhead_compares_each_broker_with_the_bare_pool():
    require_server("Redis", "127.0.0.1", 6379)
    done = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--n", "300", "--rounds", "1",
                           "--brokers", "sqlite,redis", "--no-dramatiq", "--jobs", "noop,io,scrape",
                           "--scrape-n", "100"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("bare ", "greenq "))]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (system, broker, job) for job in ("noop", "io", "scrape")
        for system, broker in (("bare", "-"), ("greenq", "sqlite"), ("greenq", "redis"))]
    for row in rows:
        assert len(row) == 9 and float(row[3]) > 0 and float(row[4]) == 0  # one round: no spread
        if row[0] == "greenq":  # every job was fetched and settled: some calls, never more than one per job
            assert 0 < float(row[7]) <= 1 and 0 < float(row[8]) <= 1
        else:
            assert row[5:] == ["-", "-", "-", "-"]
    assert page_servers() == []  # the page server the scrape job needed was stopped
    assert not redis_keys_left("overhead-")  # the runs dropped their namespaces


@pytest.mark.skipif(os.environ.get("GREENQ_BENCH_PEERS") != "1", reason="set GREENQ_BENCH_PEERS=1 to run the peers")
def test_in_process_overhead_beside_dramatiq():
    if not peers.PEERS.available():
        pytest.skip(f"{peers.PEERS.path} is missing: python -m benchmarks.peers creates it")
    require_server("Redis", "127.0.0.1", 6379)
    done = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--n", "300", "--rounds", "1",
                           "--brokers", "redis", "--jobs", "noop"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {(row[0], row[1]): row for row in (line.split() for line in done.stdout.splitlines())
            if row and row[0] in ("bare", "greenq", "dramatiq")}
    assert set(rows) == {("bare", "-"), ("greenq", "redis"), ("dramatiq", "redis")}
    assert rows["greenq", "redis"][6].endswith("x")  # greenq's queue CPU as a share of Dramatiq's
    assert not redis_keys_left("overhead-")


def page_servers():
    """Pids of running ``benchmarks.server`` processes."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if b"benchmarks.server" in f.read().split(b"\0"):
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


def redis_keys_left(prefix):
    import redis

    return [key for db in (0, 15) for key in redis.Redis(db=db).scan_iter(match=f"*{prefix}*")]


def test_the_broker_servers_cpu_sets_a_ceiling_on_the_bare_pool_ratio():
    rows = [dict(row, rep=1) for row in SAMPLE_ROWS if row["broker"] in ("none", "redis")]
    greenq = next(row for row in rows if row["system"] == "greenq")
    greenq.update(pair_noop_rate=12000, pair_noop_cpu_ms=0.03, server_cpu_noop_ms=0.01)
    results = {name: text for _, name, text, _ in report.targets(rows)}
    # with both cores busy, a server that costs a third of the bare pool's CPU per job leaves it 75% of its rate
    assert results["noop >= 75% of bare pool (redis)"] == (
        "67% (8000 vs 12000/s, paired); the broker's server takes 0.010 ms/job, a ceiling of 75%")
    assert "srv-cpu noop" in report.table(rows)


def test_the_broker_server_is_found_by_its_listening_port():
    import socket

    from benchmarks import procs

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert procs.listener_pids(port) == [os.getpid()]
    assert procs.listener_pids(port) == []  # closed: nobody listens there


def test_a_greenq_case_measures_the_bare_pool_around_each_phase(tmp_path, monkeypatch):
    order = []
    rates = iter([100.0, 50.0, 300.0] * 3)  # bare before, greenq, bare after, for each workload
    _fail_in_start(monkeypatch, tmp_path / "logs", lambda i: None)

    def throughput(case, job, n, keep_alive=False, count_conns=False):
        order.append((case.system, job, keep_alive))
        return {"rate": next(rates), "cpu_ms": 0.1 if case.system == "bare" else 0.3, "conns": 0}

    monkeypatch.setattr(run.Case, "throughput", throughput)
    args = run.parse_args(["--systems", "greenq", "--brokers", "sqlite"])
    test_run = run.Run(args)
    try:
        row = run.measure_case(test_run, "greenq", "sqlite", args)
    finally:
        test_run.close()
    assert "error" not in row, row
    assert order == [(system, job, ka) for job, ka in (("noop", False), ("scrape", False), ("scrape", True))
                     for system in ("bare", "greenq", "bare")]
    assert row["noop_rate"] == 50.0 and row["pair_noop_rate"] == 200.0 and row["pair_scrape_ka_cpu_ms"] == 0.1


def test_send_rounds_alternate_which_producer_goes_first(tmp_path, monkeypatch):
    produced = []
    _fail_in_start(monkeypatch, tmp_path / "logs", lambda i: None)
    monkeypatch.setattr(run.Case, "produce", lambda case, *a, **k: produced.append((case.system, a[0])) or {
        "one_by_one": 10.0})
    args = run.parse_args(["--systems", "greenq,dramatiq", "--brokers", "sqlite", "--send-rounds", "3"])
    test_run = run.Run(args)
    try:
        rounds = run.measure_send_rounds(test_run, "sqlite", args)
    finally:
        test_run.close()
    assert produced == [("greenq", "sends"), ("dramatiq", "sends"), ("dramatiq", "sends"), ("greenq", "sends"),
                        ("greenq", "sends"), ("dramatiq", "sends")]
    assert len(rounds) == 3 and rounds[0] == {"greenq": {"one_by_one": 10.0}, "dramatiq": {"one_by_one": 10.0}}


def test_rabbitmq_send_target_compares_like_with_like():
    rows = [dict(row, rep=1) for row in SAMPLE_ROWS if row["broker"] == "rabbitmq"]
    results = {name: (text, ok) for _, name, text, ok in report.targets(rows)}
    assert results["send() >= dramatiq's (rabbitmq, both with publisher confirms)"] == ("1.12x (900 vs 800/s)", True)
    assert results["send() >= dramatiq's (rabbitmq, both without publisher confirms)"] == (
        "1.12x (9000 vs 8000/s)", True)
    assert not any(name == "send() >= dramatiq's (rabbitmq)" for name in results)  # defaults vs defaults: unfair
    # a run saved before the confirm columns existed still reads, labelled with how the defaults differ
    for row in rows:
        for key in ("enqueue_one_confirmed", "enqueue_one_unconfirmed"):
            row.pop(key)
    names = [name for _, name, _, _ in report.targets(rows) if name.startswith("send()")]
    assert names == ["send() >= dramatiq's (rabbitmq, defaults: greenq confirms, dramatiq does not)"]
