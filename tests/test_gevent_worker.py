"""The worker under gevent: hundreds of greenlets, and interrupts that kill greenlets.

Each scenario runs in a fresh process patched by gevent first (tests/scripts/gevent_core.py).
"""

from support import require_server, run_under_gevent


def test_two_hundred_greenlets_run_at_once():
    result, _ = run_under_gevent("concurrency_counter")
    assert result == {"mode": "greenlets", "max_in_flight": 200}


def test_idle_queues_do_not_starve_a_busy_one():
    result, _ = run_under_gevent("idle_queues")
    assert result["max_in_flight"] == result["pool"]


def test_time_limit_kills_a_sleeping_greenlet_at_once():
    result, _ = run_under_gevent("time_limit")
    assert "interrupted_after" in result  # time.sleep(30) raised: the greenlet was killed mid-sleep
    assert len(result["dead"]) == 1 and result["dead"][0].startswith("TimeLimitExceeded")


def test_shutdown_reaches_a_greenlet_blocked_in_io():
    result, _ = run_under_gevent("shutdown")
    assert result["shutdown"] is True  # the 30 s wait raised Shutdown instead of running out
    # Unfinished work, not a failure: back on the queue as it came, not retried or dead-lettered.
    assert result["dead"] == 0
    assert result["counts"] == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0}


def test_an_os_thread_of_ours_looks_names_up_without_a_resolver_thread():
    """The Redis heartbeat's OS thread connects by name; gevent's resolver would add a thread for it."""
    require_server("Redis", "127.0.0.1", 6379)
    assert run_under_gevent("lookup_in_os_thread", "pool")[0] == {"added": 1}  # what it costs without the call
    assert run_under_gevent("lookup_in_os_thread", "here")[0] == {"added": 0}
