"""Lab 4: the slow client. This is the file you edit.

Labs 1-3 are done here (threads, names, routing, notices, framing, limits), so you can start
with this lab even if you skipped them. As it is, a line for a client is written into its
socket by the sender's thread (``send_to()`` calls ``sendall()``). When a client stops reading,
its buffers fill up, ``sendall()`` waits, and the sender's thread waits with it: one stalled
reader freezes everyone who writes to it. Your part is in the blocks marked
``TODO (lab 4, step N)``:

1. ``write_loop()``: each client gets a **writer thread** that takes lines from the client's
   **outbox** (``Client.outbox``, a ``queue.Queue``) and sends them; it is the only thread that
   writes to that socket, and the only one that waits for it;
2. ``serve_client()`` starts the writer thread, ``lab-writer-N``, and stops it at the end;
3. ``send_to()`` puts the line in the outbox instead of sending it, and never waits;
4. the outbox has a limit (``MAX_OUTBOX`` lines): a client that falls further behind is
   disconnected, so it cannot fill the server's memory.

As it is, the file runs and passes labs 1-3. The notebook lab4_slow_client.ipynb shows one
slow reader freezing the others and grades your server. A reference solution is in
solutions/lab4_server.py: try on your own first.

Run it from a terminal with ``python lab4_server.py --port 5050``, or from Python with
``server = serve()`` ... ``server.stop()``. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import queue
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
MAX_OUTBOX = 1000  # lines waiting for one client before the server gives up on it
RECV_SIZE = 65536
ACCEPT_POLL = 0.2  # seconds: how often the accept loop looks whether it should stop


@dataclass(eq=False)  # eq=False: two clients are the same only if they are the same object
class Client:
    """One connection; once it has chosen a name, one chat client."""

    number: int
    sock: socket.socket
    address: tuple[str, int]
    name: str | None = None  # set when the name is accepted
    outbox: queue.Queue[bytes | None] = field(default_factory=lambda: queue.Queue(MAX_OUTBOX), repr=False)
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
        *complete, self.pending = (self.pending + data).split(b"\n")
        lines: list[bytes | None] = []
        for line in complete:
            if self.skipping:  # the end of the too-long line: drop it too
                self.skipping = False
                continue
            line = line.removesuffix(b"\r")
            lines.append(line if len(line) <= self.max_line else None)
        if len(self.pending) > self.max_line + 1:  # +1: room for the \r of a \r\n line end
            self.pending = b""
            if not self.skipping:
                self.skipping = True
                lines.append(None)
        return lines


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
        # TODO (lab 4, step 2): start this client's writer thread: a threading.Thread running
        #   self.write_loop(client), named f"lab-writer-{client.number}", with daemon=True.
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
            # TODO (lab 4, step 2): stop the writer thread: put None in the outbox, which tells
            #   it to end (use put_nowait and ignore queue.Full: a writer whose outbox is full is
            #   stuck in sendall(), which the shutdown above ends), then join the thread.
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
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.refuse(client, "invalid utf-8")
                    continue
                yield text

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
        """Send one line to ``client``."""
        # TODO (lab 4, step 3): put the encoded line in client.outbox with put_nowait(), which
        #   never waits, instead of sending it here.
        # TODO (lab 4, step 4): when the outbox is full (put_nowait raises queue.Full), the
        #   client is too far behind: log a warning and disconnect it with shutdown(client.sock)
        #   (its own thread then cleans up and tells the others it left).
        # Until then: direct delivery. The calling thread writes, and waits while the client's
        # socket is full.
        try:
            with client.send_lock:  # one writer at a time, so two lines never mix
                client.sock.sendall((text + "\n").encode("utf-8"))
        except OSError:  # the client is gone; its own thread cleans up
            pass

    def write_loop(self, client: Client) -> None:
        """Send what is in the client's outbox, in order. Runs in ``lab-writer-N``, the only
        thread that writes to this client's socket, and the only one that waits for it."""
        # TODO (lab 4, step 1): take each line from client.outbox (get() waits for the next one)
        #   and send it with client.sock.sendall(), until you get None. If sendall() raises
        #   OSError, the client is gone: return (its own thread cleans up).


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
