"""The grader, graded: full marks for every kit model, and each classic bug caught by its check.

The kit's servers and the small servers of ``broken_servers.py`` (one known bug each) run in
this process on port 0 where they can, so most of the file grades in-process; the command line
(``python -m chatlab.grade``) is run as a real program for what only it does: start and stop a
command, ``--address``, ``--batch`` and the exit status.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from broken_servers import BUGS, Server
from chatlab.grade import CHECKS, STAGES, CheckResult, Report, grade, shown
from chatlab.servers import MODELS, server_class

pytestmark = pytest.mark.usefixtures("kit_threads")

TESTS = Path(__file__).parent
ALL_CHECKS = [c.name for c in CHECKS]
SUMMARY = f"grade: {len(ALL_CHECKS)} passed, 0 failed"

# The checks each bug fails: its own, and those that need it ('needs ... to pass first').
CAUGHT_BY = {
    "echo-broadcast": {"broadcast": None, "client closes (FIN)": "broadcast", "client resets (RST)": "broadcast"},
    "drop-unknown": {"unknown recipient": None},
    "duplicate-names": {"duplicate name refused": None},
    "one-recv-one-line": {
        "two lines in one packet": None,
        "one line in many packets": None,
        "partial line at EOF": None,
        "over-long line": None,
    },
    "blocking-send": {"slow reader does not stall others": None},
    "unlimited-lines": {"over-long line": None},
}
# A server that takes each recv() for a line garbles any stream of lines, so whether the
# flood of the 'slow' stage breaks it as well depends on how the bytes happened to arrive.
TOUCHED = {"one-recv-one-line": ["threads", "routing", "framing"]}


def run_grader(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatlab.grade", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TESTS.parent,
    )


@pytest.fixture
def broken_server():
    """``broken_server(bug)`` starts a server of broken_servers.py in this process (port 0)."""
    servers: list[Server] = []

    def start(bug: str | None) -> Server:
        servers.append(Server(bug))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_stages_are_the_four_labs_in_order():
    assert list(STAGES) == ["threads", "routing", "framing", "slow"]
    assert [name for names in STAGES.values() for name in names] == ALL_CHECKS
    assert len(set(ALL_CHECKS)) == len(ALL_CHECKS)


# --- full marks -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_every_kit_model_gets_full_marks(model):
    with server_class(model)("127.0.0.1", 0) as server:
        report = grade(address=server.address)
    assert [(r.stage, r.name) for r in report.results] == [(c.stage, c.name) for c in CHECKS]
    assert report.failed == [], str(report)
    assert str(report).splitlines()[-1] == SUMMARY


@pytest.mark.parametrize("model", list(MODELS))
def test_the_command_line_starts_a_kit_server_and_gives_full_marks(model):
    done = run_grader("--", sys.executable, "-m", "chatlab.server", "--port", "{port}", "--model", model, "--quiet")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines[-1] == SUMMARY
    assert lines[:-1] == [f"✔ {c.stage}: {c.name}" for c in CHECKS]


def test_the_small_server_without_a_bug_gets_full_marks(broken_server):
    """So that every check a bug fails below is that bug's doing."""
    report = grade(address=broken_server(None).address, timeout=1.0)
    assert report.failed == [], str(report)


# --- one bug each ---------------------------------------------------------------------------


@pytest.mark.parametrize("bug", list(BUGS))
def test_each_bug_fails_exactly_its_checks(bug, broken_server):
    stages = TOUCHED.get(bug, list(STAGES))
    report = grade(address=broken_server(bug).address, stages=stages, timeout=1.0)
    caught = CAUGHT_BY[bug]
    assert {r.name: r.hint for r in report.failed}.keys() == caught.keys(), str(report)
    for result in report.failed:
        needed = caught[result.name]
        if needed is None:  # failed on its own: a hint about the bug, and what was said
            assert not result.hint.startswith("needs"), result.hint
            assert result.transcript
        else:  # failed at once, for the check it needs
            assert result.hint == f"needs '{needed}' to pass first"
            assert result.transcript == ()
    assert len(report.passed) == sum(len(STAGES[stage]) for stage in stages) - len(caught)


@pytest.mark.parametrize("bug", list(BUGS))
def test_the_command_line_exits_1_for_each_bug(bug):
    stages = sorted({c.stage for c in CHECKS if c.name in CAUGHT_BY[bug]}, key=list(STAGES).index)
    graded = [c for c in CHECKS if c.stage in stages]
    done = run_grader(
        "--timeout", "1", "--stage", *stages, "--", sys.executable, "tests/broken_servers.py",
        "--bug", bug, "--port", "{port}",
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    failed = len(CAUGHT_BY[bug])
    assert lines[-1] == f"grade: {len(graded) - failed} passed, {failed} failed"
    rows = [line for line in lines if line[:2] in ("✔ ", "✘ ")]
    assert rows == [f"{'✘' if c.name in CAUGHT_BY[bug] else '✔'} {c.stage}: {c.name}" for c in graded]


def test_a_failure_shows_the_hint_and_the_transcript(broken_server):
    report = grade(address=broken_server("echo-broadcast").address, stages=["routing"], timeout=1.0)
    [failed] = report.failed
    assert failed.hint == "a broadcast goes to everyone else: the sender must not get its own message back"
    # What was sent and what came back, the echo last.
    assert failed.transcript[-3:] == (
        "amy_9 < '* ben_9 joined'",
        "amy_9 < '* cat_9 joined'",
        "amy_9 < '%amy_9%hello everyone'",
    )
    assert "amy_9 > '%*%hello everyone\\n'" in failed.transcript


def test_an_over_long_line_delivered_shows_in_the_transcript(broken_server):
    report = grade(address=broken_server("unlimited-lines").address, stages=["framing"], timeout=1.0)
    [failed] = report.failed
    assert failed.transcript[-2:] == (
        "amy_15 < (nothing within 1 s)",  # no '! line too long'
        "ben_15 < '%amy_15%xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxx' (12296 bytes)",
    )


def test_the_report_is_the_same_for_the_same_behaviour(broken_server):
    """Notebooks store the report (nbval): no times, no ports, the same transcript every time."""
    server = broken_server("drop-unknown")
    first = str(grade(address=server.address, stages=["routing"], timeout=0.5))
    second = str(grade(address=server.address, stages=["routing"], timeout=0.5))
    assert first == second
    assert "(nothing within 0.5 s)" in first
    assert str(server.address[1]) not in first


# --- what it does with servers that do nothing --------------------------------------------------


@pytest.fixture
def silent_listener():
    """A socket that listens and never accepts: the kernel completes the connections, and
    nothing ever answers them."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()


def test_a_silent_server_fails_the_greeting_and_everything_else_at_once(silent_listener):
    report = grade(address=silent_listener, timeout=0.5)
    greeting, register, *rest = report.results
    assert not greeting.ok
    assert greeting.transcript == ("amy_1 < (nothing within 0.5 s)",)
    assert register.hint == "needs 'greeting on connect' to pass first"
    assert {r.hint for r in rest} <= {
        f"needs '{name}' to pass first" for name in ("register a name", "direct message", "broadcast", "who")
    }  # none of them waited
    assert report.passed == []


def test_checks_that_need_another_stage_say_which(silent_listener):
    report = grade(address=silent_listener, stages=["routing"], timeout=0.5)
    assert [r.name for r in report.results] == list(STAGES["routing"])
    assert report.results[0].hint == "needs 'register a name' (stage threads) to pass first"


def test_a_refused_connection_says_so():
    with socket.create_server(("127.0.0.1", 0)) as closed_soon:
        address = closed_soon.getsockname()
    report = grade(address=address, stages=["threads"])
    assert report.results[0].hint == "the server did not accept the connection: is it listening?"
    assert report.results[0].transcript == ("amy_1 cannot connect: Connection refused",)
    assert str(report).endswith(f"grade: 0 passed, {len(STAGES['threads'])} failed")


SLEEPER = textwrap.dedent(
    """
    import os, signal, socket, sys, time
    if sys.argv[3] == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[2], "w") as pidfile:
        pidfile.write(str(os.getpid()))
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    time.sleep(60)
    """
)


@pytest.mark.parametrize("sigterm", ["obey", "ignore"])
def test_the_grader_stops_the_process_it_started(sigterm, tmp_path):
    pidfile = tmp_path / "pid"
    report = grade([sys.executable, "-c", SLEEPER, "{port}", str(pidfile), sigterm], stages=["threads"], timeout=0.5)
    assert report.results[0].transcript == ("amy_1 < (nothing within 0.5 s)",)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # SIGTERM, or SIGKILL when it ignores SIGTERM
        os.kill(pid, 0)


def test_a_command_that_exits_at_once_fails_every_check():
    report = grade([sys.executable, "-c", "raise SystemExit(3)", "{port}"], stages=["threads"], quiet=True)
    assert {r.hint for r in report.results} == {
        "the server exited (status 3) before it accepted a connection"
    }
    assert len(report.failed) == len(STAGES["threads"])


def test_a_command_that_cannot_start_fails_every_check():
    report = grade(["./no-such-server", "{port}"], stages=["threads"])
    assert {r.hint for r in report.results} == {"cannot start './no-such-server': No such file or directory"}


def test_the_command_needs_a_port_placeholder():
    with pytest.raises(ValueError, match="{port}"):
        grade([sys.executable, "server.py"])
    with pytest.raises(ValueError, match="unknown stages"):
        grade(address=("127.0.0.1", 1), stages=["lab9"])


# --- the command line: --address, --stage, --batch ----------------------------------------------


def test_the_command_line_grades_a_running_server_by_address():
    with server_class("threads")("127.0.0.1", 0) as server:
        done = run_grader("--address", f"127.0.0.1:{server.port}", "--stage", "threads", "routing")
    assert done.returncode == 0, done.stdout + done.stderr
    wanted = [c for c in CHECKS if c.stage in ("threads", "routing")]
    assert done.stdout.splitlines() == [
        *(f"✔ {c.stage}: {c.name}" for c in wanted),
        f"grade: {len(wanted)} passed, 0 failed",
    ]


def test_batch_grades_a_folder_of_submissions_into_a_csv(tmp_path):
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    run_small_server = f"import runpy, sys\nrunpy.run_path({str(TESTS / 'broken_servers.py')!r}, run_name='__main__')\n"
    (submissions / "alice.py").write_text(run_small_server)
    (submissions / "bob.py").write_text("import sys\nsys.argv += ['--bug', 'echo-broadcast']\n" + run_small_server)
    (submissions / "notes.txt").write_text("not a submission")
    sheet = tmp_path / "grades.csv"
    done = run_grader("--batch", str(submissions), "--stage", "routing", "--timeout", "1", "--csv", str(sheet))
    assert done.returncode == 0, done.stdout + done.stderr
    routing = list(STAGES["routing"])
    with sheet.open(newline="") as lines:
        rows = list(csv.reader(lines))
    assert rows[0] == ["submission", *routing, "passed", "failed"]
    assert rows[1] == ["alice", *["1"] * len(routing), str(len(routing)), "0"]
    assert rows[2] == ["bob", *("0" if name == "broadcast" else "1" for name in routing), str(len(routing) - 1), "1"]
    assert len(rows) == 3
    assert done.stderr.splitlines()[:2] == [
        f"alice.py: grade: {len(routing)} passed, 0 failed",
        f"bob.py: grade: {len(routing) - 1} passed, 1 failed",
    ]


def test_the_command_line_wants_exactly_one_server():
    assert run_grader("--stage", "threads").returncode == 2
    assert run_grader("--address", "127.0.0.1:1", "--", "python", "x.py", "{port}").returncode == 2
    assert run_grader("--", "python", "server.py").returncode == 2  # no {port}


# --- the report ---------------------------------------------------------------------------------

REPORT = Report(
    [
        CheckResult("threads", "greeting on connect", True),
        CheckResult(
            "threads",
            "register a name",
            False,
            "a good name must be answered with a line starting '* '",
            ("amy_2 > 'amy_2\\n'", "amy_2 < '! <no>'", "amy_2 < (nothing within 2 s)"),
        ),
    ]
)


def test_the_report_as_text():
    assert REPORT.passed == REPORT.results[:1]
    assert REPORT.failed == REPORT.results[1:]
    assert str(REPORT) == textwrap.dedent(
        """\
        ✔ threads: greeting on connect
        ✘ threads: register a name
            a good name must be answered with a line starting '* '
              amy_2 > 'amy_2\\n'
              amy_2 < '! <no>'
              amy_2 < (nothing within 2 s)
        grade: 1 passed, 1 failed"""
    )
    assert repr(REPORT) == str(REPORT)  # what a notebook shows as text/plain


def test_the_report_as_an_html_table():
    table = REPORT._repr_html_()
    assert table.startswith('<table class="chatlab-grade">') and table.endswith("</table>")
    assert table.count("<tr>") == 4  # the header, two checks, the total
    assert ">threads</td><td" in table and ">register a name</td><td" in table
    assert "amy_2 &lt; &#x27;! &lt;no&gt;&#x27;" in table  # escaped, in a <pre>
    assert "grade: 1 passed, 1 failed" in table


def test_bytes_in_a_transcript_show_line_ends_and_invalid_bytes():
    assert shown(b"%amy%caf\xe9 \xff\n") == r"'%amy%caf\xe9 \xff\n'"
    assert shown("grüße\n".encode()) == r"'grüße\n'"
    assert shown(b"x" * 5000) == "'" + "x" * 59 + "...xxxxx' (5000 bytes)"


def test_a_good_name_refused_says_what_may_be_wrong(start_server, connect):
    """The usual reason a name the grader picks is taken: the server kept a client that left."""
    server = start_server()
    connect(server, "amy_2")  # holds the name the 'register a name' check uses
    report = grade(address=server.address, stages=["threads"])
    failed, *later = report.failed
    assert failed.name == "register a name"
    assert {result.hint for result in later} == {"needs 'register a name' to pass first"}
    assert failed.hint.startswith("the good name 'amy_2' was refused; if this passed before")
    assert failed.transcript[-1] == "amy_2 < '! name taken'"
