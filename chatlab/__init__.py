"""chatlab: a teaching kit for socket programming and multithreading.

``chatlab.protocol`` is the line protocol (no I/O), ``chatlab.server`` the threaded server,
``chatlab.client`` the client. The notebook parts, ``chatlab.widgets`` and ``chatlab.viz``,
need the ``lessons`` extra (ipywidgets, matplotlib) and are imported on their own.
"""

from .client import ChatClient, ChatError, ConnectionClosed, NameRefused, ServerFull
from .server import ChatServer, ClientRecord, ServerEvent

__all__ = [
    "ChatClient", "ChatError", "ConnectionClosed", "NameRefused", "ServerFull",
    "ChatServer", "ClientRecord", "ServerEvent",
]
__version__ = "0.1.0"

import logging as _logging

# A library logs; the program decides whether anything is shown (see the CLIs).
_logging.getLogger("chatlab").addHandler(_logging.NullHandler())
