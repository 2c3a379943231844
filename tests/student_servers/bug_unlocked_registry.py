"""Bug: the registry is read and changed without the lock.

A broadcast loops over the live dict while other threads add and remove clients: the loop
raises 'dictionary changed size during iteration', which ends the sender's thread before
leave() runs, so its name and its slot are never given back.
"""

import socket

from chat_base import Client, ChatServer, log, main


class Server(ChatServer):
    def handle_connection(self, sock: socket.socket) -> None:
        if self.connected >= self.capacity:
            sock.sendall(b"! server full\n")
            sock.close()
            return
        self.connected += 1
        client = Client(self, sock)
        try:
            self.send(client, "* chatlab: type your name")
            for line in self.lines(client):
                self.on_line(client, line)
        except OSError:
            pass
        self.leave(client)

    def register(self, client, name: str) -> None:
        if problem := self.name_problem(name):
            return self.send(client, problem)
        if name.lower() in self.clients:
            return self.send(client, "! name taken")
        self.clients[name.lower()] = client
        client.name = name
        self.send(client, f"* welcome {name}")
        for other in self.clients.values():
            if other is not client:
                self.send(other, f"* {name} joined")

    def route(self, client, text: str) -> None:
        if text.startswith(("%*%", "%all%")):
            body = text.split("%", 2)[2]
            for other in self.clients.values():
                if other is not client:
                    log.info("%s -> %s: %d bytes", client.name, other.name, len(body))
                    self.send(other, f"%{client.name}%{body}")
            return
        super().route(client, text)

    def leave(self, client) -> None:
        self.connected -= 1
        if client.name is not None:
            del self.clients[client.name.lower()]
            for other in self.clients.values():
                self.send(other, f"* {client.name} left")
        client.outbox.put(None)
        client.writer.join(2)
        client.kick()
        client.sock.close()


if __name__ == "__main__":
    main(Server)
