"""Bug: the accept loop serves each client itself, so the next one waits until it leaves."""

from chat_base import ChatServer, main


class Server(ChatServer):
    def serve_forever(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            self.handle_connection(sock)  # no thread: one client at a time


if __name__ == "__main__":
    main(Server)
