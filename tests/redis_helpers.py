"""Shared bits of the Redis tests, under a name no other conftest.py can shadow.

(``from conftest import ...`` is ambiguous once a sub-folder has its own conftest.py.)
"""

import os
import socket

import pytest

IN_CI = os.environ.get("CI") == "true"
REDIS_URL = os.environ.get("GREENQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name, host, port):
    """Skip when the server is absent; fail under CI (CI=true), which must have it."""
    if not port_open(host, port):
        message = f"{name} is not answering on {host}:{port}"
        if IN_CI:
            pytest.fail(message + " (CI requires it)")
        pytest.skip(message)
