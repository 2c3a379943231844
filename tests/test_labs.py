"""The labs' servers, graded like a student's.

- Every reference solution gets full marks for its lab and the labs before it (lab 5's for
  every stage), and lab N's does not pass lab N+1.
- Every handed-out file runs, fails its own lab politely (no crash, no hang) and stops without
  leaving a ``lab-`` thread behind; labs 2-4's hold nothing of an earlier lab's solution.
- Every start file (the reference of lab N-1 with lab N's rules) passes labs 1..N-1 and not N.
- The share of each reference that the student writes stays above its target (INSTRUCTORS.md).
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from transcript import wait_until

from chatlab.grade import STAGES as CHECKS_BY_STAGE
from chatlab.grade import grade

ROOT = Path(__file__).resolve().parent.parent
LABS = ROOT / "notebooks" / "labs"
STAGES = ["threads", "routing", "framing", "slow"]  # lab N (1-4) is graded on STAGES[N - 1]
THREADED = [1, 2, 3, 4]  # the labs whose files share the frame with serve() and stop()
EVERY = [1, 2, 3, 4, 5]
STARTS = [2, 3, 4]
SHARE_TARGETS = {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5, 5: 0.9}  # the targets

sys.path.insert(0, str(LABS))
import shares  # noqa: E402  (notebooks/labs/shares.py)
from lab_helpers import OneClientAtATime  # noqa: E402


def stages_of(number: int) -> list[str]:
    return STAGES if number == 5 else STAGES[:number]


def load(path: Path) -> ModuleType:
    """Import a lab's server file by its path, as a module of its own (the handed-out file, the
    start file and the solution share a file name)."""
    name = f"{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def lab_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("lab-"))


@pytest.fixture
def serve() -> Iterator:
    """``serve(path)`` starts that file's server in this process; it is stopped afterwards, and
    then no ``lab-...`` thread may be left."""
    servers = []

    def start(path: Path):
        server = load(path).serve()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    assert lab_threads() == [], f"threads left after stop(): {lab_threads()}"


def read_line(sock: socket.socket) -> bytes:
    """One line from a raw socket (bounded by the socket's timeout)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def run_grader(path: Path, stages: list[str]) -> subprocess.CompletedProcess:
    """What a student runs: python -m chatlab.grade --stage ... -- python FILE --port {port}."""
    options = [arg for stage in stages for arg in ("--stage", stage)]
    command = [
        sys.executable,
        "-m",
        "chatlab.grade",
        *options,
        "--",
        sys.executable,
        str(path),
        "--port",
        "{port}",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=LABS)


# --- the references ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", EVERY, ids=[f"lab{n}" for n in EVERY])
def test_reference_gets_full_marks_for_its_lab_and_the_labs_before(number: int) -> None:
    finished = run_grader(LABS / "solutions" / f"lab{number}_server.py", stages_of(number))
    report = finished.stdout.strip().splitlines()
    assert finished.returncode == 0, finished.stdout + finished.stderr[-2000:]
    checks = [line for line in report if line.startswith(("✔", "✘"))]
    expected = [f"✔ {stage}: {name} (1/1)" for stage in stages_of(number) for name in CHECKS_BY_STAGE[stage]]
    assert checks == expected, report
    assert report[-1] == f"grade: {len(checks)} passed, 0 failed, {len(checks)}/{len(checks)} points"


@pytest.mark.parametrize("number", [1, 2, 3], ids=["lab1", "lab2", "lab3"])
def test_reference_does_not_pass_the_next_lab(number: int, serve) -> None:
    """Each lab adds something the grader can tell: lab N's solution fails lab N+1's stage."""
    server = serve(LABS / "solutions" / f"lab{number}_server.py")
    report = grade(address=server.address, stages=[STAGES[number]])
    assert report.failed, str(report)


SENDS = {"send_to", "refuse", "tell_others", "sendall", "send"}  # calls that wait for a socket in labs 1-3


def calls_under_the_shared_lock(path: Path) -> list[str]:
    """The names of the methods called inside a ``with self.lock:`` block of ``path``."""
    called = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        locks = [ast.unparse(item.context_expr) for item in node.items] if isinstance(node, ast.With) else []
        if "self.lock" in locks:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute):
                    called.append(inner.func.attr)
    return called


@pytest.mark.parametrize("number", THREADED, ids=[f"lab{n}" for n in THREADED])
def test_reference_never_sends_while_holding_the_shared_lock(number: int) -> None:
    """Every lesson teaches it: a send can wait for as long as the receiver does not read, and
    every client thread needs the shared lock. Lab 4's send only queues (it never waits), so
    only a real socket send is forbidden there."""
    forbidden = {"sendall", "send"} if number == 4 else SENDS
    called = calls_under_the_shared_lock(LABS / "solutions" / f"lab{number}_server.py")
    assert called, "the reference should use self.lock"
    assert not forbidden & set(called), sorted(forbidden & set(called))


# --- the handed-out files ---------------------------------------------------------------------


@pytest.mark.parametrize("number", THREADED, ids=[f"lab{n}" for n in THREADED])
def test_handed_out_file_runs_and_fails_its_lab_politely(number: int, serve) -> None:
    server = serve(LABS / f"lab{number}_server.py")
    report = grade(address=server.address, stages=[STAGES[number - 1]])
    assert report.failed and not report.passed, str(report)
    with socket.create_connection(server.address, timeout=0.5) as sock:  # accepted by the OS only
        with pytest.raises(TimeoutError):
            sock.recv(100)


def test_handed_out_lab5_file_exits_with_a_message() -> None:
    finished = subprocess.run(
        [sys.executable, str(LABS / "lab5_server.py"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode == 1
    assert "no server yet" in finished.stderr
    report = grade(
        command=[sys.executable, str(LABS / "lab5_server.py"), "--port", "{port}"], stages=["threads"]
    )
    assert report.failed and not report.passed
    assert "exited" in str(report)


@pytest.mark.parametrize("number", [2, 3, 4], ids=["lab2", "lab3", "lab4"])
def test_handed_out_file_holds_no_earlier_solution(number: int) -> None:
    """Lab N's handed-out file gives no more of lab N-1's reference than lab N-1's own handed-out
    file does, so an instructor who leaves out start/ hands out no earlier solution."""
    previous = LABS / "solutions" / f"lab{number - 1}_server.py"
    from_frame = shares.measure(LABS / f"lab{number - 1}_server.py", previous)
    from_this = shares.measure(LABS / f"lab{number}_server.py", previous)
    assert from_this.written >= from_frame.written - 2, (from_this, from_frame)


@pytest.mark.parametrize("number", EVERY, ids=[f"lab{n}" for n in EVERY])
def test_the_student_writes_at_least_the_target_share(number: int) -> None:
    measured = shares.handed_out(number)
    assert measured.share >= SHARE_TARGETS[number], measured


def test_instructors_md_states_the_measured_shares() -> None:
    """The table in INSTRUCTORS.md is what shares.py measures now: the figures cannot drift."""
    text = (ROOT / "INSTRUCTORS.md").read_text("utf-8")
    for number in EVERY:
        measured = shares.handed_out(number)
        row = f"| {number} | {measured.reference_lines} | {measured.written} ({measured.share:.0%}) |"
        assert row in text, f"INSTRUCTORS.md should have a row starting {row!r} (see shares.py)"


def test_code_lines_skip_comments_docstrings_and_blanks() -> None:
    source = (
        '"""Doc."""\n\nimport os  # why\n\n\n'
        'def f():\n    """Doc\n    more."""\n    # only a comment\n    return 1\n'
    )
    assert shares.code_lines(source) == ["import os", "def f():", "return 1"]


# --- the start files --------------------------------------------------------------------------


@pytest.mark.parametrize("number", STARTS, ids=[f"lab{n}" for n in STARTS])
def test_start_file_passes_the_labs_before_and_not_its_own(number: int, serve) -> None:
    server = serve(LABS / "start" / f"lab{number}_server.py")
    earlier = grade(address=server.address, stages=STAGES[: number - 1])
    assert not earlier.failed, (
        f"start/lab{number}_server.py should hold labs 1..{number - 1} solved:\n{earlier}"
    )
    own = grade(address=server.address, stages=[STAGES[number - 1]])
    assert own.failed, f"start/lab{number}_server.py passes its own lab:\n{own}"


def test_handout_without_start_files_has_no_solution(tmp_path: Path) -> None:
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make and git are needed for `make handout`")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    names = {}
    for starts in ("yes", "no"):
        target = tmp_path / f"handout-{starts}.zip"
        subprocess.run(
            ["make", "-C", str(ROOT), "handout", f"HANDOUT={target}", f"STARTS={starts}"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        names[starts] = zipfile.ZipFile(target).namelist()
    assert "chatlab/notebooks/labs/lab1_server.py" in names["no"]
    assert not [n for n in names["yes"] if "/labs/solutions/" in n]
    assert [n for n in names["yes"] if "/labs/start/" in n]
    assert not [n for n in names["no"] if "/labs/solutions/" in n or "/labs/start/" in n]


# --- every server file stops cleanly ----------------------------------------------------------


def server_files() -> list[Path]:
    return (
        [LABS / f"lab{n}_server.py" for n in THREADED]
        + [LABS / "start" / f"lab{n}_server.py" for n in STARTS]
        + [LABS / "solutions" / f"lab{n}_server.py" for n in THREADED]
    )


def greets(path: Path) -> bool:
    return path.parent.name != "labs"  # the handed-out frames greet nobody: the accept loop is the student's


@pytest.mark.parametrize("path", server_files(), ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_stop_closes_the_port_and_every_thread_with_clients_connected(path: Path) -> None:
    server = load(path).serve()
    try:
        clients = [socket.create_connection(server.address, timeout=2) for _ in range(3)]
        if greets(path):
            for index, sock in enumerate(clients):
                assert read_line(sock).startswith(b"* ")
                sock.sendall(f"c{index}\n".encode())
                assert read_line(sock) == f"* welcome c{index}\n".encode()
            wait_until(lambda: len(lab_threads()) >= 4)
    finally:
        server.stop()
    assert lab_threads() == []
    for sock in clients:  # each connection was closed by the server: it reads to its end
        sock.settimeout(2)
        for _ in range(100):
            try:
                if sock.recv(4096) == b"":
                    break
            except ConnectionResetError:  # never accepted: reset when the listener closed
                break
        else:
            pytest.fail("a client's connection is still open after stop()")
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=2).close()


@pytest.mark.parametrize(
    "path",
    [*server_files(), LABS / "solutions" / "lab5_server.py"],
    ids=lambda p: f"{p.parent.name}-{p.stem}",
)
def test_the_program_says_where_it_listens_and_ends_on_sigterm(path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            if greets(path):
                assert read_line(sock).startswith(b"* ")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def test_lab5_reference_says_server_full_when_there_is_no_room() -> None:
    path = LABS / "solutions" / "lab5_server.py"
    process = subprocess.Popen(
        [sys.executable, str(path), "--port", "0", "--max-clients", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
            assert read_line(first).startswith(b"* ")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
                assert read_line(second) == b"! server full\n"
                assert second.recv(100) == b""
            first.sendall(b"amy\n")
            assert read_line(first) == b"* welcome amy\n"
            assert read_line(first) == b"* online: amy\n"
            first.sendall(b"%amy%a\x1b[2Jb\n")
            assert read_line(first) == b"! control characters are not allowed\n"
    finally:
        process.kill()
        process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


# --- the notebooks' demonstration server ------------------------------------------------------


def test_the_demonstration_server_greets_the_second_client_only_after_the_first_left() -> None:
    demo = OneClientAtATime()
    try:
        first = socket.create_connection(demo.address, timeout=2)
        assert read_line(first).startswith(b"* ")
        with socket.create_connection(demo.address, timeout=0.5) as second:
            with pytest.raises(TimeoutError):
                second.recv(100)
            first.close()
            second.settimeout(2)
            assert read_line(second).startswith(b"* ")
    finally:
        demo.stop()
    assert not demo.thread.is_alive()
