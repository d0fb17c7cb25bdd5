"""What tests share, in a module no conftest.py can shadow: server URLs, checks, and waiting.

Import it as ``from support import ...`` (tests/ is on sys.path under pytest's
rootdir-based import mode). Under CI (``CI=true``) a broker that does not answer
fails the test; on a developer's machine the test is skipped with the reason.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"
REDIS_URL = os.environ.get("GREENQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("GREENQ_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


GEVENT_CORE = Path(__file__).parent / "scripts" / "gevent_core.py"


def run_under_gevent(scenario, *extra):
    """Run ``scenario`` of tests/scripts/gevent_core.py in a fresh gevent-patched process: (its JSON result, its stderr).

    The suite runs in threads mode; this is how a test sees greenq under gevent.
    """
    out = subprocess.run([sys.executable, str(GEVENT_CORE), scenario, *extra], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name, host, port):
    """Skip when the server is absent; fail under CI, which must have it."""
    if not port_open(host, port):
        message = f"{name} is not answering on {host}:{port}"
        if IN_CI:
            pytest.fail(message + " (CI requires it)")
        pytest.skip(message)


def drop_redis_namespace(namespace, url=REDIS_URL):
    """Delete a test's Redis keys: ``namespace:*`` and the hash-tagged ``{namespace:...}`` ones."""
    import redis

    client = redis.Redis.from_url(url)
    for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
        keys = list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)
    client.close()


def run_in_forked_child(check, timeout=30):
    """Fork; in the child run ``check()`` and exit 0 if it returns true (2 if false, 1 if it raised),
    without the parent's exit handlers. Returns the child's exit code; a child stuck past ``timeout``
    seconds (an inherited lock, say) is killed and fails the test instead of hanging the run."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            code = 0 if check() else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.02)  # a child's exit has no event the parent can wait on with a deadline


def enqueue_twice(broker, actor):
    """Two deliveries of one message (one id), as a redelivery beside the first copy or a scheduler's
    second copy of a tick; returns the message."""
    message = actor.message()
    broker.enqueue(message)
    broker.enqueue(message)
    return message


class Recorder:
    """Collects what actors saw and lets a test wait for a count, without sleeps."""

    def __init__(self):
        self.calls = []
        self._cond = threading.Condition()

    def add(self, item):
        with self._cond:
            self.calls.append(item)
            self._cond.notify_all()

    def wait_for(self, count, timeout=20):
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.calls) >= count, timeout)
        assert ok, f"expected {count} call(s) within {timeout}s, got {len(self.calls)}: {self.calls[:10]}"
        return list(self.calls)
