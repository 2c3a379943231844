"""Who is where, in a chat that spans several servers: plain data, no Redis, no threads.

Every server keeps its own copy of who is on which of the other servers, so that routing a
line or answering ``%server%who`` costs no trip to Redis (:mod:`chatlab.broker` keeps it
current from the "joined", "left" and snapshot lines the other servers send, and from the
heartbeat's list of live servers). This module is that copy, and nothing else::

    mine      {"alice": "alice"}                  the names this server holds
    peers     {"two", "three"}                    the other live servers
    members   {"two": {"bob": "Bob"}, "three": {}}  who is on each of them

A server is a peer once the heartbeat finds its key, or as soon as a line from it arrives
(:meth:`Directory.heard_from`): a server that writes to us is alive, and the lines our clients
send to everyone go to it from then on, not only after our next heartbeat.

A :class:`Directory` answers "where is bob?" and "who is online elsewhere?", and, when a server
says who is on it (a snapshot) or one of them goes, which names that changes: the differences
are what the clients here are told ("* bob left", "* carol joined").

The directory is plain data: no sockets, no threads, no locks. The broker calls it with its
own lock held, as the room calls its :class:`~chatlab.notices.NoticeBoard`. Names are kept by
their lower-case form (names are unique regardless of case), with the name as it was written.
"""

from __future__ import annotations

__all__ = ["Directory"]


class Directory:
    """This server's names, the other live servers, and who is on each of them."""

    def __init__(self) -> None:
        self._mine: dict[str, str] = {}  # lower-case -> name: the names this server holds
        self._peers: set[str] = set()  # the other live servers
        self._heard: set[str] = set()  # servers heard from since the heartbeat last looked
        self._snapshot_due: set[str] = set()  # peers owed a snapshot again (after an outage)
        self._members: dict[str, dict[str, str]] = {}  # server id -> {lower-case: name}

    # --- this server's own names -----------------------------------------------------------

    def add_mine(self, name: str) -> None:
        self._mine[name.lower()] = name

    def remove_mine(self, name: str) -> None:
        self._mine.pop(name.lower(), None)

    def mine(self) -> list[str]:
        """The names of this server's clients (what a snapshot tells the others), in the order
        they were claimed."""
        return list(self._mine.values())

    # --- the other servers -------------------------------------------------------------------

    def peers(self) -> list[str]:
        """The ids of the other live servers, sorted."""
        return sorted(self._peers)

    def see_peers(self, live: set[str], *, keep: bool = False) -> set[str]:
        """The heartbeat found these servers alive (this one not among them): returns the
        newcomers, those that get a snapshot of this server's names.

        A server heard from meanwhile stays a peer even if the heartbeat's look missed it
        (it wrote its key a moment after). ``keep``: the servers not found stay peers too
        (after an outage the others need a moment to write their keys again)."""
        current = live | self._heard | (self._peers if keep else set())
        new = (current - self._peers) | (self._snapshot_due & (live | self._heard))
        self._snapshot_due -= new
        self._heard = set()
        self._peers = current
        return new

    def heard_from(self, server_id: str) -> bool:
        """A line from ``server_id`` arrived, so it is alive: True if it is news (a newcomer,
        or a peer owed a snapshot), and this server's snapshot should go to it."""
        self._heard.add(server_id)
        new = server_id not in self._peers or server_id in self._snapshot_due
        self._peers.add(server_id)
        self._snapshot_due.discard(server_id)
        return new

    def outage(self) -> None:
        """Redis was unreachable: what was on its way may be lost (a restarted Redis has
        forgotten its streams), so every peer gets a snapshot again once it is heard of.
        The peers are kept: lines still go to them (and are refused, and reported, while
        their keys are missing), and who is on them is kept until they are known to be gone."""
        self._snapshot_due = set(self._peers)
        self._heard = set()

    def remove_gone(self) -> dict[str, dict[str, str]]:
        """Forget every server that is no longer a peer; returns who was on each
        ({lower-case: name}: empty for a server whose clients all left before it stopped)."""
        gone = [server_id for server_id in self._members if server_id not in self._peers]
        return {server_id: self._members.pop(server_id) for server_id in gone}

    # --- who is where ------------------------------------------------------------------------

    def where(self, name: str) -> str | None:
        """The id of the server ``name`` is on, if it is on another server we know of."""
        key = name.lower()
        for server_id, members in self._members.items():
            if key in members:
                return server_id
        return None

    def is_member(self, server_id: str, name: str) -> bool:
        """Whether ``name`` is on server ``server_id``, as far as we know."""
        return name.lower() in self._members.get(server_id, ())

    def has_members(self, server_id: str) -> bool:
        """Whether anyone is on server ``server_id``, as far as we know."""
        return bool(self._members.get(server_id))

    def names(self) -> list[str]:
        """The names online on the other servers, sorted regardless of case."""
        found = [name for members in self._members.values() for name in members.values()]
        return sorted(found, key=str.lower)

    def member(self, server_id: str, name: str, online: bool) -> bool:
        """``name`` joined (``online``) or left server ``server_id``: whether that is news."""
        members = self._members.setdefault(server_id, {})
        changed = (name.lower() in members) != online
        if online:
            members[name.lower()] = name
        else:
            members.pop(name.lower(), None)
        return changed

    def snapshot(self, server_id: str, names: list[str]) -> tuple[list[str], list[str]]:
        """Server ``server_id`` says these names are on it: returns ``(left, joined)``, the
        names that are gone from it and the new ones since we last knew, each sorted."""
        new = {name.lower(): name for name in names}
        old = self._members.get(server_id, {})
        self._members[server_id] = new
        left = [old[key] for key in sorted(old.keys() - new.keys())]
        joined = [new[key] for key in sorted(new.keys() - old.keys())]
        return left, joined
