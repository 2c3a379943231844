"""Conforming, written apart: one thread, a selectors loop, a byte limit on what waits for a
reader (64 KiB, then the slow reader is dropped)."""

from __future__ import annotations

import argparse
import selectors
import socket
import unicodedata

MAX_LINE = 4096
MAX_PENDING = 64 * 1024
VALID = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = bytearray()
        self.name: str | None = None
        self.discard = False


class SelectorChat:
    def __init__(self, port: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.by_name: dict[str, Conn] = {}

    def run(self) -> None:
        while True:
            for key, mask in self.sel.select():
                if key.data is None:
                    self.accept()
                    continue
                conn: Conn = key.data
                if mask & selectors.EVENT_WRITE:
                    self.flush(conn)
                if mask & selectors.EVENT_READ and conn.sock.fileno() != -1:
                    self.read(conn)

    def accept(self) -> None:
        sock, _ = self.listener.accept()
        sock.setblocking(False)
        conn = Conn(sock)
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self.write(conn, "* welcome to the chat, who are you?")

    def read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self.drop(conn)
        conn.inbuf += data
        while b"\n" in conn.inbuf:
            line, conn.inbuf = conn.inbuf.split(b"\n", 1)
            if conn.discard:
                conn.discard = False
                continue
            self.handle(conn, line.removesuffix(b"\r"))
            if conn.sock.fileno() == -1:
                return
        if len(conn.inbuf) > MAX_LINE + 1:
            if not conn.discard:
                self.write(conn, "! line too long")
            conn.inbuf, conn.discard = b"", True

    def decode(self, raw: bytes) -> str | None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def handle(self, conn: Conn, raw: bytes) -> None:
        if len(raw) > MAX_LINE:
            return self.write(conn, "! line too long")
        text = self.decode(raw)
        if text is None:
            return self.write(conn, "! invalid utf-8")
        for ch in text:
            if ch not in "\u200e\u200f\u061c" and unicodedata.category(ch) in ("Cc", "Cf"):
                return self.write(conn, "! control characters are not allowed")
        if conn.name is None:
            return self.login(conn, text)
        if not text.startswith("%") or text.find("%", 1) < 2:
            return self.write(conn, "! expected %name%message")
        end = text.find("%", 1)
        to, body = text[1:end], text[end + 1 :]
        if to.lower() == "server":
            if body.strip().lower() == "who":
                return self.write(conn, "* online: " + ", ".join(c.name for c in self.by_name.values()))
            return self.write(conn, "* try %server%who")
        out = f"%{conn.name}%{body}"
        if to in ("*", "all"):
            for other in list(self.by_name.values()):
                if other is not conn:
                    self.write(other, out)
        elif (target := self.by_name.get(to.lower())) is not None:
            self.write(target, out)
        else:
            self.write(conn, f"! unknown client '{to}'")

    def login(self, conn: Conn, name: str) -> None:
        if not 1 <= len(name) <= 32 or not set(name) <= VALID or name.lower() in ("server", "all"):
            return self.write(conn, "! invalid name, try again")
        if name.lower() in self.by_name:
            return self.write(conn, "! name taken")
        conn.name = name
        self.by_name[name.lower()] = conn
        self.write(conn, f"* welcome {name}")
        for other in list(self.by_name.values()):
            if other is not conn:
                self.write(other, f"* {name} joined")

    def write(self, conn: Conn, line: str) -> None:
        if conn.sock.fileno() == -1:
            return
        conn.outbuf += line.encode() + b"\n"
        if len(conn.outbuf) > MAX_PENDING:
            return self.drop(conn)  # too far behind
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf) if conn.outbuf else 0
            del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return self.drop(conn)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        self.sel.modify(conn.sock, events, conn)

    def drop(self, conn: Conn) -> None:
        if conn.sock.fileno() == -1:
            return
        self.sel.unregister(conn.sock)
        conn.sock.close()
        if conn.name is not None and self.by_name.get(conn.name.lower()) is conn:
            del self.by_name[conn.name.lower()]
            for other in list(self.by_name.values()):
                self.write(other, f"* {conn.name} left")


def main(server_class: type[SelectorChat] = SelectorChat) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5050)
    server = server_class(parser.parse_args().port)
    print(f"listening on 127.0.0.1:{server.listener.getsockname()[1]}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
