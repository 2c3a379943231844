"""Lab 2: routing messages. Lab 2 continues YOUR server from lab 1.

Start by renaming this file ``lab2_rules.py`` (keep it: its rules are what you build), then
copy your own ``lab1_server.py`` to ``lab2_server.py`` (the notebook lab2_routing.ipynb says how),
then add what this lab asks. If your instructor handed out ``start/``, you may start
from ``start/lab2_server.py`` instead: lab 1 solved, with lab 2's rules. This handed-out file is
lab 1's frame again, with nothing of lab 1 in it: starting from it, you write labs 1 and 2.

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

The notebook lab2_routing.ipynb has folded hints and grades your server. Standard library only.
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
        # TODO (labs 1-2): the rules at the top of lab1_server.py and of this file;
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
