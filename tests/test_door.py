"""The door of a classroom server (chatlab.door): one student cannot lock the class out, keep a
connection at the door for ever, flood from many connections, or guess the class code fast.

Real servers of every model on 127.0.0.1, port 0. Two students on two laptops are two source
addresses: loopback aliases (127.0.0.2 for the attacker, 127.0.0.3 for the honest student),
which Linux answers without set-up; where they are missing (macOS) those tests are skipped,
saying so. One test runs the server program bound beyond loopback, with its default options,
in a network namespace of its own (root and iproute2; skipped elsewhere, failed in CI as in
test_across_hosts.py). Every wait and every loop is bounded.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest
import trustme
from transcript import GREETING, TIMEOUT, Peer, Program, s_client, wait_until

from chatlab import door, protocol
from chatlab.client import ChatClient
from chatlab.servers import base as servers_base

ATTACKER, STUDENT, OTHER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
CODE = "owl-42"
CODE_PROMPT = protocol.CODE_PROMPT.decode().strip()
SERVER_FULL = protocol.SERVER_FULL.decode().strip()
WRONG_CODE = protocol.WRONG_CODE.decode().strip()
TOO_MANY_GUESSES = door.TOO_MANY_GUESSES.decode().strip()
TOO_MANY_CONNECTIONS = door.TOO_MANY_CONNECTIONS.decode().strip()


@pytest.fixture
def peers_from():
    """``peers_from(server, source)`` opens a raw Peer from a loopback alias; every one is
    closed after the test. Skips where the alias cannot be used."""
    opened: list[Peer] = []

    def open_peer(server, source: str = STUDENT) -> Peer:
        try:
            peer = Peer(server.address, source=source)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:  # macOS has 127.0.0.1 only, unless told
                pytest.skip(f"the loopback alias {source} is not usable here: {exc}")
            raise
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


def idle_connections(server, source: str, count: int) -> list[socket.socket]:
    """``count`` connections from ``source`` that say nothing (the server may refuse some)."""
    opened = []
    for _ in range(count):
        try:
            sock = socket.create_connection(server.address, timeout=TIMEOUT, source_address=(source, 0))
            opened.append(sock)
        except OSError:
            break  # the kernel's queue is full: enough
    return opened


# --- the door alone: no sockets, the caller's clock -----------------------------------------------


def a_door(**limits) -> door.Door:
    options = {
        "fair": True,
        "max_clients": 2,
        "per_address": 3,
        "arrivals": 1.0,
        "joining": 4,
        "joining_per_address": 2,
        "guesses": 2,
        "rate": None,
        **limits,
    }
    return door.Door(**options)


def test_the_door_counts_connections_joining_and_seats_by_address():
    hall = a_door()
    assert hall.enter("10.0.0.2", now=0.0) is None
    assert hall.enter("10.0.0.2", now=0.0) is None
    assert hall.enter("10.0.0.2", now=0.0) == door.BUSY  # two of its connections are joining
    assert hall.seat("10.0.0.2") and not hall.full()  # one of them named: out of the pool, in a seat
    assert hall.enter("10.0.0.2", now=0.0) == door.TOO_FAST  # even a refused one took a turn
    assert hall.enter("10.0.0.2", now=1.0) is None  # its third, and last, connection
    assert hall.enter("10.0.0.2", now=10.0) == door.TOO_MANY_CONNECTIONS
    assert hall.seat("10.0.0.2") and hall.full() and not hall.seat("10.0.0.2")
    hall.unseat("10.0.0.2")  # that name was refused: back at the door, its seat free
    assert not hall.full() and hall.joining_count == 2
    assert hall.seat("10.0.0.2") and hall.full()
    hall.leave("10.0.0.2", joining=False, seated=True)
    assert not hall.full() and hall.named_count == 1 and hall.joining_count == 1


def test_new_connections_from_one_address_come_at_the_rate_after_a_burst():
    hall = a_door(per_address=100, joining=100, joining_per_address=100)
    assert all(hall.enter("10.0.0.2", now=0.0) is None for _ in range(100))  # a burst of 100
    hall = a_door(per_address=3, joining_per_address=3)
    assert [hall.enter("10.0.0.2", now=0.0) for _ in range(3)] == [None, None, None]
    for _ in range(3):
        hall.leave("10.0.0.2", joining=True, seated=False)
    assert hall.enter("10.0.0.2", now=0.5) == door.TOO_FAST  # the burst is spent
    assert hall.enter("10.0.0.2", now=1.0) is None  # one a second


def test_guesses_wait_per_address_and_a_right_code_is_not_one():
    hall = a_door(fair=False)
    assert hall.guess("10.0.0.2", now=0.0, answer_at=1.0)
    assert hall.guess("10.0.0.2", now=0.0, answer_at=1.0)
    assert not hall.guess("10.0.0.2", now=0.5, answer_at=1.5)  # two wait already
    assert hall.guess("10.0.0.3", now=0.5, answer_at=1.5)  # another laptop
    assert hall.guess("10.0.0.2", now=1.0, answer_at=2.0)  # the first two were answered
    hall.right("10.0.0.2", 2.0)
    assert hall.guess("10.0.0.2", now=1.0, answer_at=2.0)


def test_without_fairness_the_door_lets_everyone_in():
    hall = a_door(fair=False)
    assert all(hall.enter("10.0.0.2", now=0.0) is None for _ in range(50))
    assert hall.seat("10.0.0.2") and not hall.full() and hall.bucket("10.0.0.2", 0.0) is None


# --- finding 1: one student locks the class out ---------------------------------------------------


def test_a_hundred_idle_connections_from_one_laptop_leave_the_room_open(start, peers_from):
    """The attacker opens 100 connections that say nothing; the honest students still join
    and chat, and the attacker's address holds at most its share."""
    server = start(fair=True, name_timeout=30.0)
    alice = peers_from(server, STUDENT)  # the aliases work here (else skipped)
    idle = idle_connections(server, ATTACKER, 100)
    try:
        alice.register("alice")
        bob = peers_from(server, OTHER)
        bob.register("bob")
        alice.expect("* bob joined")
        bob.send("%alice%still here")
        alice.expect("%bob%still here")
        per_address = servers_base.ServerOptions().joining_per_address
        assert server.connection_count() <= 2 + per_address  # the attacker's share of the door
    finally:
        for sock in idle:
            sock.close()


def test_max_clients_counts_named_clients_and_idle_ones_wait_at_the_door(start, peers_from):
    server = start(fair=True, max_clients=2)
    idle = [peers_from(server, ATTACKER) for _ in range(3)]  # three seats' worth, all silent
    for peer in idle:
        peer.expect(GREETING)
    alice = peers_from(server, STUDENT)
    alice.register("alice")
    bob = peers_from(server, OTHER)
    bob.register("bob")
    carol = peers_from(server, OTHER)  # two are named: the room is full now
    assert carol.read_to_eof() == [SERVER_FULL]
    idle[0].send("eve")  # at the door already, but no seat is free
    assert idle[0].read_to_eof() == [SERVER_FULL]
    assert server.online() == ["alice", "bob"]


def test_one_address_has_a_cap_on_connections(start, peers_from):
    server = start(fair=True, per_address=3, arrivals=100.0)
    named = [peers_from(server, ATTACKER) for _ in range(3)]
    for i, peer in enumerate(named):
        peer.register(f"eve{i}")
    assert peers_from(server, ATTACKER).read_to_eof() == [TOO_MANY_CONNECTIONS]
    peers_from(server, STUDENT).register("alice")  # another laptop is not affected
    named[0].close()
    wait_until(lambda: "eve0" not in server.online(), message="eve0 left")
    peers_from(server, ATTACKER).register("eve3")  # a place came free


def test_a_reconnect_loop_floods_nobody_with_joined_and_left(start, peers_from):
    """One laptop joins and leaves in a tight loop: the others hear of a few joins, not all."""
    server = start(fair=True)
    alice = peers_from(server, STUDENT)
    alice.register("alice")
    tries, refused = 40, 0
    for i in range(tries):
        eve = Peer(server.address, source=ATTACKER)
        lines = [eve.read_line()]
        if lines == [GREETING]:
            eve.send(f"eve{i}")
        eve.sock.shutdown(socket.SHUT_WR)
        lines += eve.read_to_eof()
        refused += lines[0].startswith("! too many new connections")
        eve.close()
    alice.send("%alice%mark")
    heard = alice.read_until("%alice%mark")
    joins = [line for line in heard if line.endswith(" joined")]
    assert refused > 0 and len(joins) < tries / 2, (refused, len(joins))


# --- finding 2: the door's one deadline ----------------------------------------------------------


@pytest.mark.parametrize("with_code", [False, True], ids=["name", "code"])
def test_trickling_bytes_does_not_keep_a_connection_at_the_door(start, connect, with_code):
    """One byte every 0.3 s, never a whole line: the connection still ends at its deadline."""
    server = start(name_timeout=1.0, **({"code": CODE} if with_code else {}))
    slow = connect(server)
    slow.expect(CODE_PROMPT if with_code else GREETING)
    closed = False
    for _ in range(20):  # 6 s at most: well past the deadline
        time.sleep(0.3)
        try:
            slow.sock.sendall(b"x")
        except OSError:
            closed = True
            break
        readable, _, _ = select.select([slow.sock], [], [], 0)
        if readable and slow.sock.recv(4096, socket.MSG_PEEK).endswith(b"in time\n"):
            closed = True
            break
    assert closed, "the connection was still at the door after 6 s (name_timeout=1)"


def test_a_trickled_tls_handshake_ends_at_the_deadline(start, connect, tls_contexts):
    server_tls, _ = tls_contexts
    server = start(tls=server_tls, name_timeout=1.0)
    slow = connect(server)
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)  # the start of a ClientHello
    ended = False
    for byte in hello[:20]:  # 6 s at most
        time.sleep(0.3)
        try:
            slow.sock.sendall(bytes([byte]))
            readable, _, _ = select.select([slow.sock], [], [], 0)
            if readable and slow.sock.recv(1) == b"":
                ended = True
                break
        except OSError:
            ended = True
            break
    assert ended, "a trickled handshake was still open after 6 s (name_timeout=1)"


# --- finding 3: flood control per address ---------------------------------------------------------


def test_ten_connections_from_one_laptop_get_the_rate_of_one(start, peers_from):
    rate, senders, lines_each = 20.0, 10, 60
    server = start(fair=True, rate=rate, per_address=senders, arrivals=100.0)
    reader = peers_from(server, STUDENT)
    reader.register("alice")
    flooders = []
    for i in range(senders):  # one after the other: only a few may wait at the door at once
        flooders.append(peers_from(server, ATTACKER))
        flooders[-1].register(f"eve{i}")
    began = time.monotonic()
    for i, peer in enumerate(flooders):
        peer.send_raw(b"".join(f"%alice%{i}-{n}\n".encode() for n in range(lines_each)))
    got = 0
    while time.monotonic() - began < 1.0:  # what reaches alice in the first second
        try:
            line = reader.read_line(timeout=max(0.01, 1.0 - (time.monotonic() - began)))
        except TimeoutError:
            break
        got += line.startswith("%eve")
    # One address: a burst of 2 s worth (40) plus 20 a second, less the ten names' tokens.
    # Ten buckets of their own would let 400 through at once.
    assert got <= 2 * rate + 1.5 * rate, got


# --- finding 5: the class code ----------------------------------------------------------------------


def test_a_wrong_code_is_answered_only_after_the_delay(start, connect):
    server = start(code=CODE)
    eve = connect(server)
    eve.expect(CODE_PROMPT)
    sent = time.monotonic()
    eve.send("owl-41")
    assert eve.read_line(timeout=10) == WRONG_CODE
    waited = time.monotonic() - sent
    assert waited >= servers_base.WRONG_CODE_DELAY * 0.9, f"answered after {waited:.2f} s"


def answered(peer: Peer) -> bool:
    """Whether the server has said anything to ``peer``, or closed it (nothing is consumed)."""
    peer.sock.setblocking(False)
    try:
        peer.sock.recv(1, socket.MSG_PEEK)
        return True
    except BlockingIOError:
        return False
    finally:
        peer.sock.settimeout(peer.timeout)


def test_a_guess_does_not_hold_a_seat_while_it_waits(start, connect, monkeypatch):
    monkeypatch.setattr(servers_base, "WRONG_CODE_DELAY", 30.0)  # long: the test is no race
    server = start(code=CODE, max_clients=2)
    alice = connect(server)
    alice.expect(CODE_PROMPT)
    alice.send(CODE)
    alice.register("alice")
    eve = connect(server)
    eve.expect(CODE_PROMPT)
    eve.send("owl-41")
    wait_until(lambda: server.connection_count() == 1, message="eve's guess left the room's count")
    assert not answered(eve)  # not yet: her connection waits for the answer, out of the count
    bob = connect(server)  # the second seat is free
    bob.expect(CODE_PROMPT)
    bob.send(CODE)
    bob.register("bob")
    alice.expect("* bob joined")


def test_one_address_has_a_few_guesses_waiting_at_most(start, connect):
    server = start(code=CODE)
    guessers = [connect(server) for _ in range(12)]
    for peer in guessers:
        peer.expect(CODE_PROMPT)
    for i, peer in enumerate(guessers):
        peer.send(f"guess-{i}")
    answers = [peer.read_line(timeout=10) for peer in guessers]
    limit = servers_base.ServerOptions().guesses
    assert answers.count(WRONG_CODE) == limit, answers
    assert answers.count(TOO_MANY_GUESSES) == len(guessers) - limit, answers


def test_hanging_up_does_not_buy_a_faster_guess(start):
    """A plain loop that guesses and hangs up at once, for two seconds: a few guesses a
    second are checked, whatever the model."""
    server = start(code=CODE)
    checked = []
    server.subscribe(
        lambda event: (
            checked.append(event) if event.text == "wrong class code" and event.kind == "error" else None
        )
    )
    began, tries = time.monotonic(), 0
    while time.monotonic() - began < 2.0 and tries < 2000:
        tries += 1
        with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
            sock.recv(4096)  # the prompt
            sock.sendall(b"guess\n")
    seconds = time.monotonic() - began
    time.sleep(servers_base.WRONG_CODE_DELAY + 0.5)  # the last ones are answered
    limit = servers_base.ServerOptions().guesses
    assert len(checked) <= limit * (seconds / servers_base.WRONG_CODE_DELAY + 1), (len(checked), tries)


# --- a full TLS server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, trustme.CA]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context, ca


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("fair", [False, True], ids=["loopback", "fair"])
def test_a_full_tls_server_says_so_in_openssl_s_client(start, tls_contexts, tmp_path, fair):
    server_tls, ca = tls_contexts
    server = start(tls=server_tls, max_clients=1, fair=fair)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    alice = ChatClient(server.host, server.port, "alice", tls=client_tls)
    try:
        ca.cert_pem.write_to_path(str(tmp_path / "class.pem"))
        command = s_client(server.port, tmp_path / "class.pem")
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    finally:
        alice.close()
    assert done.stdout.decode().splitlines() == [SERVER_FULL], done.stderr.decode()[-500:]


def test_a_full_tls_server_stops_at_once_while_a_refused_handshake_waits(start, tls_contexts):
    server_tls, ca = tls_contexts
    server = start(tls=server_tls, max_clients=1)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    alice = ChatClient(server.host, server.port, "alice", tls=client_tls)
    try:
        with socket.create_connection(server.address, timeout=TIMEOUT):  # says nothing
            wait_until(server.outsiders, message="the refused connection is open")
            server.stop(timeout=1.0)  # well within the refused handshake's 5 s
            assert server.threads() == []
    finally:
        alice.close()


# --- two laptops and the server program's defaults, beyond loopback: network namespaces ---------


ATTACK_AND_JOIN = """
    import json, socket, sys, time
    server, port, attacker, student = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    idle = []
    for _ in range(100):  # the attacker: 100 connections that say nothing
        try:
            idle.append(socket.create_connection((server, port), 5, source_address=(attacker, 0)))
        except OSError:
            break
    time.sleep(0.5)

    def join(name):  # an honest student, from another laptop
        sock = socket.create_connection((server, port), 10, source_address=(student, 0))
        lines = sock.makefile("rb")
        first = lines.readline().decode().strip()
        if not first.startswith("* chatlab"):
            return sock, lines, [first]
        sock.sendall(name.encode() + b"\\n")
        return sock, lines, [first, lines.readline().decode().strip()]

    alice, alice_lines, alice_said = join("alice")
    bob, bob_lines, bob_said = join("bob")
    heard = ""
    if bob_said[-1] == "* welcome bob":
        bob_lines.readline()  # who is online
        alice.sendall(b"%bob%hello from the other laptop\\n")
        heard = bob_lines.readline().decode().strip()
    print(json.dumps({"alice": alice_said, "bob": bob_said, "heard": heard, "opened": len(idle)}))
"""


@pytest.fixture(scope="module")
def three_hosts():
    """A server's namespace and a room's namespace with two laptops' addresses (a /29 on a
    veth pair): ``(prefix for the server, prefix for the room, server, attacker, student)``."""
    from test_across_hosts import NETNS_REASON, ip, missing

    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None:
        missing(f"{NETNS_REASON}: not root or no ip command")
    pid = os.getpid()
    subnet = f"10.201.{pid % 256}"
    server_ns, room_ns = f"chatlab-{pid}-door-server", f"chatlab-{pid}-door-room"
    made: list[str] = []
    try:
        for ns in (server_ns, room_ns):
            ip("netns", "add", ns)
            made.append(ns)
        ip("link", "add", f"cdor{pid}s", "type", "veth", "peer", "name", f"cdor{pid}r")
        ends = [(server_ns, f"cdor{pid}s", [".1"]), (room_ns, f"cdor{pid}r", [".2", ".3"])]
        for ns, interface, addresses in ends:
            ip("link", "set", interface, "netns", ns)
            for address in addresses:
                ip("-n", ns, "addr", "add", f"{subnet}{address}/29", "dev", interface)
            ip("-n", ns, "link", "set", interface, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield (
            ("ip", "netns", "exec", server_ns),
            ("ip", "netns", "exec", room_ns),
            f"{subnet}.1",
            f"{subnet}.2",
            f"{subnet}.3",
        )
    except subprocess.CalledProcessError as exc:
        missing(f"{NETNS_REASON}: {exc.cmd} failed: {exc.stderr.strip()}")
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)


@pytest.mark.parametrize("model", ["threads", "selectors", "asyncio"])
def test_on_a_class_network_an_attacker_with_100_idle_connections_locks_nobody_out(three_hosts, model):
    """The server program as an instructor runs it (``--host 0.0.0.0``, no other option): one
    laptop opens 100 silent connections, and two students on another still join and chat."""
    import json
    import textwrap

    on_server, on_room, server_address, attacker, student = three_hosts
    server = Program("chatlab.server", "--host", "0.0.0.0", "--port", "0", "--model", model, prefix=on_server)
    try:
        port = server.wait_for(r"^listening on \S+:(\d+)$", "stdout")[1]
        done = subprocess.run(
            [
                *on_room,
                sys.executable,
                "-c",
                textwrap.dedent(ATTACK_AND_JOIN),
                server_address,
                port,
                attacker,
                student,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.proc.terminate()
        server.finish()
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["alice"] == [GREETING, "* welcome alice"], result
    assert result["bob"] == [GREETING, "* welcome bob"], result
    assert result["heard"] == "%alice%hello from the other laptop", result
