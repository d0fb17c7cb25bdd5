"""Fixtures for the command's tests; the helpers live in ``cli_helpers``."""

import uuid

import pytest

from cli_helpers import REDIS_URL, Greenq, require_redis


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


@pytest.fixture
def redis_env(redis_ns):
    ns, client = redis_ns
    return {"TEST_NS": ns, "TEST_REDIS_URL": REDIS_URL}


