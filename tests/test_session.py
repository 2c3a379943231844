"""A connection's life without a model: the phase table, and the reactions a model applies.

Like h11's tests, these push bytes into a :class:`Session` and read what it wrote and what it
asks for next (a :class:`Reaction`), with no event loop and no thread. The socket is a TCP
socket that is never connected (the session only sets its options); every write goes to a
transport that keeps it. The models apply these same reactions: tests/test_models.py runs them
over real sockets.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import trustme
from transcript import KeptWrites

from chatlab import protocol
from chatlab.servers.base import WRONG_CODE_DELAY, ServerBase, ServerOptions
from chatlab.servers.session import ABORT, READ_ON, TRANSITIONS, Phase, Reaction, Session, Then
from chatlab.tls import TlsLayer


@pytest.fixture
def session_of():
    sockets: list[socket.socket] = []

    def make(**options) -> tuple[Session, KeptWrites]:
        server = ServerBase("127.0.0.1", 0, **options)  # never started: a room and its options
        sock = socket.socket()  # never connected
        sockets.append(sock)
        session = Session(server, sock, ("127.0.0.1", 40000 + len(sockets)))
        transport = KeptWrites()
        session.attach(transport)
        assert session.open()
        return session, transport

    yield make
    for sock in sockets:
        sock.close()


# --- the phase table -------------------------------------------------------------------------


def test_every_phase_can_end_and_only_the_chat_is_reached_by_registering():
    assert all(TRANSITIONS[phase, "ended"] is Phase.OVER for phase in Phase)
    assert [key for key, to in TRANSITIONS.items() if to is Phase.CHAT] == [(Phase.NAME, "registered")]


def test_every_phase_is_reached_from_a_first_phase():
    reached = {Phase.HANDSHAKE, Phase.CODE, Phase.NAME}  # where a connection starts
    for _ in range(len(Phase)):
        reached |= {to for (start, _event), to in TRANSITIONS.items() if start in reached}
    assert reached == set(Phase)


def test_a_move_the_table_does_not_have_is_a_bug(session_of):
    session, _ = session_of()
    with pytest.raises(KeyError):
        session._move("right code")  # no code was asked


# --- reactions -------------------------------------------------------------------------------


def test_a_name_registers_and_the_model_reads_on(session_of):
    session, transport = session_of()
    assert session.phase is Phase.NAME
    assert transport.taken() == protocol.GREETING
    assert session.receive(b"alice\n", now=0.0) is READ_ON
    assert session.phase is Phase.CHAT
    assert b"* welcome alice" in transport.taken()
    assert session.receive(b"%alice%hi\n", now=0.0) is READ_ON
    assert transport.taken() == b"%alice%hi\n"


def test_a_wrong_code_is_answered_after_the_delay_and_nothing_more_is_read(session_of):
    session, transport = session_of(code="owl-42")
    assert transport.taken() == protocol.CODE_PROMPT
    reaction = session.receive(b"owl-41\nalice\n", now=10.0)
    assert reaction == Reaction(Then.PAUSE, 10.0 + WRONG_CODE_DELAY)  # no answer yet
    assert session.phase is Phase.TURNED_AWAY and session.reason == "wrong class code"
    assert transport.taken() == b""
    assert session.server.connection_count() == 0  # out of the room's count meanwhile
    assert session.receive(b"owl-42\n", now=10.5) == reaction  # not read: the same answer
    assert session.resume(now=10.0 + WRONG_CODE_DELAY) == Reaction(Then.CLOSE)
    assert transport.taken() == protocol.WRONG_CODE


def test_the_right_code_asks_for_the_name(session_of):
    session, transport = session_of(code="owl-42")
    transport.taken()
    assert session.receive(b"owl-42\nalice\n", now=0.0) is READ_ON
    assert session.phase is Phase.CHAT
    assert transport.taken().startswith(protocol.GREETING + b"* welcome alice")


@pytest.mark.parametrize(
    ("options", "reason"), [({}, "no name in time"), ({"code": "owl-42"}, "no class code in time")]
)
def test_no_name_in_time_is_told_and_closed_once_sent(session_of, options, reason):
    session, transport = session_of(**options)
    transport.taken()
    assert session.timed_out(now=60.0) == Reaction(Then.CLOSE)
    assert session.phase is Phase.OVER and session.reason == reason
    assert transport.taken() == protocol.format_error(reason)


def test_a_name_timeout_after_registering_changes_nothing(session_of):
    session, transport = session_of()
    session.receive(b"alice\n", now=0.0)
    transport.taken()
    assert session.timed_out(now=60.0) is READ_ON
    assert session.phase is Phase.CHAT and transport.taken() == b""


def test_a_flood_pauses_reading_until_tokens_come_back(session_of):
    session, transport = session_of(rate=10.0)  # a burst of 20 lines, then 10 a second
    start = time.monotonic()  # the bucket was filled at this clock's "now"
    session.receive(b"alice\n", now=start)
    transport.taken()
    reaction = session.receive(b"".join(b"%%*%%line %d\n" % i for i in range(40)), now=start)
    assert reaction.then is Then.PAUSE and reaction.at is not None and reaction.at > start
    assert b"slow down" in transport.taken()
    now = reaction.at
    for _ in range(100):  # the 20 waiting lines come back in batches of one tick's worth
        reaction = session.resume(now)
        if reaction is READ_ON:
            break
        assert reaction.then is Then.PAUSE and reaction.at is not None
        now = reaction.at
    assert reaction is READ_ON


def test_a_damaged_tls_record_aborts_only_this_connection(session_of, tls_pair):
    server_tls, client_tls = tls_pair
    session, transport = session_of(tls=server_tls)
    client = handshake(session, transport, client_tls)
    assert session.receive(b"\x17\x03\x03\x00\x05hello", now=0.0) is ABORT  # not a real record
    assert session.reason.startswith("connection error")
    assert client is not None


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def handshake(session: Session, transport: KeptWrites, client_tls: ssl.SSLContext) -> TlsLayer:
    """Pass the handshake's messages between a client's TLS layer and the session."""
    client = TlsLayer(client_tls, server_side=False, server_hostname="127.0.0.1")
    to_server = client.start()
    for _ in range(10):  # a TLS 1.3 handshake takes two flights each way
        assert session.receive(to_server, now=0.0) is READ_ON
        plaintext = client.receive(transport.taken())
        to_server = client.outgoing()
        if session.phase is not Phase.HANDSHAKE and plaintext:
            assert plaintext == protocol.GREETING
            return client
    raise AssertionError("the handshake did not end")


def test_the_greeting_follows_the_handshake_encrypted(session_of, tls_pair):
    server_tls, client_tls = tls_pair
    session, transport = session_of(tls=server_tls)
    assert session.phase is Phase.HANDSHAKE and transport.taken() == b""  # no keys: no greeting
    client = handshake(session, transport, client_tls)
    assert session.phase is Phase.NAME
    assert session.receive(client.encrypt(b"alice\n"), now=0.0) is READ_ON
    assert client.receive(transport.taken()).startswith(b"* welcome alice")


def test_a_plain_text_client_of_a_tls_server_is_told_in_plain_text(session_of, tls_pair):
    session, transport = session_of(tls=tls_pair[0])
    reaction = session.receive(b"alice\n", now=5.0)
    assert reaction == Reaction(Then.CLOSE)  # once it is told
    assert session.phase is Phase.TURNED_AWAY and session.reason == "not a TLS client"
    assert transport.taken() == protocol.TLS_REQUIRED


def test_options_are_checked_once_when_made():
    with pytest.raises(ValueError, match="rate"):
        ServerOptions(rate=0)
    with pytest.raises(ValueError, match="class code"):
        ServerOptions(code=" ")
    with pytest.raises(ValueError, match="delivery"):
        ServerOptions(delivery="later")
    with pytest.raises(ValueError, match="queue"):
        ServerOptions(delivery="direct", redis="redis://127.0.0.1:6379/0")
    with pytest.raises(AttributeError):
        ServerOptions().rate = 5.0  # type: ignore[misc]  # frozen
