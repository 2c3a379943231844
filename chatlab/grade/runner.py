"""Running the checks: a report of what passed, and a server program started and stopped.

:func:`grade` grades a running server's address, or a command with ``{port}`` in it: it starts
the command on a free port of 127.0.0.1 in its own session, waits (bounded) until the port
accepts, runs the checks and stops the program by its pid (SIGTERM, then SIGKILL). Only the
stages asked for are reported, but :func:`run_checks` also runs the checks they need from other
stages; a check whose needs failed is not run, and fails naming the first of them.

A :class:`Report` holds one :class:`CheckResult` per check, in order: ``str(report)`` is the
text table the program prints, Jupyter shows an HTML table, and both end with
``grade: N passed, M failed``. A report is the same for the same server behaviour: no times, no
ports.
"""

from __future__ import annotations

import html
import logging
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from .checks import CHECKS, STAGES, Check
from .wire import Failed, Run

log = logging.getLogger("chatlab.grade")

DEFAULT_TIMEOUT = 2.0
"""Seconds to wait for any one line the server should send."""
START_TIMEOUT = 10.0  # for a started command to accept connections
STOP_TIMEOUT = 3.0  # after SIGTERM, before SIGKILL


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """How one check went: ``ok``, and for a failure a hint and what was said on the wire."""

    stage: str
    name: str
    ok: bool
    hint: str = ""
    transcript: tuple[str, ...] = ()


@dataclass
class Report:
    """Every check's result, in order; ``str(report)`` is the text table, and Jupyter shows a
    table (``_repr_html_``). Both end with ``grade: N passed, M failed``."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> list[CheckResult]:
        return [result for result in self.results if result.ok]

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if not result.ok]

    @property
    def summary(self) -> str:
        return f"grade: {len(self.passed)} passed, {len(self.failed)} failed"

    def __str__(self) -> str:
        rows = []
        for result in self.results:
            rows.append(f"{'✔' if result.ok else '✘'} {result.stage}: {result.name}")
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
            cells = (mark, html.escape(result.stage), html.escape(result.name), detail)
            rows.append("<tr>" + "".join(f"<td{left}>{cell}</td>" for cell in cells) + "</tr>")
        header = "".join(f"<th{left}>{title}</th>" for title in ("", "stage", "check", "what went wrong"))
        return (
            f'<table class="chatlab-grade"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody>"
            f'<tfoot><tr><td colspan="4"{left}>{self.summary}</td></tr></tfoot></table>'
        )


# --- grading ----------------------------------------------------------------------------------


def run_checks(address: tuple[str, int], stages: Sequence[str], timeout: float) -> Report:
    """Run the checks of ``stages`` against the server at ``address``; also the checks they
    need from other stages, which are not reported."""
    by_name = {c.name: c for c in CHECKS}
    wanted = {c.name for c in CHECKS if c.stage in stages}
    todo = set(wanted)
    for c in reversed(CHECKS):  # a check needs only earlier checks
        if c.name in todo:
            todo.update(c.needs)
    outcome: dict[str, bool] = {}
    report = Report()
    for number, c in enumerate(CHECKS, 1):
        if c.name not in todo:
            continue
        missing = [need for need in c.needs if not outcome[need]]
        if missing:
            need = by_name[missing[0]]
            where = "" if need.stage in stages else f" (stage {need.stage})"
            result = CheckResult(c.stage, c.name, False, f"needs '{need.name}'{where} to pass first")
        else:
            result = run_one(c, address, timeout, number)
        outcome[c.name] = result.ok
        if c.name in wanted:
            report.results.append(result)
    return report


def run_one(c: Check, address: tuple[str, int], timeout: float, number: int) -> CheckResult:
    run = Run(address, timeout, number)
    try:
        c.function(run)
    except Failed as failure:
        return CheckResult(c.stage, c.name, False, failure.hint or c.hint, run.transcript.shown_lines())
    except Exception as exc:  # the grader's own bug must not hide the other checks
        log.exception("check %r crashed", c.name)
        run.transcript.add(f"(the grader crashed: {exc!r})")
        return CheckResult(c.stage, c.name, False, c.hint, run.transcript.shown_lines())
    finally:
        run.close()
    return CheckResult(c.stage, c.name, True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextmanager
def started(command: Sequence[str], port: int, *, quiet: bool = False) -> Iterator[subprocess.Popen]:
    """Run ``command`` (``{port}`` filled in) in its own session; stop it afterwards by its
    pid: SIGTERM, and SIGKILL if it is still there after STOP_TIMEOUT seconds."""
    args = [part.replace("{port}", str(port)) for part in command]
    # Whatever it prints goes to standard error (or nowhere): standard output is the report's.
    output: int | None = subprocess.DEVNULL
    if not quiet:
        try:
            output = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # a notebook's stderr has no descriptor
            output = None
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True
    )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %g s: killing it", process.pid, STOP_TIMEOUT)
            process.kill()
            process.wait(STOP_TIMEOUT)


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
) -> Report:
    """Grade a chat server: a ``command`` with ``{port}`` in it (run on a free port of
    127.0.0.1 and stopped afterwards) or a running server's ``address``.

    ``stages`` picks stages by name (all of :data:`STAGES` by default); ``timeout`` is how
    long to wait for any one line; what a started command prints is thrown away unless
    ``quiet`` is False (then it goes to standard error).
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
    try:
        with started(command, address[1], quiet=quiet) as process:
            if (trouble := wait_until_listening(address, process)) is None:
                return run_checks(address, stages, timeout)
    except OSError as exc:  # the program does not exist, or may not be run
        trouble = f"cannot start {command[0]!r}: {exc.strerror or exc}"
    return Report([CheckResult(c.stage, c.name, False, trouble) for c in CHECKS if c.stage in stages])
