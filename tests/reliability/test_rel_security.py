"""Security: JSON-only messages, no credentials in logs, errors or ``greenq queues``, TLS URLs, loopback metrics."""

import ast
import os
import pickle
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from greenq.errors import DecodeError
from greenq.message import Message
from rel_harness import (APPS, RABBITMQ_URL, TESTS, RedisServer, Target, _free_port, report, require, stop,
                         wait_until)
from cli_helpers import Greenq, command

ROOT = os.path.dirname(TESTS)
PACKAGE = os.path.join(ROOT, "greenq")
SECRET = f"S3cr3t-{uuid.uuid4().hex[:10]}"
SERIALIZERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}


# --- messages are JSON only --------------------------------------------------------------------

def test_no_module_of_greenq_imports_a_code_executing_serializer():
    offenders = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("__import__", "import_module"):
                    modules = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                else:
                    continue
                offenders += [f"{os.path.relpath(path, ROOT)}:{node.lineno} {m}" for m in modules
                              if m.split(".")[0] in SERIALIZERS]
    assert offenders == []


class _Boom:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_is_never_unpickled_only_dead_lettered(tmp_path):
    marker = tmp_path / "pwned"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        payload = pickle.dumps(_Boom(str(marker)), protocol=protocol)
        with pytest.raises(DecodeError):
            Message.decode(payload)
    target = Target("sqlite", tmp_path)
    try:
        target.broker.enqueue_raw(target.queue, pickle.dumps(_Boom(str(marker))))
        consumer = target.broker.consume(target.queue)
        assert consumer.fetch(1, 0.5) == []  # dead-lettered by the consumer, never handed to the worker
        consumer.close()
        assert [m.options["failure"].split(":")[0] for m in target.dead_letters()] == ["DecodeError"]
    finally:
        target.cleanup()
    assert not marker.exists()


# --- credentials never show -------------------------------------------------------------------------

def run_command(args, env=None, timeout=60):
    full_env = dict(os.environ)
    full_env.pop("GREENQ_BROKER_URL", None)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, full_env.get("PYTHONPATH")) if p)
    full_env.update(env or {})
    return subprocess.run(command("threads") + list(args), cwd=APPS, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def start_failing(kind, url, tmp_path):
    target = Target(kind, tmp_path, url=url)
    # A short publish timeout: the app declares its queues as it is imported, and RabbitMQ waits that long.
    proc = Greenq(["relapp", "-p", "1", "-t", "10"], mode="gevent", cwd=APPS,
                  env=target.env(REL_PUBLISH_TIMEOUT=3))
    try:
        code = proc.wait(90)
    finally:
        proc.kill()
    return code, proc.output()


@pytest.mark.parametrize("kind, url", [
    ("redis", f"redis://user:{SECRET}@127.0.0.1:{{port}}/0"),
    ("rabbitmq", f"amqp://guest:{SECRET}@127.0.0.1:{{port}}/%2F"),
])
def test_unreachable_broker_exit_code_3_does_not_show_the_password(kind, url, tmp_path):
    code, output = start_failing(kind, url.format(port=_free_port()), tmp_path)
    assert code == 3, output
    assert "cannot reach the broker" in output
    assert SECRET not in output
    assert ":***@" in output


def test_wrong_rabbitmq_password_exit_code_3_does_not_show_it(tmp_path):
    require("rabbitmq")
    code, output = start_failing("rabbitmq", f"amqp://guest:{SECRET}@127.0.0.1:5672/%2F", tmp_path)
    assert code == 3, output
    assert SECRET not in output


def test_wrong_redis_password_exit_code_3_does_not_show_it(tmp_path):
    server = RedisServer(tmp_path, password=f"right-{uuid.uuid4().hex[:8]}")
    server.start()
    try:
        code, output = start_failing("redis", f"redis://:{SECRET}@127.0.0.1:{server.port}/0", tmp_path)
    finally:
        server.stop()
    assert code == 3, output
    assert SECRET not in output


def test_greenq_queues_output_and_errors_do_not_show_the_password(tmp_path):
    server = RedisServer(tmp_path, password=SECRET)
    server.start()
    try:
        target = Target("redis", tmp_path, url=server.url)
        target.send("work", range(3))
        url = f"{server.url}?namespace={target.ns}"
        ok = run_command(["queues", "--broker-url", url])
        assert ok.returncode == 0, ok.stderr
        assert target.queue in ok.stdout
        for args in (["queues", "--broker-url", url.replace(SECRET, SECRET + "x")],
                     ["dead", "list", "nope", "--broker-url", url]):
            bad = run_command(args)
            assert bad.returncode in (2, 3), bad
            assert SECRET not in bad.stdout + bad.stderr
        assert SECRET not in ok.stdout + ok.stderr
        target.cleanup()
    finally:
        server.stop()
    down = run_command(["queues", "--broker-url", server.url])
    assert down.returncode == 3, down
    assert SECRET not in down.stdout + down.stderr
    assert "***" in down.stderr


def test_greenq_queues_on_rabbitmq_does_not_show_the_password(tmp_path):
    require("rabbitmq")
    target = Target("rabbitmq", tmp_path)
    try:
        target.send("work", range(3))
        ok = run_command(["queues", "-Q", target.queue, "--broker-url", RABBITMQ_URL])
        assert ok.returncode == 0, ok.stderr
        assert target.queue in ok.stdout
        assert "guest:guest" not in ok.stdout + ok.stderr
    finally:
        target.cleanup()


@pytest.mark.long  # RabbitMQ refuses for the whole connection timeout (30 s) before the command gives up
def test_greenq_queues_with_a_wrong_rabbitmq_password_does_not_show_it():
    require("rabbitmq")
    wrong = RABBITMQ_URL.replace("guest:guest", f"guest:{SECRET}")
    bad = run_command(["queues", "-Q", "nope", "--broker-url", wrong])
    assert bad.returncode == 3, bad
    assert SECRET not in bad.stdout + bad.stderr


# --- TLS URLs are honoured ----------------------------------------------------------------------------

def test_rediss_url_makes_tls_connections():
    import redis

    from greenq.brokers import broker_from_url

    broker = broker_from_url(f"rediss://:{SECRET}@127.0.0.1:{_free_port()}/0?namespace=tls")
    try:
        pool = broker.client.connection_pool
        assert issubclass(pool.connection_class, redis.SSLConnection)
        assert issubclass(broker.new_client().connection_pool.connection_class, redis.SSLConnection)
        assert SECRET not in repr(broker)
    finally:
        broker.close()
    plain = broker_from_url(f"redis://127.0.0.1:{_free_port()}/0")
    try:
        assert not issubclass(plain.client.connection_pool.connection_class, redis.SSLConnection)
    finally:
        plain.close()


def test_amqps_url_makes_tls_connections(monkeypatch):
    import pika
    import pika.exceptions

    from greenq.brokers.rabbitmq import RabbitmqBroker

    seen = []
    attempted = threading.Event()

    def fake_connection(params):
        seen.append(params)
        attempted.set()
        raise pika.exceptions.AMQPConnectionError("no server in this test")

    monkeypatch.setattr(pika, "BlockingConnection", fake_connection)
    broker = RabbitmqBroker(url=f"amqps://guest:{SECRET}@127.0.0.1:{_free_port()}/%2F")
    pinger = threading.Thread(target=lambda: _swallow(broker.ping), daemon=True)
    pinger.start()
    try:
        assert attempted.wait(20), "the broker never tried to connect"
    finally:
        broker.close()
    assert seen[0].ssl_options is not None
    assert SECRET not in repr(broker)


def _swallow(fn):
    try:
        fn()
    except Exception:  # the fake connection always fails: only the parameters it got matter
        pass


# --- the metrics server binds loopback unless told otherwise --------------------------------------------

def _listening_addresses(port):
    """Local addresses listening on ``port`` (IPv4), from /proc/net/tcp."""
    found = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.split(":")
            if int(hexport, 16) == port and state == "0A":
                found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.parametrize("host, expected", [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_metrics_server_binds_loopback_unless_told_otherwise(host, expected, monkeypatch):
    pytest.importorskip("prometheus_client")
    from greenq.brokers.stub import StubBroker
    from greenq.middleware.prometheus import Prometheus

    monkeypatch.delenv("greenq_prom_host", raising=False)
    monkeypatch.delenv("GREENQ_PROM_HOST", raising=False)
    port = _free_port()
    middleware = Prometheus(host=host, port=port, http_server=True)
    broker = StubBroker(middleware=[middleware])
    broker.emit_after("process_boot")
    try:
        addresses = wait_until(lambda: _listening_addresses(port), 20, f"metrics server on port {port}")
        assert addresses == [expected]
    finally:
        broker.emit_before("process_stop")
        broker.close()
