"""RabbitmqBroker against the real RabbitMQ on 127.0.0.1:5672 (the contract suite covers the common verbs).

Each test uses its own queue names (or its own vhost) and deletes what it
declared, so tests of other helpers on the same server never see each other.
Restart tests (stop_app / start_app) live in test_rabbitmq_restart.py.
"""

import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pika
import pytest

import greenq
from greenq.brokers import broker_from_url
from greenq.errors import BrokerConfigError
from greenq.message import Message, current_millis

from support import RABBITMQ_URL, Recorder, require_server

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(autouse=True)
def _rabbitmq():
    require_server("RabbitMQ", "127.0.0.1", 5672)


@pytest.fixture
def brokers(rabbitmq_brokers):
    """Booted RabbitmqBrokers, cleaned up at the end (see conftest.py)."""
    return functools.partial(rabbitmq_brokers, boot=True)


@pytest.fixture
def workers():
    started = []

    def start(broker, **kwargs):
        kwargs.setdefault("worker_timeout", 100)
        worker = greenq.Worker(broker, **kwargs)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=5000)


def rabbitmqctl(*args, timeout=60):
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}"
    return result.stdout


def list_connections():
    """``[(erlang_pid, connection_name)]`` of every AMQP connection, from the client properties we set."""
    out = rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties")
    found = []
    for line in out.splitlines():
        match = re.search(r'\{"connection_name","([^"]*)"\}', line)
        if match:
            found.append((line.split()[0], match.group(1)))
    return found


def connections_of(pid):
    """Names of the AMQP connections a process opened, as RabbitMQ sees them."""
    return [name for _, name in list_connections() if f"pid={pid} " in name]


def sockets_of(pid):
    """``{inode: fd}`` of the sockets process ``pid`` has open right now (a fraction of a millisecond)."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found[target[len("socket:["):-1]] = fd
    return found


def is_tcp(pid, fd):
    """Whether that fd is a TCP socket (None if it is closed), even before it is bound or connected."""
    try:
        return os.getxattr(f"/proc/{pid}/fd/{fd}", "system.sockprotoname").startswith(b"TCP")
    except OSError:
        return None


def tcp_peers_of(pid, inodes):
    """``{inode: (local, remote, state)}`` of those sockets bound or connected, from /proc/net/tcp (tens of ms)."""
    peers = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] in inodes:
                peers[fields[9]] = (fields[1], fields[2], fields[3])
    return peers


class ConnectionSampler:
    """Watch a process's AMQP connections while it works, in two background threads.

    One lists the process's sockets every couple of milliseconds and looks each new one up in
    /proc/net/tcp: the AMQP connections (remote port 5672) ever opened and the most open at once.
    (Sockets gone before they could be looked up are noted as short-lived: a connection opened per
    send lives for a handshake, many milliseconds, so most of them are caught and counted; the
    loopback pair behind a thread's wake-up can briefly open a listening socket.) The other runs
    ``rabbitmqctl list_connections`` back to back: the names RabbitMQ sees. So connections opened
    and closed around each send cannot go unnoticed.
    """

    def __init__(self, pid):
        self.pid = pid
        self.stop = threading.Event()
        self.kinds = {}  # inode -> "amqp", "other" or "short-lived"
        self.pending = set()  # TCP sockets not connected yet
        self.most_amqp = 0
        self.socket_samples = 0
        self.named = []  # [(monotonic time, [connection names])]
        self.errors = []
        self.threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                        for f in (self._sample_sockets, self._sample_names)]
        for thread in self.threads:
            thread.start()

    def _guard(self, sample):
        try:
            while not self.stop.is_set():
                sample()
        except FileNotFoundError:  # the process is gone
            pass
        except Exception as e:  # reported by finish(), not lost in a thread
            self.errors.append(e)

    def _sample_sockets(self):
        now = sockets_of(self.pid)
        for inode in self.pending - set(now):  # gone before it could be told apart: opened and closed quickly
            self.kinds[inode] = "short-lived"
        self.pending &= set(now)
        new = {inode: fd for inode, fd in now.items() if inode not in self.kinds}
        protocol = {inode: is_tcp(self.pid, fd) for inode, fd in new.items()}
        tcp = {inode for inode, yes in protocol.items() if yes}
        for inode, yes in protocol.items():
            if yes is False:
                self.kinds[inode] = "other"  # a Unix socket, say
        peers = tcp_peers_of(self.pid, tcp) if tcp else {}
        for inode in tcp:
            local, remote, state = peers.get(inode, ("", "", ""))
            if state == "0A":
                self.kinds[inode] = "other"  # listening
            elif remote.strip("0:"):
                self.kinds[inode] = "amqp" if remote.endswith(":1628") else "other"
            else:
                self.pending.add(inode)  # not connected yet: looked up again on the next round
                continue
            self.pending.discard(inode)
        self.most_amqp = max(self.most_amqp, sum(self.kinds.get(inode) == "amqp" for inode in now))
        self.socket_samples += 1
        time.sleep(0.002)

    def _sample_names(self):
        self.named.append((time.monotonic(), connections_of(self.pid)))

    def of_kind(self, kind):
        return [inode for inode, k in self.kinds.items() if k == kind]

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        assert not self.errors, self.errors


def fetch_all(consumer, expected, timeout=10):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got += consumer.fetch(expected - len(got), 0.5)
    return got


def wait_until(predicate, timeout=15, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling server state, which has no event to wait on


# --- construction ---------------------------------------------------------------------------


def test_amqp_urls_pick_the_rabbitmq_broker():
    from greenq.brokers.rabbitmq import RabbitmqBroker

    broker = broker_from_url(RABBITMQ_URL)
    try:
        assert isinstance(broker, RabbitmqBroker)
        assert "guest:***@" in repr(broker)
        broker.ping()
    finally:
        broker.close()


def test_ping_names_an_unreachable_server_without_its_password():
    from greenq.brokers.rabbitmq import RabbitmqBroker
    from greenq.errors import ConnectionError

    broker = RabbitmqBroker(url="amqp://guest:s3cret@127.0.0.1:16972/%2F")
    try:
        with pytest.raises(ConnectionError) as info:
            broker._publish_link.call(lambda link: None, timeout=1.0)
        assert "127.0.0.1:16972" in str(info.value) and "s3cret" not in str(info.value)
    finally:
        broker.close()


def test_quorum_queues_refuse_priorities():
    from greenq.brokers.rabbitmq import RabbitmqBroker

    with pytest.raises(ValueError, match="quorum"):
        RabbitmqBroker(url=RABBITMQ_URL, queue_type="quorum", max_priority=5)


# --- durability and confirms -------------------------------------------------------------------


def test_queues_are_durable_and_messages_persistent(brokers, queue_name):
    broker = brokers()
    broker.enqueue(Message(queue_name=queue_name, actor_name="a", args=(1,), kwargs={}, options={}))
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        # Declaring again with the same arguments succeeds only if they are equal (else 406).
        channel.queue_declare(f"{queue_name}.XQ", durable=True, arguments={"x-message-ttl": 7 * 24 * 3600 * 1000})
        channel.queue_declare(queue_name, passive=True)
        method, properties, body = channel.basic_get(queue_name)
        assert properties.delivery_mode == 2
        assert json.loads(body)["args"] == [1]
        channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()


def test_redeclaring_with_other_arguments_gives_a_clear_error(brokers, queue_name):
    brokers(max_priority=5).declare_queue(queue_name)
    other = brokers(max_priority=9)
    with pytest.raises(BrokerConfigError) as info:
        other.declare_queue(queue_name)
    text = str(info.value)
    assert "x-max-priority" in text and "max_priority" in text and "delete" in text and queue_name in text
    assert "guest:***@" in text or "guest" not in text


# --- priorities, delays, dead letters -----------------------------------------------------------


def test_priorities_are_off_by_default_and_arrival_order_holds(brokers, queue_name):
    """As in Dramatiq: no ``x-max-priority`` unless asked for (a priority queue costs throughput)."""
    broker = brokers()

    @greenq.actor(queue_name=queue_name, priority=0, broker=broker)
    def low():
        pass

    @greenq.actor(queue_name=queue_name, priority=5, broker=broker)
    def high():
        pass

    low.send()
    high.send()
    consumer = broker.consume(queue_name, prefetch=2)
    got = fetch_all(consumer, 2)
    assert [m.actor_name for m in got] == ["low", "high"]
    assert all(m.receipt is not None for m in got)
    consumer.ack(got)
    consumer.close()
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        # RabbitMQ refuses (406) a declare whose arguments differ from the queue's, so this
        # succeeds only if the queue really has no x-max-priority.
        arguments = broker._arguments.work(queue_name)
        assert "x-max-priority" not in arguments
        connection.channel().queue_declare(queue_name, durable=True, arguments=arguments)
    finally:
        connection.close()


def test_priorities_above_the_maximum_count_as_the_maximum(brokers, queue_name):
    broker = brokers(max_priority=3)

    @greenq.actor(queue_name=queue_name, priority=0, broker=broker)
    def low():
        pass

    @greenq.actor(queue_name=queue_name, priority=2, broker=broker)
    def middle():
        pass

    @greenq.actor(queue_name=queue_name, priority=100, broker=broker)
    def top():
        pass

    low.send()
    middle.send()
    top.send()
    consumer = broker.consume(queue_name, prefetch=3)
    got = fetch_all(consumer, 3)
    assert [m.actor_name for m in got] == ["top", "middle", "low"]
    consumer.ack(got)
    consumer.close()


#: The delays the tests below must catch still pending (ms). A message on the delay ladder first
#: changes rung after at least half of its delay, so a count taken within the first half sees it
#: in exactly one place (counting reads the rungs one by one).
SHORT_DELAY = 3000


def test_a_long_delay_does_not_hold_up_a_shorter_one(brokers, queue_name):
    broker = brokers()
    for attempt in range(3):
        name = f"{queue_name}-{attempt}"  # a fresh queue if the machine stalled through the window
        make = lambda i: Message(queue_name=name, actor_name="a", args=(i,), kwargs={}, options={})  # noqa: E731
        before = current_millis()
        long_one = broker.enqueue(make("long"), delay=60000)
        short_one = broker.enqueue(make("short"), delay=SHORT_DELAY)
        counts = broker.queue_counts(name)
        if current_millis() < before + SHORT_DELAY // 2:
            break
    else:
        pytest.fail(f"the machine stalled past {SHORT_DELAY // 2} ms three times in a row")
    assert counts["delayed"] == 2 and counts["ready"] == 0, counts
    consumer = broker.consume(name)
    (got,) = fetch_all(consumer, 1, timeout=SHORT_DELAY / 1000 + 10)
    assert got.message_id == short_one.message_id
    assert current_millis() >= short_one.options["eta"]
    assert current_millis() < long_one.options["eta"]
    counts = broker.queue_counts(name)
    assert counts["delayed"] == 1 and counts["in_flight"] == 1, counts
    consumer.ack([got])
    consumer.close()


def test_delay_routes_add_up_to_the_delay():
    from greenq.brokers import _amqp_topology as topology

    assert topology.delay_route("q", 0) is None
    for delay in (1, 31, 32, 33, 800, 60000, 7 * 24 * 3600 * 1000):
        exchange, key = topology.delay_route("q.sub", delay)
        words = key.split(".")
        bits = words[: topology.DELAY_RUNGS]
        assert words[topology.DELAY_RUNGS:] == ["q", "sub"]
        total = sum(topology.DELAY_UNIT_MS * 2 ** k for k, bit in enumerate(reversed(bits)) if bit == "1")
        assert delay <= total < delay + topology.DELAY_UNIT_MS
        assert exchange == f"greenq.delay.{len(bits) - 1 - bits.index('1')}"
    _, key = topology.delay_route("q", 10 ** 12)  # past the ladder: capped, re-delayed by the consumer
    assert set(key.split(".")[: topology.DELAY_RUNGS]) == {"1"}


def test_a_message_due_later_than_the_ladder_reaches_is_delayed_again(brokers, queue_name):
    from greenq.brokers._amqp_topology import DELAY_UNIT_MS

    broker = brokers()
    broker.declare_queue(queue_name)
    consumer = broker.consume(queue_name)
    for attempt in range(3):
        eta = current_millis() + SHORT_DELAY
        window_ends = eta - SHORT_DELAY // 2  # its new trip down the ladder first changes rung after this
        message = Message(queue_name=queue_name, actor_name="a", args=(attempt,), kwargs={}, options={"eta": eta})
        broker.enqueue_raw(queue_name, message.encode())  # arrives "early", as after a full ladder
        early, counts = [], {}
        # The consumer must send it round the ladder again at once, not hand it out or keep it.
        while not early and counts.get("delayed") != 1 and current_millis() < window_ends:
            early = consumer.fetch(1, 0.1)
            counts = broker.queue_counts(queue_name)
        checked = current_millis()
        assert not early or checked >= eta - DELAY_UNIT_MS, "handed out before it was due"
        if checked < window_ends:
            break
        # Out of the window (a stalled machine, or it was not delayed again): drain it and retry.
        consumer.ack(early or fetch_all(consumer, 1, timeout=SHORT_DELAY / 1000 + 10))
    else:
        pytest.fail(f"three times the message was not seen back on the delay ladder within "
                    f"{SHORT_DELAY // 2} ms: not delayed again, or the machine stalled")
    assert early == [] and counts["delayed"] == 1 and counts["ready"] == 0, counts
    (got,) = fetch_all(consumer, 1, timeout=SHORT_DELAY / 1000 + 10)
    assert got.message_id == message.message_id and current_millis() >= eta
    consumer.ack([got])
    consumer.close()


def test_bad_payloads_and_unknown_actors_are_dead_lettered_and_logged(brokers, workers, queue_name, caplog):
    broker = brokers()
    broker.declare_queue(queue_name)
    broker.enqueue_raw(queue_name, b"\xff not json")
    stray = Message(queue_name=queue_name, actor_name="nobody_declared_me", args=(), kwargs={}, options={})
    broker.enqueue_raw(queue_name, stray.encode())
    with caplog.at_level(logging.ERROR):
        workers(broker)
        wait_until(lambda: broker.queue_counts(queue_name)["dead"] == 2, what="two dead letters")
    dead = {m.actor_name: m for m in broker.dead_letters_of(queue_name)}
    assert dead["<undecodable>"].options["failure"].startswith("DecodeError")
    assert dead["nobody_declared_me"].options["failure"].startswith("ActorNotFound")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert stray.message_id in logged
    assert dead["<undecodable>"].message_id in logged
    assert broker.queue_counts(queue_name)["ready"] == 0


def test_dead_letters_can_be_read_repeatedly_and_requeued_by_id(brokers, queue_name):
    broker = brokers()
    sent = broker.enqueue_many([Message(queue_name=queue_name, actor_name="a", args=(i,), kwargs={}, options={})
                                for i in range(3)])
    consumer = broker.consume(queue_name, prefetch=3)
    got = fetch_all(consumer, 3)
    for m in got:
        m.options.update(failure="ValueError: no", failed_at=current_millis())
    consumer.nack(got)
    assert [m.message_id for m in broker.dead_letters_of(queue_name)] == [m.message_id for m in sent]
    assert len(broker.dead_letters_of(queue_name)) == 3  # reading does not consume
    assert broker.requeue_dead(queue_name, [sent[1].message_id]) == 1
    (again,) = fetch_all(consumer, 1)
    assert again.message_id == sent[1].message_id
    consumer.ack([again])
    assert broker.queue_counts(queue_name)["dead"] == 2
    assert broker.purge_dead(queue_name) == 2
    consumer.close()


def test_quorum_queue_dead_letters_a_message_that_keeps_killing_its_worker(brokers, queue_name):
    broker = brokers(queue_type="quorum", delivery_limit=1)
    sent = broker.enqueue(Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={}))
    for _ in range(3):  # each consumer "dies" holding the message
        consumer = broker.consume(queue_name)
        got = consumer.fetch(1, 2)
        consumer.close()
        if not got:
            break
    wait_until(lambda: broker.queue_counts(queue_name)["dead"] == 1, what="the delivery limit to dead-letter it")
    (dead,) = broker.dead_letters_of(queue_name)
    assert dead.message_id == sent.message_id
    assert "delivery_limit" in dead.options["failure"]
    assert broker.queue_counts(queue_name)["ready"] == 0


# --- gevent, connections, processes -------------------------------------------------------------


def test_500_greenlets_send_through_a_flat_number_of_connections(queue_name):
    script = os.path.join(HERE, "rabbitmq_gevent_sender.py")
    proc = subprocess.Popen([sys.executable, script, RABBITMQ_URL, queue_name, "500"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sampler = None
    try:
        pid = int(proc.stdout.readline().split()[1])
        sampler = ConnectionSampler(pid)  # from before the first sends until the work is done
        assert proc.stdout.readline().strip() == "HOLDING"
        while_sending = connections_of(pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "DONE 1000"
        sampler.finish()
        after_processing = connections_of(pid)
        proc.stdin.write("end\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0
    finally:
        if sampler is not None:
            sampler.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(while_sending) == 1, while_sending  # one publish connection for 500 greenlets
    assert len(after_processing) == 2, after_processing  # plus one consume connection for the worker
    assert any("greenq publish" in name for name in after_processing)
    # While the sends were in flight too (both rounds of 500), sampled every few milliseconds: the same
    # two connections all along, none opened and closed in between.
    assert sampler.socket_samples >= 10, sampler.socket_samples
    assert len(sampler.of_kind("amqp")) == 2 and sampler.most_amqp <= 2, sampler.kinds
    assert sampler.named, "rabbitmqctl was never sampled"
    for _, names in sampler.named:
        assert len(names) <= 2 and sum("greenq publish" in name for name in names) <= 1, names
    assert set(after_processing) >= {name for _, names in sampler.named for name in names}


def test_killed_worker_messages_are_redelivered_to_another(brokers, workers, queue_name):
    broker = brokers()
    recorder = Recorder()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def hang(i):
        recorder.add(i)

    hang.send_many([(i,) for i in range(3)])
    script = os.path.join(HERE, "rabbitmq_gevent_worker.py")
    proc = subprocess.Popen([sys.executable, script, RABBITMQ_URL, queue_name], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        started = {proc.stdout.readline().strip() for _ in range(3)}
        assert started == {"STARTED 0", "STARTED 1", "STARTED 2"}
        assert broker.queue_counts(queue_name)["ready"] == 0  # all three held, unacked, by the child
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    workers(broker)
    assert sorted(recorder.wait_for(3)) == [0, 1, 2]


def test_dropped_connections_are_reopened_for_producers_and_workers(brokers, workers, queue_name):
    broker = brokers()
    recorder = Recorder()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def record(i):
        recorder.add(i)

    workers(broker)
    record.send(0)
    recorder.wait_for(1)
    wanted = {broker._publish_link.connection_name, broker._consume_link.connection_name}
    mine = [erlang_pid for erlang_pid, name in list_connections() if name in wanted]
    assert len(mine) == 2, list_connections()
    for erlang_pid in mine:
        rabbitmqctl("close_connection", erlang_pid, "greenq test: dropping the connection")
    for i in range(1, 6):
        record.send(i)
    assert sorted(recorder.wait_for(6, timeout=30)) == list(range(6))
    assert broker._publish_link.generation >= 2 and broker._consume_link.generation >= 2


# --- tenants and other languages ----------------------------------------------------------------


@pytest.fixture
def vhost_url():
    vhost = f"greenq-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def test_a_vhost_in_the_url_separates_tenants(vhost_url, brokers, queue_name):
    tenant = brokers(url=vhost_url)
    other = brokers()
    tenant.enqueue(Message(queue_name=queue_name, actor_name="a", args=("tenant",), kwargs={}, options={}))
    other.enqueue(Message(queue_name=queue_name, actor_name="a", args=("default",), kwargs={}, options={}))
    other.enqueue(Message(queue_name=queue_name, actor_name="a", args=("default",), kwargs={}, options={}))
    assert tenant.queue_counts(queue_name)["ready"] == 1
    assert other.queue_counts(queue_name)["ready"] == 2
    consumer = tenant.consume(queue_name)
    (got,) = fetch_all(consumer, 1)
    assert got.args == ("tenant",)
    assert consumer.fetch(1, 0.3) == []
    consumer.ack([got])
    consumer.close()


def test_a_plain_pika_producer_can_enqueue_work(brokers, workers, queue_name):
    broker = brokers()
    recorder = Recorder()

    @greenq.actor(queue_name=queue_name, broker=broker)
    def add(x, y):
        recorder.add(x + y)

    # What another language's producer does: one persistent JSON document on the queue.
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        body = json.dumps({"queue_name": queue_name, "actor_name": "add", "args": [1, 2], "kwargs": {},
                           "options": {}, "message_id": str(uuid.uuid4()),
                           "message_timestamp": int(time.time() * 1000)})
        channel.basic_publish(exchange="", routing_key=queue_name, body=body,
                              properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"))
    finally:
        connection.close()
    workers(broker)
    assert recorder.wait_for(1) == [3]


def test_consumer_acks_are_not_held_up_by_an_idle_fetch(brokers, queue_name):
    broker = brokers()
    broker.enqueue(Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={}))
    consumer = broker.consume(queue_name)
    (got,) = fetch_all(consumer, 1)
    fetching = threading.Thread(target=consumer.fetch, args=(1, 5.0))
    fetching.start()
    start = time.monotonic()
    consumer.ack([got])
    took = time.monotonic() - start
    fetching_still = fetching.is_alive()
    consumer.close()
    fetching.join(10)
    assert fetching_still and took < 4.0, took  # the ack did not wait for the 5 s fetch to time out
    assert broker.queue_counts(queue_name)["in_flight"] == 0


def test_an_ack_batch_finished_out_of_order_goes_out_in_one_write(brokers, queue_name, monkeypatch):
    """A cumulative ack for the oldest finished deliveries, single acks for the rest, all in one socket write;
    deliveries still running are left unacked."""
    import socket

    broker = brokers()
    broker.enqueue_many([Message(queue_name=queue_name, actor_name="a", args=(i,), kwargs={}, options={})
                         for i in range(10)])
    consumer = broker.consume(queue_name, prefetch=10)
    got = sorted(fetch_all(consumer, 10), key=lambda m: m.args[0])
    assert [m.args[0] for m in got] == list(range(10))
    running = [got[2], got[6]]  # finished: 0 and 1 (one cumulative ack), then 3-5 and 7-9 one by one
    link_socket = consumer._link.connection._impl._transport._sock
    sends, send = [], socket.socket.send

    def counted(self, data, *args):
        if self is link_socket:
            sends.append(len(data))
        return send(self, data, *args)

    monkeypatch.setattr(socket.socket, "send", counted)
    consumer.ack([m for m in got if m not in running])
    monkeypatch.setattr(socket.socket, "send", send)
    assert 1 <= len(sends) <= 3, sends  # two writes (one more if a heartbeat falls in); 7 frames one by one before
    consumer.close()  # RabbitMQ puts back what the channel held unacked before it answers the close
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        declared = connection.channel().queue_declare(queue_name, passive=True)
        assert declared.method.message_count == 2
    finally:
        connection.close()
    again = broker.consume(queue_name, prefetch=10)
    back = fetch_all(again, 2)
    again.ack(back)
    again.close()
    assert sorted(m.args[0] for m in back) == [2, 6]


def test_a_waiting_fetch_is_woken_by_the_next_delivery(brokers, queue_name):
    """Deliveries go into the buffer without the lock; a fetch that waits must still hear of one at once."""
    broker = brokers()
    consumer = broker.consume(queue_name)
    for i in range(5):
        got = []
        fetching = threading.Thread(target=lambda: got.extend(consumer.fetch(1, 60.0)))
        fetching.start()
        deadline = time.monotonic() + 10  # until the fetch waits on an empty buffer (no event to wait for)
        while not consumer._waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        assert consumer._waiting
        broker.enqueue(Message(queue_name=queue_name, actor_name="a", args=(i,), kwargs={}, options={}))
        fetching.join(30)  # half the fetch's own timeout: a lost wake-up would leave it waiting
        assert not fetching.is_alive() and [m.args for m in got] == [(i,)]
        consumer.ack(got)
    consumer.close()


def test_a_consumer_asking_for_more_never_lets_rabbitmq_push_past_what_it_asked_for(brokers, queue_name):
    """A fetch beyond the prefetch raises RabbitMQ's limit to held + count, buffered deliveries included.

    Counting the buffer twice let the limit creep up fetch after fetch, so RabbitMQ
    pushed ever more messages into one worker's memory (and away from other workers).
    """
    broker = brokers()
    broker.enqueue_many([Message(queue_name=queue_name, actor_name="a", args=(i,), kwargs={}, options={})
                         for i in range(40)])
    consumer = broker.consume(queue_name, prefetch=2)
    held = []
    for _ in range(12):
        # Let RabbitMQ push what the current limit allows, so the next fetch meets a buffer.
        deadline = time.monotonic() + 10
        while len(consumer._buffer) + len(consumer._held) < consumer._qos and time.monotonic() < deadline:
            time.sleep(0.005)
        before = len(consumer._held)
        held += consumer.fetch(3, 5)
        assert consumer._qos <= max(consumer.prefetch, before + 3)
    assert len(held) >= 12  # every fetch got something
    consumer.ack(held)
    consumer.close()
