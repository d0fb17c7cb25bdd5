"""Prometheus metrics for workers, aggregated over every process ``greenq`` forks.

Add ``Prometheus()`` to the broker; ``prometheus_client`` (the ``prometheus``
extra) is imported only when the middleware is created, so greenq itself never
needs it.

Metrics (labels ``queue_name`` and ``actor_name`` on all of them):

``greenq_messages_total`` (counter)
    messages processed, each delivery once, whatever its outcome (skipped ones too).
``greenq_message_errors_total`` (counter)
    deliveries whose actor raised (a ``Retry`` too).
``greenq_message_retries_total`` (counter)
    retries scheduled: copies the Retries middleware enqueued again with a backoff.
``greenq_message_rejects_total`` (counter)
    messages dead-lettered.
``greenq_messages_inprogress`` (gauge)
    messages whose actor is running right now.
``greenq_delayed_messages_inprogress`` (gauge)
    messages this process enqueued with a delay (retries, ``send_with_options(delay=)``)
    that are not due yet. greenq keeps delayed messages in the broker, never in a
    worker's memory (so the Dramatiq meaning, "delayed messages held in memory",
    would always be 0); this is the honest counterpart: work this process has put
    off. Each pending one costs a timer (a hub timer under gevent) until it is due.
``greenq_message_duration_milliseconds`` (histogram)
    time from ``before_process_message`` to ``after_process_message``.

Processes. Under the ``greenq`` command the master sets prometheus_client's
multi-process mode up before forking (``greenq.cli.prometheus_setup``): every
worker writes its samples to files in one directory, gauges sum over live
processes only (``livesum``), and the files of a dead worker's gauges are
removed when the master reaps it, while its counters keep counting. One worker
at a time serves the sum over HTTP on ``greenq_prom_host`` (default
``127.0.0.1``: loopback unless you say otherwise) and ``greenq_prom_port``
(default 9191): whichever binds the port first. The others retry every
``RETRY_BIND`` seconds, so when the serving worker stops or dies another one
takes over within that time. Outside the command (a ``Worker`` in your own
process) nothing is served unless you pass ``http_server=True``; the metrics
are in prometheus_client's default registry for your own exporter.
"""

import logging
import os
import threading
import time

from .. import concurrency
from .middleware import Middleware

logger = logging.getLogger("greenq.middleware.prometheus")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9191
#: Seconds between attempts of a non-serving worker to take the exposition port over.
RETRY_BIND = 1.0
#: Set by the ``greenq`` command in the workers it forks: serve the metrics from one of them.
EXPORTER_ENV = "GREENQ_PROMETHEUS_EXPORTER"

#: Milliseconds; from a cache hit to a long batch job.
DEFAULT_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 900000,
                   float("inf"))

LABELS = ("queue_name", "actor_name")

_metrics = None
_metrics_lock = threading.Lock()


def setting(name, default):
    """An exposition setting from the environment: ``greenq_prom_host`` or ``GREENQ_PROM_HOST``."""
    return os.environ.get(name) or os.environ.get(name.upper()) or default


def _import_client():
    try:
        import prometheus_client
    except ImportError:
        raise ImportError("the Prometheus middleware needs prometheus_client: pip install 'greenq[prometheus]'") \
            from None
    return prometheus_client


class _Metrics:
    """The metric objects, once per process (prometheus_client refuses duplicate names)."""

    def __init__(self, client, buckets):
        self.messages = client.Counter("greenq_messages_total", "Messages processed.", LABELS)
        self.errors = client.Counter("greenq_message_errors_total", "Deliveries whose actor raised.", LABELS)
        self.retries = client.Counter("greenq_message_retries_total", "Retries scheduled.", LABELS)
        self.rejects = client.Counter("greenq_message_rejects_total", "Messages dead-lettered.", LABELS)
        self.inprogress = client.Gauge("greenq_messages_inprogress", "Messages being processed.", LABELS,
                                       multiprocess_mode="livesum")
        self.delayed = client.Gauge("greenq_delayed_messages_inprogress",
                                    "Messages this process enqueued with a delay, not due yet.", LABELS,
                                    multiprocess_mode="livesum")
        self.duration = client.Histogram("greenq_message_duration_milliseconds",
                                         "Time spent processing messages (ms).", LABELS, buckets=buckets)


def _get_metrics(client, buckets):
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = _Metrics(client, buckets)
        return _metrics


class Prometheus(Middleware):
    """Export worker metrics to Prometheus (see the module docstring for what and where).

    ``host``/``port`` default to ``greenq_prom_host``/``greenq_prom_port`` from the
    environment, else 127.0.0.1:9191. ``http_server``: None serves only in workers
    started by the ``greenq`` command; True or False to decide yourself.
    ``buckets``: histogram bounds in milliseconds, fixed by the first instance in a process.
    """

    def __init__(self, *, host=None, port=None, http_server=None, buckets=DEFAULT_BUCKETS):
        self.client = _import_client()
        self.host = host or setting("greenq_prom_host", DEFAULT_HOST)
        self.port = int(port if port is not None else setting("greenq_prom_port", DEFAULT_PORT))
        self.http_server = http_server
        self.buckets = tuple(buckets)
        self._started = {}  # id(message) -> perf_counter at before_process_message
        self._lock = threading.Lock()
        self._exporter = None

    @property
    def metrics(self):
        return _get_metrics(self.client, self.buckets)

    # --- processing ---------------------------------------------------------------------

    def before_process_message(self, broker, message):
        labels = (message.queue_name, message.actor_name)
        self.metrics.inprogress.labels(*labels).inc()
        with self._lock:
            self._started[id(message)] = time.perf_counter()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        labels = (message.queue_name, message.actor_name)
        metrics = self.metrics
        with self._lock:
            started = self._started.pop(id(message), None)
        if started is not None:  # our before hook ran: the actor ran, or a limit stopped it first
            metrics.inprogress.labels(*labels).dec()
            metrics.duration.labels(*labels).observe((time.perf_counter() - started) * 1000)
        metrics.messages.labels(*labels).inc()
        if exception is not None:
            metrics.errors.labels(*labels).inc()

    def after_skip_message(self, broker, message):
        self.after_process_message(broker, message)

    def after_nack(self, broker, message):
        self.metrics.rejects.labels(message.queue_name, message.actor_name).inc()

    def after_enqueue(self, broker, message, delay):
        labels = (message.queue_name, message.actor_name)
        metrics = self.metrics
        if message.options.get("retries") and message.options.get("failure"):
            # The Retries middleware's copy of a failed message (a producer's send never carries a failure).
            metrics.retries.labels(*labels).inc()
        if delay:
            gauge = metrics.delayed.labels(*labels)
            gauge.inc()
            concurrency.Timer(delay / 1000, gauge.dec)

    # --- the exposition server ----------------------------------------------------------------

    def after_process_boot(self, broker):
        serve = self.http_server
        if serve is None:
            serve = os.environ.get(EXPORTER_ENV) == "1"
        if serve:
            self._exporter = _Exporter(self.client, self.host, self.port)
            self._exporter.start()

    def before_process_stop(self, broker):
        if self._exporter is not None:
            self._exporter.stop()
            self._exporter = None


class _Exporter:
    """Serves the metrics from whichever process binds the port first; the others keep trying.

    Binding is the election: the kernel lets one process listen on a port, so
    no lock file or coordination with the master is needed, and a successor
    takes over within ``RETRY_BIND`` seconds of the server's process going away.
    """

    def __init__(self, client, host, port):
        self.client = client
        self.host = host
        self.port = port
        self.server = None
        self.stopping = threading.Event()
        self.task = None

    def registry(self):
        client = self.client
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
        if path:
            registry = client.CollectorRegistry()
            registry.register(_SizedFilesCollector(path))
            return registry
        return client.REGISTRY

    def start(self):
        self.task = concurrency.spawn(self._run, name="greenq-prometheus-exporter")

    def _run(self):
        warned = False
        registry = self.registry()
        while not self.stopping.is_set():
            try:
                server, thread = self.client.start_http_server(self.port, addr=self.host, registry=registry)
            except OSError as e:
                if not warned:
                    logger.debug("Port %s:%d is taken (%s); another worker serves the metrics, or will.",
                                 self.host, self.port, e.strerror or e)
                    warned = True
                self.stopping.wait(RETRY_BIND)
                continue
            self.server = server
            logger.info("Serving Prometheus metrics on http://%s:%d/metrics.", self.host, self.port)
            if self.stopping.is_set():
                self._close()
            return

    def _close(self):
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def stop(self):
        self.stopping.set()
        if self.task is not None:
            self.task.join(RETRY_BIND + 5)
        self._close()


class _SizedFilesCollector:
    """prometheus_client's multi-process collector, without the files nobody has sized yet.

    A worker recording its first sample of a kind creates that kind's file, and only
    then sizes it (``MmapedDict.__init__``). prometheus_client reads a file caught at
    0 bytes as corrupt (``struct.error``), which fails the whole scrape with a 500,
    and a worker killed in that instant leaves the empty file for good
    (prometheus/client_python#1199). An empty file holds no samples, so it is left out.
    """

    def __init__(self, path):
        self.path = path

    def collect(self):
        import glob

        from prometheus_client.multiprocess import MultiProcessCollector

        for attempt in (1, 2):
            files = []
            for name in glob.glob(os.path.join(self.path, "*.db")):
                try:
                    if os.path.getsize(name) > 0:  # a file only grows: sized now, readable below
                        files.append(name)
                except OSError:  # removed meanwhile (the master cleans up a dead worker's gauges)
                    continue
            try:
                return MultiProcessCollector.merge(files, accumulate=True)
            except FileNotFoundError:  # removed between the listing and the read: list again, once
                if attempt == 2:
                    raise
