"""Bug (from a server written apart from the kit): a client cut off as too slow is forgotten
quietly: the others are never told it left."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def send(self, client, line: str) -> None:
        if client.outbox.qsize() >= self.outbox_limit:
            client.dropped = True
        super().send(client, line)

    def leave(self, client) -> None:
        if getattr(client, "dropped", False) and client.name is not None:
            with self.lock:
                if self.clients.get(client.name.lower()) is client:
                    del self.clients[client.name.lower()]  # gone: no need to tell anyone
        super().leave(client)


if __name__ == "__main__":
    main(Server)
