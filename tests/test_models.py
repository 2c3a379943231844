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

from chatlab import kit_threads
from chatlab.client import ChatClient, ServerFull
from chatlab.server import MODELS, ServerBase, server_class
from transcript import GREETING, HELP, Peer, wait_until

@pytest.fixture(params=list(MODELS))
def start(request):
    """``start(**options)`` starts a server of the model under test on 127.0.0.1, port 0."""
    model_class = server_class(request.param)
    servers: list[ServerBase] = []
    before = set(kit_threads())

    def start_server(**options: object) -> ServerBase:
        server = model_class("127.0.0.1", 0, **options).start()
        servers.append(server)
        return server

    yield start_server
    for server in servers:
        server.stop()
    wait_until(lambda: set(kit_threads()) <= before, message="the model's threads ended")


def test_registration(start, connect):
    server = start()
    alice = connect(server, "alice")
    newcomer = connect(server)
    newcomer.expect(GREETING)
    for refused, answer in [("ALICE", "! name taken"), ("server", "! invalid name 'server': reserved"),
                            ("a b", "! invalid name 'a b': use 1-32 characters from A-Z a-z 0-9 _ . -")]:
        newcomer.send(refused)
        newcomer.expect(answer)
    newcomer.send("bob")
    newcomer.expect("* welcome bob", "* online: alice, bob")
    alice.expect("* bob joined")


def test_messages_broadcasts_and_commands(start, connect, caplog):
    server = start()
    alice, bob, carol = connect(server, "alice"), connect(server, "bob"), connect(server, "carol")
    alice.expect("* bob joined", "* carol joined")
    bob.expect("* carol joined")
    alice.send("%BOB%50% done%")
    bob.expect("%alice%50% done%")
    alice.send("%bob%")
    bob.expect("%alice%")
    carol.send("%*%hi all")
    alice.expect("%carol%hi all")
    bob.expect("%carol%hi all")
    assert carol.who() == ["alice", "bob", "carol"]  # carol got nothing of her own broadcast
    carol.send("%server%help")
    carol.expect(*HELP)
    carol.send("%server%dance")
    carol.expect("! unknown command 'dance'; try %server%help")
    carol.send("%zed%hi")
    carol.expect("! unknown client 'zed'")
    carol.send("hello?")
    carol.expect("! expected %name%message")
    assert any("carol: unknown client 'zed'" in r.getMessage() for r in caplog.records)
    assert bob.who() == ["alice", "bob", "carol"]  # nothing else reached bob


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
        senders = [threading.Thread(target=lambda i=i: [
            clients[i].send(f"ring{(i + 1) % count}", str(n)) for n in range(messages)])
            for i in range(count)]
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
    assert [(e.kind, e.client, e.to) for e in server.events() if e.kind == "message"] == [("message", "alice", "bob")]
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
        stderr=subprocess.PIPE, text=True,
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
