"""Helpers for the lab notebooks; you do not need to change (or even read) this file.

``Wire`` is a raw connection to your server that prints every line it sends (``>``) and every
line it receives (``<``), and never waits longer than its timeout for a line, so a cell that
talks to an unfinished server ends anyway; ``hear()`` does the same for the kit's
``ChatClient``. ``lab_threads()`` lists your server's threads (their
names start with ``lab-``), and ``where_are_the_threads()`` says which line of your file each
of them is running.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import traceback

SHOWN = 100  # characters of a line shown; a longer line is shortened


def shortened(line: str) -> str:
    """The line, or its start and end with its length in bytes if it is long."""
    if len(line) <= SHOWN:
        return line
    return f"{line[:40]}...{line[-10:]} ({len(line.encode('utf-8'))} bytes)"


class Wire:
    """One raw TCP connection to a chat server, shown line by line as ``label > ...`` (sent)
    and ``label < ...`` (received)."""

    def __init__(
        self, address: tuple[str, int], label: str, timeout: float = 1.0, rcvbuf: int | None = None
    ) -> None:
        self.label = label
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small receive buffer: a client that stops reading shows sooner
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buffer = b""

    def send(self, line: str, quiet: bool = False) -> None:
        """Send one line (the ``\\n`` is added)."""
        self.sock.sendall(line.encode("utf-8") + b"\n")
        if not quiet:
            print(f"{self.label} > {shortened(line)}")

    def send_bytes(self, data: bytes) -> None:
        """Send bytes exactly as given, in one ``sendall()``."""
        self.sock.sendall(data)
        print(f"{self.label} > {data!r}")

    def trickle(self, data: bytes, pause: float = 0.02) -> None:
        """Send ``data`` one byte at a time, ``pause`` seconds apart: many small packets."""
        for byte in data:
            self.sock.sendall(bytes([byte]))
            time.sleep(pause)
        print(f"{self.label} > {data!r}, one byte at a time")

    def drain(self, quiet: float = 0.3) -> int:
        """Read, without printing, every line that comes until none has come for ``quiet``
        seconds (at most 100 lines); return how many there were."""
        self.sock.settimeout(quiet)
        try:
            count = 0
            while count < 100 and self.line() is not None:
                count += 1
            return count
        finally:
            self.sock.settimeout(self.timeout)

    def line(self) -> str | None:
        """The next line, without its line end, or None if none came within the timeout."""
        while b"\n" not in self.buffer:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionError):
                return None
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.removesuffix(b"\r").decode("utf-8", errors="replace")

    def hear(self, count: int = 1) -> None:
        """Read and print up to ``count`` lines; stop at the first that does not come in time."""
        for _ in range(count):
            line = self.line()
            if line is None:
                print(f"{self.label} < (nothing within {self.timeout:g} s)")
                return
            print(f"{self.label} < {shortened(line)}")

    def close(self) -> None:
        self.sock.close()


def lab_threads() -> list[str]:
    """The names of your server's threads alive now (they start with ``lab-``), sorted."""
    return sorted(thread.name for thread in threading.enumerate() if thread.name.startswith("lab-"))


def where_are_the_threads(module: object) -> None:
    """For each ``lab-`` thread, print the innermost line of ``module``'s file it is running."""
    frames = sys._current_frames()  # thread ident -> the frame it is running now
    filename = getattr(module, "__file__", "")
    for thread in sorted(threading.enumerate(), key=lambda t: t.name):
        if thread.name.startswith("lab-") and thread.ident in frames:
            stack = traceback.extract_stack(frames[thread.ident])
            ours = [frame for frame in stack if frame.filename == filename]
            print(f"{thread.name:14} {ours[-1].name}: {ours[-1].line}" if ours else f"{thread.name:14} ?")


def hear(client: object, count: int = 1, timeout: float = 1.0) -> None:
    """Print up to ``count`` lines a ``ChatClient`` received, as ``name < line``; stop at the
    first that does not come within ``timeout`` seconds."""
    name = getattr(client, "name", "?")
    for _ in range(count):
        try:
            line = client.recv(timeout=timeout)  # type: ignore[attr-defined]
        except TimeoutError:
            print(f"{name} < (nothing within {timeout:g} s)")
            return
        except ConnectionError:
            print(f"{name} < (connection closed)")
            return
        print(f"{name} < {line}")
