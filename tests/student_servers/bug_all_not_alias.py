"""Bug: '%all%text' is not a broadcast: only '%*%' is (and 'all' is an unknown client)."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def route(self, client, text: str) -> None:
        if text.startswith("%all%"):
            return self.send(client, "! unknown client 'all'")
        super().route(client, text)


if __name__ == "__main__":
    main(Server)
