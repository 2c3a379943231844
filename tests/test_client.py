"""ChatClient against a real server (and, where a server must misbehave, a bare socket)."""

import logging
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import unicodedata

import pytest
from transcript import GREETING, HELP, wait_until

from chatlab import client as client_module
from chatlab import kit_threads
from chatlab.client import ChatClient, ChatError, ConnectionClosed, NameRefused, ServerFull


def test_a_client_registers_sends_and_receives(server, chat_client):
    alice = chat_client(server, "alice")
    assert alice.online == ["alice"]
    bob = chat_client(server, "bob")
    assert bob.online == ["alice", "bob"]
    assert alice.recv() == "* bob joined"
    alice.send("bob", "hi bob, 50% done")
    assert bob.recv() == "%alice%hi bob, 50% done"
    alice.send("bob", "")
    assert bob.recv() == "%alice%"
    bob.broadcast("hello all")
    assert alice.recv() == "%bob%hello all"
    alice.send_line("%server%help")
    assert [alice.recv() for _ in HELP] == HELP
    alice.send("zed", "anyone?")
    assert alice.recv() == "! unknown client 'zed'"
    assert alice.pending() == [] and bob.pending() == []


def test_what_cannot_be_one_line_is_refused_before_sending(server, chat_client):
    alice = chat_client(server, "alice")
    for call in [
        lambda: alice.send_line("%bob%two\nlines"),
        lambda: alice.send_line("a\rb"),
        lambda: alice.send("bob", "two\nlines"),
        lambda: alice.send("b%ob", "hi"),
    ]:
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        ChatClient(server.host, server.port, "eve\nserver")


def test_a_taken_name_raises_name_refused(server, chat_client):
    chat_client(server, "alice")
    with pytest.raises(NameRefused, match="name taken"):
        ChatClient(server.host, server.port, "ALICE")


@pytest.mark.parametrize("name", ["", "two words", "x" * 33, "server", "All"])
def test_an_invalid_name_raises_name_refused(server, name):
    with pytest.raises(NameRefused, match="invalid name"):
        ChatClient(server.host, server.port, name)
    wait_until(lambda: server.connection_count() == 0)  # the refused client has hung up


def test_a_full_server_raises_server_full(start_server, chat_client):
    server = start_server(max_clients=1)
    chat_client(server, "alice")
    with pytest.raises(ServerFull, match="server full"):
        ChatClient(server.host, server.port, "bob")
    assert issubclass(ServerFull, ChatError) and issubclass(NameRefused, ChatError)


def test_who_returns_the_names_online(server, chat_client):
    alice = chat_client(server, "alice")
    chat_client(server, "bob")
    chat_client(server, "Carol")
    assert alice.who() == ["alice", "bob", "Carol"]
    assert alice.online == ["alice", "bob", "Carol"]
    assert alice.pending() == ["* bob joined", "* Carol joined", "* online: alice, bob, Carol"]


def test_who_waits_for_a_slow_answer_and_times_out_without_one():
    """A bare socket plays the server: it answers the first who late and the second never."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        asked = []

        def play_server() -> None:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(5)
                sock.sendall(GREETING.encode() + b"\n")
                sock.recv(100)
                sock.sendall(b"* welcome alice\n* online: alice\n")
                asked.append(sock.recv(100))
                threading.Event().wait(0.2)
                sock.sendall(b"* online: alice, bob\n")
                asked.append(sock.recv(100))
                sock.recv(100)  # until the client closes

        server = threading.Thread(target=play_server, name="test-fake-server")
        server.start()
        with ChatClient("127.0.0.1", listener.getsockname()[1], "alice") as alice:
            assert alice.who() == ["alice", "bob"]
            with pytest.raises(TimeoutError):
                alice.who(timeout=0.1)
        server.join(5)
        assert asked == [b"%server%who\n"] * 2


def test_recv_times_out_when_nothing_arrives(server, chat_client):
    alice = chat_client(server, "alice")
    with pytest.raises(TimeoutError):
        alice.recv(timeout=0.05)
    assert alice.pending() == []


def test_when_the_server_stops_recv_gives_what_arrived_then_raises(server, chat_client):
    seen = []
    alice = chat_client(server, "alice", on_line=seen.append)
    bob = chat_client(server, "bob")
    bob.send("alice", "one")
    bob.send("alice", "two")
    wait_until(lambda: len(seen) == 3)
    server.stop()
    assert alice.recv() == "* bob joined"
    assert alice.recv() == "%bob%one"
    assert alice.recv() == "%bob%two"
    with pytest.raises(ConnectionClosed):
        alice.recv()
    with pytest.raises(ConnectionClosed):  # and every time after
        alice.recv(timeout=0.01)
    assert alice.pending() == []
    wait_until(lambda: alice.closed)  # its reader thread has ended


def test_on_line_gets_every_line_in_the_reader_thread(server, chat_client):
    seen = []
    alice = chat_client(
        server, "alice", on_line=lambda line: seen.append((threading.current_thread().name, line))
    )
    bob = chat_client(server, "bob")
    bob.send("alice", "hi")
    bob.close()
    wait_until(lambda: len(seen) == 3)
    assert seen == [
        ("chatlab-reader-alice", "* bob joined"),
        ("chatlab-reader-alice", "%bob%hi"),
        ("chatlab-reader-alice", "* bob left"),
    ]
    assert alice.pending() == [line for _, line in seen]  # the same lines are queued for recv()


def test_with_keep_false_lines_go_only_to_on_line_and_nothing_piles_up(server, chat_client):
    seen = []
    alice = chat_client(server, "alice", on_line=seen.append, keep=False)  # as the terminal client
    bob = chat_client(server, "bob")
    for i in range(50):
        bob.send("alice", f"{i}")
    wait_until(lambda: len(seen) == 51)
    assert seen == ["* bob joined", *[f"%bob%{i}" for i in range(50)]]
    assert alice.pending() == []
    with pytest.raises(RuntimeError, match="keep=False"):
        alice.recv()  # instead of waiting for lines that never come


def test_a_failing_callback_is_logged_and_the_client_keeps_receiving(server, chat_client, caplog):
    def explode(line: str) -> None:
        raise RuntimeError(f"cannot show {line!r}")

    alice = chat_client(server, "alice", on_line=explode)
    bob = chat_client(server, "bob")
    assert alice.recv(timeout=2) == "* bob joined"
    bob.send("alice", "one")
    bob.send("alice", "two")
    assert [alice.recv(timeout=2), alice.recv(timeout=2)] == ["%bob%one", "%bob%two"]
    assert not alice.closed

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "chatlab.client" and r.levelname == "ERROR"]

    wait_until(lambda: len(failures()) >= 3)  # the callback runs just after the line is queued
    assert len(failures()) == 3 and "cannot show '%bob%two'" in failures()[-1].exc_text


def test_lines_that_come_with_the_welcome_are_not_lost():
    """A bare socket plays the server and sends the welcome and a message in one piece."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        answer = []

        def play_server() -> None:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(5)
                sock.sendall(GREETING.encode() + b"\n")
                answer.append(sock.recv(100))
                sock.sendall(b"* welcome alice\n* online: alice, bob\n%bob%early\n* bob left\n")
                sock.recv(100)  # until the client closes

        server = threading.Thread(target=play_server, name="test-fake-server")
        server.start()
        seen = []
        with ChatClient("127.0.0.1", listener.getsockname()[1], "alice", on_line=seen.append) as alice:
            assert alice.online == ["alice", "bob"]
            assert alice.recv() == "%bob%early"
            assert alice.recv() == "* bob left"
            assert seen == ["%bob%early", "* bob left"]
        server.join(5)
        assert answer == [b"alice\n"]


def test_a_server_that_says_nothing_times_out():
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts into its backlog, never answers
        with pytest.raises(TimeoutError):
            ChatClient("127.0.0.1", listener.getsockname()[1], "alice", timeout=0.2)


def test_nobody_listening_raises_connection_refused():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        ChatClient("127.0.0.1", port, "alice")


def test_close_joins_the_reader_thread_and_the_others_see_the_client_leave(server, chat_client):
    bob = chat_client(server, "bob")
    alice = ChatClient(server.host, server.port, "alice")
    assert "chatlab-reader-alice" in kit_threads() and not alice.closed
    alice.close()
    assert "chatlab-reader-alice" not in kit_threads() and alice.closed
    alice.close()  # a second close does nothing
    assert bob.recv() == "* alice joined"
    assert bob.recv() == "* alice left"
    with pytest.raises(ConnectionClosed):
        alice.send("bob", "still there?")
    with pytest.raises(ConnectionClosed):
        alice.recv(timeout=1)


def test_close_waits_until_the_reader_thread_has_finished(server, chat_client):
    busy, release = threading.Event(), threading.Event()

    def slow_on_line(line: str) -> None:  # e.g. a widget that takes a moment to redraw
        busy.set()
        release.wait(5)

    alice = chat_client(server, "alice", on_line=slow_on_line)
    chat_client(server, "bob")
    assert busy.wait(5)  # the reader thread is busy with "* bob joined"
    timer = threading.Timer(0.2, release.set)
    timer.start()
    try:
        alice.close()
        assert "chatlab-reader-alice" not in kit_threads()
    finally:
        release.set()
        timer.join()


def test_a_client_is_a_context_manager(server, chat_client):
    bob = chat_client(server, "bob")
    with ChatClient(server.host, server.port, "alice") as alice:
        alice.send("bob", "hi")
        assert bob.recv(timeout=5) == "* alice joined"
        assert bob.recv(timeout=5) == "%alice%hi"
    assert alice.closed and "chatlab-reader-alice" not in kit_threads()
    assert bob.recv() == "* alice left"


# --- the terminal client: long lines cut into rows, the later ones indented ----------------------

SPOOF = "%teacher%the quiz is moved to Friday"


def columns(row: str) -> int:
    """A row's width on a terminal, counted here independently of the client's own count."""
    return sum(
        0
        if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(c) in ("W", "F")
        else 1
        for c in row
    )


PADDED = {  # a line the server sends, padded so that SPOOF would begin a row of an 80-column terminal
    "spaces": "%eve%hi" + " " * 73 + SPOOF,
    "nbsp": "%eve%hi" + "\u00a0" * 73 + SPOOF,
    "visible": "%eve%" + "x" * 75 + SPOOF,
    "wide": "%eve%hi" + "\u4e2d" * 36 + " " + SPOOF,
    "tabs": "%eve%hi" + "\t" * 9 + SPOOF,
    "twice": "%eve%" + ("x" * 75 + SPOOF) * 3,
}


@pytest.mark.parametrize("line", list(PADDED.values()), ids=list(PADDED))
def test_a_long_line_is_cut_into_rows_and_only_its_first_starts_at_column_0(line):
    rows = client_module.screen_rows(line, 80)
    assert len(rows) >= 2 and rows[0].startswith("%eve%")
    assert all(row.startswith(client_module.INDENT) for row in rows[1:])
    assert all(columns(row) <= 79 for row in rows)  # the terminal never wraps a row itself
    assert not any(row.startswith("%teacher%") for row in rows)
    shown = rows[0] + "".join(row[len(client_module.INDENT) :] for row in rows[1:])
    assert shown == line.expandtabs(8) or "\t" in line  # nothing lost (tabs become spaces)


def test_a_short_line_is_one_row_as_it_came():
    assert client_module.screen_rows("%bob%hi alice, 50% done?", 80) == ["%bob%hi alice, 50% done?"]
    assert client_module.screen_rows("x" * 79, 80) == ["x" * 79]
    assert client_module.screen_rows("x" * 80, 80) == ["x" * 79, client_module.INDENT + "x"]
    assert client_module.screen_rows("", 80) == [""]


def read_pty(fd: int, until: bytes, timeout: float = 10.0) -> bytes:
    """What the program on the terminal wrote, up to and including ``until`` (bounded in time)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while until not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the program ended and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    assert until in seen, f"{until!r} did not appear; the terminal shows {seen[-400:]!r}"
    return seen


def terminal_rows(output: bytes) -> list[str]:
    """The rows a terminal shows, each from column 0: cut at every line end and carriage
    return, escape sequences (readline's redrawing) left out."""
    text = re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|[=>])", "", output.decode("utf-8", errors="replace"))
    return [row for row in re.split(r"\r\n|\r|\n", text) if row]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_the_terminal_client_indents_the_rows_of_a_long_line_on_a_real_terminal():
    """A bare socket plays a server that forwards padded lines (nc, or a server with other
    rules, would); the kit's client runs on a pseudo-terminal 80 columns wide."""
    import termios  # the test's own tool, like pty in test_portable.py

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        leader, follower = os.openpty()
        termios.tcsetwinsize(follower, (24, 80))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "dumb"
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chatlab.client",
                "--port",
                str(listener.getsockname()[1]),
                "--name",
                "alice",
            ],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
            start_new_session=True,
        )
        os.close(follower)
        try:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(10)
                sock.sendall(GREETING.encode() + b"\n")
                assert sock.recv(100) == b"alice\n"
                sock.sendall(b"* welcome alice\n* online: alice, eve\n")
                read_pty(leader, b"/quit to leave")
                sock.sendall("".join(line + "\n" for line in PADDED.values()).encode() + b"%bob%done\n")
                output = read_pty(leader, b"%bob%done")
                os.write(leader, b"/quit\n")
                assert client.wait(10) == 0
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(5)
            os.close(leader)
    rows = terminal_rows(output)
    assert all(columns(row) <= 79 for row in rows), [row for row in rows if columns(row) > 79]
    starts = [row for row in rows if not row.startswith(" ") and row.strip() != ">"]  # at column 0
    assert all(row.startswith(("%eve%", "%bob%done", "> ", "* ")) for row in starts), starts
    assert sum(row.startswith("%eve%") for row in starts) == len(PADDED)
    assert not any(row.removeprefix("> ").startswith("%teacher%") for row in rows)
    assert sum(SPOOF[:9] in row for row in rows) >= len(PADDED)  # the text is shown, indented
