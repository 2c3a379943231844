"""The kit as a Windows laptop would run it: the suites below, again, under tests/windows_standin.

That folder's sitecustomize takes the POSIX-only names (``socket.MSG_DONTWAIT``,
``signal.SIGKILL``, ``os.killpg``, ``fcntl``, ``resource``, ``readline``, ...) away from the kit's
own code, in this pytest and in every Python it starts (servers, notebook kernels). Each suite
runs in a pytest of its own, so what it imports sees the stand-in from the first line. Under it
every server model must deliver, the client must chat, lessons 1-9 must give their stored
outputs, and the grader must grade and stop servers.

This runs code paths that Linux would not take (a non-blocking duplicate socket for every
send, the listener woken by a connection, the stop without SIGKILL); it does not run Windows
itself: see INSTRUCTORS.md for what was run on which system.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "windows_standin"

# Lesson 7 is here too: its direct delivery must stall on the slow client's full socket as on
# Linux. It did not while that socket had a timeout (the Windows path): Python then polls before
# each send(), TCP calls a socket writable only with a third of its buffer free, and the stalled
# sendall() went on when the system grew the buffer, letting carol's notices past (4 of 6 runs).
LESSONS = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "notebooks").glob("0[1-9]_*.ipynb"))
SUITES = {
    "models and client": ["tests/test_portable.py", "tests/test_models.py", "tests/test_client.py"],
    # Lessons in two halves, and the grader apart from the labs, so that pytest-xdist can give
    # them to different workers (each suite is one test, and the longest tests of the run).
    "lessons 1-4": LESSONS[:4],
    "lessons 5-9": LESSONS[4:],
    # the grader grading the kit's three models, a broken server and the labs' references, and
    # stopping each server it started (the whole of test_grade.py again would add minutes)
    "grader": [
        "tests/test_grade.py",
        "-k",
        "every_kit_model or command_line_starts_a_kit_server or exits_1_for_each_bug"
        " or stops_the_process_it_started or reference_gets_full_marks",
    ],
    "labs": ["tests/test_labs.py"],
}


@pytest.mark.parametrize("suite", list(SUITES))
def test_the_suite_passes_under_the_windows_standin(suite: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(STANDIN), env.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", *SUITES[suite]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = "\n".join(result.stdout.splitlines()[-30:])
    assert result.returncode == 0, f"{suite} under the Windows stand-in:\n{tail}\n{result.stderr[-2000:]}"
    assert " passed" in tail.splitlines()[-1], tail
    assert "under the Windows stand-in only" not in result.stdout, "the stand-in was not in force"
