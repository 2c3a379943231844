"""A small chat server written from README.md's protocol section alone, as a student might.

One thread per client reads lines; every client has an outbox and a writer thread, so a slow
reader never holds up a sender. The one-bug servers of this folder import it and change one
method, the way a student's mistake changes one place::

    python tests/student_servers/chat_base.py --port 5050
"""

from __future__ import annotations

import argparse
import logging
import queue
import re
import socket
import sys
import threading
import unicodedata

NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
RESERVED = {"server", "all", "*"}
ALLOWED_MARKS = {"\u200e", "\u200f", "\u061c"}  # direction marks of ordinary RTL text
TOO_LONG = object()  # what the framer yields for a line over the limit
log = logging.getLogger("chat")


def has_control(text: str) -> bool:
    for char in text:
        if char in ALLOWED_MARKS:
            continue
        if unicodedata.category(char) in ("Cc", "Cf") and char != "\t":
            return True
    return False


class Client:
    def __init__(self, server: ChatServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.name: str | None = None
        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        self.writer = threading.Thread(target=self.write_lines, daemon=True)
        self.writer.start()

    def write_lines(self) -> None:
        while (data := self.outbox.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                return

    def kick(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ChatServer:
    capacity = 100
    max_line = 4096
    outbox_limit = 1000  # lines waiting for a reader before it is cut off

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.clients: dict[str, Client] = {}  # lower-case name -> client
        self.connected = 0  # connections, named or not

    # --- connections ---------------------------------------------------------------------

    def serve_forever(self) -> None:
        while True:
            sock, address = self.listener.accept()
            log.info("connection from %s:%d", *address)
            threading.Thread(target=self.handle_connection, args=(sock,), daemon=True).start()

    def handle_connection(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            full = self.connected >= self.capacity
            if not full:
                self.connected += 1
        if full:
            sock.sendall(b"! server full\n")
            sock.close()
            return
        client = Client(self, sock)
        try:
            self.send(client, "* chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter")
            for line in self.lines(client):
                self.on_line(client, line)
        except OSError:
            pass
        finally:
            self.leave(client)

    def lines(self, client: Client):
        """Every line the client sends, without its line end; TOO_LONG for an over-long one."""
        buffer = b""
        skipping = False  # inside an over-long line, until its newline
        while data := client.sock.recv(65536):
            buffer += data
            while True:
                end = buffer.find(b"\n")
                if end < 0:
                    break
                line, buffer = buffer[:end], buffer[end + 1 :]
                if skipping:
                    skipping = False
                    continue
                yield line
            if len(buffer) > self.max_line + 1:
                if not skipping:
                    yield TOO_LONG
                buffer, skipping = b"", True
        # whatever is left in buffer was never finished with a newline: not a line

    def on_line(self, client: Client, line) -> None:
        if line is not TOO_LONG and line.endswith(b"\r"):
            line = line[:-1]  # telnet and Windows end lines with \r\n
        if line is TOO_LONG or len(line) > self.max_line:
            return self.send(client, "! line too long")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self.send(client, "! invalid utf-8")
        if self.has_control(text):
            return self.send(client, "! control characters are not allowed")
        if client.name is None:
            self.register(client, text)
        else:
            self.route(client, text)

    def has_control(self, text: str) -> bool:
        return has_control(text)

    # --- names ---------------------------------------------------------------------------

    def name_problem(self, name: str) -> str | None:
        if not NAME.fullmatch(name):
            return "! invalid name: use 1-32 of A-Z a-z 0-9 _ . -"
        if name.lower() in RESERVED:
            return f"! invalid name: {name!r} is reserved"
        return None

    def register(self, client: Client, name: str) -> None:
        if problem := self.name_problem(name):
            return self.send(client, problem)
        with self.lock:
            taken = name.lower() in self.clients
            if not taken:
                self.clients[name.lower()] = client
                client.name = name
                others = [c for c in self.clients.values() if c is not client]
                online = ", ".join(c.name for c in self.clients.values())
        if taken:
            return self.send(client, "! name taken")
        self.send(client, f"* welcome {name}")
        self.send(client, f"* online: {online}")
        for other in others:
            self.send(other, f"* {name} joined")

    # --- messages ------------------------------------------------------------------------

    def route(self, client: Client, text: str) -> None:
        match = re.fullmatch(r"%([^%]+)%(.*)", text, re.DOTALL)
        if not match:
            return self.send(client, "! expected %name%message")
        to, body = match.groups()
        if to.lower() == "server":
            return self.command(client, body)
        line = f"%{client.name}%{body}"
        if to in ("*", "all"):
            with self.lock:
                others = [c for c in self.clients.values() if c is not client]
            for other in others:
                log.info("%s -> %s: %d bytes", client.name, other.name, len(body))
                self.send(other, line)
            return
        with self.lock:
            receiver = self.clients.get(to.lower())
        if receiver is None:
            return self.send(client, f"! unknown client {to!r}")
        log.info("%s -> %s: %d bytes", client.name, receiver.name, len(body))
        self.send(receiver, line)

    def command(self, client: Client, body: str) -> None:
        body = body.strip().lower()  # "%server% WHO " is who too
        if body == "who":
            with self.lock:
                online = ", ".join(c.name for c in self.clients.values())
            self.send(client, f"* online: {online}")
        elif body == "help":
            self.send(client, "* %name%text, %*%text, %server%who, %server%help")
        else:
            self.send(client, f"! unknown command {body!r}")

    def send(self, client: Client, line: str) -> None:
        if client.outbox.qsize() >= self.outbox_limit:
            client.kick()  # too far behind: it goes, nobody waits for it
            return
        client.outbox.put(line.encode("utf-8") + b"\n")

    def leave(self, client: Client) -> None:
        with self.lock:
            self.connected -= 1
            named = client.name is not None and self.clients.get(client.name.lower()) is client
            if named:
                del self.clients[client.name.lower()]
            others = list(self.clients.values())
        if named:
            for other in others:
                self.send(other, f"* {client.name} left")
        client.outbox.put(None)  # the writer sends what is queued, then stops
        client.writer.join(2)
        client.kick()
        client.sock.close()


def main(server_class: type[ChatServer] = ChatServer) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5050)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = server_class(args.port)
    print(f"listening on 127.0.0.1:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
