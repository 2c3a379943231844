"""The Windows stand-in: the kit's own code, run on Linux with the POSIX-only names taken away.

CI runs on Linux only, and students bring Windows laptops. Native Windows Python has no
``socket.MSG_DONTWAIT``, ``signal.SIGKILL``, ``os.killpg`` or ``os.geteuid``, and no ``fcntl``,
``resource``, ``readline`` or ``termios`` modules. With this folder on ``PYTHONPATH`` Python
imports this file at start-up (every Python started from there too: servers, kernels), and
from then on the *kit's own code* sees the system as Windows would show it:

- ``import socket`` (``signal``, ``os``, ``select``) gives it the real module without those
  names: reading one raises ``AttributeError``, ``getattr(module, name, None)`` gives ``None``
  and ``hasattr`` says False, exactly as on Windows;
- ``import fcntl`` (``resource``, ``readline``, ...) raises ``ModuleNotFoundError``.

The kit's own code is the package ``chatlab``, the lessons' and labs' cells and files, the
benchmarks and the programs the tests run (``python -m chatlab.server``): anything imported
from a file under the repository but outside ``tests/``, and code with no file (a notebook
cell). Python's own modules and the libraries (pytest, Jupyter, ``subprocess``, whose
``Popen.kill()`` needs ``SIGKILL`` on Linux) are left alone: on Windows they take their own
Windows branches, which this stand-in cannot imitate.

What it does not imitate: how Windows *behaves* where the names are the same (``select()``
takes at most 512 sockets, ``SO_REUSEADDR`` means something else, asyncio's default loop is the
Proactor, Ctrl-C and signals reach a program differently). ``tests/test_portable.py`` tests
those branches with the platform faked, and INSTRUCTORS.md says what was run where.
"""

from __future__ import annotations

import builtins
import os
import sys
import types
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
TESTS = REPOSITORY / "tests"
VENV = REPOSITORY / ".venv"

MISSING_NAMES = {
    "socket": {"MSG_DONTWAIT", "AF_UNIX", "SO_REUSEPORT"},
    "signal": {"SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGPIPE", "SIGCHLD"},
    "os": {
        "killpg",
        "getpgid",
        "setsid",
        "fork",
        "geteuid",
        "getuid",
        "sched_setaffinity",
        "sched_getaffinity",
    },
    "select": {"poll", "epoll", "kqueue"},
}
MISSING_MODULES = {"fcntl", "resource", "readline", "termios", "tty", "pty", "pwd", "grp"}

_real_import = builtins.__import__


class _WindowsView(types.ModuleType):
    """A module as the kit's code sees it on Windows: the real one, less the missing names."""

    def __init__(self, module: types.ModuleType, missing: set[str]) -> None:
        super().__init__(module.__name__)
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_missing", missing)

    def __getattr__(self, name: str):
        if name in self._missing:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} (Windows stand-in)")
        return getattr(self._module, name)

    def __dir__(self) -> list[str]:
        return [name for name in dir(self._module) if name not in self._missing]


_VIEWS = {
    name: _WindowsView(sys.modules.get(name) or _real_import(name), missing)
    for name, missing in MISSING_NAMES.items()
}


def _is_kit_code(globals_: dict | None) -> bool:
    if not globals_:
        return False
    file = globals_.get("__file__")
    if file is None:  # a notebook cell, `python -c`: only the kernel's and the user's code has no file
        return globals_.get("__name__") == "__main__"
    try:
        path = Path(file).resolve()
    except (OSError, TypeError):
        return False
    if not path.is_relative_to(REPOSITORY) or path.is_relative_to(TESTS) or path.is_relative_to(VENV):
        return False
    return True


def _import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 (the builtin's own names)
    if level == 0 and _is_kit_code(globals):
        top = name.partition(".")[0]
        if top in MISSING_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r} (Windows stand-in)", name=name)
        if name in _VIEWS:
            return _VIEWS[name]
    return _real_import(name, globals, locals, fromlist, level)


builtins.__import__ = _import
os.environ["CHATLAB_WINDOWS_STANDIN"] = "1"  # so a test can tell that it runs under the stand-in
# Every program started from here runs under the stand-in too, wherever it starts (a notebook's
# kernel starts in notebooks/): a relative PYTHONPATH, as typed by hand, is made absolute.
os.environ["PYTHONPATH"] = os.pathsep.join(
    os.path.abspath(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry
)
