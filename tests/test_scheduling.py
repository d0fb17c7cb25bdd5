"""Periodic and cron actors: next-fire times (DST), bad input (crontab field order), missed-tick policy,
exactly-once firing with three worker processes racing, leader takeover after
kill -9, and a scheduler that loses its Redis store and gets it back."""

import datetime
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from zoneinfo import ZoneInfo

import pytest

import greenq
from greenq.brokers.stub import StubBroker
from greenq.middleware import Middleware
from greenq.scheduling import Cron, Every, MemoryStore, ScheduleError, Scheduler, StoreError, store_for

from redis_helpers import REDIS_URL, require_server

HERE = os.path.dirname(os.path.abspath(__file__))
PARIS = ZoneInfo("Europe/Paris")


def paris_ms(y, mo, d, h, mi, fold=0):
    return int(datetime.datetime(y, mo, d, h, mi, tzinfo=PARIS, fold=fold).timestamp() * 1000)


def paris(t_ms):
    return datetime.datetime.fromtimestamp(t_ms / 1000, PARIS).isoformat()


def ticks(schedule, start, n):
    out = []
    for _ in range(n):
        start = schedule.next_after(start)
        out.append(start)
    return out


# --- next-fire times ------------------------------------------------------------------------


def test_intervals_are_aligned_to_the_epoch():
    every = Every(25)
    assert every.next_after(0) == 25000
    assert every.next_after(24999) == 25000
    assert every.next_after(25000) == 50000
    assert every.last_at_or_before(49999) == 25000
    assert Every(0.5).next_after(1234) == 1500


def test_cron_in_utc_by_default():
    cron = Cron("0 5 * * tue")
    start = int(datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc).timestamp() * 1000)  # a Sunday
    first = datetime.datetime.fromtimestamp(cron.next_after(start) / 1000, datetime.timezone.utc)
    assert first == datetime.datetime(2026, 11, 24, 5, 0, tzinfo=datetime.timezone.utc)


def test_cron_spring_forward_fires_skipped_times_once_at_the_end_of_the_gap():
    # 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    daily = Cron("30 2 * * *", timezone="Europe/Paris")
    assert [paris(t) for t in ticks(daily, paris_ms(2026, 3, 28, 12, 0), 3)] == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]
    quarterly = Cron("*/15 2 * * *", timezone="Europe/Paris")
    assert [paris(t) for t in ticks(quarterly, paris_ms(2026, 3, 29, 1, 0), 2)] == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]
    hourly = Cron("0 * * * *", timezone="Europe/Paris")
    got = ticks(hourly, paris_ms(2026, 3, 29, 0, 30), 3)
    assert [paris(t) for t in got] == ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00",
                                       "2026-03-29T04:00:00+02:00"]
    assert got[1] - got[0] == 3600 * 1000  # one real hour between 01:00 CET and 03:00 CEST


def test_cron_fall_back_fires_a_repeated_time_once():
    # 2026-10-25 in Paris: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    daily = Cron("30 2 * * *", timezone="Europe/Paris")
    assert [paris(t) for t in ticks(daily, paris_ms(2026, 10, 24, 12, 0), 2)] == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    # From inside the second pass through 02:xx, the next 02:30 is tomorrow's.
    second_pass = paris_ms(2026, 10, 25, 2, 10, fold=1)
    assert paris(daily.next_after(second_pass)) == "2026-10-26T02:30:00+01:00"
    hourly = Cron("0 * * * *", timezone="Europe/Paris")
    assert [paris(t) for t in ticks(hourly, paris_ms(2026, 10, 25, 0, 30), 4)] == [
        "2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00"]


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    ({"seconds": 0}, ["'bad_job'", "0"]),
    ({"seconds": -5}, ["'bad_job'", "-5"]),
    ({"seconds": "25"}, ["'bad_job'", "'25'"]),
    ({"seconds": float("nan")}, ["'bad_job'", "nan"]),
    ({"crontab": "61 * * * *"}, ["'bad_job'", "'61 * * * *'"]),
    ({"crontab": "not a crontab"}, ["'bad_job'", "'not a crontab'"]),
    ({"crontab": "0 0 30 2 *"}, ["'bad_job'", "'0 0 30 2 *'"]),
    ({"crontab": "0 5 * * *", "timezone": "Mars/Olympus"}, ["'bad_job'", "'Mars/Olympus'"]),
])
def test_bad_schedules_fail_at_decoration_naming_actor_and_value(kwargs, words):
    def bad_job():
        pass

    if "crontab" in kwargs:
        decorator = greenq.cron(kwargs["crontab"], timezone=kwargs.get("timezone"), broker=StubBroker())
    else:
        decorator = greenq.periodic(kwargs["seconds"], broker=StubBroker())
    with pytest.raises(ScheduleError) as info:
        decorator(bad_job)
    assert isinstance(info.value, greenq.ActorOptionError)
    for word in words:
        assert word in str(info.value)


def test_decorators_need_their_schedule():
    with pytest.raises(ScheduleError, match="needs an interval"):
        @greenq.periodic
        def job():
            pass
    with pytest.raises(ScheduleError, match="catch_up"):
        greenq.periodic(5, catch_up="yes", broker=StubBroker())(lambda: None)


def test_the_issue_example_with_the_day_in_the_wrong_field_says_so_and_suggests_the_fix():
    def weekly_report():
        pass

    with pytest.raises(ScheduleError) as info:
        greenq.cron("0 5 tue * *", broker=StubBroker())(weekly_report)
    text = str(info.value)
    assert text.startswith("actor 'weekly_report': invalid crontab '0 5 tue * *'")
    assert "field 3 (day-of-month) holds 'tue', a day name, which belongs in field 5 (day-of-week)" in text
    assert "standard crontab order is minute hour day-of-month month day-of-week" in text
    assert text.endswith("Did you mean '0 5 * * tue'?")
    Cron("0 5 * * tue")  # the suggestion is valid


@pytest.mark.parametrize("expression, says, suggestion", [
    ("0 5 mon-fri * *", "field 3 (day-of-month) holds 'mon-fri', a day name", "Did you mean '0 5 * * mon-fri'?"),
    ("0 5 * TUE *", "field 4 (month) holds 'TUE', a day name", "Did you mean '0 5 * * TUE'?"),
    ("0 5 * * jan", "field 5 (day-of-week) holds 'jan', a month name, which belongs in field 4 (month)",
     "Did you mean '0 5 * jan *'?"),
    ("0 5 jan tue *", "field 3 (day-of-month) holds 'jan', a month name", "Did you mean '0 5 * jan tue'?"),
    ("5 30 * * *", "field 2 (hour) holds '30', which is not a valid hour (0-23) but is a valid minute",
     "If the two are swapped, you mean '30 5 * * *'"),
    ("0 5 12 25 *", "field 4 (month) holds '25', which is not a valid month", "you mean '0 5 25 12 *'"),
    # A name in the minute or hour field: explained, but swapping in a '*' would change the meaning, so no guess.
    ("tue 5 * * *", "field 1 (minute) holds 'tue', a day name, which belongs in field 5 (day-of-week)", None),
    ("0 5 * * 0-8", "field 5 (day-of-week) holds '0-8', which is not valid there (it takes 0-7 or sun-sat", None),
    ("0 5 * *", "a crontab has five fields (minute hour day-of-month month day-of-week), this one has 4", None),
    ("0 0 5 ? * TUE", "'?' is Quartz syntax", None),
])
def test_an_invalid_crontab_says_which_field_is_wrong(expression, says, suggestion):
    with pytest.raises(ScheduleError) as info:
        Cron(expression)
    text = str(info.value)
    assert text.startswith(f"invalid crontab {expression!r}: ") and says in text, text
    if suggestion is None:
        assert "mean" not in text, text
    else:
        assert text.endswith(suggestion), text
        Cron(suggestion.split("'")[1])


def test_a_rabbitmq_broker_must_name_a_store_and_subclasses_lend_theirs(tmp_path):
    from greenq.brokers.rabbitmq import RabbitmqBroker  # builds no connection until used
    from greenq.brokers.redis import RedisBroker
    from greenq.brokers.sqlite import SqliteBroker
    from greenq.scheduling.redis_store import RedisStore
    from greenq.scheduling.sqlite_store import SqliteStore

    rabbit = RabbitmqBroker("amqp://guest:guest@127.0.0.1:5672/")
    try:
        with pytest.raises(StoreError) as info:
            store_for(broker=rabbit, purpose="the scheduler")
        assert str(info.value) == (
            "the scheduler needs a Redis or SQLite store and cannot keep its state in a RabbitmqBroker: "
            "pass url='redis://host:6379/0' or url='sqlite:///path/to/file' (or store=...)")
    finally:
        rabbit.close()

    class TenantRedisBroker(RedisBroker):
        pass

    class TenantSqliteBroker(SqliteBroker):
        pass

    class TenantStubBroker(StubBroker):
        pass

    redis_broker = TenantRedisBroker(REDIS_URL, namespace="greenq-test-subclass")  # connects lazily
    sqlite_broker = TenantSqliteBroker(path=str(tmp_path / "tenant.sqlite3"))
    try:
        store = store_for(broker=redis_broker)
        assert isinstance(store, RedisStore) and store.client is redis_broker.client
        assert store.namespace == "greenq-test-subclass"
        store = store_for(broker=sqlite_broker)
        assert isinstance(store, SqliteStore) and store.db is sqlite_broker.db
        assert isinstance(store_for(broker=TenantStubBroker()), MemoryStore)
    finally:
        redis_broker.close()
        sqlite_broker.close()


# --- the missed-tick policy, on the memory store ---------------------------------------------


class Sent(Middleware):
    def __init__(self):
        self.ticks = []

    def after_enqueue(self, broker, message, delay):
        self.ticks.append(message.options.get("scheduled_at"))


@pytest.mark.parametrize("catch_up", [True, False])
def test_first_sight_fires_nothing_and_downtime_fires_once_or_skips(catch_up, caplog):
    broker = StubBroker()
    sent = Sent()
    broker.add_middleware(sent)

    @greenq.periodic(10, broker=broker, catch_up=catch_up, actor_name=f"job_{catch_up}")
    def job():
        pass

    scheduler = Scheduler(store=MemoryStore(), lease_ttl=1000, misfire_grace=0)
    entry = scheduler.entries_for(broker)[0]
    now = int(time.time() * 1000)
    next_tick = scheduler._fire_due(broker, entry)  # first sight: a baseline, nothing fired
    assert sent.ticks == [] and now < next_tick <= now + 10000 + 50
    # Pretend the deployment was down for five intervals.
    scheduler.store._ticks[entry.key] = now - 50000
    caplog.set_level(logging.WARNING, logger="greenq.scheduling")
    scheduler._fire_due(broker, entry)
    scheduler._fire_due(broker, entry)
    latest = Every(10).last_at_or_before(int(time.time() * 1000))
    assert sent.ticks == ([latest] if catch_up else [])
    assert scheduler.store.last_fired(entry.key) == latest
    assert ("fired once" if catch_up else "skipped") in caplog.text


def test_a_failed_send_gives_the_tick_back(monkeypatch, caplog):
    broker = StubBroker()

    @greenq.periodic(10, broker=broker, actor_name="job_send_fails")
    def job():
        pass

    scheduler = Scheduler(store=MemoryStore(), lease_ttl=1000)
    entry = scheduler.entries_for(broker)[0]
    before = int(time.time() * 1000) - 20000
    scheduler.store._ticks[entry.key] = before

    def refuse(message, delay=None):
        raise greenq.ConnectionError("broker down")

    monkeypatch.setattr(broker, "enqueue", refuse)
    retry_at = scheduler._fire_due(broker, entry)
    assert scheduler.store.last_fired(entry.key) == before
    assert "Could not send 'job_send_fails'" in caplog.text and "broker down" in caplog.text
    assert retry_at <= time.time() * 1000 + 1000
    monkeypatch.undo()
    scheduler._fire_due(broker, entry)
    assert scheduler.store.last_fired(entry.key) > before
    assert broker.queue_counts("default")["ready"] == 1


# --- RabbitMQ: the state lives in a store named by URL -----------------------------------------


def _drop_keys(*keys):
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.delete(*keys)
    client.close()


def test_a_rabbitmq_deployment_fires_its_schedule_with_a_redis_store_named_by_url(queue_name, recorder):
    require_server("RabbitMQ", "127.0.0.1", 5672)
    require_server("Redis", "127.0.0.1", 6379)
    from greenq.brokers.rabbitmq import RabbitmqBroker
    from greenq.middleware import CurrentMessage
    from greenq.scheduling.redis_store import RedisStore

    broker = RabbitmqBroker("amqp://guest:guest@127.0.0.1:5672/")
    lease = f"greenq-test-rabbit-{uuid.uuid4().hex[:8]}"
    actor_name = f"rabbit_{queue_name}"
    try:
        @greenq.periodic(0.3, broker=broker, queue_name=queue_name, actor_name=actor_name)
        def job():
            recorder.add(CurrentMessage.get_current_message().options["scheduled_at"])

        with pytest.raises(StoreError) as info:
            Scheduler(lease_name=lease).start(broker)
        assert str(info.value) == (
            "the scheduler needs a Redis or SQLite store and cannot keep its state in a RabbitmqBroker: "
            "pass url='redis://host:6379/0' or url='sqlite:///path/to/file' (or store=...)")

        scheduler = Scheduler(url=REDIS_URL, lease_name=lease, lease_ttl=600)
        broker.add_middleware(CurrentMessage())
        broker.add_middleware(scheduler)
        broker.emit_after("process_boot")
        worker = greenq.Worker(broker, worker_threads=2, worker_timeout=100)
        worker.start()  # after_worker_boot starts the scheduler
        try:
            ran = recorder.wait_for(3, timeout=30)
        finally:
            worker.stop(timeout=5000)
        assert isinstance(scheduler.store, RedisStore) and scheduler.store.url == REDIS_URL
        assert len(ran) == len(set(ran)) and all(t % 300 == 0 for t in ran)
        assert scheduler.store.last_fired(actor_name) >= max(ran)
    finally:
        try:
            broker.delete_queues()
        finally:
            broker.close()
            _drop_keys(f"greenq:schedule:fired:{actor_name}", f"greenq:schedule:lease:{lease}")


# --- real processes ----------------------------------------------------------------------------


def read_ledger(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_worker(args):
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "scheduling_worker.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def stop_all(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["redis", "sqlite"])
def target(request, tmp_path):
    namespace = f"greenq-test-sched-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        yield "redis", REDIS_URL, namespace
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
            keys = list(client.scan_iter(match=pattern, count=500))
            if keys:
                client.delete(*keys)
        client.close()
    else:
        yield "sqlite", str(tmp_path / "sched.sqlite3"), namespace


def test_three_processes_fire_each_tick_once_and_survive_kill_9_of_the_leader(target, tmp_path):
    kind, where, namespace = target
    ledger = str(tmp_path / "ledger.txt")
    queue = f"sched{uuid.uuid4().hex[:8]}"
    args = [kind, where, namespace, queue, ledger, "0.5", "1500"]
    procs = [start_worker(args) for _ in range(3)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()

        def fired():
            return [line for line in read_ledger(ledger) if line[0] == "F"]

        first = wait_until(lambda: (lambda f: f if len(f) >= 4 else None)(fired()), 30, "4 ticks fired")
        leader_pid = int(first[-1][2])
        leader = next(p for p in procs if p.pid == leader_pid)
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        killed_at = int(time.time() * 1000)
        wait_until(lambda: [f for f in fired() if int(f[1]) > killed_at and int(f[2]) != leader_pid][2:], 30,
                   "3 ticks fired by a new leader after kill -9")
    finally:
        stop_all(procs)
    lines = read_ledger(ledger)
    fires = Counter(int(line[1]) for line in lines if line[0] == "F")
    assert fires and all(count == 1 for count in fires.values()), fires
    assert len({line[2] for line in lines if line[0] == "F"}) >= 2  # another process took over
    runs = Counter(int(line[1]) for line in lines if line[0] == "R")
    assert set(runs) <= set(fires)
    fired_before_kill = sorted(t for t in fires if t < killed_at - 1000)
    assert all(t in runs for t in fired_before_kill[:-1])  # every fired tick ran (the last may have died with it)
    steps = {b - a for a, b in zip(sorted(fires), sorted(fires)[1:])}
    assert 500 in steps and all(step % 500 == 0 for step in steps)


# --- losing the store ----------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of our own on a free port in 16900-16949 (append-only file, so a restart keeps the data)."""
    import shutil

    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI requires it)")
        pytest.skip("redis-server is not installed")
    import random

    port = random.choice([p for p in range(16900, 16950) if not _open(p)])
    folder = tmp_path / "redis-data"
    folder.mkdir()

    def start():
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                 "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _answers(port), 10, "the test Redis to answer")
        return proc

    state = {"proc": start()}

    def stop():
        state["proc"].terminate()
        state["proc"].wait(10)

    def restart():
        state["proc"] = start()

    yield f"redis://127.0.0.1:{port}/0", stop, restart
    if state["proc"].poll() is None:
        stop()


def _open(port):
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _answers(port):
    import redis

    try:
        return redis.Redis(port=port, socket_connect_timeout=0.2).ping()
    except redis.exceptions.ConnectionError:
        return False


def test_a_scheduler_that_loses_its_store_stops_and_resumes_without_double_firing(own_redis, caplog):
    url, stop_redis, restart_redis = own_redis
    caplog.set_level(logging.INFO, logger="greenq.scheduling")
    broker = StubBroker()
    sent = Sent()
    broker.add_middleware(sent)

    @greenq.periodic(0.3, broker=broker, actor_name="job_store_loss")
    def job():
        pass

    scheduler = Scheduler(url=url, lease_ttl=600)
    scheduler.start(broker)
    try:
        wait_until(lambda: len(sent.ticks) >= 2, 15, "two ticks fired")
        stop_redis()
        wait_until(lambda: "lost its store" in caplog.text, 15, "the scheduler to say it lost its store")
        during = len(sent.ticks)
        last = max(sent.ticks)
        wait_until(lambda: time.time() * 1000 > last + 1200, 5, "four ticks' worth of outage")
        assert len(sent.ticks) == during  # nothing fires without the store
        restart_redis()
        wait_until(lambda: "answers again" in caplog.text, 15, "the scheduler to say its store is back")
        wait_until(lambda: len(sent.ticks) >= during + 2, 15, "ticks to fire again")
    finally:
        scheduler.stop()
    assert len(sent.ticks) == len(set(sent.ticks)), sent.ticks
    assert "missed ticks" in caplog.text and "fired once" in caplog.text  # the outage is reported, caught up once
