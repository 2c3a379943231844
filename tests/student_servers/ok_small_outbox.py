"""Conforming: a small outbox (32 lines); a client further behind is disconnected."""

from chat_base import ChatServer, main


class Server(ChatServer):
    outbox_limit = 32


if __name__ == "__main__":
    main(Server)
