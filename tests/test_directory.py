"""Who is where, on its own: the directory a broker keeps of the other servers, no Redis."""

from chatlab.directory import Directory


def directory_with(**members: list[str]) -> Directory:
    """A directory whose peers are the keyword names, each with the names of its clients."""
    directory = Directory()
    directory.see_peers(set(members))
    for server_id, names in members.items():
        directory.snapshot(server_id, names)
    return directory


def test_a_name_is_found_on_its_server_regardless_of_case():
    directory = directory_with(two=["Bob", "carol"], three=["dave"])
    assert directory.where("bob") == "two"
    assert directory.where("DAVE") == "three"
    assert directory.where("zed") is None
    assert directory.names() == ["Bob", "carol", "dave"]  # sorted regardless of case


def test_this_servers_own_names_are_not_in_the_who_list_of_the_others():
    directory = directory_with(two=["bob"])
    directory.add_mine("Alice")
    directory.add_mine("carol")
    assert directory.mine() == ["Alice", "carol"]  # what a snapshot of this server says
    assert directory.names() == ["bob"] and directory.where("alice") is None
    directory.remove_mine("ALICE")
    directory.remove_mine("nobody")  # not held: nothing happens
    assert directory.mine() == ["carol"]


def test_joined_and_left_say_whether_they_are_news():
    directory = directory_with(two=[])
    assert directory.member("two", "bob", online=True)
    assert not directory.member("two", "BOB", online=True)  # heard already (a snapshot, say)
    assert directory.names() == ["BOB"]
    assert directory.member("two", "bob", online=False)
    assert not directory.member("two", "bob", online=False)
    assert directory.names() == []


def test_a_snapshot_returns_who_left_and_who_joined_since_the_last_one():
    directory = directory_with(two=["alice", "Bob", "carol"])
    left, joined = directory.snapshot("two", ["bob", "erin", "Dave"])
    assert (left, joined) == (["alice", "carol"], ["Dave", "erin"])
    assert directory.names() == ["bob", "Dave", "erin"]  # the name as the snapshot wrote it
    assert directory.snapshot("two", ["bob", "Dave", "erin"]) == ([], [])


def test_the_first_snapshot_of_a_server_announces_everyone_on_it():
    directory = Directory()
    assert directory.snapshot("two", ["carol", "alice"]) == ([], ["alice", "carol"])


def test_newcomers_are_those_the_last_heartbeat_did_not_see():
    directory = Directory()
    assert directory.see_peers({"two", "three"}) == {"two", "three"}
    assert directory.see_peers({"two", "three", "four"}) == {"four"}
    assert directory.peers() == ["four", "three", "two"]
    assert directory.see_peers({"two"}) == set() and directory.peers() == ["two"]


def test_a_server_that_writes_to_us_is_a_peer_at_once_and_gets_one_snapshot():
    directory = directory_with(two=["bob"])
    assert directory.heard_from("three")  # before any heartbeat saw its key: news
    assert directory.peers() == ["three", "two"]  # so what goes to everyone goes to it
    assert not directory.heard_from("three")  # heard again: not news
    # The heartbeat's look at the live servers began before three wrote its key: three stays.
    assert directory.see_peers({"two"}) == set() and directory.peers() == ["three", "two"]
    assert directory.remove_gone() == {}
    # Not heard from since, and still not found by the next heartbeat: gone.
    assert directory.see_peers({"two"}) == set() and directory.peers() == ["two"]


def test_after_an_outage_every_peer_is_kept_and_gets_a_snapshot_once_it_is_heard_of():
    directory = directory_with(two=["bob"], three=["dave"])
    directory.outage()  # Redis was unreachable: what was on its way may be lost
    assert directory.peers() == ["three", "two"]  # kept: lines still go to them
    # Back: two wrote its key again, three not yet; while patient, three stays a peer.
    assert directory.see_peers({"two"}, keep=True) == {"two"}
    assert directory.peers() == ["three", "two"] and directory.where("dave") == "three"
    assert directory.heard_from("three")  # three is back: it gets its snapshot now
    assert not directory.heard_from("three")
    assert directory.see_peers({"two", "three"}) == set()


def test_who_is_a_member_of_which_server():
    directory = directory_with(two=["Bob"], three=[])
    assert directory.is_member("two", "BOB") and not directory.is_member("three", "bob")
    assert not directory.is_member("four", "bob")
    assert directory.has_members("two") and not directory.has_members("three")
    assert not directory.has_members("four")


def test_a_server_that_is_gone_takes_its_members_with_it():
    directory = directory_with(two=["bob"], three=["dave", "Erin"], four=[])
    directory.see_peers({"two"})
    gone = directory.remove_gone()
    assert gone == {"three": {"dave": "dave", "erin": "Erin"}, "four": {}}  # four left cleanly
    assert directory.names() == ["bob"] and directory.where("dave") is None
    assert directory.remove_gone() == {}


def test_members_outlive_an_outage_until_their_server_is_known_to_be_gone():
    directory = directory_with(two=["bob"])
    directory.outage()
    assert directory.where("bob") == "two"  # still routed: its server may well be alive
    directory.see_peers({"two"})
    assert directory.remove_gone() == {} and directory.names() == ["bob"]
