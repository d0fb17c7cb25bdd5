"""Dropping what a benchmark run left in a shared Redis: one helper for the orchestrator and the in-process runs."""


def drop_keys(client, *patterns):
    """Delete every key matching any of ``patterns`` (SCAN, then DEL in chunks of 500)."""
    keys = [key for pattern in patterns for key in client.scan_iter(match=pattern, count=1000)]
    for i in range(0, len(keys), 500):
        client.delete(*keys[i:i + 500])
