"""The life of one connection, written once for every model: it reacts, the model applies.

A :class:`Session` sets the socket up, keeps a record, lets the room admit it or refuse it as
full, greets it, hands what it sends to the room, decides why it ended, forgets it and tells
the others. Each call a model makes when something happens (bytes arrived, a pause is over,
the name timeout passed) returns a :class:`Reaction` saying what to do next: read on, pause
reading until a time, close once what waits is sent, or abort. The connection's
:class:`Phase` moves only as the table :data:`TRANSITIONS` says. A model never talks to the
room about a connection in any other way.

What one client can make the server do is bounded here, so every model has the same bounds.
The lines of one read go to the room at most :data:`LINES_PER_TURN` at a time (the rest wait,
and the model serves the others in between); what they send back to their own sender (the
answer to ``%server%who``, say) is written to its transport before the next batch is built,
so it counts against ``max_backlog``. A client that sends more than :data:`BAD_LINES` malformed
lines (too long, not UTF-8, control characters, not ``%name%text``, not a name) in a short
while is told ``! too many bad lines`` and closed; and the log shows the first few lines
refused of any client and then only a summary, however many it sent. Every connection gets
TCP keepalive (:func:`~chatlab.portable.keep_alive`), so one whose laptop vanished ends.

How a connection ends, whatever the model: when the client hangs up (or resets), lines it
sent that the server has read but not handed over yet (they wait under flood control, or for
their turn) are dropped, and the log says how many. A client paused by flood control is
looked at (:func:`~chatlab.portable.peer_gone`) at every pause, so one that hung up leaves
within a tenth of a second, not once its lines have trickled out.

Two guards sit at the door of a session, both optional and both here, so every model has
them: TLS (``tls=``, an :class:`ssl.SSLContext`; the handshake happens in :meth:`Session.receive`
through a :class:`~chatlab.tls.TlsLayer`, the model's transport is wrapped in a
:class:`~chatlab.tls.TlsTransport`, and the greeting follows the handshake) and a class code
(``code=``: the greeting asks for it, and the first line must be it; a wrong one is answered
only after ``WRONG_CODE_DELAY``, out of the room's count meanwhile). Both count against one
deadline, ``name_timeout`` from the accept (:attr:`Session.deadline`): a connection has that
long to finish its handshake, give the code and register, however it trickles its bytes.
Who may come in at all, how many at once and how fast, is the server's :class:`~chatlab.door.Door`:
:meth:`Session.open` asks it, and the session tells it when its client is named and when it left.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..door import TOO_MANY_GUESSES
from ..flood import Throttle, TokenBucket, slow_down
from ..portable import keep_alive, peer_gone
from ..room import LOGGED_REFUSALS, ClientRecord
from ..tls import NotTls, TlsLayer, TlsTransport
from . import base as _base  # WRONG_CODE_DELAY read when used: a test may change it
from .base import FULL_HANDSHAKE_TIMEOUT, SEND_BUFFER, connection_error

if TYPE_CHECKING:  # a type only: base.py does not import this module
    from .base import ServerBase

__all__ = [
    "ABORT",
    "BAD_LINES",
    "LINES_PER_TURN",
    "READ_ON",
    "TOO_MANY_BAD_LINES",
    "TRANSITIONS",
    "Phase",
    "Reaction",
    "Session",
    "Then",
]

log = logging.getLogger("chatlab.server")

# The most lines of one client the room handles before the model serves the others again: a
# read of 64 KiB of newlines is 65,536 lines, and an event loop must not spend a second on it.
LINES_PER_TURN = 256
# A connection may send this many malformed lines at once, and one more every BAD_LINE_SECONDS;
# past that it is closed: a person mistypes now and then, a script floods.
BAD_LINES = 10
BAD_LINE_SECONDS = 6.0
TOO_MANY_BAD_LINES = "too many bad lines"
# A pause this short lets the model serve the other clients before it calls resume().
NEXT_TURN = 1e-6


class Phase(enum.Enum):
    """Where one connection is in its life. :data:`TRANSITIONS` says how it moves on."""

    HANDSHAKE = "TLS handshake"  # TLS: the keys are being agreed; nothing can be said yet
    CODE = "class code"  # the greeting asked for the class code
    NAME = "name"  # the greeting asked for a name
    CHAT = "chat"  # registered: its lines are chat
    TURNED_AWAY = "turned away"  # refused: nothing more is read, and it closes soon
    OVER = "over"  # the connection is over: the room has forgotten it


TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    # (phase, what happened): the next phase
    (Phase.HANDSHAKE, "TLS established"): Phase.NAME,
    (Phase.HANDSHAKE, "TLS established, code asked"): Phase.CODE,
    (Phase.HANDSHAKE, "not a TLS client"): Phase.TURNED_AWAY,
    (Phase.HANDSHAKE, "TLS handshake failed"): Phase.TURNED_AWAY,
    (Phase.HANDSHAKE, "TLS established, server full"): Phase.TURNED_AWAY,
    (Phase.HANDSHAKE, "timed out"): Phase.OVER,
    (Phase.CODE, "right code"): Phase.NAME,
    (Phase.CODE, "wrong code"): Phase.TURNED_AWAY,
    (Phase.CODE, "timed out"): Phase.OVER,
    (Phase.NAME, "registered"): Phase.CHAT,
    (Phase.NAME, "server full"): Phase.TURNED_AWAY,
    (Phase.NAME, "timed out"): Phase.OVER,
    # Whatever the phase, a connection can end: the client hangs up, an error, a stop.
    **{(phase, "ended"): Phase.OVER for phase in Phase},
}
"""Every move a connection's phase can make; :meth:`Session._move` allows no other."""


class Then(enum.Enum):
    """What the model does with a connection next (the ``then`` of a :class:`Reaction`)."""

    READ = "read"  # read its socket again
    PAUSE = "pause"  # read nothing until ``at``, then call Session.resume()
    CLOSE = "close"  # read nothing more; close it once what waits is sent
    ABORT = "abort"  # close it now (an error): what waits for it is dropped


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a :class:`Session` asks its model to do next, after it has written what it had to.

    Everything a session says to its client goes out through the client's transport, before
    the session returns; the reaction is only what comes next, like h11's ``NEED_DATA`` or
    ``PAUSED``: read on, pause reading until ``at``, close, or abort.
    """

    then: Then
    at: float | None = None  # PAUSE: when to call resume()


READ_ON = Reaction(Then.READ)  # the common answers, made once
CLOSE_WHEN_SENT = Reaction(Then.CLOSE)
ABORT = Reaction(Then.ABORT)
_CHAT, _NAME = Phase.CHAT, Phase.NAME  # quicker to look up than Phase.CHAT, once per message


class Session:
    """The life of one connection, the same in every server model; it reacts, the model applies.

    In order: the model accepts a socket and makes a ``Session`` (which sets the socket up and
    keeps a :class:`ClientRecord`), gives it the transport the model built (:meth:`attach`:
    with TLS the session wraps it, :class:`~chatlab.tls.TlsTransport`), and calls :meth:`open`
    (admitted and greeted, or refused as full). Then three calls, each answered with a
    :class:`Reaction` the model applies: :meth:`receive` for every piece of bytes that arrives,
    :meth:`resume` when a pause it asked for is over, :meth:`timed_out` at its :attr:`deadline`
    (``name_timeout`` after the accept; :meth:`time_left` says how long that is). Once the
    connection is over, :meth:`leave` (the room forgets the client) and, after the socket is
    closed, :meth:`departed` (the others hear it left).

    ``phase`` is where the connection is (:class:`Phase`); its moves are the table
    :data:`TRANSITIONS`. Which thread calls these is the model's business; a session is only
    ever used by one thread at a time. Error handling: a damaged TLS record or a bug while
    handling a read ends only this connection (``ABORT``); the reason is kept in ``reason``.
    """

    __slots__ = (
        "server",
        "room",
        "record",
        "transport",
        "framer",
        "phase",
        "reason",
        "announce",
        "tls",
        "throttle",
        "linger",
        "left",
        "waiting",
        "malformed_seen",
        "bad_lines",
        "door",
        "deadline",
        "refusal",
        "answer",
        "at_door",
        "seated",
        "admitted",
    )

    def __init__(
        self,
        server: ServerBase,
        sock: socket.socket,
        address: tuple[str, int],
        *,
        send_buffer: int | None = SEND_BUFFER,
    ) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # send short lines at once
        keep_alive(sock)  # a laptop that vanished from the network is noticed, and its name freed
        if send_buffer is not None:  # what the kernel holds counts as "behind" too: bound it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        options = server.options
        now = time.monotonic()
        self.server = server
        self.room = server.room
        self.record = ClientRecord(ip=address[0], port=address[1], sock=sock, fd=sock.fileno())
        self.transport: Any = None  # the model's own transport (record.transport may wrap it)
        self.framer = protocol.LineFramer(options.max_line)
        self.reason = "disconnected"  # why it ended, once it has
        self.announce = False  # whether it was online, so that the others hear it left
        # With TLS, what the socket reads is decrypted here first, and what the room writes is
        # encrypted by the transport's wrapper; the greeting waits for the end of the handshake.
        self.tls = None if options.tls is None else TlsLayer(options.tls, server_side=True)
        if self.tls is not None:
            self.phase = Phase.HANDSHAKE
        else:
            self.phase = Phase.NAME if options.code is None else Phase.CODE
        # The door: one deadline for handshake, code and name, counted from the accept.
        self.door = server.door
        self.deadline = None if options.name_timeout is None else now + options.name_timeout
        self.refusal = protocol.SERVER_FULL  # what the model tells it if open() refuses it
        self.answer: bytes | None = None  # a line owed: after the TLS handshake, or a code's delay
        self.at_door = False  # counted by a fair door as not named yet
        self.seated = False  # counted by a fair door as named
        self.admitted = False  # the room took it in
        # Flood control (``rate``): the client's token bucket and the lines waiting for tokens;
        # with a fair door the bucket is shared by every connection from its address.
        shared = None if options.rate is None else server.door.bucket(address[0], now)
        if shared is not None:
            self.throttle: Throttle | None = Throttle(shared)
        else:
            self.throttle = None if options.rate is None else Throttle.for_rate(options.rate, now)
        self.linger = READ_ON  # once turned away: the CLOSE its model applies
        self.left = False
        self.waiting: list = []  # lines read (and let through by the throttle) waiting for their turn
        self.malformed_seen = 0  # the record's count of malformed lines when it was last looked at
        self.bad_lines: TokenBucket | None = None  # made at the first malformed line

    def _move(self, event: str) -> None:
        """Move on to the next phase after ``event``, as :data:`TRANSITIONS` says."""
        self.phase = TRANSITIONS[self.phase, event]

    def attach(self, transport: Any) -> None:
        """Give the session the transport the model built for it (before :meth:`open`).

        With TLS the record gets a :class:`~chatlab.tls.TlsTransport` around it, so everything
        the room writes is encrypted once, in one place, whatever the model.
        """
        self.transport = transport
        self.record.transport = transport if self.tls is None else TlsTransport(transport, self.tls)

    def open(self) -> bool:
        """Let the connection in (the door, then the room) and greet it; False if it is refused.

        When it is refused, the model sends ``refusal`` (``! server full``, or why the door
        said no) and closes the socket (:func:`refuse_full`); nothing else has happened to it.
        With TLS the greeting comes once the handshake is done (in :meth:`receive`), and so
        does ``! server full``: the client could not read it before (FULL_HANDSHAKE_TIMEOUT).
        """
        record, now = self.record, time.monotonic()
        refusal = self.door.enter(record.ip, now)
        if refusal is not None:
            log.warning("%s:%d refused: %s", record.ip, record.port, refusal.decode().strip("! \n"))
            self.refusal = refusal
            return False
        self.at_door = self.door.fair
        if self.door.full():
            log.warning("%s:%d refused: server full", record.ip, record.port)
        elif self.room.admit(record):  # it logs a refusal itself
            self.admitted = True
            if self.tls is None:
                self.greet()
            return True
        if self.tls is not None:  # say it after the handshake, in words the client can read
            self.server.outside(record, there=True)  # stop() closes it too
            self.answer = protocol.SERVER_FULL
            soon = now + FULL_HANDSHAKE_TIMEOUT
            self.deadline = soon if self.deadline is None else min(self.deadline, soon)
            return True
        self.leave()
        return False

    def time_left(self, now: float) -> float | None:
        """Seconds until the :attr:`deadline` (a little more than 0 once it has passed), or
        None if there is none: for a model whose wait is a socket's timeout."""
        return None if self.deadline is None else max(self.deadline - now, 1e-3)

    def greet(self) -> None:
        """Ask for the class code if the server has one, else for the name."""
        self.room.send(self.record, protocol.CODE_PROMPT if self.phase is Phase.CODE else protocol.GREETING)

    def _send_as_is(self, data: bytes) -> None:
        """Send bytes past the TLS wrapper: the handshake's own messages, a plain-text refusal."""
        with self.record.send_lock:
            if data:
                self.transport.write(data)

    def receive(self, data: bytes, now: float) -> Reaction:
        """Bytes arrived from the socket: decrypt them (TLS), cut them into lines, hand the
        lines to the room, and say what the model does next."""
        try:
            if self.phase is not _CHAT:
                return self._receive_before_chat(data, now)
            if self.tls is not None:
                data = self.tls.receive(data)  # a damaged record raises: the connection is over
            self.record.bytes_in += len(data)
            return self._handle(self.framer.feed(data), now)
        except OSError as exc:  # a damaged TLS record: the connection is over
            self.reason = connection_error(exc)
            return ABORT
        except Exception:  # a bug: say so; the model ends this connection, the others carry on
            self.failed()
            return ABORT

    def _receive_before_chat(self, data: bytes, now: float) -> Reaction:
        """:meth:`receive` in the phases before the chat: the handshake, the code, the name."""
        if self.phase is Phase.TURNED_AWAY:
            return self.linger  # what it still sends is not read
        if self.deadline is not None and now >= self.deadline:  # trickling bytes buys no time
            return self.timed_out(now)
        if self.tls is not None:
            data = self._decrypt(data, now)
            if self.phase is Phase.TURNED_AWAY:
                return self.linger
            if not data:
                return READ_ON
        self.record.bytes_in += len(data)
        lines = self.framer.feed(data)
        if self.phase is Phase.CODE and lines:
            ip, answer_at = self.record.ip, now + _base.WRONG_CODE_DELAY
            if not self.door.guess(ip, now, answer_at):  # not checked, so it may hear it at once
                return self._turn_away("wrong code", "too many class code guesses", TOO_MANY_GUESSES)
            if not protocol.code_matches(lines[0], self.server.options.code or ""):
                return self._answer_later("wrong class code", protocol.WRONG_CODE, answer_at)
            self.door.right(ip, answer_at)
            self._move("right code")
            log.info("%s:%d gave the class code", self.record.ip, self.record.port)
            self.room.send(self.record, protocol.GREETING)
            del lines[0]
        return self._handle(lines, now)

    def _decrypt(self, data: bytes, now: float) -> bytes:
        """TLS: the plaintext in ``data`` (b"" during the handshake, whose answers go out here)."""
        assert self.tls is not None
        if self.phase is not Phase.HANDSHAKE:
            return self.tls.receive(data)  # a damaged record raises: the connection is over
        try:
            plaintext = self.tls.receive(data)
        except NotTls:
            self._turn_away("not a TLS client", "not a TLS client")
            self._send_as_is(protocol.TLS_REQUIRED)  # in plain text, the one thing it can read
            return b""
        except ssl.SSLError as exc:
            reason = f"TLS handshake failed: {exc.reason or exc}"
            self._turn_away("TLS handshake failed", reason)
            return b""
        self._send_as_is(self.tls.outgoing())  # the handshake's own messages
        if self.tls.established and self.answer is not None:  # full (logged at open): say so now
            self.room.send(self.record, self.answer)
            self.answer, self.reason, self.linger = None, "server full", CLOSE_WHEN_SENT
            self._move("TLS established, server full")
        elif self.tls.established:
            log.info("%s:%d TLS established (%s)", self.record.ip, self.record.port, self.tls.version)
            code_asked = self.server.options.code is not None
            self._move("TLS established, code asked" if code_asked else "TLS established")
            self.greet()  # encrypted, after the handshake's last messages
        return plaintext

    def _handle(self, lines: list, now: float) -> Reaction:
        """Hand lines to the room, at most :data:`LINES_PER_TURN` of them (the rest wait for
        :meth:`resume`, after the model has served the others); with a ``rate``, only those
        that have tokens now, and the client is told once that its lines wait."""
        record = self.record
        if (  # the common case, once per read: a named client, no rate, a few lines, none waiting
            self.phase is _CHAT
            and self.throttle is None
            and not self.waiting
            and len(lines) <= LINES_PER_TURN
        ):
            self.room.handle_lines(record, lines)
            if record.malformed != self.malformed_seen and self._too_many_malformed(now):
                return CLOSE_WHEN_SENT
            return READ_ON
        throttle = self.throttle
        seated = self.phase is _NAME and self.at_door  # a fair door: a name needs a free seat
        if seated and not self.door.seat(record.ip):
            return self._turn_away("server full", "server full", protocol.SERVER_FULL)
        if throttle is not None:
            lines = throttle.admit(lines, now)  # the rest wait in the throttle, in order
        if self.waiting or len(lines) > LINES_PER_TURN:
            self.waiting += lines
            lines = self.waiting[:LINES_PER_TURN]
            del self.waiting[:LINES_PER_TURN]
        try:
            self.room.handle_lines(record, lines)
        finally:
            if seated and record.name is None:
                self.door.unseat(record.ip)  # not named: back at the door
            elif seated:
                self.at_door, self.seated = False, True
        if self.phase is _NAME and record.name is not None:
            self._move("registered")
        if record.malformed != self.malformed_seen and self._too_many_malformed(now):
            return CLOSE_WHEN_SENT
        if record.too_slow:  # dropped: nothing more is handled; leave() counts what waits
            return READ_ON
        if throttle is not None and throttle.waiting and not throttle.told:  # once; its log line too
            throttle.told = True
            self.room.refuse(record, slow_down(throttle.bucket.rate))
        if self.waiting:
            return Reaction(Then.PAUSE, now + NEXT_TURN)  # the others first, then the next batch
        if throttle is None or not (delay := throttle.wait(now)):
            return READ_ON
        return Reaction(Then.PAUSE, now + delay)  # over the flood rate: read it again later

    def _too_many_malformed(self, now: float) -> bool:
        """Malformed lines came: True if that was too many (the client is told, and the model
        closes the connection), False while it stays within :data:`BAD_LINES`."""
        record = self.record
        new, self.malformed_seen = record.malformed - self.malformed_seen, record.malformed
        if self.bad_lines is None:
            self.bad_lines = TokenBucket(1 / BAD_LINE_SECONDS, BAD_LINES, BAD_LINES, now)
        if self.bad_lines.take(new, now) == new:
            return False
        self.reason = TOO_MANY_BAD_LINES
        log.warning("%s: %d malformed lines; closing it: %s", record.label, record.malformed, self.reason)
        self.room.send(record, protocol.format_error(TOO_MANY_BAD_LINES))
        return True

    def _drop_waiting(self) -> int:
        """Forget the lines that wait (read, not handed to the room yet); how many there were."""
        dropped = len(self.waiting)
        self.waiting.clear()
        if self.throttle is not None:
            dropped += len(self.throttle.waiting)
            self.throttle.waiting.clear()
        return dropped

    def resume(self, now: float) -> Reaction:
        """The pause is over. Hand the room the next waiting lines (with flood control, those
        that have tokens now); READ once none wait, else PAUSE again. A client paused by flood
        control that has hung up meanwhile is not waited for: ABORT (its lines are dropped)."""
        try:
            if self.phase is Phase.TURNED_AWAY:  # a wrong code's delay is over: answer, close
                if self.answer is not None:
                    self.room.refuse(self.record, self.reason, self.answer)
                    self.answer = None
                return CLOSE_WHEN_SENT
            if self.throttle is not None and (gone := peer_gone(self.record.sock)):
                self.reason = gone
                return ABORT
            return self._handle([], now)
        except Exception:  # a bug: say so; the model ends this connection
            self.failed()
            return ABORT

    def timed_out(self, now: float) -> Reaction:
        """The :attr:`deadline` has passed: READ if the client registered in time (or was
        turned away meanwhile: nothing to do), else tell it why and CLOSE."""
        if self.phase not in (Phase.HANDSHAKE, Phase.CODE, Phase.NAME):
            return READ_ON
        if self.phase is Phase.HANDSHAKE:
            self.reason = "no TLS handshake in time"  # nothing can be said to it: no keys yet
        elif self.phase is Phase.CODE:
            self.reason = "no class code in time"
        else:
            self.reason = "no name in time"
        self._move("timed out")
        self.room.refuse(self.record, self.reason)
        return CLOSE_WHEN_SENT

    def _turn_away(self, event: str, reason: str, reply: bytes | None = None) -> Reaction:
        """Refuse this connection (logged, and told if it can be: before the TLS handshake is
        done nothing can); the model closes it once that is sent, reading nothing more."""
        self.room.refuse(self.record, reason, reply)
        self.reason = reason
        self._move(event)
        self.linger = CLOSE_WHEN_SENT
        return self.linger

    def _answer_later(self, reason: str, reply: bytes, at: float) -> Reaction:
        """A wrong class code: out of the room's count now; the model pauses it until ``at``,
        then :meth:`resume` gives the answer and closes it. Hanging up meanwhile tells the
        guesser nothing sooner."""
        self.room.remove(self.record)
        self.reason, self.answer = reason, reply
        self._move("wrong code")
        self.linger = Reaction(Then.PAUSE, at)
        return self.linger

    def failed(self) -> None:
        """A bug in the server while handling this client (call it in ``except``): log it.
        The model then ends this connection; every other client carries on."""
        log.exception("%s: unexpected error", self.record.label)
        self.reason = "server error"

    def leave(self, reason: str | None = None) -> None:
        """The connection is over: the room forgets the client, so nothing more is routed to it.

        ``reason`` says why, unless an earlier step already did; a client the room dropped
        left "too slow", and every client of a stopping server "server stopped". Safe to call
        twice (the second call does nothing).
        """
        if self.left:
            return
        self.left = True
        self._move("ended")
        if self.at_door or self.seated:
            self.door.leave(self.record.ip, joining=self.at_door, seated=self.seated)
            self.at_door = self.seated = False
        if not self.admitted:
            self.server.outside(self.record, there=False)
        if self.server.stopping:
            self.reason = "server stopped"
        elif self.record.too_slow:
            self.reason = "too slow"
        elif reason is not None and self.reason == "disconnected":
            self.reason = reason
        if self.framer.pending:
            log.info("%s left mid-line; dropped %d bytes", self.record.label, self.framer.pending)
        if dropped := self._drop_waiting():
            log.info("%s left; dropped %d lines it sent that were still waiting", self.record.label, dropped)
        if (unlogged := self.record.refused - LOGGED_REFUSALS) > 0:
            log.info("%s: %d more lines refused (not logged one by one)", self.record.label, unlogged)
        self.announce = self.room.remove(self.record)  # it was online: the others saw it

    def departed(self) -> None:
        """The socket is closed: log why the client left and, if it was online, tell the others
        (unless the server is stopping meanwhile: then everyone is leaving)."""
        self.leave()
        if self.admitted:
            self.room.departed(self.record, self.reason, self.announce and not self.server.stopping)
        else:  # turned away at the door: the room never had it
            log.info("%s:%d closed (%s)", self.record.ip, self.record.port, self.reason)
