"""The checks: what the grader asks of a chat server, in four stages, one per lab.

The stages run in this order: ``threads`` (greeting, registration, 20 clients at once),
``routing`` (direct messages, errors, broadcast, who, joined and left), ``framing`` (lines split
and merged by TCP, a partial line at the end, over-long lines, invalid UTF-8) and ``slow`` (a
client that stops reading, abrupt disconnects). Each check is a function of a
:class:`~chatlab.grade.wire.Run`, added to :data:`CHECKS` by the :func:`check` decorator with
its stage, its name, the hint shown when it fails and the checks it needs: when the greeting
fails, everything that needs it fails at once instead of waiting for its own timeout.

Limits the checks assume from the README: a name is 1-32 of ``A-Z a-z 0-9 _ . -`` and not
``server``, ``all`` or ``*``; a line may be up to 4096 bytes
(:data:`chatlab.protocol.DEFAULT_MAX_LINE`), so the grader sends a line of three times that as
an over-long one.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import protocol
from .wire import ERROR, Connection, Failed, Run, names, shown, words

MAX_LINE = protocol.DEFAULT_MAX_LINE  # the README's limit, 4096 bytes
LONG_LINE = 3 * MAX_LINE  # what the grader sends as an over-long line
FLOOD_LINE = 1000  # bytes of text in each line sent to a client that does not read
FLOOD_BYTES = 4 << 20  # sent to it in all: far more than the kernel's buffers hold


@dataclass(frozen=True)
class Check:
    """One check: its stage, its name, the hint shown when it fails, the checks it needs, and
    the points it is worth."""

    stage: str
    name: str
    hint: str
    needs: tuple[str, ...]
    function: Callable[[Run], None]
    points: int = 1


CHECKS: list[Check] = []
"""Every check, in the order they run."""


def check(stage: str, name: str, hint: str, needs: Sequence[str] = (), points: int = 1) -> Callable:
    def add(function: Callable[[Run], None]) -> Callable[[Run], None]:
        CHECKS.append(Check(stage, name, hint, tuple(needs), function, points))
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
