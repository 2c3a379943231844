"""Bug: reserved names are refused only in lower case: 'Server' and 'ALL' are accepted."""

from chat_base import NAME, RESERVED, ChatServer, main


class Server(ChatServer):
    def name_problem(self, name: str) -> str | None:
        if not NAME.fullmatch(name):
            return "! invalid name: use 1-32 of A-Z a-z 0-9 _ . -"
        if name in RESERVED:
            return f"! invalid name: {name!r} is reserved"
        return None


if __name__ == "__main__":
    main(Server)
