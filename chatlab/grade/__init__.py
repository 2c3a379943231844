"""The grader: run a chat server, talk to it over raw sockets, and say what works.

``python -m chatlab.grade -- python my_server.py --port {port}`` (or ``chatlab-grade ...``)
starts the command on a free port of 127.0.0.1, waits (bounded) until the port accepts, runs the
checks, stops the program by its pid and prints one row per check with its points:
``✔ stage: name (1/1)``, or ``✘ stage: name (0/1)`` with a one-line hint naming the bug and the
transcript of what was sent (``>``) and what came back (``<``). The last line is
``grade: N passed, M failed, P/T points``; the exit status is 0 exactly when nothing failed.
``--address HOST:PORT`` grades a server that is already running, ``--stage`` picks stages,
``--format`` writes the report for Gradescope, PrairieLearn, JUnit or as JSON, ``--quiet`` keeps
standard error empty, and ``--batch DIR`` grades every ``*.py`` in a folder of submissions into
a CSV. From Python, :func:`grade` returns a :class:`Report` (a table in Jupyter).

The package, in reading order: ``wire`` talks to the server (raw connections read line by line
with deadlines, and the transcript of what was said), ``checks`` holds the checks in four
stages, one per lab, ``runner`` runs them and gathers the report (starting and stopping the
command it is given), ``formats`` writes the report for course platforms, and ``__main__`` is
the program. Every wait is bounded: a line that does not come within ``timeout`` seconds (2 by
default) fails its check, and a report is the same for the same server behaviour (no times, no
ports).
"""

from .checks import CHECKS, STAGES, Check
from .formats import FORMATS, render
from .runner import CheckResult, Limits, Report, grade
from .wire import shown

__all__ = [
    "CHECKS",
    "FORMATS",
    "STAGES",
    "Check",
    "CheckResult",
    "Limits",
    "Report",
    "grade",
    "render",
    "shown",
]
