"""Lab 3: framing, limits and bad input. Lab 3 continues YOUR server from lab 2.

Start by renaming this file ``lab3_rules.py`` (keep it: its rules are what you build), then
copy your own ``lab2_server.py`` to ``lab3_server.py`` (the notebook lab3_framing.ipynb says how),
then copy in ``LineFramer``, ``MAX_LINE`` and ``RECV_SIZE`` from the rules file,
and add what this lab asks. If your instructor handed out ``start/``, you may start from
``start/lab3_server.py`` instead: labs 1 and 2 solved, with lab 3's rules. This handed-out file
is lab 1's frame again, with nothing of labs 1 and 2 in it: starting from it, you write labs 1
to 3.

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

The notebook lab3_framing.ipynb has folded hints and grades your server. Standard library only.
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
MAX_LINE = 4096  # the longest line a client may send, in bytes, without its line end
RECV_SIZE = 65536  # the most bytes one recv() asks for


@dataclass(eq=False)  # eq=False: two clients are the same only if they are the same object
class Client:
    """One connection; once it has chosen a name, one chat client."""

    number: int
    sock: socket.socket
    address: tuple[str, int]
    name: str | None = None  # set when the name is accepted


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
        # TODO (labs 1-3): the rules at the top of lab1_server.py, lab2_server.py and of this file;
        #   the notebooks have hints


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
