# The user guide's "Unit Testing" example with greenq's names; tests/test_user_guide.py runs it.
import os

import greenq
from greenq.brokers.stub import StubBroker

if os.getenv("UNIT_TESTS") == "1":
    broker = StubBroker()
    broker.emit_after("process_boot")
else:
    from greenq.brokers.redis import RedisBroker

    broker = RedisBroker()
greenq.set_broker(broker)
