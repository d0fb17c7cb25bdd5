"""The peers' virtualenv: Dramatiq and Celery, installed beside greenq, never into it.

    python -m benchmarks.peers            # create or update benchmarks/.venv-peers

The benchmark runs Dramatiq's and Celery's own worker commands from this
virtualenv, so their dependencies (and their versions of gevent, redis-py,
kombu...) never leak into greenq's environment or its requirements. Creating
it downloads a few dozen MB from PyPI once; afterwards ``ensure()`` only checks
that the interpreter is there. matplotlib is installed here too, for the chart.
"""

import argparse
import logging
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv-peers")
REQUIREMENTS = [
    "dramatiq[redis,rabbitmq,gevent]",
    "celery[redis]",
    "gevent",
    "requests",
    "redis",
    "matplotlib",
]

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


def ensure(upgrade=False):
    """Create the virtualenv and install the peers if they are missing; return its python."""
    if available() and not upgrade:
        return python()
    if not os.path.exists(python()):
        logger.info("Creating %s", VENV)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    logger.info("Installing %s into %s", ", ".join(REQUIREMENTS), VENV)
    subprocess.run([python(), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *(["--upgrade"] if upgrade else []), *REQUIREMENTS], check=True)
    return python()


def versions():
    """``{"dramatiq": "1.x", "celery": "5.x", ...}`` of the peers' virtualenv, or {}."""
    if not available():
        return {}
    code = ("import json, importlib.metadata as m; "
            "print(json.dumps({n: m.version(n) for n in ('dramatiq', 'celery', 'gevent', 'redis', 'kombu')}))")
    out = subprocess.run([python(), "-c", code], capture_output=True, text=True)
    import json

    return json.loads(out.stdout) if out.returncode == 0 else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="upgrade the peers to their latest releases")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure(upgrade=args.upgrade)
    print(versions())


if __name__ == "__main__":
    main()
