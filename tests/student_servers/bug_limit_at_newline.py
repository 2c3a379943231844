"""Bug: the line limit is checked only when the newline arrives, so a line without one is
buffered without limit (64 MiB sent, 64 MiB held)."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def lines(self, client):
        buffer = b""
        while data := client.sock.recv(65536):
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line  # on_line() refuses it if it is too long


if __name__ == "__main__":
    main(Server)
