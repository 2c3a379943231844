"""Lab 2: routing messages. A start file: lab 1 solved (the reference), lab 2 left to you.

Use it only if your own lab 1 server does not work yet; otherwise copy your own
``lab1_server.py`` to ``lab2_server.py`` and go on from there. Copy this file to
``../lab2_server.py`` (the notebook loads that one) and add what lab 2 asks where it says
``TODO (lab 2)`` (and wherever else you need).

What must be true when you are done: everything of lab 1 (stage ``threads``), and (in quotes,
the grader's checks, stage ``routing``):

1. After its name, a client's lines have the form ``%NAME%TEXT``. ``%bob%TEXT`` from alice
   reaches bob as ``%alice%TEXT``, byte for byte; the name ends at the second ``%``, the text may
   hold ``%`` and may be empty, and names are looked up in any case ("direct message"); spaces
   at the ends of the text are kept ("spaces kept").
2. A message for a name nobody has is answered ``! unknown client 'zed'``, to the sender only
   ("unknown recipient").
3. A line that is not ``%NAME%TEXT`` is answered ``! expected %name%message`` ("line without
   %name%").
4. ``%*%TEXT`` and ``%all%TEXT`` reach every other registered client once, as ``%alice%TEXT``,
   and not the sender ("broadcast").
5. ``%server%who`` is answered with one line, ``* online: `` and every name, sorted, joined with
   ``, `` ("who"), and so is ``%server% WHO ``: a command counts in any case, with spaces around
   it ("server commands in any case"); ``%server%help`` with a ``* `` line that says what a client can do; another
   command with a ``! `` line.
6. When a name is accepted, every other client hears ``* NAME joined``; when a registered client
   leaves, every other client hears ``* NAME left`` ("joined notice", "left notice"). A client
   that leaves before it has a name was never online: nobody hears of it ("a client without a
   name leaves unannounced").
7. Still true from lab 1: no thread sends while holding ``self.lock`` (a send can wait for as
   long as the receiver does not read: lab 4), and the shared registry is changed only under
   it, so many clients joining, talking and leaving at once leave it right ("many clients join,
   broadcast and leave at once").
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


@dataclass(eq=False)  # eq=False: two clients are the same only if they are the same object
class Client:
    """One connection; once it has chosen a name, one chat client."""

    number: int
    sock: socket.socket
    address: tuple[str, int]
    name: str | None = None  # set when the name is accepted
    send_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # one writer at a time


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

    def handle_line(self, client: Client, line: str) -> None:
        """Act on one line of a registered client (lab 2 routes it)."""
        # TODO (lab 2): the rules at the top of this file
        self.refuse(client, "not implemented yet: messages come in lab 2")

    # --- sending ---------------------------------------------------------------------------------

    def refuse(self, client: Client, reason: str) -> None:
        """Tell the client what was wrong with its last line, and note it in the log."""
        log.info("connection %d: %s", client.number, reason)
        self.send_to(client, f"! {reason}")

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
