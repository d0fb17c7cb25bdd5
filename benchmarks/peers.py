"""The benchmark's virtualenvs: the peers' (Dramatiq, Celery) and a clean one for greenq.

    python -m benchmarks.peers            # create both, or bring them to the pins

The benchmark runs Dramatiq's and Celery's own worker commands from
``benchmarks/.venv-peers``, so their dependencies (and their versions of gevent,
redis-py, kombu...) never leak into greenq's environment or its requirements.
matplotlib is installed there too, for the chart.

greenq and the bare pool run from ``benchmarks/.venv-greenq``: a virtualenv
holding only greenq's runtime dependencies and ``requests``, at the same
versions as the peers' (greenq itself comes from the working tree, on
``PYTHONPATH``). Every system then runs on the same interpreter set-up and the
same gevent, redis-py, pika and requests, so the figures differ by the queue
alone. Both hold hiredis, which redis-py then parses replies with: greenq's
``hiredis`` extra installs it, and Dramatiq's and Celery's Redis clients use it
as well. Without it greenq runs on the interpreter that runs the benchmark, whose
site-packages may load modules at start-up (a ``.pth`` file, a bigger
``sys.path``) that a peer never loads: several MiB of resident memory that are
not greenq's.

Creating them downloads a few dozen MB from PyPI once; afterwards ``ensure()``
only checks that the interpreter is there. Every version is pinned
(``REQUIREMENTS`` are the packages the benchmark uses, ``LOCKED`` what they
pulled in), so two runs months apart compare the same code. To move to newer
releases, change the pins here and run this module.
"""

import argparse
import json
import logging
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = [
    "dramatiq[redis,rabbitmq,gevent]==2.2.1",
    "celery[redis]==5.7.0",
    "gevent==26.9.0",
    "requests==2.34.2",
    "redis==8.1.0",
    "hiredis==3.5.0",
    "matplotlib==3.11.2",
]
# what the requirements pulled in when the pins were taken (the queue clients first: they shape the figures)
LOCKED = [
    "pika==1.4.4", "kombu==5.7.0", "amqp==5.4.2", "billiard==4.3.2", "vine==5.1.0", "greenlet==3.5.6",
    "urllib3==2.8.0", "certifi==2026.10.19.post1", "charset-normalizer==3.5.3", "idna==3.20",
    "zope.event==6.2", "zope.interface==8.7", "click==8.5.1", "click-didyoumean==0.3.1", "click-plugins==1.1.1.2",
    "click-repl==0.4.1", "prompt_toolkit==3.0.53", "wcwidth==0.9.4", "python-dateutil==2.9.0.post0", "six==1.17.0",
    "tzlocal==5.4.5", "packaging==26.3", "typing_extensions==4.16.0", "contourpy==1.3.3", "cycler==0.12.1",
    "fonttools==4.68.0", "kiwisolver==1.5.1", "numpy==2.4.6", "pillow==13.0.0", "pyparsing==3.3.3",
]
# what .venv-greenq holds (at the versions above): greenq's dependencies, requests, and theirs
GREENQ_PACKAGES = ("gevent", "greenlet", "zope.event", "zope.interface", "redis", "hiredis", "pika", "click",
                   "requests", "urllib3", "certifi", "charset-normalizer", "idna")
# the versions a run records in its results (meta.peers)
REPORTED = ("dramatiq", "celery", "gevent", "greenlet", "redis", "hiredis", "kombu", "pika", "requests", "urllib3")

logger = logging.getLogger("greenq.benchmarks.peers")


class Venv:
    """One of the benchmark's virtualenvs: where it is, what is pinned into it, how to tell it works."""

    def __init__(self, name, requirements, probe):
        self.path = os.path.join(HERE, name)
        self.requirements = list(requirements)
        self.probe = probe  # the imports that show the virtualenv is usable

    def python(self):
        """The virtualenv's interpreter (it may not exist yet)."""
        return os.path.join(self.path, "bin", "python")

    def bin_path(self, name):
        return os.path.join(self.path, "bin", name)

    def available(self):
        if not os.path.exists(self.python()):
            return False
        return subprocess.run([self.python(), "-c", self.probe], capture_output=True).returncode == 0

    def pins(self):
        """``{distribution name: pinned version}`` of everything installed here."""
        found = {}
        for spec in self.requirements:
            name, version = spec.split("==")
            found[name.split("[")[0]] = version
        return found

    def installed(self, names):
        """``{name: version or None}`` in the virtualenv, or {} without it."""
        if not os.path.exists(self.python()):
            return {}
        code = ("import json, sys, importlib.metadata as m\n"
                "def v(n):\n"
                "    try:\n        return m.version(n)\n"
                "    except m.PackageNotFoundError:\n        return None\n"
                "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
        out = subprocess.run([self.python(), "-c", code, *names], capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def mismatches(self):
        """``["name: installed X, pinned Y", ...]`` (empty when the virtualenv matches the pins)."""
        wanted = self.pins()
        have = self.installed(list(wanted))
        return [f"{name}: installed {have.get(name)}, pinned {version}"
                for name, version in wanted.items() if have.get(name) != version]

    def ensure(self, sync=False):
        """Create the virtualenv and install the pins if missing (``sync``: also fix wrong versions)."""
        if self.available() and not (sync and self.mismatches()):
            return self.python()
        if not os.path.exists(self.python()):
            logger.info("Creating %s", self.path)
            subprocess.run([sys.executable, "-m", "venv", self.path], check=True)
        logger.info("Installing %d pinned packages into %s", len(self.requirements), self.path)
        subprocess.run([self.python(), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *self.requirements], check=True)
        return self.python()


PEERS = Venv(".venv-peers", REQUIREMENTS + LOCKED, "import dramatiq, celery, gevent, requests")
# greenq's install_requires, requests for the jobs, and what they pull in: all at the peers' pins
GREENQ = Venv(".venv-greenq",
              [f"{name}=={version}" for name, version in PEERS.pins().items() if name in GREENQ_PACKAGES],
              "import gevent, redis, pika, click, requests")


def versions():
    """``{"dramatiq": "2.2.1", "celery": "5.7.0", ...}`` of the peers' virtualenv, or {}."""
    if not PEERS.available():
        return {}
    return PEERS.installed(REPORTED)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for venv in (PEERS, GREENQ):
        venv.ensure(sync=True)
    wrong = PEERS.mismatches() + GREENQ.mismatches()
    print(json.dumps(versions()))
    if wrong:
        print("not at the pins: " + "; ".join(wrong), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
