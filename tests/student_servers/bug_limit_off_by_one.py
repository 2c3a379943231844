"""Bug (from a server written apart from the kit): the limit is tested with '>=', so a line of
exactly 4096 bytes, which the README allows, is refused as too long."""

from chat_base import TOO_LONG, ChatServer, main


class Server(ChatServer):
    def on_line(self, client, line) -> None:
        if line is not TOO_LONG and len(line.removesuffix(b"\r")) >= self.max_line:
            return self.send(client, "! line too long")
        super().on_line(client, line)


if __name__ == "__main__":
    main(Server)
