"""Bug: the name line keeps its '\\r' (telnet and Windows send '\\r\\n'), so 'amy\\r\\n' is refused.

The student strips the '\\r' where messages are handled, and reads the name before that.
"""

from chat_base import TOO_LONG, ChatServer, main


class Server(ChatServer):
    def on_line(self, client, line) -> None:
        if client.name is None and line is not TOO_LONG:
            return self.register(client, line.decode("utf-8", "replace"))  # still ends with '\r'
        super().on_line(client, line)


if __name__ == "__main__":
    main(Server)
