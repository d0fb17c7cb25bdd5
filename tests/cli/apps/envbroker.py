"""Uses whatever GREENQ_BROKER_URL names, through greenq.get_broker()."""

import greenq


@greenq.actor
def noop():
    pass


greenq.get_broker()
not_a_broker = 42
