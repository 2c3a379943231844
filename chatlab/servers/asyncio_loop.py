"""An asyncio chat server: the chat room of :mod:`chatlab.room`, served by one event loop.

One thread (``chatlab-asyncio``) runs an asyncio event loop of its own and serves every client.
The loop watches all the sockets at once and calls a :class:`_ClientProtocol` (an
:class:`asyncio.Protocol`) when something happens: ``connection_made`` for a new client,
``data_received`` with whatever bytes arrived (handed to the client's
:class:`~chatlab.servers.session.Session`, as in every model), ``connection_lost`` when it is
gone. There are no locks to think about, because only this thread touches the room; the rule
in exchange is that nothing may block: one slow call would freeze every client.

So a write never waits. ``transport.write()`` sends what the kernel takes at once and keeps
the rest in the transport's buffer, which the loop sends later, when the socket can take more.
A client that stops reading makes only its own buffer grow; once more than ``max_backlog``
bytes wait for it, the room drops it. The loop is not the notebook kernel's loop: it is made
with :func:`asyncio.new_event_loop` and lives and dies with the server's thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

from ..room import ClientRecord
from .base import DRAIN_TIMEOUT, OUT_OF_FILES, ServerBase, ServerOptions, connection_error
from .session import READ_ON, Phase, Reaction, Session, Then

__all__ = ["AsyncioChatServer"]

log = logging.getLogger("chatlab.server")

START_TIMEOUT = 5.0  # how long start() waits for the loop thread to begin serving
OUT_OF_FILES_LOG_EVERY = 60.0  # seconds: out of file descriptors is logged at most this often
TURNED_AWAY = Phase.TURNED_AWAY  # a module-level name: quicker to look up on every read


class _LoopTransport:
    """How the room writes to one client: into its asyncio transport's buffer.

    Only the loop thread calls these (the room is only ever called from it).
    """

    __slots__ = ("transport", "record", "limit")

    def __init__(self, transport: asyncio.Transport, record: ClientRecord, limit: int) -> None:
        # With TLS the session wraps this in the kit's TlsTransport, not asyncio's own TLS
        # (create_server(ssl=...)), so that TLS works the same in every model: the handshake
        # counts against name_timeout, and a plain-text client is told why it is turned away.
        self.transport = transport
        self.record = record
        self.limit = limit

    def write(self, data: bytes) -> bool:
        if self.transport.is_closing():
            return True  # the client is leaving; there is nobody to write to
        if self.transport.get_write_buffer_size() + len(data) > self.limit:
            return False  # too far behind: the room drops this client
        self.transport.write(data)  # sends what it can now, buffers the rest; never blocks
        self.record.bytes_out += len(data)
        return True

    def abort(self) -> None:
        # Dropped as too slow: what is buffered (whole lines: a refused write is not in it)
        # goes out first, so that it does not end in the middle of a line; if it is not read
        # within DRAIN_TIMEOUT, the connection is cut. The loop calls connection_lost after.
        self.transport.close()
        asyncio.get_running_loop().call_later(DRAIN_TIMEOUT, self.transport.abort)

    def registered(self, name: str) -> None:
        pass  # one thread serves everyone: there is no thread to rename


class _ClientProtocol(asyncio.Protocol):
    """One client connection; the event loop calls these methods, all in the loop thread."""

    def __init__(self, server: AsyncioChatServer) -> None:
        self.server = server
        self.session: Session | None = None  # None if the room was full
        self.name_timer: asyncio.TimerHandle | None = None
        self.resume_timer: asyncio.TimerHandle | None = None  # flood control: reading paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(self)
        sock = transport.get_extra_info("socket")
        session = Session(self.server, sock, transport.get_extra_info("peername")[:2])
        session.record.thread = threading.current_thread()
        session.attach(_LoopTransport(transport, session.record, self.server.max_backlog))
        if not session.open():
            transport.write(session.refusal)
            transport.close()  # closes once the line is sent
            return
        self.session = session
        if session.deadline is not None:  # the door's one deadline: handshake, code, name
            loop = asyncio.get_running_loop()
            self.name_timer = loop.call_later(session.deadline - time.monotonic(), self.name_timed_out)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None or self.transport.is_closing() or session.phase is TURNED_AWAY:
            return  # refused, dropped, timed out or turned away: what it still sends is not read
        reaction = session.receive(data, time.monotonic())
        if reaction is not READ_ON:
            self.apply(reaction)

    def apply(self, reaction: Reaction) -> None:
        """Do what the session asked: read on, pause reading until a time, close, or abort."""
        then, loop = reaction.then, asyncio.get_running_loop()
        if then is Then.READ:
            self.transport.resume_reading()
        elif then is Then.PAUSE:  # over the flood rate: read it again later
            assert reaction.at is not None
            self.transport.pause_reading()
            self.resume_timer = loop.call_later(reaction.at - time.monotonic(), self.resume)
        elif then is Then.CLOSE:  # close it once what waits is sent; it stops reading at once
            self.transport.close()  # (the timers are cancelled in connection_lost)
        else:
            self.transport.abort()

    def resume(self) -> None:
        """Flood control: the pause is over."""
        self.resume_timer = None
        if self.session is not None and not self.transport.is_closing():
            self.apply(self.session.resume(time.monotonic()))

    def name_timed_out(self) -> None:
        if self.session is not None and not self.transport.is_closing():
            reaction = self.session.timed_out(time.monotonic())
            if reaction is not READ_ON:  # READ: it registered in time, nothing to do
                self.apply(reaction)

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is closed (by the client, an error, or us); asyncio closes the socket."""
        self.server._connections.discard(self)
        for timer in (self.name_timer, self.resume_timer):
            if timer is not None:
                timer.cancel()
        if self.session is not None:
            self.session.leave(None if exc is None else connection_error(exc))
            self.session.departed()


class AsyncioChatServer(ServerBase):
    """A chat server with one asyncio event loop, in one thread, for all clients.

    Resource handling: :meth:`start` returns once the loop thread serves the listening socket;
    :meth:`stop` asks the loop (``call_soon_threadsafe``, the one safe way in from another
    thread) to close the listener and every connection, then joins the thread.

    Error handling: as in the threaded server, bad input gets its sender a ``! ...`` line, and
    a client that disconnects, even mid-line or with a reset, is removed and announced.
    """

    model = "asyncio"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, options: ServerOptions | None = None, **keywords: Any
    ) -> None:
        super().__init__(host, port, options, **keywords)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._connections: set[_ClientProtocol] = set()  # touched only in the loop thread
        self._notices_due = False  # a call of room.deliver_notices() is scheduled
        self.room.notices_due = self._deliver_notices_soon
        self._out_of_files_logged = -OUT_OF_FILES_LOG_EVERY  # when accept() last said so (monotonic)

    def describe(self) -> str:
        return "one asyncio event loop"

    def _run(self, listener: socket.socket) -> None:
        self._notices_due = False
        self._loop = asyncio.new_event_loop()
        self._start_error: BaseException | None = None
        serving = threading.Event()
        self._thread = self._spawn("chatlab-asyncio", self._loop_thread, listener, serving)
        if not serving.wait(START_TIMEOUT):
            raise RuntimeError("the asyncio loop thread did not start serving")
        if self._start_error is not None:
            raise self._start_error

    def _halt(self, listener: socket.socket, timeout: float) -> None:
        assert self._loop is not None and self._thread is not None and self._stop_requested is not None
        try:
            self._loop.call_soon_threadsafe(self._stop_requested.set)
        except RuntimeError:
            pass  # the loop has already ended
        self._thread.join(timeout)
        listener.close()  # asyncio closed it already, unless the loop never got that far

    # --- the loop thread ------------------------------------------------------------------------

    def _deliver_notices_soon(self) -> None:
        """The room has notices: deliver them once, after the callbacks already due have run
        (a hundred clients leaving in one turn of the loop cost one round of notices)."""
        if not self._notices_due:
            self._notices_due = True
            asyncio.get_running_loop().call_soon(self._deliver_notices)

    def _deliver_notices(self) -> None:
        self._notices_due = False
        self.room.deliver_notices()

    def _loop_failed(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's report of an error in the loop. Out of file descriptors, it stops
        accepting for a second and reports it, with a traceback, every time: say it in one
        line, once a minute at most (asyncio's own accepting cannot tell us when it works again)."""
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in OUT_OF_FILES:
            if time.monotonic() - self._out_of_files_logged >= OUT_OF_FILES_LOG_EVERY:
                self._out_of_files_logged = time.monotonic()
                log.warning("accept failed: %s; accepting again when descriptors are free", error)
            return
        loop.default_exception_handler(context)

    def _loop_thread(self, listener: socket.socket, serving: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        loop.set_exception_handler(self._loop_failed)
        try:
            loop.run_until_complete(self._serve(listener, serving))
        except Exception:
            log.exception("the asyncio loop failed")
        finally:
            loop.close()

    async def _serve(self, listener: socket.socket, serving: threading.Event) -> None:
        """Serve until stop() sets ``_stop_requested``, then close everything."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            server = await loop.create_server(lambda: _ClientProtocol(self), sock=listener)
        except BaseException as exc:
            self._start_error = exc
            raise
        finally:
            serving.set()
        await self._stop_requested.wait()
        server.close()  # stop accepting, close the listening socket
        for connection in list(self._connections):
            connection.transport.abort()  # connection_lost follows in a later loop turn
        for _ in range(100):  # a bounded wait for every connection_lost to run
            if not self._connections:
                break
            await asyncio.sleep(0.01)
