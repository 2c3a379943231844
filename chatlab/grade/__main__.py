"""The program: ``python -m chatlab.grade``, for one server or a folder of submissions.

``python -m chatlab.grade [--stage NAME ...] [--timeout S] -- COMMAND ...`` grades a command
with ``{port}`` in it, and ``--address HOST:PORT`` a server that is already running: both print
the report, and the exit status is 0 exactly when nothing failed. ``--batch DIR [--csv OUT]``
grades every ``*.py`` in a folder as ``python FILE --port {port}`` and writes one CSV row per
file, with one column per check (exit status 0 once the sheet is written).

Standard output is the report's, or the sheet's: what a started server prints, the batch's
progress lines and the grader's own log messages go to standard error.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from .checks import CHECKS, STAGES
from .runner import DEFAULT_TIMEOUT, grade


def grade_folder(folder: Path, stages: Sequence[str] | None, timeout: float, out: Path | None) -> int:
    """Grade every ``*.py`` in ``folder`` as ``python FILE --port {port}``; write a CSV with
    one row per file and one column per check (1 passed, 0 failed), then the totals."""
    files = sorted(folder.glob("*.py"))
    selected = list(STAGES) if stages is None else list(stages)
    checks = [c.name for c in CHECKS if c.stage in selected]
    rows = []
    for file in files:
        report = grade(
            [sys.executable, str(file), "--port", "{port}"], stages=selected, timeout=timeout, quiet=True
        )
        print(f"{file.name}: {report.summary}", file=sys.stderr, flush=True)
        marks = {result.name: int(result.ok) for result in report.results}
        rows.append([file.stem, *(marks[name] for name in checks), len(report.passed), len(report.failed)])
    with out.open("w", newline="", encoding="utf-8") if out else nullcontext(sys.stdout) as sheet:
        writer = csv.writer(sheet)
        writer.writerow(["submission", *checks, "passed", "failed"])
        writer.writerows(rows)
    return 0  # the grades are in the sheet: grading them all went as it should


def main(argv: Sequence[str] | None = None) -> int:
    """python -m chatlab.grade [--stage NAME ...] [--timeout S] -- COMMAND ... ({port} in it),
    or --address HOST:PORT (exit status 0 when every check passed), or --batch DIR [--csv OUT]
    (exit status 0 once the sheet is written)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m chatlab.grade",
        description="Grade a chat server against the chatlab protocol.",
        usage="%(prog)s [--stage NAME ...] [--timeout S] "
        "(-- COMMAND ... | --address HOST:PORT | --batch DIR)",
    )
    parser.add_argument("--stage", action="extend", nargs="+", choices=list(STAGES), help="default: all")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for a line")
    parser.add_argument("--address", help="HOST:PORT of a server that is already running")
    parser.add_argument(
        "--batch", type=Path, help="grade every *.py in this folder as 'python FILE --port {port}'"
    )
    parser.add_argument(
        "--csv", type=Path, help="with --batch: write the CSV here (default: standard output)"
    )
    args = parser.parse_args(argv)
    if sum(map(bool, (command, args.address, args.batch))) != 1:
        parser.error("give exactly one of: -- COMMAND, --address HOST:PORT, --batch DIR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.batch is not None:
        if not args.batch.is_dir():
            parser.error(f"{args.batch} is not a folder")
        return grade_folder(args.batch, args.stage, args.timeout, args.csv)
    if args.address:
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            parser.error("--address takes HOST:PORT")
        report = grade(address=(host, int(port)), stages=args.stage, timeout=args.timeout)
    else:
        if not any("{port}" in part for part in command):
            parser.error("the command must contain {port}, where the grader puts the port")
        report = grade(command, stages=args.stage, timeout=args.timeout, quiet=False)
    print(report, flush=True)
    return 0 if not report.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
