"""Bug (from a student's first lab 1): the name is checked under the lock and taken under it
again later, so two clients that ask for one name at the same moment can both have it. (The
gap between the two steps, a log line and a look at a list here, is widened with a short pause
so that the race shows in every run rather than now and then.)"""

import time

from chat_base import ChatServer, log, main


class Server(ChatServer):
    def register(self, client, name: str) -> None:
        if problem := self.name_problem(name):
            return self.send(client, problem)
        with self.lock:
            taken = name.lower() in self.clients
        if taken:
            return self.send(client, "! name taken")
        log.info("%s is free", name)
        time.sleep(0.05)
        with self.lock:
            self.clients[name.lower()] = client
            client.name = name
            others = [c for c in self.clients.values() if c is not client]
            online = ", ".join(c.name for c in self.clients.values())
        self.send(client, f"* welcome {name}")
        self.send(client, f"* online: {online}")
        for other in others:
            self.send(other, f"* {name} joined")


if __name__ == "__main__":
    main(Server)
