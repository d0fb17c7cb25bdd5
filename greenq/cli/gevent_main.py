"""``greenq-gevent``: patch the standard library for gevent, then run the ``greenq`` command.

Patching must come before anything else imports ``threading``, ``socket`` or
``ssl``; a lock or socket created before the patch would block the whole
process instead of one greenlet. ``bin/greenq-gevent`` patches on its first
line. The setup.py entry point cannot: Python imports the ``greenq`` package
(and its core) before this module runs. When that happened, ``main`` re-executes
the interpreter with a tiny bootstrap that patches first; the pid stays the
same (``execv``), and the cost is one interpreter start-up.
"""

from gevent import monkey  # noqa: I001 - must stay the first import

_ALREADY_IMPORTED = None
if not monkey.is_module_patched("threading"):
    import sys as _sys

    # greenq's core creates locks at import time; if it is already loaded, patching now is too late.
    _ALREADY_IMPORTED = sorted(m for m in ("greenq.worker", "greenq.broker") if m in _sys.modules)
    if not _ALREADY_IMPORTED:
        monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

BOOTSTRAP = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys; from greenq.cli.gevent_main import main; main(prog_name='greenq-gevent')\n"
)


def main(argv=None, prog_name="greenq-gevent"):
    """Entry point of ``greenq-gevent``."""
    if _ALREADY_IMPORTED:
        args = list(sys.argv[1:] if argv is None else argv)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-c", BOOTSTRAP, *args], env)
    from greenq.cli.main import main as greenq_main

    greenq_main(argv, prog_name=prog_name)


if __name__ == "__main__":
    main()
