"""The threaded server over real loopback sockets: its delivery modes, its threads and life
cycle, and bad input in depth. What every server model shares is tested in test_models.py.
Most tests read like a chat transcript: a raw client sends a line, and another expects one."""

import logging
import random
import socket
import threading
import time

import pytest
from transcript import GREETING, HELP, alice_and_bob, run_together, wait_until

from chatlab import kit_threads
from chatlab.client import ChatClient
from chatlab.servers import ChatServer


def thread_names(server: ChatServer) -> list[str]:
    return sorted(t.name for t in server.threads())


def still_chatting(server: ChatServer, connect, tag: str) -> None:
    """Two newcomers can still register and talk, then leave."""
    ping, pong = connect(server, f"ping{tag}"), connect(server, f"pong{tag}")
    ping.expect(f"* pong{tag} joined")
    ping.send(f"%pong{tag}%still working?")
    pong.expect(f"%ping{tag}%still working?")
    ping.close()
    pong.read_until(f"* ping{tag} left")
    pong.close()
    # Gone from the room before the caller goes on: someone who registers next must not be
    # told that pong left (it would be, rightly, if pong were still online then).
    wait_until(lambda: f"pong{tag}" not in server.online(), message=f"pong{tag} has left")


def small_kernel_buffers(server: ChatServer) -> None:
    """Shrink the buffers of the sockets the server will accept: a client that stops reading
    then fills them after tens of kilobytes instead of megabytes (accepted sockets inherit
    these options from the listening socket; in queue mode the server then sets a send
    buffer of its own, ``chatlab.servers.base.SEND_BUFFER``)."""
    server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)


def server_log(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chatlab.server"]


# --- leaving, in both delivery modes -------------------------------------------------------------


@pytest.mark.parametrize("delivery", ["queue", "direct"])
def test_a_client_that_stops_writing_still_gets_the_replies_to_its_last_lines(
    start_server, connect, delivery
):
    """As with ``printf 'alice\\n%server%who\\n' | nc -N 127.0.0.1 5050``: send, close the
    sending side, then read until the server closes the connection."""
    server = start_server(delivery=delivery)
    for attempt in range(20):
        peer = connect(server)
        peer.send_raw(f"alice{attempt}\n%server%who\n%server%help\n".encode())
        peer.sock.shutdown(socket.SHUT_WR)
        online = f"* online: alice{attempt}"
        assert peer.read_to_eof() == [GREETING, f"* welcome alice{attempt}", online, online, *HELP]


# --- bad input never breaks anything ---------------------------------------------------------------


def test_a_client_that_leaves_mid_line_is_removed(server, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    alice, bob = alice_and_bob(server, connect)
    bob.send_raw(b"%alice%half a li")
    bob.close()
    alice.expect("* bob left")
    assert "bob left mid-line; dropped 16 bytes" in server_log(caplog)
    still_chatting(server, connect, "1")
    wait_until(lambda: thread_names(server) == ["chatlab-accept", "chatlab-client-alice"])


def test_a_client_that_resets_its_connection_is_removed(server, connect):
    alice, bob = alice_and_bob(server, connect)
    bob.send_raw(b"%alice%half a li")
    bob.reset()
    alice.expect("* bob left")
    (left,) = [e for e in server.events() if e.kind == "left"]
    assert left.client == "bob" and left.text.startswith("connection error")
    still_chatting(server, connect, "1")
    wait_until(lambda: thread_names(server) == ["chatlab-accept", "chatlab-client-alice"])


def test_a_client_that_stops_writing_and_never_reads_is_removed_all_the_same(server, connect):
    small_kernel_buffers(server)
    alice = connect(server, "alice")
    quitter = connect(server, "quitter", rcvbuf=4096)
    alice.expect("* quitter joined")
    for i in range(200):  # 200 kB queued for it: more than its socket buffers hold
        alice.send(f"%quitter%{i:03} " + "x" * 1000)
    assert alice.who() == ["alice", "quitter"]
    quitter.sock.shutdown(socket.SHUT_WR)  # it says goodbye, but reads none of that
    alice.expect("* quitter left")
    wait_until(lambda: thread_names(server) == ["chatlab-accept", "chatlab-client-alice"])
    still_chatting(server, connect, "1")


def test_a_client_that_never_says_anything_blocks_nobody(server, connect):
    silent = connect(server)  # connects, then neither reads nor writes
    still_chatting(server, connect, "1")
    alice, bob = alice_and_bob(server, connect)
    alice.send("%bob%hi")
    bob.expect("%alice%hi")
    assert server.connection_count() == 3
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0
    assert server.threads() == [] and kit_threads() == []
    silent.expect(GREETING)
    silent.expect_eof()


def test_binary_garbage_gets_error_lines_and_breaks_nothing(server, connect):
    alice = connect(server, "alice")
    eve = connect(server)
    eve.expect(GREETING)
    # Every byte value, with a newline every 256 bytes: control characters, then invalid UTF-8.
    eve.send(bytes(range(256)) * 64)
    errors = eve.read_until(lambda line: not line.startswith("! ") or "bad lines" in line, limit=200)
    assert errors[:2] == ["! control characters are not allowed", "! invalid utf-8"]
    assert set(errors[1:-1]) == {"! invalid utf-8"} and errors[-1] == "! too many bad lines"
    eve.expect_eof()  # 65 garbage lines at once: a script, not a person mistyping
    eve = connect(server, "eve")
    alice.expect("* eve joined")
    eve.send(random.Random(7).randbytes(1 << 16))  # 64 KiB of noise, about 256 "lines"
    replies = eve.read_until(lambda line: not line.startswith("! ") or "bad lines" in line, limit=2000)
    assert replies[-1] == "! too many bad lines"
    eve.expect_eof()
    alice.expect("* eve left")
    assert alice.who() == ["alice"]
    still_chatting(server, connect, "1")
    wait_until(lambda: len(server.threads()) == 1 + 1)  # alice's, and accept


def test_a_hundred_clients_can_register_at_the_same_time(start_server, connect):
    server = start_server(max_clients=150)
    names = [f"c{i:03}" for i in range(100)]
    barrier = threading.Barrier(len(names), timeout=10)
    peers, welcomed, failures = [], [], []

    def register(name: str) -> None:
        try:
            peer = connect(server)
            peers.append(peer)
            peer.expect(GREETING)
            barrier.wait()
            peer.send(name)
            peer.expect(f"* welcome {name}")
            online = peer.read_line()
            assert online.startswith("* online: ") and name in online[len("* online: ") :].split(", ")
            welcomed.append(name)
        except BaseException as exc:
            failures.append((name, repr(exc)))
            barrier.abort()

    run_together(register, names, name="test-register")
    assert failures == []
    assert sorted(welcomed) == names
    zed = connect(server, "zed")
    assert zed.who() == names + ["zed"]
    assert len(server.threads()) == 1 + 101  # accept, and one thread per client
    for peer in peers:
        peer.close()
    assert sorted(zed.read_line() for _ in names) == [f"* {name} left" for name in names]
    wait_until(lambda: thread_names(server) == ["chatlab-accept", "chatlab-client-zed"])
    assert zed.who() == ["zed"]


def test_a_full_server_refuses_the_next_client_and_has_room_again_later(start_server, connect):
    server = start_server(max_clients=2)
    alice, bob = alice_and_bob(server, connect)
    third = connect(server)
    third.expect("! server full")
    third.expect_eof()
    assert alice.who() == ["alice", "bob"]
    bob.close()
    alice.expect("* bob left")
    carol = connect(server, "carol")
    alice.expect("* carol joined")
    carol.send("%alice%made it")
    alice.expect("%carol%made it")
    wait_until(lambda: len(server.threads()) == 1 + 2)


# --- delivery ------------------------------------------------------------------------------------


def test_a_receiver_that_never_reads_does_not_stall_the_others(start_server, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    server = start_server(max_backlog=64 * 1024)
    small_kernel_buffers(server)
    alice, carol = connect(server, "alice"), connect(server, "carol")
    stalled = connect(server, "stalled", rcvbuf=4096)  # registers, then never reads again
    alice.expect("* carol joined", "* stalled joined")
    carol.expect("* stalled joined")

    count = 400  # 400 kB to the stalled client: far more than its buffers and backlog hold
    for i in range(count):
        alice.send(f"%stalled%{i:03} " + "x" * 1000)
        alice.send(f"%carol%{i:03}")

    lines = [carol.read_line() for _ in range(count + 1)]  # alice's messages, and one notice
    assert [line for line in lines if line.startswith("* ")] == ["* stalled left"]
    assert [line for line in lines if not line.startswith("* ")] == [f"%alice%{i:03}" for i in range(count)]
    alice.send("%server%who")
    lines = alice.read_until("* online: alice, carol", limit=count + 2)
    assert "* stalled left" in lines  # the room forgets a dropped client before it announces it left
    lost = "! stalled is too slow and is being disconnected; your line was not delivered"
    assert set(lines) - {lost} == {"* stalled left", "! unknown client 'stalled'", "* online: alice, carol"}
    assert "stalled is too far behind; disconnecting it" in server_log(caplog)
    about_stalled = [(e.kind, e.text) for e in server.events() if e.client == "stalled"]
    assert about_stalled == [("registered", ""), ("error", "too slow: disconnected"), ("left", "too slow")]
    stalled.drain()  # what had reached its buffers, then the end


def test_a_writer_thread_serves_a_client_only_while_it_is_behind(server, connect):
    alice = connect(server, "alice")
    sleepy = connect(server, "sleepy", rcvbuf=4096)  # reads nothing until the test says so
    alice.expect("* sleepy joined")
    at_rest = ["chatlab-accept", "chatlab-client-alice", "chatlab-client-sleepy"]
    assert thread_names(server) == at_rest
    lines = [f"%sleepy%{i:03} " + "x" * 1000 for i in range(300)]  # 300 kB: more than its
    for line in lines:  # socket takes, less than what it may fall behind (max_backlog, 1 MiB)
        alice.send(line)
    wait_until(lambda: thread_names(server) == sorted(at_rest + ["chatlab-writer-sleepy"]))
    assert alice.who() == ["alice", "sleepy"]  # alice's thread never waited for sleepy
    assert [sleepy.read_line() for _ in lines] == [f"%alice{line[7:]}" for line in lines]
    wait_until(lambda: thread_names(server) == at_rest)  # caught up: the writer has ended
    alice.send("%sleepy%caught up")  # straight into its socket again
    sleepy.expect("%alice%caught up")
    # Whether the sender's thread or the writer sent them, every byte was counted once.
    got = [
        GREETING,
        "* welcome sleepy",
        "* online: alice, sleepy",
        *[f"%alice{line[7:]}" for line in lines],
        "%alice%caught up",
    ]
    sent = sum(len(line.encode()) + 1 for line in got)
    wait_until(lambda: [c.bytes_out for c in server.clients() if c.name == "sleepy"] == [sent])


@pytest.mark.parametrize("release", ["the receiver reads", "the server stops", "the receiver leaves"])
def test_in_direct_mode_a_receiver_that_never_reads_stalls_its_senders(start_server, connect, release):
    server = start_server(delivery="direct")
    small_kernel_buffers(server)
    alice, carol = connect(server, "alice", sndbuf=4096), connect(server, "carol")
    stalled = connect(server, "stalled", rcvbuf=4096)
    alice.expect("* carol joined", "* stalled joined")
    carol.expect("* stalled joined")
    count = 400
    outcome = []

    def flood() -> None:
        try:
            for i in range(count):
                alice.send(f"%stalled%{i:03} " + "x" * 1000)
            alice.send("%carol%after the flood")
            outcome.append("sent")
        except OSError as exc:
            outcome.append(repr(exc))

    sender = threading.Thread(target=flood, name="test-flood", daemon=True)
    sender.start()
    sender.join(1.0)
    assert sender.is_alive() and outcome == []  # alice's thread at the server is stuck writing
    if release == "the receiver reads":
        lines = stalled.read_until("%alice%399 " + "x" * 1000, limit=count)
        assert lines == [f"%alice%{i:03} " + "x" * 1000 for i in range(count)]
        sender.join(5)
        assert outcome == ["sent"]
        carol.expect("%alice%after the flood")
    elif release == "the receiver leaves":
        # stalled says goodbye without reading (`nc -N`): its own thread at the server ends the
        # connection, and must first wake alice's thread, which is stuck writing to it while
        # holding its send lock (the two threads once waited for each other for good).
        stalled.sock.shutdown(socket.SHUT_WR)
        carol.read_until("* stalled left")
        sender.join(5)
        assert outcome == ["sent"]
        carol.expect("%alice%after the flood")
        server.stop()
        assert kit_threads() == []
    else:
        started = time.monotonic()
        server.stop()  # closing the stalled socket frees alice's thread at the server
        assert time.monotonic() - started < 2.0 and kit_threads() == []
        carol.read_to_eof()
        # Our own end of alice's connection only learns of it when TCP next probes the closed
        # window, which can take seconds: shut it down to let the flood thread finish now.
        try:
            alice.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # it did learn of it already
        sender.join(5)
    assert not sender.is_alive()


def test_in_direct_mode_a_newcomer_that_never_reads_freezes_only_those_who_write_to_it(start_server, connect):
    server = start_server(delivery="direct", max_clients=300)
    names = [f"{i:03}".ljust(32, "x") for i in range(200)]  # its welcome lists them all: 6.8 kB
    peers = [connect(server, name, timeout=2.0) for name in names]
    first, second = peers[0], peers[1]
    first.read_until(f"* {names[-1]} joined", limit=len(names))
    second.read_until(f"* {names[-1]} joined", limit=len(names))
    server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the smallest there is
    newcomer = connect(server, rcvbuf=1)  # its buffers now hold about 5 kB
    newcomer.send("newcomer")  # and it reads nothing, not even its welcome
    try:
        # Its "joined" notice is queued before its welcome, which its own thread cannot write:
        # first hears of it with the next line sent to it, the answer to who. That answer
        # needs the registry, so it would time out if the server were frozen.
        wait_until(lambda: "newcomer" in server.online(), timeout=2.0)
        first.send("%server%who")
        first.expect("* newcomer joined")
        assert first.read_line() == "* online: " + ", ".join(sorted(names + ["newcomer"]))
        first.send(f"%{names[1]}%still there?")
        second.expect("* newcomer joined", f"%{names[0]}%still there?")
        assert second.who() == sorted(names + ["newcomer"])
        stopper = threading.Thread(target=server.stop, name="test-stop")
        stopper.start()
        stopper.join(2.0)
        assert not stopper.is_alive(), "stop() is stuck behind a client that does not read"
    finally:
        newcomer.close()  # lets a stuck server go, so that the test fails instead of hanging


def test_every_message_arrives_once_and_in_order_around_a_ring(server, chat_client):
    n, m = 50, 50
    names = [f"r{i:02}" for i in range(n)]
    clients = [chat_client(server, name) for name in names]
    barrier = threading.Barrier(n, timeout=10)

    def send_to_next(i: int) -> None:
        barrier.wait()
        for k in range(m):
            clients[i].send(names[(i + 1) % n], f"{k} from {names[i]}")

    senders = [threading.Thread(target=send_to_next, args=(i,), name=f"test-ring-{i}") for i in range(n)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(20)
    assert not any(sender.is_alive() for sender in senders)

    for i, client in enumerate(clients):
        previous = names[i - 1]
        wanted = [f"%{previous}%{k} from {previous}" for k in range(m)]
        got = []
        for _ in range(m + n):  # its messages, and the notices of those who joined after it
            line = client.recv(timeout=5)
            if not line.startswith("* "):
                got.append(line)
            if len(got) == m:
                break
        assert got == wanted
        assert [line for line in client.pending() if not line.startswith("* ")] == []


# --- threads, life cycle, records, events ----------------------------------------------------------


def test_every_thread_has_a_name_that_says_whose_it_is(server, connect):
    assert kit_threads() == ["chatlab-accept"]
    alice = connect(server)
    alice.expect(GREETING)
    address = f"127.0.0.1:{alice.port}"
    # The greeting goes out just before the client's thread starts: wait for the thread.
    wait_until(lambda: kit_threads() == ["chatlab-accept", f"chatlab-client-{address}"])
    alice.send("alice")
    alice.expect("* welcome alice", "* online: alice")
    wait_until(lambda: kit_threads() == ["chatlab-accept", "chatlab-client-alice"])
    assert thread_names(server) == kit_threads()
    with ChatClient(server.host, server.port, "bob"):
        assert "chatlab-reader-bob" in kit_threads()
        alice.expect("* bob joined")


def test_no_thread_is_left_behind_when_clients_leave_or_the_server_stops(server, connect):
    alice, bob = alice_and_bob(server, connect)
    assert len(server.threads()) == 3
    alice.close()
    bob.close()
    wait_until(lambda: thread_names(server) == ["chatlab-accept"])
    wait_until(lambda: kit_threads() == ["chatlab-accept"])
    server.stop()
    assert server.threads() == [] and kit_threads() == []


def test_stop_is_prompt_with_twenty_clients_one_of_them_mid_line(server, connect):
    peers = [connect(server, f"p{i:02}") for i in range(20)]
    for i, peer in enumerate(peers):
        peer.expect(*[f"* p{j:02} joined" for j in range(i + 1, 20)])
    peers[0].send_raw(b"%p01%half a li")
    assert len(server.threads()) == 1 + 20
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0
    assert not server.running and server.threads() == [] and kit_threads() == []
    for peer in peers:
        peer.expect_eof()


def test_stop_joins_the_thread_of_a_client_that_is_just_leaving(server, connect):
    alice, bob = alice_and_bob(server, connect)
    leaving, release = threading.Event(), threading.Event()

    def slow_subscriber(event):  # e.g. a dashboard that takes a moment to redraw
        if event.kind == "left" and event.client == "bob":
            leaving.set()
            release.wait(5)

    server.subscribe(slow_subscriber)
    bob.close()
    assert leaving.wait(5)  # bob's thread has left the registry but has not finished yet
    timer = threading.Timer(0.2, release.set)
    timer.start()
    try:
        server.stop()
        assert server.threads() == [] and kit_threads() == []
    finally:
        release.set()
        timer.join()


def leave_a_connection_in_time_wait(server: ChatServer, connect) -> None:
    """Stop the server while a client is connected: the server closes first, so its end of
    that connection lingers in TIME_WAIT on the server's port for a while."""
    lingering = connect(server, "lingering")
    server.stop()
    lingering.expect_eof()
    lingering.close()


def test_a_server_can_be_started_again_on_a_new_or_the_same_port(start_server, connect):
    server = start_server()
    assert server.port != 0 and server.listener.getsockname() == ("127.0.0.1", server.port)
    still_chatting(server, connect, "1")
    server.stop()
    assert not server.running and server.listener is None and kit_threads() == []

    server.start()  # port 0 again: whatever port is free now
    assert server.running and server.port != 0 and server.listener.getsockname()[1] == server.port
    still_chatting(server, connect, "2")
    leave_a_connection_in_time_wait(server, connect)

    # SO_REUSEADDR lets a new server bind that same port all the same, and restart on it.
    fixed = start_server(port=server.port)
    assert fixed.port == server.port
    still_chatting(fixed, connect, "3")
    leave_a_connection_in_time_wait(fixed, connect)
    fixed.start()
    assert fixed.port == server.port
    still_chatting(fixed, connect, "4")


def test_start_refuses_a_server_that_is_already_running(server):
    with pytest.raises(RuntimeError):
        server.start()


def test_stop_all_stops_every_running_server(start_server, connect):
    first, second = start_server(), start_server()
    alice = connect(first, "alice")
    assert ChatServer.stop_all() == 2
    assert not first.running and not second.running and kit_threads() == []
    alice.expect_eof()
    assert ChatServer.stop_all() == 0


def test_a_server_is_a_context_manager(connect):
    with ChatServer() as server:
        assert server.running and server.port != 0
        alice = connect(server, "alice")
        alice.send("%alice%note to self")
        alice.expect("%alice%note to self")
    assert not server.running and kit_threads() == []
    alice.expect_eof()


def test_client_records_say_who_is_where_and_count_what_was_sent(server, connect):
    alice, bob = alice_and_bob(server, connect)
    for line in ["%bob%one", "%bob%two", "%*%three", "%zed%not counted"]:
        alice.send(line)
    bob.expect("%alice%one", "%alice%two", "%alice%three")
    alice.expect("! unknown client 'zed'")
    bob.send("%alice%back")
    alice.expect("%bob%back")

    records = server.clients()
    assert [r.name for r in records] == ["alice", "bob"]
    for record, peer in zip(records, [alice, bob], strict=True):
        assert (record.ip, record.port) == ("127.0.0.1", peer.port)
        assert record.sock.getpeername() == ("127.0.0.1", peer.port)
        assert record.fd == record.sock.fileno() and record.fd >= 0
        assert record.connected_at <= time.time()
    a, b = records
    assert (a.messages_in, a.messages_out, b.messages_in, b.messages_out) == (3, 1, 1, 3)

    def traffic_adds_up() -> bool:
        a, b = server.clients()
        return (a.bytes_in, a.bytes_out, b.bytes_in, b.bytes_out) == (
            alice.bytes_sent,
            alice.bytes_received,
            bob.bytes_sent,
            bob.bytes_received,
        )

    wait_until(traffic_adds_up)
    a.name = "mallory"  # a snapshot: changing it changes nothing at the server
    assert server.online() == ["alice", "bob"] and server.clients()[0].name == "alice"


def test_subscribers_hear_every_event_in_order_until_they_unsubscribe(server, connect):
    heard = []
    unsubscribe = server.subscribe(heard.append)
    alice = connect(server, "alice")
    alice.send("%zed%hi")
    alice.expect("! unknown client 'zed'")
    bob = connect(server, "bob")
    alice.expect("* bob joined")
    alice.send("%bob%hi")
    bob.expect("%alice%hi")
    bob.close()
    alice.expect("* bob left")
    assert [(e.kind, e.client, e.to, e.text) for e in heard] == [
        ("connected", None, None, ""),
        ("registered", "alice", None, ""),
        ("error", "alice", None, "unknown client 'zed'"),
        ("connected", None, None, ""),
        ("registered", "bob", None, ""),
        ("message", "alice", "bob", "hi"),
        ("left", "bob", None, "disconnected"),
    ]
    assert [e.address[1] for e in heard] == [alice.port] * 3 + [bob.port] * 2 + [alice.port, bob.port]
    assert {e.address[0] for e in heard} == {"127.0.0.1"}
    assert server.events() == heard

    unsubscribe()
    connect(server, "carol")
    alice.expect("* carol joined")
    assert len(heard) == 7 and len(server.events()) == 9


def test_nothing_is_printed_during_a_session(server, connect, capfd):
    def broken_subscriber(event):
        raise RuntimeError("a subscriber's bug is logged, not printed")

    server.subscribe(broken_subscriber)
    alice = connect(server, "alice")
    with ChatClient(server.host, server.port, "bob") as bob:
        alice.expect("* bob joined")
        alice.send("%bob%hi")
        assert bob.recv() == "%alice%hi"
        bob.send("zed", "anyone?")
        assert bob.recv() == "! unknown client 'zed'"
        alice.send(b"\xff")
        alice.expect("! invalid utf-8")
    alice.expect("* bob left")
    alice.reset()
    server.stop()
    assert capfd.readouterr() == ("", "")


def test_kit_threads_lists_the_kits_threads_by_name(start_server, connect):
    import chatlab

    before = chatlab.kit_threads()
    server = start_server()
    alice = connect(server, "alice")
    alice.send("%server%who")
    alice.expect("* online: alice")
    started = sorted(set(chatlab.kit_threads()) - set(before))
    assert started == ["chatlab-accept", "chatlab-client-alice"]
    server.stop()
    assert chatlab.kit_threads() == before


def test_stop_is_safe_from_two_threads_at_once(server, connect):
    connect(server, "alice")
    errors = []

    def stop() -> None:
        try:
            server.stop()
        except Exception as exc:  # the second caller used to trip over the first
            errors.append(exc)

    stoppers = [threading.Thread(target=stop) for _ in range(2)]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join(5)
    assert errors == [] and not server.running and server.threads() == []


def test_stop_says_which_threads_outlived_its_timeout(server, connect, caplog):
    release = threading.Event()
    server.subscribe(lambda event: event.kind == "left" and release.wait(2))  # holds bob's thread
    connect(server, "bob").close()
    wait_until(lambda: not release.is_set() and any(e.kind == "left" for e in server.events()))
    server.stop(timeout=0.2)
    release.set()
    assert "stopped, but these threads still run: chatlab-client-bob" in server_log(caplog)


def test_a_connection_that_sends_no_name_in_time_is_told_and_closed(start_server, connect):
    server = start_server(max_clients=1, name_timeout=0.3)
    idle = connect(server)  # says nothing
    assert idle.read_to_eof() == [GREETING, "! no name in time"]
    wait_until(lambda: server.connection_count() == 0)
    connect(server, "alice")  # the slot is free again
    # The room forgets the connection before its thread has closed it and noted why it left.
    wait_until(lambda: [e.text for e in server.events() if e.kind == "left"] == ["no name in time"])


def test_stop_right_after_a_greeting_leaves_no_thread_behind(start_server, connect):
    """The accept thread greets a newcomer before it starts the newcomer's thread: a stop() in
    between must still find that thread and join it (it once outlived stop under load)."""
    for _ in range(30):
        server = start_server()
        connect(server).expect(GREETING)
        server.stop(timeout=5)
        assert server.threads() == []
