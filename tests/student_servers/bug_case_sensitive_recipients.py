"""Bug: a recipient is found by its exact spelling: '%AMY%hi' is refused while amy is online."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def route(self, client, text: str) -> None:
        to = text[1:].partition("%")[0]
        if text.startswith("%") and to.lower() not in ("*", "all", "server"):
            with self.lock:
                spelled = [c.name for c in self.clients.values()]
            if to not in spelled:
                return self.send(client, f"! unknown client {to!r}")
        super().route(client, text)


if __name__ == "__main__":
    main(Server)
