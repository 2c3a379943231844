"""Bug: the text is cut at its first '%': '%bob%50% done' delivers '%amy%50'."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def route(self, client, text: str) -> None:
        parts = text.split("%")
        if len(parts) >= 3 and parts[0] == "" and parts[1] and len(parts) > 3:
            text = f"%{parts[1]}%{parts[2]}"  # name, then text: what else could there be?
        super().route(client, text)


if __name__ == "__main__":
    main(Server)
