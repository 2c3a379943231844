"""A chat client: connect, register a name, then send lines while a reader thread receives.

Sending happens in the caller's thread; receiving happens in a reader thread
(``chatlab-reader-alice``) that blocks in ``recv()``, cuts the bytes into lines and puts each
line on a queue (read it with :meth:`ChatClient.recv`; ``keep=False`` skips the queue) and
hands it to the optional ``on_line`` callback. The reader thread never prints: where lines are
shown is the caller's choice (the terminal client below prints them, the notebook widgets put
them in a log).

With ``tls=True`` (or an :class:`ssl.SSLContext` that trusts the class's own certificate) the
connection is encrypted and the server's certificate is checked before anything is said; TLS
is a layer between the socket and the lines (:mod:`chatlab.tls`). With ``code=`` the client
answers a server that asks for a class code.

Run it from a shell with ``python -m chatlab.client --port 5050 --name alice``
(``--tls --cafile class.pem --code CODE`` for a classroom server with TLS and a class code).
On a terminal it cuts a long incoming line into rows itself and indents every row after the
first (:func:`screen_rows`): only a line from the server starts at column 0, so no message can
be padded until its end shows as a line of its own (``%teacher%...``).
"""

from __future__ import annotations

import argparse
import logging
import queue
import shutil
import socket
import ssl
import sys
import threading
import unicodedata
from collections import deque
from collections.abc import Callable
from types import ModuleType

from . import protocol
from .tls import NotTls, TlsLayer, client_context

log = logging.getLogger("chatlab.client")

RECV_SIZE = 65536
MAX_SERVER_LINE = 1 << 20


class ChatError(Exception):
    """Something the server refused."""


class NameRefused(ChatError):
    """The server did not accept the name (taken, invalid or reserved)."""


class ServerFull(ChatError):
    """The server has no room for another client."""


class ConnectionClosed(ChatError, ConnectionError):
    """The connection to the server is closed."""


class ConnectionReset(ConnectionClosed):
    """The connection was reset (a TCP RST) instead of closed: aborted or cut, not a goodbye."""


class CodeRefused(ChatError):
    """The server needs a class code, and it was missing or wrong."""


class TlsFailed(ChatError, ConnectionError):
    """The TLS handshake failed: the server's certificate is not trusted, or it speaks no TLS."""


_CLOSED = object()  # put on the queue when the connection ends


class ChatClient:
    """One registered connection to a chat server.

    Resource handling: the constructor connects, registers ``name`` and starts the reader
    thread; :meth:`close` (or leaving a ``with`` block) closes the socket and joins the thread.

    Error handling: a refused name raises :class:`NameRefused`, a full server
    :class:`ServerFull`, a silent server :class:`TimeoutError`, a missing or wrong class code
    :class:`CodeRefused`, and a TLS handshake that fails (a certificate that is not trusted, a
    server without TLS) :class:`TlsFailed`, with the reason. Once the connection ends,
    :meth:`recv` raises :class:`ConnectionClosed` after the lines that did arrive: its subclass
    :class:`ConnectionReset` if the connection was reset rather than closed (``ended`` says which).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = protocol.DEFAULT_PORT,
        name: str = "",
        *,
        timeout: float = 5.0,
        on_line: Callable[[str], None] | None = None,
        keep: bool = True,
        tls: bool | ssl.SSLContext | None = None,
        code: str | None = None,
    ) -> None:
        if "\n" in name or "\r" in name:
            raise ValueError("a name is a single line")
        if code is not None and ("\n" in code or "\r" in code):
            raise ValueError("a class code is a single line")
        self.name = name
        self.code = code
        self.address = (host, port)
        context = client_context() if tls is True else tls or None
        # TLS sits between the socket and the lines: recv() bytes go through it, and so do sends.
        self._tls = None if context is None else TlsLayer(context, server_side=False, server_hostname=host)
        self.on_line = on_line
        self.keep = keep  # queue each line for recv(); a program that only uses on_line says no
        self.online: list[str] = []
        self._framer = protocol.LineFramer(MAX_SERVER_LINE)
        self._early: deque[str] = deque()  # lines read while registering, not yet handled
        self._lines: queue.Queue[object] = queue.Queue()
        self._send_lock = threading.Lock()
        self._online_changed = threading.Condition()
        self._online_version = 0
        self._closed = False
        self.ended: str | None = None
        """How the connection ended, once it has: "closed by the server", "reset: ...",
        "closed here" or "connection error: ..."."""
        self._sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                self._handshake()
            self._register()
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name=f"chatlab-reader-{name}", daemon=True)
        self._reader.start()

    # --- registration, in the caller's thread ---------------------------------------------

    def _handshake(self) -> None:
        """Say hello in TLS and check the server's certificate, before any line is read."""
        assert self._tls is not None
        host, port = self.address
        self._sock.sendall(self._tls.start())
        while not self._tls.established:
            data = self._sock.recv(RECV_SIZE)
            if not data:
                raise TlsFailed(f"{host}:{port} closed the connection during the TLS handshake")
            try:
                plaintext = self._tls.receive(data)
            except NotTls as exc:
                said = exc.data.decode(protocol.ENCODING, errors="replace").splitlines()[0][:80]
                if said == protocol.SERVER_FULL.decode().strip():
                    raise ServerFull("server full") from None
                raise TlsFailed(f"{host}:{port} does not speak TLS (it said {said!r})") from None
            except ssl.SSLCertVerificationError as exc:
                self._send_alert()
                hint = (
                    "connect to the name or address the certificate was made for"
                    if "mismatch" in exc.verify_message
                    else "give the class's certificate with cafile= or --cafile"
                )
                raise TlsFailed(
                    f"the certificate of {host}:{port} is not trusted: {exc.verify_message} ({hint})"
                ) from exc
            except ssl.SSLError as exc:
                self._send_alert()
                raise TlsFailed(f"TLS handshake with {host}:{port} failed: {exc.reason or exc}") from exc
            self._sock.sendall(self._tls.outgoing())  # our answer (the last one ends the handshake)
            self._early.extend(_decode(line) for line in self._framer.feed(plaintext))

    def _send_alert(self) -> None:
        """Tell the server why the handshake failed (TLS wrote an alert), if it still listens."""
        assert self._tls is not None
        try:
            self._sock.sendall(self._tls.outgoing())
        except OSError:
            pass

    def _recv(self) -> bytes:
        """The next bytes from the server, decrypted if this is TLS (b"" at the end)."""
        while data := self._sock.recv(RECV_SIZE):
            if self._tls is None:
                return data
            if plaintext := self._tls.receive(data):
                return plaintext
        return b""

    def _read_line(self) -> str:
        while not self._early:
            data = self._recv()
            if not data:
                raise ConnectionClosed("the server closed the connection")
            self._early.extend(_decode(line) for line in self._framer.feed(data))
        return self._early.popleft()

    def _register(self) -> None:
        first = protocol.parse_server_line(self._read_line())
        if first.kind == "error":
            raise ServerFull(first.text) if first.text == "server full" else ChatError(first.text)
        if first.kind == "notice" and first.text == protocol.CODE_PROMPT_TEXT:
            if self.code is None:
                raise CodeRefused("this server needs a class code (code=... or --code)")
            self._send((self.code + "\n").encode(protocol.ENCODING))
            first = protocol.parse_server_line(self._read_line())
            if first.kind == "error":
                raise CodeRefused(first.text)
        self._send((self.name + "\n").encode(protocol.ENCODING))
        answer = protocol.parse_server_line(self._read_line())
        if answer.kind == "error":
            raise NameRefused(answer.text)
        if answer.text != f"welcome {self.name}":
            raise ChatError(f"unexpected answer to registration: {answer.text!r}")
        online = protocol.parse_online(protocol.parse_server_line(self._read_line()).text)
        self.online = online if online is not None else []

    # --- the reader thread ---------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while self._early:
                self._handle(self._early.popleft())
            while data := self._sock.recv(RECV_SIZE):
                if self._tls is not None:
                    data = self._tls.receive(data)  # the plaintext (b"" until a record is whole)
                for line in self._framer.feed(data):
                    self._handle(_decode(line))
            self.ended = "closed here" if self._closed else "closed by the server"
        except ConnectionResetError as exc:
            self.ended = f"reset: {exc.strerror}"
        except OSError as exc:
            # Closed by close() in another thread, or a broken TLS record (ssl.SSLError is an OSError).
            self.ended = "closed here" if self._closed else f"connection error: {exc}"
        finally:
            self._lines.put(_CLOSED)

    def _handle(self, line: str) -> None:
        parsed = protocol.parse_server_line(line)
        names = protocol.parse_online(parsed.text) if parsed.kind == "notice" else None
        if names is not None:
            with self._online_changed:
                self.online = names
                self._online_version += 1
                self._online_changed.notify_all()
        if self.keep:
            self._lines.put(line)
        if self.on_line is not None:
            try:
                self.on_line(line)
            except Exception:  # a broken callback must not end the connection
                log.exception("on_line callback %r failed", self.on_line)

    # --- what a program calls ------------------------------------------------------------------

    def send_line(self, line: str) -> None:
        """Send one line exactly as written, e.g. ``"%bob%hi"`` or ``"%server%help"``."""
        if "\n" in line or "\r" in line:
            raise ValueError("send one line at a time")
        self._send((line + "\n").encode(protocol.ENCODING))

    def send(self, to: str, text: str) -> None:
        """Send ``text`` to the client called ``to``."""
        self._send(protocol.format_outgoing(to, text))

    def broadcast(self, text: str) -> None:
        """Send ``text`` to every other client."""
        self.send("*", text)

    def who(self, timeout: float = 5.0) -> list[str]:
        """Ask the server who is online and wait for the answer (also queued for recv, unless
        the client was made with ``keep=False``)."""
        with self._online_changed:
            seen = self._online_version
        self.send(protocol.SERVER_NAME, "who")
        with self._online_changed:
            if not self._online_changed.wait_for(lambda: self._online_version > seen, timeout):
                raise TimeoutError("no answer to %server%who")
            return list(self.online)

    def recv(self, timeout: float | None = 5.0) -> str:
        """The next line from the server, waiting at most ``timeout`` seconds."""
        if not self.keep:
            raise RuntimeError("this client was made with keep=False: its lines go only to on_line")
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"nothing arrived within {timeout} s") from None
        if line is _CLOSED:
            self._lines.put(_CLOSED)  # every later recv() sees it too
            if self.ended and self.ended.startswith("reset"):
                raise ConnectionReset(f"the connection was {self.ended}")
            raise ConnectionClosed(f"the connection is {self.ended or 'closed'}")
        return line  # type: ignore[return-value]

    def pending(self) -> list[str]:
        """Every line that has arrived and not been received yet, without waiting."""
        lines: list[str] = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return lines
            if line is _CLOSED:
                self._lines.put(_CLOSED)
                return lines
            lines.append(line)  # type: ignore[arg-type]  # the queue holds str and the _CLOSED mark

    @property
    def closed(self) -> bool:
        return self._closed or not self._reader.is_alive()

    def close(self) -> None:
        """Close the connection and join the reader thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if threading.current_thread() is not self._reader:
            self._reader.join()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        with self._send_lock:  # one sender at a time: lines (and TLS records) stay in order
            if self._tls is not None:
                data = self._tls.encrypt(data)
            try:
                self._sock.sendall(data)
            except ConnectionResetError as exc:
                raise ConnectionReset(f"cannot send: {exc.strerror}") from exc
            except OSError as exc:
                raise ConnectionClosed(f"cannot send: {exc.strerror or exc}") from exc


def _decode(line: bytes | protocol.LineTooLong) -> str:
    if isinstance(line, protocol.LineTooLong):
        return "! (a line from the server was too long to show)"
    return line.decode(protocol.ENCODING, errors="replace")


# --- the terminal client -------------------------------------------------------------------------


def _safe(line: str) -> str:
    """Replace what could garble a terminal, in case the server is not a chatlab one."""
    return "".join("\ufffd" if protocol.unsafe_character(c) else c for c in line)


INDENT = "    "
"""What every row but the first of a long line starts with on a terminal (:func:`screen_rows`)."""
TAB_STOP = 8


def columns_of(char: str) -> int:
    """How many columns a terminal gives ``char``: 2 for wide ones (most Chinese, Japanese and
    Korean characters, many emoji), 0 for combining marks and format characters, else 1."""
    if unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def screen_rows(line: str, columns: int) -> list[str]:
    """Cut ``line`` into the rows a terminal ``columns`` wide shows, each row after the first
    starting with :data:`INDENT`.

    A terminal left to wrap a long line itself starts its second row at column 0, where a
    sender who pads a message to the edge can make it read ``%teacher%the quiz is moved``. Cut
    here, only lines from the server start at column 0. The rows end one column short of the
    edge (some terminals add an empty row after a full one) and show tabs as spaces, so the
    terminal never wraps a row itself.
    """
    limit = max(columns - 1, 2 * len(INDENT))
    rows: list[str] = []
    row, width = "", 0  # the row being filled, and its columns so far
    for char in line:
        wide = TAB_STOP - width % TAB_STOP if char == "\t" else columns_of(char)
        if width + wide > limit:
            rows.append(row)
            row, width = INDENT, len(INDENT)
            wide = TAB_STOP - width % TAB_STOP if char == "\t" else wide
        row += " " * wide if char == "\t" else char
        width += wide
    rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m chatlab.client``: chat from a terminal; lines you type are sent as written."""
    parser = argparse.ArgumentParser(prog="chatlab-client", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=protocol.DEFAULT_PORT)
    parser.add_argument("--name", help="your name (asked for if missing)")
    parser.add_argument("--tls", action="store_true", help="encrypt, and check the server's certificate")
    parser.add_argument(
        "--cafile", help="the certificate (PEM) your class's server is checked against; implies --tls"
    )
    parser.add_argument("--code", help="the class code, if the server asks for one")
    args = parser.parse_args(argv)
    interactive = sys.stdin.isatty()
    prompt = "> " if interactive else ""
    readline: ModuleType | None = None
    if interactive:
        try:
            import readline  # line editing and history for input(); not on Windows
        except ImportError:
            pass

    # Two threads print: the reader shows what arrives, this one its own notices. The lock
    # keeps every line whole, and the introduction before the first incoming line.
    output = threading.Lock()

    def show(line: str) -> None:
        # Incoming lines appear above what you are typing, which is drawn again after them. On
        # a terminal a long line is cut into rows here, the later ones indented (screen_rows).
        text = _safe(line)
        if sys.stdout.isatty():
            text = "\n".join(screen_rows(text, shutil.get_terminal_size().columns))
        with output:
            if readline is not None:  # clear the line being typed, show this one, draw it again
                sys.stdout.write("\r\x1b[K" + text + "\n" + prompt + readline.get_line_buffer())
                sys.stdout.flush()
            elif prompt:  # no readline (Windows): from column 0, over the prompt, which follows it
                # (what was being typed is still there for Enter, but no longer shown)
                sys.stdout.write("\r" + text.ljust(len(prompt)) + "\n" + prompt)
                sys.stdout.flush()
            else:
                print(text, flush=True)

    name = args.name or input("your name: ").strip()
    with output:
        try:
            tls = client_context(args.cafile) if args.tls or args.cafile else None
            client = ChatClient(args.host, args.port, name, on_line=show, keep=False, tls=tls, code=args.code)
        except (ChatError, OSError) as exc:
            print(f"chatlab-client: {_safe(str(exc))}", file=sys.stderr)
            return 1
        print(_safe(f"* you are {name}; online: {', '.join(client.online)}"), flush=True)
        print("* type %name%text to send, %*%text for everyone, %server%help, /quit to leave", flush=True)
    with client:
        while True:
            try:
                line = input(prompt)
            except (EOFError, KeyboardInterrupt):
                break
            if line.strip() == "/quit":
                break
            if not line:
                continue
            try:
                client.send_line(line)
            except ConnectionClosed:
                with output:
                    print("* the server closed the connection", flush=True)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
