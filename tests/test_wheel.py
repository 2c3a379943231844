"""The kit as someone without a clone gets it: the wheel built from this checkout, installed into
a fresh virtual environment with no package index, and its four programs run from there."""

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0  # seconds, for anything one step of a test waits for


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A fresh virtual environment with only the wheel in it: (its python, its programs' folder)."""
    where = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what goes into it: setuptools would reuse a stale build/ folder here.
    source = where / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source)
    shutil.copytree(ROOT / "chatlab", source / "chatlab", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(where / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (where / "dist").glob("chatlab_kit-*-py3-none-any.whl")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(where / "venv")], check=True, timeout=120
    )
    scripts = where / "venv" / ("Scripts" if os.name == "nt" else "bin")
    python = scripts / ("python.exe" if os.name == "nt" else "python")
    # no index: the install fails if the wheel asks for any dependency
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr
    return python, scripts, where


def program(scripts: Path, name: str) -> str:
    return str(scripts / (f"{name}.exe" if os.name == "nt" else name))


def outside_the_checkout(where: Path) -> dict:
    """Run from a folder of its own, with no PYTHONPATH: `import chatlab` finds the installed kit
    only, never this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return dict(cwd=where, env=env)


@pytest.fixture
def started(kit):
    """Start programs; stop every one still running at the end (by its own Popen, never by name)."""
    processes: list[subprocess.Popen] = []

    def start(*command: str) -> subprocess.Popen:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **outside_the_checkout(kit[2]),
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=WAIT)


def listening_port(process: subprocess.Popen) -> int:
    """The port of the first line, ``listening on HOST:PORT``, read within WAIT seconds."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    line = lines.get(timeout=WAIT)
    assert line.startswith("listening on 127.0.0.1:"), (line, process.poll())
    return int(line.rsplit(":", 1)[1])


class Wire:
    """A raw client: lines in, lines out, every wait bounded."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.pending = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def expect(self, wanted: str) -> list[str]:
        """Read lines until ``wanted``; return every line read."""
        seen: list[str] = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                seen.append(line.decode())
                if seen[-1] == wanted:
                    return seen
            data = self.sock.recv(4096)
            assert data, f"closed before {wanted!r}; got {seen}"
            self.pending += data
        raise AssertionError(f"no {wanted!r} within {WAIT} s; got {seen}")

    def close(self) -> None:
        self.sock.close()


def test_the_wheel_installs_alone_with_its_name_licence_and_programs(kit):
    python, scripts, where = kit
    shown = subprocess.run(
        [
            str(python),
            "-c",
            "import chatlab, json, importlib.metadata as m; d = m.distribution('chatlab-kit');"
            "print(json.dumps({'file': chatlab.__file__, 'name': d.metadata['Name'],"
            "'license': d.metadata['License-Expression'], 'files': [str(f) for f in d.files],"
            "'scripts': sorted(e.name for e in d.entry_points if e.group == 'console_scripts')}))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        **outside_the_checkout(where),
    )
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert Path(found["file"]).is_relative_to(where / "venv")
    assert found["name"] == "chatlab-kit" and found["license"] == "MIT"
    assert any(f.endswith("licenses/LICENSE") for f in found["files"])
    assert any(f.startswith("chatlab/servers/") for f in found["files"])
    assert found["scripts"] == ["chatlab-client", "chatlab-faults", "chatlab-grade", "chatlab-server"]
    for name in found["scripts"]:
        assert Path(program(scripts, name)).exists()


def test_the_installed_server_client_fault_link_and_grader_work_together(kit, started):
    python, scripts, where = kit
    server = started(program(scripts, "chatlab-server"), "--port", "0", "--quiet")
    port = listening_port(server)

    bob = Wire(port)
    bob.expect("* chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter")
    bob.send("bob")
    bob.expect("* welcome bob")

    # the terminal client, fed from a pipe: one message, then /quit
    alice = started(program(scripts, "chatlab-client"), "--port", str(port), "--name", "alice")
    out, err = alice.communicate("%bob%hello from the wheel\n/quit\n", timeout=WAIT)
    assert alice.returncode == 0, err
    assert out.startswith("* you are alice; online: ")
    assert "%alice%hello from the wheel" in bob.expect("* alice left")

    # the fault link between a client and the server, cutting every write to one byte
    link = started(
        program(scripts, "chatlab-faults"),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"127.0.0.1:{port}",
        "--slice",
        "1",
        "--quiet",
    )
    carol = Wire(listening_port(link))
    carol.expect("* chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter")
    carol.send("carol")
    carol.expect("* welcome carol")
    carol.close()
    bob.close()

    # the grader, on the running server, then on a server it starts and stops itself
    graded = subprocess.run(
        [program(scripts, "chatlab-grade"), "--stage", "threads", "--address", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
        **outside_the_checkout(where),
    )
    assert graded.returncode == 0, graded.stdout + graded.stderr
    assert re.fullmatch(
        r"grade: [1-9]\d* passed, 0 failed, (\d+)/\1 points", graded.stdout.rstrip().splitlines()[-1]
    )
    graded = subprocess.run(
        [
            program(scripts, "chatlab-grade"),
            "--stage",
            "threads",
            "--",
            program(scripts, "chatlab-server"),
            "--port",
            "{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        **outside_the_checkout(where),
    )
    assert graded.returncode == 0, graded.stdout + graded.stderr
    assert re.fullmatch(
        r"grade: [1-9]\d* passed, 0 failed, (\d+)/\1 points", graded.stdout.rstrip().splitlines()[-1]
    )

    for process in (link, server):
        process.terminate()  # both stop cleanly on SIGTERM; on Windows this ends them at once
        process.communicate(timeout=WAIT)
    assert server.returncode is not None and link.returncode is not None
