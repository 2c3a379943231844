"""What every server model shares: the listening socket, the options, and small socket helpers.

A chat server is the room of :mod:`chatlab.room` plus sockets plus a way of waiting for many
sockets at once. The first two are the same in every model and live here and in
:mod:`chatlab.servers.session` (the life of one connection); the third is the whole difference
between the models (:mod:`chatlab.servers`).

:class:`ServerBase` owns the listening socket: :meth:`~ServerBase.start` binds it and returns
once the real port is known, :meth:`~ServerBase.stop` closes everything and joins every thread,
and the rest is a read-only view of the room for dashboards. A model adds ``_run`` (start
serving in the background) and ``_halt`` (end every connection and join its threads). Its
options are one :class:`ServerOptions`, checked once when it is made.
"""

from __future__ import annotations

import errno
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
from ..addresses import on_loopback
from ..door import Door
from ..portable import file_limit, make_listener
from ..room import ChatRoom, ClientRecord, ServerEvent

__all__ = ["Outbox", "ServerBase", "ServerOptions", "connection_error", "refuse_full", "shutdown"]

log = logging.getLogger("chatlab.server")

RECV_SIZE = 65536  # read big chunks while a client sends a lot
# The kernel's own send buffer for a client. Left to itself Linux grows it to megabytes, which
# would hide a client that stopped reading long before ``max_backlog`` noticed it. (Linux
# doubles the value asked for, for its own bookkeeping: getsockopt then reports 131072.)
SEND_BUFFER = 64 * 1024
DRAIN_TIMEOUT = 1.0  # how long a leaving client may take to read what is still queued for it
# How long a client dropped as too slow may take to read the end of the line it is in the
# middle of (a client that still reads gets whole lines; one that reads nothing is not waited for).
LINE_END_TIMEOUT = 0.25
NEWLINE = ord("\n")
SEND_CHUNK = 256 * 1024  # the most a thread waiting in send() hands the kernel at once
DEFAULT_PORT = protocol.DEFAULT_PORT
# How long a wrong class code waits for its answer (the connection unread, and out of the
# room's count meanwhile): a script cannot learn whether a guess was right any sooner.
WRONG_CODE_DELAY = 1.0
# A full TLS server finishes the handshake to say so (openssl s_client then shows the line):
# this long at most, whatever name_timeout says.
FULL_HANDSHAKE_TIMEOUT = 5.0
DELIVERY_MODES = ("queue", "direct")  # how the threaded server hands a line to its receiver
ACCEPT_BACKOFF = 0.1  # out of file descriptors: seconds before a model accepts again
# "Too many open files", for this process (EMFILE) or the whole system (ENFILE); on Windows
# the socket's own error number.
OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, getattr(errno, "WSAEMFILE", errno.EMFILE)}
FILES_IN_RESERVE = 16  # descriptors a server needs besides its clients' sockets (listener, logs...)


class Outbox:
    """The bytes waiting for a client that is behind: its socket would not take them yet.

    It holds at most ``limit`` bytes. When more would not fit, :meth:`put` returns False, once,
    and the outbox closes: the server then drops that client instead of waiting for it, once it
    has sent the end of the line the client is in the middle of (:meth:`finish_line`), so that
    a dropped client gets whole lines only. It has no lock of its own: whoever calls it holds
    the client's ``send_lock``.
    """

    __slots__ = ("limit", "_data", "closed", "mid_line")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self.closed = False
        self.mid_line = False  # what went to the socket so far ends in the middle of a line

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

    def put_after(self, data: bytes, sent: int) -> bool:
        """A send took only the first ``sent`` bytes of ``data``: queue the rest. False as for
        :meth:`put`; then only the end of the line the client is in stays, to be sent."""
        self.mid_line = sent > 0 and data[sent - 1] != NEWLINE
        if self.put(data[sent:]):
            return True
        self._data += data[sent:]  # past the limit, but only until its line is finished:
        self.finish_line()
        return False

    def send_some(self, sock: socket.socket) -> int:
        """Send what a non-blocking ``sock`` takes now, and keep the rest; returns the count."""
        try:
            sent = sock.send(self._data)
        except BlockingIOError:
            return 0
        if sent:  # (inline: this is every selectors write's path)
            self.mid_line = self._data[sent - 1] != NEWLINE
            del self._data[:sent]
        return sent

    def next_chunk(self, sent: int, dropped: bool) -> bytes:
        """For a thread that waits in ``send()``: forget the ``sent`` bytes its last send took,
        and say what to send next (b"": nothing). Once the client is ``dropped``, only the end
        of the line it is in is left."""
        if sent:
            self.mid_line = self._data[sent - 1] != NEWLINE
            del self._data[:sent]
        if dropped:
            self.finish_line()
        return bytes(self._data[:SEND_CHUNK])

    def finish_line(self) -> None:
        """The client is dropped: keep only the end of the line it has been sent part of
        (nothing if it is between lines)."""
        del self._data[self._data.find(b"\n") + 1 if self.mid_line else 0 :]

    def close(self) -> None:
        self.closed = True


def shutdown(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    """Wake every thread blocked on ``sock``: recv returns b'' and sendall fails (with
    ``how=SHUT_RD``, only recv: sending goes on)."""
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already shut down, or never connected


def refuse_full(sock: socket.socket, reply: bytes = protocol.SERVER_FULL) -> None:
    """Tell a new connection that the server is full (or why else it is refused), and close it.

    A few bytes into the empty send buffer of a new socket: this does not wait.
    """
    try:
        sock.sendall(reply)
    except OSError:
        pass
    sock.close()


def connection_error(exc: BaseException) -> str:
    """Why a connection ended, in a few words: ``connection error: Connection reset by peer``."""
    return f"connection error: {getattr(exc, 'strerror', None) or exc}"


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
    reserve: tuple[str, ...] = ()  # names only a client on the server's own computer may take
    # The door (chatlab.door). Fairness by address: None turns it on unless the server listens
    # on loopback only; with it, max_clients counts named clients. Sized for a class of 30,
    # one laptop per address; a room behind NAT (one address for all) needs larger figures.
    fair: bool | None = None
    per_address: int = 8  # fair: connections open at once from one address
    arrivals: float = 2.0  # fair: new connections per second from one address (bursts of per_address)
    joining: int = 64  # fair: connections not named yet (TLS, code, name), server-wide
    joining_per_address: int = 4  # fair: of which from one address
    guesses: int = 3  # wrong class codes waiting for their answer at once, per address

    def __post_init__(self) -> None:
        for limit in ("per_address", "joining", "joining_per_address", "guesses"):
            if getattr(self, limit) < 1:
                raise ValueError(f"{limit.replace('_', '-')} must be at least 1")
        if not self.arrivals > 0:
            raise ValueError("arrivals must be a positive number of connections per second")
        if self.rate is not None and not self.rate > 0:  # also refuses nan
            raise ValueError("rate must be a positive number of lines per second")
        if self.code is not None and (not self.code.strip() or "\n" in self.code or "\r" in self.code):
            raise ValueError("a class code is one line of visible text")
        if self.delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {DELIVERY_MODES}")
        if self.delivery == "direct" and self.redis is not None:
            raise ValueError("redis= needs delivery='queue': the broker must never wait for a client")
        object.__setattr__(self, "reserve", tuple(self.reserve))  # a list given is kept as a tuple
        for name in self.reserve:
            if error := protocol.name_error(name):
                raise ValueError(f"cannot reserve: {error}")


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
    stops reading that socket until then and calls :meth:`Session.resume`. Nothing is lost
    while it stays connected; the client is told once.
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
        self._out_of_files = False  # accept() failed for want of file descriptors (logged once)
        self.host = host
        self.port = port
        # Fair (chatlab.door): the door counts the named clients and the connections at the door;
        # the room's own count is then only a backstop over both.
        self.fair = not on_loopback(host) if options.fair is None else options.fair
        self.door = Door(
            fair=self.fair,
            max_clients=options.max_clients,
            per_address=options.per_address,
            arrivals=options.arrivals,
            joining=options.joining,
            joining_per_address=options.joining_per_address,
            guesses=options.guesses,
            rate=options.rate,
        )
        room_size = options.max_clients + (options.joining if self.fair else 0)
        self.room = ChatRoom(max_clients=room_size, history=options.history, reserved=options.reserve)
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
        # Connections open but outside the room: a full TLS server finishing a handshake to say
        # so. stop() must wake their threads too (threads model).
        self._outside: set[ClientRecord] = set()
        self._outside_lock = threading.Lock()

    # --- life cycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    @property
    def max_clients(self) -> int:
        return self.options.max_clients

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
        limit = file_limit()
        if limit is not None and self.max_clients + FILES_IN_RESERVE > limit:
            log.warning(
                "max_clients is %d, but this process may open only %d files (sockets count): "
                "raise the limit (ulimit -n) or lower max_clients",
                self.max_clients,
                limit,
            )
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
            raise ImportError("redis= needs the redis package: pip install 'chatlab-kit[cluster]'") from exc
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

    def outside(self, record: ClientRecord, *, there: bool) -> None:
        """Note that a connection the room does not count is open (``there``) or closed."""
        with self._outside_lock:
            if there:
                self._outside.add(record)
            else:
                self._outside.discard(record)

    def outsiders(self) -> list[ClientRecord]:
        """The records of the connections open outside the room (see :meth:`outside`)."""
        with self._outside_lock:
            return list(self._outside)

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

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        """Start a daemon thread that stop() joins. If it cannot start (the system is out of
        threads: ``RuntimeError``), it is forgotten and the error raised."""
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._track(thread)
        try:
            thread.start()
        except BaseException:
            self._untrack(thread)
            raise
        return thread

    def _accept_failed(self, exc: OSError) -> bool:
        """``accept()`` raised ``exc``: log it (running out of file descriptors only once, until a
        connection is taken again: ``_out_of_files = False``). True if that is why: then the
        model waits :data:`ACCEPT_BACKOFF` before accepting again (the connection waits in the
        kernel's queue, so accepting again at once would only fail again, at full speed)."""
        if exc.errno not in OUT_OF_FILES:
            log.warning("accept failed: %s", exc)
            return False
        if not self._out_of_files:
            self._out_of_files = True
            log.warning("accept failed: %s; accepting again when descriptors are free", exc)
        return True

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
