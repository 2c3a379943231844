"""A chat server with one thread for everything: a ``selectors`` event loop.

One thread (``chatlab-selectors``) serves every client. All sockets are non-blocking, and the
loop asks the operating system "which of these sockets can I read or write right now?"
(``selector.select()``), then does exactly that much: accept a connection, ``recv`` what has
arrived and hand it to the client's :class:`~chatlab.servers.base.Session`, or ``send`` what
the socket will take. Nothing in the loop may ever wait for one client, or every client would
wait with it. In exchange there is one thread however many clients there are, and no two
threads ever route lines at once.

Writes are buffered: the room's ``write()`` only appends bytes to the client's
:class:`~chatlab.servers.base.Outbox`, and at the end of each turn the loop sends what every
socket will take, watching a socket for writability only while bytes are left over. A client
whose outbox grows past ``max_backlog`` bytes is too slow and is disconnected. Another thread
that wants to write (or :meth:`stop`) wakes the sleeping loop through a socket pair: one byte
in, and ``select`` returns.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import Any

from .base import (
    DRAIN_TIMEOUT,
    RECV_SIZE,
    Outbox,
    ServerBase,
    Session,
    connection_error,
    refuse_full,
    shutdown,
)

__all__ = ["SelectorsChatServer"]

log = logging.getLogger("chatlab.server")

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_ACCEPT, _WAKE = "accept", "wake"  # what the selector holds for the listener and the waker


class _Connection:
    """One client as the loop sees it; also the :class:`~chatlab.room.Transport` of its record.

    ``write`` and ``abort`` may be called from any thread (the room calls ``write`` with the
    record's ``send_lock`` held, which also guards the outbox); everything else runs in the
    loop thread.
    """

    __slots__ = (
        "server",
        "session",
        "record",
        "outbox",
        "events",
        "deadline",
        "aborted",
        "ending",
        "lingering",
        "resume_at",
    )

    def __init__(self, server: SelectorsChatServer, session: Session) -> None:
        self.server, self.session, self.record = server, session, session.record
        self.outbox = Outbox(server.max_backlog)  # written by the room, not sent yet
        self.events = READ  # what the selector watches the socket for (0: not registered)
        # When the loop must act: the end of the time to send a name, then, once the client is
        # leaving, the end of the time it has to take our last bytes.
        timeout = server.name_timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.aborted = False
        self.ending = False  # it is leaving: no more reads, and it closes once drained
        self.lingering = False  # turned away: it closes at its deadline, not once drained
        self.resume_at: float | None = None  # over the flood rate: not read until then

    def write(self, data: bytes) -> bool:
        if self.ending:
            return True  # it is leaving; there is nobody to write to
        tls = self.session.tls
        if tls is not None and not (data := tls.encrypt(data)):  # under send_lock: in order
            return True  # no TLS keys yet: nothing can be said to this client
        return self.write_as_is(data)

    def write_as_is(self, data: bytes) -> bool:
        """Queue bytes exactly as given (the TLS handshake's own messages)."""
        if not self.outbox.put(data):
            return False  # too far behind: the room aborts it
        self.server._call_soon(self)
        return True

    def abort(self) -> None:
        self.aborted = True
        self.server._call_soon(self)

    def registered(self, name: str) -> None:
        self.deadline = None  # in time; and with one thread for all, there is nothing to rename
        self.server._timed.discard(self)


class SelectorsChatServer(ServerBase):
    """A chat server whose one thread runs a ``selectors`` loop over all its sockets.

    Error handling is the threaded server's: bad input gets its sender a ``! ...`` line; a
    client that disconnects, resets, falls ``max_backlog`` bytes behind or sends no name in
    ``name_timeout`` seconds is closed, and the others are told it left.
    """

    model = "selectors"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        super().__init__(host, port, **options)
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None  # the loop thread's id, once it runs
        self._selector: selectors.BaseSelector | None = None
        self._waker: socket.socket | None = None  # a byte written here wakes the loop
        self._connections: set[_Connection] = set()
        # The connections with a deadline (no name yet, or leaving): a turn looks only at these,
        # not at every connection, so a thousand quiet clients cost a turn nothing.
        self._timed: set[_Connection] = set()
        self._soon: set[_Connection] = set()  # to flush or abort at the end of this turn
        self._paused: set[_Connection] = set()  # over the flood rate: not read for a while
        self._notices_due = False  # whether the room has notices to deliver at the end of it
        self.room.notices_due = self._deliver_notices_soon
        self._soon_lock = threading.Lock()

    def describe(self) -> str:
        return "one selectors event loop"

    def _run(self, listener: socket.socket) -> None:
        self._selector = selectors.DefaultSelector()
        wake_up, self._waker = socket.socketpair()
        for sock in (listener, wake_up, self._waker):
            sock.setblocking(False)
        self._selector.register(listener, READ, _ACCEPT)
        self._selector.register(wake_up, READ, _WAKE)
        self._thread = threading.Thread(
            target=self._loop, args=(listener, wake_up), name="chatlab-selectors", daemon=True
        )
        self._track(self._thread)
        self._thread.start()

    def _halt(self, listener: socket.socket, timeout: float) -> None:
        assert self._thread is not None
        self._wake()  # the loop sees `stopping`, closes every socket and ends
        self._thread.join(timeout)
        if self._thread.is_alive():  # stuck (in a subscriber?): at least cut the connections
            listener.close()
            for connection in list(self._connections):
                shutdown(connection.record.sock)

    def _wake(self) -> None:
        try:
            self._waker.send(b"\0")  # type: ignore[union-attr]
        except OSError:
            pass  # its buffer is full, so the loop is awake already; or the loop has ended

    def _deliver_notices_soon(self) -> None:
        self._notices_due = True  # the room calls this in the loop thread, which then goes on

    def _call_soon(self, connection: _Connection) -> None:
        """Have the loop flush or abort ``connection`` at the end of its turn (any thread)."""
        with self._soon_lock:
            self._soon.add(connection)
        if threading.get_ident() != self._loop_ident:  # from another thread: wake the loop up
            self._wake()

    # --- the loop thread -------------------------------------------------------------------------

    def _loop(self, listener: socket.socket, wake_up: socket.socket) -> None:
        self._loop_ident = threading.get_ident()
        selector = self._selector
        assert selector is not None
        try:
            while not self.stopping:
                for key, events in selector.select(self._next_timeout()):
                    connection = key.data
                    if connection is _ACCEPT:
                        self._accept(listener)
                    elif connection is _WAKE:
                        wake_up.recv(RECV_SIZE)  # the bytes mean nothing: waking was the point
                    else:
                        if events & WRITE and connection in self._connections:
                            self._flush(connection)
                        if events & READ and not connection.ending:
                            self._read(connection)
                self._end_of_turn()
        except Exception:
            log.exception("the selectors loop failed")  # a bug: still close everything below
        finally:
            for connection in list(self._connections):
                self._end(connection, "server stopped", drain=False)
            for sock in (listener, wake_up, self._waker):
                sock.close()  # type: ignore[union-attr]
            selector.close()

    def _next_timeout(self) -> float | None:
        """Seconds until the nearest deadline, so that select() returns in time for it."""
        if self._soon or self._notices_due:
            return 0.0  # the last turn wrote more (a "left" notice, say): no sleeping yet
        deadlines = [c.deadline for c in self._timed if c.deadline is not None]
        deadlines += [c.resume_at for c in self._paused if c.resume_at is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            return  # the client gave up before we got to it
        except OSError as exc:  # e.g. out of file descriptors
            log.warning("accept failed: %s", exc)
            return
        session = None
        connection: _Connection | None = None
        try:
            session = Session(self, sock, address)
            session.record.thread = self._thread
            session.record.transport = connection = _Connection(self, session)
            if not session.open():  # the greeting only waits in the outbox until this turn ends
                refuse_full(sock)
                return
            sock.setblocking(False)
            self._connections.add(connection)
            if connection.deadline is not None:
                self._timed.add(connection)
            self._selector.register(sock, READ, connection)  # type: ignore[union-attr]
        except Exception:  # a bug, or the system out of something: refuse this one, keep serving
            log.exception("could not take in %s:%d", address[0], address[1])
            if connection is not None:
                self._connections.discard(connection)
                self._timed.discard(connection)
            try:
                self._selector.unregister(sock)  # type: ignore[union-attr]
            except (KeyError, ValueError):
                pass  # it never got that far
            sock.close()
            if session is not None:
                session.leave("server error")
                session.departed()

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.record.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._end(connection, connection_error(exc), drain=False)
            return
        if not data:
            self._end(connection, "disconnected", drain=True)  # it may still read our replies
            return
        try:
            if reply := connection.session.receive(data):  # the TLS handshake's messages
                with connection.record.send_lock:
                    connection.write_as_is(reply)
        except OSError as exc:  # a damaged TLS record
            self._end(connection, connection_error(exc), drain=False)
            return
        except Exception:  # a bug: say so, and still clean up after this client
            connection.session.failed()
            self._end(connection, None, drain=False)
            return
        if connection.session.close_after is not None:  # turned away: close it a little later
            self._linger(connection, connection.session.close_after)
        elif delay := connection.session.flood_delay():  # over the rate: not read for a while
            connection.resume_at = time.monotonic() + delay
            self._paused.add(connection)
            self._watch(connection, len(connection.outbox) > 0)

    def _linger(self, connection: _Connection, seconds: float) -> None:
        """Read nothing more from ``connection``; send what waits for it and close it after
        ``seconds`` (a deadline of the loop, so nobody else waits)."""
        connection.ending = connection.lingering = True
        connection.deadline = time.monotonic() + seconds
        self._timed.add(connection)
        self._flush(connection)  # stops watching it for reading

    def _flush(self, connection: _Connection) -> None:
        """Send what the socket takes now; watch for writability while anything is left."""
        record = connection.record
        error = None
        with record.send_lock:  # only the outbox: ending the connection happens outside it
            try:
                record.bytes_out += connection.outbox.send_some(record.sock)
            except OSError as exc:
                error = exc
            pending = len(connection.outbox) > 0
        if error is not None:
            self._end(connection, connection_error(error), drain=False)
            return
        if connection.ending and not pending and not connection.lingering:
            self._close(connection)  # a leaving client got its last bytes
            return
        self._watch(connection, pending)

    def _watch(self, connection: _Connection, pending: bool) -> None:
        """Have the selector watch the socket for what we wait for now: reading, unless the
        client is leaving or paused (flood control); writing, while bytes are ``pending``."""
        reading = not connection.ending and connection.resume_at is None
        events = (READ if reading else 0) | (WRITE if pending else 0)
        if events == connection.events:
            return
        selector, sock = self._selector, connection.record.sock
        assert selector is not None
        if not events:
            selector.unregister(sock)  # a selector cannot watch a socket for nothing
        elif not connection.events:
            selector.register(sock, events, connection)
        else:
            selector.modify(sock, events, connection)
        connection.events = events

    def _end_of_turn(self) -> None:
        """Release the lines of paused clients whose wait is over, deliver this turn's notices,
        flush or abort what the turn asked for, then act on the deadlines that passed."""
        if self._paused:
            self._release_paused()
        if self._notices_due:
            self._notices_due = False
            self.room.deliver_notices()  # one round for every join and leave of this turn
        with self._soon_lock:
            soon, self._soon = self._soon, set()
        for connection in soon:
            if connection in self._connections:
                if connection.aborted:
                    self._end(connection, "too slow", drain=False)
                else:
                    self._flush(connection)
        now = time.monotonic()
        for connection in [c for c in self._timed if c.deadline is not None and now >= c.deadline]:
            if not connection.ending:
                connection.session.name_timed_out()
                self._end(connection, None, drain=True)
            else:
                self._close(connection)  # it did not take its last bytes in time

    def _release_paused(self) -> None:
        """Flood control: hand over the waiting lines of every client whose wait is over; watch
        it for reading again once none wait."""
        now = time.monotonic()
        for connection in [c for c in self._paused if c.resume_at is not None and now >= c.resume_at]:
            if connection.ending:  # leaving: what still waits is not handled
                self._paused.discard(connection)
                continue
            try:
                delay = connection.session.release()
            except Exception:  # a bug: say so, and still clean up after this client
                connection.session.failed()
                self._end(connection, None, drain=False)
                continue
            if delay:
                connection.resume_at = time.monotonic() + delay
            else:
                self._paused.discard(connection)
                connection.resume_at = None
                self._watch(connection, len(connection.outbox) > 0)

    def _end(self, connection: _Connection, reason: str | None, *, drain: bool) -> None:
        """The connection is over: the room forgets it now, and it closes once drained."""
        if connection.ending:
            if not drain:
                self._close(connection)
            return
        connection.ending = True
        connection.session.leave(reason)
        if drain and len(connection.outbox) and not self.stopping:
            connection.deadline = time.monotonic() + DRAIN_TIMEOUT
            self._timed.add(connection)
            self._flush(connection)  # closes it at once if everything goes out
        else:
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        self._timed.discard(connection)
        self._paused.discard(connection)
        record = connection.record
        if connection.events:
            self._selector.unregister(record.sock)  # type: ignore[union-attr]
        with record.send_lock:  # nobody is half-way through writing to its outbox
            record.sock.close()
        connection.session.departed()
