"""What every server model shares: the listening socket, and the life of one connection.

A chat server is the room of :mod:`chatlab.room` plus sockets plus a way of waiting for many
sockets at once. The first two are the same in every model and live here; the third is the
whole difference between the models (:mod:`chatlab.servers`).

:class:`ServerBase` owns the listening socket: :meth:`~ServerBase.start` binds it and returns
once the real port is known, :meth:`~ServerBase.stop` closes everything and joins every thread,
and the rest is a read-only view of the room for dashboards. A model adds ``_run`` (start
serving in the background) and ``_halt`` (end every connection and join its threads).

:class:`Session` is the life of one connection, written once: set the socket up, keep a
record, let the room admit it or refuse it as full, greet it, hand what it sends to the room,
decide why it ended, forget it and tell the others. It reacts; the model applies. Each call a
model makes when something happens (bytes arrived, a pause is over, the name timeout passed)
returns a :class:`Reaction` saying what to do next: read on, pause reading until a time, close
once what waits is sent, or abort. The connection's :class:`Phase` moves only as the table
:data:`TRANSITIONS` says. A model never talks to the room about a connection in any other way.

Two guards sit at the door of a session, both optional and both here, so every model has
them: TLS (``tls=``, an :class:`ssl.SSLContext`; the handshake happens in :meth:`Session.receive`
through a :class:`~chatlab.tls.TlsLayer`, the model's transport is wrapped in a
:class:`~chatlab.tls.TlsTransport`, and the greeting follows the handshake) and a class code
(``code=``: the greeting asks for it, and the first line must be it). Both count against
``name_timeout``: from the accept, a connection has that long to finish its handshake, give
the code and register.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..flood import Throttle, slow_down
from ..portable import make_listener
from ..room import ChatRoom, ClientRecord, ServerEvent
from ..tls import NotTls, TlsLayer, TlsTransport

__all__ = [
    "ABORT",
    "READ_ON",
    "TRANSITIONS",
    "Outbox",
    "Phase",
    "Reaction",
    "ServerBase",
    "ServerOptions",
    "Session",
    "Then",
    "refuse_full",
    "shutdown",
]

log = logging.getLogger("chatlab.server")

RECV_SIZE = 65536  # read big chunks while a client sends a lot
# The kernel's own send buffer for a client. Left to itself Linux grows it to megabytes, which
# would hide a client that stopped reading long before ``max_backlog`` noticed it. (Linux
# doubles the value asked for, for its own bookkeeping: getsockopt then reports 131072.)
SEND_BUFFER = 64 * 1024
DRAIN_TIMEOUT = 1.0  # how long a leaving client may take to read what is still queued for it
DEFAULT_PORT = 5050
# How long a connection that gave a wrong class code stays open (unread) before it is closed:
# a script that waits for the end of each try cannot guess fast.
WRONG_CODE_DELAY = 1.0
DELIVERY_MODES = ("queue", "direct")  # how the threaded server hands a line to its receiver


class Outbox:
    """The bytes waiting for a client that is behind: its socket would not take them yet.

    It holds at most ``limit`` bytes. When more would not fit, :meth:`put` returns False, once,
    and the outbox closes: the server then drops that client instead of waiting for it. It has
    no lock of its own: whoever calls it holds the client's ``send_lock``.
    """

    __slots__ = ("limit", "_data", "closed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self.closed = False

    def __len__(self) -> int:
        return len(self._data)

    def put(self, data: bytes) -> bool:
        if self.closed:
            return True  # the client is leaving; there is nobody to write to
        if len(self._data) + len(data) > self.limit:
            self.closed = True  # refuse once; ignore what follows
            return False
        self._data += data
        return True

    def take(self) -> bytes:
        """Everything queued, in one piece (b"" if nothing is)."""
        data = bytes(self._data)
        self._data.clear()
        return data

    def send_some(self, sock: socket.socket) -> int:
        """Send what a non-blocking ``sock`` takes now, and keep the rest; returns the count."""
        try:
            sent = sock.send(self._data)
        except BlockingIOError:
            return 0
        del self._data[:sent]
        return sent

    def close(self) -> None:
        self.closed = True


def shutdown(sock: socket.socket) -> None:
    """Wake every thread blocked on ``sock``: recv returns b'' and sendall fails."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down, or never connected


def refuse_full(sock: socket.socket) -> None:
    """Tell a new connection that the server is full, and close it.

    A few bytes into the empty send buffer of a new socket: this does not wait.
    """
    try:
        sock.sendall(protocol.SERVER_FULL)
    except OSError:
        pass
    sock.close()


def connection_error(exc: BaseException) -> str:
    """Why a connection ended, in a few words: ``connection error: Connection reset by peer``."""
    return f"connection error: {getattr(exc, 'strerror', None) or exc}"


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
    (Phase.HANDSHAKE, "timed out"): Phase.OVER,
    (Phase.CODE, "right code"): Phase.NAME,
    (Phase.CODE, "wrong code"): Phase.TURNED_AWAY,
    (Phase.CODE, "timed out"): Phase.OVER,
    (Phase.NAME, "registered"): Phase.CHAT,
    (Phase.NAME, "timed out"): Phase.OVER,
    # Whatever the phase, a connection can end: the client hangs up, an error, a stop.
    **{(phase, "ended"): Phase.OVER for phase in Phase},
}
"""Every move a connection's phase can make; :meth:`Session._move` allows no other."""


class Then(enum.Enum):
    """What the model does with a connection next (the ``then`` of a :class:`Reaction`)."""

    READ = "read"  # read its socket again
    PAUSE = "pause"  # read nothing until ``at``, then call Session.resume()
    CLOSE = "close"  # read nothing more; close it once what waits is sent, or at ``at`` if given
    ABORT = "abort"  # close it now (an error): what waits for it is dropped


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a :class:`Session` asks its model to do next, after it has written what it had to.

    Everything a session says to its client goes out through the client's transport, before
    the session returns; the reaction is only what comes next, like h11's ``NEED_DATA`` or
    ``PAUSED``: read on, pause reading until ``at``, close, or abort.
    """

    then: Then
    at: float | None = None  # PAUSE: when to call resume(); CLOSE: when (None: once sent)


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
    :meth:`resume` when a pause it asked for is over, :meth:`timed_out` when ``name_timeout``
    has passed since the accept. Once the connection is over, :meth:`leave` (the room forgets
    the client) and, after the socket is closed, :meth:`departed` (the others hear it left).

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
        if send_buffer is not None:  # what the kernel holds counts as "behind" too: bound it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        options = server.options
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
        # Flood control (``rate``): the client's token bucket and the lines waiting for tokens.
        self.throttle = None if options.rate is None else Throttle.for_rate(options.rate, time.monotonic())
        self.linger = READ_ON  # once turned away: the CLOSE its model applies
        self.left = False

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
        """Admit the connection to the room and greet it; False if the room is full.

        When it is refused, the model sends ``protocol.SERVER_FULL`` and closes the socket
        (:func:`refuse_full`); nothing else has happened to it. With TLS the greeting comes
        once the handshake is done (in :meth:`receive`).
        """
        if not self.room.admit(self.record):
            return False
        if self.tls is None:
            self.greet()
        return True

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
        if self.tls is not None and not (data := self._decrypt(data, now)):
            return self.linger if self.phase is Phase.TURNED_AWAY else READ_ON
        self.record.bytes_in += len(data)
        lines = self.framer.feed(data)
        if self.phase is Phase.CODE and lines:
            if not protocol.code_matches(lines[0], self.server.options.code or ""):
                until = now + WRONG_CODE_DELAY
                return self._turn_away("wrong code", "wrong class code", until, protocol.WRONG_CODE)
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
            self._turn_away("not a TLS client", "not a TLS client", now)
            self._send_as_is(protocol.TLS_REQUIRED)  # in plain text, the one thing it can read
            return b""
        except ssl.SSLError as exc:
            reason = f"TLS handshake failed: {exc.reason or exc}"
            self._turn_away("TLS handshake failed", reason, now)
            return b""
        self._send_as_is(self.tls.outgoing())  # the handshake's own messages
        if self.tls.established:
            log.info("%s:%d TLS established (%s)", self.record.ip, self.record.port, self.tls.version)
            code_asked = self.server.options.code is not None
            self._move("TLS established, code asked" if code_asked else "TLS established")
            self.greet()  # encrypted, after the handshake's last messages
        return plaintext

    def _handle(self, lines: list, now: float) -> Reaction:
        """Hand lines to the room; with a ``rate``, only those that have tokens now (the rest
        wait in order for :meth:`resume`), and tell the client once that its lines wait."""
        throttle = self.throttle
        if throttle is None:
            self.room.handle_lines(self.record, lines)
        else:
            self.room.handle_lines(self.record, throttle.admit(lines, now))
            if self.record.too_slow:  # dropped: the rest is not handled (handle_lines says so too)
                throttle.waiting.clear()
            if throttle.waiting and not throttle.told:  # once per connection; its log line too
                throttle.told = True
                self.room.refuse(self.record, slow_down(throttle.bucket.rate))
        if self.phase is _NAME and self.record.name is not None:
            self._move("registered")
        if throttle is None or not (delay := throttle.wait(now)):
            return READ_ON
        return Reaction(Then.PAUSE, now + delay)  # over the flood rate: read it again later

    def resume(self, now: float) -> Reaction:
        """Flood control: the pause is over. Hand the room the waiting lines that have tokens
        now; READ once none wait, else PAUSE again."""
        try:
            return self._handle([], now)
        except Exception:  # a bug: say so; the model ends this connection
            self.failed()
            return ABORT

    def timed_out(self, now: float) -> Reaction:
        """``name_timeout`` has passed since the accept: READ if the client registered in time
        (nothing to do), else tell it why and CLOSE."""
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

    def _turn_away(self, event: str, reason: str, until: float, reply: bytes | None = None) -> Reaction:
        """Refuse this connection (logged, and told if it can be: before the TLS handshake is
        done nothing can); the model closes it at ``until``, reading nothing more."""
        self.room.refuse(self.record, reason, reply)
        self.reason = reason
        self._move(event)
        self.linger = Reaction(Then.CLOSE, until)
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
        if self.server.stopping:
            self.reason = "server stopped"
        elif self.record.too_slow:
            self.reason = "too slow"
        elif reason is not None and self.reason == "disconnected":
            self.reason = reason
        if self.framer.pending:
            log.info("%s left mid-line; dropped %d bytes", self.record.label, self.framer.pending)
        self.announce = self.room.remove(self.record)  # it was online: the others saw it

    def departed(self) -> None:
        """The socket is closed: log why the client left and, if it was online, tell the others
        (unless the server is stopping meanwhile: then everyone is leaving)."""
        self.leave()
        self.room.departed(self.record, self.reason, self.announce and not self.server.stopping)


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """Everything a server can be asked to do besides where to listen, checked once, here.

    Every model takes one (``SelectorsChatServer(host, port, options=...)``); the keywords of
    ``ChatServer(host, port, max_clients=10)`` build one. The program
    (``python -m chatlab.server``) builds one from its command line and shows a ``ValueError``
    from here as a usage error.
    """

    max_clients: int = 100
    max_line: int = protocol.DEFAULT_MAX_LINE  # longest line in bytes
    max_backlog: int = 1 << 20  # bytes that may wait for a client before it is dropped
    name_timeout: float | None = 60.0  # seconds a new connection has to register
    history: int = 1000  # events the room keeps for dashboards
    tls: ssl.SSLContext | None = None  # a server context (chatlab.tls.server_context): TLS only
    code: str | None = None  # a class code every client must send before its name
    rate: float | None = None  # flood control: lines per second per client (None: no limit)
    delivery: str = "queue"  # threads model: "queue" or "direct" (chatlab.servers.threads)
    redis: str | None = None  # redis://HOST:PORT/DB: share the chat with other servers
    server_id: str | None = None  # this server's name among them; default HOSTNAME:PORT
    heartbeat: float = 1.0  # with redis: seconds between heartbeats

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:  # also refuses nan
            raise ValueError("rate must be a positive number of lines per second")
        if self.code is not None and (not self.code.strip() or "\n" in self.code or "\r" in self.code):
            raise ValueError("a class code is one line of visible text")
        if self.delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {DELIVERY_MODES}")
        if self.delivery == "direct" and self.redis is not None:
            raise ValueError("redis= needs delivery='queue': the broker must never wait for a client")


class ServerBase:
    """What every server model shares: a listening socket, start/stop, and a view of its room.

    A model implements :meth:`_run` (start serving ``listener`` in the background) and
    :meth:`_halt` (end every connection and join what ``_run`` started), and registers every
    thread it starts with :meth:`_track`.

    Resource handling: :meth:`start` binds the listening socket and returns once ``self.port``
    is the real port; :meth:`stop` closes every socket and joins every thread the server
    started before it returns. A stopped server can be started again; with ``port=0`` it gets
    a fresh port each time. All threads are daemon threads, so a forgotten server never keeps
    a kernel alive.

    Options (:class:`ServerOptions`) are checked once, when the server is made; the model reads
    them, never changes them. Flood control: with ``rate`` (lines per second), a client that
    sends more is read more slowly (:mod:`chatlab.flood`): its session answers PAUSE, the model
    stops reading that socket until then and calls :meth:`Session.resume`. Nothing is lost;
    the client is told once.
    """

    model = "base"
    # Whether this model can share a chat with other servers through Redis (``redis=``): the
    # broker's threads write to clients, which only the threaded model allows from any thread.
    shares_chats = False
    _running: weakref.WeakSet[ServerBase] = weakref.WeakSet()  # every server started here

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, options: ServerOptions | None = None, **keywords: Any
    ) -> None:
        if options is None:
            options = ServerOptions(**keywords)
        elif keywords:
            raise TypeError("give either options= or keywords, not both")
        if options.redis is not None and not self.shares_chats:
            raise ValueError(
                f"the {self.model} model cannot share a chat through Redis: use ChatServer (threads)"
            )
        self.options = options
        # The options again by their short names, to read (the options object is frozen).
        self.tls = options.tls
        self.code = options.code
        self.redis = options.redis
        self.server_id = options.server_id
        self.heartbeat = options.heartbeat
        self.max_line = options.max_line
        self.max_backlog = options.max_backlog
        self.name_timeout = options.name_timeout
        self.rate = options.rate
        self.broker: Any = None  # a chatlab.broker.Broker while running with redis
        self.host = host
        self.port = port
        self.room = ChatRoom(max_clients=options.max_clients, history=options.history)
        self.stopping = False  # set by stop() before it closes anything
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self._stopped.set()
        # Every thread this server started, until it ends, so that stop() can join them all.
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._prune_at = 64

    # --- life cycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    @property
    def max_clients(self) -> int:
        return self.room.max_clients

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def listener(self) -> socket.socket | None:
        """The listening socket while the server runs."""
        return self._listener

    def start(self) -> ServerBase:
        """Bind, listen and start serving; returns once ``self.port`` is the real port."""
        with self._stop_lock:  # not while a stop() (or another start()) is under way
            return self._start()

    def _start(self) -> ServerBase:
        if self.running:
            raise RuntimeError("the server is already running")
        listener = make_listener(self.host, self._requested_port)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self.stopping = False
        self._stopped.clear()
        try:
            if self.redis is not None:
                self._join_chat()
            self._run(listener)
        except BaseException:
            if self.broker is not None:
                self.broker.stop()
                self.broker = None
            self._listener = None
            listener.close()
            self._stopped.set()
            raise
        ServerBase._running.add(self)
        log.info("listening on %s:%d (%s)", self.host, self.port, self.describe())
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every client socket, and join every thread.

        Waits at most ``timeout`` seconds for the threads and logs any still running then.
        Calling it again, also from another thread or after a Ctrl-C cut it short, is safe.
        """
        with self._stop_lock:
            if not self.running:
                return
            self.stopping = True
            assert self._listener is not None
            self._halt(self._listener, timeout)
            self._listener = None
            if self.broker is not None:  # after the clients: the other servers hear they left
                self.broker.stop(timeout)
                self.broker = None
            if lingering := [thread.name for thread in self.threads()]:
                log.warning("stopped, but these threads still run: %s", ", ".join(lingering))
            else:
                log.info("stopped")
            ServerBase._running.discard(self)
            self._stopped.set()

    def _join_chat(self) -> None:
        """Connect to the Redis that the servers of this chat share (chatlab.broker)."""
        try:
            from ..broker import Broker
        except ImportError as exc:
            raise ImportError("redis= needs the redis package: pip install 'chatlab[cluster]'") from exc
        server_id = self.server_id or f"{socket.gethostname()}:{self.port}"
        address = f"{self.host}:{self.port}"
        broker = Broker(self.room, self.redis, server_id, address=address, heartbeat=self.heartbeat)  # type: ignore[arg-type]
        self.broker = broker.start()  # only once it runs: a failed start leaves nothing to stop

    @classmethod
    def stop_all(cls) -> int:
        """Stop every server running in this process; returns how many there were.

        A notebook cell that starts a server calls this first, so running the cell twice
        never leaves a forgotten server (and its threads) behind.
        """
        servers = list(ServerBase._running)
        for server in servers:
            server.stop()
        return len(servers)

    def serve_forever(self) -> None:
        """Start if needed and block until :meth:`stop` or Ctrl-C (which stops the server)."""
        if not self.running:
            self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        finally:
            self.stop()

    def __enter__(self) -> ServerBase:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what the dashboards read -------------------------------------------------------------

    def describe(self) -> str:
        """A few words on the model, for logs and dashboards."""
        return self.model

    def clients(self) -> list[ClientRecord]:
        """A snapshot (copies) of the registered clients' records, sorted by name."""
        return self.room.clients()

    def connection_count(self) -> int:
        """Open connections, registered or not."""
        return self.room.connection_count()

    def online(self) -> list[str]:
        return self.room.online()

    def events(self) -> list[ServerEvent]:
        """The most recent events, oldest first."""
        return self.room.events()

    def subscribe(self, callback: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every future event; see :meth:`ChatRoom.subscribe`."""
        return self.room.subscribe(callback)

    def threads(self) -> list[threading.Thread]:
        """The threads this server started that are still alive."""
        with self._threads_lock:
            threads = list(self._threads)
        return [t for t in threads if t.is_alive()]

    # --- what a model uses and implements --------------------------------------------------------

    def _track(self, thread: threading.Thread) -> None:
        """Remember a thread this server started (before starting it), so stop() can join it."""
        with self._threads_lock:
            if len(self._threads) >= self._prune_at:  # now and then, not every time
                self._threads = [
                    t for t in self._threads if t.is_alive() or t.ident is None
                ]  # not yet started
                self._prune_at = 2 * len(self._threads) + 64
            self._threads.append(thread)

    def _untrack(self, thread: threading.Thread) -> None:
        """Forget a thread that could not be started."""
        with self._threads_lock:
            if thread in self._threads:
                self._threads.remove(thread)

    def _join_threads(self, timeout: float) -> None:
        """Join every thread this server started, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            if thread.ident is not None:  # it started (starting a thread can fail)
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, listener: socket.socket) -> None:
        raise NotImplementedError

    def _halt(self, listener: socket.socket, timeout: float) -> None:
        raise NotImplementedError
