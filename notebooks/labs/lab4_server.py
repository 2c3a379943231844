"""Lab 4: the slow client. Lab 4 continues YOUR server from lab 3.

Start by renaming this file ``lab4_rules.py`` (keep it: its rules are what you build), then
copy your own ``lab3_server.py`` to ``lab4_server.py`` (the notebook lab4_slow_client.ipynb says how),
then copy in ``MAX_OUTBOX`` from the rules file, and add what this lab asks. If your
instructor handed out ``start/``, you may start from ``start/lab4_server.py`` instead: labs 1
to 3 solved, with lab 4's rules. This handed-out file is lab 1's frame again, with nothing of
labs 1 to 3 in it: starting from it, you write labs 1 to 4.

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

The notebook lab4_slow_client.ipynb has folded hints and grades your server. Standard library
only.
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
MAX_OUTBOX = 1000  # lines waiting for one client before the server gives up on it


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
        # TODO (labs 1-4): the rules at the top of lab1_server.py to lab3_server.py and of this file;
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
