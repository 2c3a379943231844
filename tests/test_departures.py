"""How connections end, in every model: a paused client that hangs up, a laptop that vanishes,
a slow client that is dropped.

- A client held back by flood control (``rate=``) whose lines wait is looked at during every
  pause; when it has hung up (a goodbye or a reset), it leaves at once: the others hear it,
  its name is free, and the lines it sent that were still waiting are dropped and counted in
  the log. The rule is the same in every model (Session's docstring, the README).
- Every accepted socket has TCP keepalive on, with the figures of ``chatlab.portable.KEEPALIVE``,
  so a laptop that left the network is noticed within about a minute. A test in two network
  namespaces (root only, as in test_across_hosts.py) cuts the cable and watches the name go.
- A client dropped as too slow receives only whole lines.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from chatlab.portable import KEEPALIVE

RATE = 10.0  # a burst of 20 lines, then 10 a second: 300 lines take about 28 s
SLOW_DOWN = "! slow down: at most 10 lines per second; your lines wait"


# --- a paused client that hangs up -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["goodbye", "reset"])
def test_a_paused_client_that_hangs_up_leaves_at_once_and_its_waiting_lines_are_counted(
    start, connect, caplog, how
):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    server = start(rate=RATE)
    sink, flooder = connect(server, "sink"), connect(server, "flood")
    sink.expect("* flood joined")
    flooder.send_raw(b"".join(b"%%sink%%%d\n" % i for i in range(300)))
    flooder.expect(SLOW_DOWN)
    if how == "goodbye":
        flooder.sock.shutdown(socket.SHUT_WR)  # it has read everything: a FIN, no reset
    else:
        flooder.reset()
    received = sink.read_until("* flood left", limit=400)
    delivered = len(received) - 1
    assert delivered < 300 - 2 * RATE, "it went on talking at its rate after it hung up"
    assert sink.who() == ["sink"]
    dropped = [r.getMessage() for r in caplog.records if "were still waiting" in r.getMessage()]
    assert dropped == [f"flood left; dropped {300 - delivered} lines it sent that were still waiting"]


def test_a_client_that_is_not_paused_loses_nothing_when_it_hangs_up(start, connect):
    server = start()
    sink, sender = connect(server, "sink"), connect(server, "sender")
    sink.expect("* sender joined")
    sender.send_raw(b"".join(b"%%sink%%%d\n" % i for i in range(3000)))  # many turns' worth
    sender.sock.shutdown(socket.SHUT_WR)
    lines = sink.read_until("* sender left", limit=4000)
    assert lines == [f"%sender%{i}" for i in range(3000)] + ["* sender left"]


# --- keepalive ---------------------------------------------------------------------------------------


def test_keepalive_figures_free_a_vanished_laptops_name_within_about_a_minute():
    assert KEEPALIVE.idle + KEEPALIVE.interval * KEEPALIVE.count <= 60
    assert KEEPALIVE.user_timeout <= 60


def test_every_accepted_socket_has_keepalive_on(start, connect):
    server = start()
    connect(server, "alice")
    (record,) = server.room.connections()
    sock = record.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
    idle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    if idle is not None:
        assert sock.getsockopt(socket.IPPROTO_TCP, idle) == KEEPALIVE.idle
    if hasattr(socket, "TCP_KEEPINTVL"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE.interval
    if hasattr(socket, "TCP_KEEPCNT"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE.count
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == KEEPALIVE.user_timeout * 1000


# The server, in the server's namespace, with keepalive figures of a few seconds (the defaults
# take about 45 s). It prints its port, then how long bob stayed online after the test said
# "cut" on its standard input, or that he is still there after WAIT seconds.
VANISH_SERVER = """
    import sys, time
    from chatlab import portable
    from chatlab.servers import server_class
    portable.KEEPALIVE = portable.KeepAlive(idle=1, interval=1, count=2, user_timeout=3)
    server = server_class(sys.argv[1])("0.0.0.0", 0).start()
    print(server.port, flush=True)
    sys.stdin.readline()  # bob is online and the cable is cut
    cut = time.monotonic()
    while "bob" in server.online() and time.monotonic() - cut < 12:
        time.sleep(0.1)
    gone = "bob" not in server.online()
    print("gone" if gone else "still online", round(time.monotonic() - cut, 1), flush=True)
    server.stop()
"""
VANISH_CLIENT = """
    import socket, sys, time
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    sock.sendall(b"bob\\n")
    data = b""
    while b"* online:" not in data:
        data += sock.recv(4096)
    print("online", flush=True)
    time.sleep(30)  # then it neither reads nor answers: its cable is cut
"""


@pytest.fixture(scope="module")
def two_hosts():
    """Two network namespaces joined by a veth pair (as in test_across_hosts.py), for the
    vanishing laptop; skipped without root and iproute2."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a vanished laptop is played in network namespaces: needs root and iproute2")
    pid = os.getpid()
    names = {"server": f"chatlab-{pid}-vs", "client": f"chatlab-{pid}-vc"}
    links = {"server": f"clv{pid}s", "client": f"clv{pid}c"}
    addresses = {"server": "10.201.0.1", "client": "10.201.0.2"}
    made = []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)

    try:
        for ns in names.values():
            ip("netns", "add", ns)
            made.append(ns)
        ip("link", "add", links["server"], "type", "veth", "peer", "name", links["client"])
        for side in ("server", "client"):
            ip("link", "set", links[side], "netns", names[side])
            ip("-n", names[side], "addr", "add", f"{addresses[side]}/30", "dev", links[side])
            ip("-n", names[side], "link", "set", links[side], "up")
        yield names, links, addresses, ip
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"network namespaces unavailable: {exc.stderr.strip()}")
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)


@pytest.mark.parametrize("model", ["threads", "selectors", "asyncio"])
def test_a_laptop_that_vanishes_from_the_network_frees_its_name(two_hosts, model):
    names, links, addresses, ip = two_hosts
    netns = lambda side: ("ip", "netns", "exec", names[side])  # noqa: E731
    run = dict(stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    server = subprocess.Popen(
        [*netns("server"), sys.executable, "-c", textwrap.dedent(VANISH_SERVER), model], **run
    )
    client = None
    try:
        port = server.stdout.readline().strip()
        client = subprocess.Popen(
            [
                *netns("client"),
                sys.executable,
                "-c",
                textwrap.dedent(VANISH_CLIENT),
                addresses["server"],
                port,
            ],
            **run,
        )
        assert client.stdout.readline().strip() == "online"
        ip("-n", names["client"], "link", "set", links["client"], "down")  # the Wi-Fi drops
        started = time.monotonic()
        server.stdin.write("cut\n")
        server.stdin.flush()
        outcome = server.stdout.readline().split()
        assert outcome[:1] == ["gone"], f"bob is {' '.join(outcome)} s after the cable was cut"
        assert time.monotonic() - started < 12
    finally:
        ip("-n", names["client"], "link", "set", links["client"], "up")
        for process in (client, server):
            if process is not None:
                process.kill()  # by its pid; the namespaces go at the end of the module
                process.communicate(timeout=10)


# --- a slow client that is dropped -------------------------------------------------------------------


def test_a_client_dropped_as_too_slow_gets_only_whole_lines(start, connect):
    """A client that reads, but slower than alice writes to it, is dropped once 32 KiB wait for
    it; what it reads up to the end is whole lines (read_to_eof fails on a cut one)."""
    server = start(max_backlog=32 * 1024)
    server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # accepted sockets inherit it
    alice = connect(server, "alice")
    slow = connect(server, "slow", rcvbuf=4096)
    alice.expect("* slow joined")
    received: list[str] = []
    failures: list[BaseException] = []

    def read_slowly() -> None:  # about 200 kB/s: slower than alice, bounded by the timeout
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # Once dropped, as fast as it can: the server waits LINE_END_TIMEOUT (0.25 s) for the
            # end of its line, which goes out behind about 40 kB in the kernel's buffers, and at
            # 200 kB/s on a busy machine emptying those took longer than that.
            if "slow" in server.room.online():
                time.sleep(0.02)
            try:
                data = slow.sock.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                break
            slow._buffer += data
        try:
            received.extend(slow.read_to_eof(timeout=1))
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    reader = threading.Thread(target=read_slowly, name="test-slow-reader")
    reader.start()
    try:
        for i in range(400):  # one line at a time, 1006 bytes each with its newline: 400 kB in about a second
            alice.send(f"%slow%{i:03} " + "y" * 994)
            time.sleep(0.002)
        alice.read_until("* slow left", limit=500)
    finally:
        reader.join(30)
    assert not reader.is_alive() and not failures, failures
    assert received, "it read whole lines before it was dropped"
    bad = [
        (i, len(line), line[:12])
        for i, line in enumerate(received)
        if not (line.startswith("%alice%") and len(line) == 1005)
    ]
    assert not bad, (len(received), bad)
    assert any(e.text == "too slow" for e in server.events() if e.client == "slow")


def test_lines_to_a_client_being_dropped_get_an_error_back(start, connect):
    server = start(max_backlog=32 * 1024)
    server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # accepted sockets inherit it
    alice = connect(server, "alice")
    stalled = connect(server, "stalled", rcvbuf=4096)  # registers, then reads nothing
    alice.expect("* stalled joined")
    for i in range(200):  # 200 kB: more than the buffers and the backlog hold
        alice.send(f"%stalled%{i:03} " + "y" * 994)
    lines = alice.read_until("* stalled left", limit=300)
    # The answers to the read that overflowed it can come after the "left" notice (stalled's own
    # thread may announce it while alice's is still at that read): ask who is online, and every
    # line before the answer is about alice's lines.
    alice.send("%server%who")
    lines += alice.read_until("* online: alice", limit=300)
    lost = "! stalled is too slow and is being disconnected; your line was not delivered"
    assert lost in lines, lines[:5]
    assert set(lines) - {"* stalled left", "* online: alice"} <= {lost, "! unknown client 'stalled'"}
    stalled.close()
