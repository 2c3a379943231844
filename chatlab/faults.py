"""A fault-injecting TCP link: put a bad network between a client and a server, on purpose.

Loopback is a perfect network: no delay, no loss, every ``send()`` arrives in one piece. Real
networks are slower, cut lines at odd places and drop connections. :class:`FaultyLink` is a
small TCP proxy (like Shopify's Toxiproxy, but short enough to read) that listens on a port of
its own and forwards every connection it accepts to an ``upstream`` server, changing on the way
what you ask for::

    with FaultyLink(upstream=("127.0.0.1", 5050), latency=0.1, slice=1) as link:
        client = ChatClient("127.0.0.1", link.port, "alice")   # every byte 100 ms late, one by one

or from a shell: ``python -m chatlab.faults --listen 127.0.0.1:0 --upstream 127.0.0.1:5050
--latency 100 --slice 1``. The faults (``latency``, ``jitter``, ``slice``, ``bandwidth``,
``close_after``, ``reset_after``, ``stall_after``, ``direction``) are plain attributes: change
them while the link runs (``link.latency = 0.2``) and the next bytes feel it.

The model: one thread accepts (``chatlab-link-accept``). Each accepted connection opens its own
connection upstream and gets two *pumps*, ``up`` (client to server) and ``down`` (server to
client). A pump is two threads and a queue between them. Its reader (``chatlab-link-3-up-read``)
receives a piece, stamps it with the time it is due, ``arrival + latency (+ jitter)``, and puts
it on the queue; its writer (``chatlab-link-3-up-write``) takes the pieces in order, waits until
each is due, and writes it in slices, paced by the bandwidth. Because the delay is added to the
*arrival* time, a thousand pieces 40 ms late all arrive about 40 ms late, not 40 s late; because
a due time is never earlier than the one before it, jitter never reorders bytes. The queue is
bounded, so a slow writer makes the reader wait, and the sender's kernel buffers fill as they
would on a slow path.

Ends are passed on: a FIN from one side (``recv()`` returns ``b""``) becomes ``shutdown(SHUT_WR)``
towards the other side, once the bytes before it are delivered; a reset (``ConnectionResetError``)
becomes a reset of the other side (``SO_LINGER`` 0, then ``close()``). The faults that end a
connection work the same way after their byte count (counted per direction from the start of
each connection): ``close_after`` sends a FIN both ways, ``reset_after`` resets both sides,
``stall_after`` stops reading until it is changed (the connection stays open and the sender's
buffers fill). When a write fails because its side is gone, the link resets the other side, as
the gone side's kernel would have. Every blocking call has a short timeout (``TICK``), so each thread
notices within a tick that its connection or the link is closing; :meth:`FaultyLink.close` ends
every connection and joins every thread, bounded.

With ``record=True`` the link keeps a *wiretap*: every write and every end it passed on, in
the order they began (so a reply is never listed before the line it answers), as
:class:`WireRecord` rows (``link.wiretap``, or the bytes of one direction with
:meth:`FaultyLink.wire`).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import logging
import queue
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FaultyLink", "WireRecord", "main"]

log = logging.getLogger("chatlab.faults")

TICK = 0.05  # how often a blocked thread looks up to see whether its connection is closing
RECV_SIZE = 4096
QUEUE_PIECES = 64  # at most this many pieces wait in a pump: then its reader waits too
# Small kernel buffers on the link's own sockets, so that a stall or a slow link fills the
# sender's buffers after kilobytes, not megabytes (Linux doubles the value asked for).
BUFFER_SIZE = 32 * 1024
DRAIN_AFTER_CLOSE = 1.0  # after close_after, how long the link reads and discards before closing
DIRECTIONS = ("up", "down")

# What a pump's queue carries besides bytes: the end of the stream as the reader saw it.
EOF, RESET = "eof", "reset"


@dataclass(frozen=True)
class WireRecord:
    """One thing the link passed on: bytes written, or the end of a direction.

    ``at`` is seconds since the link started; ``event`` is ``"data"`` (then ``data`` holds the
    bytes of one write), ``"eof"`` (a FIN was passed on), ``"reset"`` (a reset), ``"close"``
    (``close_after`` ended the connection) or ``"stall"`` (``stall_after`` stopped the
    direction).
    """

    at: float
    connection: int
    direction: str
    event: str = "data"
    data: bytes = b""
    # Where it stands in the wiretap: taken when the write began, so that a write noted late
    # (after send() returned) still stands before the reply it caused.
    order: int = field(default=0, repr=False, compare=False)


@dataclass(order=True)
class _Piece:
    due: float
    data: bytes | str = field(compare=False)  # bytes, or EOF / RESET


class _RelayedConnection:
    """One client relayed by the link: its accepted socket and the link's own connection
    upstream for it, with a pump each way."""

    def __init__(self, link: FaultyLink, number: int, client: socket.socket, server: socket.socket) -> None:
        self.link = link
        self.number = number
        self.sockets = {"client": client, "server": server}
        self.closing = threading.Event()  # every thread of this connection ends soon
        self.ending = ""  # why it ended: "", "eof", "reset", "close", "stop"
        self._lock = threading.Lock()
        self._threads_left = 4
        self.pumps = [_Pump(self, "up", client, server), _Pump(self, "down", server, client)]

    def start(self) -> None:
        for pump in self.pumps:
            pump.start()

    def threads(self) -> list[threading.Thread]:
        return [thread for pump in self.pumps for thread in (pump.reader, pump.writer)]

    def abort(self, why: str) -> None:
        """End both sides with a reset (RST): close() with SO_LINGER 0, once every thread is out."""
        for sock in self.sockets.values():
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.end(why)

    def finish(self) -> None:
        """End both sides cleanly: a FIN each way now; the sockets close when the threads are out."""
        for sock in self.sockets.values():
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.end("close")

    def end(self, why: str) -> None:
        with self._lock:
            if not self.ending:
                self.ending = why
        self.closing.set()

    def thread_done(self) -> None:
        """Each of the four threads calls this last; the last one out closes both sockets."""
        with self._lock:
            self._threads_left -= 1
            last = self._threads_left == 0
        if last:
            for sock in self.sockets.values():
                sock.close()
            up, down = (pump.delivered for pump in self.pumps)
            log.info(
                "connection %d closed (%s; up %d bytes, down %d bytes)",
                self.number,
                self.ending or "eof",
                up,
                down,
            )
            self.link._forget(self)


class _Pump:
    """One direction of one connection: a reader thread, a queue of due pieces, a writer thread."""

    def __init__(
        self, connection: _RelayedConnection, direction: str, source: socket.socket, target: socket.socket
    ) -> None:
        self.connection = connection
        self.link = connection.link
        self.direction = direction
        self.source = source
        self.target = target
        self.received = 0  # bytes read from the source (what the faults count)
        self.delivered = 0  # bytes written to the target
        self.queue: queue.Queue[_Piece] = queue.Queue(QUEUE_PIECES)
        self._last_due = 0.0
        self._next_send = 0.0  # bandwidth: when the next byte may go
        name = f"chatlab-link-{connection.number}-{direction}"
        self.reader = threading.Thread(
            target=self._guarded, args=(self._read_loop,), name=f"{name}-read", daemon=True
        )
        self.writer = threading.Thread(
            target=self._guarded, args=(self._write_loop,), name=f"{name}-write", daemon=True
        )

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    def _guarded(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except Exception:
            log.exception("connection %d %s: unexpected error", self.connection.number, self.direction)
            self.connection.abort("error")
        finally:
            self.connection.thread_done()

    def _fault(self, name: str) -> int | None:
        """The byte count of fault ``name`` if it applies to this direction now, else None."""
        return self.link._setting(name, self.direction)

    def _log_fault(self, what: str, count: int) -> None:
        log.info("connection %d %s: %s after %d bytes", self.connection.number, self.direction, what, count)
        self.link._record(self.connection.number, self.direction, what)

    # --- the reader: receive, stamp with a due time, queue ---------------------------------------

    def _read_loop(self) -> None:
        closing = self.connection.closing
        stalled = False
        while not closing.is_set():
            stall = self._fault("stall_after")
            if stall is not None and self.received >= stall:
                if not stalled:
                    self._log_fault("stall", self.received)
                    stalled = True
                closing.wait(TICK)  # read nothing: the sender's buffers fill up (until stall_after changes)
                continue
            stalled = False
            try:
                data = self.source.recv(self._room_before_a_fault())
            except TimeoutError:
                continue
            except ConnectionResetError:
                self._queue(RESET)
                return
            except OSError:
                return  # the link is closing this socket
            if not data:
                self._queue(EOF)
                return
            self.received += len(data)
            self._queue(data)
        if self.connection.ending == "close":
            self._discard_until_eof()

    def _room_before_a_fault(self) -> int:
        """Read no further than the next fault's byte count, so it cuts exactly there."""
        limits = [self._fault(name) for name in ("close_after", "reset_after", "stall_after")]
        room = [limit - self.received for limit in limits if limit is not None and limit > self.received]
        return max(1, min([RECV_SIZE, *room]))

    def _queue(self, data: bytes | str) -> None:
        delay = self.link._delay(self.direction)
        due = max(time.monotonic() + delay, self._last_due)  # never before the piece in front
        self._last_due = due
        piece = _Piece(due, data)
        while not self.connection.closing.is_set():
            try:
                self.queue.put(piece, timeout=TICK)
                return
            except queue.Full:
                continue

    def _discard_until_eof(self) -> None:
        """After close_after: read and drop what the peer still sends, until its FIN (bounded)."""
        deadline = time.monotonic() + DRAIN_AFTER_CLOSE
        while time.monotonic() < deadline and not self.link._stopping.is_set():
            try:
                if not self.source.recv(RECV_SIZE):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    # --- the writer: wait until due, write in slices, pace --------------------------------------

    def _write_loop(self) -> None:
        closing = self.connection.closing
        while not closing.is_set():
            try:
                piece = self.queue.get(timeout=TICK)
            except queue.Empty:
                continue
            if closing.wait(max(0.0, piece.due - time.monotonic())):
                return
            if piece.data == EOF:
                self._pass_on_eof()
                return
            if piece.data == RESET:
                self.link._record(self.connection.number, self.direction, "reset")
                log.info("connection %d %s: reset, passed on", self.connection.number, self.direction)
                self.connection.abort("reset")
                return
            assert isinstance(piece.data, bytes)
            if not self._write(piece.data):
                return
            self._after_write()

    def _write(self, data: bytes) -> bool:
        """Write ``data`` in slices, paced; False if the target is gone or the connection ends."""
        view = memoryview(data)
        while view:
            size = self._fault("slice") or len(view)
            if not self._wait_for_bandwidth():
                return False
            began = self.link._begin()  # before send(): the reply cannot begin earlier
            try:
                sent = self.target.send(view[:size])
            except TimeoutError:
                if self.connection.closing.is_set():
                    return False
                continue
            except OSError as exc:
                # The target is gone: a kernel answers bytes for a closed socket with a reset,
                # so the sender is reset too, as it would be without the link in between.
                log.info("connection %d %s: cannot write: %s", self.connection.number, self.direction, exc)
                self.connection.abort("reset")
                return False
            self.link._record(self.connection.number, self.direction, "data", bytes(view[:sent]), began)
            self.delivered += sent
            self._pace(sent)
            view = view[sent:]
        return True

    def _wait_for_bandwidth(self) -> bool:
        wait = self._next_send - time.monotonic()
        return wait <= 0 or not self.connection.closing.wait(wait)

    def _pace(self, sent: int) -> None:
        bandwidth = self.link._setting("bandwidth", self.direction)
        if bandwidth:
            self._next_send = max(self._next_send, time.monotonic()) + sent / bandwidth

    def _after_write(self) -> None:
        """The faults that act once their byte count has been delivered."""
        reset_after, close_after = self._fault("reset_after"), self._fault("close_after")
        if reset_after is not None and self.delivered >= reset_after:
            self._log_fault("reset", self.delivered)
            self.connection.abort("reset")
        elif close_after is not None and self.delivered >= close_after:
            self._log_fault("close", self.delivered)
            self.connection.finish()

    def _pass_on_eof(self) -> None:
        try:
            self.target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.link._record(self.connection.number, self.direction, "eof")
        log.info("connection %d %s: end of stream, passed on", self.connection.number, self.direction)
        # This writer and its reader are done; once the other direction ends too, the last
        # thread out closes both sockets (thread_done).


class FaultyLink:
    """A TCP proxy on 127.0.0.1 (port 0 unless given) that forwards to ``upstream`` with faults.

    Times are in seconds here (``latency=0.04``) and milliseconds on the command line. A fault
    applies to both directions unless ``direction`` is ``"up"`` (client to server) or ``"down"``.
    ``slice=0`` and ``bandwidth=0`` mean no limit; a ``*_after`` of None means never.

    Resource handling: the constructor binds and starts the accept thread, so ``.port`` is real
    at once; :meth:`close` (or leaving a ``with`` block) closes the listener, resets every open
    connection and joins every thread (each within a few ticks). ``seed`` makes the jitter repeat.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        jitter: float = 0.0,
        slice: int = 0,  # the name the CLI and Toxiproxy use
        bandwidth: int = 0,
        close_after: int | None = None,
        reset_after: int | None = None,
        stall_after: int | None = None,
        direction: str = "both",
        record: bool = False,
        seed: int | None = None,
    ) -> None:
        if direction not in ("both", *DIRECTIONS):
            raise ValueError(f"direction must be both, up or down, not {direction!r}")
        self.upstream = upstream
        self.latency = latency
        self.jitter = jitter
        self.slice = slice
        self.bandwidth = bandwidth
        self.close_after = close_after
        self.reset_after = reset_after
        self.stall_after = stall_after
        self.direction = direction
        self.record = record
        self.wiretap: list[WireRecord] = []
        self._random = random.Random(seed)
        self._started = time.monotonic()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _connections, _count and wiretap
        self._order = itertools.count()  # the wiretap's order: next() is atomic in CPython
        self._connections: list[_RelayedConnection] = []
        self._count = 0
        self.opened = 0
        """How many connections the link has passed on so far (each with its own upstream connection)."""
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._listener.settimeout(TICK)
        self._acceptor = threading.Thread(target=self._accept_loop, name="chatlab-link-accept", daemon=True)
        self._acceptor.start()
        log.info("listening on %s:%d, forwarding to %s:%d", self.host, self.port, *upstream)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __repr__(self) -> str:
        return (
            f"<FaultyLink {self.host}:{self.port} -> {self.upstream[0]}:{self.upstream[1]} {self.describe()}>"
        )

    def describe(self) -> str:
        """The faults in force now, in words: ``latency=0.04 slice=1``."""
        faults = [f"{name}={value}" for name, value in self._faults().items() if value]
        return " ".join(faults) or "no faults"

    def _faults(self) -> dict[str, object]:
        names = ["latency", "jitter", "slice", "bandwidth", "close_after", "reset_after", "stall_after"]
        faults: dict[str, object] = {name: getattr(self, name) for name in names}
        if self.direction != "both":
            faults["direction"] = self.direction
        return faults

    # --- what the pumps ask --------------------------------------------------------------------

    def _setting(self, name: str, direction: str) -> int | None:
        if self.direction not in ("both", direction):
            return None
        return getattr(self, name)

    def _delay(self, direction: str) -> float:
        if self.direction not in ("both", direction):
            return 0.0
        jitter = self._random.uniform(0.0, self.jitter) if self.jitter else 0.0
        return self.latency + jitter

    def _begin(self) -> tuple[int, float]:
        """A place in the wiretap's order and the time, taken as a write begins."""
        return next(self._order), time.monotonic() - self._started

    def _record(
        self,
        connection: int,
        direction: str,
        event: str,
        data: bytes = b"",
        began: tuple[int, float] | None = None,
    ) -> None:
        if self.record:
            order, at = began or self._begin()
            record = WireRecord(at, connection, direction, event, data, order)
            with self._lock:  # a write noted late goes back to where it began
                bisect.insort(self.wiretap, record, key=lambda r: r.order)

    def wire(self, direction: str, connection: int | None = None) -> bytes:
        """Every byte the wiretap saw going ``direction`` (of one connection, or all), in order."""
        with self._lock:
            records = list(self.wiretap)
        return b"".join(
            r.data for r in records if r.direction == direction and connection in (None, r.connection)
        )

    # --- connections ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            self._connect(client, address)

    def _connect(self, client: socket.socket, address: tuple[str, int]) -> None:
        with self._lock:
            self._count += 1
            number = self._count
        try:
            server = socket.create_connection(self.upstream, timeout=5.0)
        except OSError as exc:
            log.warning("connection %d from %s:%d: upstream %s:%d: %s", number, *address, *self.upstream, exc)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # the client sees a reset, as if the server had refused it
            return
        for sock in (client, server):
            sock.settimeout(TICK)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a slice is a packet
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_SIZE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_SIZE)
        connection = _RelayedConnection(self, number, client, server)
        with self._lock:
            self._connections.append(connection)
            self.opened += 1
        log.info("connection %d from %s:%d to %s:%d (%s)", number, *address, *self.upstream, self.describe())
        connection.start()

    def _forget(self, connection: _RelayedConnection) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)

    def connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._connections)

    def threads(self) -> list[threading.Thread]:
        """The link's live threads."""
        with self._lock:
            connections = list(self._connections)
        threads = [self._acceptor, *(t for c in connections for t in c.threads())]
        return [thread for thread in threads if thread.is_alive()]

    def reset_all(self) -> None:
        """Reset every open connection (both sides see ``ConnectionResetError``)."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.abort("stop")

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, reset every open connection and join every thread (at most ``timeout`` s)."""
        self._stopping.set()
        self._listener.close()
        deadline = time.monotonic() + timeout
        self._acceptor.join(timeout)
        self.reset_all()
        for thread in self.threads():
            thread.join(max(0.0, deadline - time.monotonic()))
        if lingering := [thread.name for thread in self.threads()]:
            log.warning("closed, but these threads still run: %s", ", ".join(lingering))

    def __enter__(self) -> FaultyLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the program ------------------------------------------------------------------------------


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m chatlab.faults``: a TCP link with faults, between clients and a server."""
    parser = argparse.ArgumentParser(prog="chatlab-faults", description=main.__doc__)
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT (port 0 picks a free one)")
    parser.add_argument("--upstream", type=_address, required=True, help="HOST:PORT of the server")
    parser.add_argument("--latency", type=float, default=0.0, help="delay of every piece, in ms")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this many ms more, at random")
    parser.add_argument("--slice", type=int, default=0, help="at most this many bytes per write")
    parser.add_argument("--bandwidth", type=int, default=0, help="bytes per second")
    parser.add_argument("--close-after", type=int, help="end the connection cleanly (FIN) after BYTES")
    parser.add_argument("--reset-after", type=int, help="reset the connection (RST) after BYTES")
    parser.add_argument("--stall-after", type=int, help="stop forwarding after BYTES, keep it open")
    parser.add_argument("--direction", choices=["both", *DIRECTIONS], default="both")
    parser.add_argument("--seed", type=int, help="repeat the same jitter")
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
    )
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        link = FaultyLink(
            args.upstream,
            host=args.listen[0],
            port=args.listen[1],
            latency=args.latency / 1000,
            jitter=args.jitter / 1000,
            slice=args.slice,
            bandwidth=args.bandwidth,
            close_after=args.close_after,
            reset_after=args.reset_after,
            stall_after=args.stall_after,
            direction=args.direction,
            seed=args.seed,
        )
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", *args.listen, exc.strerror or exc)
        return 1
    print(f"listening on {link.host}:{link.port}", flush=True)  # for scripts that wait
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        link.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
