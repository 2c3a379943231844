"""Bug: the slow-client fix drops lines silently: a full outbox throws the new line away and
the slow reader stays connected, missing lines it will never know about."""

from chat_base import ChatServer, main


class Server(ChatServer):
    outbox_limit = 100

    def send(self, client, line: str) -> None:
        if client.outbox.qsize() >= self.outbox_limit:
            return  # too slow: it will not miss this one
        client.outbox.put(line.encode("utf-8") + b"\n")


if __name__ == "__main__":
    main(Server)
