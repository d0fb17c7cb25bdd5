"""Run every workload for each system and broker, print a table, write JSON/CSV/PNG.

    python -m benchmarks --n 2000 --systems greenq,dramatiq,celery,bare --brokers redis,rabbitmq,sqlite

Cases: greenq (``greenq-gevent``) on redis, rabbitmq and sqlite; Dramatiq
(``dramatiq-gevent``) on redis and rabbitmq; Celery (``-P gevent``) on redis;
and the bare gevent pool (no queue), the ceiling. Peers run from their own
virtualenv (``benchmarks/.venv-peers``, created by ``benchmarks.peers`` on
first use with ``--install-peers``; without it, peers are skipped when the
virtualenv is missing). greenq and the bare pool run from
``benchmarks/.venv-greenq`` (greenq's dependencies at the peers' versions,
greenq from the working tree) when it exists, so every system runs on the same
interpreter set-up; else on this interpreter, with a note.

Per case: start the workers (``-p`` processes x ``-t`` greenlets), measure
idle pickup latency, then for noop, scrape and scrape with a keep-alive
Session: enqueue N gated jobs, let the workers prefetch them and block at the
gate, read the workers' CPU, open the gate, and time until the N-th job ends.
Then the peak RSS of the largest worker process, the broker connections seen
during scrape, the enqueue rates from one producer process (on RabbitMQ also with publisher
confirms on and off for both systems, whatever their defaults), and a second
short scrape at ``--small-threads`` to show whether connections grow with ``-t``.

Paired measurements, for the ratio targets. This machine's speed drifts by
20-30% from minute to minute, more than the differences the targets are about,
so the ratios are not taken between cases minutes apart: each queue's case runs
a bare pool beside its workers and measures it just before and after each
throughput phase (``--no-pair-bare`` turns that off), and after each
repetition greenq's and Dramatiq's producers alternate for ``--send-rounds``
rounds per broker (a row of system ``sends``).

A case that fails for any reason becomes a row with an ``error`` note and the
run goes on; whatever stops the run, the rows measured so far are written.

Isolation on shared servers: greenq's Redis keys sit under a per-run
namespace in db 0; Dramatiq and Celery use Redis db 15 (``--peer-redis-db``)
with per-run names, and that db is flushed at the end of a run that used it;
RabbitMQ work happens in a per-run vhost that is created and deleted. Every
process started runs in its own process group and is killed in ``finally``.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

from . import peers, procs, report
from .redis_keys import drop_keys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REDIS = "redis://127.0.0.1:6379"
REDIS_PORT, AMQP_PORT = 6379, 5672
CASES = [
    ("bare", "none"),
    ("greenq", "redis"), ("greenq", "rabbitmq"), ("greenq", "sqlite"),
    ("dramatiq", "redis"), ("dramatiq", "rabbitmq"),
    ("celery", "redis"),
]


# Seconds between two counts of the workers' broker connections while a scrape runs. A count
# reads /proc/net/tcp, which after a few scrapes holds thousands of TIME_WAIT rows: 20-80 ms of
# CPU each time, taken from the two cores the workers use. Counted every 20 ms in every phase,
# that cost every queue 0.3-0.4 ms per job and the bare pool (no broker to count) nothing. So
# connections are counted in the scrape phase only: at the gate and after the last job, outside
# the timed part (a pool that grew keeps its connections), and once a second in between.
CONNS_EVERY = 1.0


class BenchError(Exception):
    """A case could not be measured (a worker died, a phase timed out...)."""


def log(text):
    print(text, file=sys.stderr, flush=True)


# --- the run: shared server, isolation -----------------------------------------------

def start_page_server():
    """Start ``benchmarks.server`` (the 50 ms page) in a process group of its own; return it and the page's URL.

    The caller stops it with ``procs.stop_group``.
    """
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.server", "--delay-ms", "50"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True, env=_env({}))
    line = server.stdout.readline().split()
    if len(line) != 2 or line[0] != "port":
        procs.stop_group(server)
        raise BenchError(f"the HTTP server did not start (said {line!r})")
    return server, f"http://127.0.0.1:{line[1]}/page"


class Run:
    def __init__(self, args):
        self.args = args
        self.id = uuid.uuid4().hex[:8]
        self.dir = tempfile.mkdtemp(prefix=f"greenq-bench-{self.id}-")
        self.vhost = None
        self.server = None
        self.http_url = None
        self.used_peer_redis = False
        # greenq and the bare pool run on .venv-greenq when it exists (same set-up as the peers), else on this one
        self.greenq_python = peers.GREENQ.python() if peers.GREENQ.available() else sys.executable

    def start_server(self):
        self.server, self.http_url = start_page_server()

    def vhost_url(self):
        if self.vhost is None:
            name = f"greenq-bench-{self.id}"
            subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True, timeout=60)
            self.vhost = name  # from here on close() deletes it, even if the next step fails
            subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                           check=True, capture_output=True, timeout=60)
        return f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"

    def close(self, keep_logs=False):
        """Stop the page server, delete the vhost, flush the peers' db; each step runs even if one fails."""
        def step(what, fn):
            try:
                fn()
            except Exception as e:
                log(f"cleanup: {what} failed: {type(e).__name__}: {e}")

        if self.server is not None:
            step("stopping the page server", lambda: procs.stop_group(self.server))
        if self.vhost is not None:
            step(f"deleting vhost {self.vhost}", self._delete_vhost)
        if self.used_peer_redis:
            import redis

            step(f"flushing Redis db {self.args.peer_redis_db}",
                 lambda: redis.Redis.from_url(f"{REDIS}/{self.args.peer_redis_db}").flushdb())
        if not keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _delete_vhost(self):
        done = subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise BenchError(done.stderr.strip()[-300:] or f"rabbitmqctl exited with {done.returncode}")


def _env(extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


# --- one case: a system on a broker ------------------------------------------------------

class Case:
    def __init__(self, run, system, broker, threads, tag=""):
        self.run = run
        self.system = system
        self.broker = broker
        self.threads = threads
        self.processes = run.args.processes
        self.dir = os.path.join(run.dir, f"{system}-{broker}{tag}-{uuid.uuid4().hex[:6]}")
        os.makedirs(self.dir)
        self.queue = f"bench-{system}-{run.id}"
        self.namespace = f"{system}-bench-{os.path.basename(self.dir)}"
        self.procs = []
        self.phase = 0
        self.url = self._broker_url()

    def _broker_url(self):
        if self.broker == "redis":
            if self.system == "greenq":
                return f"{REDIS}/0"
            self.run.used_peer_redis = True
            return f"{REDIS}/{self.run.args.peer_redis_db}"
        if self.broker == "rabbitmq":
            return self.run.vhost_url()
        if self.broker == "sqlite":
            return f"sqlite:///{os.path.join(self.dir, 'broker.sqlite3')}"
        return ""

    @property
    def port(self):
        return {"redis": REDIS_PORT, "rabbitmq": AMQP_PORT}.get(self.broker)

    def env(self):
        return _env({"BENCH_RUN_DIR": self.dir, "BENCH_BROKER_URL": self.url, "BENCH_QUEUE": self.queue,
                     "BENCH_NAMESPACE": self.namespace, "BENCH_HTTP_URL": self.run.http_url,
                     "BENCH_WORKER": "1"})

    def python(self):
        if self.system in ("greenq", "bare"):
            return self.run.greenq_python
        return peers.PEERS.python()

    def worker_commands(self):
        p, t = str(self.processes), str(self.threads)
        if self.system == "greenq":  # the working tree's launcher: it patches first, then imports greenq from ROOT
            return [[self.python(), os.path.join(ROOT, "bin", "greenq-gevent"), "benchmarks.workloads.greenq_app",
                     "-p", p, "-t", t, "-Q", self.queue, "--quiet-messages", "--path", ROOT]]
        if self.system == "dramatiq":
            return [[peers.PEERS.bin_path("dramatiq-gevent"), "benchmarks.workloads.dramatiq_app", "-p", p, "-t", t,
                     "-Q", self.queue, "--path", ROOT]]
        if self.system == "celery":
            return [[peers.PEERS.bin_path("celery"), "-A", "benchmarks.workloads.celery_app", "worker", "-P", "gevent",
                     "-c", t, "-Q", self.queue, "-l", "warning", "-n", f"bench{i}-{self.run.id}@%h",
                     "--without-heartbeat", "--without-gossip", "--without-mingle"]
                    for i in range(self.processes)]
        return [[self.python(), "-m", "benchmarks.workloads.bare", "-t", t] for _ in range(self.processes)]

    # --- processes ---------------------------------------------------------------------

    def start(self):
        for i, cmd in enumerate(self.worker_commands()):
            env = self.env()
            env["BENCH_BARE_INDEX"] = str(i)
            out = open(os.path.join(self.dir, f"worker-{i}.log"), "w")
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True))
            out.close()
        deadline = time.monotonic() + 90
        while len(self.stats()) < self.processes:
            self._check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label}: workers did not come up within 90 s; see {self.dir}")
            time.sleep(0.05)
        time.sleep(0.5)  # consumers connect after the module import that started the probe

    def stop(self):
        for proc in self.procs:
            procs.stop_group(proc)

    def _check_alive(self):
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = open(os.path.join(self.dir, f"worker-{i}.log")).read()[-2000:]
                raise BenchError(f"{self.label}: a worker command exited with {proc.returncode}:\n{tail}")

    def pids(self):
        return procs.tree([p.pid for p in self.procs])

    @property
    def label(self):
        return f"{self.system}/{self.broker}"

    # --- what the workers report -------------------------------------------------------------

    def stats(self):
        found = []
        for name in os.listdir(self.dir):
            if name.startswith("stats-") and name.endswith(".json"):
                try:
                    with open(os.path.join(self.dir, name)) as f:
                        found.append(json.load(f))
                except (OSError, ValueError):
                    continue
        return found

    def produce(self, *args, timeout=300):
        """Run ``benchmarks.producer`` with ``args``; its JSON result."""
        done = self.run_producer(*args, timeout=timeout)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def run_producer(self, *args, timeout=300, wrapper=()):
        """Run ``benchmarks.producer`` with ``args`` under ``wrapper`` (a command prefix); the finished process."""
        cmd = [*wrapper, self.python(), "-m", "benchmarks.producer", self.system, *map(str, args)]
        done = subprocess.run(cmd, cwd=ROOT, env=_env({**self.env(), "BENCH_WORKER": ""}), capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise BenchError(f"{self.label}: producer {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
        return done

    def _load(self, job, n, keep_alive):
        if self.system == "bare":
            base, extra = divmod(n, self.processes)
            for i in range(self.processes):
                args = [self.phase, True] if keep_alive else [self.phase]
                order = {"job": job, "args": args, "count": base + (1 if i < extra else 0)}
                path = os.path.join(self.dir, f"order-{i}-{self.phase}.json")
                with open(path + ".tmp", "w") as f:
                    json.dump(order, f)
                os.replace(path + ".tmp", path)
            return
        self.produce("load", job, "--phase", self.phase, "--n", n, *(["--keep-alive"] if keep_alive else []))

    def _release(self):
        path = os.path.join(self.dir, "release")
        with open(path + ".tmp", "w") as f:
            f.write(str(self.phase))
        os.replace(path + ".tmp", path)

    def throughput(self, job, n, keep_alive=False, count_conns=False):
        """Jobs per second and worker CPU ms per job, from the gate's opening to the N-th job's end.

        ``count_conns``: also the most broker connections the workers held (0 when not counted).
        """
        self.phase += 1
        self._load(job, n, keep_alive)
        # wait until the workers have prefetched and blocked at the gate (the count stops moving)
        deadline = time.monotonic() + 60
        last, since = -1, time.monotonic()
        while True:
            self._check_alive()
            waiting = sum(s["waiting"] for s in self.stats())
            if waiting != last:
                last, since = waiting, time.monotonic()
            elif waiting > 0 and time.monotonic() - since > 0.4:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label}: no job reached the gate within 60 s (phase {self.phase})")
            time.sleep(0.02)
        pids = self.pids()
        count_conns = count_conns and self.port is not None
        conns = procs.broker_connections(pids, self.port) if count_conns else 0
        servers = procs.listener_pids(self.port) if self.port else []
        cpu0, server0 = procs.cpu_seconds(pids), procs.cpu_seconds(servers)
        start = time.time()
        self._release()
        key = str(self.phase)
        deadline = time.monotonic() + max(120, n / 20)
        next_count = time.monotonic() + CONNS_EVERY
        while True:
            stats = self.stats()
            done = sum(s["phases"].get(key, [0])[0] for s in stats)
            if done >= n:
                break
            if count_conns and time.monotonic() >= next_count:
                conns = max(conns, procs.broker_connections(pids, self.port))
                next_count = time.monotonic() + CONNS_EVERY
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label}: {job} finished {done}/{n} jobs before the deadline")
            self._check_alive()
            time.sleep(0.01)
        cpu1, server1 = procs.cpu_seconds(pids), procs.cpu_seconds(servers)
        if count_conns:
            conns = max(conns, procs.broker_connections(pids, self.port))
        end = max(s["phases"][key][2] for s in stats if key in s["phases"])
        return {"rate": n / max(1e-6, end - start), "cpu_ms": (cpu1 - cpu0) * 1000 / n, "conns": conns,
                "server_cpu_ms": (server1 - server0) * 1000 / n if servers else None}

    def latency(self, samples, spacing):
        self.produce("latency", "--n", samples, "--spacing", spacing)
        deadline = time.monotonic() + 30
        while True:
            values = [v for s in self.stats() for v in s["latency"]]
            if len(values) >= samples:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label}: only {len(values)}/{samples} latency jobs ran within 30 s")
            time.sleep(0.02)
        values.sort()
        return {"p50": statistics.median(values), "p99": values[min(len(values) - 1, int(0.99 * len(values)))]}

    def peak_rss_mib(self):
        return max((procs.peak_rss_kib(pid) for pid in self.pids()), default=0) / 1024

    def cleanup(self):
        """Drop what the case left on a shared server (RabbitMQ's vhost goes at the end of the run)."""
        if self.broker == "redis" and self.system == "greenq":
            import redis

            drop_keys(redis.Redis.from_url(self.url), "{%s:*" % self.namespace, "%s*" % self.namespace)


# --- the whole run ------------------------------------------------------------------------

def failure_note(exc):
    """One line saying why a case failed: a BenchError's first line, or the exception's type and text."""
    if isinstance(exc, BenchError):
        return str(exc).splitlines()[0]
    if isinstance(exc, subprocess.TimeoutExpired):
        cmd = exc.cmd if isinstance(exc.cmd, (list, tuple)) else [exc.cmd]
        shown = " ".join([os.path.basename(str(cmd[0]))] + [str(a) for a in cmd[1:]])
        return f"TimeoutExpired: `{shown}` did not finish within {exc.timeout:g} s"
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:300]


def _fail(exc, where=""):
    note = failure_note(exc)
    if isinstance(exc, BenchError):
        log(f"   FAILED{where}: {exc}")
    else:  # not a measuring failure the benchmark foresaw: keep the traceback in the log
        log(f"   FAILED{where} with an unexpected error:\n{traceback.format_exc().rstrip()}")
    return note


def _tidy(case):
    """Stop a case's processes and drop its keys; a failure here is logged, never raised."""
    for step in (case.stop, case.cleanup):
        try:
            step()
        except Exception as e:
            log(f"   {case.label}: {step.__name__} failed: {failure_note(e)}")


def _enqueue(case, args, row):
    enq = case.produce("enqueue", "--n", args.enqueue_n)
    row["enqueue_one"] = enq["one_by_one"]
    row["enqueue_batch"] = enq["batch"]
    text = f"   {'enqueue':<10} {enq['one_by_one']:8.0f} send()/s one by one"
    if enq.get("batch"):
        text += f", {enq['batch']:.0f}/s in batches"
    if "confirmed" in enq:
        row["enqueue_one_confirmed"] = enq["confirmed"]
        row["enqueue_one_unconfirmed"] = enq["unconfirmed"]
        row["enqueue_default_confirms"] = enq["default_confirms"]
        text += (f"; publisher confirms on {enq['confirmed']:.0f}/s, off {enq['unconfirmed']:.0f}/s"
                 f" (default: {'on' if enq['default_confirms'] else 'off'})")
    log(text)


def measure_case(run, system, broker, args):
    """One row for a system on a broker; a failure anywhere marks the row failed (with a note), never raises.

    Unless ``--no-pair-bare``, a queue's case also starts a bare pool beside its
    workers, idle while the queue runs, and measures it just before and just after each
    of the queue's throughput phases: ``pair_<job>_rate`` and ``pair_<job>_cpu_ms`` are
    the means of those two, seconds apart from the queue's own figure, not minutes.
    """
    row = {"system": system, "broker": broker}
    log(f"== {system}/{broker}: {args.processes} x {args.threads} greenlets")
    case = pair = None
    try:
        case = Case(run, system, broker, args.threads)
        case.start()
        if system != "bare" and args.pair_bare:
            pair = Case(run, "bare", "none", args.threads, tag="-pair")
            pair.start()
        if system != "bare":
            lat = case.latency(args.latency_samples, args.latency_spacing)
            row.update(latency_p50_ms=lat["p50"], latency_p99_ms=lat["p99"])
        for name, job, keep_alive in (("noop", "noop", False), ("scrape", "scrape", False),
                                      ("scrape_ka", "scrape", True)):
            n = args.noop_n if name == "noop" else args.n
            around = [pair.throughput(job, n, keep_alive)] if pair is not None else []
            result = case.throughput(job, n, keep_alive, count_conns=name == "scrape")
            row[f"{name}_rate"] = result["rate"]
            row[f"{name}_cpu_ms"] = result["cpu_ms"]
            server_ms = result.get("server_cpu_ms")  # None: no server of its own (SQLite, the bare pool)
            if server_ms is not None:
                row[f"server_cpu_{name}_ms"] = server_ms
            if name == "scrape":
                row["conns"] = result["conns"]
            text = (f"   {name:<10} {result['rate']:8.0f} jobs/s  {result['cpu_ms']:.3f} ms CPU/job"
                    + (f" (+{server_ms:.3f} ms in the broker's server)" if server_ms is not None else "")
                    + (f"  {result['conns']} broker conns" if case.port and name == "scrape" else ""))
            if pair is not None:
                around.append(pair.throughput(job, n, keep_alive))
                row[f"pair_{name}_rate"] = statistics.mean(r["rate"] for r in around)
                row[f"pair_{name}_cpu_ms"] = statistics.mean(r["cpu_ms"] for r in around)
                text += (f"   (bare pool around it: {around[0]['rate']:.0f} and {around[1]['rate']:.0f} jobs/s,"
                         f" {row[f'pair_{name}_cpu_ms']:.3f} ms CPU/job)")
            log(text)
        row["rss_mib"] = case.peak_rss_mib()
        if system != "bare":
            _enqueue(case, args, row)
    except Exception as e:
        row["error"] = _fail(e)
    finally:
        for started in (pair, case):
            if started is not None:
                _tidy(started)
    if "error" not in row and case.port and args.small_threads:
        small = None
        try:
            small = Case(run, system, broker, args.small_threads, tag=f"@t{args.small_threads}")
            small.start()
            result = small.throughput("scrape", max(50, args.n // 4), count_conns=True)
            row["conns_small_t"] = result["conns"]
        except Exception as e:
            row["conns_small_t_error"] = _fail(e, where=f" at -t {args.small_threads}")
        finally:
            if small is not None:
                _tidy(small)
    return row


def measure_send_rounds(run, broker, args):
    """greenq's and Dramatiq's one-by-one ``send()`` on one broker, their producers alternating.

    ``--send-rounds`` rounds, each one producer run of each system back to back
    (greenq first in odd rounds, Dramatiq first in even ones, so a drift of the
    machine favours neither); the send() and batch targets take the median of the
    rounds' ratios. Returns ``[{"greenq": {...}, "dramatiq": {...}}]`` (the producer's
    ``sends`` results), or None when a producer failed (the failure is logged).
    """
    log(f"== send() rounds on {broker}: greenq and dramatiq alternating, {args.send_rounds} rounds")
    cases = {}
    try:
        cases = {system: Case(run, system, broker, args.threads, tag="-sends") for system in ("greenq", "dramatiq")}
        rounds = []
        for i in range(args.send_rounds):
            order = ("greenq", "dramatiq") if i % 2 == 0 else ("dramatiq", "greenq")
            rounds.append({system: cases[system].produce("sends", "--n", args.enqueue_n) for system in order})
            g, d = rounds[-1]["greenq"], rounds[-1]["dramatiq"]
            text = f"   round {i + 1}: send()/s greenq {g['one_by_one']:.0f}, dramatiq {d['one_by_one']:.0f}"
            if g.get("batch"):
                text += f" (greenq's batch API {g['batch']:.0f}/s)"
            if "confirmed" in g and "confirmed" in d:
                text += (f"; with confirms {g['confirmed']:.0f} vs {d['confirmed']:.0f},"
                         f" without {g['unconfirmed']:.0f} vs {d['unconfirmed']:.0f}")
            log(text)
        return rounds
    except Exception as e:
        _fail(e, where=f" (send() rounds on {broker})")
        return None
    finally:
        for case in cases.values():
            _tidy(case)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="jobs per throughput workload [2000]")
    parser.add_argument("--noop-n", type=int, default=None, help="jobs for the noop workload [5 x n]")
    parser.add_argument("--systems", default="bare,greenq,dramatiq,celery",
                        help="comma-separated: bare, greenq, dramatiq, celery [all]")
    parser.add_argument("--brokers", default="redis,rabbitmq,sqlite", help="comma-separated [redis,rabbitmq,sqlite]")
    parser.add_argument("-p", "--processes", type=int, default=2, help="worker processes [2]")
    parser.add_argument("-t", "--threads", type=int, default=250, help="greenlets per process [250]")
    parser.add_argument("--small-threads", type=int, default=25,
                        help="also run a short scrape at this -t to compare connection counts (0: skip) [25]")
    parser.add_argument("--enqueue-n", type=int, default=None, help="messages for the enqueue workload [n]")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--latency-spacing", type=float, default=20.0, help="ms between latency messages [20]")
    parser.add_argument("--repeat", type=int, default=1, help="measure every case this many times [1]")
    parser.add_argument("--no-pair-bare", dest="pair_bare", action="store_false",
                        help="do not measure a bare pool beside each queue's case (the targets then compare "
                             "with the bare pool's own case, minutes away)")
    parser.add_argument("--send-rounds", type=int, default=3,
                        help="alternating greenq/Dramatiq producer rounds per broker and repetition for the "
                             "send() targets (0: compare the cases' own figures) [3]")
    parser.add_argument("--install-peers", action="store_true",
                        help="create benchmarks/.venv-peers (Dramatiq, Celery) and benchmarks/.venv-greenq "
                             "(greenq's dependencies at the same pins) if missing")
    parser.add_argument("--peer-redis-db", type=int, default=15, help="Redis db for Dramatiq and Celery [15]")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="where results go [benchmarks/results]")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs (the path is printed)")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if args.noop_n is None:
        args.noop_n = 5 * args.n
    if args.enqueue_n is None:
        args.enqueue_n = args.n
    return args


def main(argv=None):
    args = parse_args(argv)
    peer_systems = [s for s in args.systems if s in ("dramatiq", "celery")]
    if peer_systems:
        if args.install_peers:
            peers.PEERS.ensure()
        elif not peers.PEERS.available():
            log(f"Skipping {', '.join(peer_systems)}: {peers.PEERS.path} is missing (add --install-peers).")
            args.systems = [s for s in args.systems if s not in peer_systems]
        if any(s in args.systems for s in peer_systems):
            wrong = peers.PEERS.mismatches()
            if wrong:
                log(f"Note: the peers are not at benchmarks/peers.py's pins ({'; '.join(wrong)}); "
                    "python -m benchmarks.peers installs the pinned versions.")
    ours = [s for s in args.systems if s in ("greenq", "bare")]
    if ours and args.install_peers:
        peers.GREENQ.ensure()
    elif ours and peer_systems and not peers.GREENQ.available():
        log(f"Note: {' and '.join(ours)} run on this interpreter ({sys.executable}), not on {peers.GREENQ.path} "
            "(add --install-peers): their memory then includes whatever this interpreter's site-packages load "
            "that the peers' virtualenv does not.")
    cases = [(s, b) for s, b in CASES if s in args.systems and (b in args.brokers or b == "none")]
    run = Run(args)
    rows = []
    complete = False
    try:
        run.start_server()
        for rep in range(1, args.repeat + 1):
            for system, broker in cases:
                row = measure_case(run, system, broker, args)
                row["rep"] = rep
                rows.append(row)
            if args.send_rounds and "greenq" in args.systems and "dramatiq" in args.systems:
                for broker in ("redis", "rabbitmq"):
                    if broker in args.brokers:
                        rounds = measure_send_rounds(run, broker, args)
                        rows.append({"system": "sends", "broker": broker, "rep": rep, "rounds": rounds,
                                     **({} if rounds else {"error": "a producer failed (see the log)"})})
        complete = True
    finally:  # whatever stopped the run (Ctrl-C, a server that did not start), the rows so far are written
        failed = not complete or any("error" in r for r in rows)
        run.close(keep_logs=args.keep_logs or failed)
        finish(rows, args, run, complete)
    return 1 if failed else 0


def finish(rows, args, run, complete=True):
    """Write the rows (JSON, CSV, PNG) and print the table and the targets."""
    if not rows:
        log("No case finished: nothing to write.")
        return []
    if not complete:
        log(f"The run stopped early: writing the {len(rows)} case(s) measured so far.")
    meta = {"n": args.n, "processes": args.processes, "threads": args.threads, "repeat": args.repeat,
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "peers": peers.versions(),
            "greenq_python": run.greenq_python,
            "run_id": run.id, "complete": complete, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    paths = report.write(rows, meta, args.out, chart=not args.no_chart)
    print(report.table(rows))
    print()
    print(report.targets_text(report.targets(rows)))
    for path in paths:
        print(f"wrote {path}")
    if os.path.isdir(run.dir):
        print(f"logs in {run.dir}")
    return paths
