"""The grader: run a chat server, talk to it over raw sockets, and say what works.

``python -m chatlab.grade -- python my_server.py --port {port}`` starts the command on a free
port of 127.0.0.1, waits (bounded) until the port accepts, runs the checks, stops the program
(SIGTERM, then SIGKILL) and prints one row per check: ``✔ stage: name``, or ``✘ stage: name``
with a one-line hint naming the bug and the transcript of what was sent (``>``) and what came
back (``<``). The last line is ``grade: N passed, M failed``; the exit status is 0 exactly when
nothing failed. ``--address HOST:PORT`` grades a server that is already running, ``--stage``
picks stages, and ``--batch DIR`` grades every ``*.py`` in a folder of submissions into a CSV.
From Python, :func:`grade` returns a :class:`Report` (a table in Jupyter).

The checks come in four stages, one per lab, in this order: ``threads`` (greeting,
registration, 20 clients at once), ``routing`` (direct messages, errors, broadcast, who,
joined and left), ``framing`` (lines split and merged by TCP, a partial line at the end,
over-long lines, invalid UTF-8) and ``slow`` (a client that stops reading, abrupt
disconnects). Each check knows what it needs: when the greeting fails, everything that needs
it fails at once instead of waiting for its own timeout.

The grader judges meaning, not wording, following the protocol in README.md: an error is any
line that starts with ``! ``, a notice any line that starts with ``* ``, and a delivered message
is exactly ``%sender%text``, byte for byte. While it waits for a line, it skips notices that are
not what a check is about (servers may send more of them than the kit does), but never a
message or an error. It reads the wire with its own few lines of code, not chatlab's parser, so
it judges every server the same way. A line ending ``\\r\\n`` counts as ending ``\\n``.
Limits it assumes from the README: a name is 1-32 of ``A-Z a-z 0-9 _ . -`` and not ``server``,
``all`` or ``*``; a line may be up to 4096 bytes (:data:`chatlab.protocol.DEFAULT_MAX_LINE`),
so the grader sends a line of three times that as an over-long one.

Every wait is bounded: a line that does not come within ``timeout`` seconds (2 by default)
fails its check, and a report is the same for the same server behaviour (no times, no ports).
"""

from __future__ import annotations

import argparse
import csv
import html
import logging
import re
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from . import protocol

__all__ = ["CHECKS", "STAGES", "Check", "CheckResult", "Report", "grade", "main"]

log = logging.getLogger("chatlab.grade")

DEFAULT_TIMEOUT = 2.0
"""Seconds to wait for any one line the server should send."""
START_TIMEOUT = 10.0  # for a started command to accept connections
STOP_TIMEOUT = 3.0  # after SIGTERM, before SIGKILL
MAX_LINE = protocol.DEFAULT_MAX_LINE  # the README's limit, 4096 bytes
LONG_LINE = 3 * MAX_LINE  # what the grader sends as an over-long line
FLOOD_LINE = 1000  # bytes of text in each line sent to a client that does not read
FLOOD_BYTES = 4 << 20  # sent to it in all: far more than the kernel's buffers hold
TRICKLE_PAUSE = 0.01  # between the single bytes of a trickled line
TRANSCRIPT_LINES = 14  # a failed check shows at most this many transcript lines (the last ones)
SHOWN_CHARS = 70  # a longer line is shortened in the transcript
LONGEST_REPLY = 1 << 20  # bytes without a line end the grader reads before it calls them a line

NOTICE = b"* "
ERROR = b"! "


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """How one check went: ``ok``, and for a failure a hint and what was said on the wire."""

    stage: str
    name: str
    ok: bool
    hint: str = ""
    transcript: tuple[str, ...] = ()


@dataclass
class Report:
    """Every check's result, in order; ``str(report)`` is the text table, and Jupyter shows a
    table (``_repr_html_``). Both end with ``grade: N passed, M failed``."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> list[CheckResult]:
        return [result for result in self.results if result.ok]

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if not result.ok]

    @property
    def summary(self) -> str:
        return f"grade: {len(self.passed)} passed, {len(self.failed)} failed"

    def __str__(self) -> str:
        rows = []
        for result in self.results:
            rows.append(f"{'✔' if result.ok else '✘'} {result.stage}: {result.name}")
            if not result.ok:
                rows.append(f"    {result.hint}")
                rows.extend(f"      {line}" for line in result.transcript)
        rows.append(self.summary)
        return "\n".join(rows)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        # JupyterLab right-aligns table cells: every cell says how it wants to be laid out.
        left = ' style="text-align:left;vertical-align:top"'
        rows = []
        for result in self.results:
            mark = '<span style="color:#080">✔</span>' if result.ok else '<span style="color:#c00">✘</span>'
            detail = ""
            if not result.ok:
                detail = html.escape(result.hint)
                if result.transcript:
                    transcript = html.escape("\n".join(result.transcript))
                    detail += f'<pre style="margin:0.3em 0 0 0;text-align:left">{transcript}</pre>'
            cells = (mark, html.escape(result.stage), html.escape(result.name), detail)
            rows.append("<tr>" + "".join(f"<td{left}>{cell}</td>" for cell in cells) + "</tr>")
        header = "".join(f"<th{left}>{title}</th>" for title in ("", "stage", "check", "what went wrong"))
        return (
            f'<table class="chatlab-grade"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody>"
            f'<tfoot><tr><td colspan="4"{left}>{self.summary}</td></tr></tfoot></table>'
        )


# --- talking to the server ----------------------------------------------------------------------


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


# --- the checks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One check: its stage, its name, the hint shown when it fails, the checks it needs."""

    stage: str
    name: str
    hint: str
    needs: tuple[str, ...]
    function: Callable[[Run], None]


CHECKS: list[Check] = []
"""Every check, in the order they run."""


def check(stage: str, name: str, hint: str, needs: Sequence[str] = ()) -> Callable:
    def add(function: Callable[[Run], None]) -> Callable[[Run], None]:
        CHECKS.append(Check(stage, name, hint, tuple(needs), function))
        return function

    return add


# threads (lab 1): accept, a thread per client, registration


@check(
    "threads",
    "greeting on connect",
    "a new connection must first get a line starting '* ' (the prompt for a name): "
    "does the server accept and greet before it reads?",
)
def greeting(run: Run) -> None:
    run.connect(run.name("amy")).expect_notice()


@check(
    "threads",
    "register a name",
    "a good name must be answered with a line starting '* ' (e.g. '* welcome amy')",
    needs=["greeting on connect"],
)
def register(run: Run) -> None:
    name = run.name("amy")
    client = run.connect(name)
    client.expect_notice()
    client.send(name.encode() + b"\n")
    try:
        client.expect_notice()
    except Failed:
        if client.last.startswith(ERROR):
            raise Failed(
                f"the good name {name!r} was refused; if this passed before, "
                "does the server forget the names of clients that left?"
            ) from None
        raise


@check(
    "threads",
    "invalid names refused",
    "a name that breaks the rules (1-32 of A-Z a-z 0-9 _ . -, not 'server') must be "
    "answered with a line starting '! ', and the client may try again",
    needs=["register a name"],
)
def invalid_names(run: Run) -> None:
    client = run.connect(run.name("amy"))
    client.expect_notice()
    for bad in (b"two words", b"x" * 33, b"server"):
        client.send(bad + b"\n")
        client.expect_error(f"the name {bad.decode()!r} breaks the rules and must be refused with '! '")
    client.drain()
    client.send(run.name("amy").encode() + b"\n")
    client.expect_notice("after a refused name the client may try again on the same connection")


@check(
    "threads",
    "duplicate name refused",
    "a name already online must be refused with '! ', whatever its case, and the client may try again",
    needs=["register a name"],
)
def duplicate_name(run: Run) -> None:
    kim = run.name("kim")
    run.register("kim")
    client = run.connect(run.name("lee"))
    client.expect_notice()
    client.send(kim.encode() + b"\n")
    client.expect_error(f"{kim!r} is online already: the same name must be refused with '! '")
    client.send(kim.upper().encode() + b"\n")
    client.expect_error(f"names are unique regardless of case: {kim.upper()!r} must be refused with '! '")
    client.drain()
    client.send(run.name("lee").encode() + b"\n")
    client.expect_notice("after a refused name the client may try again on the same connection")


@check(
    "threads",
    "20 clients at once",
    "20 clients connected at once must all be served: does one client waiting for its name "
    "block the accept loop or the others (give every client a thread of its own)?",
    needs=["register a name"],
)
def twenty_clients(run: Run) -> None:
    clients = [run.connect(run.name(f"c{i:02d}")) for i in range(1, 21)]
    for client in clients[:19]:
        client.expect_notice()  # greeted, and then idle: no name yet
    last = clients[19]
    last.expect_notice()
    last.send(last.label.encode() + b"\n")
    last.expect_notice("while 19 connections wait without a name, a 20th must still register")
    for client in clients[:19]:
        client.send(client.label.encode() + b"\n")
    for client in clients[:19]:
        client.expect_notice()


# routing (lab 2): %name%text, errors, broadcast, who, joined and left


@check(
    "routing",
    "direct message",
    "'%ben%text' from amy must reach ben as '%amy%text', byte for byte",
    needs=["register a name"],
)
def direct_message(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    to_ben, from_amy = f"%{ben.label}%".encode(), f"%{amy.label}%".encode()
    for text, hint in (
        (b"hi ben", None),
        (b"50% done? 100%", "the text may contain '%': only the first two '%' frame the name"),
        ("grüße, 世界 ✓".encode(), "the text is UTF-8: deliver its bytes unchanged"),
        (b"", "the text may be empty: '%ben%' reaches ben as '%amy%'"),
    ):
        amy.send(to_ben + text + b"\n")
        ben.expect_message(from_amy + text, hint)


@check(
    "routing",
    "unknown recipient",
    "a message to an unknown client must be answered with a line starting '! ' to the "
    "sender: did the server drop it silently?",
    needs=["direct message"],
)
def unknown_recipient(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    amy.send(f"%{run.name('nobody')}%hello?\n".encode())
    amy.expect_error()
    amy.send(f"%{ben.label}%still here\n".encode())
    ben.expect_message(
        f"%{amy.label}%still here".encode(),
        "the error goes to the sender only, and the sender's next message must still arrive",
    )


@check(
    "routing",
    "line without %name%",
    "a line that does not start with %name% must be answered with a line starting '! ' "
    "(e.g. '! expected %name%message')",
    needs=["direct message"],
)
def line_without_name(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    amy.send(b"hello?\n")
    amy.expect_error()
    amy.send(f"%{ben.label}%still here\n".encode())
    ben.expect_message(
        f"%{amy.label}%still here".encode(),
        "after a bad line the connection stays: the next good line must still be delivered",
    )


@check(
    "routing",
    "broadcast",
    "'%*%text' must reach every other client exactly once as '%sender%text'",
    needs=["direct message"],
)
def broadcast(run: Run) -> None:
    amy, ben, cat = run.register("amy"), run.register("ben"), run.register("cat")
    amy.send(b"%*%hello everyone\n")
    for other in (ben, cat):
        other.expect_message(f"%{amy.label}%hello everyone".encode())
    for other in (ben, cat):  # anything between the broadcast and this would be a duplicate
        amy.send(f"%{other.label}%one more\n".encode())
        other.expect_message(f"%{amy.label}%one more".encode(), "a broadcast must arrive exactly once")
    ben.send(f"%{amy.label}%got it\n".encode())
    amy.expect_message(
        f"%{ben.label}%got it".encode(),
        "a broadcast goes to everyone else: the sender must not get its own message back",
    )


@check(
    "routing",
    "who",
    "'%server%who' must be answered with a line starting '* ' that names everyone online "
    "(e.g. '* online: amy, ben, cat')",
    needs=["register a name"],
)
def who(run: Run) -> None:
    amy, ben, cat = run.register("amy"), run.register("ben"), run.register("cat")
    amy.send(b"%server%who\n")
    amy.expect_notice(wanted=names(amy, ben, cat))


@check(
    "routing",
    "joined and left notices",
    "when a client registers, and when it leaves, the others must get a line starting '* ' "
    "that names it (e.g. '* ben joined', '* ben left')",
    needs=["register a name"],
)
def joined_and_left(run: Run) -> None:
    amy = run.register("amy")
    ben = run.register("ben")
    amy.expect_notice("the others must be told that ben joined: '* ben joined'", names(ben))
    amy.drain()
    ben.close(note=True)
    amy.expect_notice("the others must be told that ben left: '* ben left'", names(ben))


# framing (lab 3): TCP is a byte stream; limits and bad bytes


@check(
    "framing",
    "two lines in one packet",
    "one recv() can hold several lines: split what arrives at every '\\n' and handle each line",
    needs=["direct message"],
)
def two_lines_in_one_packet(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    amy.send(f"%{ben.label}%one\n%{ben.label}%two\n".encode(), " in one packet")
    ben.expect_message(f"%{amy.label}%one".encode())
    ben.expect_message(f"%{amy.label}%two".encode())


@check(
    "framing",
    "one line in many packets",
    "a line can arrive in many recv() calls: keep its bytes until its '\\n' comes, "
    "and decode only whole lines (a UTF-8 character can be split too)",
    needs=["direct message"],
)
def one_line_in_many_packets(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    text = "slowly, é by é".encode()
    amy.trickle(f"%{ben.label}%".encode() + text + b"\n")
    ben.expect_message(f"%{amy.label}%".encode() + text)


@check(
    "framing",
    "partial line at EOF",
    "bytes after the last '\\n' of a client that disconnects are not a line: drop them",
    needs=["direct message", "joined and left notices"],
)
def partial_line_at_eof(run: Run) -> None:
    ben, cat = run.register("ben"), run.register("cat")
    amy = run.register("amy")
    ben.expect_notice("the others must be told that amy joined", names(amy))
    amy.send(f"%{ben.label}%half a line".encode(), " with no line end")
    amy.close(note=True)
    ben.expect_notice(None, names(amy))  # amy left; a message before it fails the check
    cat.send(f"%{ben.label}%next\n".encode())
    ben.expect_message(f"%{cat.label}%next".encode())


@check(
    "framing",
    "over-long line",
    f"a line over {MAX_LINE} bytes must be refused with a line starting '! ' "
    "(e.g. '! line too long'), and the connection stays",
    needs=["direct message"],
)
def over_long_line(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    amy.send(f"%{ben.label}%".encode() + b"x" * LONG_LINE + b"\n")
    try:
        amy.expect_error()
    except Failed:
        ben.drain()  # the transcript shows whether ben got the line instead
        raise
    amy.send(f"%{ben.label}%after\n".encode())
    ben.expect_message(
        f"%{amy.label}%after".encode(),
        f"a line over {MAX_LINE} bytes must not be delivered, and the next line must still arrive",
    )


@check(
    "framing",
    "invalid UTF-8",
    "a line that is not valid UTF-8 must be refused with a line starting '! ' "
    "(e.g. '! invalid utf-8'), and the connection stays",
    needs=["direct message"],
)
def invalid_utf8(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    amy.send(f"%{ben.label}%caf".encode() + b"\xe9 \xff\n")
    try:
        amy.expect_error()
    except Failed:
        ben.drain()  # the transcript shows whether ben got the line instead
        raise
    amy.send(f"%{ben.label}%after\n".encode())
    ben.expect_message(
        f"%{amy.label}%after".encode(),
        "a line that is not UTF-8 must not be delivered, and the next line must still arrive",
    )


# slow (lab 4): a client that does not read, and clients that vanish


def flood(sender: Connection, data: bytes, timeout: float) -> bool:
    """Send all of ``data`` while throwing away what comes back; False if the server stops
    taking it for ``timeout`` seconds (or all of it takes more than 5 times that)."""
    sock = sender.sock
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    give_up = time.monotonic() + 5 * timeout
    try:
        while sent < len(data) and time.monotonic() < give_up:
            readable, writable, _ = select.select([sock], [sock], [], timeout)
            if not readable and not writable:
                return False  # the server took nothing for `timeout` seconds
            if readable:
                if not sock.recv(65536):
                    return False
            if writable:
                try:
                    sent += sock.send(view[sent : sent + 65536])
                except BlockingIOError:
                    pass
        return sent == len(data)
    except OSError:
        return False
    finally:
        sock.setblocking(True)


@check(
    "slow",
    "slow reader does not stall others",
    "a client that stops reading must not stall anyone: never wait for its socket in a "
    "sender's thread; queue its lines (with a limit) or drop it",
    needs=["direct message"],
)
def slow_reader(run: Run) -> None:
    sam = run.register("sam", rcvbuf=4096)  # and then never reads again
    fay = run.register("fay", sndbuf=16384)
    pat, quinn = run.register("pat"), run.register("quinn")
    line = f"%{sam.label}%".encode() + b"x" * FLOOD_LINE + b"\n"
    count = FLOOD_BYTES // len(line)
    run.transcript.add(f"{fay.label} > {shown(line)} {count} times, and {sam.label} reads none of it")
    if not flood(fay, line * count, run.timeout):
        run.transcript.add(f"(the server stopped reading {fay.label}'s lines for {run.timeout:g} s)")
        raise Failed(
            f"the server stopped reading {fay.label} while {sam.label} did not read: "
            "a send to a slow client must not block the sender's thread"
        )
    run.transcript.add(f"(all of {fay.label}'s lines were sent)")  # into the kernel's buffers, at least
    pat.send(f"%{quinn.label}%still moving?\n".encode())
    quinn.expect_message(f"%{pat.label}%still moving?".encode())
    fay.send(f"%{pat.label}%done\n".encode())
    pat.expect_message(f"%{fay.label}%done".encode())


def still_serving(run: Run, leave: Callable[[Connection], None]) -> None:
    """pat and quinn go on talking after xan left by ``leave``, and xan leaves the who-list."""
    pat, quinn = run.register("pat"), run.register("quinn")
    xan = run.register("xan")
    leave(xan)
    pat.send(b"%*%anyone there?\n")
    quinn.expect_message(f"%{pat.label}%anyone there?".encode())
    pat.send(f"%{quinn.label}%still here\n".encode())
    quinn.expect_message(f"%{pat.label}%still here".encode())
    deadline = time.monotonic() + run.timeout
    while True:  # xan's leaving may take the server a moment: ask until it is gone
        start = len(run.transcript.lines)
        pat.send(b"%server%who\n")
        answer = pat.expect_notice(wanted=names(pat, quinn))
        if xan.label.lower() not in words(answer):
            return
        if time.monotonic() > deadline:
            raise Failed(f"{xan.label} left, but the server still lists it: forget a client that disconnects")
        time.sleep(0.1)
        del run.transcript.lines[start:]  # only the last question is worth showing


@check(
    "slow",
    "client closes (FIN)",
    "a client that closes its connection must be forgotten, and everyone else served as before",
    needs=["direct message", "broadcast", "who"],
)
def client_closes(run: Run) -> None:
    still_serving(run, lambda xan: xan.close(note=True))


@check(
    "slow",
    "client resets (RST)",
    "a connection reset (recv() or send() raise ConnectionResetError) must end only that "
    "client: catch it, forget the client, and serve everyone else as before",
    needs=["direct message", "broadcast", "who"],
)
def client_resets(run: Run) -> None:
    still_serving(run, Connection.reset)


STAGES: dict[str, tuple[str, ...]] = {}
"""The stages in order (one per lab), each with the names of its checks in order."""
for _check in CHECKS:
    STAGES[_check.stage] = (*STAGES.get(_check.stage, ()), _check.name)
del _check


# --- grading ----------------------------------------------------------------------------------


def run_checks(address: tuple[str, int], stages: Sequence[str], timeout: float) -> Report:
    """Run the checks of ``stages`` against the server at ``address``; also the checks they
    need from other stages, which are not reported."""
    by_name = {c.name: c for c in CHECKS}
    wanted = {c.name for c in CHECKS if c.stage in stages}
    todo = set(wanted)
    for c in reversed(CHECKS):  # a check needs only earlier checks
        if c.name in todo:
            todo.update(c.needs)
    outcome: dict[str, bool] = {}
    report = Report()
    for number, c in enumerate(CHECKS, 1):
        if c.name not in todo:
            continue
        missing = [need for need in c.needs if not outcome[need]]
        if missing:
            need = by_name[missing[0]]
            where = "" if need.stage in stages else f" (stage {need.stage})"
            result = CheckResult(c.stage, c.name, False, f"needs '{need.name}'{where} to pass first")
        else:
            result = run_one(c, address, timeout, number)
        outcome[c.name] = result.ok
        if c.name in wanted:
            report.results.append(result)
    return report


def run_one(c: Check, address: tuple[str, int], timeout: float, number: int) -> CheckResult:
    run = Run(address, timeout, number)
    try:
        c.function(run)
    except Failed as failure:
        return CheckResult(c.stage, c.name, False, failure.hint or c.hint, run.transcript.shown_lines())
    except Exception as exc:  # the grader's own bug must not hide the other checks
        log.exception("check %r crashed", c.name)
        run.transcript.add(f"(the grader crashed: {exc!r})")
        return CheckResult(c.stage, c.name, False, c.hint, run.transcript.shown_lines())
    finally:
        run.close()
    return CheckResult(c.stage, c.name, True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextmanager
def started(command: Sequence[str], port: int, *, quiet: bool = False) -> Iterator[subprocess.Popen]:
    """Run ``command`` (``{port}`` filled in) in its own session; stop it afterwards by its
    pid: SIGTERM, and SIGKILL if it is still there after STOP_TIMEOUT seconds."""
    args = [part.replace("{port}", str(port)) for part in command]
    # Whatever it prints goes to standard error (or nowhere): standard output is the report's.
    output: int | None = subprocess.DEVNULL
    if not quiet:
        try:
            output = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # a notebook's stderr has no descriptor
            output = None
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True
    )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %g s: killing it", process.pid, STOP_TIMEOUT)
            process.kill()
            process.wait(STOP_TIMEOUT)


def wait_until_listening(address: tuple[str, int], process: subprocess.Popen) -> str | None:
    """None once ``address`` accepts a connection, else why it never did (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"the server exited (status {process.returncode}) before it accepted a connection"
        try:
            socket.create_connection(address, timeout=1.0).close()
            return None
        except OSError:
            time.sleep(0.05)
    return f"the server did not accept connections within {START_TIMEOUT:g} s"


def grade(
    command: Sequence[str] | str | None = None,
    *,
    address: tuple[str, int] | None = None,
    stages: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    quiet: bool = True,
) -> Report:
    """Grade a chat server: a ``command`` with ``{port}`` in it (run on a free port of
    127.0.0.1 and stopped afterwards) or a running server's ``address``.

    ``stages`` picks stages by name (all of :data:`STAGES` by default); ``timeout`` is how
    long to wait for any one line; what a started command prints is thrown away unless
    ``quiet`` is False (then it goes to standard error).
    """
    if (command is None) == (address is None):
        raise ValueError("give a command or an address, not both")
    stages = list(STAGES) if stages is None else list(stages)
    if unknown := [stage for stage in stages if stage not in STAGES]:
        raise ValueError(f"unknown stages {unknown}; the stages are {list(STAGES)}")
    if address is not None:
        return run_checks(address, stages, timeout)
    assert command is not None
    command = shlex.split(command) if isinstance(command, str) else list(command)
    if not any("{port}" in part for part in command):
        raise ValueError("the command must contain {port}, where the grader puts the port")
    address = ("127.0.0.1", free_port())
    try:
        with started(command, address[1], quiet=quiet) as process:
            if (trouble := wait_until_listening(address, process)) is None:
                return run_checks(address, stages, timeout)
    except OSError as exc:  # the program does not exist, or may not be run
        trouble = f"cannot start {command[0]!r}: {exc.strerror or exc}"
    return Report([CheckResult(c.stage, c.name, False, trouble) for c in CHECKS if c.stage in stages])


# --- the program -------------------------------------------------------------------------------


def grade_folder(folder: Path, stages: Sequence[str] | None, timeout: float, out: Path | None) -> int:
    """Grade every ``*.py`` in ``folder`` as ``python FILE --port {port}``; write a CSV with
    one row per file and one column per check (1 passed, 0 failed), then the totals."""
    files = sorted(folder.glob("*.py"))
    selected = list(STAGES) if stages is None else list(stages)
    checks = [c.name for c in CHECKS if c.stage in selected]
    rows = []
    for file in files:
        report = grade(
            [sys.executable, str(file), "--port", "{port}"], stages=selected, timeout=timeout, quiet=True
        )
        print(f"{file.name}: {report.summary}", file=sys.stderr, flush=True)
        marks = {result.name: int(result.ok) for result in report.results}
        rows.append([file.stem, *(marks[name] for name in checks), len(report.passed), len(report.failed)])
    with out.open("w", newline="", encoding="utf-8") if out else nullcontext(sys.stdout) as sheet:
        writer = csv.writer(sheet)
        writer.writerow(["submission", *checks, "passed", "failed"])
        writer.writerows(rows)
    return 0  # the grades are in the sheet: grading them all went as it should


def main(argv: Sequence[str] | None = None) -> int:
    """python -m chatlab.grade [--stage NAME ...] [--timeout S] -- COMMAND ... ({port} in it),
    or --address HOST:PORT (exit status 0 when every check passed), or --batch DIR [--csv OUT]
    (exit status 0 once the sheet is written)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m chatlab.grade",
        description="Grade a chat server against the chatlab protocol.",
        usage="%(prog)s [--stage NAME ...] [--timeout S] "
        "(-- COMMAND ... | --address HOST:PORT | --batch DIR)",
    )
    parser.add_argument("--stage", action="extend", nargs="+", choices=list(STAGES), help="default: all")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for a line")
    parser.add_argument("--address", help="HOST:PORT of a server that is already running")
    parser.add_argument(
        "--batch", type=Path, help="grade every *.py in this folder as 'python FILE --port {port}'"
    )
    parser.add_argument(
        "--csv", type=Path, help="with --batch: write the CSV here (default: standard output)"
    )
    args = parser.parse_args(argv)
    if sum(map(bool, (command, args.address, args.batch))) != 1:
        parser.error("give exactly one of: -- COMMAND, --address HOST:PORT, --batch DIR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.batch is not None:
        if not args.batch.is_dir():
            parser.error(f"{args.batch} is not a folder")
        return grade_folder(args.batch, args.stage, args.timeout, args.csv)
    if args.address:
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            parser.error("--address takes HOST:PORT")
        report = grade(address=(host, int(port)), stages=args.stage, timeout=args.timeout)
    else:
        if not any("{port}" in part for part in command):
            parser.error("the command must contain {port}, where the grader puts the port")
        report = grade(command, stages=args.stage, timeout=args.timeout, quiet=False)
    print(report, flush=True)
    return 0 if not report.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
