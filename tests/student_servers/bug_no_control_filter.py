"""Bug: no control-character filter: escape sequences and bidi overrides are delivered."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def has_control(self, text: str) -> bool:
        return False


if __name__ == "__main__":
    main(Server)
