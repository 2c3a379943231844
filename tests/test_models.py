"""The behaviour every server model shares, tested once for each model.

The threaded server (``threads``) and the event-loop servers (``selectors``, ``asyncio``)
differ only in how bytes move; the chat itself is the same :class:`~chatlab.room.ChatRoom`.
So each test here runs against every model, over real loopback sockets, and reads like a
transcript. What only the threaded server has (delivery modes, thread names per client) is
tested in test_server.py.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest
from transcript import GREETING, HELP, Peer, alice_and_bob, wait_until

from chatlab import protocol
from chatlab.client import ChatClient, ServerFull
from chatlab.servers import MODELS

NAME_RULE = "use 1-32 characters from A-Z a-z 0-9 _ . -"


@pytest.fixture
def server(start):
    """A server of the model under test, with its default options."""
    return start()


# --- registration --------------------------------------------------------------------------------


def test_the_greeting_comes_first(server, connect):
    connect(server).expect(GREETING)


def test_registration_welcomes_and_says_who_is_online(server, connect):
    alice = connect(server)
    alice.expect(GREETING)
    alice.send("alice")
    alice.expect("* welcome alice", "* online: alice")
    bob = connect(server)
    bob.expect(GREETING)
    bob.send("bob\r")  # a \r\n line end, as telnet sends it
    bob.expect("* welcome bob", "* online: alice, bob")
    alice.expect("* bob joined")


def test_a_taken_name_is_refused_whatever_its_case_and_another_can_be_tried(server, connect):
    connect(server, "alice")
    other = connect(server)
    other.expect(GREETING)
    other.send("alice")
    other.expect("! name taken")
    other.send("ALICE")
    other.expect("! name taken")
    other.send("alice2")
    other.expect("* welcome alice2", "* online: alice, alice2")


@pytest.mark.parametrize(
    "name, error",
    [
        ("", f"! invalid name '': {NAME_RULE}"),
        ("two words", f"! invalid name 'two words': {NAME_RULE}"),
        ("x" * 33, f"! invalid name '{'x' * 33}': {NAME_RULE}"),
        ("al%ice", f"! invalid name 'al%ice': {NAME_RULE}"),
        ("%bob%hi", f"! invalid name '%bob%hi': {NAME_RULE}"),
        ("*", f"! invalid name '*': {NAME_RULE}"),
        ("server", "! invalid name 'server': reserved"),
        ("Server", "! invalid name 'Server': reserved"),
        ("ALL", "! invalid name 'ALL': reserved"),
    ],
)
def test_an_invalid_or_reserved_name_is_refused_and_another_can_be_tried(server, connect, name, error):
    peer = connect(server)
    peer.expect(GREETING)
    peer.send(name)
    peer.expect(error)
    peer.send("carol")
    peer.expect("* welcome carol", "* online: carol")


def test_names_at_the_edges_of_the_rules_are_accepted(server, connect):
    for name in ["x" * 32, "a", "A.b-c_9", "allan", "serv3r"]:
        peer = connect(server)
        assert name in peer.register(name)


# --- messages -------------------------------------------------------------------------------------


def test_a_direct_message_arrives_with_the_senders_name(server, connect):
    alice, bob = alice_and_bob(server, connect)
    alice.send("%bob%hi bob")
    bob.expect("%alice%hi bob")
    alice.send("%bob%50% done? %carol% is text, not a recipient")
    bob.expect("%alice%50% done? %carol% is text, not a recipient")
    alice.send("%bob%")
    bob.expect("%alice%")
    alice.send("%BOB%names ignore case")
    bob.expect("%alice%names ignore case")
    bob.send("%alice%hello alice")
    alice.expect("%bob%hello alice")


def test_a_broadcast_reaches_every_other_client_and_not_the_sender(server, connect):
    alice, bob, carol = connect(server, "alice"), connect(server, "bob"), connect(server, "carol")
    alice.expect("* bob joined", "* carol joined")
    bob.expect("* carol joined")
    alice.send("%*%hello all")
    bob.expect("%alice%hello all")
    carol.expect("%alice%hello all")
    assert alice.who() == ["alice", "bob", "carol"]  # no copy of her own broadcast came first
    bob.send("%all%and from bob")
    alice.expect("%bob%and from bob")
    carol.expect("%bob%and from bob")
    assert bob.who() == ["alice", "bob", "carol"]


def test_who_help_and_an_unknown_command(server, connect):
    alice, bob = alice_and_bob(server, connect)
    alice.send("%server%who")
    alice.expect("* online: alice, bob")
    alice.send("%server%help")
    alice.expect(*HELP)
    alice.send("%server%dance")
    alice.expect("! unknown command 'dance'; try %server%help")


def test_an_unknown_recipient_is_told_to_the_sender_and_logged(server, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    alice, bob = alice_and_bob(server, connect)
    alice.send("%zed%anyone?")
    alice.expect("! unknown client 'zed'")
    alice.send("%bob%marker")
    bob.expect("%alice%marker")  # bob got nothing of the misaddressed line
    records = [r for r in caplog.records if r.name == "chatlab.server" and "zed" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", f"127.0.0.1:{alice.port} alice: unknown client 'zed'")
    ]


@pytest.mark.parametrize("line", ["hello?", "%bob", "%%no recipient", "bob%hi", ""])
def test_a_line_without_a_recipient_is_refused(server, connect, line):
    alice, bob = alice_and_bob(server, connect)
    alice.send(line)
    alice.expect("! expected %name%message")
    alice.send("%bob%next")
    bob.expect("%alice%next")


def test_a_too_long_line_is_refused_and_the_connection_still_works(start, connect):
    server = start(max_line=32)
    alice, bob = alice_and_bob(server, connect)
    alice.send("%bob%" + "x" * 27)  # 32 bytes: just fits
    bob.expect("%alice%" + "x" * 27)
    alice.send("%bob%" + "x" * 28)  # 33 bytes
    alice.expect("! line too long")
    alice.send("%bob%" + "\u00e9" * 14)  # 14 characters, but 33 bytes
    alice.expect("! line too long")
    alice.send("%bob%still here")
    bob.expect("%alice%still here")


def test_a_huge_line_without_a_newline_gets_one_error(start, connect):
    server = start(max_line=64)
    alice, bob = alice_and_bob(server, connect)
    alice.send_raw(b"%bob%" + b"x" * (1 << 20))  # 1 MiB and no newline yet
    alice.expect("! line too long")  # said as soon as it is too long, not when it ends
    alice.send_raw(b" and that is the end of it\n%bob%after\n")
    bob.expect("%alice%after")
    assert alice.who() == ["alice", "bob"]  # ... and said only once
    assert [e.text for e in server.events() if e.kind == "error"] == ["line too long"]


def test_invalid_utf8_is_refused_before_and_after_registration(server, connect):
    alice = connect(server)
    alice.expect(GREETING)
    alice.send(b"\xff\xfe")
    alice.expect("! invalid utf-8")
    alice.send("alice")
    alice.expect("* welcome alice", "* online: alice")
    bob = connect(server, "bob")
    alice.send(b"%bob%caf\xe9")  # Latin-1, not UTF-8
    alice.expect("* bob joined", "! invalid utf-8")
    alice.send("%bob%caf\u00e9 \U0001f600")
    bob.expect("%alice%caf\u00e9 \U0001f600")


def test_the_others_hear_who_joins_and_who_leaves(server, connect):
    alice = connect(server, "alice")
    bob = connect(server, "bob")
    alice.expect("* bob joined")
    carol = connect(server, "carol")
    alice.expect("* carol joined")
    bob.expect("* carol joined")
    bob.close()
    alice.expect("* bob left")
    carol.expect("* bob left")
    assert alice.who() == ["alice", "carol"]


# --- nobody can forge a sender --------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"%bob%hi\r%server%you are kicked",
        b"%bob%\x1b[2K\r%eve%forged",
        b"%bob%\x1b[1A%eve%forged",
        "%bob%x\u2028%eve%forged".encode(),
        "%bob%\u202e%eve%forged".encode(),
        "%bob%ok\x85%eve%forged".encode(),
        b"%bob%nul\x00byte",
        b"%bob%bell\x07",
        b"%bob%del\x7f",
    ],
    ids=["cr", "esc-erase", "esc-up", "u2028", "bidi-u202e", "c1-x85", "nul", "bel", "del"],
)
def test_control_characters_cannot_make_a_receiver_see_a_forged_line(server, connect, line):
    alice, bob = alice_and_bob(server, connect)
    alice.send(line)
    alice.expect("! control characters are not allowed")
    alice.send("%bob%the next line")
    bob.expect("%alice%the next line")  # nothing of the refused line reached bob


@pytest.mark.parametrize(
    "name",
    [
        b"server",
        b"SERVER",
        b"all",
        b"*",
        b"bob",
        b"BOB",
        b"bob\r",
        b"bob\rserver",
        b"\x1b[2Kbob",
        "bob\u202e".encode(),
        b"bob\x85",
        b"carol joined",
    ],
)
def test_a_name_cannot_pass_for_someone_else(server, connect, name):
    bob = connect(server, "bob")
    eve = connect(server)
    eve.expect(GREETING)
    eve.send(name)
    assert eve.read_line().startswith("! ")
    eve.send("eve")
    eve.expect("* welcome eve", "* online: bob, eve")
    bob.expect("* eve joined")  # bob heard of no other arrival first
    assert bob.who() == ["bob", "eve"]


def test_a_message_that_looks_like_a_message_keeps_its_real_sender(server, connect):
    alice, bob = alice_and_bob(server, connect)
    alice.send("%bob%%carol%fake")
    line = bob.read_line()
    assert line == "%alice%%carol%fake"
    assert protocol.parse_server_line(line) == protocol.ServerLine("message", "%carol%fake", "alice")
    alice.send("%bob%* carol left")
    bob.expect("%alice%* carol left")  # a notice needs the server's "* " at the start of the line


# --- more at once -------------------------------------------------------------------------------


def test_a_newcomer_is_announced_before_anything_it_says(start, connect):
    server = start()
    alice = connect(server, "alice")
    newcomer = connect(server)
    newcomer.expect(GREETING)
    newcomer.send_raw(b"bob\n%alice%hi alice\n%*%hi all\n")  # all three lines in one packet
    newcomer.expect("* welcome bob", "* online: alice, bob")
    alice.expect("* bob joined", "%bob%hi alice", "%bob%hi all")


def test_the_replies_to_the_lines_of_one_packet_keep_their_order(start, connect):
    server = start()
    connect(server, "alice")
    newcomer = connect(server)
    newcomer.expect(GREETING)
    newcomer.send_raw(b"ALICE\nbob\n%server%who\n")  # a taken name, a free one, a question
    newcomer.expect("! name taken", "* welcome bob", "* online: alice, bob", "* online: alice, bob")


def test_when_many_leave_at_once_each_leave_is_announced_once(start, connect):
    server = start(max_clients=100)
    watcher = connect(server, "watcher")
    crowd = [connect(server, f"c{i:02}") for i in range(60)]
    watcher.expect(*[f"* c{i:02} joined" for i in range(60)])
    for peer in crowd:
        peer.close()
    left = [watcher.read_line() for _ in crowd]
    assert sorted(left) == [f"* c{i:02} left" for i in range(60)]
    assert watcher.who() == ["watcher"]  # the answer comes next: no notice came twice


def test_bad_lines_get_an_error_and_the_connection_stays(start, connect):
    server = start(max_line=64)
    alice, bob = connect(server, "alice"), connect(server, "bob")
    alice.expect("* bob joined")
    alice.send_raw(b"%bob%" + b"x" * 1000 + b"\n")
    alice.expect("! line too long")
    alice.send_raw(b"%bob%\xff\xfe\n")
    alice.expect("! invalid utf-8")
    alice.send("%bob%hi\r%server%forged")
    alice.expect("! control characters are not allowed")
    alice.send("%bob%still here")
    bob.expect("%alice%still here")


def test_leaving_mid_line_or_by_reset_is_announced(start, connect):
    server = start()
    alice, bob, carol = connect(server, "alice"), connect(server, "bob"), connect(server, "carol")
    alice.expect("* bob joined", "* carol joined")
    bob.send_raw(b"%alice%half a li")
    bob.close()
    alice.expect("* bob left")
    carol.reset()
    alice.expect("* carol left")
    wait_until(lambda: server.connection_count() == 1)
    assert alice.who() == ["alice"]


def test_a_full_server_and_a_silent_connection(start, connect):
    server = start(max_clients=2, name_timeout=0.3)
    alice = connect(server, "alice")
    silent = connect(server)
    with pytest.raises(ServerFull):
        ChatClient(*server.address, "carol")
    assert silent.read_to_eof() == [GREETING, "! no name in time"]
    wait_until(lambda: server.connection_count() == 1)
    with ChatClient(*server.address, "carol"):
        alice.expect("* carol joined")


def test_a_receiver_that_never_reads_is_dropped_and_the_others_go_on(start, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    server = start(max_backlog=64 * 1024)
    # Small kernel buffers for the sockets it accepts (they inherit them from the listener),
    # so that the backlog, not the kernel, is what fills up.
    server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    alice, carol = connect(server, "alice"), connect(server, "carol")
    stalled = connect(server, "stalled", rcvbuf=4096)  # registers, then never reads again
    alice.expect("* carol joined", "* stalled joined")
    carol.expect("* stalled joined")
    count = 400  # 400 kB for the stalled client: more than buffers and backlog hold
    for i in range(count):
        alice.send(f"%stalled%{i:03} " + "x" * 1000)
        alice.send(f"%carol%{i:03}")
    lines = [carol.read_line() for _ in range(count + 1)]
    assert [line for line in lines if line.startswith("* ")] == ["* stalled left"]
    assert [line for line in lines if not line.startswith("* ")] == [f"%alice%{i:03}" for i in range(count)]
    about_stalled = [(e.kind, e.text) for e in server.events() if e.client == "stalled"]
    assert about_stalled == [("registered", ""), ("error", "too slow: disconnected"), ("left", "too slow")]
    stalled.close()


def test_a_ring_of_50_gets_every_message_once_and_in_order(start):
    server = start()
    count, messages = 50, 30
    clients = [ChatClient(*server.address, f"ring{i}") for i in range(count)]
    try:
        for client in clients:
            client.pending()  # the join notices
        senders = [
            threading.Thread(
                target=lambda i=i: [
                    clients[i].send(f"ring{(i + 1) % count}", str(n)) for n in range(messages)
                ]
            )
            for i in range(count)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(10)
        for i, client in enumerate(clients):
            got = []
            while len(got) < messages:
                line = client.recv(timeout=5)
                if line.startswith("%"):
                    got.append(line)
            predecessor = f"ring{(i - 1) % count}"
            assert got == [f"%{predecessor}%{n}" for n in range(messages)]
            assert not [line for line in client.pending() if line.startswith("%")]  # no extras
    finally:
        for client in clients:
            client.close()


def test_records_events_and_a_restart(start, connect):
    server = start()
    alice, bob = connect(server, "alice"), connect(server, "bob")
    alice.send("%bob%hi")
    bob.expect("%alice%hi")
    records = {r.name: r for r in server.clients()}
    assert sorted(records) == ["alice", "bob"]
    assert (records["alice"].ip, records["alice"].port) == ("127.0.0.1", alice.port)
    assert records["alice"].messages_in == 1 and records["bob"].messages_out == 1
    assert [(e.kind, e.client, e.to) for e in server.events() if e.kind == "message"] == [
        ("message", "alice", "bob")
    ]
    first_port = server.port
    server.stop()
    assert not server.running and server.threads() == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", first_port), timeout=1).close()
    server.start()
    with ChatClient(*server.address, "carol") as carol:
        assert carol.who() == ["carol"]


@pytest.mark.parametrize("model", list(MODELS))
def test_each_model_runs_from_the_command_line(model):
    process = subprocess.Popen(
        [sys.executable, "-m", "chatlab.server", "--model", model, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        for _ in range(20):  # a few start-up lines at most
            line = process.stderr.readline()
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
                break
        assert port is not None, "the server never said where it listens"
        with Peer(("127.0.0.1", port)) as alice:
            assert alice.register("alice") == ["alice"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        process.stderr.close()


def test_hebrew_with_a_right_to_left_mark_arrives_byte_for_byte(server, connect):
    alice, bob = alice_and_bob(server, connect)
    text = "\u05e9\u05dc\u05d5\u05dd \u05d1\u05d5\u05d1\u200f, 50% done"  # "hello bob", RLM
    alice.send_raw(f"%bob%{text}\n".encode())
    assert bob.read_line() == f"%alice%{text}"
    alice.send_raw("%bob%\u202eevil\n".encode())  # an override is still refused
    alice.expect("! control characters are not allowed")
