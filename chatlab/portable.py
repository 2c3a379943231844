"""What differs between Linux, macOS and Windows, in one place.

Sockets and threads behave alike on the three systems almost everywhere the kit goes. Where
they do not, the kit calls one of the small functions here instead of writing
``if sys.platform ...`` in many places. Each function says what differs and what it does about
it, and each decides by what the system *has* (``hasattr(socket, "MSG_DONTWAIT")``), not by its
name, so the fallback is the same code on every system that lacks the feature, and the tests
run it on Linux too (with the POSIX-only names removed: ``tests/windows_standin``).

- :class:`NoWaitSender`: hand bytes to the kernel only if it takes them at once. Linux and
  macOS have a flag for one ``send()`` (``MSG_DONTWAIT``); Windows has none.
- :func:`make_listener`: a listening socket that a restarted server can bind at once, and that
  a second server cannot bind while the first one listens. ``SO_REUSEADDR`` gives the first on
  Linux and macOS; on Windows it would let a second socket take a port in use, so it is left
  out there.
- :func:`wake_accept`: wake a thread blocked in ``accept()`` so that it can see the server is
  stopping. ``shutdown()`` of the listening socket does that on Linux only.
- :func:`stop_process`: ask a program to stop, then make it. There is no ``SIGKILL`` on Windows;
  ``Popen.terminate()`` and ``Popen.kill()`` work everywhere.
- :func:`keep_alive`: have the system check that an idle connection's other end still exists
  (TCP keepalive), so a laptop that vanished from the network frees its name within about a
  minute. The options that say how often have different names on each system (macOS calls the
  idle time ``TCP_KEEPALIVE``), and ``TCP_USER_TIMEOUT`` (Linux) exists nowhere else.
- :func:`peer_gone`: has the other end hung up? Asked without reading anything and without
  waiting; ``select.poll`` where there is one (Windows has only ``select.select``).
- :func:`file_limit`: how many files this process may open (``resource``, which Windows lacks).
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CAN_SEND_WITHOUT_WAITING",
    "KEEPALIVE",
    "UNTIMED",
    "KeepAlive",
    "NoWaitSender",
    "file_limit",
    "keep_alive",
    "make_listener",
    "peer_gone",
    "stop_process",
    "wake_accept",
]

log = logging.getLogger("chatlab")

_DONTWAIT: int | None = getattr(socket, "MSG_DONTWAIT", None)
CAN_SEND_WITHOUT_WAITING = _DONTWAIT is not None
"""Whether one ``send()`` can be told not to wait (``MSG_DONTWAIT``): Linux and macOS, not Windows."""

UNTIMED: float | None = None if CAN_SEND_WITHOUT_WAITING else 7 * 24 * 3600.0
"""The timeout for a reader that waits "for ever" on a socket that a :class:`NoWaitSender`
also sends to: ``None`` (a plain blocking wait) on Linux and macOS. On Windows that socket must
stay in non-blocking mode (see :class:`NoWaitSender`), so its reader waits with a timeout
instead, which Python keeps by asking the system "anything to read?" before each ``recv()``;
a week, after which a client that sent nothing at all is dropped."""


class NoWaitSender:
    """Sends to one connection without ever waiting: :meth:`send` hands the kernel what it
    takes at once and says how much that was (0 when the socket's buffer is full).

    On Linux and macOS that is one ``send()`` with ``MSG_DONTWAIT``: only this call does not
    wait, and the socket is left as it is. Windows has no such flag, and a socket's blocking
    mode belongs to the connection, not to one Python object. So there a second socket object
    for the same connection (``sock.dup()``) is put in non-blocking mode and sends, and whoever
    reads the socket waits with a timeout (:data:`UNTIMED`) rather than in a blocking
    ``recv()``, which non-blocking mode would end at once. Either way the promise is the same:
    the calling thread never waits for a slow receiver.

    Resource handling: on Windows the second object holds a handle of its own; :meth:`close`
    it when the socket is closed.
    """

    __slots__ = ("_sock", "_twin")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._twin: socket.socket | None = None
        if _DONTWAIT is None:
            self._twin = sock.dup()
            self._twin.setblocking(False)

    def send(self, data: bytes) -> int:
        """Send what the kernel takes at once of ``data``; the number of bytes it took.

        Raises what ``send()`` raises when the connection is gone (``OSError``), or
        ``TimeoutError`` on Linux and macOS when the socket has a timeout (Python then waits up
        to it for room, whatever the flag)."""
        try:
            if self._twin is not None:
                return self._twin.send(data)
            return self._sock.send(data, _DONTWAIT)  # type: ignore[arg-type]  # not None here
        except BlockingIOError:  # the buffer is full
            return 0

    def close(self) -> None:
        if self._twin is not None:
            self._twin.close()


def make_listener(host: str, port: int, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """A TCP socket listening on ``(host, port)``; ``port=0`` lets the system pick one.

    A server restarted on the same port binds it at once, though its old connections still
    wait in TIME_WAIT, and a second server on a port in use fails with "Address already in
    use", on every system. Linux and macOS need ``SO_REUSEADDR`` for the first. Windows binds
    past TIME_WAIT by itself, and there ``SO_REUSEADDR`` would let a second socket take a port
    that is in use, so it is not set (as ``socket.create_server`` does). Windows is told apart
    by the option only it has, ``SO_EXCLUSIVEADDRUSE``.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # not Windows
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    return listener


def wake_accept(listener: socket.socket, timeout: float = 1.0) -> None:
    """Wake a thread blocked in ``listener.accept()``; call it after telling that thread to stop.

    On Linux ``shutdown()`` of the listening socket makes a waiting ``accept()`` fail at once;
    on macOS and Windows it does not, and closing the socket from another thread is not a
    reliable wake-up either. What works everywhere: connect to it. ``accept()`` returns that
    connection, and the accepting thread, seeing the server stop, closes it and ends.
    """
    try:
        host, port = listener.getsockname()[:2]
    except OSError:
        return  # already closed: nothing waits in accept()
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"  # listening on every interface: loopback is one of them
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        pass  # it stopped listening meanwhile: accept() has returned already


def stop_process(process: subprocess.Popen, timeout: float = 5.0, *, kill: bool = False) -> int | None:
    """Stop a program we started, by its pid, and wait for it; its exit status.

    ``terminate()`` asks it to stop (SIGTERM on Linux and macOS, which the kit's programs turn
    into a clean stop); if it has not ended within ``timeout`` seconds, or with ``kill=True``,
    ``kill()`` ends it (SIGKILL; ``TerminateProcess`` on Windows, where ``terminate()`` already
    ends it at once, with no clean-up).
    """
    if process.poll() is None:
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %g s of terminate(): killing it", process.pid, timeout)
            process.kill()
            process.wait(timeout)
    return process.returncode


@dataclass(frozen=True)
class KeepAlive:
    """How a server checks that a quiet client still exists (TCP keepalive), in seconds.

    After ``idle`` seconds with nothing received, the system sends an empty probe every
    ``interval`` seconds; after ``count`` unanswered probes the connection fails (the server's
    read gets "Connection timed out") and the client leaves, freeing its name. Where there is
    ``TCP_USER_TIMEOUT`` (Linux), data sent to the client that stays unacknowledged for
    ``user_timeout`` seconds ends the connection too (and Linux then ends a connection whose
    probes fail once that long has passed since it last heard from the client).
    """

    idle: float = 20.0
    interval: float = 5.0
    count: int = 4
    user_timeout: float = 45.0


KEEPALIVE = KeepAlive()
"""The figures every server connection gets: a vanished laptop is noticed in about 45 s."""

# The option for the idle time: TCP_KEEPIDLE on Linux and Windows, TCP_KEEPALIVE on macOS.
_KEEPIDLE: int | None = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
_KEEPINTVL: int | None = getattr(socket, "TCP_KEEPINTVL", None)
_KEEPCNT: int | None = getattr(socket, "TCP_KEEPCNT", None)
_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only (milliseconds)


def keep_alive(sock: socket.socket, figures: KeepAlive | None = None) -> None:
    """Turn TCP keepalive on for ``sock`` with ``figures`` (default :data:`KEEPALIVE`).

    ``SO_KEEPALIVE`` exists everywhere; each finer option is set where the system has it, and
    left at the system's default (two hours of idle time) where it has not. A system that
    refuses an option (an old Windows) is logged once per option, not fatal.
    """
    figures = figures or KEEPALIVE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        (_KEEPIDLE, max(1, round(figures.idle))),
        (_KEEPINTVL, max(1, round(figures.interval))),
        (_KEEPCNT, figures.count),
        (_USER_TIMEOUT, round(figures.user_timeout * 1000)),
    ):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
        except OSError as exc:
            if option not in _refused_options:
                _refused_options.add(option)
                log.warning("TCP option %d not set: %s", option, exc)


_refused_options: set[int] = set()


def peer_gone(sock: Any) -> str | None:
    """Whether the other end of ``sock`` has hung up, looked at without reading and without
    waiting: ``"disconnected"`` (it closed), ``"connection error: ..."`` (a reset, a timeout),
    or None (it has not; or it sent bytes we have not read yet, which come before its end).

    ``sock`` may be the ``TransportSocket`` asyncio hands out, which has no ``recv``: looking
    with ``MSG_PEEK`` takes nothing away from asyncio, so the socket inside it is used.
    """
    sock = getattr(sock, "_sock", sock)
    try:
        if hasattr(select, "poll"):  # select.select takes no descriptor above 1023 on Linux
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            readable = bool(poller.poll(0))
        else:  # Windows: no poll, and its select has no such limit for one socket
            readable = bool(select.select([sock], [], [], 0)[0])
        if not readable:
            return None
        return None if sock.recv(1, socket.MSG_PEEK) else "disconnected"
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # never connected: there is no other end to have left
            return None
        return f"connection error: {exc.strerror or exc}"


def file_limit() -> int | None:
    """How many files (sockets included) this process may open; None where it cannot be asked
    (Windows, whose limit on sockets is far higher than a classroom needs)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft
