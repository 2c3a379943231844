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
While it waits for one connection it reads every other connection of the run as well, so the
transcript shows each line when it arrived, with its offset from the start of the check
(``+0.012s``), in time order; lines that arrive at once (within SETTLE) on several connections
are shown in the order the check opened them, so that a report is the same from run to run
for the same server behaviour, up to the offsets. A check fails by raising :class:`Failed`, as
every wait does when its line does not come within the run's ``timeout``.
"""

from __future__ import annotations

import re
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

TRICKLE_PAUSE = 0.01  # between the single bytes of a trickled line
TRANSCRIPT_LINES = 16  # a failed check shows at most this many transcript lines (the last ones)
SHOWN_CHARS = 70  # a longer line is shortened in the transcript
LONGEST_REPLY = 1 << 20  # bytes without a line end the grader reads before it calls them a line
FULL_WAIT = 5.0  # seconds to wait for a server that says it is full to make room
# Seconds one of many clients connecting at once may take to be let in (see stress_connect).
BACKLOG_WAIT = 15.0
CLOSE_WAIT = 1.0  # after a clean close (FIN), seconds to wait for the server to close too
SETTLE = 0.003  # lines arriving this close together count as arriving at once

NOTICE = b"* "
ERROR = b"! "

NO_GREETING = (
    "the connection was accepted but no greeting came within {timeout:g} s: is the accept "
    "loop busy serving another client, or is a thread waiting for a lock it holds?"
)


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


def about_earlier_checks(line: bytes, number: int) -> bool:
    """Whether ``line`` names clients of earlier checks only (``* amy_22 left`` in check 23).
    Every check's clients close at its end, and on a busy computer the server may announce
    that after the next check has begun: that is no fault of the server."""
    checks = [int(n) for n in re.findall(r"[A-Za-z0-9]_(\d+)\b", line.decode("utf-8", "replace"))]
    return bool(checks) and max(checks) < number


def is_full(line: bytes) -> bool:
    """Whether an error line says the server is full (``! server full``, in any wording)."""
    return line.startswith(ERROR) and b"full" in line.lower()


class Transcript:
    """What a check sent and received, line by line, in time order, each line with its offset
    from the start of the check."""

    def __init__(self, number: int) -> None:
        self.lines: list[str] = []
        self._number = number
        self._start = time.monotonic()

    def add(self, line: str) -> None:
        self.lines.append(f"+{time.monotonic() - self._start:.3f}s {line}")

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
    """One raw TCP connection to the server under test, read line by line with deadlines.

    Lines are read as they arrive (while the run waits for any of its connections) into
    ``arrived``; the ``expect_...`` methods take them from there in order. A connection with
    ``listening`` False is left alone: the kernel keeps what arrives, as for a client that
    stopped reading.
    """

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
        self.arrived: deque[bytes] = deque()  # lines read from the wire, not yet taken
        self.last = b""  # the last line taken
        self.closed = False  # the server closed its end (or reset it)
        self.listening = True
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
            self.closed = True
            run.transcript.add(f"{label} cannot connect: {exc.strerror or exc}")
            raise Failed("the server did not accept the connection: is it listening?") from None

    # --- writing ---------------------------------------------------------------------------

    def send(self, data: bytes, note: str = "") -> None:
        self.run.pump()  # what came before this line is shown before it
        self.run.transcript.add(f"{self.label} > {shown(data)}{note}")
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.run.transcript.add(f"{self.label} cannot send: {exc.strerror or exc}")
            raise Failed("the server closed the connection") from None

    def trickle(self, data: bytes) -> None:
        """Send ``data`` one byte per packet, with a short pause between bytes."""
        self.run.pump()
        self.run.transcript.add(f"{self.label} > {shown(data)} one byte at a time")
        for i in range(len(data)):
            try:
                self.sock.sendall(data[i : i + 1])
            except OSError as exc:
                self.run.transcript.add(f"{self.label} cannot send: {exc.strerror or exc}")
                raise Failed("the server closed the connection mid-line") from None
            time.sleep(TRICKLE_PAUSE)

    # --- reading ---------------------------------------------------------------------------

    def receive(self, timeout: float) -> None:
        """One recv() (waiting at most ``timeout``): its complete lines go to ``arrived`` and
        into the transcript; an end of the connection is noted."""
        if self.closed:
            return
        try:
            self.sock.settimeout(max(timeout, 0.0))
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except OSError:
            data = b""  # a reset: the connection is over, as with a close
        if not data:
            self.closed = True
            if self.buffer:
                self.run.transcript.add(f"{self.label} < {shown(bytes(self.buffer))} and then closed")
                self.buffer.clear()
            else:
                self.run.transcript.add(f"{self.label} < (connection closed)")
            return
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) < LONGEST_REPLY:
                    return
                end = len(self.buffer)  # no line end in sight: take it all as one (wrong) line
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
            line = line[:-1] if line.endswith(b"\r") else line
            self.run.transcript.add_received(self.label, line)
            self.arrived.append(line)

    def read_line(self, deadline: float, hint: str | None, *, note_silence: bool = True) -> bytes:
        """The next line (without its line end); Failed when none comes in time."""
        while not self.arrived:
            remaining = deadline - time.monotonic()
            if self.closed:
                raise Failed(hint)
            if remaining <= 0:
                if note_silence:
                    self.run.transcript.add(f"{self.label} < (nothing within {self.run.timeout:g} s)")
                raise Failed(hint)
            self.run.pump(remaining, until=self)
        self.last = self.arrived.popleft()
        return self.last

    def expect_notice(self, hint: str | None = None, wanted: Callable[[bytes], bool] | None = None) -> bytes:
        """The first notice (``* ...``) that is ``wanted``; other notices are skipped, and so
        are notices only about clients of earlier checks, and any other line fails."""
        deadline = time.monotonic() + self.run.timeout
        while True:
            line = self.read_line(deadline, hint)
            if not line.startswith(NOTICE):
                raise Failed(hint)
            if about_earlier_checks(line, self.run.number):
                continue
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
        """Take every line that arrives within ``wait`` seconds (they are in the transcript)."""
        deadline = time.monotonic() + wait
        while not self.closed and time.monotonic() < deadline:
            try:
                self.read_line(deadline, None, note_silence=False)
            except Failed:
                break
        self.arrived.clear()

    def discard(self, quiet: float = 0.1) -> None:
        """Throw away (unrecorded) what arrives until nothing has come for ``quiet`` seconds;
        the connection is read as usual afterwards."""
        skipped = sum(len(line) + 1 for line in self.arrived)
        self.arrived.clear()
        deadline = time.monotonic() + 5 * self.run.timeout
        while not self.closed and time.monotonic() < deadline:
            try:
                self.sock.settimeout(quiet)
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                self.run.transcript.add(f"{self.label} < (connection closed)")
            self.buffer += data
            end = self.buffer.rfind(b"\n") + 1  # a line not ended yet is kept, to be read whole
            skipped += end
            del self.buffer[:end]
        if skipped:
            self.run.transcript.add(f"({self.label}: {skipped} bytes of earlier lines skipped)")
        self.listening = True

    # --- leaving ---------------------------------------------------------------------------

    def close(self, note: bool = False) -> None:
        """Close the connection; with ``note``, as a client that leaves on purpose: a FIN
        first, then what the server still sends is read (bounded) until it closes too, so the
        kernel never turns the close into a reset (it does when unread bytes are left)."""
        if note and not self.closed:
            self.run.transcript.add(f"{self.label} closes the connection")
            try:
                self.sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + CLOSE_WAIT
                self.sock.settimeout(CLOSE_WAIT)
                while time.monotonic() < deadline and self.sock.recv(65536):
                    pass
            except OSError:
                pass
        self.closed = True
        self.sock.close()

    def reset(self) -> None:
        """Leave with a TCP reset (RST) instead of a goodbye: SO_LINGER on, timeout 0."""
        self.run.transcript.add(f"{self.label} resets the connection (RST)")
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed = True
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

    def pump(self, wait: float = 0.0, until: Connection | None = None) -> None:
        """Read what has arrived on any listening connection of the run, waiting at most
        ``wait`` seconds for something to come (on ``until``, or on any of them)."""
        deadline = time.monotonic() + wait
        while True:
            open_ = [c for c in self.connections if c.listening and not c.closed]
            if until is not None and until not in open_:
                open_.append(until)
            if not open_:
                return
            remaining = max(deadline - time.monotonic(), 0.0)
            readable, _, _ = select.select([c.sock for c in open_], [], [], remaining)
            if readable:  # lines the server sent at one moment are shown in the run's order
                time.sleep(SETTLE)
                readable, _, _ = select.select([c.sock for c in open_], [], [], 0)
            for connection in open_:
                if connection.sock in readable:
                    connection.receive(0)
            if until is None or until.arrived or until.closed or time.monotonic() >= deadline:
                return

    def connect(self, label: str, **options: int) -> Connection:
        connection = Connection(self, label, **options)
        self.connections.append(connection)
        return connection

    def greeted(self, label: str, **options: int) -> Connection:
        """A new connection and its greeting (a ``* `` line). A server that answers
        ``! server full`` (the clients of the check before may not be gone yet) is asked again
        for up to FULL_WAIT seconds."""
        give_up = time.monotonic() + FULL_WAIT
        tries = 0
        while True:
            start = len(self.transcript.lines)
            client = self.connect(label, **options)
            try:
                line = client.read_line(
                    time.monotonic() + self.timeout, NO_GREETING.format(timeout=self.timeout)
                )
            except Failed:
                if client.closed:
                    raise Failed("the server closed a new connection without a word (no greeting)") from None
                raise
            if line.startswith(NOTICE):
                return self.let_in(client, tries)
            if not is_full(line):
                raise Failed(f"a new connection must first get a line starting '* ', not {shown(line)}")
            tries += 1
            self.wait_for_room(client, give_up, start)

    def let_in(self, client: Connection, tries: int) -> Connection:
        if tries:
            self.transcript.add(f"({client.label} was told the server is full {tries} times, then let in)")
        return client

    def wait_for_room(self, client: Connection, give_up: float, start: int) -> None:
        """After ``! server full``: close, and try again soon (only the last try is shown)."""
        client.close()
        self.connections.remove(client)
        if time.monotonic() > give_up:
            others = len(self.connections)
            who = f"only this check's {others} other clients were" if others else "no other client was"
            raise Failed(
                f"the server said {shown(client.last)} for {FULL_WAIT:g} s while {who} connected: "
                "does it still count clients that left (every earlier check's client has closed "
                "its connection)?"
            )
        del self.transcript.lines[start:]
        time.sleep(0.1)

    def register(self, base: str, **options: int) -> Connection:
        """A connection registered as ``base_N``: greeting read, name sent, a notice back."""
        name = self.name(base)
        give_up = time.monotonic() + FULL_WAIT
        tries = 0
        while True:
            start = len(self.transcript.lines)
            client = self.greeted(name, **options)
            client.send(name.encode() + b"\n")
            deadline = time.monotonic() + self.timeout
            line = client.read_line(deadline, f"could not register: the name {name!r} got no answer")
            if line.startswith(NOTICE):
                return self.let_in(client, tries)
            if not is_full(line):
                raise Failed(f"could not register: the good name {name!r} was refused with {shown(line)}")
            tries += 1
            self.wait_for_room(client, give_up, start)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


def names(*clients: Connection) -> Callable[[bytes], bool]:
    """Whether a line names every one of ``clients``."""
    wanted = {client.label.lower() for client in clients}
    return lambda line: wanted <= words(line)
