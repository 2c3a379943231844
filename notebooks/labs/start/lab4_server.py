"""Lab 4: the slow client. A start file: labs 1 to 3 solved (the reference), lab 4 left to you.

Use it only if your own lab 3 server does not work yet; otherwise copy your own
``lab3_server.py`` to ``lab4_server.py`` and go on from there. Copy this file to
``../lab4_server.py`` (the notebook loads that one) and add what lab 4 asks where it says
``TODO (lab 4)`` (and wherever else you need).

What must be true when you are done: everything of labs 1 to 3 (stages ``threads``,
``routing``, ``framing``), and (in quotes, the grader's checks, stage ``slow``):

1. A client that stops reading delays nobody else: no thread that serves one client ever waits
   for another client's socket ("slow reader does not stall others"). Lines to one client reach
   it in the order they were sent, and none is dropped silently: a client gets every line, or
   is disconnected ("no lines lost without a word").
2. A client that falls more than ``MAX_OUTBOX`` lines behind is disconnected: the others hear
   ``* NAME left`` ("a client dropped as too slow is announced"), and the server logs why with
   ``log.warning(...)``. So a client that never
   reads cannot fill the server's memory either.
3. A client that closes its connection (FIN) or resets it (RST) ends only its own connection:
   its name is freed, the others hear it left and are served as before ("client closes (FIN)",
   "client resets (RST)").
4. Every thread you start is named after the client it serves (``lab-client-N``, and for
   example ``lab-writer-N``) and has ended when ``stop()`` returns.
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
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("lab")
log.addHandler(logging.NullHandler())  # a notebook shows nothing unless it asks; main() shows all

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # what a name may be
RESERVED_NAMES = {"server", "all", "*"}  # names nobody may have, in any case
GREETING = "* welcome to the lab chat: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter"
ACCEPT_POLL = 0.2  # seconds: the listener's timeout, so that the accept loop sees self.stopping
MESSAGE_PATTERN = re.compile(r"%([^%]+)%(.*)", re.DOTALL)  # %name%text; the text may hold '%'
MAX_LINE = 4096  # the longest line a client may send, in bytes, without its line end
RECV_SIZE = 65536  # the most bytes one recv() asks for
MAX_OUTBOX = 1000  # lines waiting for one client before the server gives up on it


@dataclass(eq=False)  # eq=False: two clients are the same only if they are the same object
class Client:
    """One connection; once it has chosen a name, one chat client."""

    number: int
    sock: socket.socket
    address: tuple[str, int]
    name: str | None = None  # set when the name is accepted
    send_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # one writer at a time


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


# What could make a screen show a line the server never sent: control characters (an escape
# sequence), line separators, and the bidi embeddings, overrides and isolates. A tab is fine,
# and so are the direction marks of ordinary Hebrew and Arabic text (U+200E, U+200F, U+061C).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe(text: str) -> bool:
    """Whether ``text`` holds a character that could forge or garble a displayed line."""
    return any(
        char in BIDI_CONTROLS or (unicodedata.category(char) in ("Cc", "Zl", "Zp") and char != "\t")
        for char in text
    )


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
        self.listener.settimeout(ACCEPT_POLL)  # accept() raises TimeoutError after ACCEPT_POLL s
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.lock = threading.Lock()  # guards the four fields below
        self.clients: dict[str, Client] = {}  # registered clients by name.lower()
        self.connections: set[Client] = set()  # every open connection: stop() shuts each down
        self.threads: list[threading.Thread] = []  # the threads you start: stop() joins each
        self.stopping = False  # set by stop(): from then on no connection is taken in
        self.numbers = itertools.count(1)  # connection numbers, for thread names and the log

    # --- starting and stopping (given) -----------------------------------------------------------

    def start(self) -> ChatServer:
        """Start the thread ``lab-accept``, which runs ``accept_loop()``, and return at once."""
        self.accept_thread = threading.Thread(target=self.accept_loop, name="lab-accept", daemon=True)
        self.accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Shut down every connection in ``self.connections``, join ``lab-accept`` and every
        thread in ``self.threads`` (all within ``timeout`` seconds), close the listener."""
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

    # --- the accept thread -----------------------------------------------------------------------

    def accept_loop(self) -> None:
        """The thread ``lab-accept``: take in connections and start a thread for each."""
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
            thread = threading.Thread(
                target=self.serve_client, args=(client,), name=f"lab-client-{client.number}", daemon=True
            )
            with self.lock:
                if self.stopping:  # stop() has begun and would not see this connection
                    sock.close()
                    return
                self.connections.add(client)
                self.threads = [t for t in self.threads if t.is_alive()]  # forget the ended ones
                self.threads.append(thread)
            log.info("connection %d from %s:%d", client.number, *address)
            thread.start()

    # --- one client's thread ---------------------------------------------------------------------

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
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.refuse(client, "invalid utf-8")
                    continue
                if unsafe(text):
                    self.refuse(client, "control characters are not allowed")
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
                taken = name.lower() in self.clients
                if not taken:
                    client.name = name
                    self.clients[name.lower()] = client
                    online = ", ".join(sorted(c.name for c in self.clients.values() if c.name))
                    # Other threads can find the client from here on. Holding its send lock
                    # until the welcome is out keeps the welcome its first line; nobody else
                    # can hold that lock yet, so this never waits.
                    client.send_lock.acquire()
            if taken:
                self.refuse(client, "name taken")
                continue
            try:  # the sends wait for the socket: outside the shared lock
                self.send_to(client, f"* welcome {name}")
                self.send_to(client, f"* online: {online}")
            finally:
                client.send_lock.release()
            log.info("connection %d is %s", client.number, name)
            return True
        return False

    def unregister(self, client: Client) -> None:
        """Forget a client that has left, so that its name is free again."""
        with self.lock:
            if client.name is None or self.clients.get(client.name.lower()) is not client:
                return  # it never had a name (or, impossible here, someone else has it now)
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
        """Answer ``%server%COMMAND``."""
        if command == "who":
            with self.lock:
                names = sorted(c.name for c in self.clients.values() if c.name)
            self.send_to(client, "* online: " + ", ".join(names))
        elif command == "help":
            self.send_to(client, "* %name%text to one client, %*%text to all, %server%who, %server%help")
        else:
            self.refuse(client, f"unknown command {command!r}; try %server%help")

    # --- sending ---------------------------------------------------------------------------------

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
        # TODO (lab 4): the rules at the top of this file
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
