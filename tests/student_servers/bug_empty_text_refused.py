"""Bug: an empty text ('%bob%') is refused, though the protocol allows it."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def route(self, client, text: str) -> None:
        if text.startswith("%") and text.endswith("%") and text.count("%") == 2:
            return self.send(client, "! empty message")
        super().route(client, text)


if __name__ == "__main__":
    main(Server)
