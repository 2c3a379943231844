"""A short fuzz run of the line protocol against every model, as a bored student would type it.

Each example: a server of the model under test, alice and bob registered, and a third
connection that sends random bytes (newlines, carriage returns, escape sequences, invalid UTF-8,
long runs, commands, messages to alice, bob, everyone or nobody) cut into random pieces. Then
the fuzzer hangs up, and what matters is checked:

- alice and bob only ever receive whole, safe lines: UTF-8, no control character but a tab,
  each in the protocol's form (``* ``, ``! `` or ``%name%``);
- whatever the fuzzer did, alice and bob can still talk to each other;
- the server is still running, and after it stops no thread of the kit is left (conftest).

Bounded: a few dozen examples per model (hypothesis), every read with a timeout.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transcript import Peer

PIECES = st.sampled_from(
    [b"\n", b"\r\n", b"\r", b"%", b"%bob%", b"%alice%", b"%*%", b"%nobody%", b"%server%who", b"%server%help",
     b"\x1b[2J", b"\x00", b"\xff\xfe", b"\xc3", b"\xe2\x80\xae", b"\xc2\xa0" * 12, b" " * 40, b"x" * 700,
     b"alice", b"bob", b"fuzz", "héllo ✓".encode(), b"\t"]
)  # fmt: skip
STREAMS = st.lists(st.one_of(PIECES, st.binary(max_size=40)), max_size=40).map(b"".join)
CUTS = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)
PREFIXES = ("* ", "! ", "%")


def a_safe_line(line: str) -> bool:
    """An independent reading of "safe": no control character (Unicode category Cc) but a tab."""
    return line.startswith(PREFIXES) and not any(
        unicodedata.category(char) == "Cc" and char != "\t" for char in line
    )


def read_everything(peer: Peer, until: str) -> list[str]:
    """Lines up to and including ``until``; each must be safe (a read that fails to decode fails)."""
    lines = peer.read_until(until, limit=5000)
    unsafe = [line for line in lines if not a_safe_line(line)]
    assert not unsafe, f"{peer.name} received unsafe lines: {unsafe[:5]}"
    return lines


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=STREAMS, cuts=CUTS)
def test_random_bytes_from_one_connection_never_reach_others_unsafe_nor_stop_their_chat(
    start, connect, stream: bytes, cuts: list[int]
) -> None:
    server = start(max_line=512)
    alice, bob = connect(server, "alice"), connect(server, "bob")
    alice.expect("* bob joined")
    fuzzer = connect(server)
    at, turn = 0, 0
    try:
        while at < len(stream):
            size = cuts[turn % len(cuts)]
            fuzzer.send_raw(stream[at : at + size])
            at, turn = at + size, turn + 1
    except OSError:
        pass  # the server may end a connection that misbehaves: that is allowed
    fuzzer.close()
    alice.send("%bob%still here")
    read_everything(bob, "%alice%still here")
    bob.send("%alice%me too")
    read_everything(alice, "%bob%me too")
    assert server.running
    server.stop()


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_a_flood_of_blank_lines_is_answered_and_the_others_still_talk(start, connect, size) -> None:
    """64 KiB of newlines, sent in pieces of ``size``: no crash, and the chat goes on."""
    server = start()
    alice, bob = connect(server, "alice"), connect(server, "bob")
    alice.expect("* bob joined")
    flooder = connect(server, "flooder")
    data = b"\n" * 65536
    try:
        for at in range(0, len(data), size * 64):  # at most 1024 writes
            flooder.send_raw(data[at : at + size * 64])
    except OSError:
        pass  # ended by the server: allowed
    alice.send("%bob%through")
    read_everything(bob, "%alice%through")
    flooder.close()
