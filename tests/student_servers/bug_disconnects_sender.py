"""Bug: when a receiver's outbox is full, the error is raised in the sender's thread, so the
server disconnects the client that sends, not the one that is too far behind."""

from chat_base import ChatServer, main


class Server(ChatServer):
    outbox_limit = 100

    def send(self, client, line: str) -> None:
        if client.outbox.qsize() >= self.outbox_limit:
            raise ConnectionError(f"{client.name} is too slow")  # ends the *current* thread's client
        client.outbox.put(line.encode("utf-8") + b"\n")


if __name__ == "__main__":
    main(Server)
