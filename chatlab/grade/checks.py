"""The checks: what the grader asks of a chat server, in four stages, one per lab.

The stages run in this order: ``threads`` (greeting, registration, two and then 20 clients at
once, names refused and freed), ``routing`` (direct messages and their text, errors, broadcast,
who, joined and left, many clients coming and going at once), ``framing`` (lines split and
merged by TCP, ``\\r\\n``, a partial line at the end, over-long lines with and without their
end, invalid UTF-8, control characters) and ``slow`` (a client that stops reading, abrupt
disconnects). Each check is a function of a :class:`~chatlab.grade.wire.Run`, added to
:data:`CHECKS` by the :func:`check` decorator with its stage, its name, the hint shown when it
fails and the checks it needs: when the greeting fails, everything that needs it fails at once
instead of waiting for its own timeout. Each check is about one rule of the README's protocol,
and needs only what it cannot do without, so that one narrow bug costs the checks about it
and no others; its hints name what happened (the server said it was full, exited, stopped
greeting, took nothing for two seconds), not only the rule.

Limits the checks assume from the README: a name is 1-32 of ``A-Z a-z 0-9 _ . -`` and not
``server``, ``all`` or ``*`` in any case; a line may be up to 4096 bytes
(:data:`chatlab.protocol.DEFAULT_MAX_LINE`), so the grader sends a line of three times that as
an over-long one, and 256 times that without its end; 20 clients at once must fit.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from .. import protocol
from .wire import BACKLOG_WAIT, ERROR, FULL_WAIT, NOTICE, Connection, Failed, Run, names, shown, words

MAX_LINE = protocol.DEFAULT_MAX_LINE  # the README's limit, 4096 bytes
LONG_LINE = 3 * MAX_LINE  # what the grader sends as an over-long line
FLOOD_LINE = 1000  # bytes of text in each line sent to a client that does not read
FLOOD_BYTES = 4 << 20  # sent to it in all: far more than the kernel's buffers hold
ENDLESS_LINE = 1 << 20  # bytes of one line sent without its end: 256 times the limit
FLOOD_REPLIES = 100  # replies (acks) to the flood's sender after which the server may drop it


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
    run.greeted(run.name("amy"))


@check(
    "threads",
    "register a name",
    "a good name must be answered with a line starting '* ' (e.g. '* welcome amy')",
    needs=["greeting on connect"],
)
def register(run: Run) -> None:
    name = run.name("amy")
    client = run.greeted(name)
    client.send(name.encode() + b"\n")
    try:
        client.expect_notice()
    except Failed:
        if client.last.startswith(ERROR):
            raise Failed(f"the good name {name!r} was refused with {shown(client.last)}") from None
        if client.closed:
            raise
        # No answer at all: is the server stuck for everyone, or only for this client?
        probe = run.connect(run.name("probe"))
        try:
            probe.expect_notice()
        except Failed:
            raise Failed(
                f"after {name!r} was sent, the server stopped answering anyone (a new connection "
                "was accepted but never greeted): is a thread waiting for a lock it holds (a "
                "method that takes the lock, called while the lock is held)?"
            ) from None
        raise Failed(f"the name {name!r} got no answer within {run.timeout:g} s") from None


@check(
    "threads",
    "invalid names refused",
    "a name that breaks the rules (1-32 of A-Z a-z 0-9 _ . -) must be "
    "answered with a line starting '! ', and the client may try again",
    needs=["register a name"],
)
def invalid_names(run: Run) -> None:
    client = run.greeted(run.name("amy"))
    for bad in (b"two words", b"x" * 33, b"server"):
        client.send(bad + b"\n")
        client.expect_error(f"the name {bad.decode()!r} breaks the rules and must be refused with '! '")
    client.drain()
    client.send(run.name("amy").encode() + b"\n")
    client.expect_notice("after a refused name the client may try again on the same connection")


@check(
    "threads",
    "reserved names in any case",
    "'server', 'all' and '*' are reserved in any case: 'Server' and 'ALL' must be refused with '! '",
    needs=["register a name"],
)
def reserved_names(run: Run) -> None:
    client = run.greeted(run.name("amy"))
    for bad in (b"Server", b"ALL", b"sErVeR"):
        client.send(bad + b"\n")
        client.expect_error(f"the name {bad.decode()!r} is reserved (in any case): refuse it with '! '")


@check(
    "threads",
    "two clients at once",
    "a second connection was accepted but never greeted while the first one waits for its "
    "name: does the accept loop serve each client itself instead of giving it a thread?",
    needs=["greeting on connect"],
)
def two_clients(run: Run) -> None:
    run.greeted(run.name("amy"))  # and then it says nothing
    second = run.connect(run.name("ben"))
    second.expect_notice()


@check(
    "threads",
    "duplicate name refused",
    "a name already online must be refused with '! ', whatever its case, and the client may try again",
    needs=["register a name", "two clients at once"],
)
def duplicate_name(run: Run) -> None:
    kim = run.name("kim")
    run.register("kim")
    client = run.greeted(run.name("lee"))
    client.send(kim.encode() + b"\n")
    client.expect_error(f"{kim!r} is online already: the same name must be refused with '! '")
    client.send(kim.upper().encode() + b"\n")
    client.expect_error(f"names are unique regardless of case: {kim.upper()!r} must be refused with '! '")
    client.drain()
    client.send(run.name("lee").encode() + b"\n")
    client.expect_notice("after a refused name the client may try again on the same connection")


SAME_NAME_AT_ONCE = 8  # connections that ask for one name at the same moment


@check(
    "threads",
    "one name asked for at the same moment",
    "when several clients ask for the same name at the same moment, exactly one may have it: "
    "does the server check the name and take it in one step, under its lock?",
    needs=["duplicate name refused"],
)
def same_name_at_once(run: Run) -> None:
    clients = [run.greeted(run.name(f"rx{i}")) for i in range(SAME_NAME_AT_ONCE)]
    name = run.name("sam").encode() + b"\n"
    for client in clients:  # one after the other without waiting for any answer
        client.send(name)
    answers = [client.read_line(time.monotonic() + run.timeout, "a name got no answer") for client in clients]
    welcomed = sum(line.startswith(NOTICE) for line in answers)
    if welcomed != 1:
        raise Failed(
            f"{SAME_NAME_AT_ONCE} clients asked for one name at the same moment and {welcomed} "
            "were welcomed: check that the name is free and take it under one hold of the lock"
        )


@check(
    "threads",
    "a name is free again after its client leaves",
    "when a client leaves, its name must be free again: does the server forget the name "
    "of a client that disconnects?",
    needs=["register a name"],
)
def name_freed(run: Run) -> None:
    amy = run.register("amy")
    amy.close(note=True)
    name = amy.label
    give_up = time.monotonic() + run.timeout
    while True:  # the server may take a moment to notice that amy left: ask again until then
        again = run.greeted(name)
        again.send(name.encode() + b"\n")
        line = again.read_line(time.monotonic() + run.timeout, f"the name {name!r} got no answer")
        if line.startswith(NOTICE):
            return
        if time.monotonic() > give_up:
            raise Failed(
                f"{name!r} left, but its name was still refused {run.timeout:g} s later "
                f"({shown(line)}): free a client's name when it leaves"
            )
        again.close()
        time.sleep(0.1)


@check(
    "threads",
    "20 clients at once",
    "20 clients connected at once must all be served: does one client waiting for its name "
    "block the accept loop or the others (give every client a thread of its own)?",
    needs=["register a name", "two clients at once"],
)
def twenty_clients(run: Run) -> None:
    clients = [run.greeted(run.name(f"c{i:02d}")) for i in range(1, 21)]  # idle: no name yet
    last = clients[19]
    last.send(last.label.encode() + b"\n")
    last.expect_notice("while 19 connections wait without a name, a 20th must still register")
    for client in clients[:19]:
        client.send(client.label.encode() + b"\n")
    for client in clients[:19]:
        client.expect_notice()


# routing (lab 2): %name%text, errors, broadcast, who, joined and left


def deliver(run: Run, text: bytes, hint: str | None = None) -> None:
    """amy sends ``text`` to ben, who must get it byte for byte."""
    amy, ben = run.register("amy"), run.register("ben")
    amy.send(f"%{ben.label}%".encode() + text + b"\n")
    ben.expect_message(f"%{amy.label}%".encode() + text, hint)


@check(
    "routing",
    "direct message",
    "'%ben%text' from amy must reach ben as '%amy%text', byte for byte",
    needs=["register a name", "two clients at once"],
)
def direct_message(run: Run) -> None:
    deliver(run, b"hi ben")


@check(
    "routing",
    "text with '%'",
    "the text may contain '%': only the first two '%' frame the name ('%ben%50% done' "
    "reaches ben as '%amy%50% done')",
    needs=["direct message"],
)
def text_with_percent(run: Run) -> None:
    deliver(run, b"50% done? 100%")


@check(
    "routing",
    "empty text",
    "the text may be empty: '%ben%' reaches ben as '%amy%'",
    needs=["direct message"],
)
def empty_text(run: Run) -> None:
    deliver(run, b"")


@check(
    "routing",
    "UTF-8 text",
    "the text is UTF-8: deliver its bytes unchanged",
    needs=["direct message"],
)
def utf8_text(run: Run) -> None:
    deliver(run, "grüße, 世界 ✓ שלום".encode())


@check(
    "routing",
    "spaces kept",
    "the text is delivered byte for byte, spaces at its ends too: '%ben%  hi  ' reaches ben "
    "as '%amy%  hi  ' (strip the name, not the text)",
    needs=["direct message"],
)
def spaces_kept(run: Run) -> None:
    deliver(run, b"  two spaces at both ends  ")


@check(
    "routing",
    "recipient in any case",
    "names are unique regardless of case, so '%BEN%text' must reach ben as well",
    needs=["direct message"],
)
def recipient_in_any_case(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    amy.send(f"%{ben.label.upper()}%hi\n".encode())
    ben.expect_message(f"%{amy.label}%hi".encode())


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


def broadcast_from_amy(run: Run, to: bytes) -> None:
    amy, ben, cat = run.register("amy"), run.register("ben"), run.register("cat")
    amy.send(b"%" + to + b"%hello everyone\n")
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
    "broadcast",
    "'%*%text' must reach every other client exactly once as '%sender%text'",
    needs=["direct message"],
)
def broadcast(run: Run) -> None:
    broadcast_from_amy(run, b"*")


@check(
    "routing",
    "broadcast as %all%",
    "'%all%text' is the same as '%*%text': it must reach every other client",
    needs=["broadcast"],
)
def broadcast_all(run: Run) -> None:
    broadcast_from_amy(run, b"all")


@check(
    "routing",
    "who",
    "'%server%who' must be answered with one line starting '* ' that names everyone online "
    "(e.g. '* online: amy, ben, cat')",
    needs=["register a name", "two clients at once"],
)
def who(run: Run) -> None:
    amy, ben, cat = run.register("amy"), run.register("ben"), run.register("cat")
    amy.drain()  # the welcome may list who was online then: that is not the answer
    amy.send(b"%server%who\n")
    amy.expect_notice(wanted=names(amy, ben, cat))


@check(
    "routing",
    "joined notice",
    "when a client registers, the others must get a line starting '* ' that names it (e.g. '* ben joined')",
    needs=["register a name", "two clients at once"],
)
def joined(run: Run) -> None:
    amy = run.register("amy")
    ben = run.register("ben")
    amy.expect_notice("the others must be told that ben joined: '* ben joined'", names(ben))


def left_notice(watcher: Connection, leaver: Connection, how: str) -> None:
    """``watcher`` must get a notice naming ``leaver`` that does not say it joined."""
    hint = f"the others must be told that {leaver.label} left ({how}): '* {leaver.label} left'"
    line = watcher.expect_notice(hint, names(leaver))
    if {"joined", "join", "joins", "welcome"} & words(line):
        raise Failed(f"{leaver.label} left, but the notice says {shown(line)}: say that it left")


@check(
    "routing",
    "left notice",
    "when a client leaves, the others must get a line starting '* ' that names it and says "
    "it left (e.g. '* ben left')",
    needs=["joined notice"],
)
def left(run: Run) -> None:
    amy = run.register("amy")
    ben = run.register("ben")
    amy.expect_notice(None, names(ben))
    ben.close(note=True)
    left_notice(amy, ben, "it closed its connection")


@check(
    "routing",
    "a client without a name leaves unannounced",
    "a client that leaves before it has a name was never online: the others must hear nothing "
    "about it (no '* None left')",
    needs=["left notice"],
)
def nameless_leave(run: Run) -> None:
    amy = run.register("amy")
    nobody = run.greeted(run.name("nobody"))
    nobody.close(note=True)
    time.sleep(0.2)  # time for the server to notice it left
    ben = run.register("ben")
    hint = "the others must be told that ben joined: '* ben joined'"
    while not names(ben)(line := amy.expect_notice(hint)):  # the welcome's lines come first
        if {"left", "leaves", "quit", "none"} & words(line) or nobody.label.encode() in line:
            raise Failed(
                f"after a client left without a name, the others heard {shown(line)}: "
                "announce only clients that had a name"
            )


@check(
    "routing",
    "server commands in any case",
    "a command after '%server%' counts in any case and with spaces around it: "
    "'%server% WHO ' is answered like '%server%who'",
    needs=["who"],
)
def command_any_case(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    amy.drain()
    amy.send(b"%server% WHO \n")
    amy.expect_notice(wanted=names(amy, ben))


STRESS_WORKERS = 12  # clients at once (with the watcher, fewer than the 20 the threads stage asks for)
STRESS_ROUNDS = 3  # each worker joins, broadcasts and leaves this many times


def stress_connect(run: Run) -> tuple[socket.socket, BinaryIO, bytes]:
    """A connection and its first line, for one of many clients connecting at once.

    A full listen backlog (socketserver's is 5, many servers say ``listen(1)``) drops a SYN, or
    the ACK that ends the handshake; the kernels try again 1, 3, 7 and 15 s later. That is not
    what this check is about: a try that brings no greeting within 1 s (then 2 s, then 4 s) is
    given up and made again on a new socket, for up to BACKLOG_WAIT seconds in all (the last
    try waits for the rest of that time).
    """
    give_up = time.monotonic() + max(run.timeout, BACKLOG_WAIT)
    patience = 1.0
    while True:
        now = time.monotonic()
        last_try = give_up - now <= 2 * patience
        try_ends = give_up if last_try else now + patience
        sock = None
        try:
            sock = socket.create_connection(run.address, timeout=try_ends - now)
            sock.settimeout(max(0.001, try_ends - time.monotonic()))
            reader = sock.makefile("rb")
            greeting = reader.readline()
        except OSError as exc:
            if sock is not None:
                sock.close()
            if last_try or not isinstance(exc, TimeoutError):
                raise
            patience *= 2
            continue
        sock.settimeout(run.timeout)  # let in: from now on the server answers in time
        return sock, reader, greeting


def stress_worker(run: Run, worker: int, together: threading.Barrier, problems: list[str]) -> None:
    """Join, broadcast twice and leave (by FIN or RST), STRESS_ROUNDS times, on raw sockets.

    In each round every worker connects first; then all of them send their names at once.
    """
    for round_ in range(STRESS_ROUNDS):
        name = run.name(f"w{worker:02d}r{round_}")
        give_up = time.monotonic() + FULL_WAIT
        while True:
            try:
                sock, reader, greeting = stress_connect(run)
            except OSError as exc:
                problems.append(f"{name} cannot connect: {exc.strerror or exc}")
                together.abort()
                return
            if greeting.startswith(ERROR) and b"full" in greeting.lower() and time.monotonic() < give_up:
                sock.close()
                time.sleep(0.05)
                continue
            try:
                together.wait()
            except threading.BrokenBarrierError:  # another worker failed (its problem is told) or
                sock.close()  # one was never let in
                if not problems:
                    problems.append(f"{name}: not all {STRESS_WORKERS} clients were let in in time")
                return
            try:
                sock.sendall(name.encode() + b"\n")
                while (line := reader.readline()).startswith(b"%") or (
                    line.startswith(NOTICE) and name.encode() not in line
                ):
                    pass  # the others' messages, and their joined and left notices
                if not line.startswith(NOTICE):
                    problems.append(f"{name} was not registered: {shown(line) if line else 'no answer'}")
                    sock.close()
                    together.abort()
                    return
                sock.sendall(f"%*%hello from {name}\n%*%bye from {name}\n".encode())
            except OSError as exc:
                problems.append(f"{name}: {exc.strerror or exc}")
                sock.close()
                together.abort()
                return
            break
        if worker % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def who_answer(client: Connection) -> set[str]:
    """The names in the answer to '%server%who' (the first notice after it naming the asker)."""
    client.drain()
    client.send(b"%server%who\n")
    return words(client.expect_notice(None, names(client)))


@check(
    "routing",
    "many clients join, broadcast and leave at once",
    "many clients that join, broadcast and leave at once must all be forgotten: are the "
    "registry's reads and changes all made under one lock?",
    needs=["broadcast", "who"],
)
def many_at_once(run: Run) -> None:
    watcher = run.register("watch")
    watcher.listening = False  # it hears them come and go; only the end matters
    problems: list[str] = []
    together = threading.Barrier(STRESS_WORKERS, timeout=BACKLOG_WAIT + FULL_WAIT + 2 * run.timeout)
    workers = [
        threading.Thread(target=stress_worker, args=(run, worker, together, problems), daemon=True)
        for worker in range(STRESS_WORKERS)
    ]
    for thread in workers:
        thread.start()
    end = time.monotonic() + STRESS_ROUNDS * (BACKLOG_WAIT + FULL_WAIT) + 10 * run.timeout
    for thread in workers:
        thread.join(max(0.0, end - time.monotonic()))
    count = STRESS_WORKERS * STRESS_ROUNDS
    run.transcript.add(
        f"({STRESS_WORKERS} clients at once joined, sent '%*%' twice and left, {STRESS_ROUNDS} times "
        f"each: {count} names, {problems[0] if problems else 'every one registered'})"
    )
    watcher.discard()
    if problems or any(thread.is_alive() for thread in workers):
        raise Failed(
            f"of {count} clients that joined and left at once, not all could register "
            f"({problems[0] if problems else 'one got stuck'}): is the registry changed without a lock?"
        )
    stress_names = {run.name(f"w{w:02d}r{r}") for w in range(STRESS_WORKERS) for r in range(STRESS_ROUNDS)}
    give_up = time.monotonic() + run.timeout
    while True:
        start = len(run.transcript.lines)
        if not (kept := sorted(stress_names & who_answer(watcher))):
            break
        if time.monotonic() > give_up:
            raise Failed(
                f"{len(kept)} of the {count} clients that joined, broadcast and left at once are still "
                f"listed {run.timeout:g} s later ({', '.join(kept[:3])}...): a thread that crashed "
                "before it removed its client? (a loop over the registry while another thread "
                "changes it raises 'dictionary changed size during iteration': take the lock, "
                "loop over a copy)"
            )
        time.sleep(0.1)
        del run.transcript.lines[start:]  # only the last question is worth showing
    watcher.close(note=True)
    run.connections.remove(watcher)
    for i in range(1, 21):  # no slot was lost: 20 clients fit again
        try:
            run.register(f"c{i:02d}")
        except Failed as failure:
            raise Failed(
                f"after {count} clients joined and left at once, the {i}th of 20 new clients could "
                f"not register ({failure.hint}): does the server lose count of clients that leave?"
            ) from None


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
    "lines ending '\\r\\n'",
    "a line may end with '\\r\\n' (telnet, Windows): the '\\r' is part of the line end, in "
    "the name line as in every other",
    needs=["direct message"],
)
def crlf(run: Run) -> None:
    ben = run.register("ben")
    name = run.name("amy")
    amy = run.greeted(name)
    amy.send(name.encode() + b"\r\n")
    line = shown(name.encode() + b"\r\n")
    amy.expect_notice(f"the name line {line} must register {name!r}: the '\\r' is not part of the name")
    amy.send(f"%{ben.label}%hi\r\n".encode())
    ben.expect_message(f"%{amy.label}%hi".encode(), "'%ben%hi\\r\\n' must reach ben as '%amy%hi' (no '\\r')")


@check(
    "framing",
    "partial line at EOF",
    "bytes after the last '\\n' of a client that disconnects are not a line: drop them",
    needs=["direct message", "who"],
)
def partial_line_at_eof(run: Run) -> None:
    ben, cat = run.register("ben"), run.register("cat")
    amy = run.register("amy")
    amy.send(f"%{ben.label}%half a line".encode(), " with no line end")
    amy.close(note=True)
    give_up = time.monotonic() + run.timeout
    while amy.label.lower() in who_answer(cat):  # until the server has seen amy go
        if time.monotonic() > give_up:
            raise Failed(f"{amy.label} left, but the server still lists it: forget a client that disconnects")
        time.sleep(0.05)
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
    "over-long line without its end",
    f"a line must be refused as soon as it passes {MAX_LINE} bytes, before its '\\n' comes: "
    "a server that waits for the '\\n' keeps every byte a client sends (memory without limit)",
    needs=["over-long line"],
)
def endless_line(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    head = f"%{ben.label}%".encode()
    amy.send(head + b"y" * ENDLESS_LINE, f" and no line end ({ENDLESS_LINE // MAX_LINE} times the limit)")
    amy.expect_error()
    amy.send(b"y" * 100 + b"\n", " (the end of that line)")
    amy.send(head + b"after\n")
    ben.expect_message(
        f"%{amy.label}%after".encode(),
        "after an over-long line is refused, the rest of it is dropped and the next line must arrive",
    )


@check(
    "framing",
    "the longest line",
    f"a line of exactly {MAX_LINE} bytes (its line end not counted) is within the limit and is "
    f"delivered; the limit counts bytes, not characters (a UTF-8 'é' is two bytes)",
    needs=["over-long line"],
)
def longest_line(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    head = f"%{ben.label}%".encode()
    text = b"x" * (MAX_LINE - len(head))
    amy.send(head + text + b"\n", f" ({MAX_LINE} bytes)")
    ben.expect_message(
        f"%{amy.label}%".encode() + text,
        f"a line of exactly {MAX_LINE} bytes is not over the limit: deliver it (is the test '>' or '>='?)",
    )
    wide = "é" * ((MAX_LINE - len(head)) // 2 + 1)  # over the limit in bytes, far under it in characters
    size = len(head) + len(wide.encode())
    amy.send(head + wide.encode() + b"\n", f" ({size} bytes, {len(head) + len(wide)} characters)")
    try:
        amy.expect_error(
            f"a line of {size} bytes is over the limit though it has only {len(head) + len(wide)} "
            "characters: count bytes, before decoding"
        )
    except Failed:
        ben.drain()  # the transcript shows whether ben got the line instead
        raise


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


@check(
    "framing",
    "control characters",
    "a text with control characters (an escape sequence, a bidi override U+202E) must be "
    "refused with '! ', while the direction marks of ordinary Hebrew or Arabic text are delivered",
    needs=["UTF-8 text"],
)
def control_characters(run: Run) -> None:
    amy, ben = run.register("amy"), run.register("ben")
    for bad, what in (("\x1b[2J", "an escape sequence"), ("\u202e", "a bidi override (U+202E)")):
        amy.send(f"%{ben.label}%look{bad}here\n".encode())
        try:
            amy.expect_error(f"a text with {what} could forge what a screen shows: refuse it with '! '")
        except Failed:
            ben.drain()  # the transcript shows whether ben got the line instead
            raise
    fine = "שלום\u200f!"  # with a right-to-left mark: ordinary Hebrew
    amy.send(f"%{ben.label}%{fine}\n".encode())
    ben.expect_message(
        f"%{amy.label}%{fine}".encode(),
        "the direction marks U+200E, U+200F and U+061C are part of ordinary text: deliver them",
    )


# slow (lab 4): a client that does not read, and clients that vanish


def flood(sender: Connection, data: bytes, timeout: float) -> tuple[str | None, int]:
    """Send all of ``data`` while reading what comes back. Returns what stopped it (None when
    it was all sent): "stalled" (the server took nothing for ``timeout`` seconds), "errors"
    (an error came back: the receiver is gone) or "closed"; and how many lines came back."""
    sock = sender.sock
    sock.setblocking(False)
    view = memoryview(data)
    sent = replies = 0
    give_up = time.monotonic() + 5 * timeout
    try:
        while sent < len(data):
            if time.monotonic() > give_up:
                return "stalled", replies
            readable, writable, _ = select.select([sock], [sock], [], timeout)
            if not readable and not writable:
                return "stalled", replies  # the server took nothing for `timeout` seconds
            if readable:
                try:
                    got = sock.recv(65536)
                except BlockingIOError:
                    got = b"?"
                if not got:
                    return "closed", replies
                replies += got.count(b"\n")
                if got.startswith(ERROR) or b"\n" + ERROR in got:
                    # The receiver is gone: the sender has made its point. It ends the line it
                    # is in, so that its next line is a line of its own.
                    sock.setblocking(True)
                    sock.sendall(view[sent : data.index(b"\n", sent) + 1])
                    return "errors", replies
            if writable:
                try:
                    sent += sock.send(view[sent : sent + 65536])
                except BlockingIOError:
                    pass
        return None, replies
    except OSError:
        return "closed", replies
    finally:
        sock.setblocking(True)


def flood_slow_reader(run: Run) -> tuple[Connection, int | None]:
    """sam stops reading, and fay sends it far more than the kernel's buffers hold; pat and
    quinn must still talk. Returns sam, and how many lines it should get if it stays (None
    when fay was cut off before it sent them all)."""
    sam = run.register("sam", rcvbuf=4096)  # and then never reads again
    sam.listening = False
    fay = run.register("fay", sndbuf=16384)
    pat, quinn = run.register("pat"), run.register("quinn")
    fay.listening = False  # flood() reads it
    run.pump()  # what came before the flood is shown before it
    head = f"%{sam.label}%".encode()
    total = FLOOD_BYTES // (len(head) + FLOOD_LINE + 1)
    lines = b"".join(head + b"%06d " % i + b"x" * (FLOOD_LINE - 7) + b"\n" for i in range(total))
    first = shown(head + b"000000 xxx")
    run.transcript.add(f"{fay.label} > {first} ... {total} numbered lines, and {sam.label} reads none")
    count: int | None = total
    stopped, replies = flood(fay, lines, run.timeout)
    if stopped == "stalled":
        run.transcript.add(f"(the server took none of {fay.label}'s bytes for {run.timeout:g} s)")
        try:
            gone = fay.label.lower() not in who_answer(pat)
        except Failed:
            gone = False
        if gone:
            raise Failed(
                f"the server stopped reading {fay.label}, the client that sends, and no longer lists "
                f"it, though its connection is open: did its thread end with an exception (because "
                f"{sam.label} was too far behind?) Disconnect the client that is too far behind, "
                "not its sender"
            )
        raise Failed(
            f"the server stopped reading {fay.label} while {sam.label} did not read: a send "
            "to a slow client must not block the sender's thread"
        )
    if stopped == "closed":
        run.transcript.add(f"{fay.label} < {replies} lines, then (connection closed)")
        fay.closed = True
        count = None
        # A server may drop sam and then fay too, when fay falls behind with the errors about
        # sam, or drop fay when it falls behind with its own replies (acks, say); but while
        # sam is still there, and fay was told nothing, it was the sender that was dropped.
        give_up = time.monotonic() + run.timeout
        while replies < FLOOD_REPLIES and sam.label.lower() in who_answer(pat):
            if time.monotonic() > give_up:
                raise Failed(
                    f"the server closed the connection of {fay.label}, the client that sends, while "
                    f"{sam.label}, which did not read, stays: disconnect the client that is too far "
                    "behind, not its sender"
                )
            time.sleep(0.1)
    else:
        if stopped == "errors":
            run.transcript.add(f"{fay.label} < an error about {sam.label} (dropped): {fay.label} stops")
        else:
            run.transcript.add(f"(all of {fay.label}'s lines were sent)")  # to the kernel, at least
        fay.discard()
    pat.send(f"%{quinn.label}%still moving?\n".encode())
    quinn.expect_message(f"%{pat.label}%still moving?".encode())
    if not fay.closed:
        fay.send(f"%{pat.label}%done\n".encode())
        pat.expect_message(f"%{fay.label}%done".encode())
    return sam, count


@check(
    "slow",
    "slow reader does not stall others",
    "a client that stops reading must not stall anyone: never wait for its socket in a "
    "sender's thread; queue its lines (with a limit) or drop it",
    needs=["direct message"],
)
def slow_reader(run: Run) -> None:
    flood_slow_reader(run)


@check(
    "slow",
    "no lines lost without a word",
    "a client too far behind must get every line or be disconnected: lines dropped while it "
    "stays connected are lost without anyone knowing",
    needs=["slow reader does not stall others"],
)
def no_silent_drops(run: Run) -> None:
    sam, count = flood_slow_reader(run)
    run.transcript.add(f"{sam.label} starts reading again")
    sam.sock.settimeout(run.timeout)
    expected, gap = 0, None
    pending = b""
    while count is None or expected < count:
        try:
            data = sam.sock.recv(1 << 20)
        except TimeoutError:
            break
        except OSError:
            data = b""
        if not data:
            run.transcript.add(f"{sam.label} < {expected} of the lines in order, then (connection closed)")
            return  # disconnected as too slow: what it got was in order, nothing went missing unsaid
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if not line.startswith(b"%"):
                continue  # notices and errors
            number = line.partition(b"%")[2].partition(b"%")[2][:6]
            if gap is None and number != b"%06d" % expected:
                gap = (expected, number.decode("ascii", "replace"))
            expected += 1 if gap is None else 0
    if gap is None and expected == count:
        run.transcript.add(f"{sam.label} < all {count} lines, in order")
        return
    if gap is None and count is None:  # the sender was cut off: how many were due is unknown
        run.transcript.add(f"{sam.label} < {expected} lines, in order, and no others")
        return
    where = f"line {gap[0]} was followed by line {gap[1]}" if gap else f"only {expected} of {count} came"
    run.transcript.add(f"{sam.label} < {where}, and the connection stayed open")
    raise Failed(
        f"{sam.label} stayed connected but did not get every line ({where}): a client too far "
        "behind must be disconnected (or get every line), never skipped without a word"
    )


@check(
    "slow",
    "a client dropped as too slow is announced",
    "when the server disconnects a client that fell too far behind, the others must be told, as "
    "for any other leave: '* sam left'",
    needs=["no lines lost without a word"],
)
def dropped_is_announced(run: Run) -> None:
    wes = run.register("wes")
    sam, _ = flood_slow_reader(run)
    run.transcript.add(f"{sam.label} starts reading again")
    sam.sock.settimeout(run.timeout)
    give_up = time.monotonic() + 4 * run.timeout
    while time.monotonic() < give_up:
        try:
            data = sam.sock.recv(1 << 20)
        except TimeoutError:
            data = None
        except OSError:
            data = b""
        if data is None:  # caught up and still connected: it was kept, nothing to announce
            run.transcript.add(f"{sam.label} was kept (not disconnected): nothing to announce")
            return
        if not data:
            break
    else:
        return  # still reading its backlog: it was kept
    run.transcript.add(f"{sam.label} < (connection closed): it was dropped")
    wes.expect_notice(
        f"{sam.label} was disconnected as too slow, but the others were not told: say '* {sam.label} left'",
        lambda line: names(sam)(line) and not ({"joined", "join", "joins", "welcome"} & words(line)),
    )


def still_serving(run: Run, leave: Callable[[Connection], None], how: str) -> None:
    """pat and quinn go on talking after xan left by ``leave``: they are told that xan left,
    and xan leaves the who-list."""
    pat, quinn = run.register("pat"), run.register("quinn")
    xan = run.register("xan")
    pat.expect_notice(None, names(xan))  # xan joined
    leave(xan)
    # What the notice says is the 'left notice' check's business; here it must come at all.
    told = f"the others must be told that {xan.label} left ({how}): '* {xan.label} left'"
    pat.expect_notice(told, names(xan))
    pat.send(b"%*%anyone there?\n")
    quinn.expect_message(f"%{pat.label}%anyone there?".encode())
    pat.send(f"%{quinn.label}%still here\n".encode())
    quinn.expect_message(f"%{pat.label}%still here".encode())
    if xan.label.lower() in who_answer(pat):
        raise Failed(f"{xan.label} left, but the server still lists it: forget a client that disconnects")


@check(
    "slow",
    "client closes (FIN)",
    "a client that closes its connection must be forgotten, and everyone else served as before",
    needs=["direct message", "broadcast", "who", "joined notice"],
)
def client_closes(run: Run) -> None:
    still_serving(run, lambda xan: xan.close(note=True), "it closed its connection")


@check(
    "slow",
    "client resets (RST)",
    "a connection reset (recv() or send() raise ConnectionResetError) must end only that "
    "client: catch it, tell the others it left, forget it, and serve everyone else as before",
    needs=["direct message", "broadcast", "who", "joined notice"],
)
def client_resets(run: Run) -> None:
    still_serving(run, Connection.reset, "its connection was reset (RST)")


STAGES: dict[str, tuple[str, ...]] = {}
"""The stages in order (one per lab), each with the names of its checks in order."""
for _check in CHECKS:
    STAGES[_check.stage] = (*STAGES.get(_check.stage, ()), _check.name)
del _check
