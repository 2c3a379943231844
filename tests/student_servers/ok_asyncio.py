"""Conforming, written apart: asyncio streams, one reader task and one writer task per
client, and a small queue (50 lines) between them; a client further behind is closed."""

from __future__ import annotations

import argparse
import asyncio
import re
import unicodedata

LINE_LIMIT = 4096
QUEUE_LIMIT = 50
NAME_OK = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class Member:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.name = ""
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self.task = asyncio.create_task(self.pump())

    async def pump(self) -> None:
        try:
            while True:
                self.writer.write(await self.queue.get())
                await self.writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass

    def send(self, line: str) -> None:
        try:
            self.queue.put_nowait(line.encode() + b"\n")
        except asyncio.QueueFull:
            self.writer.transport.abort()  # too slow: off it goes


class Chat:
    def __init__(self) -> None:
        self.members: dict[str, Member] = {}

    def others(self, me: Member) -> list[Member]:
        return [m for m in self.members.values() if m is not me]

    async def lines(self, reader: asyncio.StreamReader):
        skipping = False
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return  # whatever came after the last newline is not a line
            except asyncio.LimitOverrunError as too_long:
                await reader.readexactly(too_long.consumed)
                if not skipping:
                    yield None
                skipping = True
                continue
            if skipping:
                skipping = False
                continue
            yield line[:-1].removesuffix(b"\r")

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = Member(writer)
        me.send("* hi there. name please:")
        try:
            async for raw in self.lines(reader):
                self.line(me, raw)
        except ConnectionError:
            pass
        finally:
            if me.name and self.members.get(me.name.lower()) is me:
                del self.members[me.name.lower()]
                for other in self.others(me):
                    other.send(f"* {me.name} left")
            await asyncio.sleep(0.05)  # let the writer send what is queued
            me.task.cancel()
            writer.close()

    def line(self, me: Member, raw: bytes | None) -> None:
        if raw is None or len(raw) > LINE_LIMIT:
            return me.send("! line too long")
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return me.send("! invalid utf-8")
        if any(unicodedata.category(c) in ("Cc", "Cf") and c not in "\u200e\u200f\u061c" for c in text):
            return me.send("! control characters are not allowed")
        if not me.name:
            if not NAME_OK.fullmatch(text) or text.lower() in ("server", "all"):
                return me.send("! invalid name")
            if text.lower() in self.members:
                return me.send("! name taken")
            me.name = text
            self.members[text.lower()] = me
            me.send(f"* welcome {text}")
            for other in self.others(me):
                other.send(f"* {text} joined")
            return
        if not (m := re.match(r"%([^%]+)%(.*)", text, re.S)):
            return me.send("! expected %name%message")
        to, body = m.groups()
        if to.lower() == "server":
            if body.strip().lower() == "who":
                return me.send("* online: " + ", ".join(sorted(x.name for x in self.members.values())))
            return me.send("* %name%text, %*%text, %server%who")
        if to in ("*", "all"):
            for other in self.others(me):
                other.send(f"%{me.name}%{body}")
        elif (them := self.members.get(to.lower())) is not None:
            them.send(f"%{me.name}%{body}")
        else:
            me.send(f"! unknown client '{to}'")


async def main(port: int) -> None:
    chat = Chat()
    server = await asyncio.start_server(chat.client, "127.0.0.1", port, limit=LINE_LIMIT + 2)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5050)
    asyncio.run(main(parser.parse_args().port))
