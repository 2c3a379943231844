"""Bug (from a server written apart from the kit): the 4096 limit counts characters after
decoding, so a line of 3,000 'é' (6,000 bytes) passes; the reader only caps a line at 16 KiB."""

from chat_base import TOO_LONG, ChatServer, main

LIMIT = 4096


class Server(ChatServer):
    max_line = 16 * 1024  # what the reader holds at most

    def on_line(self, client, line) -> None:
        if line is not TOO_LONG:
            try:
                if len(line.removesuffix(b"\r").decode("utf-8")) > LIMIT:
                    return self.send(client, "! line too long")
            except UnicodeDecodeError:
                pass  # on_line says so
        super().on_line(client, line)


if __name__ == "__main__":
    main(Server)
