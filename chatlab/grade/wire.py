"""Talking to the server under test: raw TCP connections, read line by line with deadlines.

The grader judges meaning, not wording, following the protocol in README.md: an error is any
line that starts with ``! ``, a notice any line that starts with ``* ``, and a delivered message
is exactly ``%sender%text``, byte for byte. While it waits for a line, it skips notices that are
not what a check is about (servers may send more of them than the kit does), but never a
message or an error. It reads the wire with its own few lines of code, not chatlab's parser, so
it judges every server the same way. A line ending ``\\r\\n`` counts as ending ``\\n``.

A :class:`Run` is one check's run: it gives the check's clients names of their own (``amy_6``
in check 6), opens its :class:`Connection` objects and closes them all at the end, and keeps the
:class:`Transcript` of what was sent (``>``) and received (``<``), shown when the check fails.
A check fails by raising :class:`Failed`, as every wait does when its line does not come
within the run's ``timeout``.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable

TRICKLE_PAUSE = 0.01  # between the single bytes of a trickled line
TRANSCRIPT_LINES = 14  # a failed check shows at most this many transcript lines (the last ones)
SHOWN_CHARS = 70  # a longer line is shortened in the transcript
LONGEST_REPLY = 1 << 20  # bytes without a line end the grader reads before it calls them a line

NOTICE = b"* "
ERROR = b"! "


class Failed(Exception):
    """A check failed; ``hint`` (if given) replaces the check's own hint."""

    def __init__(self, hint: str | None = None) -> None:
        super().__init__(hint)
        self.hint = hint


def shown(data: bytes) -> str:
    """Bytes as the transcript shows them: quoted, with ``\\n`` and invalid bytes visible."""
    # Bytes that are not UTF-8 become lone surrogates (U+DC80..U+DCFF), shown as \xNN again.
    text = re.sub(r"\\udc([89a-f][0-9a-f])", r"\\x\1", repr(data.decode("utf-8", "surrogateescape")))
    if len(text) > SHOWN_CHARS:
        text = f"{text[: SHOWN_CHARS - 10]}...{text[-6:]} ({len(data)} bytes)"
    return text


def words(line: bytes) -> set[str]:
    """The name-like words of a line, lower case: ``* online: amy_3, ben_3`` has amy_3, ben_3."""
    return {word.lower() for word in re.findall(r"[A-Za-z0-9_]+", line.decode("utf-8", "replace"))}


class Transcript:
    """What a check sent and received, line by line, in the order the grader saw it."""

    def __init__(self, number: int) -> None:
        self.lines: list[str] = []
        self._number = number

    def add(self, line: str) -> None:
        self.lines.append(line)

    def add_received(self, who: str, line: bytes) -> None:
        # Notices about clients of other checks only (leaving late, say) are noise here.
        checks = {int(number) for number in re.findall(rb"[a-z0-9]+_(\d+)\b", line)}
        if line.startswith(NOTICE) and checks and self._number not in checks:
            return
        self.add(f"{who} < {shown(line)}")

    def shown_lines(self) -> tuple[str, ...]:
        if len(self.lines) <= TRANSCRIPT_LINES:
            return tuple(self.lines)
        skipped = len(self.lines) - TRANSCRIPT_LINES
        return (f"({skipped} earlier lines)", *self.lines[-TRANSCRIPT_LINES:])


class Connection:
    """One raw TCP connection to the server under test, read line by line with deadlines."""

    def __init__(
        self,
        run: Run,
        label: str,
        *,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
    ) -> None:
        self.run = run
        self.label = label  # the name it registers, or will; shown in the transcript
        self.buffer = bytearray()
        self.last = b""  # the last line read
        self.closed = False  # the server closed its end
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect(), so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one send, one packet
        self.sock.settimeout(run.timeout)
        try:
            self.sock.connect(run.address)
        except OSError as exc:
            self.sock.close()
            run.transcript.add(f"{label} cannot connect: {exc.strerror or exc}")
            raise Failed("the server did not accept the connection: is it listening?") from None

    # --- writing ---------------------------------------------------------------------------

    def send(self, data: bytes, note: str = "") -> None:
        self.run.transcript.add(f"{self.label} > {shown(data)}{note}")
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.run.transcript.add(f"{self.label} cannot send: {exc.strerror or exc}")
            raise Failed("the server closed the connection") from None

    def trickle(self, data: bytes) -> None:
        """Send ``data`` one byte per packet, with a short pause between bytes."""
        self.run.transcript.add(f"{self.label} > {shown(data)} one byte at a time")
        for i in range(len(data)):
            try:
                self.sock.sendall(data[i : i + 1])
            except OSError as exc:
                self.run.transcript.add(f"{self.label} cannot send: {exc.strerror or exc}")
                raise Failed("the server closed the connection mid-line") from None
            time.sleep(TRICKLE_PAUSE)

    # --- reading ---------------------------------------------------------------------------

    def _line_from_buffer(self) -> bytes | None:
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) < LONGEST_REPLY:
                return None
            end = len(self.buffer)  # no line end in sight: take it all as one (wrong) line
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def read_line(self, deadline: float, hint: str | None) -> bytes:
        """The next line (without its line end), recorded; Failed when none comes in time."""
        while (line := self._line_from_buffer()) is None:
            remaining = deadline - time.monotonic()
            data = b""
            if not self.closed and remaining > 0:
                try:
                    self.sock.settimeout(remaining)
                    data = self.sock.recv(65536)
                except TimeoutError:
                    remaining = 0
                except OSError:
                    data = b""  # a reset: the connection is over, as with a close
                if data:
                    self.buffer += data
                    continue
                if remaining > 0:
                    self.closed = True
            if self.closed:
                if self.buffer:
                    self.run.transcript.add(f"{self.label} < {shown(bytes(self.buffer))} and then closed")
                    self.buffer.clear()
                else:
                    self.run.transcript.add(f"{self.label} < (connection closed)")
                raise Failed(hint)
            self.run.transcript.add(f"{self.label} < (nothing within {self.run.timeout:g} s)")
            raise Failed(hint)
        self.run.transcript.add_received(self.label, line)
        self.last = line
        return line

    def expect_notice(self, hint: str | None = None, wanted: Callable[[bytes], bool] | None = None) -> bytes:
        """The first notice (``* ...``) that is ``wanted``; other notices are skipped, and any
        other line fails."""
        deadline = time.monotonic() + self.run.timeout
        while True:
            line = self.read_line(deadline, hint)
            if not line.startswith(NOTICE):
                raise Failed(hint)
            if wanted is None or wanted(line):
                return line

    def next_reply(self, hint: str | None = None) -> bytes:
        """The next line that is not a notice."""
        deadline = time.monotonic() + self.run.timeout
        while (line := self.read_line(deadline, hint)).startswith(NOTICE):
            pass
        return line

    def expect_error(self, hint: str | None = None) -> bytes:
        line = self.next_reply(hint)
        if not line.startswith(ERROR):
            raise Failed(hint)
        return line

    def expect_message(self, wanted: bytes, hint: str | None = None) -> None:
        if self.next_reply(hint) != wanted:
            raise Failed(hint)

    def drain(self, wait: float = 0.05) -> None:
        """Read (and record) every line that arrives within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while not self.closed and time.monotonic() < deadline:
            try:
                self.read_line(deadline, None)
            except Failed:
                if not self.closed:
                    self.run.transcript.lines.pop()  # "(nothing within ...)" is expected here
                break

    # --- leaving ---------------------------------------------------------------------------

    def close(self, note: bool = False) -> None:
        if note:
            self.run.transcript.add(f"{self.label} closes the connection")
        self.sock.close()

    def reset(self) -> None:
        """Leave with a TCP reset (RST) instead of a goodbye: SO_LINGER on, timeout 0."""
        self.run.transcript.add(f"{self.label} resets the connection (RST)")
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class Run:
    """One check's run: its names, its connections (all closed at the end) and its transcript."""

    def __init__(self, address: tuple[str, int], timeout: float, number: int) -> None:
        self.address = address
        self.timeout = timeout
        self.number = number
        self.transcript = Transcript(number)
        self.connections: list[Connection] = []

    def name(self, base: str) -> str:
        """This check's own name for a client: ``amy`` in check 6 is ``amy_6``, so no two
        checks (nor a client that left late) ever ask for the same name."""
        return f"{base}_{self.number}"

    def connect(self, label: str, **options: int) -> Connection:
        connection = Connection(self, label, **options)
        self.connections.append(connection)
        return connection

    def register(self, base: str, **options: int) -> Connection:
        """A connection registered as ``base_N``: greeting read, name sent, a notice back."""
        name = self.name(base)
        client = self.connect(name, **options)
        client.expect_notice("could not register: the server sent no greeting")
        client.send(name.encode() + b"\n")
        client.expect_notice(f"could not register: the name {name!r} was not answered with '* '")
        return client

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


def names(*clients: Connection) -> Callable[[bytes], bool]:
    """Whether a line names every one of ``clients``."""
    wanted = {client.label.lower() for client in clients}
    return lambda line: wanted <= words(line)
