"""Grades where courses keep them: the report's formats, the platforms' scripts, and --batch.

The formats are checked on a report made by hand (points of 1, 2 and 3, one check failed) and
on real reports: ``python -m chatlab.grade`` run as a program against real servers (a lab's
reference solution, or ``broken_servers.py`` with one bug), writing real files. The Gradescope
and PrairieLearn scripts run against a temporary platform folder, with a good and a broken
submission, and their ``results.json`` is checked against the fields each platform documents.
``--batch`` grades a folder in grader processes of their own, with limits, and (as root, with
``unshare``) in a network namespace; the submissions report what they were allowed. Where
CHATLAB_REQUIRE_NETNS is set (CI sets it), a batch without a network namespace fails the test.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from chatlab.grade import FORMATS, STAGES, CheckResult, Report, grade, render
from chatlab.grade.__main__ import network_namespace
from chatlab.grade.formats import report_from_json
from chatlab.grade.runner import Limits, limited

KIT = Path(__file__).parent.parent
LAB1 = KIT / "notebooks" / "labs" / "solutions" / "lab1_server.py"
LAB4 = KIT / "notebooks" / "labs" / "solutions" / "lab4_server.py"
BROKEN = KIT / "tests" / "broken_servers.py"
GRADESCOPE = KIT / "grading" / "gradescope" / "run_autograder"
PRAIRIELEARN = KIT / "grading" / "prairielearn" / "run.sh"
IS_ROOT = getattr(os, "geteuid", lambda: -1)() == 0

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]


def run_grader(*args: str, cwd: Path = KIT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatlab.grade", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def submission(folder: Path, name: str, server: Path, *args: str, report: str = "") -> Path:
    """A one-file submission that runs ``server`` (with ``args``) after the lines of Python in
    ``report`` (which print what the submission's process was allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / name
    lines = [
        "import os, runpy, sys",
        *report.splitlines(),
        f"sys.argv += {list(args)!r}",
        f"runpy.run_path({str(server)!r}, run_name='__main__')",
    ]
    file.write_text("\n".join(lines) + "\n")
    return file


TELL_LIMITS = """\
import resource
for name in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_NPROC"):
    print(name, resource.getrlimit(getattr(resource, name))[0], flush=True)
print("uid", os.getuid(), flush=True)"""


def told(log: str) -> dict[str, int]:
    """What a submission made with ``report=TELL_LIMITS`` printed: limits and its uid."""
    words = [line.split() for line in log.splitlines()]
    return {w[0]: int(w[1]) for w in words if len(w) == 2 and (w[0].startswith("RLIMIT_") or w[0] == "uid")}


# --- the formats, on a report made by hand ---------------------------------------------------

REPORT = Report(
    [
        CheckResult("threads", "greeting on connect", True, points=1),
        CheckResult(
            "threads",
            "register a name",
            False,
            "a good name must be answered with a line starting '* '",
            ("amy_2 > 'amy_2\\n'", "amy_2 < '! <no>'"),
            points=2,
        ),
        CheckResult("routing", "direct message", True, points=3),
    ],
    server_log=("Traceback (most recent call last):", "KeyError: 'amy_2'"),
)


def test_points_are_in_the_text_table_and_the_totals():
    assert (REPORT.score, REPORT.max_score) == (4, 6)
    assert [result.score for result in REPORT.results] == [1, 0, 3]
    assert render(REPORT, "text") == textwrap.dedent(
        """\
        ✔ threads: greeting on connect (1/1)
        ✘ threads: register a name (0/2)
            a good name must be answered with a line starting '* '
              amy_2 > 'amy_2\\n'
              amy_2 < '! <no>'
        ✔ routing: direct message (3/3)
        grade: 2 passed, 1 failed, 4/6 points"""
    )
    assert ">0/2</td>" in REPORT._repr_html_()


def test_every_check_has_whole_points():
    from chatlab.grade import CHECKS

    assert all(isinstance(c.points, int) and c.points >= 1 for c in CHECKS)


def test_json_holds_everything_and_reads_back():
    data = json.loads(render(REPORT, "json"))
    assert data["score"] == 4 and data["max_score"] == 6
    assert (data["passed"], data["failed"]) == (2, 1)
    assert data["summary"] == REPORT.summary
    assert data["checks"][1] == {
        "stage": "threads",
        "name": "register a name",
        "ok": False,
        "score": 0,
        "points": 2,
        "hint": "a good name must be answered with a line starting '* '",
        "transcript": ["amy_2 > 'amy_2\\n'", "amy_2 < '! <no>'"],
    }
    assert report_from_json(data) == REPORT


def check_gradescope(results: dict) -> None:
    """Gradescope's documented fields, their types, and scores that add up."""
    assert isinstance(results["tests"], list) and results["tests"]
    for test in results["tests"]:
        assert set(test) == {"name", "score", "max_score", "status", "output", "visibility"}
        assert isinstance(test["name"], str) and isinstance(test["output"], str)
        assert isinstance(test["score"], int) and isinstance(test["max_score"], int)
        assert test["status"] in ("passed", "failed")
        assert test["score"] == (test["max_score"] if test["status"] == "passed" else 0)
        assert test["visibility"] in ("hidden", "after_due_date", "after_published", "visible")
    assert results["score"] == sum(test["score"] for test in results["tests"])
    assert isinstance(results["output"], str)


def test_gradescope_results():
    results = json.loads(render(REPORT, "gradescope"))
    check_gradescope(results)
    assert [(t["name"], t["score"], t["max_score"], t["status"]) for t in results["tests"]] == [
        ("threads: greeting on connect", 1, 1, "passed"),
        ("threads: register a name", 0, 2, "failed"),
        ("routing: direct message", 3, 3, "passed"),
    ]
    failed = results["tests"][1]["output"]
    assert failed.splitlines() == [
        "a good name must be answered with a line starting '* '",
        "  amy_2 > 'amy_2\\n'",
        "  amy_2 < '! <no>'",
    ]
    assert results["output"].splitlines()[0] == "grade: 2 passed, 1 failed, 4/6 points"
    assert results["output"].splitlines()[-1] == "KeyError: 'amy_2'"  # what the server printed


def check_prairielearn(results: dict) -> None:
    """PrairieLearn's documented fields, their types, and scores that add up."""
    assert results["gradable"] is True
    assert isinstance(results["message"], str) and isinstance(results["output"], str)
    assert isinstance(results["tests"], list) and results["tests"]
    for test in results["tests"]:
        assert set(test) == {"name", "points", "max_points", "message", "output"}
        assert all(isinstance(test[key], str) for key in ("name", "message", "output"))
        assert test["points"] in (0, test["max_points"])
    earned = sum(test["points"] for test in results["tests"])
    assert isinstance(results["score"], float) and 0.0 <= results["score"] <= 1.0
    assert results["score"] == pytest.approx(earned / sum(test["max_points"] for test in results["tests"]))
    assert len(json.dumps(results).encode()) < 1 << 20  # PrairieLearn takes at most 1 MB


def test_prairielearn_results():
    results = json.loads(render(REPORT, "prairielearn"))
    check_prairielearn(results)
    assert results["score"] == pytest.approx(4 / 6)
    assert results["tests"][1] == {
        "name": "threads: register a name",
        "points": 0,
        "max_points": 2,
        "message": "a good name must be answered with a line starting '* '",
        "output": "amy_2 > 'amy_2\\n'\namy_2 < '! <no>'",
    }


def test_junit_xml():
    suites = ElementTree.fromstring(render(REPORT, "junit"))
    assert suites.tag == "testsuites" and (suites.get("tests"), suites.get("failures")) == ("3", "1")
    assert [(s.get("name"), s.get("tests"), s.get("failures")) for s in suites] == [
        ("threads", "2", "1"),
        ("routing", "1", "0"),
    ]
    cases = suites.findall("testsuite/testcase")
    assert [case.get("name") for case in cases] == [result.name for result in REPORT.results]
    assert [case.find("properties/property").get("value") for case in cases] == ["1", "2", "3"]
    [failure] = suites.findall("testsuite/testcase/failure")
    assert failure.get("message") == REPORT.results[1].hint
    assert failure.text.splitlines() == list(REPORT.results[1].transcript)


def test_the_formats_are_the_five_of_the_command_line():
    assert list(FORMATS) == ["text", "json", "gradescope", "prairielearn", "junit"]


# --- the command line: --format, --output, --quiet, --limits -----------------------------------


def test_quiet_keeps_stdout_and_stderr_empty_and_the_server_output_in_its_log(tmp_path):
    """lab 1's solution logs every connection: with --quiet all of it goes to the log file."""
    report, log = tmp_path / "report.json", tmp_path / "server.log"
    done = run_grader(
        "--quiet", "--format", "json", "--output", str(report), "--server-log", str(log),
        "--stage", "threads", "--", sys.executable, str(LAB1), "--port", "{port}",
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    data = json.loads(report.read_text())
    assert [c["name"] for c in data["checks"]] == list(STAGES["threads"])
    assert data["failed"] == 0 and data["score"] == data["max_score"] == len(STAGES["threads"])
    assert "listening on 127.0.0.1:" in log.read_text()
    assert data["server_log"] == log.read_text().splitlines()[-20:]


def test_quiet_without_a_log_name_writes_the_default_log_in_the_current_folder(tmp_path):
    done = run_grader(
        "--quiet", "--stage", "threads", "--", sys.executable, str(LAB1), "--port", "{port}", cwd=tmp_path
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.splitlines()[-1].endswith(f"{len(STAGES['threads'])}/{len(STAGES['threads'])} points")
    assert "listening on" in (tmp_path / "chatlab-grade-server.log").read_text()


def test_a_failing_server_in_junit_exits_1_and_says_nothing_on_stderr(tmp_path):
    report = tmp_path / "junit.xml"
    done = run_grader(
        "--quiet", "--format", "junit", "--output", str(report), "--server-log", str(tmp_path / "log"),
        "--timeout", "1", "--stage", "routing",
        "--", sys.executable, str(BROKEN), "--bug", "echo-broadcast", "--port", "{port}",
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "")
    suites = ElementTree.fromstring(report.read_text())
    failed = [case.get("name") for case in suites.iter("testcase") if case.find("failure") is not None]
    assert "broadcast" in failed
    assert int(suites.get("failures")) == len(failed) < int(suites.get("tests"))


def test_a_server_that_crashes_shows_its_last_words_to_the_student(tmp_path):
    crash = "import sys; print('Traceback: NameError: accept_loop', file=sys.stderr); raise SystemExit(3)"
    report = tmp_path / "results.json"
    done = run_grader(
        "--quiet", "--format", "gradescope", "--output", str(report), "--server-log", str(tmp_path / "log"),
        "--stage", "threads", "--", sys.executable, "-c", crash, "{port}",
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (1, "")
    results = json.loads(report.read_text())
    check_gradescope(results)
    assert results["score"] == 0
    assert {t["status"] for t in results["tests"]} == {"failed"}
    assert {t["output"] for t in results["tests"]} == {
        "the server exited (status 3) before it accepted a connection"
    }
    assert results["output"].splitlines()[-1] == "Traceback: NameError: accept_loop"


CRASHES_ON_A_SPACE = """\
import os, socket, sys, threading
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))

def serve(connection):
    try:
        connection.sendall(b"* your name?\\n")
        for line in connection.makefile("rb"):
            if b" " in line:  # the grader's 'two words': a crash, as a student's server may have
                print("Traceback (most recent call last):", file=sys.stderr)
                print("ValueError: too many values to unpack", file=sys.stderr, flush=True)
                os._exit(7)
            connection.sendall(b"* welcome\\n")
    except OSError:  # a client of an earlier check reset its connection
        pass

while True:
    threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()
"""


def test_a_server_that_exits_during_a_check_is_named_and_the_rest_fail_at_once(tmp_path):
    report_file = tmp_path / "report.json"
    done = run_grader(
        "--quiet", "--format", "json", "--output", str(report_file), "--server-log", str(tmp_path / "log"),
        "--stage", "threads", "--timeout", "1", "--", sys.executable, "-c", CRASHES_ON_A_SPACE, "{port}",
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (1, "")
    greeting, register, invalid, *later = report_from_json(json.loads(report_file.read_text())).results
    assert greeting.ok and register.ok and not invalid.ok
    assert invalid.hint == "the server exited (status 7) during this check: read its output (a traceback?)"
    assert invalid.transcript[-3:] == (
        "(the server exited (status 7); its last lines:)",
        "Traceback (most recent call last):",
        "ValueError: too many values to unpack",
    )
    assert later and {r.hint for r in later} == {
        "the server exited (status 7) during 'invalid names refused'"
    }
    assert all(r.transcript == () for r in later)  # none of them waited


@pytest.mark.skipif(resource is None, reason="no resource limits on this system (Windows)")
def test_limits_are_set_in_the_server_before_it_runs(tmp_path):
    server = submission(tmp_path, "limited.py", LAB1, report=TELL_LIMITS)
    log = tmp_path / "server.log"
    done = run_grader(
        "--quiet", "--limits", "--server-log", str(log), "--stage", "threads",
        "--", sys.executable, str(server), "--port", "{port}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    limits, defaults = told(log.read_text()), Limits()
    assert limits["RLIMIT_CPU"] == defaults.cpu_seconds
    assert limits["RLIMIT_AS"] == defaults.memory_bytes
    assert limits["RLIMIT_NOFILE"] == defaults.open_files
    assert defaults.more_processes <= limits["RLIMIT_NPROC"] <= 1 << 20


@pytest.mark.skipif(resource is None, reason="no resource limits on this system (Windows)")
def test_a_server_over_its_cpu_limit_is_killed_and_the_hint_says_so(tmp_path):
    spin = "import socket, sys\ns = socket.create_server(('127.0.0.1', int(sys.argv[1])))\nwhile True: pass"
    report = grade(
        [sys.executable, "-c", spin, "{port}"],
        stages=["threads"],
        timeout=3,  # the greeting never comes; the kernel stops the server after 1 s of CPU
        limits=Limits(cpu_seconds=1),
        log_file=tmp_path / "log",
    )
    first, *later = report.results
    killed_by = {f"the server was killed by signal {int(signal.SIGKILL)} during this check"}
    if hasattr(signal, "SIGXCPU"):  # what macOS sends at the limit
        killed_by.add(f"the server was killed by signal {int(signal.SIGXCPU)} during this check")
    assert first.hint.split(":")[0] in killed_by
    assert later and all(r.hint.startswith("the server was killed by signal") for r in later)  # not "needs"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
def test_a_server_over_its_memory_limit_fails_instead_of_eating_the_machine(tmp_path):
    # 8 GiB of address space, never touched: harmless even if the limit were missing.
    hog = "import mmap; blob = mmap.mmap(-1, 8 << 30); print('allocated 8 GiB')"
    log = tmp_path / "server.log"
    done = run_grader(
        "--quiet", "--limits", "--server-log", str(log), "--stage", "threads",
        "--", sys.executable, "-c", hog, "{port}",
    )  # fmt: skip
    assert done.returncode == 1
    assert "Cannot allocate memory" in log.read_text() and "allocated" not in log.read_text()
    assert "the server exited (status 1)" in done.stdout


LISTEN_AND_WAIT = """\
import os, socket, sys, time
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
with open(sys.argv[2], "w") as pidfile:
    pidfile.write(str(os.getpid()))
time.sleep(60)
"""


@pytest.mark.skipif(os.name != "posix", reason="checks pids with os.kill(pid, 0)")
def test_a_grader_that_is_terminated_stops_its_server_first(tmp_path):
    """What a batch does to a submission that takes too long: terminate() its grader."""
    pidfile = tmp_path / "pid"
    grader = subprocess.Popen(
        [sys.executable, "-m", "chatlab.grade", "--quiet", "--server-log", str(tmp_path / "log"),
         "--timeout", "30", "--", sys.executable, "-c", LISTEN_AND_WAIT, "{port}", str(pidfile)],
        cwd=KIT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):  # the server is up, and the grader waits 30 s for its greeting
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        server = int(pidfile.read_text())
        time.sleep(0.5)
        grader.terminate()
        out, err = grader.communicate(timeout=15)
    finally:
        grader.kill()
    assert grader.returncode == 128 + signal.SIGTERM and err == b""
    with pytest.raises(ProcessLookupError):
        os.kill(server, 0)


@pytest.mark.skipif(resource is None, reason="--user is for POSIX systems")
def test_user_needs_root_and_a_real_user():
    if IS_ROOT:  # as root, --user works: see the platform scripts' tests
        with pytest.raises(ValueError, match="no user 'no-such-student'"):
            limited([sys.executable, "-c", "pass"], None, "no-such-student")
    else:
        with pytest.raises(ValueError, match="needs the grader to run as root"):
            limited([sys.executable, "-c", "pass"], None, "nobody")
    done = run_grader("--user", "no-such-student", "--", sys.executable, str(LAB1), "--port", "{port}")
    assert done.returncode == 2 and done.stdout == ""  # a usage error, before anything starts


# --- the platforms' scripts ----------------------------------------------------------------------


def server_python() -> str:
    """A Python that the unprivileged user can run when the scripts run as root (the scripts
    then start the server as 'nobody'); this one otherwise."""
    if not IS_ROOT:
        return sys.executable
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        probe = subprocess.run(
            limited([candidate, "-c", "import socket, threading"], None, "nobody"), capture_output=True
        )
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python that 'nobody' may run, for the scripts to start the server as 'nobody'")


def run_script(
    script: Path, root_variable: str, root: Path, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        root_variable: str(root),
        "CHATLAB_PYTHON": sys.executable,
        "CHATLAB_SERVER_PYTHON": server_python(),
        "CHATLAB_TIMEOUT": "1",
        **settings,
    }
    return subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=root
    )


@pytest.fixture(scope="module")
def nobody_uid() -> int | None:
    if not IS_ROOT:
        return None
    import pwd

    return pwd.getpwnam("nobody").pw_uid


def test_gradescope_grades_a_good_submission(tmp_path, nobody_uid):
    submission(tmp_path / "submission", "lab4_server.py", LAB4, report=TELL_LIMITS)
    done = run_script(GRADESCOPE, "AUTOGRADER_ROOT", tmp_path, CHATLAB_STAGES="threads")
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    check_gradescope(results)
    assert [t["name"] for t in results["tests"]] == [f"threads: {name}" for name in STAGES["threads"]]
    assert {t["status"] for t in results["tests"]} == {"passed"}
    assert results["score"] == len(STAGES["threads"])
    said = told(done.stdout)  # the server's output, shown to the staff
    assert said["uid"] == (nobody_uid if IS_ROOT else os.getuid())
    if resource is not None:
        assert said["RLIMIT_NOFILE"] == Limits().open_files


def test_gradescope_grades_a_broken_submission(tmp_path):
    submission(tmp_path / "submission", "server.py", BROKEN, "--bug", "echo-broadcast")
    done = run_script(GRADESCOPE, "AUTOGRADER_ROOT", tmp_path, CHATLAB_STAGES="routing")
    assert done.returncode == 0 and done.stderr == ""
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    check_gradescope(results)
    by_name = {t["name"]: t for t in results["tests"]}
    assert list(by_name) == [f"routing: {name}" for name in STAGES["routing"]]
    broadcast = by_name["routing: broadcast"]
    assert broadcast["status"] == "failed" and broadcast["score"] == 0
    hint, *transcript = broadcast["output"].splitlines()
    assert hint and not hint.startswith(" ") and transcript  # the hint, then what was said
    assert 0 < results["score"] < sum(t["max_score"] for t in results["tests"])


def test_gradescope_without_a_server_file_gives_zero_and_says_why(tmp_path):
    (tmp_path / "submission").mkdir()
    (tmp_path / "submission" / "notes.txt").write_text("I ran out of time")
    done = run_script(GRADESCOPE, "AUTOGRADER_ROOT", tmp_path)
    assert done.returncode == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["score"] == 0 and results["tests"] == []
    assert results["output"].startswith("No server file found")


def test_prairielearn_grades_a_good_submission(tmp_path):
    submission(tmp_path / "student", "lab4_server.py", LAB4)
    done = run_script(PRAIRIELEARN, "PL_GRADE_ROOT", tmp_path, CHATLAB_STAGES="threads")
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    check_prairielearn(results)
    assert results["score"] == 1.0
    assert [t["name"] for t in results["tests"]] == [f"threads: {name}" for name in STAGES["threads"]]
    n = len(STAGES["threads"])
    assert results["message"] == f"grade: {n} passed, 0 failed, {n}/{n} points"


def test_prairielearn_grades_a_broken_submission(tmp_path):
    submission(tmp_path / "student", "server.py", BROKEN, "--bug", "echo-broadcast")
    (tmp_path / "tests").mkdir()  # the question's settings
    (tmp_path / "tests" / "chatlab-grade.env").write_text("CHATLAB_STAGES=routing\n")
    done = run_script(PRAIRIELEARN, "PL_GRADE_ROOT", tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    check_prairielearn(results)
    by_name = {t["name"]: t for t in results["tests"]}
    assert list(by_name) == [f"routing: {name}" for name in STAGES["routing"]]
    broadcast = by_name["routing: broadcast"]
    assert broadcast["points"] == 0 and broadcast["message"] and broadcast["output"]
    assert 0.0 < results["score"] < 1.0


def test_prairielearn_with_two_files_is_not_gradable(tmp_path):
    submission(tmp_path / "student", "a.py", LAB4)
    submission(tmp_path / "student", "b.py", LAB4)
    done = run_script(PRAIRIELEARN, "PL_GRADE_ROOT", tmp_path)
    assert done.returncode == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["gradable"] is False and results["score"] == 0.0
    assert results["message"].startswith("Submit exactly one .py file")


def test_the_gradescope_zip_holds_the_scripts_at_its_root_and_the_kit(tmp_path):
    out = tmp_path / "autograder.zip"
    done = subprocess.run(
        [sys.executable, str(KIT / "grading" / "gradescope" / "make_zip.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(out) as archive:
        entries = {info.filename: info for info in archive.infolist()}
    for script in ("setup.sh", "run_autograder"):
        assert entries[script].external_attr >> 16 & 0o111, f"{script} must be executable"
    assert {"chatlab/pyproject.toml", "chatlab/README.md", "chatlab/chatlab/grade/__main__.py"} <= set(
        entries
    )
    assert not any(name.startswith(("chatlab/tests/", "chatlab/notebooks/")) for name in entries)


# --- --batch: a folder of submissions ------------------------------------------------------------


@pytest.fixture
def outside_listener():
    """A listener on this machine's loopback, outside any namespace the batch makes; a
    submission that reaches it says so."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def reach(port: int) -> str:
    """A line of Python that prints whether 127.0.0.1:port (outside) can be reached."""
    return (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        "    print('outside: reached', flush=True)\n"
        "except OSError as exc:\n"
        "    print('outside: unreachable', exc, flush=True)"
    )


def test_batch_grades_each_submission_apart_keeps_its_reports_and_exits_1(tmp_path, outside_listener):
    folder = tmp_path / "submissions"
    submission(folder, "alice.py", BROKEN, report=TELL_LIMITS if resource else "")
    submission(folder, "bob.py", BROKEN, "--bug", "echo-broadcast", report=reach(outside_listener))
    sheet = tmp_path / "grades.csv"
    done = run_grader("--batch", str(folder), "--stage", "routing", "--timeout", "1", "--csv", str(sheet))
    assert done.returncode == 1, done.stdout + done.stderr
    routing = list(STAGES["routing"])
    with sheet.open(newline="") as lines:
        header, alice, bob = csv.reader(lines)
    assert header == ["submission", *routing, "passed", "failed", "score", "max_score", "first failure"]
    n = str(len(routing))
    assert alice == ["alice", *["1"] * len(routing), n, "0", n, n, ""]
    assert bob[0] == "bob" and bob[1 + routing.index("broadcast")] == "0"
    assert bob[-1].startswith("broadcast: ") and len(bob[-1]) > len("broadcast: ")

    reports = tmp_path / "grades-reports"
    assert sorted(path.name for path in reports.iterdir()) == sorted(
        f"{who}{kind}" for who in ("alice", "bob") for kind in (".txt", ".json", ".server.log")
    )
    bob_report = report_from_json(json.loads((reports / "bob.json").read_text()))
    assert (reports / "bob.txt").read_text() == str(bob_report) + "\n"
    assert [r.name for r in bob_report.failed][0] == "broadcast"
    assert bob[-1] == f"broadcast: {bob_report.failed[0].hint}"
    if resource is not None:
        limits = told((reports / "alice.server.log").read_text())
        assert limits["RLIMIT_CPU"] == Limits().cpu_seconds and limits["RLIMIT_AS"] == Limits().memory_bytes
    outside = (reports / "bob.server.log").read_text()
    namespace, why_not = network_namespace()
    if namespace is None:
        assert not os.environ.get("CHATLAB_REQUIRE_NETNS"), f"no network namespace: {why_not}"
        assert f"each submission runs without a network namespace: {why_not}" in done.stderr
        assert "outside: reached" in outside
    else:  # in a namespace of its own, with loopback only: the grader reached it, nobody else
        assert "network namespace" not in done.stderr
        assert "outside: unreachable" in outside
    assert done.stderr.splitlines()[-2:] == [
        f"alice.py: grade: {n} passed, 0 failed, {n}/{n} points",
        f"bob.py: {bob_report.summary}",
    ]


def test_batch_exits_0_when_every_submission_passed(tmp_path):
    folder = tmp_path / "submissions"
    submission(folder, "carol.py", LAB1)
    done = run_grader(
        "--batch", str(folder), "--stage", "threads", "--reports", str(tmp_path / "kept"), "--quiet"
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    rows = list(csv.reader(done.stdout.splitlines()))
    assert rows[1][0] == "carol" and rows[1][-1] == ""
    assert (tmp_path / "kept" / "carol.txt").read_text().splitlines()[-1].startswith("grade: ")
