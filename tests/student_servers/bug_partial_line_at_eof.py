"""Bug: bytes after the last newline of a client that leaves are delivered as a line
(the readline() idiom: the last 'line' of a file may have no newline)."""

from chat_base import TOO_LONG, ChatServer, main


class Server(ChatServer):
    def lines(self, client):
        stream = client.sock.makefile("rb")
        while line := stream.readline(self.max_line + 2):
            if not line.endswith(b"\n"):
                if len(line) < self.max_line + 2:
                    yield line  # the end of the stream: take what there is
                    return
                yield TOO_LONG
                while (rest := stream.readline(65536)) and not rest.endswith(b"\n"):
                    pass
                continue
            yield line[:-1]


if __name__ == "__main__":
    main(Server)
