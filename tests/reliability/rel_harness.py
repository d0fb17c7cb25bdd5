"""Helpers for the reliability suite: ledgers, brokers under test, an own Redis server, figures.

No conftest.py here on purpose: a second ``conftest`` module on sys.path would
shadow tests/conftest.py for test modules that import from it. Test modules
import what they need from this module explicitly.

Every wait is a deadline loop over a cheap read (the ledger file, a PING, a pid),
never a fixed sleep; the only deliberate pauses are the fault windows themselves
(an outage lasts as long as the scenario says).
"""

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps")
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TESTS, "cli"))

from cli_helpers import Greenq  # noqa: E402

IN_CI = os.environ.get("CI") == "true"
REDIS_URL = os.environ.get("GREENQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("GREENQ_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BROKERS = ["redis", "rabbitmq", "sqlite"]


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(kind):
    """Skip (fail under CI) when the shared server ``kind`` needs is not answering."""
    where = {"redis": ("Redis", 6379), "rabbitmq": ("RabbitMQ", 5672)}.get(kind)
    if where and not port_open("127.0.0.1", where[1]):
        message = f"{where[0]} is not answering on 127.0.0.1:{where[1]}"
        if IN_CI:
            pytest.fail(message + " (CI requires it)")
        pytest.skip(message)


def wait_until(predicate, timeout=60, what="condition", interval=0.05):
    """Poll a cheap predicate until it holds, with a deadline; return its value.

    ``what`` names the condition in the failure; a callable is asked at that
    moment, so the message can say how far things got.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what} did not hold within {timeout}s")
        time.sleep(interval)


# --- the ledger -------------------------------------------------------------------------------

class Ledger:
    """The file the app's actors append ``<kind> <id> <pid>`` lines to, read by the test."""

    def __init__(self, path):
        self.path = str(path)
        open(self.path, "ab").close()

    def entries(self):
        with open(self.path, "rb") as f:
            data = f.read()
        out = []
        for line in data.decode().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((parts[0], parts[1], int(parts[2])))
        return out

    def counts(self, kind="w"):
        return collections.Counter(i for k, i, _ in self.entries() if k == kind)

    def done(self, kind="w"):
        return len(self.counts(kind))

    def wait_done(self, ids, kind="w", timeout=90):
        """Wait until every id in ``ids`` has been processed at least once."""
        wanted = {str(i) for i in ids}

        def complete():
            return wanted <= set(self.counts(kind))

        try:
            wait_until(complete, timeout, "every message processed")
        except AssertionError:
            missing = sorted(wanted - set(self.counts(kind)))
            raise AssertionError(f"{len(missing)} of {len(wanted)} message(s) never processed "
                                 f"within {timeout}s, e.g. {missing[:10]}") from None

    def wait_count(self, n, kind="w", timeout=60):
        return wait_until(lambda: self.done(kind) >= n, timeout, f"{n} messages processed")

    def summary(self, ids, kind="w"):
        counts = self.counts(kind)
        wanted = [str(i) for i in ids]
        lost = [i for i in wanted if counts[i] == 0]
        duplicates = sum(counts[i] - 1 for i in wanted if counts[i] > 1)
        return {"messages": len(wanted), "lost": len(lost), "duplicates": duplicates, "lost_ids": lost[:10]}


# --- brokers under test ----------------------------------------------------------------------------

class Target:
    """One broker for one scenario: the app's environment, and the test's own handle on it."""

    def __init__(self, kind, tmp_path, url=None):
        self.kind = kind
        self.tmp_path = tmp_path
        self.queue = f"rel-{uuid.uuid4().hex[:10]}"
        self.ns = f"greenq-rel-{uuid.uuid4().hex[:10]}"
        self.ledger = Ledger(tmp_path / "ledger.txt")
        if kind == "redis":
            self.url = url or REDIS_URL
        elif kind == "rabbitmq":
            self.url = url or RABBITMQ_URL
        elif kind == "sqlite":
            self.url = url or str(tmp_path / "broker.sqlite3")
        else:
            raise ValueError(kind)
        self._broker = None

    def env(self, **extra):
        env = {"REL_BROKER": self.kind, "REL_URL": self.url, "REL_NS": self.ns, "REL_QUEUE": self.queue,
               "REL_LEDGER": self.ledger.path}
        env.update({k: str(v) for k, v in extra.items()})
        return env

    @property
    def broker(self):
        """The test's handle (enqueue, dead letters), configured like the app's."""
        if self._broker is None:
            if self.kind == "redis":
                from greenq.brokers.redis import RedisBroker

                self._broker = RedisBroker(url=self.url, namespace=self.ns, heartbeat_timeout=1500)
            elif self.kind == "rabbitmq":
                from greenq.brokers.rabbitmq import RabbitmqBroker

                self._broker = RabbitmqBroker(url=self.url)
            else:
                from greenq.brokers.sqlite import SqliteBroker

                self._broker = SqliteBroker(path=self.url, heartbeat_timeout=1500)
            self._broker.declare_queue(self.queue)
        return self._broker

    def send(self, actor_name, ids, **kwargs):
        from greenq.message import Message

        messages = [Message(queue_name=self.queue, actor_name=actor_name, args=(i,), kwargs=kwargs, options={})
                    for i in ids]
        for start in range(0, len(messages), 1000):
            self.broker.enqueue_many(messages[start:start + 1000])
        return messages

    def dead_letters(self):
        return self.broker.dead_letters_of(self.queue)

    def counts(self):
        return self.broker.queue_counts(self.queue)

    def start(self, *args, env=None, processes=2, threads=100, extra_env=None):
        """``greenq-gevent relapp -p 2 -t 100`` (by default) on this broker."""
        argv = ["relapp", "-p", str(processes), "-t", str(threads), *args]
        return Greenq(argv, mode="gevent", cwd=APPS, env=self.env(**(extra_env or {})))

    def cleanup(self):
        broker = self._broker
        if broker is None:
            return
        try:
            if self.kind == "redis":
                import redis

                client = redis.Redis.from_url(self.url)
                try:
                    keys = list(client.scan_iter(match=f"*{self.ns}*", count=1000))
                    if keys:
                        client.delete(*keys)
                finally:
                    client.close()
            elif self.kind == "rabbitmq":
                broker.delete_queues()
        except Exception as e:  # a server the scenario took down may still be coming back
            print(f"cleanup of {self.kind} failed: {type(e).__name__}: {e}")
        finally:
            broker.close()


def stop(proc, timeout=60):
    """TERM the master and return its exit code (it must exit gracefully)."""
    if proc.proc.poll() is None:
        proc.signal(signal.SIGTERM)
    return proc.wait(timeout)


def pid_gone(pid):
    """True once ``pid`` no longer runs (exited, or a zombie waiting for its new parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


# --- a Redis of the test's own, to kill and restart -----------------------------------------------

class RedisServer:
    """``redis-server`` on its own port with append-only persistence, fsync on every write.

    ``appendfsync always`` because the scenario kills it with SIGKILL: with the
    default ``everysec``, Redis itself may drop the last second of writes, which
    would hide greenq's behaviour behind the server's.
    """

    def __init__(self, tmp_path, password=None):
        if shutil.which("redis-server") is None:
            if IN_CI:
                pytest.fail("redis-server is not installed (CI requires it)")
            pytest.skip("redis-server is not installed")
        self.port = _free_port()
        self.dir = tmp_path / f"redis-{self.port}"
        self.dir.mkdir()
        self.password = password
        self.proc = None

    @property
    def url(self):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self):
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 20, f"redis-server on port {self.port} answering")

    def _answers(self):
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            return client.ping()
        except redis.exceptions.BusyLoadingError:
            return False
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self):
        self.kill()


def _free_port():
    """A port in 16000-16999 that nothing listens on (the shared rules reserve that range for tests)."""
    for _ in range(200):
        port = 16000 + int.from_bytes(os.urandom(2), "big") % 1000
        if not port_open("127.0.0.1", port):
            return port
    raise RuntimeError("no free port in 16000-16999")


# --- figures --------------------------------------------------------------------------------------------

def report(scenario, kind, **figures):
    """Print one scenario's figures; append them to $GREENQ_RELIABILITY_REPORT (JSON lines) if set."""
    line = {"scenario": scenario, "broker": kind, **figures}
    print("RELIABILITY " + json.dumps(line))
    path = os.environ.get("GREENQ_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
