"""The program: ``python -m chatlab.grade`` (or ``chatlab-grade``), for one server or a folder of
submissions.

``chatlab-grade [--stage NAME ...] [--timeout S] -- COMMAND ...`` grades a command with
``{port}`` in it, and ``--address HOST:PORT`` a server that is already running: both write the
report (``--format text|json|gradescope|prairielearn|junit``, to ``--output FILE`` or standard
output), and the exit status is 0 exactly when nothing failed. A started server's output goes
to standard error, or to ``--server-log FILE``; with ``--quiet`` nothing goes to standard error
at all (autograding actions count any of it as a failure): the server's output and the
grader's own messages go to the server log (``chatlab-grade-server.log`` unless named).
``--limits`` starts the server with :class:`~chatlab.grade.runner.Limits`, and ``--user NAME``
as another user (the grader must run as root).

``--batch DIR [--csv OUT] [--reports DIR]`` grades every ``*.py`` in a folder as
``python FILE --port {port}``, each in a grader process of its own, with limits, and where the
machine allows it (Linux, root, ``unshare``) in a network namespace of its own with only a
loopback interface. It writes one CSV row per file (each check's points, the totals and the
first failure's hint), keeps each submission's report (``NAME.txt``, ``NAME.json``) and server
output (``NAME.server.log``) in the reports folder (beside the CSV: ``grades.csv`` keeps them in
``grades-reports/``), and exits with status 1 when any submission failed a check. It says on
standard error how each submission went; with ``--quiet`` it says nothing, and its own
messages go to ``batch.log`` in the reports folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from .checks import CHECKS, STAGES
from .formats import FORMATS, as_json, render, report_from_json
from .runner import DEFAULT_TIMEOUT, STOP_TIMEOUT, Limits, Report, every_check_failed, grade

log = logging.getLogger("chatlab.grade")

QUIET_LOG = Path("chatlab-grade-server.log")  # where --quiet sends the server's output by default
SUBMISSION_TIMEOUT = 600.0  # seconds for one submission of a batch, all its checks included

# Runs first in a new network namespace (unshare --net): bring its loopback interface up (it
# starts down, and it is the only one there), then exec the grader. Linux only: fcntl.ioctl
# with SIOCGIFFLAGS / SIOCSIFFLAGS on a struct ifreq (16-byte name, flags, padding to 40).
LOOPBACK_UP = """\
import fcntl, os, socket, struct, sys
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket() as sock:
    flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0)))[1]
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
os.execv(sys.argv[1], sys.argv[1:])
"""


def network_namespace() -> tuple[list[str] | None, str]:
    """The command prefix that runs a program in a new network namespace with loopback only,
    or None and why this machine cannot (it takes Linux, root and ``unshare``)."""
    if not sys.platform.startswith("linux"):
        return None, "network namespaces are a Linux feature"
    if getattr(os, "geteuid", lambda: -1)() != 0:
        return None, "a network namespace needs root"
    if shutil.which("unshare") is None:
        return None, "the 'unshare' command (util-linux) is not installed"
    prefix = ["unshare", "--net", "--", sys.executable, "-c", LOOPBACK_UP]
    listen = "import socket; socket.create_server(('127.0.0.1', 0)).close()"
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", listen], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"'unshare --net' failed: {exc}"
    if probe.returncode != 0:
        said = probe.stderr.decode(errors="replace").strip().splitlines()
        return None, f"'unshare --net' failed: {said[-1] if said else f'status {probe.returncode}'}"
    return prefix, ""


def grade_submission(
    file: Path, stages: Sequence[str], timeout: float, reports: Path, namespace: list[str] | None
) -> Report:
    """Grade one file in a grader process of its own (in ``namespace`` when given), with
    limits; its JSON report and its server's output are kept in ``reports``."""
    report_file = reports / f"{file.stem}.json"
    server_log = reports / f"{file.stem}.server.log"
    report_file.unlink(missing_ok=True)
    grader = [
        sys.executable, "-m", "chatlab.grade", "--quiet", "--limits", "--format", "json",
        "--output", str(report_file), "--server-log", str(server_log), "--timeout", str(timeout),
        "--stage", *stages, "--", sys.executable, str(file.resolve()), "--port", "{port}",
    ]  # fmt: skip
    command = [*namespace, *grader] if namespace else grader
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        said, _ = process.communicate(timeout=SUBMISSION_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.terminate()  # the grader stops its server on the way out
        try:
            said, _ = process.communicate(timeout=STOP_TIMEOUT + 2)
        except subprocess.TimeoutExpired:
            process.kill()
            said, _ = process.communicate()
        return every_check_failed(stages, f"grading took more than {SUBMISSION_TIMEOUT:g} s: stopped")
    if process.returncode in (0, 1) and report_file.exists():
        return report_from_json(json.loads(report_file.read_text(encoding="utf-8")))
    lines = said.decode(errors="replace").strip().splitlines() or ["(nothing)"]
    with server_log.open("a", encoding="utf-8") as kept:
        kept.write("\n".join(["", "--- the grader's own output ---", *lines, ""]))
    return every_check_failed(
        stages, f"the grader could not grade it (status {process.returncode}): {lines[-1]}"
    )


def first_failure(report: Report) -> str:
    return next((f"{result.name}: {result.hint}" for result in report.failed), "")


def grade_folder(
    folder: Path, stages: Sequence[str] | None, timeout: float, sheet: Path | None, reports: Path, quiet: bool
) -> int:
    """Grade every ``*.py`` in ``folder``; write the CSV (to ``sheet``, or standard output) and
    each submission's reports into ``reports``. Status 1 when any submission failed a check."""
    files = sorted(folder.glob("*.py"))
    selected = list(STAGES) if stages is None else list(stages)
    checks = [c.name for c in CHECKS if c.stage in selected]
    reports.mkdir(parents=True, exist_ok=True)
    namespace, why_not = network_namespace()
    if namespace is None:
        log.warning("each submission runs without a network namespace: %s", why_not)
    try:
        import resource  # noqa: F401  (POSIX only)
    except ImportError:
        log.warning("no resource limits on this system (no 'resource' module): submissions run without them")
    rows = []
    any_failed = False
    for file in files:
        report = grade_submission(file, selected, timeout, reports, namespace)
        (reports / f"{file.stem}.txt").write_text(str(report) + "\n", encoding="utf-8")
        (reports / f"{file.stem}.json").write_text(as_json(report) + "\n", encoding="utf-8")
        if not quiet:
            print(f"{file.name}: {report.summary}", file=sys.stderr, flush=True)
        any_failed = any_failed or bool(report.failed)
        marks = {result.name: result.score for result in report.results}
        rows.append([
            file.stem, *(marks.get(name, 0) for name in checks), len(report.passed), len(report.failed),
            report.score, report.max_score, first_failure(report),
        ])  # fmt: skip
    with sheet.open("w", newline="", encoding="utf-8") if sheet else nullcontext(sys.stdout) as out:
        writer = csv.writer(out)
        writer.writerow(["submission", *checks, "passed", "failed", "score", "max_score", "first failure"])
        writer.writerows(rows)
    return 1 if any_failed else 0


def set_up_logging(quiet: bool, log_file: Path) -> None:
    """The grader's own messages: to standard error, or with --quiet to ``log_file``."""
    handler: logging.Handler
    if quiet:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8", delay=True)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    """chatlab-grade [options] -- COMMAND ... ({port} in it), or --address HOST:PORT (exit
    status 0 when every check passed), or --batch DIR [--csv OUT] (exit status 0 when every
    submission passed every check)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="chatlab-grade" if Path(sys.argv[0]).stem == "chatlab-grade" else "python -m chatlab.grade",
        description="Grade a chat server against the chatlab protocol.",
        usage="%(prog)s [--stage NAME ...] [--timeout S] [--format F] [--output FILE] [--quiet] "
        "(-- COMMAND ... | --address HOST:PORT | --batch DIR)",
    )
    parser.add_argument("--stage", action="extend", nargs="+", choices=list(STAGES), help="default: all")
    parser.add_argument(
        "--timeout", type=float, metavar="S", default=DEFAULT_TIMEOUT, help="seconds to wait for a line"
    )
    parser.add_argument("--address", metavar="HOST:PORT", help="grade a server that is already running there")
    parser.add_argument(
        "--format", choices=list(FORMATS), default="text", help="the report's format (default: text)"
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="write the report here (default: standard output)"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="nothing on standard error: the server's output and the grader's messages go to --server-log",
    )
    parser.add_argument(
        "--server-log",
        type=Path,
        metavar="FILE",
        help=f"where a started server's output goes (default: standard error; with --quiet, {QUIET_LOG})",
    )
    parser.add_argument(
        "--limits", action="store_true", help="start the server with limits (CPU, memory, processes, files)"
    )
    parser.add_argument(
        "--user", metavar="NAME", help="start the server as this user (the grader must run as root)"
    )
    parser.add_argument(
        "--batch",
        type=Path,
        metavar="DIR",
        help="grade every *.py in this folder as 'python FILE --port {port}'",
    )
    parser.add_argument(
        "--csv", type=Path, metavar="FILE", help="with --batch: write the CSV here (default: standard output)"
    )
    parser.add_argument(
        "--reports",
        type=Path,
        metavar="DIR",
        help="with --batch: keep each submission's reports here (default: beside the CSV, NAME-reports/)",
    )
    args = parser.parse_args(argv)
    if sum(map(bool, (command, args.address, args.batch))) != 1:
        parser.error("give exactly one of: -- COMMAND, --address HOST:PORT, --batch DIR")
    server_log = args.server_log or (QUIET_LOG if args.quiet else None)
    reports = args.reports or (
        args.csv.with_name(f"{args.csv.stem}-reports") if args.csv else Path("chatlab-grade-reports")
    )
    # The grader's own messages, with --quiet: beside the server's output, or the batch's reports.
    set_up_logging(args.quiet, reports / "batch.log" if args.batch else server_log or QUIET_LOG)
    if hasattr(signal, "SIGTERM"):  # stopped by a batch or a platform: stop the server on the way out
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.batch is not None:
        if not args.batch.is_dir():
            parser.error(f"{args.batch} is not a folder")
        if args.format != "text" or args.output or args.user or args.server_log:
            parser.error("--batch writes a CSV and each submission's reports: --csv, --reports")
        return grade_folder(args.batch, args.stage, args.timeout, args.csv, reports, args.quiet)
    if args.address:
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            parser.error("--address takes HOST:PORT")
        report = grade(address=(host, int(port)), stages=args.stage, timeout=args.timeout)
    else:
        if not any("{port}" in part for part in command):
            parser.error("the command must contain {port}, where the grader puts the port")
        try:
            report = grade(
                command,
                stages=args.stage,
                timeout=args.timeout,
                quiet=False,
                log_file=server_log,
                limits=Limits() if args.limits else None,
                user=args.user,
            )
        except ValueError as exc:  # --user where it cannot be
            parser.error(str(exc))
    text = render(report, args.format)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    else:
        print(text, flush=True)
    return 0 if not report.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
