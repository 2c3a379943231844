"""Bug: a client whose connection is reset (RST) is forgotten without a '* name left'."""

import socket

from chat_base import Client, ChatServer, main


class Server(ChatServer):
    def handle_connection(self, sock: socket.socket) -> None:
        with self.lock:
            self.connected += 1
        client = Client(self, sock)
        try:
            self.send(client, "* chatlab: type your name")
            for line in self.lines(client):
                self.on_line(client, line)
        except ConnectionResetError:
            with self.lock:  # it is gone anyway: just drop it
                self.connected -= 1
                if client.name is not None:
                    del self.clients[client.name.lower()]
            client.sock.close()
            return
        except OSError:
            pass
        self.leave(client)


if __name__ == "__main__":
    main(Server)
