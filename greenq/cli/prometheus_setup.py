"""The master's part in Prometheus metrics: the multi-process directory, set up before any fork.

prometheus_client aggregates forked processes through files in one directory,
named by ``PROMETHEUS_MULTIPROC_DIR``, which must be set before the first
metric is created, must start empty, and must lose a process's live gauges
when that process dies. The user should not have to know any of that, so the
master does it whenever prometheus_client is installed:

* the directory is ``greenq_prom_db`` (or a ``PROMETHEUS_MULTIPROC_DIR`` the
  user set), created if missing and emptied of ``*.db`` files at start, and
  left in place at exit; otherwise a fresh temporary directory, removed at exit;
* ``PROMETHEUS_MULTIPROC_DIR`` and ``GREENQ_PROMETHEUS_EXPORTER=1`` are put in
  the environment the workers inherit, so the ``Prometheus`` middleware serves
  from one of them (see ``greenq.middleware.prometheus``); an app's own
  prometheus_client metrics are aggregated the same way;
* when the master reaps a worker, it removes that pid's live-gauge files
  (what ``prometheus_client.multiprocess.mark_process_dead`` does), so the
  in-progress gauges forget it while its counters keep counting.

It costs one directory and, per worker that ever ran, a few small files that
stay until greenq exits (so counters survive restarts and reloads). The master
never imports prometheus_client: it has no hub and no app, and stays that way.
"""

import glob
import importlib.util
import logging
import os
import shutil
import tempfile

from ..middleware.prometheus import EXPORTER_ENV, setting

logger = logging.getLogger("greenq.MainProcess")

#: Gauge modes whose files belong to live processes only (prometheus_client's list).
_LIVE_MODES = ("liveall", "livesum", "livemax", "livemin", "livemostrecent")


class MultiprocDir:
    def __init__(self, path, owned):
        self.path = path
        self.owned = owned

    def process_dead(self, pid):
        """A worker is gone: drop its live gauges."""
        for mode in _LIVE_MODES:
            for name in glob.glob(os.path.join(self.path, f"gauge_{mode}_{pid}.db")):
                try:
                    os.remove(name)
                except FileNotFoundError:
                    pass

    def cleanup(self):
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def prepare():
    """Set the environment up for the workers; None when prometheus_client is not installed."""
    if importlib.util.find_spec("prometheus_client") is None:
        return None
    given = (setting("greenq_prom_db", None) or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
             or os.environ.get("prometheus_multiproc_dir"))
    if given:
        path = os.path.abspath(given)
        os.makedirs(path, exist_ok=True)
        for name in glob.glob(os.path.join(path, "*.db")):
            os.remove(name)
        handle = MultiprocDir(path, owned=False)
    else:
        handle = MultiprocDir(tempfile.mkdtemp(prefix="greenq-prometheus-"), owned=True)
    os.environ.pop("prometheus_multiproc_dir", None)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = handle.path
    os.environ[EXPORTER_ENV] = "1"
    logger.debug("Prometheus multi-process directory: %s.", handle.path)
    return handle
