"""Conforming, written apart: socketserver threads, its own wording, and an ack for every message.

It greets with a question, welcomes with the count, answers who as '* here now (3): amy ben cat',
acknowledges every delivered message with '* sent', and says '* amy has quit the chat'.
"""

from __future__ import annotations

import argparse
import queue
import re
import socketserver
import threading

NAME_RULE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
LIMIT = 4096
BAD_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200b-\u200d\u202a-\u202e\u2066-\u2069\ufeff]")


class Room:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.members: dict[str, ChatHandler] = {}

    def join(self, handler: ChatHandler, name: str) -> str | None:
        with self.lock:
            if name.lower() in self.members:
                return "! sorry, that name is in use"
            self.members[name.lower()] = handler
            handler.name = name
            return None

    def part(self, handler: ChatHandler) -> bool:
        with self.lock:
            if handler.name and self.members.get(handler.name.lower()) is handler:
                del self.members[handler.name.lower()]
                return True
            return False

    def everyone(self) -> list[ChatHandler]:
        with self.lock:
            return list(self.members.values())

    def find(self, name: str) -> ChatHandler | None:
        with self.lock:
            return self.members.get(name.lower())


class ChatHandler(socketserver.BaseRequestHandler):
    server: ChatTCPServer

    def setup(self) -> None:
        self.name: str | None = None
        self.pending_out: queue.Queue[bytes | None] = queue.Queue(maxsize=2000)
        self.writer = threading.Thread(target=self.write_out, daemon=True)
        self.writer.start()

    def write_out(self) -> None:
        while (data := self.pending_out.get()) is not None:
            try:
                self.request.sendall(data)
            except OSError:
                return

    def say(self, line: str) -> None:
        # a slow reader must not hold up the sender: 2000 lines behind, and it is cut off
        try:
            self.pending_out.put_nowait(line.encode() + b"\n")
        except queue.Full:
            try:
                self.request.shutdown(socketserver.socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> None:
        try:
            self.pending_out.put(None, timeout=1)
        except queue.Full:
            pass
        self.writer.join(2)

    def handle(self) -> None:
        room = self.server.room
        self.say("* hello! what's your name? (1-32 of A-Z a-z 0-9 _ . -)")
        pending = bytearray()
        overflow = False
        try:
            while True:
                chunk = self.request.recv(8192)
                if not chunk:
                    return
                pending += chunk
                while (cut := pending.find(b"\n")) >= 0:
                    raw = bytes(pending[:cut])
                    del pending[: cut + 1]
                    if overflow:
                        overflow = False
                        continue
                    self.one_line(raw)
                if len(pending) > LIMIT + 1 and not overflow:
                    self.say("! that line is too long (limit 4096 bytes)")
                    overflow = True
                if overflow:
                    pending.clear()
        except OSError:
            return
        finally:
            if room.part(self):
                for other in room.everyone():
                    other.say(f"* {self.name} has quit the chat")

    def one_line(self, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > LIMIT:
            return self.say("! that line is too long (limit 4096 bytes)")
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return self.say("! not valid utf-8, dropped")
        if BAD_CHARS.search(text):
            return self.say("! control characters are not allowed here")
        if self.name is None:
            return self.pick_name(text)
        m = re.match(r"%([^%]*)%", text)
        if not m or not m.group(1):
            return self.say("! please write %name%message")
        target, message = m.group(1), text[m.end():]
        room = self.server.room
        if target.lower() == "server":
            if message.strip().lower() == "who":
                names = [h.name for h in room.everyone()]
                return self.say(f"* here now ({len(names)}): {' '.join(names)}")
            return self.say("* commands: %server%who %server%help")
        if target in ("*", "all"):
            for other in room.everyone():
                if other is not self:
                    other.say(f"%{self.name}%{message}")
            return self.say("* sent to everyone")
        receiver = room.find(target)
        if receiver is None:
            return self.say(f"! nobody called {target} here")
        receiver.say(f"%{self.name}%{message}")
        self.say(f"* sent to {receiver.name}")

    def pick_name(self, name: str) -> None:
        if not NAME_RULE.match(name) or name.lower() in ("server", "all"):
            return self.say("! that name is not allowed, try another")
        if refusal := self.server.room.join(self, name):
            return self.say(refusal)
        others = [h for h in self.server.room.everyone() if h is not self]
        self.say(f"* hi {name}, {len(others)} other(s) here")
        for other in others:
            other.say(f"* {name} is here")


class ChatTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, backlog: int) -> None:
        self.request_queue_size = backlog  # what listen() is given (socketserver's default: 5)
        super().__init__(("127.0.0.1", port), ChatHandler)
        self.room = Room()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5050)
    parser.add_argument("--backlog", type=int, default=socketserver.TCPServer.request_queue_size)
    options = parser.parse_args()
    with ChatTCPServer(options.port, options.backlog) as server:
        print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
        server.serve_forever()
