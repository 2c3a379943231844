"""Running the checks: a report of what passed, and a server program started and stopped.

:func:`grade` grades a running server's address, or a command with ``{port}`` in it: it starts
the command on a free port of 127.0.0.1 (on POSIX in a session of its own, so that a Ctrl-C in
the terminal reaches the grader, not the server), waits (bounded) until the port accepts, runs
the checks and stops the program by its pid (``terminate()``, then ``kill()``: SIGTERM and
SIGKILL on POSIX, TerminateProcess on Windows). Only the stages asked for are reported, but
:func:`run_checks` also runs the checks they need from other stages; a check whose needs failed
is not run, and fails naming the first of them. When a started server exits, the check during
which it did says so (with the server's last lines, when its output goes to a file), and every
check after it fails at once.

A started command can be given :class:`Limits` (CPU time, memory, processes, open files) and a
user to run as. Both are set by a few lines of Python that run in the new process and then
``exec`` the command, so the pid the grader stops is still the server's. They need the POSIX
``resource`` and ``pwd`` modules: on Windows the command runs without limits, with a warning.

A :class:`Report` holds one :class:`CheckResult` per check, in order, each worth its check's
points: ``str(report)`` is the text table the program prints, Jupyter shows an HTML table, and
both end with ``grade: N passed, M failed, P/T points``; ``chatlab.grade.formats`` writes the
same report for course platforms. A report is the same for the same server behaviour: no times,
no ports.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from ..portable import stop_process
from .checks import CHECKS, STAGES, Check
from .wire import Failed, Run

log = logging.getLogger("chatlab.grade")

DEFAULT_TIMEOUT = 2.0
"""Seconds to wait for any one line the server should send."""
START_TIMEOUT = 10.0  # for a started command to accept connections
STOP_TIMEOUT = 3.0  # after terminate(), before kill()
LOG_TAIL = 20  # lines of a started server's output kept in the report
LOG_LINE_CHARS = 200  # a longer line of it is cut
LAST_WORDS = 5  # lines of it shown with the check during which the server exited
EXIT_GRACE = 0.2  # seconds a failed check waits to see whether the server is exiting


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """How one check went: ``ok``, and for a failure a hint and what was said on the wire;
    ``points`` is what the check is worth, and ``score`` what it earned (all or nothing)."""

    stage: str
    name: str
    ok: bool
    hint: str = ""
    transcript: tuple[str, ...] = ()
    points: int = 1

    @property
    def score(self) -> int:
        return self.points if self.ok else 0


@dataclass
class Report:
    """Every check's result, in order; ``str(report)`` is the text table, and Jupyter shows a
    table (``_repr_html_``). Both end with ``grade: N passed, M failed, P/T points``.

    ``server_log`` holds the last lines a started server wrote, when its output went to a file
    (``grade(..., log=PATH)``): course platforms show them to the student beside the report.
    """

    results: list[CheckResult] = field(default_factory=list)
    server_log: tuple[str, ...] = ()

    @property
    def passed(self) -> list[CheckResult]:
        return [result for result in self.results if result.ok]

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if not result.ok]

    @property
    def score(self) -> int:
        return sum(result.score for result in self.results)

    @property
    def max_score(self) -> int:
        return sum(result.points for result in self.results)

    @property
    def summary(self) -> str:
        return (
            f"grade: {len(self.passed)} passed, {len(self.failed)} failed, "
            f"{self.score}/{self.max_score} points"
        )

    def __str__(self) -> str:
        rows = []
        for result in self.results:
            mark = "✔" if result.ok else "✘"
            rows.append(f"{mark} {result.stage}: {result.name} ({result.score}/{result.points})")
            if not result.ok:
                rows.append(f"    {result.hint}")
                rows.extend(f"      {line}" for line in result.transcript)
        rows.append(self.summary)
        return "\n".join(rows)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        # JupyterLab right-aligns table cells: every cell says how it wants to be laid out.
        left = ' style="text-align:left;vertical-align:top"'
        rows = []
        for result in self.results:
            mark = '<span style="color:#080">✔</span>' if result.ok else '<span style="color:#c00">✘</span>'
            detail = ""
            if not result.ok:
                detail = html.escape(result.hint)
                if result.transcript:
                    transcript = html.escape("\n".join(result.transcript))
                    detail += f'<pre style="margin:0.3em 0 0 0;text-align:left">{transcript}</pre>'
            points = f"{result.score}/{result.points}"
            cells = (mark, html.escape(result.stage), html.escape(result.name), points, detail)
            rows.append("<tr>" + "".join(f"<td{left}>{cell}</td>" for cell in cells) + "</tr>")
        titles = ("", "stage", "check", "points", "what went wrong")
        header = "".join(f"<th{left}>{title}</th>" for title in titles)
        return (
            f'<table class="chatlab-grade"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody>"
            f'<tfoot><tr><td colspan="5"{left}>{self.summary}</td></tr></tfoot></table>'
        )


# --- grading ----------------------------------------------------------------------------------


def run_checks(
    address: tuple[str, int],
    stages: Sequence[str],
    timeout: float,
    process: subprocess.Popen | None = None,
    log_file: Path | None = None,
) -> Report:
    """Run the checks of ``stages`` against the server at ``address``; also the checks they
    need from other stages, which are not reported.

    With the started server's ``process``, a check that fails because the server exited says
    so (with its last lines from ``log_file``), and the checks after it fail at once."""
    by_name = {c.name: c for c in CHECKS}
    wanted = {c.name for c in CHECKS if c.stage in stages}
    todo = set(wanted)
    for c in reversed(CHECKS):  # a check needs only earlier checks
        if c.name in todo:
            todo.update(c.needs)
    outcome: dict[str, bool] = {}
    report = Report()
    gone: str | None = None  # the hint for every check once the server has exited
    for number, c in enumerate(CHECKS, 1):
        if c.name not in todo:
            continue
        missing = [need for need in c.needs if not outcome[need]]
        if gone is not None:  # first: "needs X" would hide that nothing is listening any more
            result = CheckResult(c.stage, c.name, False, gone, (), c.points)
        elif missing:
            need = by_name[missing[0]]
            where = "" if need.stage in stages else f" (stage {need.stage})"
            result = CheckResult(
                c.stage, c.name, False, f"needs '{need.name}'{where} to pass first", (), c.points
            )
        else:
            result = run_one(c, address, timeout, number)
            if not result.ok and process is not None and (ended := how_it_ended(process)):
                last = log_tail(log_file)[-LAST_WORDS:] if log_file is not None else ()
                said = f"(the server {ended}{'; its last lines:' if last else ''})"
                hint = f"the server {ended} during this check: read its output (a traceback?)"
                result = replace(result, hint=hint, transcript=(*result.transcript, said, *last))
                gone = f"the server {ended} during '{c.name}'"
        outcome[c.name] = result.ok
        if c.name in wanted:
            report.results.append(result)
    return report


def run_one(c: Check, address: tuple[str, int], timeout: float, number: int) -> CheckResult:
    run = Run(address, timeout, number)
    try:
        c.function(run)
    except Failed as failure:
        return CheckResult(
            c.stage, c.name, False, failure.hint or c.hint, run.transcript.shown_lines(), c.points
        )
    except Exception as exc:  # the grader's own bug must not hide the other checks
        log.exception("check %r crashed", c.name)
        run.transcript.add(f"(the grader crashed: {exc!r})")
        return CheckResult(c.stage, c.name, False, c.hint, run.transcript.shown_lines(), c.points)
    finally:
        run.close()
    return CheckResult(c.stage, c.name, True, points=c.points)


def how_it_ended(process: subprocess.Popen) -> str | None:
    """None while ``process`` runs (given a moment to finish exiting), else how it ended."""
    try:
        status = process.wait(EXIT_GRACE)
    except subprocess.TimeoutExpired:
        return None
    return f"was killed by signal {-status}" if status < 0 else f"exited (status {status})"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Limits:
    """What a started server may use (POSIX ``setrlimit``), set before it runs a line of its
    own: CPU seconds, bytes of address space, open files, and processes. The kernel counts
    processes (and, on Linux, threads) for the whole user, so ``more_processes`` is how many
    the server may add to what its user already runs (counted with psutil when it is
    installed; without it the limit is FALLBACK_PROCESSES). Root is not held to it. The
    defaults fit a chat server graded on every stage, with room to spare."""

    cpu_seconds: int = 60
    memory_bytes: int = 4 << 30
    open_files: int = 512
    more_processes: int = 256

    def as_rlimits(self, user: str | None = None) -> dict[str, int]:
        running = running_threads(user)
        return {
            "RLIMIT_CPU": self.cpu_seconds,
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_NPROC": FALLBACK_PROCESSES if running is None else running + self.more_processes,
        }


FALLBACK_PROCESSES = 4096  # the process limit when the user's threads cannot be counted


def running_threads(user: str | None) -> int | None:
    """How many threads (of all processes) ``user`` (or this process's user) runs now; None
    without psutil."""
    try:
        import psutil  # a lessons/dev dependency, not a core one
    except ImportError:
        return None
    wanted = user or psutil.Process().username()
    count = 0
    for process in psutil.process_iter(["username", "num_threads"]):
        if process.info["username"] == wanted:
            count += process.info["num_threads"] or 1
    return count


# Runs in the new process before the command: set the limits, drop to the user, then exec the
# command in this same process (so its pid is the one the grader stops).
LIMITED = """\
import json, os, sys
settings = json.loads(sys.argv[1])
if settings["limits"]:
    import resource
    for name, value in settings["limits"].items():
        kind = getattr(resource, name, None)
        if kind is None:  # not on this system (RLIMIT_NPROC on some)
            continue
        hard = resource.getrlimit(kind)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError) as exc:  # say so in the server's log, and go on
            print(f"chatlab.grade: cannot set {name} to {value}: {exc}", file=sys.stderr, flush=True)
if settings["user"]:
    import pwd
    user = pwd.getpwnam(settings["user"])
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def limited(command: Sequence[str], limits: Limits | None, user: str | None) -> list[str]:
    """``command``, run so that it starts with ``limits`` and as ``user`` (the grader must run
    as root for that). Without the ``resource`` module (Windows), without limits: a warning."""
    if limits is None and user is None:
        return list(command)
    try:
        import resource  # noqa: F401  (POSIX only)
    except ImportError:
        if user is not None:
            raise ValueError("running the server as another user needs a POSIX system") from None
        log.warning("no resource limits on this system (no 'resource' module): the server runs without them")
        return list(command)
    if user is not None:
        import pwd  # POSIX only, like resource

        if getattr(os, "geteuid", lambda: -1)() != 0:
            raise ValueError(f"running the server as {user!r} needs the grader to run as root")
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"there is no user {user!r} on this system") from None
    settings = {"limits": limits.as_rlimits(user) if limits else {}, "user": user}
    return [sys.executable, "-c", LIMITED, json.dumps(settings), *command]


@contextmanager
def started(
    command: Sequence[str],
    port: int,
    *,
    output: int | IO | None = subprocess.DEVNULL,
    limits: Limits | None = None,
    user: str | None = None,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` (``{port}`` filled in), its output (standard output and error) going to
    ``output``; stop it afterwards by its pid: ``terminate()``, and ``kill()`` if it is still
    there after STOP_TIMEOUT seconds."""
    args = limited([part.replace("{port}", str(port)) for part in command], limits, user)
    if os.name == "posix":
        detached: dict = {"start_new_session": True}
    else:
        detached = {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=output, stderr=output, **detached)
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Stop a started server by its pid: ``terminate()``, then ``kill()`` if need be."""
    stop_process(process, STOP_TIMEOUT)


def server_output(quiet: bool) -> int | None:
    """Where a started server's output goes without a log file: standard error (the grader's
    standard output is the report's), or nowhere when ``quiet``."""
    if quiet:
        return subprocess.DEVNULL
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a notebook's stderr has no descriptor
        return None


def log_tail(path: Path) -> tuple[str, ...]:
    """The last LOG_TAIL lines of a server's log file, each cut at LOG_LINE_CHARS."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ()
    cut = [line if len(line) <= LOG_LINE_CHARS else line[: LOG_LINE_CHARS - 3] + "..." for line in lines]
    return tuple(cut[-LOG_TAIL:])


def wait_until_listening(address: tuple[str, int], process: subprocess.Popen) -> str | None:
    """None once ``address`` accepts a connection, else why it never did (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"the server exited (status {process.returncode}) before it accepted a connection"
        try:
            socket.create_connection(address, timeout=1.0).close()
            return None
        except OSError:
            time.sleep(0.05)
    return f"the server did not accept connections within {START_TIMEOUT:g} s"


def grade(
    command: Sequence[str] | str | None = None,
    *,
    address: tuple[str, int] | None = None,
    stages: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    quiet: bool = True,
    log_file: str | os.PathLike | None = None,
    limits: Limits | None = None,
    user: str | None = None,
) -> Report:
    """Grade a chat server: a ``command`` with ``{port}`` in it (run on a free port of
    127.0.0.1 and stopped afterwards) or a running server's ``address``.

    ``stages`` picks stages by name (all of :data:`STAGES` by default); ``timeout`` is how
    long to wait for any one line. What a started command prints goes to ``log_file`` when one
    is given (its last lines are then kept in ``report.server_log``), else it is thrown away
    unless ``quiet`` is False (then it goes to standard error). ``limits`` and ``user``: see
    :class:`Limits` and :func:`limited`.
    """
    if (command is None) == (address is None):
        raise ValueError("give a command or an address, not both")
    stages = list(STAGES) if stages is None else list(stages)
    if unknown := [stage for stage in stages if stage not in STAGES]:
        raise ValueError(f"unknown stages {unknown}; the stages are {list(STAGES)}")
    if address is not None:
        return run_checks(address, stages, timeout)
    assert command is not None
    command = shlex.split(command) if isinstance(command, str) else list(command)
    if not any("{port}" in part for part in command):
        raise ValueError("the command must contain {port}, where the grader puts the port")
    address = ("127.0.0.1", free_port())
    output_file = None
    if log_file is not None:  # a fresh log, appended to: the grader may add lines of its own
        Path(log_file).write_bytes(b"")
        output_file = open(log_file, "ab")  # noqa: SIM115
    try:
        output = output_file if output_file is not None else server_output(quiet)
        with started(command, address[1], output=output, limits=limits, user=user) as process:
            if (trouble := wait_until_listening(address, process)) is None:
                log_path = Path(log_file) if log_file is not None else None
                report = run_checks(address, stages, timeout, process, log_path)
        if trouble is not None:
            report = every_check_failed(stages, trouble)
    except OSError as exc:  # the program does not exist, or may not be run
        report = every_check_failed(stages, f"cannot start {command[0]!r}: {exc.strerror or exc}")
    finally:
        if output_file is not None:
            output_file.close()
    if log_file is not None:
        report.server_log = log_tail(Path(log_file))
    return report


def every_check_failed(stages: Sequence[str], trouble: str) -> Report:
    """The report when no check could run at all (the server never listened, say): each
    check of ``stages`` failed, with ``trouble`` as its hint."""
    return Report(
        [CheckResult(c.stage, c.name, False, trouble, (), c.points) for c in CHECKS if c.stage in stages]
    )
