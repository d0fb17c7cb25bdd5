"""Worker-command options on real processes and a real Redis: -Q, --worker-shutdown-timeout, -v."""

import signal

import pytest

from cli_helpers import APPS, app_broker, redis_env, redis_ns, run_greenq, send, wait_until  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)

TWO_QUEUES = (
    "import greenq\nfrom redis_common import key, r\n\n"
    "@greenq.actor(queue_name='alpha')\ndef on_alpha(i):\n    r.rpush(key('done'), f'alpha:{i}')\n\n"
    "@greenq.actor(queue_name='beta')\ndef on_beta(i):\n    r.rpush(key('done'), f'beta:{i}')\n"
)


def _list(client, ns, name):
    return [v.decode() for v in client.lrange(f"{ns}:{name}", 0, -1)]


def test_queues_option_consumes_only_the_named_queues(run_greenq, redis_ns, redis_env, tmp_path):
    ns, client = redis_ns
    broker = app_broker(ns)
    (tmp_path / "twoqueues.py").write_text(TWO_QUEUES)
    proc = run_greenq("twoqueues", "-p", "1", "-Q", "alpha", "-v", "--path", APPS, "--path", str(tmp_path),
                      cwd=str(tmp_path), env=redis_env)
    proc.ready(1)
    # -v logs at DEBUG, which says which queues the worker consumes.
    proc.wait_for(r"\[DEBUG\] Worker started: \d+ threads on queues \['alpha'\]\.")
    for i in range(5):  # sent first: a worker that consumed beta would have them well before alpha's last
        send(broker, "on_beta", i, queue_name="beta")
    for i in range(5):
        send(broker, "on_alpha", i, queue_name="alpha")
    wait_until(lambda: len(_list(client, ns, "done")) >= 5, what="alpha's five messages done")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert sorted(_list(client, ns, "done")) == [f"alpha:{i}" for i in range(5)]
    assert broker.queue_counts("beta") == {"ready": 5, "delayed": 0, "in_flight": 0, "dead": 0}
    broker.close()


@pytest.mark.parametrize("mode", ["threads", "gevent"])
def test_worker_shutdown_timeout_requeues_unfinished_work(run_greenq, redis_ns, redis_env, mode):
    """TERM with an actor that outlives --worker-shutdown-timeout: exit 0 soon, the message goes back whole."""
    ns, client = redis_ns
    broker = app_broker(ns)
    proc = run_greenq("redisapp", "-p", "1", "--worker-shutdown-timeout", "500", mode=mode, env=redis_env)
    proc.ready(1)
    send(broker, "slow", 7, 60)
    wait_until(lambda: _list(client, ns, "started") == ["7"], what="the slow actor started")
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # did not wait the actor's 60 s out
    assert proc.matching(r"did not finish within the shutdown timeout; requeueing it")
    assert _list(client, ns, "done") == []
    # Back on the queue once: not retried, not dead-lettered.
    assert broker.queue_counts("default") == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0}
    broker.close()
