"""Run the scraping demo end to end and print a summary.

Everything happens in a fresh temporary directory, whose ``greenq.sqlite3`` is
the default broker that the worker processes and this process share.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import click

from .. import __version__

QUEUE = "demo"


def _start_server(latency):
    server = subprocess.Popen([sys.executable, "-m", "greenq.demo.server", "--latency", str(latency)],
                              stdout=subprocess.PIPE, text=True)
    port = server.stdout.readline().strip()
    if not port.isdigit():
        server.kill()
        raise click.ClickException("the demo's page server did not start")
    return server, f"http://127.0.0.1:{port}"


def _stop(process, sig=signal.SIGTERM, timeout=60):
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
    return process.returncode


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--pages", default=5000, show_default=True, help="Pages to scrape: one job each.")
@click.option("--latency", default=50, show_default=True, help="Milliseconds each page takes to answer.")
@click.option("-p", "--processes", default=2, show_default=True, help="Worker processes.")
@click.option("-t", "--threads", default=250, show_default=True, help="Greenlets per worker process.")
@click.option("--keep", is_flag=True, help="Keep the demo's directory (database and worker log).")
def main(pages, latency, processes, threads, keep):
    """Scrape a local site with greenq-gevent on the embedded SQLite broker."""
    workdir = tempfile.mkdtemp(prefix="greenq-demo-")
    os.chdir(workdir)  # the default broker is greenq.sqlite3 in the working directory
    os.environ.pop("GREENQ_BROKER_URL", None)
    click.echo(f"greenq {__version__} demo: {pages} pages answering after {latency} ms, "
               f"{processes} worker processes x {threads} greenlets, broker {workdir}/greenq.sqlite3")
    server, base = _start_server(latency)
    worker = None
    try:
        import greenq
        from .app import count_words

        broker = greenq.get_broker()
        for start in range(0, pages, 1000):
            count_words.send_many([(f"{base}/page/{n}",) for n in range(start, min(start + 1000, pages))])

        log_path = os.path.join(workdir, "worker.log")
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "greenq.cli.gevent_main", "greenq.demo.app", "-p", str(processes),
                 "-t", str(threads), "--quiet-messages"],
                stdout=log, stderr=subprocess.STDOUT)
        began = time.monotonic()
        dead = _wait_with_progress(broker, pages, worker, log_path)
        elapsed = time.monotonic() - began
        code = _stop(worker)
        with urllib.request.urlopen(f"{base}/stats", timeout=10) as response:
            stats = json.load(response)
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server, signal.SIGKILL)

    done = pages - dead
    click.echo(f"\n{pages} jobs in {elapsed:.2f} s: {pages / elapsed:.0f} jobs/s "
               f"({done} done, {stats['errors']} retries, {dead} failed)")
    click.echo(f"The {processes} worker processes exited with code {code} after a graceful TERM.")
    if keep:
        click.echo(f"Kept {workdir} (greenq.sqlite3 and worker.log).")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if dead or code != 0:
        sys.exit(1)


def _wait_with_progress(broker, pages, worker, log_path):
    """Show progress until the queue holds nothing; return how many jobs failed for good."""
    with click.progressbar(length=pages, label="scraping", show_pos=True, show_eta=False) as bar:
        shown = 0
        while True:
            if worker.poll() is not None:
                with open(log_path) as log:
                    tail = log.read()[-2000:]
                raise click.ClickException(f"the worker exited early with code {worker.returncode}:\n{tail}")
            counts = broker.queue_counts(QUEUE)
            left = counts["ready"] + counts["delayed"] + counts["in_flight"]
            finished = pages - left
            bar.update(finished - shown)
            shown = finished
            if left == 0:
                return counts["dead"]
            time.sleep(0.2)  # a person watches this bar; five refreshes a second are plenty


if __name__ == "__main__":
    main(prog_name="python -m greenq.demo")
