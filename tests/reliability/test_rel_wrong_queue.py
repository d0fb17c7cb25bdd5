"""A payload whose ``queue_name`` is not the queue it sits in is dead-lettered in the queue it came from.

Found by the hostile-payload scenario on RabbitMQ: the dead letter was
published to ``<payload's queue_name>.XQ``; when that queue did not exist the
publish was refused, the message stayed unacked on the consumer's channel
(eating its prefetch window), and when it did exist the failure was filed
under somebody else's queue.
"""

import json
import uuid

import pytest

from rel_harness import BROKERS, Target, require, wait_until


@pytest.mark.parametrize("kind", BROKERS)
def test_dead_letter_goes_to_the_queue_it_was_consumed_from(kind, tmp_path):
    require(kind)
    target = Target(kind, tmp_path)
    try:
        broker = target.broker
        message_id = str(uuid.uuid4())
        payload = {"queue_name": f"elsewhere-{uuid.uuid4().hex[:8]}", "actor_name": "a", "args": [], "kwargs": {},
                   "options": {}, "message_id": message_id, "message_timestamp": 1}
        broker.enqueue_raw(target.queue, json.dumps(payload).encode())
        consumer = broker.consume(target.queue)
        try:
            got = wait_until(lambda: consumer.fetch(1, 0.5), 10, "the message fetched")
            got[0].fail("rejected")
            got[0].options["failure"] = "rejected"
            consumer.nack(got)
        finally:
            consumer.close()
        dead = target.dead_letters()
        assert [m.message_id for m in dead] == [message_id]
        assert target.counts() == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    finally:
        target.cleanup()
