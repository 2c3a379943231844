"""chatlab: a teaching kit for socket programming and multithreading.

``chatlab.protocol`` is the line protocol and ``chatlab.room`` the chat's rules (neither does
I/O); ``chatlab.servers`` holds the servers (``ChatServer``, one thread per client, and two
models that serve the same room from one event loop), ``chatlab.server`` is the server
program and ``chatlab.client`` the client. The notebook parts, ``chatlab.widgets`` and ``chatlab.viz``,
need the ``lessons`` extra (ipywidgets, matplotlib) and are imported on their own.
"""

import importlib
import logging
import threading

__version__ = "0.1.0"

# A library logs; the program decides whether anything is shown (see the CLIs).
logging.getLogger("chatlab").addHandler(logging.NullHandler())

_EXPORTS = {
    "ChatServer": "servers",
    "ServerBase": "servers",
    "ClientRecord": "room",
    "ServerEvent": "room",
    "ChatClient": "client",
    "ChatError": "client",
    "ConnectionClosed": "client",
    "ConnectionReset": "client",
    "FaultyLink": "faults",
    "NameRefused": "client",
    "ServerFull": "client",
    "CodeRefused": "client",
    "TlsFailed": "client",
}
__all__ = [*_EXPORTS, "kit_threads"]


def kit_threads() -> list[str]:
    """The names of the kit's threads alive now (they all start with "chatlab"), sorted.

    Lessons and tests list these instead of every thread: a Jupyter kernel or pytest runs
    threads of its own, and which ones differs from one runner to the next.
    """
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("chatlab"))


def __getattr__(name: str) -> object:
    # Imported on first use: `import chatlab` stays quick, and loads no server it does not need.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'chatlab' has no attribute {name!r}")
