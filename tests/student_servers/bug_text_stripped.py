"""Bug (from a server written apart from the kit): the message's text is tidied with strip(),
so '%ben%  hi  ' reaches ben as '%amy%hi', not byte for byte."""

import re

from chat_base import ChatServer, main


class Server(ChatServer):
    def route(self, client, text: str) -> None:
        if match := re.fullmatch(r"(%[^%]+%)(.*)", text, re.DOTALL):
            text = match.group(1) + match.group(2).strip()
        super().route(client, text)


if __name__ == "__main__":
    main(Server)
