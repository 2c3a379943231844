"""The grader: run a chat server, talk to it over raw sockets, and say what works.

``python -m chatlab.grade -- python my_server.py --port {port}`` starts the command on a free
port of 127.0.0.1, waits (bounded) until the port accepts, runs the checks, stops the program
(SIGTERM, then SIGKILL) and prints one row per check: ``✔ stage: name``, or ``✘ stage: name``
with a one-line hint naming the bug and the transcript of what was sent (``>``) and what came
back (``<``). The last line is ``grade: N passed, M failed``; the exit status is 0 exactly when
nothing failed. ``--address HOST:PORT`` grades a server that is already running, ``--stage``
picks stages, and ``--batch DIR`` grades every ``*.py`` in a folder of submissions into a CSV.
From Python, :func:`grade` returns a :class:`Report` (a table in Jupyter).

The package, in reading order: ``wire`` talks to the server (raw connections read line by line
with deadlines, and the transcript of what was said), ``checks`` holds the checks in four
stages, one per lab, ``runner`` runs them and gathers the report (starting and stopping the
command it is given), and ``__main__`` is the program. Every wait is bounded: a line that does
not come within ``timeout`` seconds (2 by default) fails its check, and a report is the same for
the same server behaviour (no times, no ports).
"""

from .checks import CHECKS, STAGES, Check
from .runner import CheckResult, Report, grade
from .wire import shown

__all__ = ["CHECKS", "STAGES", "Check", "CheckResult", "Report", "grade", "shown"]
