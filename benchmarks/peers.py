"""The peers' virtualenv: Dramatiq and Celery, installed beside greenq, never into it.

    python -m benchmarks.peers            # create benchmarks/.venv-peers, or bring it to the pins

The benchmark runs Dramatiq's and Celery's own worker commands from this
virtualenv, so their dependencies (and their versions of gevent, redis-py,
kombu...) never leak into greenq's environment or its requirements. Creating
it downloads a few dozen MB from PyPI once; afterwards ``ensure()`` only checks
that the interpreter is there. matplotlib is installed here too, for the chart.

Every version is pinned (``REQUIREMENTS`` are the packages the benchmark uses,
``LOCKED`` what they pulled in), so two runs months apart compare the same
peers. To move to newer releases, change the pins here and run this module.
"""

import argparse
import json
import logging
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv-peers")
REQUIREMENTS = [
    "dramatiq[redis,rabbitmq,gevent]==2.2.1",
    "celery[redis]==5.7.0",
    "gevent==26.9.0",
    "requests==2.34.2",
    "redis==8.1.0",
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
# the versions a run records in its results (meta.peers)
REPORTED = ("dramatiq", "celery", "gevent", "greenlet", "redis", "kombu", "pika", "requests", "urllib3")

logger = logging.getLogger("greenq.benchmarks.peers")


def python():
    """The peers' interpreter (it may not exist yet)."""
    return os.path.join(VENV, "bin", "python")


def bin_path(name):
    return os.path.join(VENV, "bin", name)


def available():
    """Whether the peers' virtualenv exists and has Dramatiq and Celery."""
    if not os.path.exists(python()):
        return False
    check = subprocess.run([python(), "-c", "import dramatiq, celery, gevent, requests"],
                           capture_output=True)
    return check.returncode == 0


def pins():
    """``{distribution name: pinned version}`` of everything installed here."""
    found = {}
    for spec in REQUIREMENTS + LOCKED:
        name, version = spec.split("==")
        found[name.split("[")[0]] = version
    return found


def installed(names):
    """``{name: version or None}`` in the peers' virtualenv, or {} without it."""
    if not os.path.exists(python()):
        return {}
    code = ("import json, sys, importlib.metadata as m\n"
            "def v(n):\n"
            "    try:\n        return m.version(n)\n"
            "    except m.PackageNotFoundError:\n        return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    out = subprocess.run([python(), "-c", code, *names], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def mismatches():
    """``["name: installed X, pinned Y", ...]`` for the peers' virtualenv (empty when it matches the pins)."""
    wanted = pins()
    have = installed(list(wanted))
    return [f"{name}: installed {have.get(name)}, pinned {version}"
            for name, version in wanted.items() if have.get(name) != version]


def ensure(sync=False):
    """Create the virtualenv and install the pinned peers if missing (``sync``: also fix wrong versions)."""
    if available() and not (sync and mismatches()):
        return python()
    if not os.path.exists(python()):
        logger.info("Creating %s", VENV)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    logger.info("Installing %s (and their pinned dependencies) into %s", ", ".join(REQUIREMENTS), VENV)
    subprocess.run([python(), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS, *LOCKED],
                   check=True)
    return python()


def versions():
    """``{"dramatiq": "2.2.1", "celery": "5.7.0", ...}`` of the peers' virtualenv, or {}."""
    if not available():
        return {}
    return installed(REPORTED)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure(sync=True)
    wrong = mismatches()
    print(json.dumps(versions()))
    if wrong:
        print("not at the pins: " + "; ".join(wrong), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
