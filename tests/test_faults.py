"""The fault-injecting link (chatlab/faults.py): what each fault does, and the chat through it.

The first part checks the link's promises with a plain socket on each side: latency delays
without serialising, jitter never reorders, slices and bandwidth, the ends a fault makes (FIN,
RST, a stall) and the ends it passes on. The second part runs the transcript tests of
test_models.py (every server model) again with a link in between that cuts every byte into a
write of its own, late and jittered: the protocol must not notice. Timing is checked only as
semantics with generous bounds (40 ms late, not 400 s late), never as tight durations.
"""

from __future__ import annotations

import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from test_models import (  # noqa: F401  (imported tests run again here, through the link)
    test_a_broadcast_reaches_every_other_client_and_not_the_sender,
    test_a_direct_message_arrives_with_the_senders_name,
    test_a_full_server_and_a_silent_connection,
    test_a_line_without_a_recipient_is_refused,
    test_a_message_that_looks_like_a_message_keeps_its_real_sender,
    test_a_name_cannot_pass_for_someone_else,
    test_a_newcomer_is_announced_before_anything_it_says,
    test_a_taken_name_is_refused_whatever_its_case_and_another_can_be_tried,
    test_a_too_long_line_is_refused_and_the_connection_still_works,
    test_an_invalid_or_reserved_name_is_refused_and_another_can_be_tried,
    test_bad_lines_get_an_error_and_the_connection_stays,
    test_control_characters_cannot_make_a_receiver_see_a_forged_line,
    test_hebrew_with_a_right_to_left_mark_arrives_byte_for_byte,
    test_invalid_utf8_is_refused_before_and_after_registration,
    test_leaving_mid_line_or_by_reset_is_announced,
    test_registration_welcomes_and_says_who_is_online,
    test_the_greeting_comes_first,
    test_the_others_hear_who_joins_and_who_leaves,
    test_the_replies_to_the_lines_of_one_packet_keep_their_order,
    test_who_help_and_an_unknown_command,
)
from transcript import Peer, Program, wait_until

from chatlab import kit_threads
from chatlab.client import ChatClient, ConnectionClosed, ConnectionReset
from chatlab.faults import FaultyLink
from chatlab.servers import ServerBase

# The bad network the transcript tests run through: every byte a write of its own, 5-15 ms late.
THROUGH = {"slice": 1, "latency": 0.005, "jitter": 0.01}


@pytest.fixture
def link_to() -> Iterator[Callable[..., FaultyLink]]:
    """``link_to(server)``: a FaultyLink (:data:`THROUGH`) in front of that server, one per
    server; every link is closed after the test."""
    links: dict[int, FaultyLink] = {}

    def link(server: ServerBase) -> FaultyLink:
        if id(server) not in links:
            links[id(server)] = FaultyLink(server.address, **THROUGH)
        return links[id(server)]

    yield link
    for link in links.values():
        link.close()


@pytest.fixture
def connect(connect, link_to):
    """conftest's ``connect``, but every peer opened to a server goes through its link.

    It returns once the link has connected upstream too, so peers reach the server in the order
    they were opened, as they would without the link (test_a_full_server_... counts on it)."""

    def through_link(
        server: ServerBase | tuple[str, int], name: str | None = None, **options: object
    ) -> Peer:
        if not isinstance(server, ServerBase):
            return connect(server, name, **options)
        link = link_to(server)
        before = link.opened
        peer = connect(link.address, **options)
        wait_until(lambda: link.opened > before, message="the link connected upstream")
        if name is not None:
            peer.register(name)
        return peer

    return through_link


# --- a plain socket on each side ---------------------------------------------------------------


class Pair:
    """A client socket connected through a link, and the upstream socket that link reached."""

    def __init__(self, **faults: object) -> None:
        self.upstream = socket.create_server(("127.0.0.1", 0))
        self.upstream.settimeout(5)
        self.link = FaultyLink(self.upstream.getsockname(), **faults)
        self.client = socket.create_connection(self.link.address, timeout=5)
        self.server, _ = self.upstream.accept()
        self.server.settimeout(5)

    def close(self) -> None:
        self.link.close()
        for sock in (self.client, self.server, self.upstream):
            sock.close()


@pytest.fixture
def pair() -> Iterator[Callable[..., Pair]]:
    pairs: list[Pair] = []

    def make(**faults: object) -> Pair:
        pairs.append(Pair(**faults))
        return pairs[-1]

    yield make
    for made in pairs:
        made.close()


def read_exactly(sock: socket.socket, count: int) -> bytes:
    """``count`` bytes from ``sock`` (bounded: at most ``count`` reads, each with the socket's timeout)."""
    data = b""
    for _ in range(count):
        if len(data) >= count:
            break
        chunk = sock.recv(count - len(data))
        assert chunk, f"the stream ended after {len(data)} of {count} bytes"
        data += chunk
    return data


def read_until_end(sock: socket.socket, limit: int = 1000) -> tuple[bytes, str]:
    """Everything until the stream ends, and how it ended: "eof" or "reset"."""
    data = b""
    for _ in range(limit):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
    raise AssertionError(f"still open after {limit} reads")


def test_latency_delays_every_piece_without_serialising_them(pair):
    link_pair = pair(slice=1, latency=0.04, jitter=0.01, record=True)
    line = bytes(range(32, 127)) * 108 + b"\n"  # 10 261 bytes: 10 261 writes of one byte
    started = time.monotonic()
    link_pair.client.sendall(line)
    assert read_exactly(link_pair.server, len(line)) == line  # all of it, in order
    took = time.monotonic() - started
    assert took >= 0.04  # late by the latency at least...
    assert took < 5.0  # ...but not 10 261 times 40 ms (410 s): the pieces were not serialised
    wait_until(lambda: link_pair.link.wire("up") == line)
    writes = [r.data for r in link_pair.link.wiretap if r.event == "data"]
    assert all(len(data) == 1 for data in writes) and len(writes) == len(line)
    assert link_pair.link.wire("up") == line and link_pair.link.wire("down") == b""


def test_jitter_never_reorders_bytes(pair):
    link_pair = pair(jitter=0.05, seed=1)
    sent = b"".join(b"%04d\n" % i for i in range(300))
    for i in range(0, len(sent), 5):  # 300 small sends: many pieces, each with its own delay
        link_pair.client.send(sent[i : i + 5])
    assert read_exactly(link_pair.server, len(sent)) == sent


def test_slice_writes_at_most_that_many_bytes_and_the_change_takes_effect_at_once(pair):
    link_pair = pair(slice=3, record=True)
    link_pair.client.sendall(b"x" * 100)
    assert read_exactly(link_pair.server, 100) == b"x" * 100
    wait_until(lambda: sum(len(r.data) for r in link_pair.link.wiretap) == 100)
    assert {len(r.data) for r in link_pair.link.wiretap} == {1, 3}  # 33 slices of 3, then 1
    link_pair.link.slice = 0
    link_pair.link.wiretap.clear()
    link_pair.server.sendall(b"y" * 100)
    assert read_exactly(link_pair.client, 100) == b"y" * 100
    wait_until(lambda: [len(r.data) for r in link_pair.link.wiretap] == [100])


def test_bandwidth_paces_the_bytes(pair):
    link_pair = pair(bandwidth=20_000, slice=1000)
    started = time.monotonic()
    link_pair.client.sendall(b"z" * 10_000)
    assert read_exactly(link_pair.server, 10_000) == b"z" * 10_000
    assert time.monotonic() - started >= 0.4  # 10 000 bytes at 20 000 B/s: half a second at least


def test_direction_up_leaves_the_other_direction_alone(pair):
    link_pair = pair(direction="up", slice=1, record=True)
    link_pair.client.sendall(b"abc")
    link_pair.server.sendall(b"defgh")
    assert read_exactly(link_pair.server, 3) == b"abc"
    assert read_exactly(link_pair.client, 5) == b"defgh"

    def writes(direction: str) -> list[int]:
        return [len(r.data) for r in link_pair.link.wiretap if r.direction == direction]

    # (the wiretap notes a write just after it, so the reader may see the bytes a moment earlier)
    wait_until(
        lambda: writes("up") == [1, 1, 1] and writes("down") == [5], message=str(link_pair.link.wiretap)
    )


def test_the_wiretap_lists_a_reply_after_the_line_it_answers(pair):
    """The link notes a write once send() returns; by then the reply may be on its way back.
    The wiretap still lists them in the order their writes began."""
    link_pair = pair(record=True)
    for round_number in range(50):
        question, answer = f"q{round_number}\n".encode(), f"a{round_number}\n".encode()
        link_pair.client.sendall(question)
        assert read_exactly(link_pair.server, len(question)) == question
        link_pair.server.sendall(answer)
        assert read_exactly(link_pair.client, len(answer)) == answer
    wait_until(lambda: len(link_pair.link.wire("down")) == len(link_pair.link.wire("up")) > 0)
    said = b"".join(record.data for record in link_pair.link.wiretap if record.event == "data")
    assert said == b"".join(f"q{i}\na{i}\n".encode() for i in range(50))


def test_close_after_ends_both_sides_with_a_fin_after_exactly_that_many_bytes(pair):
    link_pair = pair(direction="down", close_after=100)
    link_pair.server.sendall(b"a" * 300)
    assert read_until_end(link_pair.client) == (b"a" * 100, "eof")
    assert read_until_end(link_pair.server) == (b"", "eof")  # the server sees a clean end too
    wait_until(lambda: link_pair.link.connections() == 0)


def test_reset_after_resets_both_sides_after_exactly_that_many_bytes(pair):
    link_pair = pair(direction="down", reset_after=100, record=True)
    link_pair.server.sendall(b"b" * 300)
    assert read_until_end(link_pair.client) == (b"b" * 100, "reset")
    assert read_until_end(link_pair.server) == (b"", "reset")
    assert [(r.direction, r.event) for r in link_pair.link.wiretap][-1] == ("down", "reset")


def test_stall_after_stops_forwarding_but_keeps_the_connection_open_until_it_changes(pair):
    link_pair = pair(direction="down", stall_after=100)
    link_pair.server.sendall(b"c" * 300)
    assert read_exactly(link_pair.client, 100) == b"c" * 100
    link_pair.client.settimeout(0.3)
    with pytest.raises(TimeoutError):  # nothing more, and no end either
        link_pair.client.recv(100)
    link_pair.client.sendall(b"still open")  # the other direction still works
    assert read_exactly(link_pair.server, 10) == b"still open"
    link_pair.link.stall_after = None
    link_pair.client.settimeout(5)
    assert read_exactly(link_pair.client, 200) == b"c" * 200


def test_a_clean_close_and_a_half_close_are_passed_on(pair):
    link_pair = pair(latency=0.01)
    link_pair.client.sendall(b"last words")
    link_pair.client.shutdown(socket.SHUT_WR)  # "I am done sending", still listening
    assert read_until_end(link_pair.server) == (b"last words", "eof")
    link_pair.server.sendall(b"the answer")
    link_pair.server.close()
    assert read_until_end(link_pair.client) == (b"the answer", "eof")
    wait_until(lambda: link_pair.link.connections() == 0)


def test_a_reset_is_passed_on_as_a_reset(pair):
    link_pair = pair(latency=0.01)
    link_pair.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    link_pair.server.close()
    assert read_until_end(link_pair.client) == (b"", "reset")
    wait_until(lambda: link_pair.link.connections() == 0)


def test_a_refused_upstream_resets_the_client():
    with socket.socket() as nobody_listens:
        nobody_listens.bind(("127.0.0.1", 0))  # the port is ours, but without listen(): refused
        with FaultyLink(nobody_listens.getsockname()) as link:
            try:
                client = socket.create_connection(link.address, timeout=5)
            except ConnectionResetError:
                return  # the reset came in before connect() had looked at its socket: a reset too
            with client:
                assert read_until_end(client) == (b"", "reset")


def test_close_resets_open_connections_and_joins_every_thread(pair):
    link_pair = pair(latency=0.01)
    link_pair.client.sendall(b"hi")
    assert read_exactly(link_pair.server, 2) == b"hi"
    assert len(link_pair.link.threads()) == 5  # the acceptor, and two per direction
    link_pair.link.close(timeout=5)
    assert link_pair.link.threads() == []
    assert [name for name in kit_threads() if name.startswith("chatlab-link")] == []
    assert read_until_end(link_pair.client) == (b"", "reset")


# --- the chat through the link -------------------------------------------------------------------


def test_the_client_library_tells_a_reset_from_a_clean_close(start_server):
    server = start_server()
    with FaultyLink(server.address) as link:
        reset = ChatClient(*link.address, "alice")
        link.reset_all()
        with pytest.raises(ConnectionReset, match="reset: Connection reset by peer"):
            reset.recv(timeout=5)
        assert reset.ended == "reset: Connection reset by peer"
        closed = ChatClient(*link.address, "bob")
        server.stop()  # a goodbye: the server closes, the link passes the FIN on
        with pytest.raises(ConnectionClosed) as raised:
            for _ in range(10):  # the lines that did arrive first (e.g. "* alice left")
                closed.recv(timeout=5)
        assert not isinstance(raised.value, ConnectionReset)
        assert closed.ended == "closed by the server"
        reset.close()
        closed.close()
    server.start()
    with ChatClient(*server.address, "carol") as here:
        here.close()  # the end comes from this side
        with pytest.raises(ConnectionClosed) as raised:
            here.recv(timeout=5)
        assert not isinstance(raised.value, ConnectionReset) and here.ended == "closed here"


def test_a_stalled_link_makes_the_server_drop_the_client_as_too_slow(start_server, connect):
    server = start_server(max_backlog=4096)
    with FaultyLink(server.address, direction="down") as link:
        stalled = Peer(link.address)
        stalled.register("stalled")
        link.stall_after = 0  # from now on nothing more reaches "stalled"
        alice = connect(server.address, "alice")
        for i in range(600):  # 600 kB: more than every buffer on the way and the backlog
            alice.send(f"%stalled%{i:03} " + "x" * 1000)
            if any(e.kind == "left" and e.client == "stalled" for e in server.events()):
                break
        wait_until(
            lambda: (
                [(e.kind, e.text) for e in server.events() if e.client == "stalled"][-1:]
                == [("left", "too slow")]
            )
        )
        about_stalled = [(e.kind, e.text) for e in server.events() if e.client == "stalled"]
        assert about_stalled == [
            ("registered", ""),
            ("error", "too slow: disconnected"),
            ("left", "too slow"),
        ]
        # The line that overflowed "stalled" is answered "is being disconnected"; the room
        # forgets "stalled" before its thread has closed the socket and announced it left:
        # lines alice sent in between are answered "unknown client" (as in test_server).
        # The notice "left" comes from the thread of "stalled", the answers from alice's: an answer
        # can come after the notice. Every line alice sent is answered, with one of the two.
        answers = {
            "! stalled is too slow and is being disconnected; your line was not delivered",
            "! unknown client 'stalled'",
        }
        heard = alice.read_until("* stalled left", limit=700)
        assert set(heard[:-1]) <= answers
        alice.send("%server%who")
        assert set(alice.read_until("* online: alice", limit=700)[:-1]) <= answers
        stalled.close()


def test_the_command_line_listens_forwards_logs_and_stops_on_sigterm(start_server):
    server = start_server()
    program = Program(
        "chatlab.faults",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"127.0.0.1:{server.port}",
        "--slice",
        "1",
        "--latency",
        "20",
        "--jitter",
        "10",
        "--reset-after",
        "200",
    )
    try:
        port = int(program.wait_for(r"^listening on 127\.0\.0\.1:(\d+)$", stream="stdout").group(1))
        assert port not in (0, server.port)
        alice = Peer(("127.0.0.1", port))
        alice.register("alice")
        assert alice.who() == ["alice"]
        program.wait_for(
            r"connection 1 from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:\d+ "
            r"\(latency=0\.02 jitter=0\.01 slice=1 reset_after=200\)"
        )
        alice.send("%server%help")
        with pytest.raises(ConnectionResetError):
            for _ in range(20):
                alice.read_line()
        program.wait_for(r"connection 1 (up|down): reset after \d+ bytes")
        program.proc.send_signal(signal.SIGTERM)
        assert program.finish() == 0
        assert program.lines["stdout"] == [f"listening on 127.0.0.1:{port}"]
        alice.close()
    finally:
        program.kill()
