"""Raw-socket line clients for tests that read like a chat transcript: send a line, expect a line;
and :class:`Program`, a chatlab program in a subprocess whose output a test can wait for.

A :class:`Peer` talks to the server with nothing but a socket and its own line splitting (not
chatlab's framer), so the tests check the server against an independent reading of the
protocol. Every read has a timeout: a missing line fails the test instead of hanging it.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

TIMEOUT = 5.0
GREETING = "* chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter"
HELP = [
    "* %name%text sends text to name",
    "* %*%text sends text to everyone else",
    "* %server%who lists who is online",
    "* %server%help shows this help",
]
ONLINE = "* online: "

T = TypeVar("T")


def run_together(target: Callable[[T], object], items: list[T], *, name: str, timeout: float = 20.0) -> None:
    """Call ``target(item)`` for every item, each in a thread of its own, and wait (bounded)
    until all have returned."""
    threads = [
        threading.Thread(target=target, args=(item,), name=f"{name}-{i}") for i, item in enumerate(items)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), (
        f"{name}: threads still running after {timeout} s"
    )


def wait_until(condition: Callable[[], T], timeout: float = 5.0, message: str = "") -> T:
    """Poll ``condition()`` until it returns something true, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"still false after {timeout} s: {condition}")
        time.sleep(0.005)


class Peer:
    """One raw TCP connection to a chat server, written and read line by line.

    ``rcvbuf``/``sndbuf`` shrink the socket's kernel buffers (set before connecting), which
    makes a client that stops reading, or a sender that gets stuck, show up after kilobytes
    rather than megabytes. ``source`` connects from another address of this computer (a
    loopback alias such as 127.0.0.2 plays a second laptop; macOS has only 127.0.0.1).
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        timeout: float = TIMEOUT,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
        source: str | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            self.sock.bind((source, 0))
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.port = self.sock.getsockname()[1]
        """This end's port: the one the server sees and keeps in the client's record."""
        self.timeout = timeout
        self.name: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._buffer = b""

    def __repr__(self) -> str:
        return f"<Peer {self.name or '(no name)'} port={self.port}>"

    # --- writing -----------------------------------------------------------------------------

    def send(self, line: str | bytes) -> None:
        """Send one line; ``\\n`` is added."""
        self.send_raw((line.encode() if isinstance(line, str) else line) + b"\n")

    def send_raw(self, data: bytes) -> None:
        """Send bytes exactly as given (half a line, no newline at all, garbage...)."""
        self.sock.sendall(data)
        self.bytes_sent += len(data)

    # --- reading -----------------------------------------------------------------------------

    def _fill(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{self!r}: nothing more arrived; holding {self._buffer[:200]!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(f"{self!r}: nothing more arrived; holding {self._buffer[:200]!r}") from None
        self.bytes_received += len(data)
        return data

    def read_line(self, timeout: float | None = None) -> str:
        """The next line (without ``\\n``); TimeoutError if none comes, EOFError at end of stream."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buffer:
            data = self._fill(deadline)
            if not data:
                raise EOFError(f"{self!r}: the server closed the connection; holding {self._buffer!r}")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8")

    def expect(self, *lines: str) -> None:
        """The next lines are exactly ``lines``, in this order."""
        for wanted in lines:
            got = self.read_line()
            assert got == wanted, f"{self!r} expected {wanted!r} but got {got!r}"

    def read_until(self, wanted: Callable[[str], bool] | str, limit: int = 1000) -> list[str]:
        """Read lines up to and including the first one that is (or matches) ``wanted``."""
        match = wanted if callable(wanted) else (lambda line: line == wanted)
        lines = []
        for _ in range(limit):
            lines.append(self.read_line())
            if match(lines[-1]):
                return lines
        raise AssertionError(f"{self!r}: {wanted!r} not among {limit} lines, last {lines[-5:]}")

    def read_to_eof(self, limit: int = 10_000, timeout: float | None = None) -> list[str]:
        """Every line until the server closes the connection (a reset counts as closed)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for _ in range(limit):
            try:
                data = self._fill(deadline)
            except ConnectionResetError:
                data = b""
            if not data:
                lines = self._buffer.split(b"\n")
                assert lines[-1] == b"", f"{self!r}: closed mid-line: {lines[-1]!r}"
                self._buffer = b""
                return [line.decode("utf-8") for line in lines[:-1]]
            self._buffer += data
        raise AssertionError(f"{self!r}: still open after {limit} reads")

    def drain(self, limit: int = 10_000) -> int:
        """Read and throw away everything until the end of the stream; return how many bytes."""
        deadline = time.monotonic() + self.timeout
        total = len(self._buffer)
        self._buffer = b""
        for _ in range(limit):
            try:
                data = self._fill(deadline)
            except ConnectionResetError:
                return total
            if not data:
                return total
            total += len(data)
        raise AssertionError(f"{self!r}: still open after {limit} reads")

    def expect_eof(self) -> None:
        """Nothing more arrives: the server has closed the connection."""
        lines = self.read_to_eof()
        assert lines == [], f"{self!r}: expected the end of the stream, got {lines}"

    # --- conversations ---------------------------------------------------------------------

    def register(self, name: str) -> list[str]:
        """Read the greeting, give ``name``, expect the welcome; return who is online."""
        self.expect(GREETING)
        self.send(name)
        self.expect(f"* welcome {name}")
        self.name = name
        online = self.read_line()
        assert online.startswith(ONLINE), f"{self!r}: expected the online list, got {online!r}"
        return online[len(ONLINE) :].split(", ")

    def who(self) -> list[str]:
        """Ask who is online. The answer must be the very next line, which also proves that
        nothing else had been queued for this client before the question reached the server."""
        self.send("%server%who")
        line = self.read_line()
        assert line.startswith(ONLINE), f"{self!r}: expected the answer to who, got {line!r}"
        return line[len(ONLINE) :].split(", ")

    # --- leaving -----------------------------------------------------------------------------

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Leave with a TCP reset instead of a goodbye: SO_LINGER on, timeout 0, then close."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def alice_and_bob(server, connect) -> tuple[Peer, Peer]:
    """Two registered peers; alice has read the notice that bob joined."""
    alice, bob = connect(server, "alice"), connect(server, "bob")
    alice.expect("* bob joined")
    return alice, bob


class Program:
    """A chatlab program in a subprocess. Threads collect what it writes to stdout and stderr
    (they end when it exits), so a test can wait for a line without blocking on a pipe.
    ``prefix`` runs it through another command, e.g. ``ip netns exec NS``; ``command`` runs
    that command instead of ``python -m ARGS``."""

    def __init__(
        self, *args: str, stdin: bool = False, prefix: tuple[str, ...] = (), command: list[str] | None = None
    ) -> None:
        restore_ctrl_c = None
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # e.g. started in the background
            restore_ctrl_c = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        self.proc = subprocess.Popen(
            [*prefix, *(command or [sys.executable, "-m", *args])],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=restore_ctrl_c,
        )
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        program = args[0] if args else (command or ["?"])[0]
        self._readers = [
            threading.Thread(
                target=self._collect,
                args=(name, getattr(self.proc, name)),
                name=f"test-{name}-of-{program}",
                daemon=True,
            )
            for name in self.lines
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, name: str, pipe) -> None:
        for line in pipe:
            with self._changed:
                self.lines[name].append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, stream: str = "stderr", timeout: float = 10.0) -> re.Match:
        """The first line of ``stream`` that matches the regex ``pattern``, waiting for it."""
        regex = re.compile(pattern)
        with self._changed:
            found = self._changed.wait_for(
                lambda: next(filter(None, map(regex.search, self.lines[stream])), None), timeout
            )
        assert found, f"no {pattern!r} on {stream} within {timeout} s; it says {self.lines}"
        return found

    def write(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def finish(self, timeout: float = 5.0) -> int:
        """Wait for the program to exit and for its output to be read; its exit code."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


class KeptWrites:
    """A transport that keeps every write, in order: a Session's, without a socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> bool:
        self.writes.append(data)
        return True

    def abort(self) -> None:
        pass

    def registered(self, name: str) -> None:
        pass

    def taken(self) -> bytes:
        """Everything written since the last call, as one piece."""
        data = b"".join(self.writes)
        self.writes.clear()
        return data


def s_client(port: int, cafile: object) -> list[str]:
    """``openssl s_client`` to a TLS server on 127.0.0.1, trusting ``cafile``: the TLS ``nc``."""
    return ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(cafile),
            "-verify_return_error", "-quiet"]  # fmt: skip
