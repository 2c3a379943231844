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
    directory.forget_peers()  # Redis was unreachable: afterwards every server is new again
    assert directory.peers() == []
    assert directory.see_peers({"two"}) == {"two"}


def test_a_server_that_is_gone_takes_its_members_with_it():
    directory = directory_with(two=["bob"], three=["dave", "Erin"], four=[])
    directory.see_peers({"two"})
    gone = directory.remove_gone()
    assert gone == {"three": {"dave": "dave", "erin": "Erin"}, "four": {}}  # four left cleanly
    assert directory.names() == ["bob"] and directory.where("dave") is None
    assert directory.remove_gone() == {}


def test_members_outlive_an_outage_until_their_server_is_known_to_be_gone():
    directory = directory_with(two=["bob"])
    directory.forget_peers()
    assert directory.where("bob") == "two"  # still routed: its server may well be alive
    directory.see_peers({"two"})
    assert directory.remove_gone() == {} and directory.names() == ["bob"]
