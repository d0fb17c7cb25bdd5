"""An app whose broker lives in each worker process: it enqueues its own work at import.

No shared broker is needed, so it serves the tests of logging, pid files and
plain signal handling. STUB_COUNT messages, each sleeping STUB_SLEEP seconds.
"""

import os
import time

import greenq
from greenq.brokers.stub import StubBroker

broker = StubBroker()
greenq.set_broker(broker)


@greenq.actor
def hello(i):
    time.sleep(float(os.environ.get("STUB_SLEEP", "0.2")))
    print(f"hello {i} from {os.getpid()}")


for i in range(int(os.environ.get("STUB_COUNT", "3"))):
    hello.send(i)
