"""Flood control (``rate=``, ``--rate``): a client over its budget is read more slowly, nothing is lost.

The token bucket is arithmetic and is tested without sockets. The rest runs every server model
over loopback: one client floods another with numbered lines while a second pair keeps
chatting, and the test checks what the users depend on: every line arrives, in order; the
flooder is told once and the server logs it once; the flood takes at least as long as the
rate allows; the other pair's round trips stay short. Without a rate nothing changes.
"""

from __future__ import annotations

import doctest
import logging
import math
import ssl
import statistics
import threading
import time

import pytest
from transcript import Peer, Program, wait_until

from chatlab import flood
from chatlab.flood import Throttle, TokenBucket, slow_down
from chatlab.servers import ServerBase, server_class

FLOOD_LINES = 2000
RATE = 500.0  # lines per second: a burst of 1000, so 2000 lines take at least 2 s
SLOW_DOWN = "! slow down: at most 500 lines per second; your lines wait"


# --- the bucket, without sockets -------------------------------------------------------------


def test_the_module_examples_hold():
    assert doctest.testmod(flood).failed == 0


def test_a_new_bucket_is_full_with_two_seconds_worth():
    bucket = TokenBucket.for_rate(50.0, now=100.0)
    assert (bucket.burst, bucket.tokens) == (100.0, 100.0)
    assert bucket.take(100, now=100.0) == 100  # the whole burst, at once, without waiting
    assert bucket.take(1, now=100.0) == 0
    assert bucket.wait(1, now=100.0) == pytest.approx(1 / 50)


def test_the_bucket_refills_at_the_rate_but_never_beyond_the_burst():
    bucket = TokenBucket.for_rate(10.0, now=0.0)
    assert bucket.take(20, now=0.0) == 20
    assert bucket.take(100, now=1.0) == 10
    assert bucket.take(100, now=1000.0) == 20  # a long quiet spell saves up no more than the burst
    assert bucket.wait(1000, now=1000.0) == pytest.approx(2.0)  # never longer than a burst's worth


def test_the_bucket_grants_whole_lines_only():
    bucket = TokenBucket.for_rate(4.0, now=0.0)
    bucket.take(8, now=0.0)
    assert bucket.take(1, now=0.2) == 0  # 0.8 of a token
    assert bucket.wait(1, now=0.2) == pytest.approx(0.05)
    assert bucket.take(3, now=0.25) == 1


def test_the_throttle_lets_lines_through_in_order_as_tokens_come_in():
    throttle = Throttle.for_rate(10.0, now=0.0)  # a burst of 20
    assert throttle.admit(list(range(25)), now=0.0) == list(range(20))
    assert throttle.waiting == [20, 21, 22, 23, 24]
    assert throttle.wait(now=0.0) == pytest.approx(0.1)  # batches of TICK = 0.1 s: 1 line here
    assert throttle.admit([], now=0.3) == [20, 21, 22]
    assert throttle.admit([25], now=0.3) == []  # a new line waits behind the others
    assert throttle.admit([], now=10.0) == [23, 24, 25]
    assert throttle.wait(now=10.0) == 0.0  # none wait: read on


def test_the_throttle_waits_for_a_batch_not_for_every_line():
    throttle = Throttle.for_rate(500.0, now=0.0)
    throttle.admit(list(range(1500)), now=0.0)
    assert throttle.wait(now=0.0) == pytest.approx(0.1)  # 50 lines' worth: ten wake-ups a second
    assert len(throttle.admit([], now=0.1)) == 50


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan])
def test_a_rate_must_be_positive(rate):
    with pytest.raises(ValueError):
        TokenBucket.for_rate(rate, now=0.0)
    with pytest.raises(ValueError):
        server_class("threads")("127.0.0.1", 0, rate=rate)


def test_the_notice_names_the_rate():
    assert slow_down(500.0) == "slow down: at most 500 lines per second; your lines wait"
    assert slow_down(2.5) == "slow down: at most 2.5 lines per second; your lines wait"
    assert SLOW_DOWN == "! " + slow_down(RATE)


# --- every model, over loopback ------------------------------------------------------------------


class PingPong:
    """Two clients that keep chatting, one round trip every 20 ms (50 lines a second each,
    far below any rate tested), until told to stop; it keeps every round trip's duration."""

    def __init__(self, ping: Peer, pong: Peer) -> None:
        self.ping, self.pong = ping, pong
        self.round_trips: list[float] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-pingpong")
        self.thread.start()

    def _run(self) -> None:
        try:
            for i in range(1000):  # bounded: 1000 rounds of at least 20 ms is 20 s at most
                if self.stop.is_set():
                    return
                started = time.monotonic()
                self.ping.send(f"%pong%{i}")
                self.pong.expect(f"%ping%{i}")
                self.pong.send(f"%ping%{i}")
                self.ping.expect(f"%pong%{i}")
                self.round_trips.append(time.monotonic() - started)
                self.stop.wait(0.02)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> list[float]:
        self.stop.set()
        self.thread.join(10.0)
        assert not self.thread.is_alive(), "the ping-pong pair is stuck"
        if self.error is not None:
            raise self.error
        return self.round_trips


def flood_and_collect(server: ServerBase, connect) -> tuple[Peer, list[str], float, list[float]]:
    """``flood`` sends FLOOD_LINES numbered lines to ``sink`` in one go while ``ping`` and
    ``pong`` chat. Returns the flooder, what the sink received, how long the flood took from
    the first send to the last line received, and the pair's round trips meanwhile."""
    sink = connect(server, "sink")
    ping, pong = connect(server, "ping"), connect(server, "pong")
    flooder = connect(server, "flood")
    for peer in (sink, ping, pong):
        peer.read_until("* flood joined")
    pair = PingPong(ping, pong)
    try:
        wait_until(lambda: len(pair.round_trips) >= 3, message="the pair chats")
        started = time.monotonic()
        flooder.send_raw(b"".join(f"%sink%{i:04d}\n".encode() for i in range(FLOOD_LINES)))
        received = [sink.read_line(timeout=15.0) for _ in range(FLOOD_LINES)]
        took = time.monotonic() - started
    finally:
        round_trips = pair.finish()
    return flooder, received, took, round_trips


EXPECTED = [f"%flood%{i:04d}" for i in range(FLOOD_LINES)]


def slow_down_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "slow down" in r.getMessage()]


def test_a_flooder_is_slowed_and_loses_nothing_while_others_chat_on(start, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    server = start(rate=RATE)
    flooder, received, took, round_trips = flood_and_collect(server, connect)
    assert received == EXPECTED  # all of them, in order
    assert took >= (FLOOD_LINES - 2 * RATE) / RATE * 0.95  # 2 s: it was held to the rate
    flooder.expect(SLOW_DOWN)
    assert flooder.who() == ["flood", "ping", "pong", "sink"]  # no second notice was queued
    assert len(slow_down_logs(caplog)) == 1
    assert "flood" in slow_down_logs(caplog)[0]
    assert len(round_trips) >= 10, "the pair kept chatting during the flood"
    assert statistics.median(round_trips) < 0.25 and max(round_trips) < 2.0, round_trips


def test_a_second_flood_of_the_same_client_gets_no_second_notice(start, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    server = start(rate=200.0)  # a burst of 400: each flood of 450 goes over
    sink, flooder = connect(server, "sink"), connect(server, "flood")
    sink.expect("* flood joined")
    for burst in range(2):
        flooder.send_raw(b"".join(f"%sink%{burst}-{i}\n".encode() for i in range(450)))
        assert [sink.read_line() for _ in range(450)] == [f"%flood%{burst}-{i}" for i in range(450)]
    flooder.expect(SLOW_DOWN.replace("500", "200"))
    assert flooder.who() == ["flood", "sink"]
    assert len(slow_down_logs(caplog)) == 1


def test_without_a_rate_nothing_changes(start, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatlab.server")
    server = start()
    flooder, received, _, round_trips = flood_and_collect(server, connect)
    assert received == EXPECTED
    assert flooder.who() == ["flood", "ping", "pong", "sink"]  # the very next line: no notice
    assert slow_down_logs(caplog) == []
    assert round_trips


def test_a_paused_client_does_not_hold_up_a_stop(start, connect):
    server = start(rate=1.0)  # 2 tokens: 300 lines leave a debt of about 300 s
    connect(server, "sink")
    flooder = connect(server, "flood")
    flooder.send_raw(b"%sink%x\n" * 300)
    flooder.expect(SLOW_DOWN.replace("500", "1"))
    server.stop(timeout=5.0)
    assert server.threads() == []  # the waiting client's thread (threads model) ended too
    flooder.read_to_eof()


def test_tcp_makes_the_flooder_wait_while_its_lines_are_not_read(start, connect):
    server = start(rate=10.0)
    sink, flooder = connect(server, "sink"), connect(server, "flood", sndbuf=16384)
    sink.expect("* flood joined")
    offered = b"%sink%flooding\n" * 300_000  # 4.5 MB
    flooder.sock.setblocking(False)
    accepted, refused_in_a_row = 0, 0
    for _ in range(2000):  # bounded: at most about 2000 * 5 ms
        try:
            accepted += flooder.sock.send(offered[accepted : accepted + 65536])
            refused_in_a_row = 0
        except BlockingIOError:  # the kernel's buffers are full: a blocking send() would wait
            refused_in_a_row += 1
            if refused_in_a_row == 40:  # 0.2 s without room: the server is not reading
                break
            time.sleep(0.005)
    assert refused_in_a_row == 40 and accepted < len(offered) // 4, accepted
    (record,) = [c for c in server.clients() if c.name == "flood"]
    assert record.bytes_in < accepted  # the rest waits in the kernel, not in the server
    assert sink.read_line() == "%flood%flooding"  # meanwhile its lines go through, at the rate
    flooder.expect(SLOW_DOWN.replace("500", "10"))


# --- the program ------------------------------------------------------------------------------


def test_the_server_program_takes_a_rate_and_logs_the_flooder_once():
    server = Program("chatlab.server", "--port", "0", "--rate", "100")
    try:
        port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)", "stdout").group(1))
        sink, flooder = Peer(("127.0.0.1", port)), Peer(("127.0.0.1", port))
        sink.register("sink")
        flooder.register("flood")
        sink.expect("* flood joined")
        flooder.send_raw(b"".join(f"%sink%{i}\n".encode() for i in range(300)))
        assert [sink.read_line() for _ in range(300)] == [f"%flood%{i}" for i in range(300)]
        flooder.expect("! slow down: at most 100 lines per second; your lines wait")
        server.wait_for(r"flood: slow down")
        assert sum("slow down" in line for line in server.lines["stderr"]) == 1
        sink.close()
        flooder.close()
    finally:
        server.proc.terminate()
        server.finish()


@pytest.mark.parametrize("rate", ["0", "-5", "lots"])
def test_the_server_program_refuses_a_rate_that_is_not_positive(rate):
    program = Program("chatlab.server", "--port", "0", "--rate", rate)
    assert program.finish() == 2
    assert any("--rate" in line for line in program.lines["stderr"])


def test_flood_control_counts_lines_inside_tls_after_the_class_code(start, tmp_path):
    """Over TLS with a class code: the rate counts the chat's lines (the plaintext), nothing
    is lost, and the flooder hears of it once, in its encrypted stream."""
    import trustme

    from chatlab.client import ChatClient

    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = start(rate=200.0, tls=server_context, code="owl-42")  # a burst of 400
    options = {"tls": client_context, "code": "owl-42"}
    with (
        ChatClient("127.0.0.1", server.port, "sink", **options) as sink,
        ChatClient("127.0.0.1", server.port, "flood", **options) as flooder,
    ):
        assert sink.recv() == "* flood joined"
        started = time.monotonic()
        for i in range(600):
            flooder.send("sink", str(i))
        assert [sink.recv(timeout=10) for _ in range(600)] == [f"%flood%{i}" for i in range(600)]
        assert time.monotonic() - started >= (600 - 400) / 200 * 0.95
        assert flooder.recv() == SLOW_DOWN.replace("500", "200")
        assert flooder.who() == ["flood", "sink"]
        assert flooder.pending() == ["* online: flood, sink"]  # and nothing else
