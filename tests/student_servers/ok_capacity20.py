"""Conforming: room for exactly 20 clients; the 21st is told '! server full'."""

from chat_base import ChatServer, main


class Server(ChatServer):
    capacity = 20


if __name__ == "__main__":
    main(Server)
