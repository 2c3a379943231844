"""The pictures of chatlab.viz, drawn from a real session: a server on port 0, real clients.

The session (module fixture) reads like a transcript: alice, bob and carol join, a second
"alice" is refused, alice and bob talk, alice writes to nobody, carol broadcasts and leaves.
Every step waits for the line it caused, so the server's log has one possible order. The
tests then check that each picture shows what the clients themselves saw.
"""

from __future__ import annotations

import inspect
import itertools
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from transcript import wait_until

from chatlab import ChatClient, ChatServer, NameRefused, ServerEvent, viz


def read_until(client: ChatClient, wanted: str, limit: int = 20) -> list[str]:
    """Lines the client receives up to and including ``wanted`` (at most ``limit`` lines)."""
    seen = []
    for _ in range(limit):
        seen.append(client.recv(timeout=2))
        if seen[-1] == wanted:
            return seen
    raise AssertionError(f"{client.name} never got {wanted!r}; got {seen}")


@dataclass
class Session:
    server: ChatServer
    started: float
    events: list[ServerEvent] = field(default_factory=list)
    records: list = field(default_factory=list)
    received: dict[str, list[str]] = field(default_factory=dict)  # every line each client got
    sent: Counter = field(default_factory=Counter)  # messages each client sent (not errors)
    live_threads: set[str] = field(default_factory=set)

    def messages_received(self, name: str) -> int:
        return sum(line.startswith("%") for line in self.received[name])


@pytest.fixture(scope="module")
def session():
    started = time.time()
    server = ChatServer().start()
    clients = []
    try:
        alice, bob, carol = (ChatClient(port=server.port, name=n) for n in ("alice", "bob", "carol"))
        clients += [alice, bob, carol]
        s = Session(server, started, received={"alice": [], "bob": [], "carol": []})
        with pytest.raises(NameRefused):
            ChatClient(port=server.port, name="alice")
        wait_until(lambda: server.connection_count() == 3)

        alice.send("bob", "hi bob")
        s.received["bob"] += read_until(bob, "%alice%hi bob")
        bob.send("alice", "hi alice")
        s.received["alice"] += read_until(alice, "%bob%hi alice")
        alice.send("zed", "anyone there?")
        s.received["alice"] += read_until(alice, "! unknown client 'zed'")
        carol.broadcast("hello all")
        s.received["alice"] += read_until(alice, "%carol%hello all")
        s.received["bob"] += read_until(bob, "%carol%hello all")
        s.sent.update(alice=1, bob=1, carol=1)
        s.received["carol"] += carol.pending()
        carol.close()
        s.received["alice"] += read_until(alice, "* carol left")
        s.received["bob"] += read_until(bob, "* carol left")

        s.events = server.events()
        s.records = server.clients()
        # The "left" notice goes out just before carol's thread ends: give it that moment.
        wait_until(lambda: "chatlab-client-carol" not in {t.name for t in threading.enumerate()})
        s.live_threads = {t.name for t in threading.enumerate() if t.name.startswith("chatlab-client")}
        yield s
    finally:
        for client in clients:
            client.close()
        server.stop()


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def with_gid(fig: Figure, prefix: str) -> list:
    return [a for a in fig.findobj(lambda a: (a.get_gid() or "").startswith(prefix))]


def gids(fig: Figure, prefix: str) -> Counter:
    return Counter(a.get_gid() for a in with_gid(fig, prefix))


def render(fig: Figure) -> None:
    """Draw the figure to PNG; any matplotlib warning (e.g. a layout problem) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FigureCanvasAgg(fig)
        fig.savefig(BytesIO(), format="png")


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [
        (t.get_text(), t.get_window_extent(renderer).shrunk(0.98, 0.9))
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip()
    ]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


# --- the log, read back ----------------------------------------------------------------------


def test_deliveries_match_what_the_clients_received(session):
    delivered = viz.deliveries(session.events)
    assert [(d.sender, d.receiver, d.text, d.broadcast) for d in delivered] == [
        ("alice", "bob", "hi bob", False),
        ("bob", "alice", "hi alice", False),
        ("carol", "alice", "hello all", True),
        ("carol", "bob", "hello all", True),
    ]
    for name in ("alice", "bob", "carol"):
        assert sum(d.receiver == name for d in delivered) == session.messages_received(name)


# --- topology ---------------------------------------------------------------------------------


def test_topology_shows_each_client_its_port_and_message_counts(session):
    fig = viz.topology(session.records, session.events)
    render(fig)
    shown = texts(fig)
    assert "server" in shown
    assert fig.get_suptitle() == "2 clients connected to one server (1 left)"
    for record in session.records:
        assert record.name in shown
        assert f"port {record.port}" in shown
    assert "carol" in shown and "left" in shown  # gone, but part of the story
    for name in ("alice", "bob", "carol"):
        (label,) = with_gid(fig, f"edge-label:{name}")
        assert label.get_text() == f"sent {session.sent[name]}\nreceived {session.messages_received(name)}"


def test_topology_edge_width_grows_with_the_messages_on_that_connection(session):
    fig = viz.topology(session.records, session.events)
    width = {name: with_gid(fig, f"edge:{name}")[0].get_linewidth() for name in ("alice", "bob", "carol")}
    traffic = {n: session.sent[n] + session.messages_received(n) for n in width}
    assert traffic == {"alice": 3, "bob": 3, "carol": 1}
    assert width["alice"] == width["bob"] > width["carol"]


def test_topology_from_records_alone_uses_their_counters(session):
    fig = viz.topology(session.records)
    render(fig)
    assert sorted(a.get_gid() for a in with_gid(fig, "client:")) == ["client:alice", "client:bob"]
    for name in ("alice", "bob"):
        (label,) = with_gid(fig, f"edge-label:{name}")
        assert label.get_text() == f"sent {session.sent[name]}\nreceived {session.messages_received(name)}"


def test_topology_from_names_has_no_counts():
    fig = viz.topology(["carol", "alice", "bob"])
    render(fig)
    assert sorted(a.get_gid() for a in with_gid(fig, "client:")) == [
        "client:alice",
        "client:bob",
        "client:carol",
    ]
    assert with_gid(fig, "edge-label:") == []
    assert len(with_gid(fig, "edge:")) == 3


# --- sequence diagram ------------------------------------------------------------------------


def test_sequence_diagram_has_an_arrow_per_line_on_the_wire(session):
    fig = viz.sequence_diagram(session.events)
    render(fig)
    assert gids(fig, "send:") == Counter({f"send:{n}": session.sent[n] for n in ("alice", "bob", "carol")})
    assert gids(fig, "deliver:") == Counter(
        ["deliver:alice->bob", "deliver:bob->alice", "deliver:carol->alice", "deliver:carol->bob"]
    )
    assert sum(gids(fig, "deliver:").values()) == sum(
        map(session.messages_received, ("alice", "bob", "carol"))
    )
    assert gids(fig, "refused:") == Counter({"refused:alice": 1})  # the line to 'zed' came in...
    assert gids(fig, "error:") == Counter(
        {"error:alice": 1, "error:": 1}
    )  # ...and its error; the second alice
    assert gids(fig, "join:") == Counter({"join:alice": 1, "join:bob": 1, "join:carol": 1})
    assert gids(fig, "leave:") == Counter({"leave:carol": 1})


def test_sequence_diagram_labels_show_the_lines_as_typed_and_as_delivered(session):
    shown = texts(viz.sequence_diagram(session.events))
    for lane in ("alice", "bob", "carol", "server"):
        assert lane in shown
    for line in (
        "%bob%hi bob",
        "%alice%hi bob",
        "%alice%hi alice",
        "%bob%hi alice",
        "%*%hello all",
        "%carol%hello all",
        "%zed%…",
        "! unknown client 'zed'",
    ):
        assert line in shown, line
    assert "! name taken  (to a connection with no name)" in shown
    assert shown.count("%carol%hello all") == 2  # one label per receiver
    assert not any(text.endswith("…") for text in shown if text != "%zed%…")  # nothing cut short


def test_sequence_diagram_keeps_only_the_latest_rows(session):
    # The last 6 rows: the line to zed and its error (2), carol's broadcast (1 + 2), carol leaves.
    fig = viz.sequence_diagram(session.events, max_rows=6)
    render(fig)
    assert "… 6 earlier events not shown" in texts(fig)  # 3 joins, the refusal, 2 messages
    assert gids(fig, "send:") == Counter({"send:carol": 1})
    assert gids(fig, "refused:") == Counter({"refused:alice": 1})
    assert gids(fig, "deliver:") == Counter(["deliver:carol->alice", "deliver:carol->bob"])
    assert gids(fig, "leave:") == Counter({"leave:carol": 1})


def arrow(fig: Figure, gid: str) -> tuple[float, float, float]:
    """The one arrow with this gid, as (x it starts at, x it points to, y)."""
    (drawn,) = with_gid(fig, gid)
    (x_from, y_from), (x_to, y_to) = drawn.xyann, drawn.xy
    assert y_from == y_to  # arrows are level: a line takes no time on the wire, in this picture
    return x_from, x_to, y_to


def test_a_refused_line_comes_in_and_its_error_goes_back(session):
    fig = viz.sequence_diagram(session.events)
    alice_lane = arrow(fig, "send:alice")[0]
    in_from, in_to, in_y = arrow(fig, "refused:alice")
    back_from, back_to, back_y = arrow(fig, "error:alice")
    assert (in_from, in_to) == (alice_lane, 0)  # from alice's lane to the server's
    assert (back_from, back_to) == (0, alice_lane)  # and back
    assert back_y == in_y - 1  # the answer comes a row later


def test_each_receiver_of_a_broadcast_has_its_own_arrow_row(session):
    fig = viz.sequence_diagram(session.events)
    _, _, sent_y = arrow(fig, "send:carol")
    rows = {receiver: arrow(fig, f"deliver:carol->{receiver}")[2] for receiver in ("alice", "bob")}
    assert sorted(rows.values(), reverse=True) == [sent_y - 1, sent_y - 2]  # rows below, not one


def test_other_refused_lines_are_described():
    """Lines the log cannot quote: it keeps why a line was refused, not the line."""
    with ChatServer() as server, ChatClient(port=server.port, name="ada") as ada:
        for line, error in (
            ("hello?", "! expected %name%message"),
            ("%server%dance", "! unknown command 'dance'; try %server%help"),
        ):
            ada.send_line(line)
            read_until(ada, error)
        events = server.events()
    fig = viz.sequence_diagram(events)
    render(fig)
    shown = texts(fig)
    assert gids(fig, "refused:") == Counter({"refused:ada": 2})
    assert gids(fig, "error:") == Counter({"error:ada": 2})
    for label in (
        "(a line without %name%)",
        "! expected %name%message",
        "%server%dance",
        "! unknown command 'dance'; try %server%help",
    ):
        assert label in shown, label


def test_a_dropped_client_is_not_drawn_as_a_refused_line():
    """The server lets go of a client that stops reading: no line came in, no error went out."""
    # history: every line ada sends while "slow" is being dropped is an event too; keep them all
    with ChatServer(max_backlog=64 * 1024, history=10_000) as server:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full after a few lines
        slow.settimeout(2)
        try:
            slow.connect(server.address)
            slow.sendall(b"slow\n")  # registers, then never reads
            wait_until(lambda: "slow" in server.online())
            with ChatClient(port=server.port, name="ada") as ada:
                for _ in range(2000):  # at most 8 MB; the buffers fill up long before
                    if "slow" not in server.online():
                        break
                    ada.send("slow", "x" * 4000)
                wait_until(lambda: any(e.kind == "left" and e.client == "slow" for e in server.events()))
                events = [e for e in server.events() if e.client == "slow"]
        finally:
            slow.close()
    assert [(e.kind, e.text) for e in events if e.kind != "connected"] == [
        ("registered", ""),
        ("error", "too slow: disconnected"),
        ("left", "too slow"),
    ]
    fig = viz.sequence_diagram(events)
    render(fig)
    assert gids(fig, "refused:") == Counter() and gids(fig, "send:") == Counter()
    assert gids(fig, "error:") == Counter({"error:slow": 1})  # a red x on the server's lane
    assert "slow: too slow: disconnected" in texts(fig)
    assert "leaves (too slow)" in texts(fig)


def test_empty_pictures_still_render():
    for fig in (viz.sequence_diagram([]), viz.topology([]), viz.thread_timeline([])):
        render(fig)


# --- threads over time ------------------------------------------------------------------------


def test_spans_from_events_follow_each_connection(session):
    spans = viz.spans_from_events(session.events, session.started)
    by_thread: dict[str, list[viz.Span]] = {}
    for span in spans:
        by_thread.setdefault(span.thread, []).append(span)
    refused = [t for t in by_thread if t.startswith("chatlab-client-127.0.0.1:")]
    assert len(refused) == 1  # the second "alice" never got a name
    assert sorted(set(by_thread) - set(refused)) == [
        "chatlab-accept",
        "chatlab-client-alice",
        "chatlab-client-bob",
        "chatlab-client-carol",
    ]
    assert [s.activity for s in by_thread["chatlab-client-carol"]] == ["waiting for a name", "serving carol"]
    waiting, serving = by_thread["chatlab-client-carol"]
    assert waiting.end == serving.start and serving.end is not None  # carol left
    assert by_thread["chatlab-client-alice"][-1].end is None  # still being served
    still_running = {s.thread for s in spans if s.end is None and s.thread != "chatlab-accept"}
    assert still_running == session.live_threads == {"chatlab-client-alice", "chatlab-client-bob"}


def test_thread_timeline_draws_a_row_per_thread_and_a_bar_per_span(session):
    spans = viz.spans_from_events(session.events, session.started, stopped=time.time())
    fig = viz.thread_timeline(spans)
    render(fig)
    (ax,) = fig.axes
    rows = [label.get_text() for label in ax.get_yticklabels()]
    assert len(rows) == 5 and rows[1].startswith("chatlab-client-127.0.0.1:")  # digits sort first
    assert rows[:1] + rows[2:] == [
        "chatlab-accept",
        "chatlab-client-alice",
        "chatlab-client-bob",
        "chatlab-client-carol",
    ]
    assert len(with_gid(fig, "span:")) == len(spans) == 8
    assert "serving alice" in texts(fig) and "waiting for a name" in texts(fig)


def test_thread_recorder_records_each_thread_by_name():
    recorder = viz.ThreadRecorder()
    barrier = threading.Barrier(3, timeout=2)

    def work() -> None:
        with recorder.span("waiting at the barrier"):
            barrier.wait()
        with recorder.span("counting"):
            sum(range(1000))

    threads = [threading.Thread(target=work, name=f"worker-{i}") for i in (1, 2, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2)
    assert not any(thread.is_alive() for thread in threads)

    spans = recorder.spans
    assert len(spans) == 6
    assert Counter((s.thread, s.activity) for s in spans) == Counter(
        (f"worker-{i}", a) for i in (1, 2, 10) for a in ("waiting at the barrier", "counting")
    )
    assert all(s.end is not None and s.end >= s.start for s in spans)
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    # Every thread reached the barrier before any left it: the waits overlap in time.
    waits = [s for s in spans if s.activity == "waiting at the barrier"]
    assert max(s.start for s in waits) <= min(s.end for s in waits)

    fig = viz.thread_timeline(spans)
    render(fig)
    rows = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert rows == ["worker-1", "worker-2", "worker-10"]
    assert len(with_gid(fig, "span:")) == 6
    recorder.clear()
    assert recorder.spans == []


# --- good manners -----------------------------------------------------------------------------


def test_figures_stay_out_of_pyplot(session):
    """A figure is shown once, when a cell ends with it: pyplot must not hold on to it."""
    for fig in (
        viz.topology(session.records, session.events),
        viz.sequence_diagram(session.events),
        viz.thread_timeline(viz.spans_from_events(session.events, session.started)),
    ):
        assert fig.canvas.manager is None


def test_no_text_overlaps_with_six_clients():
    names = ["alice", "bob", "carol", "dave", "eve", "frank"]
    started = time.time()
    with ChatServer() as server:
        clients = [ChatClient(port=server.port, name=name) for name in names]
        try:
            for i, client in enumerate(clients):
                receiver = clients[(i + 1) % len(clients)]
                client.send(
                    receiver.name, f"hello {receiver.name}, this is a long message from {client.name}"
                )
                read_until(
                    receiver,
                    f"%{client.name}%hello {receiver.name}, this is a long message from {client.name}",
                )
            clients[0].broadcast("hi all")
            for client in clients[1:]:
                read_until(client, "%alice%hi all")
            clients[-1].close()
            read_until(clients[0], "* frank left")
            events, records = server.events(), server.clients()
        finally:
            for client in clients:
                client.close()
    figures = {
        "topology": viz.topology(records, events),
        "sequence": viz.sequence_diagram(events),
        "timeline": viz.thread_timeline(viz.spans_from_events(events, started)),
    }
    for picture, fig in figures.items():
        assert overlapping_texts(fig) == [], picture
    assert len(with_gid(figures["sequence"], "deliver:")) == 6 + 5


def test_broadcast_labels_on_both_sides_of_the_server_do_not_meet():
    """The tightest case: one lane each side next to the server, and labels of the longest size."""
    with ChatServer() as server:
        alice, bob, carol = (ChatClient(port=server.port, name=n) for n in ("alice", "bob", "carol"))
        try:
            carol.broadcast("x" * 40)
            read_until(alice, "%carol%" + "x" * 40)
            read_until(bob, "%carol%" + "x" * 40)
            events = server.events()
        finally:
            for client in (alice, bob, carol):
                client.close()
    fig = viz.sequence_diagram(events)
    assert gids(fig, "deliver:") == Counter(["deliver:carol->alice", "deliver:carol->bob"])
    assert overlapping_texts(fig) == []


# --- listeners, a token bucket, a crash, many servers (lessons 12 and 13) ---------------------


def connects(address: str, port: int) -> bool:
    """Whether a connection to (address, port) is taken: True, or False when it is refused."""
    try:
        socket.create_connection((address, port), timeout=2).close()
        return True
    except ConnectionRefusedError:
        return False


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS answers only at 127.0.0.1, not at 127.0.0.2")
def test_accepts_says_what_the_kernel_does():
    """A listener takes only connections to its own address: 127.0.0.2 plays another address."""
    for bound in ("127.0.0.1", "127.0.0.2"):
        with socket.create_server((bound, 0)) as listener:
            port = listener.getsockname()[1]
            for arriving_at in ("127.0.0.1", "127.0.0.2"):
                assert viz.accepts(bound, arriving_at) == connects(arriving_at, port), (bound, arriving_at)
    assert viz.accepts("0.0.0.0", "127.0.0.2") and viz.accepts("0.0.0.0", "192.168.1.20")


def test_listeners_draws_each_way_in_and_who_reaches_each_listener():
    fig = viz.listeners()
    render(fig)
    assert sorted(gids(fig, "connect:")) == [
        "connect:another computer->wlan0",
        "connect:this computer->lo",
        "connect:this computer->wlan0",
    ]  # another computer has no way to this computer's loopback
    assert sorted(gids(fig, "reach:")) == [
        "reach:lo->0.0.0.0",
        "reach:lo->127.0.0.1",
        "reach:wlan0->0.0.0.0",
        "reach:wlan0->192.168.1.20",
    ]
    shown = texts(fig)  # a port each: on one port Linux would not let 0.0.0.0 beside 127.0.0.1
    for listener in ("127.0.0.1:5050", "192.168.1.20:5051", "0.0.0.0:5052 (every IPv4\naddress)"):
        assert f"listens on\n{listener}" in shown, listener
    notes = {a.get_gid(): a.get_text() for a in with_gid(fig, "reached-from:")}
    assert notes == {
        "reached-from:127.0.0.1": "reached from this computer only",
        "reached-from:192.168.1.20": "reached from this computer\nand from other computers",
        "reached-from:0.0.0.0": "reached from this computer\nand from other computers",
    }
    assert overlapping_texts(fig) == []


def test_listeners_on_an_address_the_computer_does_not_have():
    fig = viz.listeners([("lo", "127.0.0.1")], ["10.0.0.7"], port=6000)
    render(fig)
    assert gids(fig, "reach:") == Counter() and gids(fig, "connect:") == Counter(
        {"connect:this computer->lo": 1}
    )
    assert "listens on\n10.0.0.7:6000" in texts(fig)
    assert "reached by nobody: no such address here" in texts(fig)


def test_bucket_run_gives_the_burst_at_once_and_the_rest_at_the_rate():
    """The answers of lesson 12's exercise 3 (formerly 11's), from chatlab.flood's own bucket."""
    for lines, rate, last in ((300, 200, 0.0), (1000, 100, 8.0), (401, 200, 0.005)):
        run = viz.bucket_run([0.0] * lines, rate)
        assert run.burst == 2 * rate
        assert run.passed[-1] == pytest.approx(last, abs=1e-6), (lines, rate)


def test_bucket_run_keeps_order_and_never_overdraws():
    sent = [0.5] * 30 + [2.0 + 0.2 * i for i in range(21)] + [6.0] * 25
    run = viz.bucket_run(sent, 10.0)
    assert run.sent == sent and len(run.passed) == len(sent)
    assert all(went >= came for came, went in zip(run.sent, run.passed, strict=True))  # never before it came
    assert run.passed == sorted(run.passed)  # in order
    for i, went in enumerate(run.passed):  # a full bucket, then 10 a second: no more than that
        assert i + 1 <= run.burst + run.rate * went + 1e-6
    assert run.passed[19] == 0.5 and run.passed[20] == pytest.approx(0.6)  # 20 at once, then waiting
    assert all(0 <= tokens <= run.burst for _, tokens in run.level)
    assert [t for t, _ in run.level] == sorted(t for t, _ in run.level)


def test_bucket_run_agrees_with_the_servers_throttle():
    """chatlab.flood.Throttle hands waiting lines over in batches (a tenth of a second's worth):
    the last line goes within one batch of the picture's."""
    from chatlab.flood import TICK, Throttle

    throttle, now = Throttle.for_rate(50.0, now=0.0), 0.0
    passed = len(throttle.admit(list(range(500)), now))
    for _ in range(10_000):
        if not throttle.waiting:
            break
        now += throttle.wait(now)
        passed += len(throttle.admit([], now))
    assert passed == 500
    assert viz.bucket_run([0.0] * 500, 50.0).passed[-1] == pytest.approx(now, abs=TICK)


def test_token_bucket_picture():
    fig = viz.token_bucket()
    render(fig)
    (level,) = with_gid(fig, "level")
    assert max(level.get_ydata()) == 20 and min(level.get_ydata()) == 0
    (sent,) = with_gid(fig, "sent")
    (passed,) = with_gid(fig, "passed")
    assert max(sent.get_ydata()) == max(passed.get_ydata()) == 51  # every line goes on
    (empty,) = with_gid(fig, "empty")
    assert empty.get_text() == "empty: 10 lines wait for their tokens"
    assert overlapping_texts(fig) == []
    assert with_gid(viz.token_bucket([0.0, 1.0, 2.0]), "empty") == []  # a slow sender never waits


def test_crash_times_follow_the_brokers_heartbeat():
    broker = pytest.importorskip("chatlab.broker")
    defaults = inspect.signature(viz.crash_times).parameters
    assert defaults["heartbeat"].default == broker.HEARTBEAT
    assert defaults["ttl_heartbeats"].default == broker.TTL_HEARTBEATS
    crash = viz.crash_times()
    assert crash.expires - crash.last_beat == pytest.approx(crash.ttl) == 5.0
    assert crash.last_beat <= crash.crash_at < crash.last_beat + crash.heartbeat
    assert crash.beats["three"][-1] == pytest.approx(crash.last_beat)  # no beat after the crash
    for name, when in crash.noticed.items():
        assert when in crash.beats[name]  # noticed at one of its own heartbeats...
        assert crash.expires < when <= crash.expires + crash.heartbeat  # ...the first after the expiry
    # Lesson 13 says: with the default heartbeat of one second, all this takes about six seconds.
    assert 5.0 < max(crash.noticed.values()) - crash.last_beat <= 6.0


def test_crash_times_for_any_heartbeat():
    crash = viz.crash_times(["a", "b"], "a", crash_at=1.05, heartbeat=0.2, ttl_heartbeats=5)
    assert crash.last_beat == pytest.approx(1.0) and crash.expires == pytest.approx(2.0)
    assert crash.noticed == {"b": pytest.approx(2.1)}
    with pytest.raises(ValueError):
        viz.crash_times(["a", "b"], "c")


def test_heartbeat_timeline_picture():
    crash = viz.crash_times()
    fig = viz.heartbeat_timeline(crash)
    render(fig)
    for name, beats in crash.beats.items():
        assert len(with_gid(fig, f"beat:{name}")) == len(beats)
    assert gids(fig, "noticed:") == Counter({"noticed:one": 1, "noticed:two": 1})
    assert gids(fig, "crash:") == Counter({"crash:three": 1}) and gids(fig, "expires:") == Counter(
        {"expires:three": 1}
    )
    (ttl,) = with_gid(fig, "ttl")
    assert (ttl.xyann[0], ttl.xy[0]) == (crash.last_beat, crash.expires)
    assert "time to live: 5 heartbeats after the last one" in texts(fig)
    assert overlapping_texts(fig) == []


def test_the_new_pictures_stay_out_of_pyplot():
    for fig in (
        viz.listeners(),
        viz.token_bucket(),
        viz.heartbeat_timeline(),
        viz.cluster_topology(),
        viz.message_path(),
    ):
        assert fig.canvas.manager is None


# --- how a connection ends: the ladders, the fd table, the calls, the wiretap -------------------


def test_socket_calls_draws_every_call_on_its_side_and_an_arrow_per_travel():
    fig = viz.socket_calls()
    render(fig)
    drawn = gids(fig, "call:")
    assert drawn == Counter(f"call:{c.side}:{c.row}" for c in viz.FIRST_CONVERSATION)
    assert sum(1 for c in viz.FIRST_CONVERSATION if c.side == "server") == 6
    assert set(gids(fig, "travel:")) == {"travel:connection", "travel:bytes", "travel:end of stream"}
    assert "conn.recv()  → b''" in texts(fig)
    assert not overlapping_texts(fig)


def test_the_clean_close_ladder_puts_the_closer_in_time_wait():
    fig = viz.segment_ladder(("a clean close", viz.CLEAN_CLOSE))
    render(fig)
    assert list(gids(fig, "segment:")) == [
        "segment:0:0:FIN",
        "segment:0:1:ACK",
        "segment:0:2:FIN",
        "segment:0:3:ACK",
    ]
    assert set(gids(fig, "time_wait:")) == {"time_wait:0"}  # the closer, and only there
    [bar] = with_gid(fig, "time_wait:0")
    assert set(bar.get_xdata()) == {-0.012}  # on the left lane: the side that closed first
    assert "recv() → b''  CLOSE_WAIT" in texts(fig)
    assert not overlapping_texts(fig)


def test_the_send_after_close_ladder_ends_in_an_rst_and_the_abort_in_one_too():
    fig = viz.segment_ladder(("we send", viz.SEND_AFTER_CLOSE), ("an abort", viz.ABORT))
    render(fig)
    flags = [gid.rsplit(":", 1)[1] for gid in gids(fig, "segment:")]
    assert flags == ["FIN", "ACK", "data", "RST", "data", "RST"]
    assert not gids(fig, "time_wait:")  # neither ending leaves a TIME_WAIT
    assert "next send(): BrokenPipeError" in texts(fig)
    assert "recv() → ConnectionResetError" in texts(fig)
    assert not overlapping_texts(fig)


def test_segment_arrows_run_from_the_sender_down_to_the_receiver():
    fig = viz.segment_ladder(("one each way", (viz.Segment("left", "FIN"), viz.Segment("right", "ACK"))))
    fin, ack = with_gid(fig, "segment:0:0:FIN")[0], with_gid(fig, "segment:0:1:ACK")[0]
    assert fin.xyann[0] == 0 and fin.xy[0] == 1 and fin.xy[1] > fin.xyann[1]  # later when it arrives
    assert ack.xyann[0] == 1 and ack.xy[0] == 0 and ack.xyann[1] > fin.xy[1] - 1


def test_the_fd_table_shows_close_freeing_an_fd_and_shutdown_ending_the_connection():
    fig = viz.fd_table()
    render(fig)
    assert set(gids(fig, "fd:")) == {"fd:0:5", "fd:0:6", "fd:1:6", "fd:2:6"}  # close(5) freed fd 5
    assert set(gids(fig, "connection:")) == {"connection:0:open", "connection:1:open", "connection:2:ended"}
    assert texts(fig).count("free") == 2
    assert "wakes: recv() → b''" in texts(fig)
    assert not overlapping_texts(fig)


def test_wire_timeline_draws_the_writes_and_a_cross_for_the_reset():
    """A real link, a real server: the greeting goes down, then the link resets the connection."""
    from chatlab.faults import FaultyLink

    server = ChatServer().start()
    greeting = len(b"* chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter\n")
    link = FaultyLink(upstream=server.address, direction="down", reset_after=greeting, record=True)
    try:
        with socket.create_connection(link.address, timeout=2) as raw:
            with pytest.raises(ConnectionResetError):
                for _ in range(5):
                    raw.recv(1024)
        wait_until(lambda: any(r.event != "data" for r in link.wiretap))
        records = list(link.wiretap)
    finally:
        link.close()
        server.stop()
    fig = viz.wire_timeline(records, "a reset after the greeting")
    render(fig)
    ends = set(gids(fig, "end:"))
    assert ends and all(gid.startswith("end:down:") or gid.startswith("end:up:") for gid in ends)
    [down] = with_gid(fig, "write:down")
    assert len(down.get_offsets()) == sum(r.direction == "down" and r.event == "data" for r in records) >= 1
    assert fig.canvas.manager is None


def test_cluster_topology_joins_each_client_to_its_own_server_and_both_servers_to_redis():
    fig = viz.cluster_topology()
    render(fig)
    assert set(gids(fig, "tcp:")) == {f"tcp:{name}->{server}" for name, server in viz.TWO_SERVERS.items()}
    assert set(gids(fig, "broker:")) == {"broker:server one", "broker:server two"}
    assert not [gid for gid in gids(fig, "tcp:") if "Redis" in gid]  # no client talks to Redis
    with pytest.raises(ValueError):
        viz.cluster_topology({"alice": "server one"})


def test_message_path_draws_one_arrow_per_step_in_order():
    fig = viz.message_path()
    render(fig)
    assert list(gids(fig, "step:")) == [
        f"step:{row}:{source}->{target}"
        for row, (source, target, _) in enumerate(viz.ONE_MESSAGE_STEPS, start=1)
    ]
    assert "XADD inbox:two" in texts(fig)
    assert not overlapping_texts(fig)


def test_spam_received_draws_each_student_and_what_the_rate_lets_through():
    without = {name: [0.5 + i / 20_000 for i in range(10_000)] for name in ("ana", "ben")}
    with_rate = {name: [0.5] * 400 + [0.5 + i / 200 for i in range(1, 101)] for name in ("ana", "ben")}
    fig = viz.spam_received(without, with_rate, rate=200)
    render(fig)
    assert gids(fig, "received:") == {
        "received:without:ana": 1,
        "received:without:ben": 1,
        "received:rate:ana": 1,
        "received:rate:ben": 1,
    }
    (ana_without,) = with_gid(fig, "received:without:ana")
    assert max(ana_without.get_ydata()) == 10_000
    (ana_rate,) = with_gid(fig, "received:rate:ana")
    assert max(ana_rate.get_ydata()) == 500
    (allowed,) = with_gid(fig, "allowed")
    assert list(allowed.get_ydata()) == [400, 400 + 200 * 2.5]  # a full bucket (two seconds), then the rate
    titles = sorted(ax.get_title() for ax in fig.axes)
    assert titles == ["--rate 200: 500 lines", "no flood control: 10,000 lines"]
    assert overlapping_texts(fig) == []
