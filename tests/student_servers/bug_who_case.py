"""Bug (from a student's first lab 2): the command after %server% is compared as typed, so
'%server% WHO ' is an unknown command."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def command(self, client, body: str) -> None:
        if body != body.strip().lower():
            return self.send(client, f"! unknown command {body!r}")
        super().command(client, body)


if __name__ == "__main__":
    main(Server)
