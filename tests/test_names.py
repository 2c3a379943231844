"""Names that look alike, reserved names, and lines padded with blanks (issue 21, finding 9).

The rules live in chatlab.protocol (name_key, is_reserved, has_blank_run) and chatlab.room
(one client per skeleton; ``--reserve`` names only from the server's own computer). The unit
tests below check the rules without sockets; the transcripts check them through a real server
of every model.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
import unicodedata

import pytest
from transcript import GREETING, Peer, alice_and_bob, wait_until

from chatlab import protocol
from chatlab.servers import ServerOptions

TOO_MANY_BLANKS = "! too many blanks in a row (at most 8)"
OTHER_LOOPBACK = "127.0.0.2"  # another address of this computer: "not the server's own"


@pytest.fixture
def server(start):
    return start()


def peer_from(address: tuple[str, int], source: str) -> Peer:
    """A Peer whose connection comes from ``source``, another loopback address (skipped where
    the computer has none: macOS has only 127.0.0.1 unless an alias is added)."""
    try:
        return Peer(address, source=source)
    except OSError as exc:
        pytest.skip(f"cannot connect from {source}: {exc}")


# --- the rules, without sockets --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, key",
    [
        ("alice", "allce"),
        ("aIice", "allce"),
        ("a1ice", "allce"),
        ("ALICE", "allce"),
        ("alice_", "allce"),
        ("alice.-_", "allce"),
        ("AL1CE", "allce"),
        ("aiice", "allce"),
        ("b0b", "bob"),
        ("BOB", "bob"),
        ("al.ice", "al.lce"),
        ("serv3r", "serv3r"),
        ("...", ""),
    ],
)
def test_a_names_skeleton_is_what_it_looks_like(name, key):
    """Lower case; I, L and 1 one letter (written l), 0 and O one letter (written o); no
    dots, dashes or underscores at the end."""
    assert protocol.name_key(name) == key


@pytest.mark.parametrize(
    "name", ["server", "Server", "server.", "SERVER_", "server2", "serverbot", "all", "ALL", "a11", "AlL-"]
)
def test_names_that_look_like_server_or_all_are_reserved(name):
    assert protocol.name_error(name) == f"invalid name {name!r}: reserved"


@pytest.mark.parametrize("name", ["serv3r", "5erver", "s.erver", "allan", "ball", "alice"])
def test_names_that_only_resemble_them_are_not(name):
    assert protocol.name_error(name) is None


@pytest.mark.parametrize(
    "text",
    [
        "a" + " " * 9 + "b",
        "\t" * 9,
        "\u00a0" * 9,
        "x" + "\u2003" * 9,
        "\u3000" * 9,
        " \u200b" * 5,
        "    \u200b    \u200b    ",
        "\u3164" * 9,
        "\u2800" * 9,
        " " * 4 + "\u00a0" * 5,
        "\ufeff" * 9,
    ],
    ids=[
        "spaces",
        "tabs",
        "nbsp",
        "em-spaces",
        "ideographic",
        "zwsp-between",
        "zwsp-joined",
        "hangul-filler",
        "braille-blank",
        "mixed",
        "bom",
    ],
)
def test_more_than_eight_blanks_in_a_row_are_refused(text):
    assert protocol.has_blank_run(text)
    assert protocol.parse_line(f"%bob%{text}".encode(), registered=True) == protocol.Malformed(
        "too many blanks in a row (at most 8)"
    )


@pytest.mark.parametrize(
    "text",
    [
        "a" + " " * 8 + "b",
        "\t" * 8,
        "\u00a0" * 8,
        "a \u00a0 " * 20,
        "caf\u00e9  au  lait",
        "\u05e9\u05dc\u05d5\u05dd \u200f!",
        "",
        "1. " + "x" * 4000,
    ],
)
def test_eight_blanks_in_a_row_and_ordinary_text_pass(text):
    assert not protocol.has_blank_run(text)
    assert protocol.parse_line(f"%bob%{text}".encode(), registered=True) == protocol.DirectMessage(
        "bob", text
    )


def test_every_whitespace_and_format_character_counts_as_a_blank():
    """Unicode adds characters now and then: a new space or format character in this Python's
    Unicode database that is missing from protocol._BLANK fails here."""
    missing = [
        f"U+{code:04X}"
        for code in range(0x110000)
        if (char := chr(code)).isspace() or unicodedata.category(char) == "Cf"
        if protocol.unsafe_character(char) is None and not protocol.has_blank_run(char * 9)
    ]
    assert missing == []


def test_the_quick_look_for_printable_blanks_knows_every_printable_blank():
    """has_blank_run skips the long search for printable text without a filler or invisible
    mark (protocol._PRINTABLE_BLANK): every printable blank but the space must be among them."""
    blank = re.compile(protocol._BLANK)
    missing = [
        f"U+{code:04X}"
        for code in range(0x110000)
        if (char := chr(code)) != " " and char.isprintable() and blank.fullmatch(char)
        if not protocol._PRINTABLE_BLANK.fullmatch(char)
    ]
    assert missing == []
    assert protocol.has_blank_run("\u4e2d" + "\u3164" * 9 + "\u4e2d")  # printable, and refused


# --- through a real server, in every model ----------------------------------------------------------


def test_a_look_alike_of_a_name_online_is_refused_and_says_which(server, connect):
    connect(server, "alice")
    eve = connect(server)
    eve.expect(GREETING)
    for look_alike in ["aIice", "a1ice", "AL1CE", "alice_", "alice."]:
        eve.send(look_alike)
        eve.expect(f"! name taken: {look_alike!r} looks like 'alice'")
    eve.send("ALICE")  # the same name in another case: as before
    eve.expect("! name taken")
    eve.send("alicia")
    eve.expect("* welcome alicia", "* online: alice, alicia")


def test_a_name_is_free_for_its_look_alikes_once_its_client_left(server, connect):
    alice = connect(server, "alice")
    bob = connect(server, "bob")
    alice.close()
    bob.read_until("* alice left")
    connect(server, "aIice")


def test_a_message_reaches_the_name_that_looks_like_its_recipient(server, connect):
    """Only one of a set of look-alikes can be online, so a message to any of them reaches it;
    the receiver and the who-list see names as their owners typed them."""
    alice, bob = connect(server, "Alice"), connect(server, "bob")
    alice.expect("* bob joined")
    for to in ["Alice", "alice", "ALICE", "aIice", "a1ice", "alice_"]:
        bob.send(f"%{to}%hi via {to}")
        alice.expect(f"%bob%hi via {to}")
    assert bob.who() == ["Alice", "bob"]
    bob.send("%alce%hi")  # not a look-alike: a letter less
    bob.expect("! unknown client 'alce'")


@pytest.mark.parametrize("name", ["server.", "SERVER_", "server2", "Server-bot", "a11"])
def test_names_that_look_like_server_or_all_are_refused(server, connect, name):
    peer = connect(server)
    peer.expect(GREETING)
    peer.send(name)
    peer.expect(f"! invalid name {name!r}: reserved")
    peer.send("serv3r")  # documented: 3 is not a look-alike of e
    peer.expect("* welcome serv3r", "* online: serv3r")


@pytest.mark.parametrize(
    "padding",
    [" " * 75, "\u00a0" * 75, " \u200b" * 40, "\t" * 10],
    ids=["spaces", "nbsp", "spaces-and-zwsp", "tabs"],
)
def test_a_line_padded_with_blanks_is_refused_and_reaches_nobody(server, connect, padding):
    alice, bob = alice_and_bob(server, connect)
    alice.send(f"%bob%hi{padding}%teacher%the quiz is moved to Friday")
    alice.expect(TOO_MANY_BLANKS)
    alice.send(f"%*%hi{padding}%teacher%the quiz is moved to Friday")
    alice.expect(TOO_MANY_BLANKS)
    alice.send("%bob%after" + " " * 8 + "eight spaces")
    bob.expect("%alice%after" + " " * 8 + "eight spaces")  # the first line bob gets: nothing before it
    assert [e.text for e in server.events() if e.kind == "error"] == [
        "too many blanks in a row (at most 8)"
    ] * 2


def test_a_reserved_name_is_taken_only_from_the_servers_own_computer(start, connect):
    server = start(reserve=("teacher",))
    for name in ["teacher", "TEACHER", "teacher_", "tEacher."]:
        student = peer_from(server.address, OTHER_LOOPBACK)
        with student:
            student.expect(GREETING)
            student.send(name)
            student.expect(f"! name {name!r} is reserved")
            student.send("student")  # another name is fine from there
            student.expect("* welcome student", "* online: student")
        wait_until(lambda: server.online() == [])
    teacher = connect(server, "teacher")  # from 127.0.0.1 to 127.0.0.1: this computer
    assert teacher.who() == ["teacher"]
    assert server.options.reserve == ("teacher",)


def test_a_reserved_name_must_be_a_valid_one():
    with pytest.raises(ValueError, match="cannot reserve: invalid name 'two words'"):
        ServerOptions(reserve=["two words"])
    with pytest.raises(ValueError, match="cannot reserve: invalid name 'server1': reserved"):
        ServerOptions(reserve=["server1"])
    assert ServerOptions(reserve=["teacher", "ta"]).reserve == ("teacher", "ta")  # a list becomes a tuple


def test_the_server_program_reserves_names_with_reserve():
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatlab.server", "--port", "0", "--reserve", "teacher", "ta"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)  # bounded: the first line comes soon
        listening = proc.stdout.readline() if ready else "(nothing within 30 s)"
        listens = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", listening)
        assert listens, f"the server said {listening!r}"
        port = int(listens[1])
        # Its log up to "press Ctrl-C to stop": the main thread logs the reserved names after
        # "listening on", and a SIGTERM before then would end it first (seen under load).
        # (os.read, not readline: a buffered read could take lines select() then never sees.)
        started, deadline = "", time.monotonic() + 30
        while "press Ctrl-C to stop" not in started:
            ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(proc.stderr.fileno(), 4096).decode() if ready else ""
            assert chunk, f"the server's log ended or stalled after {started!r}"
            started += chunk
        for name in ["teacher", "TA"]:
            with peer_from(("127.0.0.1", port), OTHER_LOOPBACK) as student:
                student.expect(GREETING)
                student.send(name)
                student.expect(f"! name {name!r} is reserved")
        with Peer(("127.0.0.1", port)) as teacher:
            teacher.register("teacher")
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=10)
    log = started + rest
    assert "reserved for a client on this computer: teacher, ta" in log
    assert "name 'teacher' is reserved" in log


def test_the_server_program_refuses_a_name_it_cannot_reserve():
    done = subprocess.run(
        [sys.executable, "-m", "chatlab.server", "--port", "0", "--reserve", "server"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "cannot reserve: invalid name 'server': reserved" in done.stderr


def test_a_look_alike_of_a_name_on_another_server_is_refused(redis_server, start_server, connect):
    """A chat of several servers (threads model): alice is on server one, aIice asks server two."""
    one = start_server(redis=redis_server.url, server_id="one", heartbeat=0.2)
    two = start_server(redis=redis_server.url, server_id="two", heartbeat=0.2)
    connect(one, "alice")
    wait_until(lambda: "alice" in two.online(), timeout=10, message="server two knows of alice")
    eve = connect(two)
    eve.expect(GREETING)
    eve.send("aIice")
    eve.expect("! name taken: 'aIice' looks like 'alice'")
    eve.send("alice")
    eve.expect("! name taken")
