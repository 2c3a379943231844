"""Conforming: loads for 1.5 s before it listens (imports, a config file, a database...)."""

import time

from chat_base import ChatServer, main


class Server(ChatServer):
    def __init__(self, port: int) -> None:
        time.sleep(1.5)
        super().__init__(port)


if __name__ == "__main__":
    main(Server)
