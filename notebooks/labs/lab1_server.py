"""Lab 1: a threaded chat server where clients choose their names. This is the file you write.

Given, because it is not this lab's subject: the listening socket and the shared fields in
``ChatServer.__init__``, ``start()`` (it starts the thread ``lab-accept``, which runs your
``accept_loop()``), ``stop()``, ``serve()`` for the notebook, ``main()`` for a terminal
(``python lab1_server.py --port 5050``), and the ``Client`` record (add the fields you need).
Everything else is yours: untouched, ``accept_loop()`` ends at once and nobody is greeted.

What must be true when you are done (in quotes, the grader's checks, stage ``threads``):

1. Every new connection is greeted at once with ``GREETING`` ("greeting on connect"), also
   while other clients are connected and silent ("20 clients at once"): the accept loop never
   waits for a client, and each client is served by a thread of its own named ``lab-client-N``
   (N counts connections from 1).
2. The client's first line is the name it wants (spaces around it do not count). A name that
   does not fullmatch ``NAME_PATTERN``, or is one of ``RESERVED_NAMES`` in any case, is answered
   with a line ``! invalid name ...`` that says why, and the client may try again on the same
   connection ("invalid names refused").
3. A name that is online, in any case, is answered ``! name taken`` and the client may try
   again ("duplicate name refused"). Two clients never both get "bob", even at the same instant
   ("one name asked for at the same moment").
4. An accepted name is answered with ``* welcome NAME``, then ``* online: `` and every name
   online, sorted, joined with ``, `` ("register a name"): the client's first two lines after
   its name, whatever other threads do meanwhile.
5. When a client leaves, its name is free again ("a name is free again after its client leaves").
6. ``self.clients``, ``self.connections`` and ``self.threads`` are shared by every thread: they
   are read and changed only while holding ``self.lock``, and no thread waits for a socket
   (sends, receives) while holding ``self.lock``. Two threads never write to one socket at once.
7. ``stop()`` ends everything: it sets ``self.stopping``, shuts down every socket in
   ``self.connections`` and joins every thread in ``self.threads``. So a connection is in
   ``self.connections`` while it is open, every thread you start is in ``self.threads``, and the
   accept loop ends soon after ``self.stopping`` is set (the listener's ``accept()`` gives up
   with ``TimeoutError`` every ``ACCEPT_POLL`` seconds). No ``lab-`` thread is left after ``stop()``.
8. Lines after the name may be answered with a ``! `` line for now: routing them is lab 2.

The notebook lab1_threaded_server.ipynb has folded hints and grades your server. Standard
library only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("lab")
log.addHandler(logging.NullHandler())  # a notebook shows nothing unless it asks; main() shows all

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # what a name may be
RESERVED_NAMES = {"server", "all", "*"}  # names nobody may have, in any case
GREETING = "* welcome to the lab chat: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter"
ACCEPT_POLL = 0.2  # seconds: the listener's timeout, so that the accept loop sees self.stopping


@dataclass(eq=False)  # eq=False: two clients are the same only if they are the same object
class Client:
    """One connection; once it has chosen a name, one chat client."""

    number: int
    sock: socket.socket
    address: tuple[str, int]
    name: str | None = None  # set when the name is accepted


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

    # --- yours -----------------------------------------------------------------------------------

    def accept_loop(self) -> None:
        """The thread ``lab-accept``. Untouched, it ends at once: nobody is ever greeted."""
        # TODO (lab 1): the rules at the top of this file; the notebook has hints


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
