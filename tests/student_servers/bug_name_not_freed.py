"""Bug: names are kept in a set of their own that leave() forgets, so a name is never free again."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.names_used: set[str] = set()

    def register(self, client, name: str) -> None:
        if name.lower() in self.names_used:
            return self.send(client, "! name taken")
        super().register(client, name)
        if client.name is not None:
            self.names_used.add(name.lower())


if __name__ == "__main__":
    main(Server)
