"""An app for tests/test_ops_commands.py on whatever broker GREENQ_BROKER_URL names.

``fragile`` fails while the file TEST_FAIL_FLAG exists (no retries, so it is
dead-lettered at once) and otherwise appends its argument to TEST_OUT: the
test can see a requeued dead letter being processed, on any broker.
"""

import os

import greenq

QUEUE = os.environ.get("TEST_QUEUE", "default")


@greenq.actor(queue_name=QUEUE, max_retries=0)
def fragile(name):
    if os.path.exists(os.environ["TEST_FAIL_FLAG"]):
        raise RuntimeError(f"{name} fails while the flag file exists")
    with open(os.environ["TEST_OUT"], "a") as out:
        out.write(name + "\n")
