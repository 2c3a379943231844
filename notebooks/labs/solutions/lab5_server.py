"""Lab 5, a reference solution: the whole chat server of the README's protocol, on asyncio.

One thread and one event loop serve every client. Each connection is one coroutine,
``ChatServer.serve_client()``: it greets, reads names until one is free, then reads lines and
acts on them. Nothing is shared between threads, so the registry needs no lock: between two
``await``s no other coroutine runs, and checking that a name is free and taking it is one step
because there is no ``await`` between them.

Sending never waits: ``Client.send()`` hands the line to the connection's transport, which
writes what the socket takes and buffers the rest. A client that stops reading makes only its
own buffer grow; past ``MAX_BUFFERED`` bytes the server gives up on it and drops the connection,
so it can neither stall the others nor fill the server's memory. Reading is done by hand:
``recv``-sized chunks go through ``LineFramer``, which keeps at most ``MAX_LINE + 1`` bytes of
an unfinished line, so a line that never ends costs nothing.

Run it with ``python lab5_server.py --port 5050``; SIGTERM or Ctrl-C stop it. Standard library
only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass

log = logging.getLogger("lab")

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
RESERVED_NAMES = {"server", "all", "*"}
MESSAGE_PATTERN = re.compile(r"%([^%]+)%(.*)", re.DOTALL)  # %name%text; the text may hold '%'
GREETING = "* chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter"
HELP = "* %name%text to one client, %*%text to everyone else, %server%who, %server%help"
MAX_LINE = 4096  # bytes of one line, without its line end
MAX_CLIENTS = 200  # connections at once; one more is told "! server full"
NAME_TIMEOUT = 60.0  # seconds a connection may take to choose a name
MAX_BUFFERED = 1 << 20  # bytes waiting for one client before the server gives up on it
RECV_SIZE = 65536
# Characters that could make a screen show a line the server never sent: control characters
# (but tab), line and paragraph separators, and the bidi embeddings, overrides and isolates.
UNSAFE_CATEGORIES = {"Cc", "Zl", "Zp"}
BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe(text: str) -> bool:
    """Whether ``text`` holds a character that could forge or garble a displayed line."""
    return not text.isprintable() and any(
        char != "\t" and (unicodedata.category(char) in UNSAFE_CATEGORIES or char in BIDI_CONTROLS)
        for char in text
    )


def name_error(name: str) -> str | None:
    """Why ``name`` cannot be a client's name, or None if it can."""
    if not NAME_PATTERN.fullmatch(name):
        return f"invalid name {name!r}: use 1-32 characters from A-Z a-z 0-9 _ . -"
    if name.lower() in RESERVED_NAMES:
        return f"invalid name {name!r}: reserved"
    return None


class LineFramer:
    """Cut a byte stream into lines (``\\n`` or ``\\r\\n``); a line longer than ``max_line``
    comes back once as ``None`` and its bytes are dropped up to its end."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.pending = b""
        self.skipping = False  # inside a line already reported as too long

    def feed(self, data: bytes) -> list[bytes | None]:
        *complete, self.pending = (self.pending + data).split(b"\n")
        lines: list[bytes | None] = []
        for line in complete:
            if self.skipping:
                self.skipping = False
                continue
            line = line.removesuffix(b"\r")
            lines.append(line if len(line) <= self.max_line else None)
        if len(self.pending) > self.max_line + 1:  # +1: room for the \r of a \r\n line end
            self.pending = b""
            if not self.skipping:
                self.skipping = True
                lines.append(None)
        return lines


@dataclass(eq=False)
class Client:
    """One connection; once it has chosen a name, one chat client."""

    writer: asyncio.StreamWriter
    peer: str
    name: str | None = None

    def send(self, text: str) -> None:
        """Queue one line for this client; never waits. A client too far behind is dropped."""
        if self.writer.is_closing():
            return
        self.writer.write((text + "\n").encode("utf-8"))
        if self.writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            log.warning("%s is too far behind; disconnecting it", self.name or self.peer)
            self.writer.transport.abort()  # its reader sees the end, and it leaves as usual


class ChatServer:
    """The registry and the rules; ``serve_client()`` is the coroutine of one connection."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self.max_clients = max_clients
        self.connections: set[Client] = set()
        self.clients: dict[str, Client] = {}  # registered clients by name.lower()

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        peer = f"{host}:{port}"
        client = Client(writer, peer)
        if len(self.connections) >= self.max_clients:
            log.warning("%s refused: the server is full", peer)
            client.send("! server full")
            await self.close(client)
            return
        self.connections.add(client)
        lines = self.read_lines(reader, client)
        try:
            client.send(GREETING)
            try:
                async with asyncio.timeout(NAME_TIMEOUT):
                    registered = await self.register(client, lines)
            except TimeoutError:
                client.send("! no name in time")
                return
            if registered:
                self.tell_others(client, f"* {client.name} joined")
                async for line in lines:
                    self.handle_line(client, line)
        except OSError as exc:  # reset by the client
            log.info("%s: %s", client.name or peer, exc)
        finally:
            await lines.aclose()
            self.connections.discard(client)
            if client.name and self.clients.get(client.name.lower()) is client:
                del self.clients[client.name.lower()]
                self.tell_others(client, f"* {client.name} left")
            await self.close(client)

    async def read_lines(self, reader: asyncio.StreamReader, client: Client) -> AsyncIterator[str]:
        """The client's good lines, as text; bad ones are answered here and skipped. Bytes after
        the last line end of a client that leaves are not a line."""
        framer = LineFramer()
        while data := await reader.read(RECV_SIZE):
            for raw in framer.feed(data):
                if raw is None:
                    client.send("! line too long")
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    client.send("! invalid utf-8")
                    continue
                if unsafe(text):
                    client.send("! control characters are not allowed")
                    continue
                yield text

    async def register(self, client: Client, lines: AsyncIterator[str]) -> bool:
        async for line in lines:
            name = line.strip()
            error = name_error(name)
            if error is None and name.lower() in self.clients:
                error = "name taken"
            if error:
                client.send(f"! {error}")
                continue
            client.name = name  # no await since the check above: no other client ran meanwhile
            self.clients[name.lower()] = client
            client.send(f"* welcome {name}")
            client.send("* online: " + ", ".join(sorted(c.name for c in self.clients.values() if c.name)))
            log.info("%s is %s", client.peer, name)
            return True
        return False

    def handle_line(self, client: Client, line: str) -> None:
        match = MESSAGE_PATTERN.fullmatch(line)
        if match is None:
            client.send("! expected %name%message")
            return
        to, text = match.groups()
        if to.lower() == "server":
            command = text.strip().lower()
            if command == "who":
                client.send("* online: " + ", ".join(sorted(c.name for c in self.clients.values() if c.name)))
            elif command == "help":
                client.send(HELP)
            else:
                client.send(f"! unknown command {command!r}; try %server%help")
        elif to.lower() in ("*", "all"):
            self.tell_others(client, f"%{client.name}%{text}")
        elif (receiver := self.clients.get(to.lower())) is not None:
            receiver.send(f"%{client.name}%{text}")
        else:
            client.send(f"! unknown client {to!r}")

    def tell_others(self, sender: Client, text: str) -> None:
        for receiver in list(self.clients.values()):
            if receiver is not sender:
                receiver.send(text)

    async def close(self, client: Client) -> None:
        client.writer.close()
        with contextlib.suppress(OSError):
            await client.writer.wait_closed()

    def close_all(self) -> None:
        for client in list(self.connections):
            client.writer.close()


async def run(host: str, port: int, max_clients: int) -> None:
    """Serve until SIGTERM (or Ctrl-C, which ends ``asyncio.run``)."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(stopped.set))
    chat = ChatServer(max_clients)
    server = await asyncio.start_server(chat.serve_client, host, port)
    address = server.sockets[0].getsockname()
    print(f"listening on {address[0]}:{address[1]}", flush=True)
    async with server:
        await stopped.wait()
        server.close()
        chat.close_all()


def main() -> None:
    parser = argparse.ArgumentParser(description="Lab 5: a chat server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5050)
    parser.add_argument("--max-clients", type=int, default=MAX_CLIENTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.host, args.port, args.max_clients))


if __name__ == "__main__":
    main()
