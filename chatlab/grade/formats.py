"""One report, written for whoever keeps the grades: a terminal, a script, or a course platform.

Every format is a function of a :class:`~chatlab.grade.runner.Report` that returns text:

- ``text``: the table the program prints (``str(report)``);
- ``json``: the report as data (each check's stage, name, ``ok``, points, hint and transcript),
  which :func:`report_from_json` reads back (``--batch`` keeps one per submission);
- ``gradescope``: Gradescope's ``results.json`` (``tests`` with ``name``, ``score``,
  ``max_score``, ``status``, ``output`` (the hint and the transcript) and ``visibility``);
- ``prairielearn``: PrairieLearn's external grader ``results.json`` (``gradable``, ``score``
  from 0 to 1, ``message``, ``output`` and ``tests`` with ``points`` and ``max_points``);
- ``junit``: JUnit XML, which CI systems and many autograding tools read (a ``testsuite``
  per stage, a ``failure`` with the hint for each failed check).

What a started server printed (``report.server_log``) goes into the platforms' general output,
so a student whose server crashed sees its traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from xml.etree import ElementTree

from .runner import CheckResult, Report

FORMATS: dict[str, Callable[[Report], str]] = {}
"""Every format by name, in the order ``--format`` lists them."""


def report_format(name: str) -> Callable[[Callable[[Report], str]], Callable[[Report], str]]:
    def add(function: Callable[[Report], str]) -> Callable[[Report], str]:
        FORMATS[name] = function
        return function

    return add


def details(result: CheckResult) -> str:
    """A failed check's hint, then its transcript; nothing for a check that passed."""
    if result.ok:
        return ""
    return "\n".join([result.hint, *(f"  {line}" for line in result.transcript)])


def with_server_log(report: Report) -> str:
    """The summary line, then (when some check failed) what the server printed last."""
    if not report.failed or not report.server_log:
        return report.summary
    return "\n".join([report.summary, "", "The server's last output lines:", *report.server_log])


@report_format("text")
def as_text(report: Report) -> str:
    return str(report)


def report_to_json(report: Report) -> dict:
    return {
        "summary": report.summary,
        "passed": len(report.passed),
        "failed": len(report.failed),
        "score": report.score,
        "max_score": report.max_score,
        "checks": [
            {
                "stage": result.stage,
                "name": result.name,
                "ok": result.ok,
                "score": result.score,
                "points": result.points,
                "hint": result.hint,
                "transcript": list(result.transcript),
            }
            for result in report.results
        ],
        "server_log": list(report.server_log),
    }


def report_from_json(data: dict) -> Report:
    """The :class:`Report` that :func:`as_json` wrote."""
    results = [
        CheckResult(c["stage"], c["name"], c["ok"], c["hint"], tuple(c["transcript"]), c["points"])
        for c in data["checks"]
    ]
    return Report(results, tuple(data.get("server_log", ())))


@report_format("json")
def as_json(report: Report) -> str:
    return json.dumps(report_to_json(report), indent=2, ensure_ascii=False)


@report_format("gradescope")
def as_gradescope(report: Report) -> str:
    """Gradescope's ``results.json``: one test per check, the hint as its output."""
    tests = [
        {
            "name": f"{result.stage}: {result.name}",
            "score": result.score,
            "max_score": result.points,
            "status": "passed" if result.ok else "failed",
            "output": details(result),
            "visibility": "visible",
        }
        for result in report.results
    ]
    results = {
        "score": report.score,
        "output": with_server_log(report),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }
    return json.dumps(results, indent=2, ensure_ascii=False)


@report_format("prairielearn")
def as_prairielearn(report: Report) -> str:
    """PrairieLearn's external grader ``results.json``: the score as a fraction of the points."""
    tests = [
        {
            "name": f"{result.stage}: {result.name}",
            "points": result.score,
            "max_points": result.points,
            "message": result.hint if not result.ok else "",
            "output": "\n".join(result.transcript),
        }
        for result in report.results
    ]
    results = {
        "gradable": True,
        "score": report.score / report.max_score if report.max_score else 0.0,
        "message": report.summary,
        "output": with_server_log(report),
        "tests": tests,
    }
    return json.dumps(results, indent=2, ensure_ascii=False)


@report_format("junit")
def as_junit(report: Report) -> str:
    """JUnit XML: a ``testsuite`` per stage, a ``testcase`` per check (its points as a
    property), and a ``failure`` whose message is the hint and whose text is the transcript."""
    suites = ElementTree.Element(
        "testsuites", name="chatlab.grade", tests=str(len(report.results)), failures=str(len(report.failed))
    )
    for stage in dict.fromkeys(result.stage for result in report.results):
        results = [result for result in report.results if result.stage == stage]
        failures = sum(not result.ok for result in results)
        suite = ElementTree.SubElement(
            suites, "testsuite", name=stage, tests=str(len(results)), failures=str(failures), errors="0"
        )
        for result in results:
            case = ElementTree.SubElement(
                suite, "testcase", classname=f"chatlab.grade.{stage}", name=result.name
            )
            properties = ElementTree.SubElement(case, "properties")
            ElementTree.SubElement(properties, "property", name="points", value=str(result.points))
            if not result.ok:
                failure = ElementTree.SubElement(case, "failure", message=result.hint)
                failure.text = "\n".join(result.transcript)
    if report.failed and report.server_log and len(suites):  # the server's output, with the last stage
        ElementTree.SubElement(suites[-1], "system-out").text = "\n".join(report.server_log)
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suites, encoding="unicode")


def render(report: Report, name: str) -> str:
    """The report in the format called ``name`` (one of :data:`FORMATS`)."""
    return FORMATS[name](report)
