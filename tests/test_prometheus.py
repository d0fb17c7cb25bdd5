"""The Prometheus middleware: a real ``greenq-gevent -p 2`` run on Redis, scraped over HTTP.

Each metric is checked against work whose outcome is known (and recorded in
Redis by the actors themselves), summed over both worker processes.
"""

import os
import re
import signal
import sys
import urllib.request
import uuid

import pytest

import greenq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli"))

from cli_helpers import app_broker, redis_ns, run_greenq, send, wait_until  # noqa: E402,F401 - fixtures

pytestmark = pytest.mark.timeout(150)

OPS_APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops_apps")
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(2))))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples, name, actor, queue="default", **extra):
    labels = tuple(sorted({"actor_name": actor, "queue_name": queue, **extra}.items()))
    return samples.get((name, labels), 0.0)


def listening_addresses(port):
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                if len(address) == 8:
                    found.append(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.append(address)
    return found


def free_port():
    import socket

    for _ in range(50):
        port = 16000 + uuid.uuid4().int % 1000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 16000-16999")


@pytest.fixture(params=["gevent"])
def prom_app(request, run_greenq, redis_ns, tmp_path):
    ns, client = redis_ns
    port = free_port()
    env = {"TEST_NS": ns, "greenq_prom_port": str(port), "greenq_prom_db": str(tmp_path / "prom")}
    proc = run_greenq("promapp", "-p", "2", "-t", "2", mode=request.param, cwd=OPS_APPS, env=env)
    proc.ready(2)
    proc.wait_for(r"Serving Prometheus metrics on http://127\.0\.0\.1:%d/metrics" % port)
    broker = app_broker(ns)
    yield proc, broker, client, ns, port, tmp_path / "prom"
    broker.close()


@pytest.mark.parametrize("prom_app", ["gevent", "threads"], indirect=True)
def test_metrics_of_a_two_process_run_match_the_work_done(prom_app):
    proc, broker, client, ns, port, prom_dir = prom_app
    assert listening_addresses(port) == ["127.0.0.1"]  # loopback unless told otherwise

    # In progress, summed over both processes: each runs at most 2 (-t 2) and buffers 1,
    # so 4 running at once means 2 in each.
    for i in range(6):
        send(broker, "hold", i)
    wait_until(lambda: client.llen(f"{ns}:held") >= 4, what="4 holds running")
    assert len(set(client.lrange(f"{ns}:held", 0, -1))) == 2
    assert value(scrape(port), "greenq_messages_inprogress", "hold") == 4
    client.rpush(f"{ns}:release", *([1] * 6))
    wait_until(lambda: value(scrape(port), "greenq_messages_total", "hold") == 6, what="6 holds counted")

    for i in range(20):
        send(broker, "ok", i)
    for name in ("a", "b", "c"):
        send(broker, "flaky", name)
    for name in ("x", "y"):
        send(broker, "doomed", name)
    for _ in range(3):
        send(broker, "nap", 300, queue_name="slowq")
    send(broker, "defer", 120)

    wait_until(lambda: client.llen(f"{ns}:ok") == 20 and client.llen(f"{ns}:flaky-done") == 3
               and client.llen(f"{ns}:nap") == 3 and client.llen(f"{ns}:deferred") == 1
               and broker.queue_counts("default")["dead"] == 2, what="the work to be done")

    def settled(samples):
        """The scrape once every delivery's samples are in it.

        A delivery's gauge, histogram and counter live in three files per process,
        and one scrape reads them one after another: a counter can already show a
        delivery whose gauge or histogram sample the same scrape read too early.
        """
        counted = (value(samples, "greenq_message_rejects_total", "doomed") == 2
                   and value(samples, "greenq_messages_total", "nap", "slowq") == 3
                   and value(samples, "greenq_messages_total", "ok") == 20)
        idle = (all(value(samples, "greenq_messages_inprogress", actor) == 0
                    for actor in ("ok", "flaky", "doomed", "hold"))
                and value(samples, "greenq_messages_inprogress", "nap", "slowq") == 0)
        observed = (value(samples, "greenq_message_duration_milliseconds_count", "ok") == 20
                    and value(samples, "greenq_message_duration_milliseconds_count", "doomed") == 4
                    and value(samples, "greenq_message_duration_milliseconds_count", "nap", "slowq") == 3)
        return samples if counted and idle and observed else None

    samples = wait_until(lambda: settled(scrape(port)), what="the metrics to settle (all counted, none in progress)")

    # Processed: every delivery once (retries deliver again).
    assert value(samples, "greenq_messages_total", "ok") == 20
    assert value(samples, "greenq_messages_total", "flaky") == 6
    assert value(samples, "greenq_messages_total", "doomed") == 4
    assert value(samples, "greenq_messages_total", "defer") == 1
    # Errors: each delivery that raised.
    assert value(samples, "greenq_message_errors_total", "ok") == 0
    assert value(samples, "greenq_message_errors_total", "flaky") == 3
    assert value(samples, "greenq_message_errors_total", "doomed") == 4
    # Retries scheduled, and dead letters.
    assert value(samples, "greenq_message_retries_total", "flaky") == 3
    assert value(samples, "greenq_message_retries_total", "doomed") == 2
    assert value(samples, "greenq_message_rejects_total", "doomed") == 2
    assert value(samples, "greenq_message_rejects_total", "flaky") == 0
    # Nothing running now; the deferred ok(-1) is not due for two minutes.
    for actor in ("ok", "flaky", "doomed", "hold"):
        assert value(samples, "greenq_messages_inprogress", actor) == 0
    assert value(samples, "greenq_messages_inprogress", "nap", "slowq") == 0
    assert value(samples, "greenq_delayed_messages_inprogress", "ok") == 1
    assert broker.queue_counts("default")["delayed"] == 1
    # Durations: one observation per delivery; naps take at least 300 ms each.
    assert value(samples, "greenq_message_duration_milliseconds_count", "ok") == 20
    assert value(samples, "greenq_message_duration_milliseconds_count", "doomed") == 4
    assert value(samples, "greenq_message_duration_milliseconds_count", "nap", "slowq") == 3
    assert value(samples, "greenq_message_duration_milliseconds_sum", "nap", "slowq") >= 900
    assert value(samples, "greenq_message_duration_milliseconds_bucket", "nap", "slowq", le="250.0") == 0
    assert value(samples, "greenq_message_duration_milliseconds_bucket", "nap", "slowq", le="+Inf") == 3
    # Both processes wrote their own samples into the directory greenq managed.
    pids = {int(m.group(1)) for m in (re.match(r"counter_(\d+)\.db$", f) for f in os.listdir(prom_dir)) if m}
    assert len(pids) == 2

    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_a_killed_worker_leaves_the_gauges_and_another_takes_the_exporter_over(prom_app):
    proc, broker, client, ns, port, prom_dir = prom_app
    for i in range(6):
        send(broker, "hold", i)
    wait_until(lambda: client.llen(f"{ns}:held") >= 4, what="4 holds running")
    assert value(scrape(port), "greenq_messages_inprogress", "hold") == 4
    serving = int(re.search(r"\[PID (\d+)\]", proc.wait_for("Serving Prometheus metrics")[0]).group(1))
    os.kill(serving, signal.SIGKILL)
    proc.wait_for(r"was killed by SIGKILL")
    # Another worker binds the port within a second or so, and the dead one's 2 running holds no
    # longer count (its redelivered holds may already run in its replacement: those count).
    wait_until(lambda: _try_scrape(port), what="a new exporter")
    wait_until(lambda: value(_try_scrape(port) or {}, "greenq_messages_inprogress", "hold")
               == client.llen(f"{ns}:held") - 2, what="the dead worker's gauges to be dropped")
    assert proc.wait_for("Serving Prometheus metrics", count=2)
    client.rpush(f"{ns}:release", *([1] * 10))
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def _try_scrape(port):
    try:
        return scrape(port)
    except OSError:
        return None


def test_middleware_defaults_and_no_server_outside_the_command(monkeypatch):
    from greenq.brokers.stub import StubBroker
    from greenq.middleware import Prometheus

    for name in ("greenq_prom_host", "greenq_prom_port", "GREENQ_PROM_HOST", "GREENQ_PROM_PORT",
                 "GREENQ_PROMETHEUS_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    middleware = Prometheus()
    assert (middleware.host, middleware.port) == ("127.0.0.1", 9191)
    monkeypatch.setenv("greenq_prom_host", "0.0.0.0")
    monkeypatch.setenv("greenq_prom_port", "16555")
    assert (Prometheus().host, Prometheus().port) == ("0.0.0.0", 16555)

    broker = StubBroker()
    broker.add_middleware(middleware)
    broker.emit_after("process_boot")
    assert middleware._exporter is None  # a Worker in your own process serves nothing by itself
    broker.emit_before("process_stop")
    broker.close()


def test_a_metrics_file_caught_before_it_is_sized_does_not_fail_the_scrape(tmp_path, monkeypatch):
    """prometheus_client creates a worker's file and sizes it a moment later; a scrape in between still answers."""
    import subprocess

    import prometheus_client

    from greenq.middleware.prometheus import _Exporter

    code = ("import prometheus_client\n"
            "prometheus_client.Counter('greenq_probe_total', 'probe').inc(3)\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (tmp_path / "counter_999999.db").write_bytes(b"")  # another worker's, created but not sized yet
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    registry = _Exporter(prometheus_client, "127.0.0.1", 0).registry()
    text = prometheus_client.generate_latest(registry).decode()
    assert "greenq_probe_total 3.0" in text


def test_greenq_imports_without_prometheus_client():
    import subprocess

    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "import greenq, greenq.middleware\n"
            "from greenq.middleware import Prometheus\n"
            "try:\n    Prometheus()\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(greenq.__file__)))
    assert out.returncode == 0, out.stderr
    assert "pip install 'greenq[prometheus]'" in out.stdout


def test_the_grafana_dashboard_uses_only_exported_metrics_and_covers_them():
    import json

    path = os.path.join(os.path.dirname(OPS_APPS), "..", "contrib", "grafana", "greenq-dashboard.json")
    with open(path) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"greenq_\w+", e)}
    exported = {"greenq_messages_total", "greenq_message_errors_total", "greenq_message_retries_total",
                "greenq_message_rejects_total", "greenq_messages_inprogress", "greenq_delayed_messages_inprogress",
                "greenq_message_duration_milliseconds"}
    assert used == exported
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for words in ("Throughput", "Errors", "In progress", "p95", "p99"):
        assert words in titles
    assert any("histogram_quantile(0.95" in e and "actor_name" in e for e in exprs)
