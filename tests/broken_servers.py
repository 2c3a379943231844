"""A small threaded chat server written from README.md alone, and the classic bugs, one at a time.

Without ``bug`` it is correct-ish: a thread per client reads lines (with a limit), and each
client has an outbox and a writer thread, so nobody waits for a slow reader. Each ``bug``
switches one known mistake on, for the grader's tests::

    python tests/broken_servers.py --port 5050 --bug echo-broadcast
"""

from __future__ import annotations

import argparse
import queue
import re
import socket
import threading
import unicodedata

BUGS = {
    "echo-broadcast": "a broadcast goes back to its sender too",
    "drop-unknown": "a message to an unknown client is dropped silently",
    "duplicate-names": "a name that is online already is accepted again",
    "one-recv-one-line": "each recv() is taken as exactly one line",
    "blocking-send": "a message is delivered with a blocking sendall() in the sender's thread",
    "unlimited-lines": "a line is buffered without limit",
}
MAX_LINE = 4096
MAX_OUTBOX = 1000  # lines waiting for a client before it is dropped as too slow
NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.name: str | None = None
        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        self.writer = threading.Thread(target=self.write_all, daemon=True)
        self.writer.start()

    def write_all(self) -> None:
        while (data := self.outbox.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                return


class Server:
    def __init__(self, bug: str | None = None, port: int = 0) -> None:
        self.bug = bug
        self.listener = socket.create_server(("127.0.0.1", port))
        self.address = self.listener.getsockname()
        self.clients: dict[str, Client] = {}  # by lower-case name
        self.connections: set[Client] = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.accept_all, daemon=True)]
        self.threads[0].start()

    def accept_all(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self.serve, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        with self.lock:
            for client in self.connections:
                shutdown(client.sock)
        for thread in self.threads:
            thread.join(5)

    # --- one client --------------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms waits between short lines
        client = Client(sock)
        with self.lock:
            self.connections.add(client)
        self.deliver(client, b"* send your name\n")
        buffer, discarding = b"", False
        try:
            while data := sock.recv(4096):
                if self.bug == "one-recv-one-line":
                    lines = [data.rstrip(b"\r\n")]
                else:
                    *lines, buffer = (buffer + data).split(b"\n")
                    if discarding and lines:
                        lines, discarding = lines[1:], False  # the end of an over-long line
                    if discarding:
                        buffer = b""
                    elif len(buffer) > MAX_LINE and self.bug != "unlimited-lines":
                        buffer, discarding = b"", True
                        self.deliver(client, b"! line too long\n")
                for line in lines:
                    self.handle(client, line.removesuffix(b"\r"))
        except OSError:
            pass
        finally:
            self.leave(client)

    def handle(self, client: Client, line: bytes) -> None:
        if len(line) > MAX_LINE and self.bug != "unlimited-lines":
            return self.deliver(client, b"! line too long\n")
        try:
            text = line.decode()
        except UnicodeDecodeError:
            return self.deliver(client, b"! invalid utf-8\n")
        if any(unsafe(char) for char in text):
            return self.deliver(client, b"! control characters are not allowed\n")
        if client.name is None:
            return self.register(client, text.strip())
        to, percent, body = text[1:].partition("%")
        if not text.startswith("%") or not percent or not to:
            return self.deliver(client, b"! expected %name%message\n")
        if to == "server":
            with self.lock:
                online = ", ".join(c.name for c in self.clients.values() if c.name)
            return self.deliver(client, f"* online: {online}\n".encode())
        message = f"%{client.name}%{body}\n".encode()
        with self.lock:
            if to in ("*", "all"):
                receivers = [
                    c for c in self.clients.values() if c is not client or self.bug == "echo-broadcast"
                ]
            else:
                receivers = [c for c in [self.clients.get(to.lower())] if c is not None]
        if not receivers and to not in ("*", "all") and self.bug != "drop-unknown":
            self.deliver(client, f"! unknown client {to!r}\n".encode())
        for receiver in receivers:
            self.deliver(receiver, message)

    def register(self, client: Client, name: str) -> None:
        if not NAME.fullmatch(name) or name.lower() in ("server", "all"):
            return self.deliver(client, f"! invalid name {name!r}\n".encode())
        with self.lock:
            taken = name.lower() in self.clients and self.bug != "duplicate-names"
            if not taken:
                client.name = name
                self.clients[name.lower()] = client
                others = [c for c in self.clients.values() if c is not client]
        if taken:
            return self.deliver(client, b"! name taken\n")
        self.deliver(client, f"* welcome {name}\n".encode())
        for other in others:
            self.deliver(other, f"* {name} joined\n".encode())

    def deliver(self, client: Client, data: bytes) -> None:
        if self.bug == "blocking-send":
            try:
                client.sock.sendall(data)  # waits, in the sender's thread, until the receiver reads
            except OSError:
                pass
        elif client.outbox.qsize() < MAX_OUTBOX:
            client.outbox.put(data)
        else:  # too slow: drop it instead of waiting for it
            shutdown(client.sock)

    def leave(self, client: Client) -> None:
        with self.lock:
            self.connections.discard(client)
            registered = client.name is not None and self.clients.get(client.name.lower()) is client
            if registered:
                del self.clients[client.name.lower()]
            others = list(self.clients.values())
        if registered:
            for other in others:
                self.deliver(other, f"* {client.name} left\n".encode())
        shutdown(client.sock)  # it has gone: a writer stuck in sendall() gives up too
        client.outbox.put(None)
        client.writer.join(5)
        client.sock.close()


def unsafe(char: str) -> bool:
    """A control character, or a bidi embedding, override or isolate (a tab is fine)."""
    return (
        (unicodedata.category(char) == "Cc" and char != "\t")
        or "\u202a" <= char <= "\u202e"
        or ("\u2066" <= char <= "\u2069")
    )


def shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5050)
    parser.add_argument("--bug", choices=list(BUGS))
    args = parser.parse_args()
    server = Server(args.bug, args.port)
    print(f"listening on 127.0.0.1:{server.address[1]}", flush=True)
    threading.Event().wait()  # until SIGTERM or Ctrl-C


if __name__ == "__main__":
    main()
