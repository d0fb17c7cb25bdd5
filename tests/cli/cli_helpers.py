"""Fixtures and helpers for the command's tests (no conftest.py here: a second
``conftest`` module on sys.path would shadow tests/conftest.py for other test files).

Run the real ``greenq`` command in a subprocess and wait on its log lines.

Every wait has a deadline and is driven by the lines the process writes to
stderr, never by sleeps. Apps that need a broker shared between processes use
Redis with a namespace of their own (``TEST_NS``), so parallel test runs on the
same server never see each other.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

IN_CI = os.environ.get("CI") == "true"
REDIS_URL = os.environ.get("GREENQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis():
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        if IN_CI:
            pytest.fail("Redis is not answering on 127.0.0.1:6379 (CI requires it)")
        pytest.skip("Redis is not answering on 127.0.0.1:6379")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")
LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[PID (\d+)\] \[([^\]]+)\] \[([^\]]+)\] "
                  r"\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] (.*)$")


def command(mode):
    """argv prefix for ``greenq`` (threads), ``greenq-gevent`` (bin launcher) or the gevent entry point."""
    if mode == "threads":
        return [sys.executable, os.path.join(ROOT, "bin", "greenq")]
    if mode == "gevent":
        return [sys.executable, os.path.join(ROOT, "bin", "greenq-gevent")]
    if mode == "gevent-entry":  # imports greenq before patching, as the setup.py entry point does
        return [sys.executable, "-c", "from greenq.cli.gevent_main import main; main()"]
    raise ValueError(mode)


class Greenq:
    """A running ``greenq`` command whose stderr is collected line by line."""

    def __init__(self, args, *, mode="threads", cwd=APPS, env=None):
        full_env = dict(os.environ)
        full_env.pop("GREENQ_BROKER_URL", None)
        full_env["PYTHONDONTWRITEBYTECODE"] = "1"  # edited modules must be re-read, whatever their mtime
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, full_env.get("PYTHONPATH")) if p)
        full_env.update(env or {})
        self.argv = command(mode) + list(args)
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.lines = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def matching(self, pattern):
        regex = re.compile(pattern)
        with self._cond:
            return [line for line in self.lines if regex.search(line)]

    def wait_for(self, pattern, count=1, timeout=30):
        """Wait until ``count`` lines match ``pattern``; return them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(f"expected {count} line(s) matching {pattern!r} within {timeout}s; "
                                         f"got {len(found)}. Output:\n" + self.output())
                self._cond.wait(min(left, 1.0))

    def ready(self, processes, timeout=30):
        return self.wait_for(r"Worker process is ready for action\.", processes, timeout)

    def output(self):
        with self._cond:
            return "\n".join(self.lines)

    def signal(self, signum):
        os.kill(self.pid, signum)

    def wait(self, timeout=60):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"greenq did not exit within {timeout}s. Output:\n{self.output()}") from None
        self._reader.join(10)
        return code

    def kill(self):
        """Cleanup for a failed test: kill the master and its workers."""
        if self.proc.poll() is None:
            for pid in self.worker_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(10)

    def worker_pids(self):
        pids = set()
        for line in self.matching(r"\[greenq\.WorkerProcess\(\d+\)\]"):
            match = LINE.match(line)
            if match:
                pids.add(int(match.group(1)))
        return pids


@pytest.fixture
def run_greenq():
    started = []

    def start(*args, **kwargs):
        proc = Greenq(args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def redis_ns():
    """A fresh namespace on the shared Redis, for the app (TEST_NS) and the test; removed afterwards."""
    require_redis()
    import redis

    ns = f"greenq-cli-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(REDIS_URL)
    yield ns, client
    keys = list(client.scan_iter(match=f"*{ns}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


#: The heartbeat timeout (ms) of tests/cli/apps/redis_common.py unless TEST_HEARTBEAT_MS says otherwise:
#: a live worker is never taken for dead on a loaded machine, so no message runs twice.
APP_HEARTBEAT_MS = 10000
#: For a test that kills a worker with SIGKILL and waits for its messages to come back.
FAST_TAKEOVER_MS = 3000


@pytest.fixture
def redis_env(redis_ns):
    ns, client = redis_ns
    return {"TEST_NS": ns, "TEST_REDIS_URL": REDIS_URL, "TEST_HEARTBEAT_MS": str(APP_HEARTBEAT_MS)}



def app_broker(ns):
    """The test's own handle on the app's broker, to enqueue and count (the apps' heartbeat timeout:
    it only matters to a broker that consumes, but keeps the two alike)."""
    from greenq.brokers.redis import RedisBroker

    return RedisBroker(url=REDIS_URL, namespace=ns, heartbeat_timeout=APP_HEARTBEAT_MS)


def send(broker, actor_name, *args, queue_name="default", **kwargs):
    from greenq.message import Message

    return broker.enqueue(Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs=kwargs,
                                  options={}))


def wait_until(predicate, timeout=30, what="condition"):
    """Poll a cheap predicate (a Redis read) until it holds, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.05)
