"""The chat room: who is connected, what each line means, and who receives what.

Every server in the kit is "sockets + a concurrency model" around one :class:`ChatRoom`. The
room does no I/O: a server hands it the complete lines of each read (:meth:`ChatRoom.handle_lines`)
and gives every client a :class:`Transport`, the one thing the room calls to send bytes. So
the rules of the chat (registration, routing, errors, notices, the event log) are written
once, and a server model only decides how bytes move: a thread per client
(:mod:`chatlab.servers.threads`), or one event loop for all of them (:mod:`chatlab.servers`).

Names are compared by their skeleton (:func:`chatlab.protocol.name_key`): ``aIice`` is refused
while ``alice`` is online, and ``%ALICE%`` or ``%a1ice%`` reaches her; everyone sees each name
as its owner typed it.

The room is thread-safe: the registry, the notices and the event log sit behind one lock,
and every write to one client is handed to its transport under that client's ``send_lock``,
so lines sent to a client by several threads arrive whole and in the order they were handed
over. Nothing here prints; it logs to the ``chatlab.server`` logger and tells subscribers of
every event.

Two things keep a big room cheap. "joined" and "left" notices wait on one
:class:`~chatlab.notices.NoticeBoard`, and every client gets all it has not seen in one write:
before anything else is sent to it, and from whichever thread announces next. So a thousand
clients leaving at once cost a few rounds of one write per client, not a million writes. And
a server hands over the lines of one read together (:meth:`ChatRoom.handle_lines`): what they
send reaches each receiver as one write.

A room can also be one part of a chat that spans several servers (:mod:`chatlab.broker`).
Then its ``elsewhere`` is set, and the room asks it only when a name is not here: to claim a
new name, to route a line to a client it does not have, to add the others to a who-list, and
to pass on broadcasts and notices; after each read it tells it to send what that read handed
over (:meth:`Elsewhere.flush`). What comes from the other servers enters through
:meth:`ChatRoom.arrived`, :meth:`ChatRoom.notice_from_elsewhere` and :meth:`ChatRoom.tell`.
With no ``elsewhere`` (one server, the usual case) none of this costs anything.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import protocol
from .notices import NoticeBoard

log = logging.getLogger("chatlab.server")

# A client's first refused lines are logged one by one; after that they are only counted
# (``ClientRecord.refused``), and the server logs the count when the client leaves.
LOGGED_REFUSALS = 5


class Transport(Protocol):
    """How bytes reach one client; each server model provides one per connection."""

    def write(self, data: bytes) -> bool:
        """Send or queue ``data`` without waiting on a slow client (the "direct" delivery of
        the threaded server is the exception, on purpose). False if the client has fallen too
        far behind: the room then drops it."""

    def abort(self) -> None:
        """Disconnect the client now; its server model then calls :meth:`ChatRoom.remove`."""

    def registered(self, name: str) -> None:
        """The client is now called ``name`` (threads are renamed after it)."""


class Elsewhere(Protocol):
    """The rest of a chat that spans several servers, as a room sees it (a Broker is one).

    Only :meth:`claim` and :meth:`flush` may wait (for Redis); the rest queue the work or
    read memory. Only :meth:`flush` calls back into the room from the calling thread.
    """

    def claim(self, name: str) -> bool | None:
        """Reserve ``name`` on every server: True if it is now this server's, False if it is
        taken, None if it cannot be checked now."""

    def joined(self, name: str) -> None:
        """A client of this room registered as ``name``: tell the other servers."""

    def left(self, name: str) -> None:
        """``name`` left this room: tell the other servers, and release the name."""

    def direct(self, sender: str, to: str, text: str) -> str | None:
        """Send to ``to``, a name this room does not have: None if it is on its way, or why
        not (the sender is told so)."""

    def broadcast(self, sender: str, text: str) -> str | None:
        """Send a broadcast to the other servers' clients: None, or what to tell the sender."""

    def names(self) -> list[str]:
        """The names online on the other servers, sorted regardless of case."""

    def flush(self) -> None:
        """The lines of one read are handled: send what they handed over. The room calls it
        holding no lock, since a line that cannot be sent is reported with :meth:`ChatRoom.tell`."""


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """Something that happened on the server, as kept in its log and sent to subscribers.

    ``kind`` is one of ``connected``, ``registered``, ``message``, ``error``, ``left``.
    ``client`` is the name (None before registration); for a message ``to`` is the receiver's
    name, or ``"*"`` for a broadcast; ``text`` is the message, the error or why a client left.
    For the error "unknown client 'zed'" or "unknown command 'dance'", ``unknown`` is that
    name or command (``zed``, ``dance``), so nobody has to read it back out of ``text``.
    """

    kind: str
    client: str | None
    address: tuple[str, int]
    to: str | None = None
    text: str = ""
    time: float = field(default_factory=time.time)
    unknown: str | None = None


@dataclass(eq=False, slots=True)  # slots: a thousand clients, a thousand records
class ClientRecord:
    """What the server keeps about one connection (the report's name, IP, port, socket).

    ``thread`` is the thread that reads this client's lines (its own, in the threaded server)
    and ``writer`` the one that writes to it, if it has one. ``messages_out`` is counted under
    the room's lock, ``bytes_out`` by whoever writes to the socket, the rest by the reader.

    ``send_lock`` is held by whoever writes to this client, for as long as the write takes. It
    is a plain lock, not a re-entrant one, on purpose: no code path of the kit takes it twice
    in one thread (the servers end a connection only after letting go of it). A subscriber
    that sent to a client from its callback could (``subscribe()`` says not to): the newcomer's
    "registered" event is told while its lock is held, so that it comes before anything sent
    to it.
    """

    ip: str
    port: int
    sock: socket.socket = field(repr=False)
    fd: int
    name: str | None = None
    connected_at: float = field(default_factory=time.time)
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)
    writer: threading.Thread | None = field(default=None, repr=False)
    # Set by the server model before the room sees the record, so the room never checks for None.
    transport: Transport = field(default=None, repr=False)  # type: ignore[assignment]
    send_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    too_slow: bool = field(default=False, repr=False)
    refused: int = field(default=0, repr=False)  # how many of its lines were refused
    malformed: int = field(default=0, repr=False)  # how many of those were not even well formed
    order: int = field(default=0, repr=False)  # 1 for the first client to register, and so on
    notices_seen: int | None = field(default=None, repr=False)  # None unless online

    @property
    def label(self) -> str:
        """The name once registered, the address before."""
        return self.name or f"{self.ip}:{self.port}"


def from_this_computer(record: ClientRecord) -> bool:
    """Whether a client connected from the server's own computer: its address is the one it
    connected to (127.0.0.1 to 127.0.0.1, or the computer's own network address to itself).
    Only such a client may take a reserved name."""
    try:
        here = record.sock.getsockname()[0]
    except OSError:  # closed meanwhile
        return False
    return record.ip == here


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    """A line from a client of another server of the chat, for :meth:`ChatRoom.arrived`:
    a direct message to ``to``, or a broadcast to every client here if ``to`` is None."""

    sender: str
    text: str
    to: str | None = None


Outgoing = dict[ClientRecord, list[bytes]]
"""What the lines of one read sent, not written yet: receiver -> its pieces, in order."""


def _not_delivered(receiver: ClientRecord) -> str:
    """What a sender is told when its line to ``receiver`` is lost because it is being dropped."""
    return f"{receiver.name} is too slow and is being disconnected; your line was not delivered"


class ChatRoom:
    """The registry of clients, the routing of their lines, and the event log."""

    def __init__(self, *, max_clients: int = 100, history: int = 1000, reserved: Iterable[str] = ()) -> None:
        self.max_clients = max_clients
        # The skeletons of the names that only a client on the server's own computer may take
        # (``--reserve teacher``): so neither may "teacher_" nor "TEACHER" from elsewhere.
        self.reserved = frozenset(protocol.name_key(name) for name in reserved)
        # Whether a transport's write may wait for its client (the threaded server's direct
        # delivery). Then every thread delivers its own notices: see _deliver_notices_soon.
        self.blocking_writes = False
        # Where one thread serves every client (the event loops), the model sets this to a
        # function that has deliver_notices() called once, at the end of the loop's turn: a
        # turn in which a hundred clients leave then costs one round of notices, not a hundred.
        self.notices_due: Callable[[], None] | None = None
        # The other servers of the chat, when it spans several (chatlab.broker); None otherwise.
        self.elsewhere: Elsewhere | None = None
        # Guards the registry (_connections, _by_name, _names, messages_out), the notices and the
        # event log: one lock, so that routing a message takes a lock once, not twice.
        self._lock = threading.Lock()
        self._connections: set[ClientRecord] = set()
        # The names online, by their skeleton (protocol.name_key): "aIice" finds alice.
        self._by_name: dict[str, ClientRecord] = {}
        # The names online, kept in order as clients come and go (bisect), so that a welcome or
        # a who-list costs no sort. A sort would also cost each client's thread a page of
        # stack for good: list.sort() keeps its work space on the thread's stack.
        self._names: list[str] = []
        # The event log holds plain tuples, the fields of a ServerEvent in order: one is made for
        # every message, and a tuple costs a tenth of a dataclass. events() turns them into
        # ServerEvents when somebody asks. The log is guarded by _lock, like the registry.
        self._events: deque[tuple] = deque(maxlen=history)
        # A tuple, replaced (never changed) by subscribe(): reading it needs no lock.
        self._subscribers: tuple[Callable[[ServerEvent], None], ...] = ()
        self._notice_board = NoticeBoard()  # "joined" and "left" lines not everyone has had (_lock)
        self._registrations = 0  # how many clients have registered so far
        self._leaving: dict[ClientRecord, int] = {}  # removed, not yet departed: its audience
        self._delivering_notices = threading.Lock()  # held by the one thread delivering notices
        # The rules of the chat: what each kind of line does (one method each, below).
        self._rules: dict[type, Callable[[ClientRecord, Any, Outgoing | None], None]] = {
            protocol.Register: self._register,
            protocol.DirectMessage: self._direct,
            protocol.Broadcast: self._broadcast,
            protocol.Command: self._command,
            protocol.Malformed: self._malformed,
        }

    # --- what a server model calls ---------------------------------------------------------

    def admit(self, record: ClientRecord) -> bool:
        """Take in a new connection; False (and nothing kept) if the room is full.

        The caller then sends the new client ``protocol.GREETING``, or, if it was refused,
        ``protocol.SERVER_FULL`` before closing the connection.
        """
        with self._lock:
            full = len(self._connections) >= self.max_clients
            if not full:
                self._connections.add(record)
        if full:
            log.warning("%s:%d refused: server full", record.ip, record.port)
            self._emit("error", record, text="server full")
            return False
        log.info("%s:%d connected", record.ip, record.port)
        self._emit("connected", record)
        return True

    def handle_lines(self, record: ClientRecord, lines: list[bytes | protocol.LineTooLong]) -> None:
        """Act on the lines of one read from ``record``'s client, in order, then deliver what
        they sent: one write per receiver. A burst of lines to bob costs one system call, not
        one each. Lines after the client was dropped (too slow) are not handled."""
        outgoing: Outgoing = {}  # what the rules send waits here until the last line is handled
        try:
            for line in lines:
                if record.too_slow:
                    break
                event = protocol.parse_line(line, registered=record.name is not None)
                self._rules[type(event)](record, event, outgoing)
        finally:
            for receiver, chunks in outgoing.items():
                dropped_before = receiver.too_slow
                self._deliver(receiver, b"".join(chunks))
                if receiver.too_slow and not dropped_before and receiver is not record:
                    self.refuse(record, _not_delivered(receiver))  # this read's lines overflowed it
            if self.elsewhere is not None:  # and what they sent to other servers' clients
                self.elsewhere.flush()

    def handle(self, record: ClientRecord, line: bytes | protocol.LineTooLong) -> None:
        """Act on one line from ``record``'s client."""
        self.handle_lines(record, [line])

    def remove(self, record: ClientRecord) -> bool:
        """Forget a connection, so nothing is routed to it any more.

        Returns whether it was online (registered): whether the others should hear it left.
        """
        with self._lock:
            self._connections.discard(record)
            record.notices_seen = None
            if record.name is None or self._by_name.get(protocol.name_key(record.name)) is not record:
                return False
            del self._by_name[protocol.name_key(record.name)]
            del self._names[bisect.bisect_left(self._names, record.name.lower(), key=str.lower)]
            self._leaving[record] = self._registrations + 1  # who saw it online: all so far
            return True

    def departed(self, record: ClientRecord, reason: str, announce: bool) -> None:
        """Log and record that a removed client left; with ``announce``, tell everyone online."""
        log.info("%s left (%s)", record.label, reason)
        self._emit("left", record, text=reason)
        with self._lock:
            audience = self._leaving.pop(record, 0)
        if audience and self.elsewhere is not None:  # the other servers hear it, also at a stop
            self.elsewhere.left(record.name)  # type: ignore[arg-type]
        if announce and audience:
            self._post_notice(audience, protocol.format_notice(f"{record.name} left"))

    def send(self, record: ClientRecord, data: bytes, outgoing: Outgoing | None = None) -> None:
        """Hand bytes to one client's transport; drop the client if it is too far behind.

        The notices it has not seen yet go first, in the same write. With ``outgoing`` (the
        lines of one read being handled), the bytes wait there for the end of the read instead.
        """
        if outgoing is not None:
            outgoing.setdefault(record, []).append(data)
        else:
            self._deliver(record, data)

    def _deliver(self, record: ClientRecord, data: bytes) -> None:
        with record.send_lock:
            if record.notices_seen is not None and record.notices_seen < self._notice_board.end:
                data = self._take_unseen_notices(record) + data
            ok = record.transport.write(data) if data else True
        if not ok:
            self._drop_slow(record)

    # --- what the other servers of the chat send (chatlab.broker calls these) ---------------

    def arrived(self, messages: list[RemoteMessage]) -> list[tuple[str, str]]:
        """Deliver lines from clients of other servers, in order: direct messages (``to`` set)
        and broadcasts (``to`` None, for everyone here). One write per receiver.
        Returns ``(sender, to)`` for every direct message whose receiver is not here (any more)."""
        outgoing: Outgoing = {}
        missing = []
        with self._lock:
            for message in messages:
                line = protocol.format_message(message.sender, message.text)
                if message.to is None:
                    receivers = list(self._by_name.values())
                else:
                    receiver = self._by_name.get(protocol.name_key(message.to))
                    if receiver is None:
                        missing.append((message.sender, message.to))
                        continue
                    receivers = [receiver]
                for receiver in receivers:
                    receiver.messages_out += 1
                    outgoing.setdefault(receiver, []).append(line)
        for receiver, chunks in outgoing.items():
            self._deliver(receiver, b"".join(chunks))
        return missing

    def notice_from_elsewhere(self, text: str) -> None:
        """Tell every client online here ``* text`` (someone joined or left another server)."""
        with self._lock:
            audience = self._registrations + 1
        self._post_notice(audience, protocol.format_notice(text))

    def tell(self, name: str, data: bytes) -> bool:
        """Send ``data`` to the client called ``name`` if it is here (an error about its line
        to another server); False if it is not."""
        with self._lock:
            record = self._by_name.get(protocol.name_key(name))
        if record is None:
            return False
        self._deliver(record, data)
        return True

    # --- what the dashboards read -------------------------------------------------------------

    def clients(self) -> list[ClientRecord]:
        """A snapshot (copies) of the registered clients' records, sorted by name."""
        with self._lock:
            records = [copy.copy(record) for record in self._by_name.values()]
        return sorted(records, key=lambda record: record.label.lower())

    def connections(self) -> list[ClientRecord]:
        """Every open connection's record (not copies), registered or not."""
        with self._lock:
            return list(self._connections)

    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def online(self) -> list[str]:
        with self._lock:
            return self._online_locked()

    def events(self) -> list[ServerEvent]:
        """The most recent events, oldest first (at most ``history`` of them)."""
        with self._lock:
            entries = list(self._events)
        return [ServerEvent(*entry) for entry in entries]

    def subscribe(self, callback: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every future event; returns a function that unsubscribes.

        The callback runs in the server thread where the event happened: keep it short, do
        not print from it (in a notebook, set a widget's value instead), and do not send to
        clients from it (it may run while a client's ``send_lock`` is held).
        """
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    # --- the rules ---------------------------------------------------------------------------------

    def _online_locked(self) -> list[str]:
        if self.elsewhere is None:
            return list(self._names)
        return list(heapq.merge(self._names, self.elsewhere.names(), key=str.lower))

    def refuse(
        self,
        record: ClientRecord,
        reason: str,
        reply: bytes | None = None,
        outgoing: Outgoing | None = None,
        *,
        unknown: str | None = None,
    ) -> None:
        """Tell a client, the log and the subscribers that something of its was refused
        (``unknown``: the unknown name or command it was refused for, see ServerEvent)."""
        record.refused += 1
        if record.refused <= LOGGED_REFUSALS:  # a flood of bad lines is no flood of log lines
            log.warning("%s:%d %s: %s", record.ip, record.port, record.name or "(no name yet)", reason)
        self._emit("error", record, text=reason, unknown=unknown)
        self.send(record, reply or protocol.format_error(reason), outgoing)

    # --- notices: "* bob joined" and "* bob left" ---------------------------------------------
    # _post_notice puts one on the board (_notice_board) and calls _deliver_notices_soon, which
    # either calls deliver_notices now or asks the model to (notices_due). deliver_notices runs
    # _catch_everyone_up, which writes to each client behind; every write to a client first
    # takes what it has not had (_take_unseen_notices).

    def _post_notice(self, audience: int, notice: bytes) -> None:
        """Post ``notice`` for every client online whose ``order`` is below ``audience``: for
        "* bob joined" those that registered before bob, for "* bob left" those that registered
        before bob left (the others never saw bob). The notice waits on the board until
        :meth:`deliver_notices`, or the next send to a client, takes it along.
        """
        with self._lock:
            self._notice_board.post(audience, notice)
        self._deliver_notices_soon()

    def _deliver_notices_soon(self) -> None:
        """Deliver the waiting notices now, or ask the model to soon (``notices_due``)."""
        if self.notices_due is not None:
            self.notices_due()
        else:
            self.deliver_notices()

    def deliver_notices(self) -> None:
        """Write the waiting notices to every client online that has not had them yet.

        Where writes never wait, one thread at a time does it for everyone (it holds the
        ``_delivering_notices`` lock) and goes round again while notices keep coming; the others
        go on at once. Where a write can wait for a client that does not read (``blocking_writes``),
        every thread delivers the notices itself, so a thread stuck on one client holds up
        only itself, not the notices of the whole room.
        """
        if self.blocking_writes:
            self._catch_everyone_up()
            return
        while len(self._notice_board) and self._delivering_notices.acquire(blocking=False):
            try:
                while self._catch_everyone_up():
                    pass
            finally:
                self._delivering_notices.release()
            # A notice added during the last round found the flag taken: look once more.

    def _catch_everyone_up(self) -> bool:
        """Bring every client online up to date; False if every one of them already was."""
        with self._lock:
            end = self._notice_board.end
            seen = {r: r.notices_seen for r in self._by_name.values() if r.notices_seen is not None}
            behind = [r for r, count in seen.items() if count < end]
            self._notice_board.forget_before(min(seen.values(), default=end))
        for record in behind:
            self._deliver(record, b"")
        return bool(behind)

    def _take_unseen_notices(self, record: ClientRecord) -> bytes:
        """The notices ``record`` has not been sent yet, marked as sent (under its send_lock)."""
        with self._lock:
            if record.notices_seen is None:
                return b""
            unseen = self._notice_board.since(record.notices_seen, record.order)
            record.notices_seen = self._notice_board.end
        return unseen

    def _malformed(self, record: ClientRecord, event: protocol.Malformed, outgoing: Outgoing | None) -> None:
        record.malformed += 1  # its session ends a connection that sends too many
        self.refuse(record, event.reason, outgoing=outgoing)

    def _drop_slow(self, record: ClientRecord) -> None:
        record.too_slow = True
        log.warning("%s is too far behind; disconnecting it", record.label)
        self._emit("error", record, text="too slow: disconnected")
        record.transport.abort()

    def _register(self, record: ClientRecord, event: protocol.Register, outgoing: Outgoing | None) -> None:
        name = event.name
        key = protocol.name_key(name)  # its skeleton: look-alikes share it
        if key in self.reserved and not from_this_computer(record):
            self.refuse(record, f"name {name!r} is reserved", outgoing=outgoing)
            return
        if self.elsewhere is not None and not self._claim_elsewhere(record, name, outgoing):
            return
        # Holding the client's send lock from before others can find it until its welcome is
        # out means that whatever they send it comes after the welcome, never before. The
        # registry lock is not held while writing: in direct mode a client that does not read
        # would block the write, and with it every thread of the server.
        with record.send_lock:
            with self._lock:
                holder = self._by_name.get(key)
                taken_by = None if holder is None else holder.name
                if taken_by is None:
                    record.name = name
                    self._by_name[key] = record
                    bisect.insort(self._names, name, key=str.lower)
                    welcome = protocol.format_welcome(name, self._online_locked())
                    self._registrations += 1
                    record.order = self._registrations
                    record.notices_seen = self._notice_board.end  # older notices are not news to it
            if taken_by is None:
                record.transport.registered(name)  # renamed first: the client never sees old names
                log.info("%s:%d is %s", record.ip, record.port, name)
                self._emit("registered", record)
                # Its "joined" notice (for those who came before it) is queued before its welcome
                # goes out: once it is welcomed, the others hear of it before anything it says.
                with self._lock:
                    self._notice_board.post(record.order, protocol.format_notice(f"{name} joined"))
                # Replies to its earlier lines of the same read (a refused name, say) go first.
                earlier = b"".join(outgoing.pop(record, [])) if outgoing else b""
                welcomed = record.transport.write(earlier + welcome)
        if taken_by is not None:
            self._refuse_taken(record, name, taken_by, outgoing)
            return
        if self.elsewhere is not None:  # before anything it says: the others hear of it first
            self.elsewhere.joined(name)
        if not welcomed:
            self._drop_slow(record)
        self._deliver_notices_soon()

    def _refuse_taken(self, record: ClientRecord, name: str, holder: str, outgoing: Outgoing | None) -> None:
        """Tell a client that ``name`` is taken by ``holder``: the same name in another case
        gets the plain ``! name taken``, a look-alike is told which name it looks like."""
        if name.lower() == holder.lower():
            self.refuse(record, "name taken", protocol.NAME_TAKEN, outgoing)
        else:
            self.refuse(record, f"name taken: {name!r} looks like {holder!r}", outgoing=outgoing)

    def _claim_elsewhere(self, record: ClientRecord, name: str, outgoing: Outgoing | None) -> bool:
        """Claim ``name`` on every server before taking it here; False if refused (and said so).
        A name already taken here is left to the usual check (it is already ours elsewhere).
        Redis keeps one key per lower-case name; a look-alike of a name online on another
        server is refused here, as far as this server's copy of their names is current."""
        key = protocol.name_key(name)
        with self._lock:
            if key in self._by_name:
                return True
        for other in self.elsewhere.names():  # type: ignore[union-attr]
            if protocol.name_key(other) == key and other.lower() != name.lower():
                self._refuse_taken(record, name, other, outgoing)
                return False
        claimed = self.elsewhere.claim(name)  # type: ignore[union-attr]
        if claimed:
            return True
        if claimed is None:
            self.refuse(
                record,
                "cannot check names now: the other servers are unreachable; try again",
                outgoing=outgoing,
            )
        else:
            self.refuse(record, "name taken (on another server)", protocol.NAME_TAKEN, outgoing)
        return False

    def _direct(self, record: ClientRecord, event: protocol.DirectMessage, outgoing: Outgoing | None) -> None:
        to, text = event.to, event.text
        with self._lock:
            target = self._by_name.get(protocol.name_key(to))
            if target is not None and not target.too_slow:
                target.messages_out += 1
                logged = self._log_event("message", record, target.name, text)
        if target is not None and target.too_slow:  # being dropped: the line would be lost
            self.refuse(record, _not_delivered(target), outgoing=outgoing)
            return
        if target is None:
            if self.elsewhere is not None:
                self._direct_elsewhere(record, to, text, outgoing)
                return
            reply = protocol.format_unknown_client(to)
            self.refuse(record, f"unknown client {to!r}", reply, outgoing, unknown=to)
            return
        record.messages_in += 1
        log.info("%s -> %s: %r", record.name, target.name, text)
        self._tell_subscribers(logged)
        self.send(target, protocol.format_message(record.name, text), outgoing)  # type: ignore[arg-type]

    def _broadcast(self, record: ClientRecord, event: protocol.Broadcast, outgoing: Outgoing | None) -> None:
        text = event.text
        with self._lock:
            others = [r for r in self._by_name.values() if r is not record]
            for other in others:
                other.messages_out += 1
            logged = self._log_event("message", record, "*", text)
        record.messages_in += 1
        log.info("%s -> *: %r", record.name, text)
        self._tell_subscribers(logged)
        line = protocol.format_message(record.name, text)  # type: ignore[arg-type]
        for other in others:
            self.send(other, line, outgoing)
        if self.elsewhere is not None:
            problem = self.elsewhere.broadcast(record.name, text)  # type: ignore[arg-type]
            if problem is not None:
                self.refuse(record, problem, outgoing=outgoing)

    def _direct_elsewhere(self, record: ClientRecord, to: str, text: str, outgoing: Outgoing | None) -> None:
        """A line for a name that is not here: the other servers may have it."""
        problem = self.elsewhere.direct(record.name, to, text)  # type: ignore[union-attr, arg-type]
        if problem is not None:
            self.refuse(record, problem, outgoing=outgoing)
            return
        record.messages_in += 1
        log.info("%s -> %s (elsewhere): %r", record.name, to, text)
        self._emit("message", record, to=to, text=text)

    def _command(self, record: ClientRecord, event: protocol.Command, outgoing: Outgoing | None) -> None:
        command = event.name
        if command == "who":
            self.send(record, protocol.format_online(self.online()), outgoing)
        elif command == "help":
            self.send(record, protocol.HELP, outgoing)
        else:
            self.refuse(
                record,
                f"unknown command {command!r}",
                protocol.format_unknown_command(command),
                outgoing,
                unknown=command,
            )

    def _emit(
        self,
        kind: str,
        record: ClientRecord,
        *,
        to: str | None = None,
        text: str = "",
        unknown: str | None = None,
    ) -> None:
        """Log an event and tell the subscribers."""
        with self._lock:
            event = self._log_event(kind, record, to, text, unknown)
        self._tell_subscribers(event)

    def _log_event(
        self, kind: str, record: ClientRecord, to: str | None, text: str, unknown: str | None = None
    ) -> tuple:
        """Add an event to the log (with ``_lock`` held); returns it, as a tuple."""
        event = (kind, record.name, (record.ip, record.port), to, text, time.time(), unknown)
        self._events.append(event)
        return event

    def _tell_subscribers(self, event: tuple) -> None:
        subscribers = self._subscribers
        if not subscribers:  # the usual case: nobody is watching, so no ServerEvent is made
            return
        server_event = ServerEvent(*event)
        for callback in subscribers:
            try:
                callback(server_event)
            except Exception:
                log.exception("event subscriber %r failed", callback)
