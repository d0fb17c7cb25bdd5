"""The whole broker contract, and results, on a 3-node Redis Cluster started by this module.

Each queue's keys share one hash tag, so every script runs on one node. The
cluster lives on loopback ports in 16000-16999 and is shut down at the end; a
file lock keeps two runs of this module (parallel test runs) from colliding.
"""

import fcntl
import importlib.util
import os
import socket
import subprocess
import time
import uuid

import pytest

from redis_helpers import port_open

_spec = importlib.util.spec_from_file_location(
    "greenq_contract_for_cluster", os.path.join(os.path.dirname(__file__), "contract", "test_broker_contract.py"))
_contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_contract)

# Every contract test, collected again here, runs against the cluster broker below.
globals().update({name: value for name, value in vars(_contract).items()
                  if name.startswith("test_") or name == "worker_on"})

LOCK_PATH = "/tmp/greenq-test-redis-cluster.lock"


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count):
    """Loopback ports for the nodes, each with its cluster-bus port (+10000) free too."""
    start = 16600 + (os.getpid() % 50) * 6
    ports = [p for p in range(start, 16999) if _bindable(p) and _bindable(p + 10000)][:count]
    if len(ports) < count:
        raise RuntimeError("no free ports for the cluster in 16600-16999")
    return ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI requires it)")
        pytest.skip("redis-server is not installed")
    lock = open(LOCK_PATH, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one cluster test run at a time on this machine
    tmp = tmp_path_factory.mktemp("redis-cluster")
    ports = _free_ports(3)
    servers = []
    try:
        for port in ports:
            servers.append(subprocess.Popen(
                ["redis-server", "--cluster-enabled", "yes", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-config-file", str(tmp / f"nodes-{port}.conf"), "--dir", str(tmp),
                 "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not all(port_open("127.0.0.1", p) for p in ports):
            assert time.monotonic() < deadline, "cluster nodes did not start"
            time.sleep(0.05)  # waiting for processes to listen, which has no event
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        import redis

        deadline = time.monotonic() + 20
        for port in ports:
            node = redis.Redis(port=port)
            while node.cluster("info").get("cluster_state") != "ok":
                assert time.monotonic() < deadline, "the cluster did not reach state ok"
                time.sleep(0.1)  # cluster convergence has no event to wait on
            node.close()
        yield ports
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@pytest.fixture
def cluster_client(cluster):
    from redis.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=cluster[0])
    yield client
    client.close()


@pytest.fixture
def any_broker(cluster_client):
    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker(client=cluster_client, namespace=f"greenq-test-{uuid.uuid4().hex[:8]}")
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


def test_queues_spread_over_the_nodes(any_broker, cluster_client):
    slots = {cluster_client.keyslot(k) for q in ("a", "b", "c", "d", "e") for k in any_broker.keys_of(q)}
    assert len(slots) == 5  # one slot per queue, whatever key
    nodes = {cluster_client.get_node_from_key(any_broker.keys_of(q)[0]).port for q in "abcdefghij"}
    assert len(nodes) > 1


def test_results_on_the_cluster(cluster_client):
    from greenq.results import ResultFailure
    from greenq.results.redis import RedisBackend

    backend = RedisBackend(client=cluster_client, namespace=f"greenq-test-{uuid.uuid4().hex[:8]}")
    backend.store_result("m1", {"x": 1}, 60000)
    backend.store_failure("m2", "ValueError", "bad", 60000)
    assert backend.get_result("m1", block=True, timeout=1000) == {"x": 1}
    with pytest.raises(ResultFailure):
        backend.get_result("m2")
