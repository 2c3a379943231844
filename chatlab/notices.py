"""The "joined" and "left" notices that not every client has had yet, numbered in order.

A room with a thousand clients cannot afford to write every notice to every client the moment
it happens: a thousand clients leaving at once would be a million writes. So notices wait on a
:class:`NoticeBoard`, and each client keeps a number, how many notices it has been given so
far. Whenever anything is written to a client, the notices it has not had go first, in the
same write; the board forgets a notice once every client online has had it.

Not every notice is for everyone: "* bob joined" is news only to those who were online before
bob, and "* bob left" only to those who saw him online. So each notice carries an *audience*:
it is for the clients whose registration number (``ClientRecord.order``) is below it.

The board is plain data: no sockets, no threads, no locks. The room calls it with its
registry lock held.
"""

from __future__ import annotations

__all__ = ["NoticeBoard"]


class NoticeBoard:
    """Notices numbered from 0 in the order they were posted; the old ones are forgotten."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, bytes]] = []  # (audience, line); the first is number `first`
        self.first = 0  # the number of the oldest notice still kept
        self.end = 0  # the number the next notice will get: every notice so far is below it

    def post(self, audience: int, line: bytes) -> None:
        """Add a notice for the clients whose ``order`` is below ``audience``."""
        self._waiting.append((audience, line))
        self.end += 1

    def since(self, seen: int, order: int) -> bytes:
        """The notices from number ``seen`` on that are for a client with this ``order``."""
        kept = self._waiting[seen - self.first :]
        return b"".join(line for audience, line in kept if order < audience)

    def forget_before(self, number: int) -> None:
        """Every client online has had the notices below ``number``: they are not needed."""
        del self._waiting[: number - self.first]
        self.first = number

    def __len__(self) -> int:
        """How many notices are kept (posted, not yet had by everyone online)."""
        return self.end - self.first
