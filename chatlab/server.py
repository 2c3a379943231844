"""A threaded chat server: the chat room of :mod:`chatlab.room`, plus sockets, plus threads.

The model is the one of the student report: one thread accepts connections (``chatlab-accept``)
and every connected client gets a thread of its own (``chatlab-client-alice``) that reads its
lines and hands each one to the room, which routes it. Blocking calls keep every thread's code
a straight line you can read top to bottom; the price is one thread (and its memory) per
client, and locks around what the threads share (the room's registry and event log).

How a message reaches its receiver is the one design choice worth a lesson, so it is a
parameter. With ``delivery="queue"`` (the default) the sender's thread writes the line into the
receiver's socket without waiting: the kernel takes it at once while the receiver keeps up.
When the receiver's socket is full, the line waits in its bounded :class:`Outbox`, and a writer
thread (``chatlab-writer-bob``) starts that alone waits for bob and ends once bob has caught up.
A receiver that stops reading stalls nobody, and once its outbox overflows it is disconnected.
With ``delivery="direct"`` the sender's thread writes into the receiver's socket and waits
until it is taken, as in the report: simple, and one client that stops reading freezes every
client that writes to it (lesson 7 shows it).

Only one thread runs Python at a time (the GIL), so with thousands of clients most threads
wait for it, and each waiting thread wakes up every "switch interval" (5 ms in Python) to ask
for it. With thousands of threads those wake-ups alone fill the processor, so the server
program sets a longer interval, ``SERVER_SWITCH_INTERVAL``: the threads hand the GIL over at
every read and write anyway.

:class:`ServerBase` is what every server model shares: the listening socket, start and stop,
and the read-only view of the room. Nothing here prints: servers log to the ``chatlab.server``
logger. Run one from a shell with ``python -m chatlab.server``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable

from . import protocol
from .room import ChatRoom, ClientRecord, ServerEvent

__all__ = ["ChatServer", "ClientRecord", "Outbox", "ServerBase", "ServerEvent"]

log = logging.getLogger("chatlab.server")

RECV_SIZE = 65536  # read big chunks while a client sends a lot
QUIET_RECV_SIZE = 1024  # and wait with a small buffer while it is quiet: every waiting thread holds one
# The kernel's own send buffer for a client. Left to itself Linux grows it to megabytes, which
# would hide a client that stopped reading long before ``max_backlog`` noticed it.
SEND_BUFFER = 64 * 1024
DRAIN_TIMEOUT = 1.0  # how long a leaving client's writer may take to send what is queued
DEFAULT_PORT = 5050
# How long a thread may run Python before the interpreter makes it hand over the GIL (Python's
# default is 5 ms). A thread waiting for the GIL wakes up that often to ask for it: with
# thousands of client threads those wake-ups alone fill the processor. The server's threads
# hand the GIL over at every read and write anyway, so the server program asks for 100 ms.
SERVER_SWITCH_INTERVAL = 0.1
DELIVERY_MODES = ("queue", "direct")
MODELS = {  # --model NAME: where its server class lives
    "threads": ("chatlab.server", "ChatServer"),
    "selectors": ("chatlab.selectors_server", "SelectorsChatServer"),
    "asyncio": ("chatlab.asyncio_server", "AsyncioChatServer"),
}


class Outbox:
    """The bytes waiting for a client that is behind: its socket would not take them yet.

    It holds at most ``limit`` bytes. When more would not fit, :meth:`put` returns False, once,
    and the outbox closes: the server then drops that client instead of waiting for it. It has
    no lock of its own: whoever calls it holds the client's ``send_lock``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self.size = 0
        self.closed = False

    def put(self, data: bytes) -> bool:
        if self.closed:
            return True  # the client is leaving; there is nobody to write to
        if self.size + len(data) > self.limit:
            self.closed = True  # refuse once; ignore what follows
            return False
        self._chunks.append(data)
        self.size += len(data)
        return True

    def take(self) -> bytes:
        """Everything queued, in one piece (b"" if nothing is)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.size = 0
        return data

    def close(self) -> None:
        self.closed = True


def shutdown(sock: socket.socket) -> None:
    """Wake every thread blocked on ``sock``: recv returns b'' and sendall fails."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down, or never connected


class ServerBase:
    """What every server model shares: a listening socket, start/stop, and a view of its room.

    A model implements :meth:`_run` (start serving ``listener`` in the background),
    :meth:`_halt` (close every connection and join what ``_run`` started) and :meth:`threads`.

    Resource handling: :meth:`start` binds the listening socket and returns once ``self.port``
    is the real port; :meth:`stop` closes every socket and joins every thread the server
    started before it returns. A stopped server can be started again; with ``port=0`` it gets
    a fresh port each time. All threads are daemon threads, so a forgotten server never keeps
    a kernel alive.
    """

    model = "base"
    _running: weakref.WeakSet[ServerBase] = weakref.WeakSet()  # every server started here

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_clients: int = 100,
        max_line: int = protocol.DEFAULT_MAX_LINE,
        max_backlog: int = 1 << 20,
        name_timeout: float | None = 60.0,
        history: int = 1000,
    ) -> None:
        self.host = host
        self.port = port
        self.max_line = max_line
        self.max_backlog = max_backlog
        self.name_timeout = name_timeout  # seconds a new connection has to send its name
        self.room = ChatRoom(max_clients=max_clients, history=history)
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()
        self._stopped.set()

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
        try:
            self._run(listener)
        except BaseException:
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
            self._stopping = True
            assert self._listener is not None
            self._halt(self._listener, timeout)
            self._listener = None
            if lingering := [thread.name for thread in self.threads()]:
                log.warning("stopped, but these threads still run: %s", ", ".join(lingering))
            else:
                log.info("stopped")
            ServerBase._running.discard(self)
            self._stopped.set()

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
        raise NotImplementedError

    # --- what a model implements -----------------------------------------------------------

    def _run(self, listener: socket.socket) -> None:
        raise NotImplementedError

    def _halt(self, listener: socket.socket, timeout: float) -> None:
        raise NotImplementedError


class _QueuedTransport:
    """Queue delivery: write into the socket without waiting; queue what it will not take.

    ``write`` runs in the sender's thread with the receiver's ``send_lock`` held. While the
    receiver keeps up, the kernel takes every line at once and nothing else happens. When its
    socket is full, the rest goes to its :class:`Outbox` and a writer thread
    (``chatlab-writer-bob``) starts: it alone waits for the slow receiver, and it ends as soon as
    the outbox is empty again.
    """

    __slots__ = ("server", "record", "outbox")  # one per client: keep it small

    def __init__(self, server: ChatServer, record: ClientRecord) -> None:
        self.server = server
        self.record = record
        self.outbox = Outbox(server.max_backlog)

    def write(self, data: bytes) -> bool:
        record = self.record
        if self.outbox.closed:
            return True  # the client is leaving; there is nobody to write to
        if record.writer is not None:  # it is behind: keep the order, queue behind the rest
            return self.outbox.put(data)
        try:
            sent = record.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except TimeoutError:  # before it registers, its socket has a timeout, and that passed
            return False
        except OSError:
            return True  # the connection is gone: the client's own thread cleans up
        record.bytes_out += sent
        if sent == len(data):
            return True
        if not self.outbox.put(data[sent:]):
            return False
        record.writer = self.server._start_writer(record)
        if record.writer is None:
            self.outbox.close()  # no more partial lines: the room drops this client now
            return False
        return True

    def abort(self) -> None:
        shutdown(self.record.sock)  # its own thread wakes up, cleans up and tells the others

    def registered(self, name: str) -> None:
        """Called in the client's own thread once it has a name: no more name timeout, and its
        threads are renamed after it."""
        self.record.sock.settimeout(None)  # wait for its lines as long as it likes
        for thread, role in ((self.record.thread, "client"), (self.record.writer, "writer")):
            if thread is not None:
                thread.name = f"chatlab-{role}-{name}"


class _DirectTransport(_QueuedTransport):
    """Direct delivery, as in the report: the sender's thread writes into the socket itself."""

    def write(self, data: bytes) -> bool:
        try:
            self.record.sock.sendall(data)  # blocks while this client is not reading
        except OSError:
            return True  # the receiver's own thread will notice and clean up
        self.record.bytes_out += len(data)
        return True


class ChatServer(ServerBase):
    """A chat server with one thread per client.

    Every client gets a thread that reads its lines; with ``delivery="queue"`` a client that
    falls behind also gets a writer thread until it catches up. See the module docstring for
    the two delivery modes.

    Error handling: bad input from a client (malformed, too long, invalid UTF-8, unknown
    recipient) gets that client a ``! ...`` line and a log line, nothing else. A client that
    disconnects, even mid-line or with a reset, is removed and the others are told it left.
    """

    model = "threads"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delivery: str = "queue",
                 **options: object) -> None:
        if delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {DELIVERY_MODES}")
        super().__init__(host, port, **options)
        self.delivery = delivery
        self.room.blocking_writes = delivery == "direct"
        self._accept_thread: threading.Thread | None = None
        # Every client's threads until they end, also while the client is leaving (when the
        # room no longer lists it), so that stop() can join them all.
        self._client_threads: list[threading.Thread] = []
        self._prune_at = 64
        self._threads_lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.delivery} delivery"

    def threads(self) -> list[threading.Thread]:
        with self._threads_lock:
            threads = [self._accept_thread, *self._client_threads]
        return [t for t in threads if t is not None and t.is_alive()]

    def _run(self, listener: socket.socket) -> None:
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name="chatlab-accept", daemon=True
        )
        self._accept_thread.start()

    def _halt(self, listener: socket.socket, timeout: float) -> None:
        assert self._accept_thread is not None
        shutdown(listener)  # wakes accept() on Linux
        listener.close()
        self._accept_thread.join(timeout)
        for record in self.room.connections():
            shutdown(record.sock)
        deadline = time.monotonic() + timeout
        with self._threads_lock:
            threads = list(self._client_threads)
        for thread in threads:
            if thread.ident is not None:  # it started (starting a writer can fail)
                thread.join(max(0.0, deadline - time.monotonic()))

    def _track(self, thread: threading.Thread) -> None:
        """Remember a client's thread, so that stop() can join it."""
        with self._threads_lock:
            if len(self._client_threads) >= self._prune_at:  # now and then, not every time
                self._client_threads = [t for t in self._client_threads if t.is_alive()]
                self._prune_at = 2 * len(self._client_threads) + 64
            self._client_threads.append(thread)

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
            try:
                self._take_in(sock, address)
            except Exception:  # e.g. "can't start new thread": refuse this one, keep accepting
                log.exception("could not take in %s:%d", address[0], address[1])
                sock.close()

    def _take_in(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Make a record for a new connection, admit it to the room and start its thread."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # send short lines at once
        if self.delivery == "queue":  # what the kernel holds counts as "behind" too; bound it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        record = ClientRecord(ip=address[0], port=address[1], sock=sock, fd=sock.fileno())
        transport_class = _QueuedTransport if self.delivery == "queue" else _DirectTransport
        record.transport = transport_class(self, record)
        record.thread = threading.Thread(
            target=self._serve, args=(record,), daemon=True,
            name=f"chatlab-client-{record.label}",
        )
        if not self.room.admit(record):
            refuse_full(sock)
            return
        self._track(record.thread)
        try:
            record.thread.start()
        except BaseException:
            self.room.remove(record)
            raise

    def _start_writer(self, record: ClientRecord) -> threading.Thread | None:
        """Start a writer thread for a client that fell behind (its ``send_lock`` is held)."""
        writer = threading.Thread(target=self._write_loop, args=(record,), daemon=True,
                                  name=f"chatlab-writer-{record.label}")
        self._track(writer)
        try:
            writer.start()
        except RuntimeError as exc:  # "can't start new thread": treat it as too slow
            log.warning("%s: no writer thread: %s", record.label, exc)
            return None
        return writer

    # --- a client's threads ---------------------------------------------------------------------

    def _serve(self, record: ClientRecord) -> None:
        """The client's own thread: read bytes, cut them into lines, hand each to the room.

        What the lines of one read send goes out at the end of the read, one write per
        receiver (``room.handle_lines``): a burst of lines to bob costs one system call, not one each.
        """
        framer = protocol.LineFramer(self.max_line)
        reason = "disconnected"
        record.sock.settimeout(self.name_timeout)  # a connection that never registers ends
        try:
            self.room.send(record, protocol.GREETING)
            size = QUIET_RECV_SIZE
            while data := record.sock.recv(size):
                record.bytes_in += len(data)
                size = RECV_SIZE if len(data) == size else QUIET_RECV_SIZE  # full: more waits
                self.room.handle_lines(record, framer.feed(data))
        except TimeoutError:
            reason = "no name in time"
            self.room.refuse(record, reason)
        except OSError as exc:
            reason = f"connection error: {exc.strerror or exc}"
        except Exception:  # a bug: say so, and still clean up after this client
            log.exception("%s: unexpected error", record.label)
            reason = "server error"
        if record.too_slow:
            reason = "too slow"
        if framer.pending:
            log.info("%s left mid-line; dropped %d bytes", record.label, framer.pending)
        self._close(record, "server stopped" if self._stopping else reason)

    def _write_loop(self, record: ClientRecord) -> None:
        """A writer thread: send what waits in the outbox until it is empty, then end."""
        outbox = record.transport.outbox
        while True:
            with record.send_lock:
                data = outbox.take()
                if not data:
                    record.writer = None  # caught up: senders write to the socket again
                    return
            try:
                record.sock.sendall(data)  # the one place that waits for this client
            except OSError:
                with record.send_lock:
                    outbox.close()
                shutdown(record.sock)  # let the client's own thread notice and clean up
                return
            record.bytes_out += len(data)

    def _close(self, record: ClientRecord, reason: str) -> None:
        was_online = self.room.remove(record)
        with record.send_lock:
            record.transport.outbox.close()  # nothing more is queued; what is queued goes out
            writer = record.writer
        if writer is not None and not self._stopping:
            # A client that only closed its sending side (`nc -N`) still reads the replies to
            # its last lines; one that reads nothing more is not waited for long.
            writer.join(DRAIN_TIMEOUT)
        if writer is not None or self.delivery == "direct":
            shutdown(record.sock)  # wakes whoever is stuck writing to it, then we can close
        if writer is not None:
            writer.join()
        with record.send_lock:  # no sender thread is half-way through a write
            record.sock.close()
        self.room.departed(record, reason, was_online and not self._stopping)


def refuse_full(sock: socket.socket) -> None:
    """Tell a new connection that the server is full, and close it."""
    try:
        sock.sendall(protocol.SERVER_FULL)
    except OSError:
        pass
    sock.close()


def server_class(model: str) -> type[ServerBase]:
    """The server class of a concurrency model: ``threads``, ``selectors`` or ``asyncio``."""
    module, name = MODELS[model]
    return getattr(importlib.import_module(module), name)


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
    parser.add_argument("--name-timeout", type=float, default=60.0,
                        help="seconds a new connection has to send its name (default 60)")
    parser.add_argument("--delivery", choices=DELIVERY_MODES, default="queue")
    parser.add_argument("--model", choices=list(MODELS), default="threads",
                        help="threads: one thread per client (default); selectors or asyncio: "
                             "one event loop for all clients")
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    args = parser.parse_args(argv)
    if args.model != "threads" and args.delivery != "queue":
        parser.error("--delivery is a choice of --model threads")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
    )
    options = {"delivery": args.delivery} if args.model == "threads" else {}
    server = server_class(args.model)(args.host, args.port, max_clients=args.max_clients,
                                      max_line=args.max_line, name_timeout=args.name_timeout, **options)
    if args.model == "threads":
        sys.setswitchinterval(SERVER_SWITCH_INTERVAL)  # this process runs only the server
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
