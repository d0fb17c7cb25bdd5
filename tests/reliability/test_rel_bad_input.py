"""Hostile payloads pushed straight into each broker: none crashes a worker, each is dead-lettered and logged.

Payloads are generated with hypothesis (derandomized, so every run pushes the
same ones): truncated JSON, wrong field types, missing and unknown fields,
values that are not objects, huge arguments, unknown actors, deep nesting,
invalid UTF-8, junk middleware options, huge numbers, a queue name that is not
the queue's, and well-formed messages for an actor that rejects them all. The
only actor that runs (``reject``) always raises, so every payload must end in
the dead letters. Afterwards good messages still run: the worker survived.
Default run: 500 payloads per broker; ``--long``: 5,000.
"""

import json
import logging
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greenq
from rel_harness import BROKERS, Target, report, require, wait_until

BATCH = 50

FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp")
json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def hostile(queue):
    """A strategy of hostile payloads (bytes) for ``queue``."""

    def base(actor="reject", **changes):
        fields = {"queue_name": queue, "actor_name": actor, "args": [], "kwargs": {}, "options": {},
                  "message_id": str(uuid.uuid4()), "message_timestamp": 1700000000000}
        fields.update(changes)
        return fields

    def dump(fields):
        return json.dumps(fields).encode()

    truncated = st.integers(0, 150).map(lambda n: dump(base())[:n])
    wrong_type = st.tuples(st.sampled_from(FIELDS), json_values).map(
        lambda fv: dump(base(**{fv[0]: fv[1]})))
    missing = st.sampled_from(FIELDS).map(lambda f: dump({k: v for k, v in base().items() if k != f}))
    unknown_field = st.text(min_size=1, max_size=20).filter(lambda k: k not in FIELDS).map(
        lambda k: dump({**base(), k: 1}))
    not_an_object = json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode())
    huge_args = st.integers(100_000, 1_000_000).map(lambda n: dump(base(args=["x" * n])))
    many_args = st.integers(10_000, 100_000).map(lambda n: dump(base(args=list(range(n)))))
    unknown_actor = st.text(min_size=1, max_size=200).map(lambda name: dump(base(actor=name)))
    deep = st.integers(1_000, 200_000).map(
        lambda d: dump(base(args="@@"))[:-1].replace(b'"@@"', b"[" * d + b"]" * d) + b"}")
    deep_object = st.integers(1_000, 50_000).map(
        lambda d: dump(base(kwargs="@@")).replace(b'"@@"', b'{"a":' * d + b"1" + b"}" * d))
    bad_utf8 = st.tuples(st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b), st.integers(0, 120)).map(
        lambda bp: (lambda raw: raw[:bp[1]] + bp[0] + raw[bp[1]:])(dump(base())))
    binary = st.binary(max_size=300)
    junk_options = st.dictionaries(
        st.sampled_from(["retries", "eta", "pipe_target", "pipe_ignore", "on_failure", "on_success",
                         "group_completion", "metadata", "failure", "traceback", "max_retries", "time_limit"]),
        json_values.filter(lambda v: not (isinstance(v, (int, float)) and not isinstance(v, bool) and v < 1)),
        min_size=1, max_size=4).map(lambda options: dump(base(options=options)))
    huge_numbers = st.sampled_from([b"9" * 5000, b"1e999999", b"-1e999999", b"NaN", b"Infinity"]).map(
        lambda n: dump(base(args="@@")).replace(b'"@@"', b"[" + n + b"]"))
    big_timestamp = st.integers(2**63, 2**200).map(lambda t: dump(base(message_timestamp=t)))
    other_queue = st.text(min_size=1, max_size=40).map(lambda q: dump(base(queue_name=q)))
    rejected = st.tuples(st.lists(json_values, max_size=5), st.dictionaries(st.text(max_size=10), json_values,
                                                                             max_size=4)).map(
        lambda ak: dump(base(args=ak[0], kwargs=ak[1])))
    empty = st.sampled_from([b"", b" ", b"{}", b"null", b"[]", b'""'])
    return st.one_of(truncated, wrong_type, missing, unknown_field, not_an_object, huge_args, many_args,
                     unknown_actor, deep, deep_object, bad_utf8, binary, junk_options, huge_numbers,
                     big_timestamp, other_queue, rejected, empty)


class _Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.count = 0
        self._lock = threading.Lock()

    def emit(self, record):
        with self._lock:
            self.count += 1


def push_hostile(kind, tmp_path, batches):
    require(kind)
    target = Target(kind, tmp_path)
    broker = target.broker
    broker.emit_after("process_boot")
    survived = []

    @greenq.actor(queue_name=target.queue, broker=broker, max_retries=0)
    def reject(*args, **kwargs):
        raise ValueError("hostile payload rejected")

    @greenq.actor(queue_name=target.queue, broker=broker, max_retries=0, actor_name="after_hostile_ok")
    def ok(i):
        survived.append(i)

    errors = _Errors()
    logging.getLogger().addHandler(errors)
    worker = greenq.Worker(broker, queues=[target.queue], worker_threads=8, worker_timeout=100)
    worker.start()
    pushed = []
    try:
        @settings(max_examples=batches, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(hostile(target.queue), min_size=BATCH, max_size=BATCH))
        def push(batch):
            for payload in batch:
                broker.enqueue_raw(target.queue, payload)
                pushed.append(payload)

        push()
        total = len(pushed)
        wait_until(lambda: target.counts()["dead"] >= total, 180,
                   lambda: f"{total} hostile payloads dead-lettered (now {target.counts()})")
        ok.send_many([(i,) for i in range(20)])
        wait_until(lambda: len(survived) >= 20, 30, "good messages processed after the hostile ones")
        worker.join(30000)
        counts = target.counts()
        dead = target.dead_letters()
        reasons = {}
        for m in dead:
            reason = (m.options.get("failure") or "?").split(":", 1)[0]
            reasons[reason] = reasons.get(reason, 0) + 1
        report("hostile payloads", kind, messages=total, dead_letters=len(dead), lost=total - len(dead),
               error_log_lines=errors.count, reasons=reasons, largest_payload=max(map(len, pushed)))
        assert counts["dead"] == total and len(dead) == total, (counts, len(dead), total)
        assert counts["ready"] == counts["in_flight"] == counts["delayed"] == 0, counts
        assert all(m.options.get("failure") for m in dead)
        assert errors.count >= total  # every dead-lettered payload was logged, with its id or key
    finally:
        logging.getLogger().removeHandler(errors)
        worker.stop(timeout=5000)
        target.cleanup()


@pytest.mark.parametrize("kind", BROKERS)
def test_hostile_payloads_are_dead_lettered(kind, tmp_path):
    push_hostile(kind, tmp_path, batches=10)


@pytest.mark.long
@pytest.mark.parametrize("kind", BROKERS)
def test_thousands_of_hostile_payloads(kind, tmp_path):
    push_hostile(kind, tmp_path, batches=100)
