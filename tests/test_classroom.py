"""The classroom guards: TLS (``tls=``, ``--tls-cert``) and a class code (``code=``, ``--code``).

Real TLS with throwaway certificates (trustme), real servers of every model on 127.0.0.1 port
0, and three independent TLS clients: the kit's own :class:`ChatClient`, a stdlib
``ssl``-wrapped raw :class:`Peer`, and ``openssl s_client``. Every wait is bounded.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
import trustme
from transcript import GREETING, Peer, run_together, s_client, wait_until

from chatlab import kit_threads
from chatlab.client import ChatClient, CodeRefused, TlsFailed
from chatlab.servers import MODELS, ServerBase, server_class
from chatlab.servers import base as servers_base
from chatlab.widgets import ChatWidget, close_all

CODE = "owl-42"
CODE_PROMPT = "* chatlab: this chat needs the class code; type it and press Enter"
TLS_REQUIRED = "! this server speaks TLS: use openssl s_client, or the kit's client with --tls"
UTF8_TEXT = "héllo ✓ \u05e9\u05dc\u05d5\u05dd\u200f 🦉"  # accents, a check mark, Hebrew with an RLM, an emoji


# --- certificates and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """What the instructor's server uses: a certificate for 127.0.0.1, signed by the class CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """What a student's client uses: it trusts the class CA (``--cafile``)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def peers():
    """``peers(server, tls=context)`` opens a raw Peer, TLS-wrapped by the standard library if a
    context is given; every peer is closed after the test."""
    opened: list[Peer] = []

    def open_peer(server: ServerBase, tls: ssl.SSLContext | None = None, **options: int) -> Peer:
        peer = Peer(server.address, **options)
        opened.append(peer)
        if tls is not None:
            peer.sock = tls.wrap_socket(peer.sock, server_hostname="127.0.0.1")  # handshakes here
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


@pytest.fixture
def clients():
    """``clients(server, name, **options)`` connects ChatClients, all closed after the test."""
    opened: list[ChatClient] = []

    def open_client(server: ServerBase, name: str, **options: object) -> ChatClient:
        opened.append(ChatClient(server.host, server.port, name, **options))
        return opened[-1]

    yield open_client
    for client in opened:
        client.close()


def register_with_code(peer: Peer, name: str, code: str = CODE) -> None:
    peer.expect(CODE_PROMPT)
    peer.send(code)
    peer.register(name)


def still_open(peer: Peer) -> bool:
    """Whether the server has not closed this raw connection yet (nothing is consumed)."""
    peer.sock.setblocking(False)
    try:
        return peer.sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # nothing to read, and no end of stream either
    except OSError:
        return False
    finally:
        peer.sock.settimeout(peer.timeout)


# --- TLS ---------------------------------------------------------------------------------------


def test_a_direct_message_arrives_byte_exact_over_tls(start, server_tls, client_tls, clients, peers):
    server = start(tls=server_tls)
    alice = clients(server, "alice", tls=client_tls)
    bob = peers(server, tls=client_tls)  # the standard library's TLS, not the kit's
    bob.register("bob")
    assert alice.recv(timeout=5) == "* bob joined"
    alice.send("bob", UTF8_TEXT)
    assert bob._buffer == b""  # nothing read ahead: the next bytes are the message
    raw = bob.sock.recv(4096)
    assert raw == f"%alice%{UTF8_TEXT}\n".encode()
    bob.send(f"%alice%{UTF8_TEXT} back")
    assert alice.recv(timeout=5) == f"%bob%{UTF8_TEXT} back"
    assert {"alice", "bob"} == set(server.online())


def test_the_client_checks_the_certificate_and_says_so_clearly(
    start, server_tls, client_tls, clients, caplog
):
    server = start(tls=server_tls)
    alice = clients(server, "alice", tls=client_tls)
    with pytest.raises(TlsFailed, match=r"certificate of 127\.0\.0\.1:\d+ is not trusted.*--cafile"):
        clients(server, "eve", tls=True)  # the system's CAs do not know the class CA
    other_ca = ssl.create_default_context()
    trustme.CA().configure_trust(other_ca)
    with pytest.raises(TlsFailed, match="not trusted"):
        clients(server, "eve", tls=other_ca)  # a CA, but not the class's
    alice.send("alice", "still here")
    assert alice.recv(timeout=5) == "%alice%still here"
    wait_until(lambda: "TLS handshake failed" in caplog.text, message="the server logs the failure")
    assert server.online() == ["alice"]


def test_a_certificate_for_another_host_is_refused(start, ca, client_tls, clients):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("chat.example.org").configure_cert(context)
    server = start(tls=context)
    with pytest.raises(TlsFailed, match="not trusted: IP address mismatch.*the name or address"):
        clients(server, "alice", tls=client_tls)


def test_a_plaintext_client_on_a_tls_port_is_turned_away_and_nobody_else_notices(
    start, server_tls, client_tls, clients, peers, caplog
):
    server = start(tls=server_tls)
    alice = clients(server, "alice", tls=client_tls)
    bob = clients(server, "bob", tls=client_tls)
    assert alice.recv(timeout=5) == "* bob joined"
    eve = peers(server)
    eve.send("eve")  # what `nc` would send
    assert eve.read_to_eof() == [TLS_REQUIRED]  # in plain text, so nc shows it
    wait_until(lambda: "not a TLS client" in caplog.text, message="the server logs it")
    alice.send("bob", "after eve")
    assert bob.recv(timeout=5) == "%alice%after eve"
    assert alice.pending() == [] and bob.pending() == []  # nobody heard of eve
    assert server.online() == ["alice", "bob"]


def test_a_tls_client_on_a_plain_port_gets_a_clear_error(start, client_tls, clients):
    server = start()
    with pytest.raises(TlsFailed, match="does not speak TLS"):
        clients(server, "alice", tls=client_tls)


@pytest.mark.parametrize("sends", [b"", b"\x16\x03\x01"], ids=["nothing", "half-a-hello"])
def test_a_handshake_that_never_completes_is_dropped_after_the_name_timeout(
    start, server_tls, client_tls, clients, peers, caplog, sends
):
    server = start(tls=server_tls, name_timeout=1.5)
    stalled = peers(server)
    stalled.sock.sendall(sends)
    alice = clients(server, "alice", tls=client_tls)
    bob = clients(server, "bob", tls=client_tls)
    for i in range(3):  # they chat while the stalled connection waits
        alice.send("bob", f"line {i}")
        assert bob.recv(timeout=5) == f"%alice%line {i}"
    assert stalled.read_to_eof(timeout=10) == []  # no keys: nothing can be said to it
    assert "no TLS handshake in time" in caplog.text
    wait_until(lambda: server.connection_count() == 2, message="the stalled connection is forgotten")


def test_a_stalled_handshake_does_not_stall_the_accept(start, server_tls, client_tls, clients, peers):
    server = start(tls=server_tls)  # the default name_timeout: 60 s
    stalled = [peers(server) for _ in range(3)]
    for peer in stalled:
        peer.sock.sendall(b"\x16\x03\x01")
    alice = clients(server, "alice", tls=client_tls)
    assert alice.online == ["alice"]
    assert server.connection_count() == 4


def test_a_damaged_tls_record_ends_only_that_connection(start, server_tls, client_tls, clients, peers):
    server = start(tls=server_tls)
    alice = clients(server, "alice", tls=client_tls)
    eve = peers(server, tls=client_tls)
    eve.register("eve")
    assert alice.recv(timeout=5) == "* eve joined"
    os.write(eve.sock.fileno(), b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # application data, forged
    assert alice.recv(timeout=5) == "* eve left"
    left = [event for event in server.events() if event.kind == "left" and event.client == "eve"]
    assert left[0].text.startswith("connection error"), left
    alice.send("alice", "fine")
    assert alice.recv(timeout=5) == "%alice%fine"


def test_tls_lines_stay_whole_and_in_order_when_a_reader_falls_behind(
    start, server_tls, client_tls, clients, peers
):
    """bob stops reading while alice sends ~600 KB: the encrypted bytes wait in bob's socket and
    outbox (and, in the threads model, for a writer thread); every line arrives, in order."""
    server = start(tls=server_tls)
    bob = peers(server, tls=client_tls, rcvbuf=4096)
    bob.register("bob")
    alice = clients(server, "alice", tls=client_tls)
    bob.expect("* alice joined")
    filler = "x" * 1000
    for i in range(600):
        alice.send("bob", f"{i} {filler}")
    if server.model == "threads":
        wait_until(lambda: "chatlab-writer-bob" in kit_threads(), message="bob fell behind")
    for i in range(600):
        assert bob.read_line(timeout=10) == f"%alice%{i} {filler}"
    assert server.online() == ["alice", "bob"]


def test_many_senders_write_to_one_tls_client_at_once(start, server_tls, client_tls, clients, peers):
    """Four clients send to bob at the same time (in the threads model from four threads): each
    line is encrypted and sent under bob's send lock, so his TLS stream stays intact."""
    server = start(tls=server_tls)
    bob = peers(server, tls=client_tls)
    bob.register("bob")
    senders = [clients(server, f"s{n}", tls=client_tls) for n in range(4)]
    bob.read_until("* s3 joined")

    def send_all(sender: ChatClient) -> None:
        for i in range(200):
            sender.send("bob", f"{i}")

    run_together(send_all, senders, name="test-sender")
    received: dict[str, list[str]] = {sender.name: [] for sender in senders}
    for _ in range(800):
        line = bob.read_line(timeout=10)
        sender, _, text = line[1:].partition("%")
        received[sender].append(text)
    assert all(texts == [str(i) for i in range(200)] for texts in received.values())


def test_tls_with_the_threaded_servers_direct_delivery(server_tls, client_tls, clients):
    server = server_class("threads")("127.0.0.1", 0, tls=server_tls, delivery="direct").start()
    try:
        alice = clients(server, "alice", tls=client_tls)
        bob = clients(server, "bob", tls=client_tls)
        assert alice.recv(timeout=5) == "* bob joined"
        alice.send("bob", UTF8_TEXT)
        assert bob.recv(timeout=5) == f"%alice%{UTF8_TEXT}"
        alice.close()
        assert bob.recv(timeout=5) == "* alice left"
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_s_client_is_the_tls_nc(start, ca, server_tls, tmp_path):
    server = start(tls=server_tls, code=CODE)
    ca.cert_pem.write_to_path(str(tmp_path / "class.pem"))
    command = s_client(server.port, tmp_path / "class.pem")
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as openssl:
        try:
            openssl.stdin.write(f"{CODE}\nalice\n%server%who\n".encode())
            openssl.stdin.flush()
            received = b""
            deadline = time.monotonic() + 20
            while received.count(b"\n") < 5 and time.monotonic() < deadline:
                ready, _, _ = select.select([openssl.stdout], [], [], 0.5)
                if ready:
                    received += os.read(openssl.stdout.fileno(), 4096)
        finally:
            openssl.kill()
    assert received.decode().splitlines() == [
        CODE_PROMPT,
        GREETING,
        "* welcome alice",
        "* online: alice",
        "* online: alice",
    ]


# --- the class code --------------------------------------------------------------------------------


def test_with_the_right_code_registration_goes_on_as_usual(start, peers):
    server = start(code=CODE)
    alice = peers(server)
    register_with_code(alice, "alice")
    bob = peers(server)
    bob.send_raw(f"  {CODE} \r\nbob\r\n".encode())  # nc -C, pasted at once, spaces around
    bob.expect(CODE_PROMPT, GREETING, "* welcome bob", "* online: alice, bob")
    alice.expect("* bob joined")
    bob.send("%alice%hi")
    alice.expect("%bob%hi")


WRONG_GUESSES = {
    "same length": "owl-43",
    "shorter": "owl-4",
    "longer": "owl-421",
    "other case": "OWL-42",
    "empty": "",
    "too long": "x" * 5000,
    "a command": "%server%who",
}


def test_a_wrong_code_is_refused_and_closed_after_a_delay(start, peers, caplog):
    """Seven wrong guesses at once, each on its own connection: each gets the `!` line and is
    closed no sooner than the delay after its guess; alice, online meanwhile, keeps chatting.
    (One address may have three guesses waiting by default: test_door.py; here seven may.)"""
    server = start(code=CODE, guesses=len(WRONG_GUESSES))
    alice = peers(server)
    register_with_code(alice, "alice")
    guessers = {kind: peers(server) for kind in WRONG_GUESSES}
    sent_at = {}
    for kind, eve in guessers.items():
        eve.expect(CODE_PROMPT)
        sent_at[kind] = time.monotonic()
        eve.send(WRONG_GUESSES[kind])
        eve.send("eve")  # not read: one guess per connection
    for kind, eve in guessers.items():
        assert eve.read_to_eof() == ["! wrong class code"], kind
        waited = time.monotonic() - sent_at[kind]
        assert waited >= servers_base.WRONG_CODE_DELAY * 0.9, f"{kind}: closed after {waited:.2f} s"
    assert caplog.text.count("wrong class code") >= len(WRONG_GUESSES)
    assert server.online() == ["alice"]
    alice.send("%alice%nothing happened to me")
    alice.expect("%alice%nothing happened to me")


def test_the_others_chat_and_connect_while_a_wrong_code_waits(start, peers, monkeypatch):
    monkeypatch.setattr(servers_base, "WRONG_CODE_DELAY", 30.0)  # long, so the test is not a race
    server = start(code=CODE)
    alice = peers(server)
    register_with_code(alice, "alice")
    eve = peers(server)
    eve.expect(CODE_PROMPT)
    eve.send("guess")  # answered only after the delay
    wait_until(lambda: server.connection_count() == 1, message="eve's guess left the room's count")
    bob = peers(server)  # accepted and registered while eve's connection waits
    register_with_code(bob, "bob")
    alice.expect("* bob joined")
    for i in range(3):
        bob.send(f"%alice%round {i}")
        alice.expect(f"%bob%round {i}")
    assert still_open(eve)  # eve's wait went on meanwhile, and stopped nobody
    assert server.connection_count() == 2


def test_no_code_in_time_is_told(start, peers):
    server = start(code=CODE, name_timeout=0.5)
    late = peers(server)
    assert late.read_to_eof(timeout=10) == [CODE_PROMPT, "! no class code in time"]


def test_without_a_code_nothing_changes(start, peers, clients):
    server = start()
    alice = peers(server)
    alice.expect(GREETING)  # no question about a code
    alice.send("alice")
    alice.expect("* welcome alice", "* online: alice")
    bob = clients(server, "bob", code="ignored")  # a code nobody asks for is not sent
    assert bob.online == ["alice", "bob"]


def test_the_chat_client_gives_the_code_or_says_what_is_wrong(start, clients):
    server = start(code=CODE)
    alice = clients(server, "alice", code=CODE)
    assert alice.online == ["alice"]
    with pytest.raises(CodeRefused, match="needs a class code"):
        clients(server, "bob")
    with pytest.raises(CodeRefused, match="wrong class code"):
        clients(server, "bob", code="owl-43")
    alice.send("alice", "ok")
    assert alice.recv(timeout=5) == "%alice%ok"


def test_tls_and_a_code_together(start, server_tls, client_tls, clients, peers):
    server = start(tls=server_tls, code=CODE)
    alice = clients(server, "alice", tls=client_tls, code=CODE)
    bob = peers(server, tls=client_tls)
    register_with_code(bob, "bob")
    assert alice.recv(timeout=5) == "* bob joined"
    bob.send(f"%alice%{UTF8_TEXT}")
    assert alice.recv(timeout=5) == f"%bob%{UTF8_TEXT}"
    eve = peers(server, tls=client_tls)
    eve.expect(CODE_PROMPT)
    eve.send("owl-43")
    assert eve.read_to_eof() == ["! wrong class code"]


def test_a_code_is_one_line_of_text():
    for code in ["", "  ", "a\nb"]:
        with pytest.raises(ValueError):
            server_class("threads")("127.0.0.1", 0, code=code)


# --- widgets and programs ------------------------------------------------------------------------------


def test_chat_widgets_with_tls_and_a_code(server_tls, client_tls):
    server = server_class("threads")("127.0.0.1", 0, tls=server_tls, code=CODE).start()
    try:
        alice = ChatWidget(server.host, server.port, "alice", tls=client_tls, code=CODE)
        bob = ChatWidget(server.host, server.port, "bob", tls=client_tls, code=CODE)
        alice.wait_for("* bob joined")
        alice.to.value = "bob"
        alice.text.value = UTF8_TEXT
        alice.send_button.click()
        assert bob.wait_for(UTF8_TEXT) == f"← alice: {UTF8_TEXT}"
        with pytest.raises(CodeRefused):
            ChatWidget(server.host, server.port, "eve", tls=client_tls, code="nope")
    finally:
        close_all()
        server.stop()


@pytest.fixture
def pem_files(ca, tmp_path):
    """The instructor's files: the server's certificate and key, and the class CA for students."""
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "class.pem"))
    return tmp_path


@pytest.mark.parametrize("model", list(MODELS))
def test_the_server_program_with_tls_and_a_code(run, pem_files, client_tls, clients, model):  # noqa: F811
    server = run(
        "chatlab.server",
        "--port",
        "0",
        "--model",
        model,
        "--tls-cert",
        str(pem_files / "server.crt"),
        "--tls-key",
        str(pem_files / "server.key"),
        "--code",
        CODE,
    )
    port = int(server.wait_for(r"^listening on 127\.0\.0\.1:(\d+)$", stream="stdout")[1])
    address = ServerAddress(port)
    alice = clients(address, "alice", tls=client_tls, code=CODE)
    with pytest.raises(CodeRefused):
        clients(address, "eve", tls=client_tls, code="owl-43")
    alice.send("alice", UTF8_TEXT)
    assert alice.recv(timeout=5) == f"%alice%{UTF8_TEXT}"
    server.wait_for(r"TLS established \(TLSv1\.[23]\)")
    server.wait_for(r"\(no name yet\): wrong class code")
    server.proc.send_signal(signal.SIGTERM)  # stop it by its pid
    assert server.finish() == 0


def test_the_server_program_refuses_a_missing_certificate(run, tmp_path):  # noqa: F811
    server = run("chatlab.server", "--port", "0", "--tls-cert", str(tmp_path / "missing.crt"))
    assert server.finish(timeout=30) == 2
    assert "cannot use the certificate" in "\n".join(server.lines["stderr"])


def test_the_terminal_client_with_tls_a_cafile_and_a_code(run, pem_files, start, server_tls, peers):  # noqa: F811
    server = start(tls=server_tls, code=CODE)
    alice = run(
        "chatlab.client",
        "--port",
        str(server.port),
        "--name",
        "alice",
        "--tls",
        "--cafile",
        str(pem_files / "class.pem"),
        "--code",
        CODE,
        stdin=True,
    )
    alice.wait_for(r"^\* you are alice; online: alice$", "stdout")
    bob = peers(server, tls=ssl.create_default_context(cafile=str(pem_files / "class.pem")))
    register_with_code(bob, "bob")
    alice.wait_for(r"^\* bob joined$", "stdout")
    alice.write(f"%bob%{UTF8_TEXT}\n")
    bob.expect(f"%alice%{UTF8_TEXT}")
    alice.write("/quit\n")
    assert alice.finish() == 0
    untrusting = run("chatlab.client", "--port", str(server.port), "--name", "eve", "--tls", "--code", CODE)
    assert untrusting.finish(timeout=30) == 1
    assert "is not trusted" in "\n".join(untrusting.lines["stderr"])


class ServerAddress:
    """A server run by another process, as the ``clients`` fixture wants it."""

    def __init__(self, port: int) -> None:
        self.host, self.port = "127.0.0.1", port
