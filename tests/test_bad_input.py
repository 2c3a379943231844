"""Bounded work per read: what one client's bad or greedy lines can make the server do.

A read can hold tens of thousands of lines (64 KiB of newlines is 65,536 of them). The session
hands the room at most ``LINES_PER_TURN`` of them at a time, so an event loop serves the others
in between and the replies to one batch reach the sender's transport (and its ``max_backlog``)
before the next batch is built; a client that sends more than a few malformed lines is told
``! too many bad lines`` and closed; and the log shows a client's first few refused lines,
then a count, however many it sent. The first test pushes lines into a Session with no socket
and no loop; the others run every model over loopback.
"""

from __future__ import annotations

import gc
import logging
import socket
import tracemalloc

import pytest
from transcript import GREETING, KeptWrites, wait_until

from chatlab.room import LOGGED_REFUSALS
from chatlab.servers.base import ServerBase
from chatlab.servers.session import BAD_LINES, LINES_PER_TURN, READ_ON, Session, Then

NEWLINES = b"\n" * 65536  # one read's worth of empty (malformed) lines


def test_a_session_hands_the_room_one_turns_worth_of_lines_at_a_time():
    server = ServerBase("127.0.0.1", 0)  # never started: a room and its options
    with socket.socket() as sock:
        session = Session(server, sock, ("127.0.0.1", 40000))
        transport = KeptWrites()
        session.attach(transport)
        assert session.open()
        session.receive(b"alice\n", now=0.0)
        transport.writes.clear()
        reaction = session.receive(b"%server%who\n" * 1000, now=0.0)
        assert reaction.then is Then.PAUSE  # the others first: the rest waits for resume()
        assert b"".join(transport.writes).count(b"\n") == LINES_PER_TURN
        batches = 1
        while reaction is not READ_ON and batches < 10:  # bounded: 1000 lines are 4 turns
            reaction = session.resume(now=0.0)
            batches += 1
        assert reaction is READ_ON and batches == -(-1000 // LINES_PER_TURN)
        assert b"".join(transport.writes).count(b"\n") == 1000  # none lost, each answered


def test_a_flood_of_bad_lines_ends_the_connection_with_a_reason(start, connect):
    server = start()
    alice, eve = connect(server, "alice"), connect(server, "eve")
    alice.expect("* eve joined")
    eve.send_raw(NEWLINES)
    replies = eve.read_to_eof()
    assert replies[-1] == "! too many bad lines"
    assert set(replies[:-1]) == {"! expected %name%message"}
    assert BAD_LINES < len(replies) <= LINES_PER_TURN + 1  # not 65,536 of them
    alice.expect("* eve left")
    assert alice.who() == ["alice"]


def test_a_person_who_mistypes_a_few_times_stays(start, connect):
    server = start()
    alice = connect(server, "alice")
    for _ in range(BAD_LINES):
        alice.send("hello?")  # not %name%text
        alice.expect("! expected %name%message")
    assert alice.who() == ["alice"]


def test_bad_lines_before_the_name_count_too(start, connect):
    server = start()
    eve = connect(server)
    eve.expect(GREETING)
    eve.send_raw(b"not a name!\n" * 1000)
    assert eve.read_to_eof()[-1] == "! too many bad lines"
    assert server.connection_count() == 0


def test_the_log_shows_the_first_bad_lines_and_a_summary(start, connect, caplog):
    caplog.set_level(logging.WARNING, logger="chatlab.server")  # what --quiet shows
    server = start()
    eve = connect(server, "eve")
    for _ in range(3):
        eve.send_raw(b"%server%dance\n" * 2000)  # unknown commands: refused, not malformed
    eve.send_raw(NEWLINES)
    # Until the end. Not read_to_eof(): eve is still sending when the server closes, and a close
    # with unread bytes resets the connection, which can cut the replies still on their way.
    eve.drain()
    wait_until(lambda: server.connection_count() == 0)
    about_eve = [r.getMessage() for r in caplog.records if "eve" in r.getMessage()]
    assert len(about_eve) <= LOGGED_REFUSALS + 1, about_eve
    assert about_eve[-1].startswith("eve: ") and about_eve[-1].endswith("closing it: too many bad lines")


@pytest.fixture
def crowd(start, connect):
    """A server with 30 clients online under names of 32 characters: the answer to
    ``%server%who`` is about a kilobyte."""
    server = start(max_backlog=64 * 1024)
    server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # accepted sockets inherit it
    for i in range(30):
        connect(server, f"{i:02}" + "x" * 30)
    return server


def test_replies_to_one_sender_count_against_its_backlog_before_more_are_built(crowd, connect):
    """A client that asks ``%server%who`` 5,000 times in one read and reads nothing is dropped
    once its replies pass ``max_backlog`` (64 KiB here), and the server never holds much more:
    not 5,000 answers (5 MB) built at once."""
    greedy = connect(crowd, "greedy", rcvbuf=4096)
    gc.collect()
    tracemalloc.start()
    try:
        greedy.send_raw(b"%server%who\n" * 5000)  # 60 kB: one read
        left = lambda: [e.text for e in crowd.events() if e.client == "greedy" and e.kind == "left"]  # noqa: E731
        wait_until(left, message="the greedy client is dropped")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert left() == ["too slow"]
    assert peak < 2_000_000, f"{peak / 1e6:.1f} MB at the peak"


def test_the_readme_gives_the_figures_the_server_uses():
    from pathlib import Path

    from chatlab.portable import KEEPALIVE
    from chatlab.servers.session import BAD_LINE_SECONDS

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert f"more than {BAD_LINES} malformed lines at once" in readme
    assert f"one every {BAD_LINE_SECONDS:g} seconds after that" in readme
    assert f"first {LOGGED_REFUSALS} refused lines" in readme
    assert f"at most {LINES_PER_TURN} lines of one client" in readme
    assert KEEPALIVE.user_timeout <= 45 and "after about 45 s" in readme
