"""How `make test` shares the suite among pytest-xdist workers (``pytest -n 6``).

Much of the suite's time is spent waiting (servers, kernels, a browser), not computing, so six
workers on two cores finish in well under half the time of one. Which tests go together:

- By default a file's tests stay together, in order, in one worker, as they run without xdist:
  a notebook (nbval runs its cells one by one in one kernel), and every test module, so a
  module-scoped fixture (a Redis, network namespaces, a built wheel, certificates, graded
  servers) is made once.
- The files in :data:`SPREAD` are long and their tests independent: each of their tests goes to
  whichever worker is free. They are also queued first, slowest first, so no long test starts
  last.
- The files in :data:`DEALT` are long too, but their module-scoped fixture is dear (JupyterLab
  and Chromium take 20-30 s to start): their parametrized tests are dealt into a few groups,
  each run in one worker, in order, with one fixture. The file's other tests stay together, in
  order, in the first group (the browser tests on lesson 5's live chat share its page).

A plain ``pytest`` (no ``-n``), or one file, runs as it always did; nothing here applies.

One more thing here applies to every run: on POSIX, nbval's kernels talk to pytest over Unix
sockets, not TCP ports (see :func:`pytest_configure`).
(pytest-xdist's own ``--dist loadgroup`` would do the grouping, but it renames test ids in a way
pytest 9 no longer sees, so this file asks for the grouping through xdist's scheduler hook.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Any

import pytest

# Slowest first (the order they are queued in): measured with `pytest --durations=0`.
SPREAD = (
    "tests/test_windows_standin.py",  # five suites under the Windows stand-in, 0.5-1.5 min each
    "tests/test_lessons_rerun.py",  # each lesson run twice in one kernel
    "tests/test_grade.py",  # each test grades its own servers (about 4.5 min in all)
    "tests/test_labs.py",
    "tests/test_exercises.py",
    "tests/test_faults.py",
)
# Each lesson and lab in JupyterLab in Chromium, 5-30 s each: dealt into 3 groups.
DEALT = {"tests/browser/test_lessons_in_browser.py": 3}
QUEUED_FIRST = (
    "tests/browser/test_lessons_in_browser.py",
    *SPREAD[:3],
    "tests/browser/test_site.py",  # builds the website first (up to 1.5 min on a busy machine)
)


def pytest_configure(config: pytest.Config) -> None:
    """On POSIX, start nbval's kernels on Unix sockets instead of five TCP ports each.

    jupyter_client picks a kernel's ports by binding port 0 and letting go; the kernel binds
    them a moment later. Meanwhile the suite's thousands of client connections take ports from
    the same ephemeral range, and when one takes a kernel's port first the kernel exits at once
    ("Kernel died before replying to kernel_info", from zmq's "Address already in use"): a
    notebook that fails before its first cell. Unix sockets have no ports to lose. Windows has
    no zmq ipc transport and keeps TCP.
    """
    if os.name != "posix":
        return
    try:
        import nbval.kernel
        from jupyter_client.manager import KernelManager
    except ImportError:  # nbval is not installed: no notebooks are collected
        return
    # A short folder: a Unix socket's path must stay under 104 bytes (macOS) or 108 (Linux).
    folder = tempfile.mkdtemp(prefix="chatlab-kernels-", dir="/tmp")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))

    class UnixSocketKernelManager(KernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", os.path.join(folder, uuid.uuid4().hex[:12]))
            super().__init__(**kwargs)

    nbval.kernel.KernelManager = UnixSocketKernelManager  # what nbval's start_new_kernel() calls


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With workers, queue the longest files first (every worker sorts its list the same way:
    the scheduler takes the workers' order, and in a worker ``-n`` is not set, so a worker is
    told by its ``workerinput``)."""
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        rank = {path: n for n, path in enumerate(QUEUED_FIRST)}
        items.sort(key=lambda item: rank.get(file_of(item.nodeid), len(rank)))


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pytest-xdist is not installed: plain pytest
    pass
else:

    class CourseScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, where a scope is a file, one test of a SPREAD file, or
        one group of a DEALT file."""

        def __init__(self, config: pytest.Config, log: object = None) -> None:
            config.option.loadscopereorder = False  # keep the order above, not "biggest file first"
            super().__init__(config, log)  # type: ignore[arg-type]
            self._scopes: dict[str, str] = {}  # nodeid: its scope, decided once
            self._dealt: dict[str, int] = {}  # DEALT file: tests dealt so far

        def _split_scope(self, nodeid: str) -> str:
            if nodeid not in self._scopes:
                path = file_of(nodeid)
                if path in DEALT and "[" not in nodeid:
                    self._scopes[nodeid] = f"{path}#0"
                elif path in DEALT:  # dealt from the second group on: the first has the others
                    turn = self._dealt.get(path, 0) + 1
                    self._dealt[path] = turn
                    self._scopes[nodeid] = f"{path}#{turn % DEALT[path]}"
                else:
                    self._scopes[nodeid] = nodeid if path in SPREAD else path
            return self._scopes[nodeid]

    def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> CourseScheduling:
        return CourseScheduling(config, log)
