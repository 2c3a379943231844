"""What differs between Linux, macOS and Windows (chatlab/portable.py), each branch run here.

CI runs on Linux. The branch a Linux machine takes is run as it is; the Windows branch is run
with the platform faked (the name that tells the branches apart added or taken away), on real
sockets. tests/windows_standin runs the kit's own suites with every POSIX-only name taken away
(test_windows_standin.py); these tests pin down each branch on its own.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from transcript import Peer, wait_until

from chatlab import portable
from chatlab.servers import ChatServer

STANDIN = Path(__file__).resolve().parent / "windows_standin"


@pytest.fixture
def windows_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Windows: no ``MSG_DONTWAIT``, so readers of a socket that is sent to without
    waiting wait with a timeout (``UNTIMED``)."""
    from chatlab.servers import threads

    monkeypatch.setattr(portable, "_DONTWAIT", None)
    monkeypatch.setattr(threads, "UNTIMED", 3600.0)


def full_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair whose writing end's buffers are full: the reader never reads."""
    writer, reader = socket.socketpair()
    writer.setblocking(False)
    try:
        for _ in range(100_000):  # bounded: a few megabytes at the most
            writer.send(b"x" * 65536)
    except BlockingIOError:
        pass
    writer.setblocking(True)
    return writer, reader


def sends_without_waiting(writer: socket.socket) -> None:
    """A NoWaitSender on ``writer`` sends, and returns at once when the receiver does not read."""
    reader_end = socket.socketpair()
    with reader_end[0], reader_end[1]:
        sender = portable.NoWaitSender(reader_end[0])
        assert sender.send(b"hello\n") == 6
        assert reader_end[1].recv(100) == b"hello\n"
        sender.close()
    sender = portable.NoWaitSender(writer)
    done = threading.Event()
    sent: list[int] = []

    def send() -> None:
        sent.append(sender.send(b"y" * 1000))
        done.set()

    thread = threading.Thread(target=send)
    thread.start()
    assert done.wait(5.0), "the sender waited for a receiver that does not read"
    thread.join()
    assert sent == [0]
    sender.close()


def test_a_nowait_sender_sends_what_fits_and_returns_at_once_when_full() -> None:
    writer, reader = full_pair()
    with writer, reader:
        sends_without_waiting(writer)


def test_without_msg_dontwait_a_second_socket_object_sends_without_waiting(windows_send: None) -> None:
    """Windows' way: a non-blocking duplicate sends; the socket's own object, which a reader
    uses with a timeout, keeps working, and closing the sender leaves the connection open."""
    writer, reader = full_pair()
    with writer, reader:
        writer.settimeout(3600.0)  # as the threaded server's reader does (UNTIMED)
        sends_without_waiting(writer)
        reader.setblocking(False)
        drained = 0
        try:
            while drained < 64 << 20:  # bounded
                drained += len(reader.recv(1 << 20))
        except BlockingIOError:
            pass
        writer.sendall(b"still open\n")  # the duplicate is closed; the connection is not
        reader.settimeout(5.0)
        assert reader.recv(100).endswith(b"still open\n")


def test_the_threaded_server_delivers_and_never_waits_for_a_slow_reader_without_msg_dontwait(
    windows_send: None,
) -> None:
    """Alice's lines reach bob in order; carol, who never reads, neither stops alice nor keeps
    her name; a writer thread starts for carol only, as on Linux."""
    server = ChatServer(port=0, max_backlog=64 * 1024).start()
    try:
        alice, bob = Peer(server.address), Peer(server.address)
        carol = Peer(server.address, rcvbuf=4096)
        for peer, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            peer.register(name)
        alice.read_until(lambda line: "carol joined" in line)
        bob.read_until(lambda line: "carol joined" in line)
        for i in range(200):
            alice.send(f"%bob%line {i}")
        assert [bob.read_line() for _ in range(200)] == [f"%alice%line {i}" for i in range(200)]
        assert not [t.name for t in server.threads() if "writer" in t.name]  # bob keeps up
        text = "z" * 1000
        started = time.monotonic()
        for _ in range(300):  # 300 kB to carol, who reads nothing: far more than her backlog
            alice.send(f"%carol%{text}")
        alice.send("%bob%still here")
        heard = bob.read_until("%alice%still here")
        assert time.monotonic() - started < 10.0
        if "* carol left" not in heard:  # carol is dropped as too slow, before or after
            bob.read_until("* carol left")
        wait_until(lambda: "carol" not in server.room.online(), timeout=5.0)
        for peer in (alice, bob, carol):
            peer.close()
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("chatlab-")]


def test_make_listener_refuses_a_second_server_and_lets_a_restarted_one_bind() -> None:
    first = portable.make_listener("127.0.0.1", 0)
    port = first.getsockname()[1]
    with pytest.raises(OSError):  # Address already in use
        portable.make_listener("127.0.0.1", port).close()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = first.accept()
    accepted.close()  # the server closes first: its side waits in TIME_WAIT
    client.close()
    first.close()
    again = portable.make_listener("127.0.0.1", port)  # SO_REUSEADDR: no "Address already in use"
    again.close()


def test_make_listener_on_windows_leaves_so_reuseaddr_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows (told apart by SO_EXCLUSIVEADDRUSE) must not get SO_REUSEADDR: there it would let
    a second server take the port."""
    monkeypatch.setattr(socket, "SO_EXCLUSIVEADDRUSE", -5, raising=False)
    listener = portable.make_listener("127.0.0.1", 0)
    with listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
    monkeypatch.delattr(socket, "SO_EXCLUSIVEADDRUSE")
    with portable.make_listener("127.0.0.1", 0) as listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0


def test_wake_accept_wakes_a_thread_blocked_in_accept_without_shutdown() -> None:
    """macOS and Windows: shutdown() of the listener does not wake accept(); a connection does."""
    listener = portable.make_listener("127.0.0.1", 0)
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    thread.start()
    time.sleep(0.05)  # let it block in accept() (if it has not, wake_accept's connection waits for it)
    portable.wake_accept(listener)
    thread.join(5.0)
    assert not thread.is_alive()
    accepted[0].close()
    listener.close()
    portable.wake_accept(listener)  # closed: nothing to wake, no error


def test_wake_accept_reaches_a_listener_on_every_interface() -> None:
    listener = portable.make_listener("0.0.0.0", 0)
    with listener:
        thread = threading.Thread(target=lambda: listener.accept()[0].close())
        thread.start()
        portable.wake_accept(listener)
        thread.join(5.0)
        assert not thread.is_alive()


def test_the_threaded_server_stops_when_shutdown_does_not_wake_accept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on macOS and Windows: the server's stop() still ends its accept thread at once."""
    from chatlab.servers import threads

    def shutdown_as_on_macos(sock: socket.socket) -> None:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):  # a listener: no wake-up
            real_shutdown(sock)

    real_shutdown = threads.shutdown
    monkeypatch.setattr(threads, "shutdown", shutdown_as_on_macos)
    server = ChatServer(port=0).start()
    peer = Peer(server.address)
    peer.register("alice")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3.0
    assert not [t for t in threading.enumerate() if t.name.startswith("chatlab-")]
    peer.close()


STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True);"
    " time.sleep(60)"
)


def test_stop_process_asks_then_makes_a_program_stop() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert portable.stop_process(polite, timeout=5.0) is not None
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert portable.stop_process(stubborn, timeout=0.5) == -9  # SIGTERM ignored: killed
    assert time.monotonic() - started < 5.0
    stubborn.stdout.close()
    at_once = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.DEVNULL)
    assert portable.stop_process(at_once, timeout=5.0, kill=True) == -9
    assert portable.stop_process(at_once) == -9  # already ended: just its status


def standin_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(STANDIN), env.get("PYTHONPATH", "")]))
    return env


def test_the_standin_takes_the_posix_names_away_from_the_kit_only() -> None:
    """The kit's code sees no MSG_DONTWAIT, SIGKILL, killpg, fcntl or readline; the standard
    library keeps them (subprocess's kill() needs SIGKILL on Linux)."""
    script = (
        "import socket, signal, subprocess, chatlab.portable as p\n"
        "assert not p.CAN_SEND_WITHOUT_WAITING\n"
        "assert not hasattr(socket, 'MSG_DONTWAIT') and not hasattr(signal, 'SIGKILL')\n"
        "for module in ('fcntl', 'resource', 'readline'):\n"
        "    try:\n"
        "        exec('import ' + module)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(module + ' imported')\n"
        "child = subprocess.Popen(['sleep', '30']); child.kill(); child.wait()\n"
        "from chatlab.addresses import interface_addresses; interface_addresses()\n"
        "print('windows stand-in ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=standin_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "windows stand-in ok\n"


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal to be interactive")
def test_the_terminal_client_chats_without_readline(server: ChatServer) -> None:
    """Windows has no readline: the interactive client still shows what arrives and sends
    what is typed."""
    import pty  # the test's own tool, not the kit's

    bob = Peer(server.address)
    bob.register("bob")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the client, under the stand-in, on a terminal
        os.execve(
            sys.executable,
            [sys.executable, "-m", "chatlab.client", "--port", str(server.port), "--name", "alice"],
            standin_env(),
        )
    try:
        bob.read_until(lambda line: "alice joined" in line)
        os.write(fd, b"%bob%hi from a terminal\n")
        assert bob.read_line() == "%alice%hi from a terminal"
        bob.send("%alice%hello back")
        seen = b""
        deadline = time.monotonic() + 10.0
        while b"hello back" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        assert b"bob" in seen and b"hello back" in seen, seen
        assert b"\x1b[K" not in seen  # no readline: no redrawing of the typed line
        os.write(fd, b"/quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        pid = 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
        bob.close()


@pytest.mark.skipif(
    os.environ.get("CHATLAB_WINDOWS_STANDIN") != "1",
    reason="runs under the Windows stand-in only (test_windows_standin.py)",
)
def test_this_run_is_under_the_windows_standin() -> None:
    """When test_windows_standin.py runs this file, the kit really sees no MSG_DONTWAIT: the
    other tests here, and the suites run beside it, take the Windows branches."""
    assert not portable.CAN_SEND_WITHOUT_WAITING
