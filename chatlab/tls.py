"""TLS as a layer without I/O: ciphertext in, plaintext out, and back.

TLS sits between the socket and the chat: what the socket reads is decrypted before the line
framer sees it, and every line the chat writes is encrypted before the socket sends it. Like
:mod:`chatlab.protocol`, this module never touches a socket. A :class:`TlsLayer` keeps the TLS
state of one connection (Python's :class:`ssl.SSLObject` between two memory buffers): the
caller hands it the bytes that arrived (:meth:`~TlsLayer.receive`) and sends the bytes it
returns. So every server model and the client use TLS the same way, whatever waits for their
sockets: a thread, a ``selectors`` loop or an asyncio loop.

Why not simply ``ssl.wrap_socket``? A wrapped socket cannot send "without waiting"
(:class:`chatlab.portable.NoWaitSender`), which the threaded server does from other
clients' threads, and one TLS connection must not be read in one thread while another thread
writes to it at the same time.
Here each operation takes the layer's lock for a moment; the I/O stays the caller's.

A TLS connection begins with a handshake: the client says hello, the server shows its
certificate, both agree on keys. Until that is done (:attr:`~TlsLayer.established`) there is
nothing to encrypt. A client that speaks plain text to a TLS server is noticed by its first
byte (a TLS record starts with a byte from 20 to 23; text never does): :class:`NotTls`.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

__all__ = ["NotTls", "TlsLayer", "TlsTransport", "client_context", "server_context"]

READ_SIZE = 65536
_TLS_RECORD_TYPES = range(20, 24)  # change_cipher_spec, alert, handshake, application_data


class NotTls(ConnectionError):
    """The other side does not speak TLS: its first bytes are not a TLS record."""

    def __init__(self, data: bytes) -> None:
        super().__init__("the other side does not speak TLS")
        self.data = data  # what it sent instead, for a clear message


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A context for a server with this certificate (PEM) and its private key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2 or later, Python's safe defaults
    context.load_cert_chain(certfile, keyfile)
    return context


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A context that verifies the server: against ``cafile`` (the CA or the server's own
    self-signed certificate, PEM) if given, else against the system's CAs."""
    return ssl.create_default_context(cafile=cafile)


class TlsLayer:
    """The TLS state of one connection, fed and drained by its caller.

    Thread safety: every method takes the layer's lock, so a reader thread may call
    :meth:`receive` while other threads call :meth:`encrypt`. Whoever sends what
    :meth:`encrypt` returns must send it in the order the calls were made (the servers hold the
    client's ``send_lock`` across both).

    Error handling: :meth:`receive` raises :class:`NotTls` if the first bytes are not TLS and
    :class:`ssl.SSLError` (e.g. :class:`ssl.SSLCertVerificationError`) if the handshake fails
    or a record is damaged; the connection is then over.
    """

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self._incoming = ssl.MemoryBIO()  # ciphertext that arrived, not yet decrypted
        self._outgoing = ssl.MemoryBIO()  # ciphertext to send, not yet taken
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._lock = threading.Lock()
        self._first = True  # no byte has arrived yet
        self.established = False  # the handshake is done

    def start(self) -> bytes:
        """The client's first bytes (its hello); a server starts by receiving."""
        with self._lock:
            self._handshake()
            return self._outgoing.read()

    def receive(self, data: bytes) -> bytes:
        """Ciphertext arrived: returns the plaintext it completes (often b"").

        During the handshake, the answers wait in :meth:`outgoing`. Once the handshake is
        done the first plaintext may arrive in the same call.
        """
        with self._lock:
            if self._first and data:
                self._first = False
                if data[0] not in _TLS_RECORD_TYPES:
                    raise NotTls(data)
            self._incoming.write(data)
            if not self.established and not self._handshake():
                return b""
            pieces = []
            while True:
                try:
                    piece = self._tls.read(READ_SIZE)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):  # all read; or closed
                    break
                if not piece:
                    break
                pieces.append(piece)
            return b"".join(pieces)

    def _handshake(self) -> bool:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False  # it waits for the other side's next message
        self.established = True
        return True

    def outgoing(self) -> bytes:
        """The ciphertext waiting to be sent (the handshake's messages), in order."""
        with self._lock:
            return self._outgoing.read()

    def encrypt(self, data: bytes) -> bytes:
        """The ciphertext to send for ``data``, after anything still waiting to be sent.

        Before the handshake is done there is no key yet, and after a TLS error the connection
        is over: then it returns b"" (nothing can be said). It never raises, because the caller
        may be another client's thread, which must not pay for this connection's trouble.
        """
        with self._lock:
            if not self.established:
                return b""
            try:
                self._tls.write(data)
            except ssl.SSLError:
                return b""  # the connection's own reader meets the error too, and ends it
            return self._outgoing.read()

    @property
    def version(self) -> str | None:
        """The TLS version agreed on, e.g. ``TLSv1.3`` (None before the handshake)."""
        return self._tls.version()


class TlsTransport:
    """A server's transport with TLS around it, as trio wraps a stream in ``SSLStream``.

    Whatever transport a server model built for a client (:class:`chatlab.room.Transport`),
    the session wraps it in this when the server speaks TLS: what the room writes is encrypted
    here, once, and the ciphertext goes to the model's own ``write``. The caller holds the
    client's ``send_lock``, which keeps the ciphertext in order.
    """

    __slots__ = ("inner", "layer")

    def __init__(self, inner: Any, layer: TlsLayer) -> None:
        self.inner = inner  # the model's transport: it moves bytes, and knows nothing of TLS
        self.layer = layer

    def write(self, data: bytes) -> bool:
        if not (data := self.layer.encrypt(data)):
            return True  # no TLS keys yet (or no more): nothing can be said to this client
        return self.inner.write(data)

    def abort(self) -> None:
        self.inner.abort()

    def registered(self, name: str) -> None:
        self.inner.registered(name)
