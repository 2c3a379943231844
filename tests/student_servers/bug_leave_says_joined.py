"""Bug: a client that leaves is announced as '* name joined' (a copied line, not changed)."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def leave(self, client) -> None:
        with self.lock:
            self.connected -= 1
            named = client.name is not None and self.clients.get(client.name.lower()) is client
            if named:
                del self.clients[client.name.lower()]
            others = list(self.clients.values())
        if named:
            for other in others:
                self.send(other, f"* {client.name} joined")
        client.outbox.put(None)
        client.writer.join(2)
        client.kick()
        client.sock.close()


if __name__ == "__main__":
    main(Server)
