"""What the lessons' check cells use to test a student's answer against the kit itself.

A check that compared a student's line with the right line would have to contain that line, and
a student who reads the check would find the answer there. So a check sends the student's line
through a real server instead and looks at what each client received: the server is the
independent judge, and the check holds only what the exercise already says (who should get
what).

Resource handling: :class:`SmallChat` starts a :class:`~chatlab.servers.ChatServer` of its own
on 127.0.0.1 (port 0) and a registered :class:`~chatlab.client.ChatClient` per name; leaving
its ``with`` block closes the clients and stops the server, so a check can run as often as a
student likes without touching the lesson's own server. Everything runs in the caller's thread
(the clients' reader threads aside); nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

from .client import ChatClient
from .servers import ChatServer, ServerBase

#: The text of the line a sender sends after the student's line, to mark the end of a case.
END_OF_CASE = "end of case"


class SmallChat:
    """A fresh server with one registered client per name, for one check.

    ``received_after(sender, act)`` runs ``act()`` (which makes ``sender`` send something) and
    returns ``{name: last line received because of it}``. The server handles one client's lines
    in order, so after ``act()`` the sender sends a marker line to every other client (and, if
    the sender is read too, asks ``%server%who``): whatever ``act()`` caused reaches each client
    before its marker does. Notices of joins and leaves are not part of a case.
    """

    def __init__(self, names: Sequence[str], timeout: float = 5.0) -> None:
        self.names = list(names)
        self.timeout = timeout  # generous: a check may run on a busy machine
        self.server: ServerBase | None = None
        self.clients: dict[str, ChatClient] = {}

    def __enter__(self) -> SmallChat:
        server = self.server = ChatServer("127.0.0.1", port=0).start()
        try:
            for name in self.names:
                self.clients[name] = ChatClient(port=server.port, name=name, timeout=self.timeout)
            for name in self.names:
                self.received_after(name, lambda: None)  # clears the "joined" notices
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every client, then stop the server (it joins its threads)."""
        for client in self.clients.values():
            client.close()
        if self.server is not None:
            self.server.stop()

    def received_after(
        self, sender: str, act: Callable[[], object], *, read_sender: bool = True
    ) -> dict[str, str]:
        """Run ``act()``, then return what each client received because of it: {name: line}.

        A client that received nothing is left out. ``read_sender=False`` leaves the sender's
        own client unread (a chat window that owns it reads it instead). Raises TimeoutError if
        a marker does not arrive within the timeout.
        """
        act()
        for name in self.names:
            if name != sender:
                self.clients[sender].send(name, END_OF_CASE)
        if read_sender:
            self.clients[sender].send_line("%server%who")
        received = {}
        for name, client in self.clients.items():
            if name == sender and not read_sender:
                continue
            marker = "* online:" if name == sender else f"%{sender}%{END_OF_CASE}"
            while not (line := client.recv(timeout=self.timeout)).startswith(marker):
                if not line.endswith((" joined", " left")):
                    received[name] = line
        return received


def what_each_receives(sender: str, line: str, names: Sequence[str]) -> dict[str, str]:
    """On a fresh server with these clients online, ``sender`` sends ``line`` exactly as written:
    return {name: the line that client received}; a client that received nothing is left out."""
    with SmallChat(names) as chat:
        return chat.received_after(sender, lambda: chat.clients[sender].send_line(line))
