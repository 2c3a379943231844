"""The chat servers: one room, three ways of waiting for many sockets at once.

Every server is the room of :mod:`chatlab.room` (the chat's rules, no I/O) plus sockets plus a
concurrency model. The layout follows that sum, and each module imports only the ones above it::

    chatlab.protocol            bytes <-> lines <-> events; no I/O
    chatlab.room                who is online, who receives what; no I/O
    chatlab.servers.base        ServerBase (the listening socket, start/stop, the read-only
                                view) and ServerOptions, shared by all
    chatlab.servers.session     Session: the life of one connection, its phases and reactions
    chatlab.servers.threads         ChatServer: one thread per client, blocking calls
    chatlab.servers.selectors_loop  SelectorsChatServer: one thread, a selectors loop
    chatlab.servers.asyncio_loop    AsyncioChatServer: one thread, an asyncio event loop
    chatlab.server              the program: ``python -m chatlab.server --model NAME``

A model module holds only "how bytes move": when it reads, where a write waits, and what
wakes it. So a student tracing one message in any model reads that model's module, then
:class:`~chatlab.servers.session.Session`, then the room.
"""

from __future__ import annotations

from .asyncio_loop import AsyncioChatServer
from .base import ServerBase, ServerOptions
from .selectors_loop import SelectorsChatServer
from .session import Session
from .threads import ChatServer

__all__ = [
    "MODELS",
    "AsyncioChatServer",
    "ChatServer",
    "SelectorsChatServer",
    "ServerBase",
    "ServerOptions",
    "Session",
    "server_class",
]

MODELS: dict[str, type[ServerBase]] = {
    "threads": ChatServer,
    "selectors": SelectorsChatServer,
    "asyncio": AsyncioChatServer,
}
"""Every concurrency model by the name ``--model`` takes."""


def server_class(model: str) -> type[ServerBase]:
    """The server class of a concurrency model: ``threads``, ``selectors`` or ``asyncio``."""
    return MODELS[model]
