"""Bug (from a student's first lab 2): every connection that ends is announced, also one that
never had a name, so the others read '* None left'."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def leave(self, client) -> None:
        if client.name is None:
            with self.lock:
                others = list(self.clients.values())
            for other in others:
                self.send(other, f"* {client.name} left")
        super().leave(client)


if __name__ == "__main__":
    main(Server)
