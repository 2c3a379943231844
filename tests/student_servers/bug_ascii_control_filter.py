"""Bug: the control-character filter knows only ASCII (below 32 and 127): a Unicode bidi
override such as U+202E is delivered."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def has_control(self, text: str) -> bool:
        return any(ord(char) < 32 or ord(char) == 127 for char in text)


if __name__ == "__main__":
    main(Server)
