"""Bug: the selectors server decodes without catching UnicodeDecodeError: the first line of
invalid UTF-8 ends the loop, and the whole server exits with a traceback (status 1)."""

from ok_selectors import SelectorChat, main


class Server(SelectorChat):
    def decode(self, raw: bytes) -> str | None:
        return raw.decode("utf-8")


if __name__ == "__main__":
    main(Server)
