"""A chat server with one thread for everything: a ``selectors`` event loop.

One thread (``chatlab-selectors``) serves every client. All sockets are non-blocking, and the
loop asks the operating system "which of these sockets can I read or write right now?"
(``selector.select()``), then does exactly that much: accept a connection, ``recv`` what has
arrived and hand it to the client's :class:`~chatlab.servers.session.Session`, or ``send`` what
the socket will take. Nothing in the loop may ever wait for one client, or every client would
wait with it. In exchange there is one thread however many clients there are, and no two
threads ever route lines at once.

Writes are buffered: the room's ``write()`` only appends bytes to the client's
:class:`~chatlab.servers.base.Outbox`, and at the end of each turn the loop sends what every
socket will take, watching a socket for writability only while bytes are left over. A client
whose outbox grows past ``max_backlog`` bytes is too slow and is disconnected. Another thread
that wants to write (or :meth:`stop`) wakes the sleeping loop through a socket pair: one byte
in, and ``select`` returns.

What a connection waits for is its :class:`State`, and every time the loop must act on its own
(a name timeout, the end of a flood pause, a connection to close) is one entry in one heap of
deadlines, which also sets how long ``select`` may sleep. When the process runs out of file
descriptors, the loop stops watching the listening socket for :data:`ACCEPT_BACKOFF` seconds
(the connections wait in the kernel's queue meanwhile) instead of trying again at once.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from typing import Any

from .base import (
    ACCEPT_BACKOFF,
    DRAIN_TIMEOUT,
    LINE_END_TIMEOUT,
    RECV_SIZE,
    Outbox,
    ServerBase,
    ServerOptions,
    connection_error,
    refuse_full,
    shutdown,
)
from .session import READ_ON, Reaction, Session, Then

__all__ = ["SelectorsChatServer", "State"]

log = logging.getLogger("chatlab.server")

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_ACCEPT, _WAKE = "accept", "wake"  # what the selector holds for the listener and the waker


class State(enum.Enum):
    """What the loop does with one connection."""

    READING = "reading"  # watched for reading (and for writing while bytes wait)
    PAUSED = "paused"  # over the flood rate: not read until ``until``
    DRAINING = "draining"  # left: closed once its last bytes are sent, or at ``until``
    CLOSED = "closed"


READING, PAUSED, DRAINING, CLOSED = State  # short names for the loop's checks


class _WatchedClient:
    """One client as the selectors loop watches it (its socket, state and outbox); also the
    :class:`~chatlab.room.Transport` of its record.

    ``write`` and ``abort`` may be called from any thread (the room calls ``write`` with the
    record's ``send_lock`` held, which also guards the outbox); everything else runs in the
    loop thread.
    """

    __slots__ = ("server", "session", "record", "outbox", "events", "state", "until", "aborted")

    def __init__(self, server: SelectorsChatServer, session: Session) -> None:
        self.server, self.session, self.record = server, session, session.record
        self.outbox = Outbox(server.max_backlog)  # written by the room, not sent yet
        self.events = READ  # what the selector watches the socket for (0: not registered)
        self.state = READING
        self.until = 0.0  # PAUSED, DRAINING: when that ends
        self.aborted = False  # the room dropped it (from any thread): the loop ends it

    def write(self, data: bytes) -> bool:
        state = self.state
        if state is DRAINING or state is CLOSED:
            return True  # it is leaving; there is nobody to write to
        if not self.outbox.put(data):
            return False  # too far behind: the room aborts it
        self.server._call_soon(self)
        return True

    def abort(self) -> None:
        self.aborted = True
        self.server._call_soon(self)

    def registered(self, name: str) -> None:
        pass  # its name deadline finds it registered; one thread for all: nothing to rename


class SelectorsChatServer(ServerBase):
    """A chat server whose one thread runs a ``selectors`` loop over all its sockets.

    Error handling is the threaded server's: bad input gets its sender a ``! ...`` line; a
    client that disconnects, resets, falls ``max_backlog`` bytes behind or sends no name in
    ``name_timeout`` seconds is closed, and the others are told it left.
    """

    model = "selectors"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, options: ServerOptions | None = None, **keywords: Any
    ) -> None:
        super().__init__(host, port, options, **keywords)
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None  # the loop thread's id, once it runs
        self._selector: selectors.BaseSelector | None = None
        self._waker: socket.socket | None = None  # a byte written here wakes the loop
        self._connections: set[_WatchedClient] = set()
        # (when, order, connection or None for the listener, what): the loop's own deadlines.
        # An entry whose connection has moved on since is skipped when it comes up.
        self._deadlines: list[tuple[float, int, _WatchedClient | None, str]] = []
        self._order = itertools.count()  # ties in time are taken in the order they were set
        self._soon: set[_WatchedClient] = set()  # to flush or abort at the end of this turn
        self._notices_due = False  # whether the room has notices to deliver at the end of it
        self.room.notices_due = self._deliver_notices_soon
        self._soon_lock = threading.Lock()

    def describe(self) -> str:
        return "one selectors event loop"

    def _run(self, listener: socket.socket) -> None:
        self._selector = selectors.DefaultSelector()
        self._deadlines = []
        wake_up, self._waker = socket.socketpair()
        for sock in (listener, wake_up, self._waker):
            sock.setblocking(False)
        self._selector.register(listener, READ, _ACCEPT)
        self._selector.register(wake_up, READ, _WAKE)
        self._thread = self._spawn("chatlab-selectors", self._loop, listener, wake_up)

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

    def _call_soon(self, connection: _WatchedClient) -> None:
        """Have the loop flush or abort ``connection`` at the end of its turn (any thread)."""
        with self._soon_lock:
            self._soon.add(connection)
        if threading.get_ident() != self._loop_ident:  # from another thread: wake the loop up
            self._wake()

    def _at(self, when: float, connection: _WatchedClient | None, what: str) -> None:
        """Have the loop act at ``when``: see :meth:`_due` for what it does then."""
        heapq.heappush(self._deadlines, (when, next(self._order), connection, what))

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
                        if events & WRITE and connection.state is not CLOSED:
                            self._flush(connection)
                        if events & READ and connection.state is READING:
                            self._read(connection)
                self._end_of_turn(listener)
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
        if not self._deadlines:
            return None
        return max(0.0, self._deadlines[0][0] - time.monotonic())

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            return  # the client gave up before we got to it
        except OSError as exc:
            if not self._accept_failed(exc):
                return
            # The listener stays readable: stop watching it for a while rather than spin.
            self._selector.unregister(listener)  # type: ignore[union-attr]
            self._at(time.monotonic() + ACCEPT_BACKOFF, None, "accept")
            return
        self._out_of_files = False
        session = None
        connection: _WatchedClient | None = None
        try:
            session = Session(self, sock, address)
            session.record.thread = self._thread
            connection = _WatchedClient(self, session)
            session.attach(connection)
            if not session.open():  # the greeting only waits in the outbox until this turn ends
                connection.state = CLOSED
                refuse_full(sock, session.refusal)
                return
            sock.setblocking(False)
            self._connections.add(connection)
            if session.deadline is not None:  # the door's one deadline: handshake, code, name
                self._at(session.deadline, connection, "name")
            self._selector.register(sock, READ, connection)  # type: ignore[union-attr]
        except Exception:  # a bug, or the system out of something: refuse this one, keep serving
            log.exception("could not take in %s:%d", address[0], address[1])
            if connection is not None:
                self._connections.discard(connection)
                connection.state = CLOSED
            try:
                self._selector.unregister(sock)  # type: ignore[union-attr]
            except (KeyError, ValueError):
                pass  # it never got that far
            sock.close()
            if session is not None:
                session.leave("server error")
                session.departed()

    def _read(self, connection: _WatchedClient) -> None:
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
        reaction = connection.session.receive(data, time.monotonic())
        if reaction is not READ_ON:
            self._apply(connection, reaction)

    def _apply(self, connection: _WatchedClient, reaction: Reaction) -> None:
        """Do what the session asked: read on, pause until a time, close, or abort."""
        then = reaction.then
        if then is Then.READ:
            connection.state = READING
        elif then is Then.PAUSE:  # over the flood rate: not read until then
            assert reaction.at is not None
            connection.state, connection.until = PAUSED, reaction.at
            self._at(reaction.at, connection, "resume")
        else:  # CLOSE once sent, or ABORT now
            self._end(connection, None, drain=then is Then.CLOSE)
            return
        self._watch(connection, len(connection.outbox) > 0)

    def _flush(self, connection: _WatchedClient) -> None:
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
        if connection.state is DRAINING and not pending:
            self._close(connection)  # a leaving client got its last bytes
            return
        self._watch(connection, pending)

    def _watch(self, connection: _WatchedClient, pending: bool) -> None:
        """Have the selector watch the socket for what we wait for now: reading, unless the
        client is paused or leaving; writing, while bytes are ``pending``."""
        events = (READ if connection.state is READING else 0) | (WRITE if pending else 0)
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

    def _end_of_turn(self, listener: socket.socket) -> None:
        """Act on the deadlines that have come, deliver this turn's notices, then flush or
        abort what the turn asked for."""
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, connection, what = heapq.heappop(self._deadlines)
            if connection is None:  # the back-off after running out of file descriptors is over
                self._selector.register(listener, READ, _ACCEPT)  # type: ignore[union-attr]
            else:
                self._due(connection, what, now)
        if self._notices_due:
            self._notices_due = False
            self.room.deliver_notices()  # one round for every join and leave of this turn
        with self._soon_lock:
            soon, self._soon = self._soon, set()
        for connection in soon:
            if connection.state is not CLOSED:
                if connection.aborted:  # dropped: it gets the end of the line it is in, no more
                    with connection.record.send_lock:
                        connection.outbox.finish_line()
                    self._end(connection, "too slow", drain=True, within=LINE_END_TIMEOUT)
                else:
                    self._flush(connection)

    def _due(self, connection: _WatchedClient, what: str, now: float) -> None:
        """A deadline came: a name timeout, the end of a pause, or the time to close."""
        state = connection.state
        if what == "name" and (state is READING or state is PAUSED):
            reaction = connection.session.timed_out(now)
            if reaction is not READ_ON:  # READ: it registered in time, nothing to do
                self._apply(connection, reaction)
        elif what == "resume" and state is PAUSED and now >= connection.until:
            self._apply(connection, connection.session.resume(now))
        elif what == "close" and state is DRAINING and now >= connection.until:
            self._close(connection)  # its time is up, whether or not its last bytes went out

    def _end(
        self, connection: _WatchedClient, reason: str | None, *, drain: bool, within: float = DRAIN_TIMEOUT
    ) -> None:
        """The connection is over: the room forgets it now, and it closes once drained (or
        after ``within`` seconds)."""
        if connection.state is DRAINING:
            if not drain:
                self._close(connection)
            return
        if connection.state is CLOSED:
            return
        connection.session.leave(reason)
        if drain and len(connection.outbox) and not self.stopping:
            connection.state, connection.until = DRAINING, time.monotonic() + within
            self._at(connection.until, connection, "close")
            self._flush(connection)  # closes it at once if everything goes out
        else:
            self._close(connection)

    def _close(self, connection: _WatchedClient) -> None:
        if connection.state is CLOSED:
            return
        connection.state = CLOSED
        self._connections.discard(connection)
        record = connection.record
        if connection.events:
            self._selector.unregister(record.sock)  # type: ignore[union-attr]
        with record.send_lock:  # nobody is half-way through writing to its outbox
            record.sock.close()
        connection.session.departed()
