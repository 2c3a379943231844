"""Helpers for the lab notebooks; you do not need to change (or even read) this file.

``Wire`` is a raw connection to your server that prints every line it sends (``>``) and every
line it receives (``<``), and never waits longer than its timeout for a line, so a cell that
talks to an unfinished server ends anyway; ``hear()`` does the same for the kit's
``ChatClient``, and ``join_chat()`` makes one that says politely when your server does not let
it in yet. ``lab_threads()`` lists your server's threads (their names start with ``lab-``), and
``where_are_the_threads()`` says which line of your file each of them is running.
``OneClientAtATime`` is a demonstration: the mistake lab 1 is about, in a server of its own.
"""

from __future__ import annotations

import contextlib
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


def where_are_the_threads(module: object, prefix: str = "lab-") -> None:
    """For each thread whose name starts with ``prefix``, print the innermost line of
    ``module``'s file it is running."""
    frames = sys._current_frames()  # thread ident -> the frame it is running now
    filename = getattr(module, "__file__", "")
    for thread in sorted(threading.enumerate(), key=lambda t: t.name):
        if thread.name.startswith(prefix) and thread.ident in frames:
            stack = traceback.extract_stack(frames[thread.ident])
            ours = [frame for frame in stack if frame.filename == filename]
            print(f"{thread.name:20} {ours[-1].name}: {ours[-1].line}" if ours else f"{thread.name:20} ?")


def hear(client: object, count: int = 1, timeout: float = 1.0) -> None:
    """Print up to ``count`` lines a ``ChatClient`` received, as ``name < line``; stop at the
    first that does not come within ``timeout`` seconds."""
    name = getattr(client, "name", "?")
    if isinstance(client, NotJoined):
        print(f"{name} < (not in the chat: {client.reason})")
        return
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


class NotJoined:
    """Stands in for a ``ChatClient`` that your server did not let in: sending does nothing,
    and ``hear()`` says why it is not there. Cells then run on an unfinished server too."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        self.online: list[str] = []

    def send(self, to: str, text: str) -> None:
        pass

    def send_line(self, line: str) -> None:
        pass

    def broadcast(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def join_chat(address: tuple[str, int], name: str, **options: object):
    """A ``ChatClient`` called ``name`` on the server at ``address``, or, when the server does
    not greet, refuses the name or does not answer within a second, a :class:`NotJoined`."""
    from chatlab import ChatClient, NameRefused  # the kit's client, which the lessons use

    options.setdefault("timeout", 1)
    try:
        return ChatClient(*address, name, **options)
    except NameRefused as refused:
        return NotJoined(name, f"the name was refused: {refused}")
    except TimeoutError:
        return NotJoined(name, "no welcome within 1 s")
    except (ConnectionError, OSError) as exc:
        return NotJoined(name, f"the connection failed: {exc}")


class OneClientAtATime:
    """A demonstration server that makes lab 1's first mistake on purpose: its only thread
    accepts a connection and then serves it itself, until that client leaves. Meanwhile the
    next connection waits in the listening socket's queue, and nobody greets it. (Its thread is
    called ``demo-accept``; ``stop()`` ends it.)"""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="demo-accept", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(0.1)
                conn.sendall(b"* welcome to the demo: this server serves one client at a time\n")
                while not self.stopping.is_set():  # serve this client until it leaves
                    try:
                        if not conn.recv(4096):
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        with contextlib.suppress(OSError):
            self.listener.close()
