"""Kept for the Redis-era imports; everything lives in tests/support.py now."""

from support import IN_CI, REDIS_URL, port_open, require_server  # noqa: F401
