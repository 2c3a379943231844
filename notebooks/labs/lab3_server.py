"""Lab 3: framing, limits and bad input. This is the file you edit.

Labs 1 and 2 are done here (threads, names, routing, notices), so you can start with this lab
even if you skipped them. Until now Python's file reader cut the bytes into lines; now the
server reads raw bytes with ``recv()``, and ``LineFramer`` has to cut them into lines. TCP
delivers a stream of bytes, not lines: one ``recv()`` may hold half a line, or three lines.
Your part is in the blocks marked ``TODO (lab 3, step N)``:

1. ``LineFramer.feed()`` returns every complete line, and keeps the start of an unfinished
   line for the next call;
2. a line longer than ``max_line`` bytes comes back once as ``None`` and its bytes are not
   kept, so no client can fill the server's memory;
3. a line that is not UTF-8 is refused with ``! invalid utf-8``; the connection stays open.

As it is, the file runs, and even seems to work when you type slowly: its framer takes each
``recv()`` for one line. The notebook lab3_framing.ipynb shows when that breaks and grades your
server. A reference solution is in solutions/lab3_server.py: try on your own first.

Run it from a terminal with ``python lab3_server.py --port 5050``, or from Python with
``server = serve()`` ... ``server.stop()``. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("lab")
log.addHandler(logging.NullHandler())  # a notebook shows nothing unless it asks; main() shows all

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
RESERVED_NAMES = {"server", "all", "*"}
MESSAGE_PATTERN = re.compile(r"%([^%]+)%(.*)", re.DOTALL)  # %name%text; the text may hold '%'
GREETING = "* welcome to the lab chat: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter"
MAX_LINE = 4096  # the longest line a client may send, in bytes, without its line end
RECV_SIZE = 65536
ACCEPT_POLL = 0.2  # seconds: how often the accept loop looks whether it should stop


@dataclass(eq=False)  # eq=False: two clients are the same only if they are the same object
class Client:
    """One connection; once it has chosen a name, one chat client."""

    number: int
    sock: socket.socket
    address: tuple[str, int]
    name: str | None = None  # set when the name is accepted
    send_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one writer at a time


class LineFramer:
    """Cut a byte stream into lines: ``feed()`` takes what ``recv()`` returned and gives back
    every line that is now complete (without its ``\\n`` or ``\\r\\n``). A line longer than
    ``max_line`` bytes comes back once as ``None``, and its bytes are dropped up to its end, so
    the framer never holds more than ``max_line + 1`` bytes whatever a client sends."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.pending = b""  # the start of a line whose end has not arrived yet
        self.skipping = False  # inside a line already reported as too long

    def feed(self, data: bytes) -> list[bytes | None]:
        # TODO (lab 3, step 1): add data to self.pending, cut off every complete line (up to a
        #   b"\n"), and keep the rest in self.pending for the next call. Return the lines
        #   without their b"\n", and without a b"\r" just before it (nc and telnet may send
        #   \r\n). Hint: bytes.split(b"\n") gives the complete lines and, last, the rest.
        # TODO (lab 3, step 2): a complete line longer than self.max_line bytes is returned as
        #   None. If self.pending grows longer than self.max_line + 1 bytes, throw it away,
        #   return None once, and set self.skipping: while it is set, the bytes up to the next
        #   b"\n" belong to that line and are dropped too.
        return [data.removesuffix(b"\n").removesuffix(b"\r")]  # wrong: one recv() is not one line


def name_error(name: str) -> str | None:
    """Why ``name`` cannot be a client's name, or None if it can."""
    if not NAME_PATTERN.fullmatch(name):
        return f"invalid name {name!r}: use 1-32 characters from A-Z a-z 0-9 _ . -"
    if name.lower() in RESERVED_NAMES:
        return f"invalid name {name!r}: reserved"
    return None


def shutdown(sock: socket.socket) -> None:
    """End both directions of a connection: a thread waiting in recv() or sendall() wakes up."""
    with contextlib.suppress(OSError):  # already closed or reset
        sock.shutdown(socket.SHUT_RDWR)


class ChatServer:
    """The server. ``start()`` starts the accept thread; ``stop()`` closes the listening socket
    and every connection and joins every thread it started (bounded)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.listener = socket.create_server((host, port))
        self.listener.settimeout(ACCEPT_POLL)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.lock = threading.Lock()  # guards the four fields below
        self.clients: dict[str, Client] = {}  # registered clients by name.lower()
        self.connections: set[Client] = set()  # every open connection, named or not
        self.threads: list[threading.Thread] = []
        self.stopping = False
        self.numbers = itertools.count(1)

    # --- starting and stopping ------------------------------------------------------------------

    def start(self) -> ChatServer:
        self.accept_thread = self.start_thread(self.accept_loop, "lab-accept")
        return self

    def start_thread(self, target, name: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self.lock:
            self.threads = [t for t in self.threads if t.is_alive()]  # forget the ended ones
            self.threads.append(thread)
        thread.start()
        return thread

    def stop(self, timeout: float = 5.0) -> None:
        with self.lock:
            self.stopping = True  # from now on no connection is taken in
            connections = list(self.connections)
        for client in connections:
            shutdown(client.sock)  # its threads wake up, clean up and end
        deadline = time.monotonic() + timeout
        self.accept_thread.join(timeout)  # the accept thread: after it, no thread is started
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.listener.close()

    # --- the accept thread ----------------------------------------------------------------------

    def accept_loop(self) -> None:
        while not self.stopping:
            try:
                sock, address = self.listener.accept()
            except TimeoutError:  # nobody came within ACCEPT_POLL: look at self.stopping again
                continue
            except OSError as exc:  # e.g. out of file descriptors: keep serving the others
                log.warning("accept failed: %s", exc)
                time.sleep(ACCEPT_POLL)
                continue
            sock.settimeout(None)  # the client's thread may wait for its lines as long as it likes
            client = Client(next(self.numbers), sock, address)
            with self.lock:
                if self.stopping:
                    sock.close()
                    return
                self.connections.add(client)
            log.info("connection %d from %s:%d", client.number, *address)
            self.start_thread(self.serve_client, f"lab-client-{client.number}", client)

    # --- one client's thread --------------------------------------------------------------------

    def serve_client(self, client: Client) -> None:
        """Serve one connection from greeting to goodbye. Runs in ``lab-client-N``."""
        try:
            self.send_to(client, GREETING)
            lines = self.read_lines(client)
            if self.register(client, lines):
                self.tell_others(client, f"* {client.name} joined")
                for line in lines:
                    self.handle_line(client, line)
        except OSError as exc:  # reset by the client, or the socket was shut down
            log.info("connection %d: %s", client.number, exc)
        finally:
            self.unregister(client)
            shutdown(client.sock)  # a thread stuck in sendall() to this client fails at once
            with client.send_lock:  # ... and lets go of the lock; nobody writes while we close
                client.sock.close()
            with self.lock:
                self.connections.discard(client)
            log.info("connection %d closed", client.number)

    def read_lines(self, client: Client) -> Iterator[str]:
        """The lines the client sends, as text, until it closes the connection. Over-long lines
        and lines that are not UTF-8 are refused here and never reach the caller."""
        framer = LineFramer(MAX_LINE)
        while data := client.sock.recv(RECV_SIZE):
            for raw in framer.feed(data):
                if raw is None:
                    self.refuse(client, "line too long")
                    continue
                # TODO (lab 3, step 3): decode strictly (raw.decode("utf-8") raises
                #   UnicodeDecodeError on bytes that are not UTF-8); refuse such a line with
                #   "invalid utf-8" and go on with the next one.
                yield raw.decode("utf-8", errors="replace")

    def register(self, client: Client, lines: Iterator[str]) -> bool:
        """Read names until one is valid and free; True once the client is registered, False if
        it left first."""
        for line in lines:
            name = line.strip()
            error = name_error(name)
            if error:
                self.refuse(client, error)
                continue
            with self.lock:
                if name.lower() not in self.clients:
                    client.name = name
                    self.clients[name.lower()] = client
                    online = ", ".join(sorted(c.name for c in self.clients.values() if c.name))
                    # Still under the lock: the welcome is this client's first line after its
                    # name, before any other thread can find it and send it something.
                    self.send_to(client, f"* welcome {name}")
                    self.send_to(client, f"* online: {online}")
                    log.info("connection %d is %s", client.number, name)
                    return True
            self.refuse(client, "name taken")
        return False

    def unregister(self, client: Client) -> None:
        with self.lock:
            if client.name is None or self.clients.get(client.name.lower()) is not client:
                return
            del self.clients[client.name.lower()]
        self.tell_others(client, f"* {client.name} left")

    def handle_line(self, client: Client, line: str) -> None:
        """Act on one line of a registered client: ``%name%text``, ``%*%text``, ``%server%who``."""
        match = MESSAGE_PATTERN.fullmatch(line)
        if match is None:
            self.refuse(client, "expected %name%message")
            return
        to, text = match.groups()
        if to.lower() == "server":
            self.command(client, text.strip().lower())
        elif to.lower() in ("*", "all"):
            self.tell_others(client, f"%{client.name}%{text}")
        else:
            with self.lock:
                receiver = self.clients.get(to.lower())
            if receiver is None:
                self.refuse(client, f"unknown client {to!r}")
            else:
                self.send_to(receiver, f"%{client.name}%{text}")

    def command(self, client: Client, command: str) -> None:
        if command == "who":
            with self.lock:
                names = sorted(c.name for c in self.clients.values() if c.name)
            self.send_to(client, "* online: " + ", ".join(names))
        elif command == "help":
            for text in (
                "%name%text sends text to name",
                "%*%text sends text to everyone else",
                "%server%who lists who is online",
                "%server%help shows this help",
            ):
                self.send_to(client, "* " + text)
        else:
            self.refuse(client, f"unknown command {command!r}; try %server%help")

    # --- sending ----------------------------------------------------------------------------------

    def refuse(self, client: Client, reason: str) -> None:
        """Tell the client what was wrong with its last line, and note it in the log."""
        log.info("connection %d: %s", client.number, reason)
        self.send_to(client, f"! {reason}")

    def tell_others(self, sender: Client, text: str) -> None:
        """Send ``text`` to every registered client except ``sender``."""
        with self.lock:  # copy the list; send outside the lock, so no thread waits for it long
            receivers = [c for c in self.clients.values() if c is not sender]
        for receiver in receivers:
            self.send_to(receiver, text)

    def send_to(self, client: Client, text: str) -> None:
        """Send one line to ``client`` now, from the calling thread, which waits while the
        client's socket is full (lab 4 is about why that is a problem)."""
        try:
            with client.send_lock:  # one writer at a time, so two lines never mix
                client.sock.sendall((text + "\n").encode("utf-8"))
        except OSError:  # the client is gone; its own thread cleans up
            pass


def serve(host: str = "127.0.0.1", port: int = 0) -> ChatServer:
    """Start the server in background threads and return it (``.address``, ``.stop()``)."""
    return ChatServer(host, port).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5050)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s: %(message)s")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())  # before saying we listen
    server = serve(args.host, args.port)
    print(f"listening on {server.address[0]}:{server.address[1]}", flush=True)
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
