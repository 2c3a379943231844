"""The chat room on its own: no sockets, no server, just what it writes to each client.

The room talks to a client only through its transport (``write(data)``), so these tests give
each record a transport that keeps every write. That shows what a socket cannot: how many
writes a client got, not only which bytes.
"""

from __future__ import annotations

import socket
import threading

import pytest
from transcript import run_together

from chatlab.room import ChatRoom, ClientRecord, RemoteMessage


class KeptWrites:
    """A transport that keeps every write, in order."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.name: str | None = None
        self.aborted = False

    def write(self, data: bytes) -> bool:
        self.writes.append(data)
        return True

    def abort(self) -> None:
        self.aborted = True

    def registered(self, name: str) -> None:
        self.name = name

    def lines(self) -> list[str]:
        return b"".join(self.writes).decode().splitlines()


@pytest.fixture
def room():
    return ChatRoom(max_clients=1000)


@pytest.fixture
def admit(room):
    sockets: list[socket.socket] = []

    def admit_one(name: str | None = None) -> ClientRecord:
        sock = socket.socket()  # never connected: the room only keeps it in the record
        sockets.append(sock)
        record = ClientRecord(ip="127.0.0.1", port=40000 + len(sockets), sock=sock, fd=sock.fileno())
        record.transport = KeptWrites()
        assert room.admit(record)
        if name is not None:
            room.handle(record, name.encode())
        return record

    yield admit_one
    for sock in sockets:
        sock.close()


def lines(record: ClientRecord) -> list[str]:
    return record.transport.lines()


def test_each_client_hears_only_of_those_who_join_after_it(room, admit):
    alice, bob, carol = admit("alice"), admit("bob"), admit("carol")
    assert lines(alice) == ["* welcome alice", "* online: alice", "* bob joined", "* carol joined"]
    assert lines(bob) == ["* welcome bob", "* online: alice, bob", "* carol joined"]
    assert lines(carol) == ["* welcome carol", "* online: alice, bob, carol"]


def test_a_leave_is_told_to_those_who_saw_it_online_and_no_one_else(room, admit):
    alice, bob = admit("alice"), admit("bob")
    assert room.remove(bob) is True  # bob is gone from the registry, not yet announced
    dave = admit("dave")  # dave's online list never had bob in it
    room.departed(bob, "disconnected", announce=True)
    assert lines(alice)[-2:] == ["* dave joined", "* bob left"]
    assert lines(dave) == ["* welcome dave", "* online: alice, dave"]
    assert bob.transport.lines() == ["* welcome bob", "* online: alice, bob"]


def test_a_connection_without_a_name_leaves_unannounced(room, admit):
    alice, nameless = admit("alice"), admit()
    assert room.remove(nameless) is False
    room.departed(nameless, "disconnected", announce=False)
    assert lines(alice) == ["* welcome alice", "* online: alice"]
    assert [e.kind for e in room.events()][-1] == "left"


def test_the_lines_of_one_read_reach_each_receiver_as_one_write(room, admit):
    bob, carol, newcomer = admit("bob"), admit("carol"), admit()
    bob_writes, carol_writes = len(bob.transport.writes), len(carol.transport.writes)
    room.handle_lines(newcomer, [b"alice", b"%bob%one", b"%carol%two", b"%bob%three", b"%server%who"])
    # The welcome and the "joined" notice are not held back: they go out at once, so nobody can
    # write to alice before her welcome, and nobody hears from alice before hearing she joined.
    assert newcomer.transport.writes == [
        b"* welcome alice\n* online: alice, bob, carol\n",
        b"* online: alice, bob, carol\n",
    ]
    assert bob.transport.writes[bob_writes:] == [b"* alice joined\n", b"%alice%one\n%alice%three\n"]
    assert carol.transport.writes[carol_writes:] == [b"* alice joined\n", b"%alice%two\n"]


def test_a_burst_of_leaves_costs_a_few_writes_per_client_not_one_per_notice(room, admit):
    watcher = admit("watcher")
    crowd = [admit(f"c{i:03}") for i in range(300)]
    del watcher.transport.writes[:]
    gate = threading.Barrier(len(crowd), timeout=10)

    def leave(record: ClientRecord) -> None:
        gate.wait()
        room.remove(record)
        room.departed(record, "disconnected", announce=True)

    run_together(leave, crowd, name="test-leave")
    assert sorted(lines(watcher)) == sorted(f"* {r.name} left" for r in crowd)  # each once
    assert len(watcher.transport.writes) <= len(crowd)
    # Every notice reached everyone it is for, so the room keeps none of them any more.
    assert len(room._notice_board) == 0  # every client online has had them all


def test_many_clients_registering_at_once_each_hear_of_every_later_one_once(room, admit):
    records = [admit() for _ in range(100)]
    gate = threading.Barrier(len(records), timeout=10)

    def register(index: int) -> None:
        gate.wait()
        room.handle(records[index], f"r{index:03}".encode())

    run_together(register, list(range(100)), name="test-register")
    for record in records:
        got = lines(record)
        online = got[1].removeprefix("* online: ").split(", ")
        joined = [line.split()[1] for line in got[2:] if line.endswith(" joined")]
        # Whoever was not in its online list, it has heard of (no later send was needed to
        # bring the notice along): exactly once each, and nobody else.
        assert sorted(online + joined) == sorted(r.name for r in records), record.name


def test_where_one_thread_serves_everyone_a_turn_of_leaves_costs_one_round_of_notices(room, admit):
    """The event-loop models set ``notices_due``: the room then leaves the notices for the
    model to deliver once, at the end of its turn, instead of one round per leave."""
    watcher = admit("watcher")
    crowd = [admit(f"c{i:02}") for i in range(30)]
    asked = []
    room.notices_due = lambda: asked.append(1)
    writes = len(watcher.transport.writes)
    for record in crowd:  # thirty leaves in one turn of the loop
        room.remove(record)
        room.departed(record, "disconnected", announce=True)
    assert len(asked) == 30 and len(watcher.transport.writes) == writes  # nothing written yet
    room.deliver_notices()  # the end of the turn
    assert len(watcher.transport.writes) == writes + 1
    assert lines(watcher)[-30:] == [f"* {r.name} left" for r in crowd]
    assert len(room._notice_board) == 0


def test_the_who_list_stays_in_order_whatever_the_case_as_clients_come_and_go(room, admit):
    records = {name: admit(name) for name in ["carol", "Bob", "alice", "Dave", "eve"]}
    assert room.online() == ["alice", "Bob", "carol", "Dave", "eve"]
    for name in ["Bob", "eve"]:
        room.remove(records[name])
    admit("bert")
    assert room.online() == ["alice", "bert", "carol", "Dave"]
    assert lines(admit("zoe"))[1] == "* online: alice, bert, carol, Dave, zoe"


def test_lines_from_other_servers_arrive_by_name_one_write_per_receiver(room, admit):
    bob, carol = admit("bob"), admit("carol")
    before = len(bob.transport.writes), len(carol.transport.writes)
    missing = room.arrived(
        [
            RemoteMessage("alice", "hi bob", to="BOB"),
            RemoteMessage("alice", "to everyone"),  # no `to`: a broadcast
            RemoteMessage("dave", "anyone?", to="zed"),
        ]
    )
    assert missing == [("dave", "zed")]  # the broker tells dave: zed is not here
    assert bob.transport.writes[before[0] :] == [b"%alice%hi bob\n%alice%to everyone\n"]
    assert carol.transport.writes[before[1] :] == [b"%alice%to everyone\n"]
