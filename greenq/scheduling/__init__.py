"""Periodic and cron actors, and the shared state store behind them.

    import greenq
    from greenq.scheduling import Scheduler

    broker.add_middleware(Scheduler())          # every worker process runs it; a lease elects one firer

    @greenq.periodic(25, queue_name="low")
    def every_25_seconds(): ...

    @greenq.cron("0 5 * * tue", timezone="Europe/Paris")
    def tuesdays_at_five(): ...

Importing this package imports neither redis nor croniter; they load when a
Redis store or a cron schedule is built.
"""

from .periodic import cron, entries, periodic
from .schedule import Cron, Every, ScheduleError
from .scheduler import Scheduler, run, tick_message_id
from .store import MemoryStore, Store, StoreError, store_for

__all__ = ["Cron", "Every", "MemoryStore", "ScheduleError", "Scheduler", "Store", "StoreError", "cron", "entries",
           "periodic", "run", "store_for", "tick_message_id"]
