"""``greenq queues``, ``greenq dead list|requeue|purge`` and ``greenq enqueue`` against real
Redis, RabbitMQ and SQLite, run as the real command in a subprocess.

Each test works on a queue (and, on Redis, a namespace) of its own, and
deletes it afterwards; the command gets its broker from GREENQ_BROKER_URL.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import RABBITMQ_URL, REDIS_URL, require_server
from greenq.message import Message

pytestmark = pytest.mark.timeout(180)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS_APPS = os.path.join(ROOT, "tests", "ops_apps")
GREENQ = [sys.executable, os.path.join(ROOT, "bin", "greenq")]
BROKERS = ["redis", "sqlite", "rabbitmq"]


class Setup:
    """A broker for the test's own checks, the URL the command uses, and a queue of its own."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.queue = f"ops-{uuid.uuid4().hex[:10]}"
        if kind == "redis":
            require_server("Redis", "127.0.0.1", 6379)
            from greenq.brokers.redis import RedisBroker

            self.ns = f"greenq-ops-{uuid.uuid4().hex[:8]}"
            self.url = f"{REDIS_URL}?namespace={self.ns}"
            self.broker = RedisBroker(url=REDIS_URL, namespace=self.ns)
        elif kind == "sqlite":
            from greenq.brokers.sqlite import SqliteBroker

            path = tmp_path / "ops.sqlite3"
            self.url = f"sqlite:///{path}"
            self.broker = SqliteBroker(path=str(path))
        else:
            require_server("RabbitMQ", "127.0.0.1", 5672)
            from greenq.brokers.rabbitmq import RabbitmqBroker

            self.url = RABBITMQ_URL
            self.broker = RabbitmqBroker(url=RABBITMQ_URL)
        self.broker.declare_queue(self.queue)
        self.env = {"GREENQ_BROKER_URL": self.url}
        # On RabbitMQ, AMQP cannot list queues: `greenq queues` is told which.
        self.list_args = ["-Q", self.queue] if kind == "rabbitmq" else []

    def close(self):
        if self.kind == "rabbitmq":
            self.broker.delete_queues()
        else:
            self.broker.flush_all()
        self.broker.close()

    def message(self, actor, *args):
        return Message(queue_name=self.queue, actor_name=actor, args=args, kwargs={}, options={})

    def make_dead(self, count, actor="boom"):
        """Enqueue ``count`` messages and dead-letter them as a worker would; return their ids."""
        sent = [self.broker.enqueue(self.message(actor, i, "x")) for i in range(count)]
        consumer = self.broker.consume(self.queue, prefetch=count, timeout=100)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            got += consumer.fetch(count - len(got), 1.0)
        assert len(got) == count
        for proxy in got:
            proxy.options["failure"] = "ValueError: boom on purpose"
            proxy.options["failed_at"] = int(time.time() * 1000) - 90_000
        consumer.nack(got)
        consumer.close()
        return [m.message_id for m in sent]

    def counts(self):
        return self.broker.queue_counts(self.queue)


@pytest.fixture(params=BROKERS)
def setup(request, tmp_path):
    s = Setup(request.param, tmp_path)
    yield s
    s.close()


def greenq(*args, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.pop("GREENQ_BROKER_URL", None)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, full_env.get("PYTHONPATH")) if p)
    full_env.update(env or {})
    out = subprocess.run(GREENQ + list(args), env=full_env, cwd=cwd or OPS_APPS, capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert "guest:guest" not in out.stdout + out.stderr  # credentials never appear
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_queues_table_and_json(setup):
    setup.make_dead(2)
    setup.broker.enqueue(setup.message("later", 1), delay=600_000)
    setup.broker.enqueue(setup.message("now", 1))

    out = greenq("queues", "--json", *setup.list_args, env=setup.env)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)
    assert counts[setup.queue] == {"ready": 1, "delayed": 1, "in_flight": 0, "dead": 2}

    table = greenq("queues", *setup.list_args, env=setup.env)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["QUEUE", "READY", "DELAYED", "IN", "FLIGHT", "DEAD"]
    assert [setup.queue, "1", "1", "0", "2"] in [row.split() for row in rows]


def test_dead_list_requeue_purge(setup):
    ids = setup.make_dead(3)

    listed = greenq("dead", "list", setup.queue, env=setup.env)
    assert listed.returncode == 0, listed.stderr
    for message_id in ids:
        line = next(line for line in listed.stdout.splitlines() if line.startswith(message_id))
        assert "boom" in line and "ValueError: boom on purpose" in line and '"x"' in line
        assert line.split()[-1].startswith("1m")  # failed 90 s ago
    assert "3 dead letter(s)." in listed.stdout
    as_json = json.loads(greenq("dead", "list", setup.queue, "--json", env=setup.env).stdout)
    assert sorted(m["message_id"] for m in as_json) == sorted(ids)  # dead-lettered in one batch: any order
    assert all(m["failure"] == "ValueError: boom on purpose" and m["actor_name"] == "boom" for m in as_json)

    one = greenq("dead", "requeue", setup.queue, "--id", ids[1], env=setup.env)
    assert one.returncode == 0, one.stderr
    assert f"Requeued 1 dead letter(s) of queue {setup.queue!r}." in one.stdout
    assert setup.counts()["dead"] == 2 and setup.counts()["ready"] == 1
    consumer = setup.broker.consume(setup.queue, timeout=100)
    back = consumer.fetch(1, 10.0)
    assert [m.message_id for m in back] == [ids[1]]
    consumer.ack(back)
    consumer.close()

    purged = greenq("dead", "purge", setup.queue, env=setup.env)
    assert purged.returncode == 0, purged.stderr
    assert f"Purged 2 dead letter(s) of queue {setup.queue!r}." in purged.stdout
    assert setup.counts()["dead"] == 0


def test_requeue_all_shows_counts_when_not_a_terminal(setup):
    ids = setup.make_dead(5)
    out = greenq("dead", "requeue", setup.queue, "--all", env=setup.env)
    assert out.returncode == 0, out.stderr
    assert "Requeued 5 dead letter(s)" in out.stdout
    assert "\r" not in out.stdout + out.stderr  # no progress bar redraws into a pipe
    assert setup.counts()["dead"] == 0 and setup.counts()["ready"] == 5
    again = greenq("dead", "list", setup.queue, env=setup.env)
    assert "No dead letters" in again.stdout
    assert len(ids) == 5


def test_enqueue_writes_the_wire_format(setup):
    # Redis keeps no record of an empty queue that no worker consumes: it must be allowed to be new.
    new = ["--new-queue"] if setup.kind == "redis" else []
    out = greenq("enqueue", "add", "--args", "[1, \"two\"]", "--kwargs", "{\"z\": 3}", "-Q", setup.queue, *new,
                 env=setup.env)
    assert out.returncode == 0, out.stderr
    assert f"for actor 'add' on queue {setup.queue!r}" in out.stdout
    consumer = setup.broker.consume(setup.queue, timeout=100)
    got = consumer.fetch(1, 10.0)
    assert len(got) == 1
    assert (got[0].actor_name, got[0].args, dict(got[0].kwargs)) == ("add", (1, "two"), {"z": 3})
    assert got[0].message_id in out.stdout
    consumer.ack(got)
    consumer.close()


@pytest.mark.parametrize("args, error", [
    (["queues", "-Q", "no-such-queue-{u}"], "queue 'no-such-queue-{u}' does not exist"),
    (["dead", "list", "no-such-queue-{u}"], "queue 'no-such-queue-{u}' does not exist"),
    (["dead", "requeue", "no-such-queue-{u}", "--all"], "queue 'no-such-queue-{u}' does not exist"),
    (["dead", "purge", "no-such-queue-{u}"], "queue 'no-such-queue-{u}' does not exist"),
    (["dead", "requeue", "{q}", "--id", "not-a-dead-id"], "not a dead letter of queue '{q}': not-a-dead-id"),
    (["dead", "requeue", "{q}"], "give --id ID (repeatable) or --all"),
    (["enqueue", "add", "--args", "{{\"a\": 1}}", "-Q", "{q}"], "--args must be a JSON list"),
    (["enqueue", "add", "--args", "[1,", "-Q", "{q}"], "--args is not valid JSON"),
    (["enqueue", "add", "--kwargs", "[1]", "-Q", "{q}"], "--kwargs must be a JSON object"),
    (["enqueue", "add", "--args", "[1]", "-Q", "no-such-queue-{u}"], "queue 'no-such-queue-{u}' does not exist"),
])
def test_bad_input_exits_2_and_changes_nothing(setup, args, error):
    ids = setup.make_dead(2)
    setup.broker.enqueue(setup.message("now", 1))
    before = setup.counts()
    u = uuid.uuid4().hex[:6]
    argv = [a.format(q=setup.queue, u=u) for a in args]
    out = greenq(*argv, env=setup.env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("greenq ") and ": error: " in lines[0], lines
    assert error.format(q=setup.queue, u=u) in lines[0]
    assert setup.counts() == before
    assert sorted(m.message_id for m in setup.broker.dead_letters_of(setup.queue)) == sorted(ids)
    if setup.kind == "rabbitmq":  # nothing was created either
        from greenq.cli.ops_broker import queue_exists

        assert not queue_exists(setup.broker, f"no-such-queue-{u}")


def test_no_broker_and_a_missing_sqlite_file_are_errors(tmp_path):
    out = greenq("queues", cwd=str(tmp_path))
    assert out.returncode == 2 and "no broker given" in out.stderr
    missing = tmp_path / "nope.sqlite3"
    out = greenq("queues", "--broker-url", f"sqlite:///{missing}", cwd=str(tmp_path))
    assert out.returncode == 2 and "no SQLite broker file" in out.stderr
    assert not missing.exists() and not (tmp_path / "greenq.sqlite3").exists()


def test_unreachable_broker_exits_3_without_the_password(tmp_path):
    out = greenq("queues", "--broker-url", "redis://:s3cret@127.0.0.1:16998/0", cwd=str(tmp_path))
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "s3cret" not in out.stdout + out.stderr
    assert "127.0.0.1:16998" in out.stderr


def test_a_module_named_like_a_command_runs_with_greenq_run(tmp_path):
    out = greenq("run", "--version")
    assert out.returncode == 0 and out.stdout.strip() == "greenq 0.1.0"
    helped = greenq("--help")
    assert "greenq dead requeue QUEUE" in helped.stdout and "greenq run MODULES" in helped.stdout


# --- with the app and a real worker ------------------------------------------------------------

@pytest.fixture
def worker_app(setup, tmp_path):
    flag = tmp_path / "fail-flag"
    out = tmp_path / "done.txt"
    env = {**setup.env, "TEST_QUEUE": setup.queue, "TEST_FAIL_FLAG": str(flag), "TEST_OUT": str(out),
           "PYTHONPATH": os.pathsep.join([ROOT, OPS_APPS])}
    return env, flag, out


def _start_worker(env):
    full_env = dict(os.environ)
    full_env.update(env)
    return subprocess.Popen(GREENQ + ["opsapp", "-p", "1", "-t", "2"], env=full_env, cwd=OPS_APPS,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)


def test_a_requeued_dead_letter_is_processed_by_a_worker(setup, worker_app):
    env, flag, out = worker_app
    flag.write_text("fail")
    worker = _start_worker(env)
    try:
        bad = greenq("enqueue", "no_such_actor", "--args", "[]", "--app", "opsapp", env=env)
        assert bad.returncode == 2 and "no actor named 'no_such_actor' in the app (its actors: fragile)" in bad.stderr

        sent = greenq("enqueue", "fragile", "--args", "[\"first\"]", "--app", "opsapp", env=env)
        assert sent.returncode == 0, sent.stderr
        assert f"on queue {setup.queue!r}" in sent.stdout  # the actor's queue, from the app
        _wait(lambda: setup.counts()["dead"] == 1, "the failure to be dead-lettered")

        listed = greenq("dead", "list", setup.queue, "--app", "opsapp", env=env)
        assert "fragile" in listed.stdout and "RuntimeError: first fails while the flag file exists" in listed.stdout
        shown = greenq("queues", "--json", "--app", "opsapp", env=env)
        assert json.loads(shown.stdout)[setup.queue]["dead"] == 1

        flag.unlink()
        requeued = greenq("dead", "requeue", setup.queue, "--all", "--app", "opsapp", env=env)
        assert requeued.returncode == 0 and "Requeued 1 dead letter(s)" in requeued.stdout
        _wait(lambda: out.exists() and out.read_text() == "first\n", "the requeued message to be processed")
        assert setup.counts()["dead"] == 0
    finally:
        worker.terminate()
        worker.wait(60)


def test_requeueing_many_shows_a_progress_bar_on_a_terminal(tmp_path):
    import pty

    from greenq.brokers.sqlite import SqliteBroker
    from greenq.cli.ops import REQUEUE_CHUNK

    setup = Setup("sqlite", tmp_path)
    try:
        total = REQUEUE_CHUNK * 2 + 7
        setup.broker.enqueue_many([setup.message("boom", i) for i in range(total)])
        consumer = setup.broker.consume(setup.queue, prefetch=total, timeout=100)
        got = []
        while len(got) < total:
            got += consumer.fetch(total - len(got), 1.0)
        for proxy in got:
            proxy.options["failure"] = "ValueError: boom"
        consumer.nack(got)
        consumer.close()
        assert isinstance(setup.broker, SqliteBroker) and setup.counts()["dead"] == total

        primary, secondary = pty.openpty()
        env = dict(os.environ, GREENQ_BROKER_URL=setup.url, PYTHONPATH=ROOT, COLUMNS="100")
        proc = subprocess.Popen(GREENQ + ["dead", "requeue", setup.queue, "--all"], env=env, cwd=OPS_APPS,
                                stdin=subprocess.DEVNULL, stdout=secondary, stderr=subprocess.PIPE)
        os.close(secondary)
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(120) == 0, proc.stderr.read()
        os.close(primary)
        shown = b"".join(chunks).decode("utf-8", "replace")
        assert "Requeueing dead letters of" in shown and "100%" in shown
        assert f"Requeued {total} dead letter(s)" in shown
        assert setup.counts()["dead"] == 0 and setup.counts()["ready"] == total
    finally:
        setup.close()
