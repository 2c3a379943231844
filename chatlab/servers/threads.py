"""A threaded chat server: the room, plus sockets, plus one thread per client.

The model is the one of the student report: one thread accepts connections (``chatlab-accept``)
and every connected client gets a thread of its own (``chatlab-client-alice``) that waits in
``recv()`` for its bytes and hands them to its :class:`~chatlab.servers.session.Session`. Blocking
calls keep every thread's code a straight line you can read top to bottom; the price is one
thread (and its memory) per client, and locks around what the threads share (the room's
registry and event log).

How a message reaches its receiver is the one design choice worth a lesson, so it is a
parameter. With ``delivery="queue"`` (the default) the sender's thread writes the line into the
receiver's socket without waiting: the kernel takes it at once while the receiver keeps up.
When the receiver's socket is full, the line waits in its bounded :class:`Outbox`, and a writer
thread (``chatlab-writer-bob``) starts that alone waits for bob and ends once bob has caught up.
A receiver that stops reading stalls nobody, and once its outbox overflows it is disconnected.
(:class:`chatlab.portable.NoWaitSender` does the write that never waits, on every system.)
With ``delivery="direct"`` the sender's thread writes into the receiver's socket and waits
until it is taken, as in the report: simple, and one client that stops reading freezes every
client that writes to it (lesson 7 shows it).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from ..portable import UNTIMED, NoWaitSender, wake_accept
from ..room import ClientRecord
from .base import (
    ACCEPT_BACKOFF,
    DELIVERY_MODES,
    DRAIN_TIMEOUT,
    LINE_END_TIMEOUT,
    RECV_SIZE,
    SEND_BUFFER,
    Outbox,
    ServerBase,
    ServerOptions,
    connection_error,
    refuse_full,
    shutdown,
)
from .session import READ_ON, Phase, Reaction, Session, Then

__all__ = ["ChatServer", "DELIVERY_MODES"]

log = logging.getLogger("chatlab.server")

QUIET_RECV_SIZE = 256  # wait with a small buffer while a client is quiet: every waiting thread holds one
CHAT = Phase.CHAT  # a module-level name: quicker to look up on every read


class _Transport:
    """How the room's lines reach one client's socket; :class:`_QueuedTransport` or
    :class:`_DirectTransport`, by the server's ``delivery``. The session calls ``write`` (in the
    sender's thread, with the receiver's ``send_lock`` held), ``abort`` (dropped as too slow)
    and ``registered``."""

    __slots__ = ("server", "record")  # one per client: keep it small
    plain_blocking = False  # once named, a plain blocking socket (True), or one timed UNTIMED

    def __init__(self, server: ChatServer, record: ClientRecord) -> None:
        self.server = server
        self.record = record

    def abort(self) -> None:
        shutdown(self.record.sock)  # its own thread wakes up, cleans up and tells the others

    def registered(self, name: str) -> None:
        """Called in the client's own thread once it has a name: no more name timeout (it
        waits as long as it likes; UNTIMED where a no-wait sender shares the socket), and the
        thread is renamed after it (a writer thread started later is named after it too)."""
        self.record.sock.settimeout(None if self.plain_blocking else UNTIMED)
        threading.current_thread().name = f"chatlab-client-{name}"

    def close(self) -> None:
        """Release what this transport holds besides the socket (the socket's owner closes it)."""


class _QueuedTransport(_Transport):
    """Queue delivery: write into the socket without waiting; queue what it will not take.

    While the receiver keeps up, the kernel takes every line at once and nothing else happens.
    When its socket is full, the rest goes to its :class:`Outbox` and a writer thread
    (``chatlab-writer-bob``) starts: it alone waits for the slow receiver, and it ends as soon as
    the outbox is empty again.
    """

    __slots__ = ("outbox", "nowait")

    def __init__(self, server: ChatServer, record: ClientRecord) -> None:
        super().__init__(server, record)
        self.outbox = Outbox(server.max_backlog)
        self.nowait = NoWaitSender(record.sock)

    def write(self, data: bytes) -> bool:
        record = self.record
        if self.outbox.closed:
            return True  # the client is leaving; there is nobody to write to
        if record.writer is not None:  # it is behind: keep the order, queue behind the rest
            return self.outbox.put(data)
        try:
            sent = self.nowait.send(data)
        except TimeoutError:  # before it registers, its socket has a timeout, and that passed
            return False
        except OSError:
            return True  # the connection is gone: the client's own thread cleans up
        record.bytes_out += sent
        if sent == len(data):
            return True
        kept = self.outbox.put_after(data, sent)  # False: too far behind, dropped after this line
        if len(self.outbox):
            record.writer = self.server._start_writer(self)
            if record.writer is None:  # no writer, no partial line either: the room drops it now
                self.outbox.close()
                return False
        return kept

    def abort(self) -> None:
        """Dropped as too slow: its own thread wakes up, cleans up and tells the others. A
        writer thread sending the end of a line is left to finish it (for LINE_END_TIMEOUT at
        most: the client's thread waits that long for it, then shuts the socket)."""
        shutdown(self.record.sock, socket.SHUT_RDWR if self.record.writer is None else socket.SHUT_RD)

    def close(self) -> None:
        self.nowait.close()


class _DirectTransport(_Transport):
    """Direct delivery, as in the report: the sender's thread writes into the socket itself.

    Once its client has a name the socket is a plain blocking one on every system, not one with
    a timeout (which NoWaitSender needs on Windows): with a timeout, Python waits in ``poll()``
    before every ``send()``, and TCP calls a socket writable only while a third of its buffer is
    free, so a ``sendall()`` to a client that stopped reading stopped two thirds full.
    """

    __slots__ = ()
    plain_blocking = True  # no outbox, no writer thread: the sender's thread waits instead

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
    shares_chats = True

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, options: ServerOptions | None = None, **keywords: Any
    ) -> None:
        super().__init__(host, port, options, **keywords)
        self.delivery = self.options.delivery
        self.room.blocking_writes = self.delivery == "direct"
        self._accept_thread: threading.Thread | None = None
        self._halting = threading.Event()  # wakes client threads that wait out their flood delay

    def describe(self) -> str:
        return f"one thread per client, {self.delivery} delivery"

    def _run(self, listener: socket.socket) -> None:
        self._halting.clear()
        self._accept_thread = self._spawn("chatlab-accept", self._accept_loop, listener)

    def _halt(self, listener: socket.socket, timeout: float) -> None:
        self._halting.set()
        # First the accept thread, which may be taking in one last client: after it has ended,
        # no new connection can appear while the others are shut down and joined (a writer
        # thread still may, and its client's thread joins it before ending).
        assert self._accept_thread is not None
        shutdown(listener)  # wakes accept() on Linux
        self._accept_thread.join(0.1)
        if self._accept_thread.is_alive():
            wake_accept(listener)  # macOS and Windows: a connection of our own wakes it
        self._accept_thread.join(timeout)
        listener.close()
        for record in self.room.connections() + self.outsiders():
            shutdown(record.sock)  # wakes each client's thread in recv(): it cleans up and ends
        self._join_threads(timeout)

    # --- the accept thread ------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self.stopping:
            try:
                sock, address = listener.accept()
            except OSError as exc:
                if self.stopping:
                    break
                self._accept_failed(exc)
                self._halting.wait(ACCEPT_BACKOFF)  # the connection waits in the kernel's queue
                continue
            self._out_of_files = False
            if self.stopping:  # woken by wake_accept(), or a client in the last moment
                sock.close()
                break
            try:
                self._take_in(sock, address)
            except Exception:  # e.g. "can't start new thread": refuse this one, keep accepting
                log.exception("could not take in %s:%d", address[0], address[1])
                sock.close()

    def _take_in(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Give a new connection a session, admit it to the room and start its thread."""
        queued = self.delivery == "queue"
        session = Session(self, sock, address, send_buffer=SEND_BUFFER if queued else None)
        transport: _Transport = (_QueuedTransport if queued else _DirectTransport)(self, session.record)
        session.attach(transport)
        if not session.open():
            transport.close()
            refuse_full(sock, session.refusal)
            return
        sock.settimeout(self._door_timeout(session))  # a connection that never registers ends
        try:
            self._spawn(f"chatlab-client-{session.record.label}", self._serve, session)
        except BaseException:
            session.reason = "server error"
            self._close(session)
            raise

    def _start_writer(self, transport: _QueuedTransport) -> threading.Thread | None:
        """Start a writer thread for a client that fell behind (its ``send_lock`` is held)."""
        try:
            return self._spawn(f"chatlab-writer-{transport.record.label}", self._write_loop, transport)
        except RuntimeError as exc:  # "can't start new thread": treat it as too slow
            log.warning("%s: no writer thread: %s", transport.record.label, exc)
            return None

    # --- a client's threads ---------------------------------------------------------------------

    def _serve(self, session: Session) -> None:
        """The client's own thread: wait for bytes, hand them to the session, until the end.

        What the lines of one read send goes out at the end of the read, one write per
        receiver: a burst of lines to bob costs one system call, not one each. How this thread
        waits is all it decides: in ``recv()``, with the name timeout as the socket's timeout,
        or, when the session asks for a pause (flood control), on ``_halting`` for that long.
        """
        sock = session.record.sock
        session.record.thread = threading.current_thread()  # before it can register: renamed then
        try:
            size = QUIET_RECV_SIZE
            while data := sock.recv(size):
                size = RECV_SIZE if len(data) == size else QUIET_RECV_SIZE  # full: more waits
                reaction = session.receive(data, time.monotonic())
                if reaction is not READ_ON and not self._apply(session, reaction):
                    break
                if session.phase is not CHAT:  # the door's deadline does not restart with a byte
                    sock.settimeout(self._door_timeout(session))
        except TimeoutError:
            self._apply(session, session.timed_out(time.monotonic()))
        except OSError as exc:
            session.reason = connection_error(exc)
        except Exception:  # a bug: say so, and still clean up after this client
            session.failed()
        finally:
            self._close(session)

    @staticmethod
    def _door_timeout(session: Session) -> float | None:
        """The socket's timeout until the session's door deadline (UNTIMED if it has none)."""
        left = session.time_left(time.monotonic())
        return UNTIMED if left is None else left

    def _apply(self, session: Session, reaction: Reaction) -> bool:
        """Do what the session asked; True to read on, False to close the connection now."""
        while reaction.then is Then.PAUSE:  # over the flood rate: hand its lines over slowly
            assert reaction.at is not None
            if self._halting.wait(reaction.at - time.monotonic()):
                return False  # the server is stopping
            reaction = session.resume(time.monotonic())
        return reaction.then is Then.READ

    def _write_loop(self, transport: _QueuedTransport) -> None:
        """A writer thread: send what waits in the outbox, waiting for the client (the one
        place that does), until it is empty, then end. Once the client is dropped as too slow,
        only the end of the line it is in goes out."""
        record, outbox, sent = transport.record, transport.outbox, 0
        while True:
            with record.send_lock:
                data = outbox.next_chunk(sent, record.too_slow)
                if not data:
                    record.writer = None  # caught up: senders write to the socket again
                    return
            try:
                sent = record.sock.send(data)  # waits until the kernel takes some
            except OSError:
                with record.send_lock:
                    outbox.close()
                shutdown(record.sock)  # let the client's own thread notice and clean up
                return
            record.bytes_out += sent

    def _close(self, session: Session) -> None:
        record, transport, writer = session.record, session.transport, None
        session.leave()
        if isinstance(transport, _QueuedTransport):
            with record.send_lock:
                transport.outbox.close()  # nothing more is queued; what is queued goes out
                writer = record.writer
        else:  # direct: a sender may be stuck writing to this client, holding its send_lock
            shutdown(record.sock)
        if writer is not None and not self.stopping:
            # A client that only closed its sending side (`nc -N`) still reads the replies to
            # its last lines; one that reads nothing more is not waited for long, and one
            # dropped as too slow only for the end of the line it is in.
            writer.join(LINE_END_TIMEOUT if record.too_slow else DRAIN_TIMEOUT)
        if writer is not None:
            shutdown(record.sock)  # wakes the writer if it is stuck, then we can close
            writer.join()
        with record.send_lock:  # no sender thread is half-way through a write
            transport.close()
            record.sock.close()
        session.departed()
