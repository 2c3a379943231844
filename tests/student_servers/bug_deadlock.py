"""Bug: tell_others() takes the lock, and register() calls it while holding the lock:
threading.Lock is not re-entrant, so the first name ever registered hangs the server."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def tell_others(self, client, line: str) -> None:
        with self.lock:
            others = [c for c in self.clients.values() if c is not client]
        for other in others:
            self.send(other, line)

    def register(self, client, name: str) -> None:
        if problem := self.name_problem(name):
            return self.send(client, problem)
        with self.lock:
            if name.lower() in self.clients:
                return self.send(client, "! name taken")
            self.clients[name.lower()] = client
            client.name = name
            self.tell_others(client, f"* {name} joined")
        self.send(client, f"* welcome {name}")


if __name__ == "__main__":
    main(Server)
