"""Import the user's modules and find the broker they use, with one-line errors.

``greenq app app.tasks`` imports each module; ``greenq app:redis_broker`` also
names the broker variable to use. Without a name, the broker is the one the app
set with ``greenq.set_broker`` or, failing that, ``greenq.get_broker()``
(``GREENQ_BROKER_URL``, else the embedded SQLite file).

Runs in each worker process, never in the master, so a reload (HUP) imports
the code afresh and a module that fails to import cannot take the master down.
"""

import importlib
import os
import sys

from .. import broker as broker_module
from ..broker import Broker
from ..errors import ConnectionError as BrokerConnectionError


class AppImportError(Exception):
    """A module or broker variable named on the command line cannot be loaded (exit code 2)."""


def split_spec(spec):
    """``"pkg.mod:name"`` -> ``("pkg.mod", "name")``; ``"pkg.mod"`` -> ``("pkg.mod", None)``."""
    module, _, attribute = spec.partition(":")
    if not module or (":" in spec and not attribute):
        raise AppImportError(f"{spec!r} is not a module name or module:broker_variable")
    return module, attribute or None


def add_paths(paths):
    """Put ``--path`` directories first on ``sys.path``, in the order given."""
    for path in reversed(paths):
        path = os.path.abspath(path)
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def load(specs, paths=()):
    """Import every module in ``specs`` and return the broker to run.

    Raises ``AppImportError`` with a one-line message naming the module (and
    the exception's type and text) instead of a traceback.
    """
    add_paths(paths)
    named = None
    for spec in specs:
        module_name, attribute = split_spec(spec)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                raise AppImportError(f"cannot import module {module_name!r}: no such module "
                                     f"(searched {', '.join(paths) or 'sys.path'})") from None
            raise AppImportError(f"cannot import module {module_name!r}: {type(e).__name__}: {e}") from None
        except SystemExit as e:
            raise AppImportError(f"cannot import module {module_name!r}: it called sys.exit({e.code!r})") from None
        except BrokerConnectionError:
            raise  # the module is fine, the broker it talks to at import is not: exit code 3, not 2
        except BaseException as e:  # any error in the user's module code is reported, not raised
            if isinstance(e, KeyboardInterrupt):
                raise
            raise AppImportError(f"cannot import module {module_name!r}: {type(e).__name__}: {e}") from None
        if attribute is not None:
            try:
                candidate = getattr(module, attribute)
            except AttributeError:
                raise AppImportError(f"module {module_name!r} has no attribute {attribute!r}") from None
            if not isinstance(candidate, Broker):
                raise AppImportError(f"{module_name}:{attribute} is a {type(candidate).__name__}, not a greenq Broker")
            named = candidate
    if named is not None:
        if broker_module._broker is not named:
            broker_module.set_broker(named)
        return named
    try:
        return broker_module.get_broker()
    except (ImportError, ValueError) as e:
        raise AppImportError(f"cannot build the broker: {e}") from None
