"""RabbitMQ goes away under load (``rabbitmqctl stop_app``) and comes back (``start_app``).

Kept in its own file because it takes the shared server down for everyone:
the window is short (5 s by default, 30 s with ``--long``), ``start_app`` always
runs in a ``finally`` and is followed by ``rabbitmqctl await_startup``.
"""

import subprocess
import time

import pytest

from rel_harness import Target, report, require, stop

N = 1500
FAILURES = 10


def rabbitmqctl(*args, timeout=120):
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}"


def rabbitmq_outage(tmp_path, seconds):
    require("rabbitmq")
    target = Target("rabbitmq", tmp_path)
    proc = None
    try:
        ids = list(range(N))
        target.send("work", ids, sleep_ms=100)
        target.send("fail", range(FAILURES))
        proc = target.start()
        proc.ready(2)
        target.ledger.wait_count(N // 4)
        down = time.monotonic()
        try:
            rabbitmqctl("stop_app")
            proc.wait_for(r"Cannot connect to RabbitMQ|connection.*(lost|closed)|retrying", timeout=60)
            time.sleep(max(0.0, seconds - (time.monotonic() - down)))  # the outage window itself
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        outage = time.monotonic() - down
        target.ledger.wait_done(ids, timeout=120)
        target.ledger.wait_done(range(FAILURES), kind="f", timeout=60)
        dead = target.dead_letters()
        assert {m.actor_name for m in dead} == {"fail"}
        assert {m.options["failure"] for m in dead} == {f"ValueError: planned failure {i}" for i in range(FAILURES)}
        summary = target.ledger.summary(ids)
        report(f"broker unreachable {seconds:.0f} s (rabbitmqctl stop_app/start_app)", "rabbitmq", faults=1,
               dead_letters=len(dead), outage_seconds=round(outage, 1), **summary)
        assert summary["lost"] == 0, summary
        assert "guest:guest" not in proc.output()
        assert stop(proc) == 0
    finally:
        if proc is not None:
            proc.kill()
        target.cleanup()


def test_rabbitmq_restarted_mid_run(tmp_path):
    rabbitmq_outage(tmp_path, 5.0)


@pytest.mark.long
def test_rabbitmq_unreachable_for_30_seconds(tmp_path):
    rabbitmq_outage(tmp_path, 30.0)
