"""A threaded chat server: the protocol of :mod:`chatlab.protocol`, plus sockets, plus threads.

The model is the one of the student report: one thread accepts connections (``chatlab-accept``)
and every connected client gets a thread of its own (``chatlab-client-alice``) that reads its
lines, parses them and routes each message to its recipient. Blocking calls keep every thread's
code a straight line you can read top to bottom; the price is one thread (and its memory) per
client, and locks around what the threads share: the registry of clients and the event log.

How a message reaches its receiver is the one design choice worth a lesson, so it is a
parameter. With ``delivery="queue"`` (the default) the sender's thread only appends the line to
the receiver's bounded :class:`Outbox`, and the receiver's own writer thread
(``chatlab-writer-bob``) writes it to the socket: a receiver that stops reading can only stall
its own writer, and once its outbox overflows it is disconnected. With ``delivery="direct"`` the
sender's thread writes into the receiver's socket itself, as in the report: simple, and one
client that stops reading freezes every client that writes to it (lesson 7 shows it).

Nothing here prints: the server logs to the ``chatlab.server`` logger and tells subscribers
about every :class:`ServerEvent`. Run it from a shell with ``python -m chatlab.server``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import signal
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import protocol

log = logging.getLogger("chatlab.server")

RECV_SIZE = 65536
DRAIN_TIMEOUT = 1.0  # how long a leaving client's writer may take to send what is queued
DEFAULT_PORT = 5050
DELIVERY_MODES = ("queue", "direct")


@dataclass(frozen=True)
class ServerEvent:
    """Something that happened on the server, as kept in its log and sent to subscribers.

    ``kind`` is one of ``connected``, ``registered``, ``message``, ``error``, ``left``.
    ``client`` is the name (None before registration); for a message ``to`` is the receiver's
    name, or ``"*"`` for a broadcast; ``text`` is the message, the error or why a client left.
    """

    kind: str
    client: str | None
    address: tuple[str, int]
    to: str | None = None
    text: str = ""
    time: float = field(default_factory=time.time)


class Outbox:
    """The bytes waiting to be written to one client, at most ``limit`` of them.

    Any thread may :meth:`put`; the client's writer thread :meth:`take`s everything queued in
    one go (so a burst of lines becomes one ``sendall``). ``put`` never blocks: when the
    receiver has fallen ``limit`` bytes behind it returns False, once, and the outbox closes;
    the server then drops that client instead of waiting for it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self.overflowed = False
        self._ready = threading.Condition()

    def put(self, data: bytes) -> bool:
        with self._ready:
            if self._closed:
                return True  # the client is leaving; there is nobody to write to
            if self._size + len(data) > self.limit:
                self.overflowed = self._closed = True  # refuse once; ignore what follows
                self._ready.notify()
                return False
            self._chunks.append(data)
            self._size += len(data)
            self._ready.notify()
            return True

    def take(self) -> bytes | None:
        """Wait for queued bytes and return them all; None once closed and empty."""
        with self._ready:
            while not self._chunks and not self._closed:
                self._ready.wait()
            if not self._chunks:
                return None
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            return data

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()


@dataclass(eq=False)
class ClientRecord:
    """What the server keeps about one connection (the report's name, IP, port, socket).

    The client's own thread updates ``messages_in``/``bytes_in``; ``messages_out`` is counted
    under the server's lock and ``bytes_out`` by whichever thread writes to the socket. Every
    thread that queues or writes bytes for this client holds its ``send_lock`` meanwhile.
    """

    ip: str
    port: int
    sock: socket.socket = field(repr=False)
    fd: int
    name: str | None = None
    connected_at: float = field(default_factory=time.time)
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)
    writer: threading.Thread | None = field(default=None, repr=False)
    outbox: Outbox | None = field(default=None, repr=False)
    send_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def label(self) -> str:
        """The name once registered, the address before."""
        return self.name or f"{self.ip}:{self.port}"


def _shutdown(sock: socket.socket) -> None:
    """Wake every thread blocked on ``sock``: recv returns b'' and sendall fails."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down, or never connected


class ChatServer:
    """A chat server with one thread per client.

    Resource handling: :meth:`start` binds a listening socket and starts the accept thread;
    every client gets a serving thread (and, with ``delivery="queue"``, a writer thread). All
    of them are daemon threads so a forgotten server never keeps a kernel alive, but
    :meth:`stop` closes every socket and joins every thread before it returns. A stopped
    server can be started again; with ``port=0`` it gets a fresh port each time.

    Error handling: bad input from a client (malformed, too long, invalid UTF-8, unknown
    recipient) gets that client a ``! ...`` line and a log line, nothing else. A client that
    disconnects, even mid-line or with a reset, is removed and the others are told it left.
    """

    _running: weakref.WeakSet[ChatServer] = weakref.WeakSet()  # every server started here

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_clients: int = 100,
        max_line: int = protocol.DEFAULT_MAX_LINE,
        delivery: str = "queue",
        max_backlog: int = 1 << 20,
        history: int = 1000,
    ) -> None:
        if delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {DELIVERY_MODES}")
        self.host = host
        self.port = port
        self.max_clients = max_clients
        self.max_line = max_line
        self.delivery = delivery
        self.max_backlog = max_backlog
        self._requested_port = port
        self._lock = threading.Lock()  # guards _connections, _by_name and _client_threads
        self._connections: set[ClientRecord] = set()
        # Every client's threads until they end, also while the client is leaving (when it is
        # no longer among the connections), so that stop() can join them all.
        self._client_threads: list[threading.Thread] = []
        self._by_name: dict[str, ClientRecord] = {}  # lower-case name -> record
        self._events: deque[ServerEvent] = deque(maxlen=history)
        self._events_lock = threading.Lock()
        self._subscribers: list[Callable[[ServerEvent], None]] = []
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = threading.Event()
        self._stopped.set()

    # --- life cycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def listener(self) -> socket.socket | None:
        """The listening socket while the server runs."""
        return self._listener

    def start(self) -> ChatServer:
        """Bind, listen and start accepting; returns once ``self.port`` is the real port."""
        if self.running:
            raise RuntimeError("the server is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._requested_port))
            listener.listen(socket.SOMAXCONN)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping = False
        self._stopped.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name="chatlab-accept", daemon=True
        )
        self._accept_thread.start()
        ChatServer._running.add(self)
        log.info("listening on %s:%d (%s delivery)", self.host, self.port, self.delivery)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every client socket, and join every thread."""
        if not self.running:
            return
        self._stopping = True
        listener, self._listener = self._listener, None
        assert listener is not None and self._accept_thread is not None
        _shutdown(listener)  # wakes accept() on Linux
        listener.close()
        self._accept_thread.join(timeout)
        with self._lock:
            records = list(self._connections)
            threads = list(self._client_threads)
        for record in records:
            _shutdown(record.sock)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        log.info("stopped")
        ChatServer._running.discard(self)
        self._stopped.set()

    @classmethod
    def stop_all(cls) -> int:
        """Stop every server running in this process; returns how many there were.

        A notebook cell that starts a server calls this first, so running the cell twice
        never leaves a forgotten server (and its threads) behind.
        """
        servers = list(cls._running)
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

    def __enter__(self) -> ChatServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what the dashboards read -------------------------------------------------------------

    def clients(self) -> list[ClientRecord]:
        """A snapshot (copies) of the registered clients' records, sorted by name."""
        with self._lock:
            records = [copy.copy(record) for record in self._by_name.values()]
        return sorted(records, key=lambda record: record.name.lower())

    def connection_count(self) -> int:
        """Open connections, registered or not."""
        with self._lock:
            return len(self._connections)

    def online(self) -> list[str]:
        with self._lock:
            return self._online_locked()

    def threads(self) -> list[threading.Thread]:
        """The threads this server started that are still alive."""
        with self._lock:
            threads = [self._accept_thread, *self._client_threads]
        return [t for t in threads if t is not None and t.is_alive()]

    def events(self) -> list[ServerEvent]:
        """The most recent events, oldest first (at most ``history`` of them)."""
        with self._events_lock:
            return list(self._events)

    def subscribe(self, callback: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every future event; returns a function that unsubscribes.

        The callback runs in the server thread where the event happened: keep it short, and
        do not print from it (in a notebook, set a widget's value instead).
        """
        with self._events_lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._events_lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # --- the accept thread ------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping:
            try:
                sock, address = listener.accept()
            except OSError as exc:
                if self._stopping:
                    break
                log.warning("accept failed: %s", exc)  # e.g. out of file descriptors
                time.sleep(0.05)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            record = ClientRecord(ip=address[0], port=address[1], sock=sock, fd=sock.fileno())
            with self._lock:
                full = len(self._connections) >= self.max_clients
                if not full:
                    self._connections.add(record)
            if full:
                self._refuse_full(record)
                continue
            self._emit("connected", record)
            log.info("%s:%d connected", record.ip, record.port)
            if self.delivery == "queue":
                record.outbox = Outbox(self.max_backlog)
                record.writer = threading.Thread(
                    target=self._write_loop, args=(record,), daemon=True,
                    name=f"chatlab-writer-{record.label}",
                )
                record.writer.start()
            record.thread = threading.Thread(
                target=self._serve, args=(record,), daemon=True,
                name=f"chatlab-client-{record.label}",
            )
            with self._lock:
                alive = [t for t in self._client_threads if t.is_alive()]
                self._client_threads = alive + [t for t in (record.thread, record.writer) if t]
            record.thread.start()

    def _refuse_full(self, record: ClientRecord) -> None:
        log.warning("%s:%d refused: server full", record.ip, record.port)
        self._emit("error", record, text="server full")
        try:
            record.sock.sendall(protocol.SERVER_FULL)
        except OSError:
            pass
        record.sock.close()

    # --- a client's threads ---------------------------------------------------------------------

    def _serve(self, record: ClientRecord) -> None:
        """The client's own thread: read bytes, cut them into lines, handle each line."""
        framer = protocol.LineFramer(self.max_line)
        reason = "disconnected"
        try:
            self._send(record, protocol.GREETING)
            while data := record.sock.recv(RECV_SIZE):
                record.bytes_in += len(data)
                for line in framer.feed(data):
                    self._handle(record, line)
        except OSError as exc:
            reason = f"connection error: {exc.strerror or exc}"
        if record.outbox is not None and record.outbox.overflowed:
            reason = "too slow"
        if framer.pending:
            log.info("%s left mid-line; dropped %d bytes", record.label, framer.pending)
        self._remove(record, "server stopped" if self._stopping else reason)

    def _write_loop(self, record: ClientRecord) -> None:
        """The client's writer thread: move bytes from its outbox to its socket."""
        assert record.outbox is not None
        while (data := record.outbox.take()) is not None:
            try:
                record.sock.sendall(data)
            except OSError:
                _shutdown(record.sock)  # let the client's own thread notice and clean up
                return
            record.bytes_out += len(data)

    def _send(self, record: ClientRecord, data: bytes) -> None:
        """Deliver bytes to one client, by the server's delivery mode."""
        if not self._enqueue(record, data):
            self._drop_slow(record)

    def _enqueue(self, record: ClientRecord, data: bytes) -> bool:
        """Queue (or, in direct mode, write) bytes; False if the client is too far behind."""
        with record.send_lock:
            if record.outbox is not None:
                return record.outbox.put(data)
            try:  # direct delivery: write now, in the calling thread
                record.sock.sendall(data)
            except OSError:
                return True  # the receiver's own thread will notice and clean up
            record.bytes_out += len(data)
            return True

    def _drop_slow(self, record: ClientRecord) -> None:
        log.warning("%s is %d bytes behind; disconnecting it", record.label, self.max_backlog)
        self._emit("error", record, text="too slow: disconnected")
        _shutdown(record.sock)  # its own thread wakes up, cleans up and tells the others

    def _remove(self, record: ClientRecord, reason: str) -> None:
        with self._lock:
            self._connections.discard(record)
            registered = record.name is not None and self._by_name.get(record.name.lower()) is record
            if registered:
                del self._by_name[record.name.lower()]
            others = list(self._by_name.values())
        if record.outbox is not None:
            record.outbox.close()  # its writer sends what is still queued, then ends
        if record.writer is not None and not self._stopping:
            # A client that only closed its sending side (`nc -N`) still reads the replies to
            # its last lines; one that reads nothing more is not waited for long.
            record.writer.join(DRAIN_TIMEOUT)
        _shutdown(record.sock)
        if record.writer is not None:
            record.writer.join()
        with record.send_lock:  # no sender thread is half-way through a direct write
            record.sock.close()
        log.info("%s left (%s)", record.label, reason)
        self._emit("left", record, text=reason)
        if registered and not self._stopping:
            notice = protocol.format_notice(f"{record.name} left")
            for other in others:
                self._send(other, notice)

    # --- handling one line ---------------------------------------------------------------------

    def _handle(self, record: ClientRecord, line: bytes | protocol.LineTooLong) -> None:
        match protocol.parse_line(line, registered=record.name is not None):
            case protocol.Register(name):
                self._register(record, name)
            case protocol.DirectMessage(to, text):
                self._direct(record, to, text)
            case protocol.Broadcast(text):
                self._broadcast(record, text)
            case protocol.Command(name):
                self._command(record, name)
            case protocol.Malformed(reason):
                self._refuse(record, reason)

    def _refuse(self, record: ClientRecord, reason: str, reply: bytes | None = None) -> None:
        log.warning("%s:%d %s: %s", record.ip, record.port, record.name or "(no name yet)", reason)
        self._emit("error", record, text=reason)
        self._send(record, reply or protocol.format_error(reason))

    def _online_locked(self) -> list[str]:
        return sorted((r.name for r in self._by_name.values()), key=str.lower)

    def _register(self, record: ClientRecord, name: str) -> None:
        # Holding the client's send lock from before others can find it until its welcome is
        # out means that whatever they send it comes after the welcome, never before. The
        # registry lock is not held while writing: in direct mode a client that does not read
        # would block the write, and with it every thread of the server.
        with record.send_lock:
            with self._lock:
                taken = name.lower() in self._by_name
                if not taken:
                    record.name = name
                    self._by_name[name.lower()] = record
                    others = [r for r in self._by_name.values() if r is not record]
                    welcome = protocol.format_welcome(name, self._online_locked())
            if not taken:  # renamed before the welcome, so the client never sees old names
                threading.current_thread().name = f"chatlab-client-{name}"
                if record.writer is not None:
                    record.writer.name = f"chatlab-writer-{name}"
            welcomed = taken or self._enqueue(record, welcome)
        if taken:
            self._refuse(record, "name taken", protocol.NAME_TAKEN)
            return
        log.info("%s:%d is %s", record.ip, record.port, name)
        self._emit("registered", record)
        if not welcomed:
            self._drop_slow(record)
        notice = protocol.format_notice(f"{name} joined")
        for other in others:
            self._send(other, notice)

    def _direct(self, record: ClientRecord, to: str, text: str) -> None:
        with self._lock:
            target = self._by_name.get(to.lower())
            if target is not None:
                target.messages_out += 1
        if target is None:
            self._refuse(record, f"unknown client {to!r}", protocol.format_unknown_client(to))
            return
        record.messages_in += 1
        log.info("%s -> %s: %r", record.name, target.name, text)
        self._emit("message", record, to=target.name, text=text)
        self._send(target, protocol.format_message(record.name, text))

    def _broadcast(self, record: ClientRecord, text: str) -> None:
        with self._lock:
            others = [r for r in self._by_name.values() if r is not record]
            for other in others:
                other.messages_out += 1
        record.messages_in += 1
        log.info("%s -> *: %r", record.name, text)
        self._emit("message", record, to="*", text=text)
        line = protocol.format_message(record.name, text)
        for other in others:
            self._send(other, line)

    def _command(self, record: ClientRecord, command: str) -> None:
        if command == "who":
            self._send(record, protocol.format_online(self.online()))
        elif command == "help":
            self._send(record, protocol.HELP)
        else:
            self._refuse(record, f"unknown command {command!r}", protocol.format_unknown_command(command))

    # --- events -----------------------------------------------------------------------------------

    def _emit(self, kind: str, record: ClientRecord, *, to: str | None = None, text: str = "") -> None:
        event = ServerEvent(kind, record.name, (record.ip, record.port), to, text)
        with self._events_lock:
            self._events.append(event)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r failed", callback)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m chatlab.server``: run a server in the foreground with a live log."""
    parser = argparse.ArgumentParser(prog="chatlab-server", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to your network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free port")
    parser.add_argument("--max-clients", type=int, default=100)
    parser.add_argument("--max-line", type=int, default=protocol.DEFAULT_MAX_LINE, help="longest line in bytes")
    parser.add_argument("--delivery", choices=DELIVERY_MODES, default="queue")
    parser.add_argument("--model", choices=("threads",), default="threads",
                        help="concurrency model: one thread per client")
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
    )
    server = ChatServer(args.host, args.port, max_clients=args.max_clients,
                        max_line=args.max_line, delivery=args.delivery)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        try:
            server.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
            return 1
        log.info("press Ctrl-C to stop")
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()  # in case it came before serve_forever() was there to stop the server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
