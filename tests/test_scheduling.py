"""Periodic and cron actors: next-fire times (DST), bad input (crontab field order),
the store's schedule verbs and the missed-tick policy on memory, Redis and SQLite,
a firer that crashes between claiming a tick and confirming its send, exactly-once
firing with three worker processes racing and through the real worker command
(two masters, -p 2) with kill -9 of the lease holder, RabbitMQ with a Redis store,
and a scheduler that loses its Redis store and gets it back."""

import datetime
import logging
import os
import re
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
from greenq.scheduling.scheduler import tick_message_id
from greenq.scheduling.store import Claim, ScheduleState

from support import REDIS_URL, drop_redis_namespace, require_server

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


# --- the store's schedule verbs and the missed-tick policy, on every store ---------------------


@pytest.fixture(params=["memory", "redis", "sqlite"])
def kind(request):
    if request.param == "redis":
        require_server("Redis", "127.0.0.1", 6379)
    return request.param


@pytest.fixture
def store(kind, tmp_path):
    if kind == "memory":
        yield MemoryStore()
    elif kind == "redis":
        from greenq.scheduling.redis_store import RedisStore

        namespace = f"greenq-test-store-{uuid.uuid4().hex[:8]}"
        made = RedisStore(url=REDIS_URL, namespace=namespace)
        yield made
        made.close()
        drop_redis_namespace(namespace)
    else:
        from greenq.scheduling.sqlite_store import SqliteStore

        made = SqliteStore(path=str(tmp_path / "store.sqlite3"))
        yield made
        made.close()


@pytest.fixture
def broker_and_store(kind, tmp_path):
    """A broker of the kind and the store it lends (the pairing a deployment uses)."""
    if kind == "memory":
        broker = StubBroker()
    elif kind == "redis":
        from greenq.brokers.redis import RedisBroker

        broker = RedisBroker(REDIS_URL, namespace=f"greenq-test-sched-{uuid.uuid4().hex[:8]}")
    else:
        from greenq.brokers.sqlite import SqliteBroker

        broker = SqliteBroker(path=str(tmp_path / "broker.sqlite3"))
    broker.emit_after("process_boot")
    yield broker, store_for(broker=broker)
    if kind == "redis":
        broker.flush_all()
        drop_redis_namespace(broker.namespace)
    broker.close()


def test_the_schedule_verbs(store):
    key = "job"
    assert store.schedule_state(key) == ScheduleState(None, None)
    assert store.init_fired(key, 100) == 100 and store.init_fired(key, 200) == 100
    assert store.claim_tick(key, 100) is False  # not later than the record
    assert store.claim_tick(key, 200, "c1", "h1") is True
    assert store.schedule_state(key) == ScheduleState(200, Claim(200, "c1", "h1"))
    assert store.claim_tick(key, 300, "c2", "h2") is False  # an unconfirmed claim must be settled first
    store.confirm_tick(key, 200, "not-c1")
    assert store.schedule_state(key).pending == Claim(200, "c1", "h1")
    store.confirm_tick(key, 200, "c1")
    assert store.schedule_state(key) == ScheduleState(200, None)
    assert store.last_fired(key) == 200

    # Abandoning puts the previous tick back and makes the tick contested: its first copy to start runs.
    assert store.claim_tick(key, 300, "c2", "h2") is True
    assert store.abandon_tick(key, 300, "not-c2") is False
    assert store.abandon_tick(key, 300, "c2") is True
    assert store.schedule_state(key) == ScheduleState(200, None)
    assert store.abandon_tick(key, 300, "c2") is False
    assert store.claim_tick(key, 300, "c3", "h3") is True
    assert store.claim_run(key, 300, "c2") is True  # the abandoned copy started first: it is the runner
    assert store.schedule_state(key).pending == Claim(300, "c3", "h3")  # another copy's claim stays
    assert store.claim_run(key, 300, "c2") is True  # its redelivery runs too
    assert store.claim_run(key, 300, "c3") is False  # the copy sent again is a duplicate...
    assert store.schedule_state(key) == ScheduleState(300, None)  # ...and its start confirms its claim
    assert store.claim_run(key, 200, "x") is True and store.claim_run(key, 200, "y") is True  # uncontested

    # A copy that starts before its firer confirms confirms the claim itself, so no takeover undoes it.
    assert store.claim_tick(key, 400, "c4", "h4") is True
    assert store.claim_run(key, 400, "c4") is True
    assert store.schedule_state(key) == ScheduleState(400, None)
    assert store.abandon_tick(key, 400, "c4") is False

    assert store.claim_tick(key, 500) is True  # a skipped tick: final at once
    assert store.schedule_state(key) == ScheduleState(500, None)
    store.set_fired(key, 50)
    assert store.schedule_state(key) == ScheduleState(50, None)

    # Only the 16 latest contested ticks are remembered.
    for tick in range(1000, 1017):
        assert store.claim_tick(key, tick, f"a{tick}", "h") and store.abandon_tick(key, tick, f"a{tick}")
    assert store.claim_run(key, 1016, "first") is True and store.claim_run(key, 1016, "second") is False
    assert store.claim_run(key, 1001, "first") is True and store.claim_run(key, 1001, "second") is False
    assert store.claim_run(key, 1000, "first") is True and store.claim_run(key, 1000, "second") is True


class Sent(Middleware):
    def __init__(self):
        self.ticks = []
        self.messages = []

    def after_enqueue(self, broker, message, delay):
        self.ticks.append(message.options.get("scheduled_at"))
        self.messages.append(message)


@pytest.mark.parametrize("catch_up", [True, False])
def test_first_sight_fires_nothing_and_downtime_fires_once_or_skips(store, catch_up, caplog, monkeypatch):
    broker = StubBroker()
    sent = Sent()
    broker.add_middleware(sent)

    @greenq.periodic(10, broker=broker, catch_up=catch_up, actor_name=f"job_{catch_up}")
    def job():
        pass

    scheduler = Scheduler(store=store, lease_ttl=1000, misfire_grace=0)
    entry = scheduler.entries_for(broker)[0]
    now = _stop_clock(monkeypatch)
    next_tick = scheduler._fire_due(broker, entry)  # first sight: a baseline, nothing fired
    assert sent.ticks == [] and now < next_tick <= now + 10000
    # Pretend the deployment was down for five intervals.
    store.set_fired(entry.key, now - 50000)
    caplog.set_level(logging.WARNING, logger="greenq.scheduling")
    scheduler._fire_due(broker, entry)
    scheduler._fire_due(broker, entry)
    latest = Every(10).last_at_or_before(now)
    assert sent.ticks == ([latest] if catch_up else [])
    assert store.schedule_state(entry.key) == ScheduleState(latest, None)
    assert ("fired once" if catch_up else "skipped") in caplog.text


def test_a_failed_send_gives_the_tick_back(store, monkeypatch, caplog):
    broker = StubBroker()

    @greenq.periodic(10, broker=broker, actor_name="job_send_fails")
    def job():
        pass

    scheduler = Scheduler(store=store, lease_ttl=1000)
    entry = scheduler.entries_for(broker)[0]
    before = int(time.time() * 1000) - 20000
    store.set_fired(entry.key, before)

    def refuse(message, delay=None):
        raise greenq.ConnectionError("broker down")

    monkeypatch.setattr(broker, "enqueue", refuse)
    retry_at = scheduler._fire_due(broker, entry)
    assert store.schedule_state(entry.key) == ScheduleState(before, None)
    assert "Could not send 'job_send_fails'" in caplog.text and "broker down" in caplog.text
    assert retry_at <= time.time() * 1000 + 1000
    monkeypatch.undo()
    scheduler._fire_due(broker, entry)
    assert store.last_fired(entry.key) > before
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
            _drop_keys(f"greenq:schedule:state:{actor_name}", f"greenq:schedule:lease:{lease}")


# --- a firer that crashes between claiming a tick and confirming its send ----------------------


class WorkerSide(Scheduler):
    """The Scheduler middleware as a worker sees it, with its firing loop left off (the test drives firing)."""

    def after_worker_boot(self, broker, worker):
        pass


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs, no handler sees it."""


def _crash(*args, **kwargs):
    raise Crash()


def _periodic_job(broker, queue_name, ran):
    @greenq.periodic(10, broker=broker, queue_name=queue_name, actor_name=f"job_{queue_name}")
    def job():
        from greenq.middleware import CurrentMessage

        message = CurrentMessage.get_current_message()
        ran.add((message.options["scheduled_at"], message.options["scheduled_copy"]))

    return job


def _stop_clock(monkeypatch):
    """Stop the schedulers' clock now, for the rest of the test, and return its reading.

    A test that works out which tick is due must not be carried over a tick boundary by a
    slow step (a worker run, a loaded machine), where the next tick would be due as well.
    """
    now = int(time.time() * 1000)
    monkeypatch.setattr("greenq.scheduling.scheduler.current_millis", lambda: now)
    return now


def _due_now(store, key, monkeypatch):
    """Record the tick before the current one as fired, so the current one is due (and not late)."""
    latest = Every(10).last_at_or_before(_stop_clock(monkeypatch))
    store.set_fired(key, latest - 10000)
    return latest


def _run_worker_until(broker, queue_name, done):
    worker = greenq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: done() and broker.queue_counts(queue_name)["ready"] == 0
                   and broker.queue_counts(queue_name)["in_flight"] == 0, 20, "the scheduled messages to be settled")
    finally:
        worker.stop(timeout=5000)


def test_a_crash_between_claim_and_send_is_taken_over_and_the_tick_sent(broker_and_store, queue_name, recorder,
                                                                         monkeypatch, caplog):
    from greenq.middleware import CurrentMessage

    broker, store = broker_and_store
    sent = Sent()
    broker.add_middleware(sent)
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(WorkerSide(store=store))  # the workers' side: one copy per tick runs
    job = _periodic_job(broker, queue_name, recorder)
    first = Scheduler(store=store, lease_ttl=1000, misfire_grace=20000)
    entry = first.entries_for(broker)[0]
    assert entry.actor is job
    tick = _due_now(store, entry.key, monkeypatch)

    with monkeypatch.context() as patch:
        patch.setattr(broker, "enqueue", _crash)
        with pytest.raises(Crash):
            first._fire_due(broker, entry)
    claim = store.schedule_state(entry.key).pending
    assert claim is not None and claim.tick == tick and claim.holder == first.holder and sent.ticks == []

    caplog.set_level(logging.WARNING, logger="greenq.scheduling")
    second = Scheduler(store=store, lease_ttl=1000, misfire_grace=20000)
    second.holder = "the-next-leader"
    second._fire_due(broker, entry)  # undoes the claim...
    assert store.schedule_state(entry.key) == ScheduleState(tick - 10000, None)
    assert f"Tick {tick} of {entry.key!r} was claimed by {first.holder}, which did not confirm" in caplog.text
    second._fire_due(broker, entry)  # ...and decides the tick again: it is due, so it is sent
    assert sent.ticks == [tick]
    assert sent.messages[0].message_id == tick_message_id(entry.key, tick)
    assert store.schedule_state(entry.key) == ScheduleState(tick, None)
    assert second._fire_due(broker, entry) == tick + 10000 and sent.ticks == [tick]  # nothing more this tick

    _run_worker_until(broker, queue_name, lambda: recorder.calls)
    assert recorder.calls == [(tick, sent.messages[0].options["scheduled_copy"])]


@pytest.mark.parametrize("first_copy_starts", ["before the takeover", "after the takeover"])
def test_a_crash_after_the_send_before_the_confirm_runs_the_tick_once(broker_and_store, queue_name, recorder,
                                                                      monkeypatch, caplog, first_copy_starts):
    from greenq.middleware import CurrentMessage

    broker, store = broker_and_store
    sent = Sent()
    broker.add_middleware(sent)
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(WorkerSide(store=store))
    _periodic_job(broker, queue_name, recorder)
    first = Scheduler(store=store, lease_ttl=1000, misfire_grace=20000)
    entry = first.entries_for(broker)[0]
    tick = _due_now(store, entry.key, monkeypatch)

    with monkeypatch.context() as patch:
        patch.setattr(store, "confirm_tick", _crash)
        with pytest.raises(Crash):
            first._fire_due(broker, entry)
    assert sent.ticks == [tick] and store.schedule_state(entry.key).pending.tick == tick
    copy1 = sent.messages[0].options["scheduled_copy"]

    caplog.set_level(logging.WARNING)
    second = Scheduler(store=store, lease_ttl=1000, misfire_grace=20000)
    if first_copy_starts == "before the takeover":
        _run_worker_until(broker, queue_name, lambda: recorder.calls)
        assert store.schedule_state(entry.key) == ScheduleState(tick, None)  # the copy's start confirmed it
        assert second._fire_due(broker, entry) == tick + 10000
        assert sent.ticks == [tick]  # nothing to take over, nothing sent again
        assert recorder.calls == [(tick, copy1)]
        return

    second._fire_due(broker, entry)
    second._fire_due(broker, entry)
    assert sent.ticks == [tick, tick]  # the takeover cannot know the first copy went out, so it sends again
    copy2 = sent.messages[1].options["scheduled_copy"]
    assert copy1 != copy2
    assert {m.message_id for m in sent.messages} == {tick_message_id(entry.key, tick)}
    _run_worker_until(broker, queue_name, lambda: recorder.calls and "second copy of tick" in caplog.text)
    assert len(recorder.calls) == 1 and recorder.calls[0][0] == tick  # one copy ran, the other was acked unrun
    assert f"is a second copy of tick {tick} of {entry.key!r}" in caplog.text
    assert broker.queue_counts(queue_name)["dead"] == 0


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
    """TERM every process (kill what does not stop in 20 s); return their stderr, joined."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    errors = []
    for proc in procs:
        try:
            errors.append(proc.communicate(timeout=20)[1])
        except subprocess.TimeoutExpired:
            proc.kill()
            errors.append(proc.communicate()[1])
    return "\n".join(errors)


@pytest.fixture(params=["redis", "sqlite"])
def target(request, tmp_path):
    namespace = f"greenq-test-sched-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        yield "redis", REDIS_URL, namespace
        drop_redis_namespace(namespace)
    else:
        yield "sqlite", str(tmp_path / "sched.sqlite3"), namespace


TAKEN_OVER = re.compile(r"Tick (\d+) of '[^']+' was claimed by \S+, which did not confirm sending it")


def check_ledger(lines, log):
    """Each tick ran once: return ``(fires, runs)`` as ``{tick: [(pid, copy)]}`` after asserting it.

    A tick is sent twice only when a leader logged that it took over its claim
    (it cannot know whether the first copy went out); then one copy runs. A
    copy runs again only as a redelivery (its process was killed, or went
    silent past the broker's heartbeat timeout): the broker's at-least-once.
    """
    taken_over = {int(m.group(1)) for m in TAKEN_OVER.finditer(log)}
    fires, runs = {}, {}
    for line in lines:
        if line[0] == "F":
            fires.setdefault(int(line[1]), []).append((int(line[2]), line[3]))
        elif line[0] == "R":
            runs.setdefault(int(line[1]), []).append((int(line[2]), line[3], line[4]))
    for tick, sent in fires.items():
        assert len(sent) == 1 or (len(sent) == 2 and tick in taken_over and sent[0][1] != sent[1][1]), (tick, sent)
    for tick, ran in runs.items():
        assert tick in fires, (tick, ran)
        assert len({copy for _, copy, _ in ran}) == 1, (tick, ran)  # one copy of the tick ran
        assert all(redelivered == "1" for _, _, redelivered in ran[1:]), (tick, ran)  # again only if redelivered
    return fires, runs


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
        log = stop_all(procs)
    fires, runs = check_ledger(read_ledger(ledger), log)
    assert len({pid for sent in fires.values() for pid, _ in sent}) >= 2  # another process took over
    fired_before_kill = sorted(t for t in fires if t < killed_at - 1000)
    assert all(t in runs for t in fired_before_kill[:-1])  # every fired tick ran (the last may have died with it)
    steps = {b - a for a, b in zip(sorted(fires), sorted(fires)[1:])}
    assert 500 in steps and all(step % 500 == 0 for step in steps)


# --- through the worker command: two masters, two processes each ---------------------------------

sys.path.append(os.path.join(HERE, "cli"))  # appended, so nothing there shadows a module of tests/
from cli_helpers import Greenq  # noqa: E402

MISSED = re.compile(r"Actor '[^']+' missed ticks from (\d+) to (\d+) \(epoch ms\); fired once for (\d+)")


@pytest.mark.timeout(240)
def test_the_worker_command_fires_each_tick_once_across_two_masters_and_a_kill_9(target, tmp_path):
    kind, where, namespace = target
    step = 500
    ledger = str(tmp_path / "ledger.txt")
    queue = f"sched{uuid.uuid4().hex[:8]}"
    env = {"TEST_KIND": kind, "TEST_TARGET": where, "TEST_NS": namespace, "TEST_QUEUE": queue,
           "TEST_LEDGER": ledger, "TEST_INTERVAL": str(step / 1000), "TEST_LEASE_TTL": "1500"}
    masters = [Greenq(["scheduling_cli_app", "-p", "2", "-t", "4", "--path", HERE], mode="gevent",
                      cwd=str(tmp_path), env=env) for _ in range(2)]
    try:
        for master in masters:
            master.ready(2, timeout=60)

        def ledger_lines(tag):
            return [line for line in read_ledger(ledger) if line[0] == tag]

        first = wait_until(lambda: (lambda f: f if len(f) >= 4 else None)(ledger_lines("F")), 60, "4 ticks fired")
        holder = int(first[-1][2])
        assert any(holder in master.worker_pids() for master in masters)  # a worker process, not a master
        os.kill(holder, signal.SIGKILL)
        killed_at = int(time.time() * 1000)
        taken = wait_until(lambda: [f for f in ledger_lines("F") if int(f[1]) > killed_at and int(f[2]) != holder][2:],
                           60, "3 ticks fired by another process after kill -9 of the lease holder")
        cutoff = int(taken[0][1])
        wait_until(lambda: {int(f[1]) for f in ledger_lines("F") if int(f[1]) <= cutoff}
                   <= {int(r[1]) for r in ledger_lines("R")}, 60, "every tick up to the takeover to run")
        for master in masters:
            master.signal(signal.SIGTERM)
        for master in masters:
            assert master.wait(60) == 0, master.output()
    finally:
        for master in masters:
            master.kill()
    output = "\n".join(master.output() for master in masters)
    assert "Traceback" not in output, output
    fires, runs = check_ledger(read_ledger(ledger), output)
    assert {pid for t in fires if t > killed_at for pid, _ in fires[t]} - {holder}  # another process took over
    assert all(t in runs for t in fires if t <= cutoff)  # every tick fired up to the takeover ran
    # No gap but what the missed-tick policy allows: a gap is a handover (or a stall) the leader logged,
    # naming the ticks it skipped and the one it fired for them (catch_up=True).
    missed = {int(m.group(3)): int(m.group(1)) for m in MISSED.finditer(output)}
    ticks = sorted(fires)
    assert all(t % step == 0 for t in ticks)
    for a, b in zip(ticks, ticks[1:]):
        if b - a > step:
            assert b in missed and missed[b] <= a + step, (a, b, missed)
    assert len(ticks) >= 7


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
