"""The labs' servers, graded like a student's: every reference solution gets full marks for
its lab and the labs before it, every untouched skeleton runs, greets, and fails its own lab
politely (no crash, no hang), and every one of them stops without leaving a thread behind.

Lab N's skeleton holds labs 1..N-1 solved, so it must also pass the stages before its own.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from chatlab.grade import STAGES as CHECKS_BY_STAGE
from chatlab.grade import grade
from transcript import wait_until

LABS = Path(__file__).resolve().parent.parent / "notebooks" / "labs"
STAGES = ["threads", "routing", "framing", "slow"]  # lab N is graded on STAGES[N - 1]
NUMBERS = [1, 2, 3, 4]


def load(path: Path) -> ModuleType:
    """Import a lab's server file by its path, as a module of its own (skeleton and solution
    share a file name)."""
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


@pytest.mark.parametrize("number", NUMBERS, ids=[f"lab{n}" for n in NUMBERS])
def test_solution_gets_full_marks_from_the_grader_program(number: int) -> None:
    """What a student runs: python -m chatlab.grade --stage ... -- python labN_server.py --port {port}."""
    stages = [arg for stage in STAGES[:number] for arg in ("--stage", stage)]
    solution = LABS / "solutions" / f"lab{number}_server.py"
    command = [sys.executable, "-m", "chatlab.grade", *stages, "--", sys.executable, str(solution)]
    finished = subprocess.run(
        [*command, "--port", "{port}"], capture_output=True, text=True, timeout=120, cwd=LABS
    )
    report = finished.stdout.strip().splitlines()
    assert finished.returncode == 0, finished.stdout + finished.stderr
    checks = [line for line in report if line.startswith(("✔", "✘"))]
    expected = [f"✔ {stage}: {name}" for stage in STAGES[:number] for name in CHECKS_BY_STAGE[stage]]
    assert checks == expected, report
    assert report[-1] == f"grade: {len(checks)} passed, 0 failed"


@pytest.mark.parametrize("number", [1, 2, 3], ids=["lab1", "lab2", "lab3"])
def test_solution_does_not_pass_the_next_lab(number: int, serve) -> None:
    """Each lab adds something the grader can tell: lab N's solution fails lab N+1's stage."""
    server = serve(LABS / "solutions" / f"lab{number}_server.py")
    report = grade(address=server.address, stages=[STAGES[number]])
    assert report.failed, str(report)


@pytest.mark.parametrize("number", NUMBERS, ids=[f"lab{n}" for n in NUMBERS])
def test_untouched_skeleton_passes_earlier_labs_and_fails_its_own(number: int, serve) -> None:
    server = serve(LABS / f"lab{number}_server.py")
    if number > 1:
        # Lab 3's untouched framer takes one recv() for one line, so routing checks that send
        # two lines in quick succession may fail there: that is lab 3's lesson.
        earlier = grade(address=server.address, stages=["threads"] if number == 3 else STAGES[: number - 1])
        assert not earlier.failed, f"lab {number}'s skeleton should hold labs 1..{number - 1} solved:\n{earlier}"
    own = grade(address=server.address, stages=[STAGES[number - 1]])
    assert own.failed, f"the untouched skeleton of lab {number} passes its own lab:\n{own}"
    if number == 1:
        assert [r.name for r in own.passed] == ["greeting on connect"], str(own)


@pytest.mark.parametrize("number", [1, 2], ids=["lab1", "lab2"])
def test_untouched_skeleton_greets_and_says_not_implemented(number: int, serve) -> None:
    server = serve(LABS / f"lab{number}_server.py")
    with socket.create_connection(server.address, timeout=2) as sock:
        assert read_line(sock).startswith(b"* ")
        sock.sendall(b"amy\n")
        if number == 2:  # lab 1 is solved here: amy is welcome, and her messages are not routed yet
            assert read_line(sock) == b"* welcome amy\n"
            assert read_line(sock) == b"* online: amy\n"
            sock.sendall(b"%amy%hi\n")
        assert read_line(sock).startswith(b"! not implemented yet")
        sock.sendall(b"%amy%again\n")
        assert read_line(sock).startswith(b"! not implemented yet")  # the connection is kept


def test_untouched_lab1_skeleton_serves_one_client_at_a_time(serve) -> None:
    """Step 1 is not done: the accept thread serves the first client itself, and the second
    is greeted only when the first has left."""
    server = serve(LABS / "lab1_server.py")
    first = socket.create_connection(server.address, timeout=2)
    assert read_line(first).startswith(b"* ")
    with socket.create_connection(server.address, timeout=0.5) as second:
        with pytest.raises(TimeoutError):
            second.recv(100)
        first.close()
        second.settimeout(2)
        assert read_line(second).startswith(b"* ")


@pytest.mark.parametrize("kind", ["skeleton", "solution"])
@pytest.mark.parametrize("number", NUMBERS, ids=[f"lab{n}" for n in NUMBERS])
def test_stop_closes_the_port_and_every_thread_with_clients_connected(number: int, kind: str) -> None:
    path = LABS / (f"lab{number}_server.py" if kind == "skeleton" else f"solutions/lab{number}_server.py")
    server = load(path).serve()
    try:
        clients = [socket.create_connection(server.address, timeout=2) for _ in range(3)]
        one_at_a_time = kind == "skeleton" and number == 1  # the others wait to be accepted
        for index, sock in enumerate(clients[:1] if one_at_a_time else clients):
            assert read_line(sock).startswith(b"* ")
            if not one_at_a_time:
                sock.sendall(f"c{index}\n".encode())
                assert read_line(sock) == f"* welcome c{index}\n".encode()
        wait_until(lambda: len(lab_threads()) >= (1 if one_at_a_time else 4))
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


@pytest.mark.parametrize("kind", ["skeleton", "solution"])
@pytest.mark.parametrize("number", NUMBERS, ids=[f"lab{n}" for n in NUMBERS])
def test_the_program_says_where_it_listens_and_ends_on_sigterm(number: int, kind: str) -> None:
    path = LABS / (f"lab{number}_server.py" if kind == "skeleton" else f"solutions/lab{number}_server.py")
    process = subprocess.Popen(
        [sys.executable, str(path), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            assert read_line(sock).startswith(b"* ")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
