"""RedisBroker on a real Redis: crash safety, namespaces, delays, the hand-written recipe, bad input.

The broker contract itself runs in tests/contract (GREENQ_CONTRACT_BROKERS=redis).
Worker processes run under gevent (tests/redis_worker.py); a private
redis-server on a port in 16000-16999 serves the tests that break connections.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

import greenq
from greenq.message import Message, current_millis

from redis_helpers import IN_CI, REDIS_URL, port_open, require_server

HERE = os.path.dirname(__file__)


@pytest.fixture
def namespace():
    return f"greenq-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def raw():
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture(params=["hiredis", "python"])
def parser_class(request):
    """The reply parser of the brokers ``make`` builds: hiredis's, which ``greenq[hiredis]`` (and the dev
    extra) installs and redis-py then picks, and redis-py's own, which a plain install runs on."""
    import redis.connection
    import redis.utils

    if request.param == "python":
        return redis.connection._RESP2Parser
    if not redis.utils.HIREDIS_AVAILABLE:
        message = "hiredis is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message + " (CI requires it)")
        pytest.skip(message)
    return redis.connection._HiredisParser


@pytest.fixture
def make(namespace, parser_class):
    from greenq.brokers.redis import RedisBroker

    made = []

    def build(**options):
        require_server("Redis", "127.0.0.1", 6379)
        options.setdefault("namespace", namespace)
        options.setdefault("parser_class", parser_class)
        broker = RedisBroker(REDIS_URL, **options)
        broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield build
    for broker in made:
        broker.flush_all()
        broker.close()


def message_for(queue_name, actor_name="noop", args=()):
    return Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={})


def fetch_all(consumer, expected, timeout=10):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got += consumer.fetch(expected - len(got), 0.5)
    return got


def count_pool_checkouts(monkeypatch, broker):
    """A list that grows by one each time the broker's redis-py pool lends a connection."""
    checkouts = []
    pool = broker.client.connection_pool
    checkout = pool.get_connection
    monkeypatch.setattr(pool, "get_connection", lambda *a, **kw: checkouts.append(1) or checkout(*a, **kw))
    return checkouts


def wait_list(raw, key, count, timeout=30):
    """Block on a Redis list until it holds ``count`` items (the worker process's progress marks)."""
    deadline = time.monotonic() + timeout
    while raw.llen(key) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{key} has {raw.llen(key)} item(s), expected {count}"
        raw.blmove(key, key, min(left, 0.5), "RIGHT", "RIGHT")
    return [int(x) for x in raw.lrange(key, 0, -1)]


def start_worker_process(namespace, queue_name, heartbeat, mode, threads=5, hog_ms=None):
    extra = [] if hog_ms is None else [str(hog_ms)]
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "redis_worker.py"), REDIS_URL, namespace, queue_name,
         str(heartbeat), mode, str(threads), *extra],
        stderr=subprocess.DEVNULL)


def drop_marks(raw, namespace):
    raw.delete(*[f"{namespace}:{name}" for name in ("started", "finished", "ready", "stopped", "stop")])


# --- crash safety -------------------------------------------------------------------------


def test_kill_9_of_a_worker_process_loses_nothing(make, raw, namespace, queue_name, recorder):
    broker = make(heartbeat_timeout=1500)

    @greenq.actor(queue_name=queue_name, broker=broker, actor_name="hold")
    def hold(i):
        recorder.add(i)

    hold.send_many([(i,) for i in range(5)])
    proc = start_worker_process(namespace, queue_name, 1500, "sleep", threads=5)
    try:
        assert sorted(wait_list(raw, f"{namespace}:started", 5)) == list(range(5))
        assert broker.queue_counts(queue_name)["in_flight"] == 5
        proc.kill()  # SIGKILL: no requeue, no goodbye
        proc.wait(10)
        worker = greenq.Worker(broker, worker_threads=5, worker_timeout=100)
        worker.start()
        try:
            assert sorted(recorder.wait_for(5, timeout=30)) == list(range(5))
            worker.join(10000)
        finally:
            worker.stop(timeout=5000)
        assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        drop_marks(raw, namespace)


def test_graceful_stop_of_a_worker_process_requeues_at_once(make, raw, namespace, queue_name):
    broker = make(heartbeat_timeout=60000)  # a minute: only an explicit requeue can explain what follows
    broker.enqueue_many([message_for(queue_name, "hold", (i,)) for i in range(4)])
    proc = start_worker_process(namespace, queue_name, 60000, "sleep", threads=1)
    try:
        wait_list(raw, f"{namespace}:started", 1)
        raw.rpush(f"{namespace}:stop", 1)
        wait_list(raw, f"{namespace}:stopped", 1)
        assert proc.wait(20) == 0
        counts = broker.queue_counts(queue_name)
        assert counts == {"ready": 4, "delayed": 0, "in_flight": 0, "dead": 0}, counts
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        drop_marks(raw, namespace)


def test_a_greenlet_hogging_the_hub_does_not_lose_its_message(make, raw, namespace, queue_name):
    timeout = 2000  # ms; the heartbeat thread beats every third of it, so a lapse needs three missed beats
    broker = make(heartbeat_timeout=timeout)
    broker.enqueue(message_for(queue_name, "hold", (7,)))
    # Twice the timeout, and under redis-py's 5 s socket timeout, which the blocked hub would also outlast.
    proc = start_worker_process(namespace, queue_name, timeout, "hog", threads=1, hog_ms=2 * timeout)
    try:
        wait_list(raw, f"{namespace}:started", 1)
        started = time.monotonic()  # the hub has been blocked since a little before this
        rival = broker.consume(queue_name)
        stolen, last_reap = [], started
        while raw.llen(f"{namespace}:finished") == 0 and proc.poll() is None:
            stolen += rival.fetch(1, 0.2)  # reaps, if the hogging worker looked dead
            last_reap = time.monotonic()
        assert stolen == [], "the message was taken from a live worker whose hub was busy"
        # The rival's reaper ran after the hog had been going for well over the heartbeat timeout.
        assert last_reap - started > 1.25 * timeout / 1000, "the hog ended too soon to prove anything"
        assert wait_list(raw, f"{namespace}:finished", 1) == [7]
        rival.close()
        raw.rpush(f"{namespace}:stop", 1)
        assert proc.wait(20) == 0
        assert raw.lrange(f"{namespace}:started", 0, -1) == [b"7"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        drop_marks(raw, namespace)


def test_a_message_that_keeps_killing_its_worker_is_dead_lettered(make, queue_name):
    broker = make(heartbeat_timeout=200, max_deliveries=3)
    sent = broker.enqueue(message_for(queue_name, "crashy"))
    for attempt in range(1, 4):
        consumer = broker.consume(queue_name)
        (got,) = fetch_all(consumer, 1)
        assert got.message_id == sent.message_id and got.redelivered == (attempt > 1)
        consumer._crash()  # as if kill -9: holds the message, beats no more
    survivor = broker.consume(queue_name)
    deadline = time.monotonic() + 10
    while not broker.dead_letters_of(queue_name) and time.monotonic() < deadline:
        assert survivor.fetch(1, 0.2) == []
    (dead,) = broker.dead_letters_of(queue_name)
    assert dead.message_id == sent.message_id
    assert dead.options["failure"].startswith("MaxDeliveriesExceeded: delivered 3 times")
    assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    survivor.close()


def test_only_deliveries_lost_with_their_worker_count_towards_max_deliveries(make, raw, queue_name):
    broker = make(heartbeat_timeout=200, max_deliveries=2)
    sent = broker.enqueue(message_for(queue_name))
    for _ in range(3):  # given back unstarted (a graceful stop): as if never fetched
        consumer = broker.consume(queue_name)
        (got,) = fetch_all(consumer, 1)
        assert got.message_id == sent.message_id and not got.redelivered
        consumer.requeue([got])
        consumer.close()
    crashed = broker.consume(queue_name)
    (got,) = fetch_all(crashed, 1)
    crashed._crash()
    survivor = broker.consume(queue_name)
    (again,) = fetch_all(survivor, 1)  # the first lost delivery of two allowed: delivered again, not dead
    assert again.message_id == sent.message_id and again.redelivered
    assert raw.hget(f"{survivor.prefix}.deliveries", again.receipt) == b"1"
    survivor.ack([again])
    assert broker.dead_letters_of(queue_name) == []
    assert not raw.exists(f"{survivor.prefix}.deliveries", f"{survivor.prefix}.msgs")
    survivor.close()


def test_a_stalled_consumer_cannot_settle_a_message_taken_back(make, raw, queue_name, caplog):
    broker = make(heartbeat_timeout=60000)  # no beat of its own for 20 s: only the backdating below ages it
    broker.enqueue(message_for(queue_name))
    stalled = broker.consume(queue_name)
    (late,) = fetch_all(stalled, 1)
    broker._heartbeat.remove(stalled.cid)  # its process stalls: no more beats...
    raw.zadd(f"{stalled.prefix}.heartbeats", {stalled.cid: 0})  # ...and its last one is older than the timeout
    live = broker.consume(queue_name)
    (mine,) = fetch_all(live, 1)  # this fetch reaps the stalled consumer
    assert mine.receipt == late.receipt and mine.redelivered
    with caplog.at_level("WARNING", logger="greenq.brokers.redis"):
        stalled.nack([late])
        stalled.ack([late])
        stalled.requeue([late])
    assert broker.dead_letters_of(queue_name) == []
    assert raw.smembers(live.held_key) == {mine.receipt.encode()}
    assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 0}
    warnings = [r.getMessage() for r in caplog.records if "no longer holds" in r.getMessage()]
    assert [w.split()[2] for w in warnings] == ["dead-letter", "ack", "requeue"]
    live.ack([mine])
    assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    live.close()
    stalled.close()


# --- dead letters ----------------------------------------------------------------------------


def wait_past(epoch_ms):
    """Sleep until the wall clock (which dead-letter times use) has passed ``epoch_ms``."""
    while current_millis() <= epoch_ms:
        time.sleep(max(0.001, (epoch_ms - current_millis() + 1) / 1000))


def test_dead_letters_are_kept_seven_days_by_default(make, raw, queue_name):
    broker = make()
    assert broker.dead_message_ttl == 7 * 24 * 3600 * 1000
    broker.enqueue(message_for(queue_name))
    consumer = broker.consume(queue_name)
    consumer.nack(fetch_all(consumer, 1))
    dead_key, dead_msgs = broker.keys_of(queue_name)[7:9]
    for key in (dead_key, dead_msgs):  # the structures themselves expire a week after the last dead letter
        assert 7 * 24 * 3600 * 1000 - 60000 < raw.pttl(key) <= 7 * 24 * 3600 * 1000
    assert len(broker.dead_letters_of(queue_name)) == 1
    consumer.close()


def test_dead_letters_disappear_after_their_ttl_and_are_pruned(make, raw, queue_name):
    ttl = 1500  # ms: each step below takes a few; a stall this long between two calls would be extraordinary
    broker = make(dead_message_ttl=ttl)
    kept, lone = queue_name, f"{queue_name}-lone"
    sent = {q: broker.enqueue_many([message_for(q, args=(i,)) for i in range(2)]) for q in (kept, lone)}
    consumers = {q: broker.consume(q) for q in (kept, lone)}
    held = {q: fetch_all(consumers[q], 2) for q in (kept, lone)}
    assert all(len(held[q]) == 2 for q in held)
    dead_key, dead_msgs = broker.keys_of(kept)[7:9]
    lone_keys = broker.keys_of(lone)[7:9]

    def dead_letter_and_keep(message):
        """Dead-letter it, then make the structures outlive it, as later dead letters would."""
        consumers[kept].nack([message])
        pipe = raw.pipeline(transaction=True)
        pipe.pttl(dead_key).zscore(dead_key, message.receipt).zrange(dead_key, 0, -1).hkeys(dead_msgs)
        pipe.persist(dead_key).persist(dead_msgs)
        expires_in, failed_at, members, fields, _, _ = pipe.execute()
        assert 0 < expires_in <= ttl  # they expire ttl after the last dead letter...
        return int(failed_at), members, fields  # ...so on ``kept`` only pruning can remove one

    first = held[kept][0]
    first_failed_at, members, fields = dead_letter_and_keep(first)
    assert members == fields == [first.receipt.encode()]
    consumers[lone].nack(held[lone][:1])
    assert [m.message_id for m in broker.dead_letters_of(kept)] == [sent[kept][0].message_id]
    assert len(broker.dead_letters_of(lone)) == 1

    wait_past(first_failed_at + ttl)
    # Nothing kept ``lone``'s structures alive: Redis dropped them with their last dead letter.
    deadline = time.monotonic() + 10
    while raw.exists(*lone_keys):
        assert time.monotonic() < deadline, "the dead letters of a queue outlived their TTL in Redis"
        time.sleep(0.02)  # Redis's own expiry, which no event announces
    assert broker.dead_letters_of(lone) == [] and broker.queue_counts(lone)["dead"] == 0

    # A new dead letter prunes the expired one from the structures it shares with it.
    second = held[kept][1]
    second_failed_at, members, fields = dead_letter_and_keep(second)
    assert members == fields == [second.receipt.encode()]
    assert [m.message_id for m in broker.dead_letters_of(kept)] == [second.message_id]

    wait_past(second_failed_at + ttl)
    # Reading counts prunes too, so an expired dead letter is never listed or counted.
    assert broker.queue_counts(kept)["dead"] == 0
    assert raw.zcard(dead_key) == 0 and raw.hlen(dead_msgs) == 0
    assert broker.dead_letters_of(kept) == [] and broker.requeue_dead(kept) == 0
    for consumer in consumers.values():
        consumer.close()


# --- isolation, delays, priorities ---------------------------------------------------------


def test_two_namespaces_side_by_side_do_not_see_each_other(make, queue_name):
    one = make(namespace=f"greenq-test-a-{uuid.uuid4().hex[:6]}")
    two = make(namespace=f"greenq-test-b-{uuid.uuid4().hex[:6]}")
    a = one.enqueue(message_for(queue_name, args=("a",)))
    b = two.enqueue(message_for(queue_name, args=("b",)))
    for broker, expected in ((one, a), (two, b)):
        consumer = broker.consume(queue_name)
        got = fetch_all(consumer, 2, timeout=1)
        assert [m.message_id for m in got] == [expected.message_id]
        consumer.ack(got)
        consumer.close()


def test_delayed_messages_are_promoted_exactly_once_with_racing_consumers(make, queue_name):
    broker = make()
    eta_delay = 500
    sent = broker.enqueue_many([message_for(queue_name, args=(i,)) for i in range(30)], delay=eta_delay)
    got, lock = [], threading.Lock()

    def consume():
        consumer = broker.consume(queue_name)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < 30:
            batch = consumer.fetch(5, 0.2)
            with lock:
                got.extend(batch)
            consumer.ack(batch)
        consumer.close()

    racers = [threading.Thread(target=consume) for _ in range(3)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(20)
    assert sorted(m.args[0] for m in got) == list(range(30))
    assert all(current_millis() >= m.options["eta"] for m in got)
    assert {m.message_id for m in got} == {m.message_id for m in sent}


def test_requeued_high_priority_message_wakes_a_blocked_consumer(make, raw, queue_name):
    broker = make(socket_timeout=None)  # one unbroken BLMOVE, so only a wake-up can end it early

    @greenq.actor(queue_name=queue_name, broker=broker, priority=3)
    def urgent():
        pass

    urgent.send()
    first = broker.consume(queue_name)
    (held,) = fetch_all(first, 1)
    waiter = broker.consume(queue_name)
    name = f"waiter-{uuid.uuid4().hex[:8]}"
    waiter._client().client_setname(name)  # its own one-connection pool: the BLMOVE runs on this connection
    result, returned = [], threading.Event()

    def wait():
        result.extend(waiter.fetch(1, 30))
        returned.set()

    thread = threading.Thread(target=wait)
    thread.start()
    deadline = time.monotonic() + 20
    while not any(c.get("name") == name and c.get("cmd") == "blmove" and "b" in c.get("flags", "")
                  for c in raw.client_list()):
        assert time.monotonic() < deadline and not returned.is_set(), "the waiter never blocked in BLMOVE"
        time.sleep(0.01)  # another client's state in Redis, which no event announces
    requeued_at = time.monotonic()
    first.requeue([held])
    assert returned.wait(10), "the blocked consumer was not woken by the requeue"
    woke_after = time.monotonic() - requeued_at
    thread.join(10)
    assert [m.message_id for m in result] == [held.message_id]
    assert woke_after < 5, f"woken {woke_after:.1f} s after the requeue: it waited out its block, not woken"
    waiter.ack(result)
    first.close()
    waiter.close()


def test_a_fetch_may_wait_longer_than_the_socket_timeout(make, queue_name):
    """redis-py reads with a socket timeout (5 s by default): a longer blocking wait is cut into slices."""
    broker = make(socket_timeout=0.5)
    consumer = broker.consume(queue_name)
    start = time.monotonic()
    assert consumer.fetch(1, 1.2) == []  # idle past two socket timeouts: no TimeoutError, just nothing
    assert time.monotonic() - start >= 1.2
    late = threading.Timer(1.0, lambda: broker.enqueue(message_for(queue_name)))  # after two socket timeouts
    late.start()
    try:
        got = consumer.fetch(1, 20)
    finally:
        late.join()
    assert len(got) == 1
    consumer.ack(got)
    consumer.close()


# --- other languages ---------------------------------------------------------------------


README = os.path.join(os.path.dirname(os.path.abspath(HERE)), "README.rst")


def readme_redis_cli_commands():
    """Every ``$ redis-cli ...`` command line of README.rst, backslash continuations joined."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    commands, i = [], 0
    while i < len(lines):
        text = lines[i].strip()
        i += 1
        if text.startswith("$ redis-cli "):
            text = text[2:]
            while text.endswith("\\") and i < len(lines):
                text = text[:-1] + " " + lines[i].strip()
                i += 1
            commands.append(text)
    return commands


def test_hand_written_redis_cli_recipe_is_processed(make, namespace, recorder):
    """The README's HSET-then-RPUSH recipe, exactly as printed (in a test namespace), runs an actor."""
    recipe = [c for c in readme_redis_cli_commands() if shlex.split(c)[1].upper() in ("HSET", "RPUSH")]
    assert [shlex.split(c)[1].upper() for c in recipe] == ["HSET", "RPUSH"], recipe
    assert all("'{greenq:default}." in c for c in recipe), "the README's recipe no longer uses the default keys"
    payload = json.loads(shlex.split(recipe[0])[4])
    message_id = shlex.split(recipe[0])[3]
    assert payload["message_id"] == message_id == shlex.split(recipe[1])[3]
    broker = make()

    @greenq.actor(queue_name=payload["queue_name"], broker=broker, actor_name=payload["actor_name"])
    def add(x, y):
        recorder.add(x + y)

    url = urlsplit(REDIS_URL)
    server = f"redis-cli -h {url.hostname or '127.0.0.1'} -p {url.port or 6379} -n {(url.path or '/0')[1:] or 0} "
    for command in recipe:
        assert command.startswith("redis-cli ")
        line = server + command[len("redis-cli "):].replace("{greenq:default}", "{%s:default}" % namespace)
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.strip() == "1", (line, done.stdout, done.stderr)
    assert broker.queue_counts("default")["ready"] == 1
    worker = greenq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        assert recorder.wait_for(1) == [sum(payload["args"])]
        worker.join(10000)
    finally:
        worker.stop(timeout=5000)
    assert broker.queue_counts("default") == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_is_logged_and_set_aside_never_a_crash(make, raw, namespace, queue_name, caplog):
    broker = make()
    broker.declare_queue(queue_name)
    prefix = "{%s:%s}" % (namespace, queue_name)
    raw.set(f"{prefix}.delayed", "someone else's value")  # a key of ours holding a foreign type
    # two more, which a fetch first touches midway, after its first writes (dead-lettering the pushed payload)
    raw.set(f"{prefix}.dead", "someone else's value")
    raw.rpush(f"{prefix}.meta", "someone else's list")
    raw.rpush(f"{prefix}.queue", "id-without-payload")
    raw.rpush(f"{prefix}.queue", json.dumps({"pushed": "a payload instead of an id"}))
    raw.hset(f"{prefix}.msgs", "not-wire-format", "[1, 2, 3]")
    raw.rpush(f"{prefix}.queue", "not-wire-format")
    good = broker.enqueue(message_for(queue_name))
    consumer = broker.consume(queue_name)
    got = fetch_all(consumer, 1)
    assert [m.message_id for m in got] == [good.message_id]
    consumer.ack(got)
    assert raw.type(f"{prefix}.delayed.invalid") == b"string"
    assert raw.type(f"{prefix}.dead.invalid") == b"string" and raw.type(f"{prefix}.meta.invalid") == b"list"
    failures = sorted(m.options["failure"] for m in broker.dead_letters_of(queue_name))
    assert len(failures) == 2 and all(f.startswith("DecodeError") for f in failures), failures
    text = caplog.text
    assert "id-without-payload" in text and ".delayed.invalid" in text and ".meta.invalid" in text
    raw.delete(f"{prefix}.delayed.invalid", f"{prefix}.dead.invalid", f"{prefix}.meta.invalid")
    consumer.close()


def test_a_send_moves_aside_a_foreign_value_in_the_keys_it_writes(make, raw, queue_name, caplog):
    """The payload hash is written first, then the list: a foreign list key must not leave the payload
    stored and the message nowhere (a send that fails halfway, or an orphan in .msgs)."""
    broker = make()
    prefix = broker.prefix(queue_name)
    raw.set(f"{prefix}.queue", "someone else's value")
    raw.rpush(f"{prefix}.pri", "someone else's list")

    @greenq.actor(queue_name=queue_name, broker=broker, priority=5)
    def urgent_job():
        pass

    with caplog.at_level("WARNING", logger="greenq.brokers.redis"):
        plain = broker.enqueue(message_for(queue_name, args=(1,)))
        urgent = broker.enqueue(message_for(queue_name, actor_name="urgent_job"))
    assert raw.type(f"{prefix}.queue.invalid") == b"string" and raw.type(f"{prefix}.pri.invalid") == b"list"
    assert ".queue.invalid" in caplog.text and ".pri.invalid" in caplog.text
    consumer = broker.consume(queue_name)
    got = fetch_all(consumer, 2)
    assert [m.message_id for m in got] == [urgent.message_id, plain.message_id]
    consumer.ack(got)
    assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    assert not raw.exists(f"{prefix}.msgs")
    raw.delete(f"{prefix}.queue.invalid", f"{prefix}.pri.invalid")
    consumer.close()


def test_unreachable_redis_raises_greenq_connection_error_without_password(queue_name):
    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker("redis://:hunter2@127.0.0.1:16998/0")
    try:
        with pytest.raises(greenq.ConnectionError) as info:
            broker.enqueue(message_for(queue_name))
        assert "hunter2" not in str(info.value) and "127.0.0.1:16998" in str(info.value)
        with pytest.raises(greenq.ConnectionError):
            broker.ping()
    finally:
        broker.close()


def test_a_redis_too_old_for_greenqs_commands_is_named_in_the_error(make, queue_name, monkeypatch):
    """Redis before 6.2 lacks commands the scripts use; the error says which version is needed and found."""
    import redis

    from greenq.errors import BrokerError

    broker = make()

    def refuse(*args, **kwargs):  # what a Redis 6.0 answers to SMISMEMBER inside a script
        raise redis.exceptions.ResponseError("Unknown Redis command called from Lua script")

    monkeypatch.setattr(broker, "run", refuse)
    real_info = broker.client.info
    monkeypatch.setattr(broker.client, "info", lambda section=None: {"redis_version": "6.0.16"})
    with pytest.raises(BrokerError) as old:
        broker.enqueue(message_for(queue_name))
    assert "needs Redis 6.2 or newer; this server reports version 6.0.16" in str(old.value)
    monkeypatch.setattr(broker.client, "info", real_info)  # the real server, new enough: no such hint
    with pytest.raises(BrokerError) as new:
        broker.enqueue(message_for(queue_name))
    assert "Unknown Redis command" in str(new.value) and "needs Redis" not in str(new.value)


def test_broker_from_url_picks_redis():
    from greenq.brokers import broker_from_url
    from greenq.brokers.redis import RedisBroker

    broker = broker_from_url("redis://127.0.0.1:6379/0")
    assert isinstance(broker, RedisBroker)
    broker.close()


# --- a private redis-server for the tests that break connections -----------------------------


def free_port():
    for port in range(16100 + os.getpid() % 400, 16999):
        if not port_open("127.0.0.1", port):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port in 16100-16999")


@pytest.fixture
def private_redis(tmp_path):
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert time.monotonic() < deadline and server.poll() is None, "private redis-server did not start"
        time.sleep(0.05)  # waiting for a process to listen, which has no event
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)


def test_worker_reconnects_after_losing_its_connections(private_redis, queue_name, recorder):
    import redis

    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker(private_redis, namespace="reconnect")
    admin = redis.Redis.from_url(private_redis)

    @greenq.actor(queue_name=queue_name, broker=broker)
    def record(i):
        recorder.add(i)

    worker = greenq.Worker(broker, worker_timeout=200)
    worker.start()
    try:
        record.send(1)
        recorder.wait_for(1)
        admin.client_kill_filter(_type="normal", skipme=True)  # every other connection drops
        record.send(2)
        assert sorted(recorder.wait_for(2)) == [1, 2]
    finally:
        worker.stop(timeout=5000)
        broker.close()
        admin.close()


def test_enqueue_many_and_ack_many_are_one_round_trip_each(private_redis, queue_name):
    import redis

    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker(private_redis, namespace="trips", heartbeat_timeout=3600000)  # no beats meanwhile
    admin = redis.Redis.from_url(private_redis)
    broker.enqueue(message_for(queue_name))  # loads the scripts
    consumer = broker.consume(queue_name)
    consumer.ack(fetch_all(consumer, 1))

    def commands():
        """Round trips from clients: script calls, not the commands scripts run inside Redis."""
        stats = admin.info("commandstats")
        return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval", "multi", "exec"))

    before = commands()
    broker.enqueue_many([message_for(queue_name, args=(i,)) for i in range(200)])
    assert commands() - before == 1
    got = fetch_all(consumer, 200)
    assert len(got) == 200
    before = commands()
    consumer.ack(got)
    assert commands() - before == 1
    others = [f"{queue_name}-{i}" for i in range(3)]
    before = commands()
    broker.enqueue_many([message_for(q, args=(i,)) for i in range(10) for q in others])
    assert commands() - before == 3  # three EVALSHAs in one pipeline
    admin.script_flush()  # a restarted Redis forgets scripts: load once, replay
    broker.enqueue_many([message_for(q) for q in others])
    assert [broker.queue_counts(q)["ready"] for q in others] == [11, 11, 11]
    consumer.close()
    broker.close()
    admin.close()


def test_every_script_is_passed_each_key_its_code_names():
    """Each script is passed only some of a queue's keys (SCRIPT_KEYS); a key its code names but is not
    passed would fail only when that code runs, perhaps on a rare path (a reaper, a dead letter)."""
    import re

    from greenq.brokers import _redis_scripts

    for name, text in _redis_scripts.SCRIPTS.items():
        passed = set(re.findall(r"^local (K_[A-Z]+) = KEYS\[\d+\]$", text, flags=re.M))
        named = set(re.findall(r"\bK_[A-Z]+\b", text))
        assert named <= passed, f"script {name!r} names {sorted(named - passed)} without being passed them"
        assert len(passed) == len(_redis_scripts.SCRIPT_KEYS[name]) + (name in _redis_scripts._HELD)


def test_fetch_and_ack_run_a_few_commands_per_batch_not_per_message(private_redis, queue_name):
    """The scripts batch their commands, so Redis's work per message stays small; a batch bigger than
    the scripts' chunk of 1000 keys is split and still taken and settled whole, in order."""
    import redis

    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker(private_redis, namespace="batched", heartbeat_timeout=3600000)  # no beats meanwhile
    admin = redis.Redis.from_url(private_redis)
    n = 2500
    broker.enqueue_many([message_for(queue_name, args=(i,)) for i in range(n)])
    consumer = broker.consume(queue_name)

    def inner_commands():
        """Commands run inside the scripts, not the calls around them (a first call of each script on a
        connection also loads it, a new connection says HELLO)."""
        around = {"cmdstat_evalsha", "cmdstat_script|load", "cmdstat_hello", "cmdstat_info"}
        return sum(s["calls"] for name, s in admin.info("commandstats").items() if name not in around)

    before = inner_commands()
    got = consumer.fetch(n, 5)
    fetch_commands = inner_commands() - before
    assert [m.args[0] for m in got] == list(range(n))
    before = inner_commands()
    consumer.ack(got)
    ack_commands = inner_commands() - before
    # one HMGET of payloads, one of lost deliveries and one SADD per chunk of 1000, one LPOP per chunk,
    # and a fixed set per fetch (the heartbeat, the reaper, the priority pop and the delay look-ups)
    assert fetch_commands <= 40, fetch_commands
    assert ack_commands == 3 * 5  # per chunk: SMISMEMBER, SREM, and HDEL of payload, priority, deliveries
    assert broker.queue_counts(queue_name) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    prefix = broker.prefix(queue_name)
    assert not admin.exists(f"{prefix}.msgs", f"{prefix}.held.{consumer.cid}", f"{prefix}.queue")
    consumer.close()
    broker.close()
    admin.close()


def test_a_script_call_goes_to_the_brokers_own_connection_and_falls_back_to_redis_py_when_it_must(
        private_redis, queue_name, monkeypatch):
    """``send()`` skips redis-py's pool and command layers and loads its script itself; a broken call goes
    through redis-py's ``Script``, and the next call is back on the broker's own connection."""
    import redis
    from redis.commands.core import Script

    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker(private_redis, namespace="direct", heartbeat_timeout=3600000)
    admin = redis.Redis.from_url(private_redis)
    admin.script_flush()
    through_script = []
    usual = Script.__call__
    monkeypatch.setattr(Script, "__call__", lambda self, *a, **kw: through_script.append(1) or usual(self, *a, **kw))
    checkouts = count_pool_checkouts(monkeypatch, broker)
    try:
        broker.enqueue(message_for(queue_name, args=(1,)))  # Redis has not seen the script: loaded, called again
        broker.enqueue(message_for(queue_name, args=(2,)))  # the usual case: the broker's own connection
        broker.ping()  # the worker command's start-up check: on the lane too
        assert through_script == [] and checkouts == []  # the pool lent nothing
        assert broker._lane._open == 1 and len(broker._lane._idle) == 1
        admin.script_flush()  # as after a restart: EVALSHA fails before anything ran, the lane loads the script
        broker.enqueue(message_for(queue_name, args=(3,)))
        assert through_script == [] and admin.script_exists(broker._scripts["enqueue"].sha) == [True]
        admin.client_kill_filter(_type="normal", skipme=True)  # the lane's connection is gone: nothing ran
        broker.enqueue(message_for(queue_name, args=(4,)))  # so redis-py sends it, on a connection of its pool
        assert through_script == [1]
        broker.enqueue(message_for(queue_name, args=(5,)))  # and the lane reconnects for the next one
        assert through_script == [1]
        connection_class = broker.client.connection_pool.connection_class
        read_response = connection_class.read_response
        broken = []

        def lose_the_first_answer(self, *a, **kw):
            if not broken:
                broken.append(1)
                raise redis.exceptions.ConnectionError("the connection broke before the answer came")
            return read_response(self, *a, **kw)

        monkeypatch.setattr(connection_class, "read_response", lose_the_first_answer)
        broker.enqueue(message_for(queue_name, args=(6,)))  # ran, then the answer was lost: redis-py sends it again
        monkeypatch.setattr(connection_class, "read_response", read_response)
        assert broken == [1] and through_script == [1, 1]
        broker.enqueue(message_for(queue_name, args=(7,)))
        assert through_script == [1, 1] and broker._lane._open == 1
        consumer = broker.consume(queue_name)
        got = sorted(m.args[0] for m in fetch_all(consumer, 8))
        assert got == [1, 2, 3, 4, 5, 6, 6, 7]  # each stored once; the lost answer's message twice (at-least-once)
        consumer.close()
    finally:
        broker.close()
        admin.close()


def test_250_greenlets_sending_keep_the_connection_count_flat(private_redis, queue_name):
    code = f"""
import gevent.monkey; gevent.monkey.patch_all()
import gevent, redis
from greenq.brokers.redis import RedisBroker
from greenq.message import Message
broker = RedisBroker({private_redis!r}, namespace="flat", max_connections=16)
def send(i):
    for j in range(4):
        broker.enqueue(Message(queue_name={queue_name!r}, actor_name="noop", args=(i, j), kwargs={{}}, options={{}}))
gevent.joinall([gevent.spawn(send, i) for i in range(250)], raise_error=True)
admin = redis.Redis.from_url({private_redis!r})
print(admin.info("clients")["connected_clients"], broker.queue_counts({queue_name!r})["ready"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(HERE))
    assert out.returncode == 0, out.stderr[-2000:]
    clients, ready = map(int, out.stdout.split())
    assert ready == 1000
    assert clients <= 16 + 2, clients
