"""Lab 3: framing, limits and bad input. A start file: labs 1 and 2 solved (the reference),
lab 3 left to you.

Use it only if your own lab 2 server does not work yet; otherwise copy your own
``lab2_server.py`` to ``lab3_server.py`` and go on from there. Copy this file to
``../lab3_server.py`` (the notebook loads that one) and add what lab 3 asks where it says
``TODO (lab 3)`` (and wherever else you need).

What must be true when you are done: everything of labs 1 and 2 (stages ``threads`` and
``routing``), and (in quotes, the grader's checks, stage ``framing``):

1. The server reads its clients with ``recv()`` (at most ``RECV_SIZE`` bytes at a time) and cuts
   the bytes into lines itself, in ``LineFramer`` (its interface is below: the notebook tests
   it offline). Python's file reader (``makefile``, ``readline``) is not used any more.
2. A line ends at ``\\n``; a ``\\r`` just before it is part of the line end ("lines ending
   '\\r\\n'"). Several lines in one
   ``recv()`` are several lines ("two lines in one packet"); a line that arrives in many
   ``recv()``s, even one byte at a time, is one line ("one line in many packets"), and a UTF-8
   character may be cut between two ``recv()``s.
3. Bytes after the last ``\\n`` of a client that leaves are not a line ("partial line at EOF").
4. A line longer than ``MAX_LINE`` bytes (without its line end) is answered ``! line too long``
   once; its bytes are dropped up to its ``\\n``, and the next line is read as usual; the
   connection stays open ("over-long line"). A line of exactly ``MAX_LINE`` bytes is not over
   the limit, and the limit counts bytes, not characters ("the longest line"). The framer never holds more than ``MAX_LINE + 1``
   bytes, whatever a client sends: a client cannot fill the server's memory, and the ``!`` comes
   as soon as the line is too long, not when its ``\\n`` arrives ("over-long line without its
   end").
5. A line that is not valid UTF-8 is answered ``! invalid utf-8`` and goes nowhere; the
   connection stays open ("invalid UTF-8").
6. A line holding a character that could make a screen show what the server never sent (a
   control character such as ESC, which starts an escape sequence; a line separator; a bidi
   embedding, override or isolate, U+202A-U+202E and U+2066-U+2069) is answered
   ``! control characters are not allowed`` and goes nowhere. A tab is fine, and so are the
   direction marks of ordinary Hebrew and Arabic text, U+200E, U+200F and U+061C ("control
   characters").
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

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # what a name may be
RESERVED_NAMES = {"server", "all", "*"}  # names nobody may have, in any case
GREETING = "* welcome to the lab chat: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter"
ACCEPT_POLL = 0.2  # seconds: the listener's timeout, so that the accept loop sees self.stopping
MESSAGE_PATTERN = re.compile(r"%([^%]+)%(.*)", re.DOTALL)  # %name%text; the text may hold '%'
MAX_LINE = 4096  # the longest line a client may send, in bytes, without its line end
RECV_SIZE = 65536  # the most bytes one recv() asks for


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
        # TODO (lab 3): what the framer must remember from one feed() to the next

    def feed(self, data: bytes) -> list[bytes | None]:
        # TODO (lab 3): the rules at the top of this file; the notebook tests this offline
        return []


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
        """The lines the client sends, as text, until it closes the connection (Python's file
        reader cuts the bytes into lines here; lab 3 does it with recv() and a framer)."""
        # TODO (lab 3): read with recv() and your LineFramer instead (the rules at the top)
        with client.sock.makefile("rb") as stream:
            for raw in stream:
                yield raw.rstrip(b"\r\n").decode("utf-8", errors="replace")

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
