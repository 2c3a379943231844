"""The command lines, run as real programs: ``python -m chatlab.server`` and ``python -m chatlab.client``."""

from __future__ import annotations

import importlib.metadata
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transcript import GREETING, Program


def start_server_program(run, *options: str) -> tuple[Program, int]:
    server = run("chatlab.server", "--port", "0", *options)
    port = int(
        server.wait_for(r"listening on 127\.0\.0\.1:(\d+) \(one thread per client, queue delivery\)")[1]
    )
    return server, port


def test_the_server_program_logs_connections_messages_and_errors(run, connect):
    server, port = start_server_program(run)
    alice, bob = connect(("127.0.0.1", port), "alice"), connect(("127.0.0.1", port), "bob")
    alice.expect("* bob joined")
    alice.send("%bob%hi bob")
    bob.expect("%alice%hi bob")
    alice.send("%zed%anyone?")
    alice.expect("! unknown client 'zed'")
    for pattern in [
        rf"INFO +127\.0\.0\.1:{alice.port} connected$",
        rf"INFO +127\.0\.0\.1:{alice.port} is alice$",
        rf"INFO +127\.0\.0\.1:{bob.port} is bob$",
        r"INFO +alice -> bob: 'hi bob'$",
        rf"WARNING +127\.0\.0\.1:{alice.port} alice: unknown client 'zed'$",
    ]:
        server.wait_for(pattern)
    server.proc.send_signal(signal.SIGINT)
    assert server.finish() == 0
    assert server.lines["stdout"] == [f"listening on 127.0.0.1:{port}"]  # the one line for scripts
    assert server.lines["stderr"][-1].endswith("INFO    stopped")
    assert not any("Traceback" in line for line in server.lines["stderr"])
    alice.expect_eof()


@pytest.mark.parametrize("model", ["threads", "selectors", "asyncio"])
def test_a_quiet_server_still_says_where_it_listens_and_nothing_else(run, connect, model):
    server = run("chatlab.server", "--port", "0", "--quiet", "--model", model)
    port = int(server.wait_for(r"^listening on 127\.0\.0\.1:(\d+)$", stream="stdout")[1])
    alice, bob = connect(("127.0.0.1", port), "alice"), connect(("127.0.0.1", port), "bob")
    alice.expect("* bob joined")
    alice.send("%bob%hi bob")
    bob.expect("%alice%hi bob")
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert server.lines == {"stdout": [f"listening on 127.0.0.1:{port}"], "stderr": []}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_the_server_program_stops_cleanly_on_ctrl_c_and_kill(run, connect, signum):
    server, port = start_server_program(run)
    alice = connect(("127.0.0.1", port), "alice")
    idle = connect(("127.0.0.1", port))
    idle.expect(GREETING)
    idle.send_raw(b"half a na")
    started = time.monotonic()
    server.proc.send_signal(signum)
    assert server.finish() == 0
    assert time.monotonic() - started < 5
    assert server.lines["stderr"][-1].endswith("INFO    stopped")
    alice.expect_eof()
    idle.expect_eof()


def signal_as_soon_as_it_listens(signum: int) -> tuple[int, str]:
    """Start a server program, signal it the moment it says it listens; its exit code and log."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatlab.server", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    with proc:
        log = b""
        deadline = time.monotonic() + 10
        while b"listening on" not in log:
            ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                proc.kill()
                pytest.fail(f"the server did not say it listens; it said {log!r}")
            log += chunk
        proc.send_signal(signum)
        log += proc.communicate(timeout=5)[1]
    return proc.returncode, log.decode()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_a_signal_right_after_the_server_says_it_listens_still_stops_it_cleanly(signum):
    for _ in range(4):  # the moment right after that line is the one most likely to go wrong
        code, log = signal_as_soon_as_it_listens(signum)
        assert code == 0 and "Traceback" not in log, log
        assert log.endswith("INFO    stopped\n")


def test_a_busy_port_gives_a_clear_error_and_exit_code_1(run):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        server = run("chatlab.server", "--port", str(port))
        assert server.finish() == 1
    (line,) = server.lines["stderr"]
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d ERROR   cannot listen on 127\.0\.0\.1:{port}: Address already in use", line
    )


def test_the_terminal_client_shows_what_arrives_and_sends_what_is_typed(server, connect, run):
    alice = run("chatlab.client", "--port", str(server.port), "--name", "alice", stdin=True)
    alice.wait_for(r"^\* you are alice; online: alice$", "stdout")
    bob = connect(server, "bob")
    alice.wait_for(r"^\* bob joined$", "stdout")
    bob.send("%alice%hi alice, 50% done?")
    alice.wait_for(r"^%bob%hi alice, 50% done\?$", "stdout")
    alice.write("%bob%hello bob\n")
    bob.expect("%alice%hello bob")
    alice.write("\n%*%to everyone\n")  # an empty line is not sent
    bob.expect("%alice%to everyone")
    alice.write("%zed%anyone?\n")
    alice.wait_for(r"^! unknown client 'zed'$", "stdout")
    alice.write("/quit\n")
    assert alice.finish() == 0
    bob.expect("* alice left")
    assert alice.lines["stderr"] == []
    assert alice.lines["stdout"] == [
        "* you are alice; online: alice",
        "* type %name%text to send, %*%text for everyone, %server%help, /quit to leave",
        "* bob joined",
        "%bob%hi alice, 50% done?",
        "! unknown client 'zed'",
    ]


def test_the_terminal_client_prints_whole_lines_in_order_when_one_comes_with_the_welcome(run):
    """A bare socket plays the server and sends a message in the same piece as the welcome,
    so the reader thread prints it while the main thread prints the introduction."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        alice = run("chatlab.client", "--port", str(listener.getsockname()[1]), "--name", "alice", stdin=True)
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(10)
            sock.sendall(GREETING.encode() + b"\n")
            assert sock.recv(100) == b"alice\n"
            sock.sendall(b"* welcome alice\n* online: alice, bob\n%bob%early\n")
            alice.wait_for("early", "stdout")
            alice.write("/quit\n")
            assert alice.finish() == 0
    assert alice.lines["stdout"] == [
        "* you are alice; online: alice, bob",
        "* type %name%text to send, %*%text for everyone, %server%help, /quit to leave",
        "%bob%early",
    ]


def test_the_terminal_client_leaves_at_the_end_of_its_input(server, connect, run):
    bob = connect(server, "bob")
    alice = run("chatlab.client", "--port", str(server.port), "--name", "alice", stdin=True)
    bob.expect("* alice joined")
    alice.proc.stdin.close()
    assert alice.finish() == 0
    bob.expect("* alice left")


def test_the_terminal_client_says_why_its_name_was_refused(server, connect, run):
    connect(server, "alice")
    alice = run("chatlab.client", "--port", str(server.port), "--name", "ALICE")
    assert alice.finish() == 1
    assert alice.lines["stderr"] == ["chatlab-client: name taken"]


@pytest.mark.parametrize(
    "program, module", [("chatlab-server", "chatlab.server"), ("chatlab-client", "chatlab.client")]
)
def test_the_programs_are_installed_under_their_names(program, module):
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts[program] == f"{module}:main"
    path = shutil.which(program) or Path(sys.executable).with_name(program)
    if not Path(path).exists():
        pytest.skip(f"{program} is not installed next to {sys.executable}")
    done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: {program}")
    assert "--port" in done.stdout
