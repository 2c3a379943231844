"""Many servers, one chat: chatlab servers that share their clients through Redis.

One chatlab process holds thousands of clients, but real chat systems run many server
processes, and then "alice is on server one, bob on server two: how does her line reach him?"
needs an answer. Ours is a broker in the middle that every server talks to, Redis (or Valkey,
its open-source fork), and this module is all the code that talks to it::

    alice --- server one ---\\                      /--- server two --- bob
                             >---- Redis (broker) --<
    carol --- server one ---/  names, heartbeats,   \\--- server two --- dave
                               one inbox per server

The room (:mod:`chatlab.room`) keeps the chat's rules and knows nothing of Redis: when a name
is not here it asks its :class:`~chatlab.room.Elsewhere`, which is a :class:`Broker`. What
Redis holds, every key under ``chatlab:``:

``server:<id>`` (a string with a time to live)
    "server <id> is alive". Every server rewrites its own key each ``heartbeat`` (1 s) with a
    time to live of five heartbeats. A server killed without warning stops doing that, its key
    expires, and the others, which look for live servers at every heartbeat, announce its
    clients as left. Nobody has to tell them: silence is the signal.
``name:<lower-case name>`` (a string with a time to live, holding the server's id)
    Names are unique across all servers, regardless of case. A server claims a name with one
    atomic ``SET key id NX PX ttl``: of two servers that try at once, Redis lets exactly one
    win. The owner refreshes it with its heartbeat and deletes it when the client leaves (only
    if it is still its own: a small Lua script compares and deletes in one step). A crashed
    server's names expire with it, or are deleted by the first server to notice the crash,
    and can be taken again.
``left:<lower-case name>`` (a string with a time to live, holding the server's id)
    "This name was released by that server a moment ago". The others check a "joined" against
    the name's key, or this one: a client that came and went at once was real.
``settling`` (a string with a time to live, only after a restart of Redis)
    "Servers are re-claiming their clients' names: new claims wait". The first server to find
    its own key gone writes it, for a name's time to live plus a second; see "Failures".
``read:<id>`` (a string with a time to live)
    The id of the last inbox entry server <id> has delivered, written with every heartbeat.
    When a server dies, the others compare it with the dead server's inbox: a direct message
    their own clients sent after it may never have arrived, and its sender is told so.
``inbox:<id>`` (a Redis Stream)
    Lines for clients of server <id>: direct messages, broadcasts, "joined" and "left". A
    sender appends (``XADD``); the receiving server alone reads (``XREAD BLOCK``) from the
    last entry id it has seen. A stream is a log: an entry stays after it is read, so a server
    that lost its connection to Redis for a moment reads on from where it was and loses
    nothing, and since each server appends from one queue, one thread at a time, and one
    thread reads in order, the lines from one sender to one receiver arrive in order, at most
    once; a possible loss is reported. (A line can be lost: a trimmed inbox loses its oldest
    entries, a restarted Redis has forgotten its streams, a crashed server never read the end
    of its inbox. Where the kit can know, the sender is told: see "Failures" below.) Redis
    pub/sub would be simpler but is at-most-once without a word: a subscriber that is
    reconnecting misses what was published meanwhile, and Redis cuts off a subscriber that
    reads too slowly (``client-output-buffer-limit pubsub``), silently for everyone else. A
    stream instead grows while its reader is slow, so every ``XADD`` trims it (``MAXLEN ~
    inbox_limit``): a stuck server loses its oldest lines instead of filling Redis's memory.
    (The limit counts entries; one entry carries the lines of a busy moment, at most ``BATCH``
    of them.)

Who is where is not asked of Redis for every line: each server keeps a copy. When a server
first sees another one (or sees them all again after an outage), it sends it a snapshot, the
names of all its clients, and from then on its "joined" and "left" lines, through the same
inbox and so in order, keep that copy current. A server sees another when its heartbeat finds
the other's key, or as soon as a line from it arrives: a server that writes to us is alive. A
server that starts sends its snapshot to the others before it takes its first client, so they
hear of it, and send it what goes to everyone, before they can hear of any client of it. So
``%server%who`` and the routing of a line cost no trip to Redis; only a name that is in no copy
(it joined a moment ago) is looked up.

The broker is three parts, each in a module of its own: who is where is plain data, a
:class:`~chatlab.directory.Directory` (no Redis, no threads: it is tested on its own); what
goes out waits in a :class:`~chatlab.sendqueue.SendQueue`, which decides which thread sends
it; and this module does the talking to Redis, with the threads that read and keep the keys.

Only the threaded server (``ChatServer``, with its default queue delivery) uses a broker: the
broker's threads write to clients, and its writes never wait for a slow client. The event-loop
models refuse ``redis=`` with a clear error.

The path of one line, alice (server one) to bob (server two): alice's thread on server one
reads her line, the room finds no bob here and hands it to :meth:`Broker.direct`, which puts it
in the broker's queue. Once the room has handled all the lines of that read it calls
:meth:`Broker.flush`, and if nothing else is queued or being sent, alice's own thread appends
them to server two's inbox (``XADD``, inside a small script) and waits for Redis's answer.
Server two's ``chatlab-broker-read`` thread, waiting in ``XREAD BLOCK`` on that inbox, gets the
entry and hands it to the room, which writes it to bob's socket. So a line wakes one thread
on its way (the reader), not two, and every thread switch costs time, more so on a busy
machine.

Three threads per server do the rest of the talking: ``chatlab-broker-send`` appends what is
queued while a send is already under way (a client's thread never waits behind another's
lines: it leaves them to this thread), and the "joined" and "left" notices and snapshots, as
few ``XADD`` s as possible (the lines of a busy moment for one server go in one entry);
``chatlab-broker-read`` waits on the inbox and hands what arrives to the room;
``chatlab-broker-heartbeat`` keeps the keys alive and watches the other servers come and go.
Only one thread appends at a time, taking from the front of the queue, so the queue's order
is the order in Redis. A client's thread waits for Redis only to claim its name, and to
append what is queued (its own lines and any queued before them) when nobody else is sending.
The appending and the reading each use a connection of their own, directly (``send_command``,
``read_response``): the same ``XADD`` through redis-py's client (its pool, retries and
bookkeeping) cost three times the CPU (0.12 ms against 0.04 ms on the machine the kit was built
on; a pipeline object 0.25 ms).

Failures, and what a client sees. A line for a client that is on no server gets
``! unknown client 'zed'``, as on one server. A line for a client whose server is down, or
sent while Redis itself is unreachable, gets ``! cannot reach 'bob' ...``: never silence.
Meanwhile the clients of one server go on chatting among themselves, and a new name cannot be
checked, so a registration is refused (``! cannot check names now ...``): unique names come
before availability. The server logs the outage once, retries with a growing pause (at most
one second), and once Redis answers again it re-claims its clients' names and its key (a
restarted Redis has forgotten everything) and tells every other server who is on it. Until
every server has had the time to do that, new names wait (the ``settling`` key): a name goes
back to the client that had it, and a newcomer who wants it hears ``! name taken``. (Should a
server come back later still, and find one of its names taken, the later claimer is its own
client: it hears ``! name taken`` and is disconnected.) A line that a server refuses to take
(its key is missing: it is dead, or not back yet) is reported to its sender: ``! cannot reach
'bob' ...`` for a direct message, ``! not everyone got your line ...`` for a broadcast. Lines
that were in Redis when it died are gone with it (it is a broker, not a database: nothing is
saved to disk). A server that crashes cannot say which lines it never delivered: for a few
seconds its key lives on and lines still go to its inbox. So when the others notice it is gone,
each one reads what is left in its inbox after the last entry it said it had delivered, and
tells its own clients which of their direct messages may not have arrived
(``! 'bob' may not have got your line "...": their server stopped answering``). That comes
late, within about the time it takes to notice the crash, but it comes: no silence. (The last
heartbeat's worth of lines may have arrived after all, hence "may".)

Who else writes to Redis? Nobody should: a Redis that a student can reach without a password
lets them append to an inbox, or delete the name keys. So the reader checks every entry
before a client sees anything of it (see :meth:`Broker._entry`): it must come from a live
server of this chat, its names must be names and its texts safe by the protocol's own checks,
a message must come from a client of the server it names, and a "joined" or a snapshot may
name only clients whose names that server holds. The rest is dropped, and logged (the first
few, then a count per heartbeat). That stops fake names and unsafe bytes; it cannot stop
someone with access to Redis from speaking as a client who is online. The README says how to
keep Redis to the servers: a password, or the instructor's laptop only.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import ConnectionInterface
from redis.retry import Retry

from . import protocol
from .directory import Directory
from .room import RemoteMessage
from .sendqueue import SendQueue

if TYPE_CHECKING:
    from .room import ChatRoom

__all__ = ["Broker", "Line", "PREFIX", "without_password"]

log = logging.getLogger("chatlab.server")

PREFIX = "chatlab:"
HEARTBEAT = 1.0  # seconds between two heartbeats
TTL_HEARTBEATS = 5  # a key lives this many heartbeats unless refreshed
INBOX_LIMIT = 10_000  # entries an inbox keeps (about: MAXLEN ~ trims whole blocks)
BATCH = 500  # lines at most in one stream entry
READ_BLOCK_MS = 200  # how long one XREAD waits: also how soon the reader notices stop()
MAX_BACKOFF = 1.0  # the longest pause between two tries while Redis is unreachable
CLAIM_POLL = 0.05  # seconds between two tries of a claim that must wait (see CLAIM)
LOGGED_DROPS = 5  # inbox lines refused that are logged one by one; then a count per heartbeat

# "Append to the inbox of a live server": the check and the XADD happen in one step in Redis,
# so a line is never appended to the inbox of a server known to be dead.
SEND_IF_ALIVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'from', ARGV[2], 'lines', ARGV[3])
return 1
"""
# "Claim this name": not while Redis has forgotten this server (a restarted Redis: its heartbeat
# re-claims its clients' names first), nor while the servers are re-claiming theirs (-1: wait).
CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# The heartbeat's "I am alive". If the key was gone (Redis restarted, or this server was away
# longer than its time to live), the others may be re-claiming names too: new claims wait a
# while (the "settling" key), so that every name goes back to its old owner first.
KEEP_ALIVE = """
local fresh = redis.call('EXISTS', KEYS[1]) == 0
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if fresh then redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) end
return fresh and 1 or 0
"""
# "Delete this name if it is still mine": nobody else's claim is ever deleted. It leaves a note
# for a while (KEYS[2], "left:<name>"): the others may still be reading the lines of a short
# visit, and they check a "joined" against Redis (see Broker._owners).
RELEASE_IF_MINE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""
# The heartbeat's name refresh: extend my names, re-claim those a restarted Redis forgot,
# and report (0) a name somebody else holds now.
REFRESH_NAMES = """
local result = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]); result[i] = 1
  elseif not owner then redis.call('SET', key, ARGV[1], 'PX', ARGV[2]); result[i] = 2
  else result[i] = 0 end
end
return result
"""


# The kinds of Line, one letter each on the wire (a busy inbox entry carries hundreds of lines).
DIRECT = "m"  # a direct message, ``sender`` to ``to``
BROADCAST = "b"  # a broadcast from ``sender``
JOINED = "j"  # ``sender`` joined the sending server
LEFT = "l"  # ``sender`` left it
SNAPSHOT = "s"  # ``text``: every name on the sending server, comma-separated
ERROR = "e"  # ``sender``'s line to ``to`` found nobody there (``text`` says so)
KINDS = frozenset({DIRECT, BROADCAST, JOINED, LEFT, SNAPSHOT, ERROR})


@dataclass(frozen=True, slots=True)
class Line:
    """One thing for another server's clients, as it travels in an inbox entry.

    ``kind`` is one of the six above (:data:`DIRECT`, :data:`BROADCAST`, :data:`JOINED`,
    :data:`LEFT`, :data:`SNAPSHOT`, :data:`ERROR`); the room never sees these letters.
    """

    kind: str
    sender: str
    to: str = ""
    text: str = ""


def pack(lines: list[Line]) -> str:
    """Lines to one stream field. Names and texts never hold a NUL or a newline (the protocol
    refuses control characters), so those two separate the fields and the lines."""
    return "\n".join(f"{line.kind}\0{line.sender}\0{line.to}\0{line.text}" for line in lines)


def unpack(data: str) -> list[Line]:
    """A stream field back to its lines; ValueError if a chatlab server did not write it."""
    lines = []
    for piece in data.split("\n"):
        fields = piece.split("\0", 3)
        if len(fields) != 4 or fields[0] not in KINDS:
            raise ValueError(f"not a line: {_shown(piece)}")
        lines.append(Line(*fields))
    return lines


def _shown(text: str, limit: int = 60) -> str:
    """``text`` for a log line: quoted, escaped and cut short (it may come from anyone)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def without_password(url: str) -> str:
    """``url`` fit for a log line: ``redis://:PASSWORD@host:6379/0`` becomes ``redis://:***@host:6379/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{parts.netloc.rpartition('@')[2]}"))


def _pipeline(connection: ConnectionInterface, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``commands`` on our own ``connection``: all written at once, then every answer read.
    ``EVAL`` with the script's text, not ``EVALSHA``: Redis keeps the compiled script anyway,
    and a restarted Redis, which has forgotten every script, needs no second try."""
    try:  # an idle connection with something to read was closed by Redis (it restarted, say)
        stale = connection.can_read()
    except (redis.ConnectionError, OSError):
        stale = True
    if stale:
        connection.disconnect()  # the command below connects afresh
    connection.send_packed_command(connection.pack_commands(commands))
    try:
        return [connection.read_response() for _ in commands]
    except redis.ResponseError:  # an error answer: the answers after it are still unread
        connection.disconnect()
        raise


class Broker:
    """The link from one server's room to the other servers of the chat, through Redis.

    Resource handling: :meth:`start` connects (ConnectionError if Redis does not answer),
    claims the server's id and starts the three ``chatlab-broker-...`` threads; :meth:`stop`
    sends what is still queued, deletes this server's keys and joins the threads, bounded.
    The room calls :meth:`claim` (in the registering client's thread: it asks Redis),
    :meth:`direct`, :meth:`broadcast`, :meth:`joined`, :meth:`left`, :meth:`names` (which
    only queue or read memory), and :meth:`flush` after each read (which may append).

    Who is where is a :class:`~chatlab.directory.Directory` (plain data, behind ``_lock``);
    what goes out waits in a :class:`~chatlab.sendqueue.SendQueue`; this class does the
    talking to Redis.
    """

    def __init__(
        self,
        room: ChatRoom,
        url: str,
        server_id: str,
        *,
        address: str = "",
        heartbeat: float = HEARTBEAT,
        inbox_limit: int = INBOX_LIMIT,
    ) -> None:
        self.room = room
        self.url = url
        self.server_id = server_id
        self.address = address
        self.heartbeat = heartbeat
        self.ttl_ms = int(heartbeat * TTL_HEARTBEATS * 1000)
        # After a restart of Redis, how long new claims wait for every server to re-claim its
        # clients' names: a name's time to live (a server that has not come back by then would
        # have lost its names anyway), plus the longest pause between two tries to reach Redis.
        self.grace_ms = self.ttl_ms + int(MAX_BACKOFF * 1000)
        self.inbox_limit = inbox_limit
        self.reachable = True  # whether Redis answered the last time we asked
        # No retries inside redis-py: our threads retry themselves, and a client's line must
        # get its answer at once while Redis is down.
        self.redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
            protocol=2,  # the classic replies, which every Redis and Valkey version speaks
        )
        # The two busy paths, appending lines and reading the inbox, each have a connection of
        # their own and use it directly (send_command, read_response): no pool to take it from
        # and give it back to, which in redis-py costs twice the CPU of the command itself.
        self._send_connection = self.redis.connection_pool.make_connection()
        # The reader's connection hands over bytes, not text: an entry that is not UTF-8 (anyone
        # who can reach Redis can write one) is dropped by _entry, and does not stop the reader.
        # (The heartbeat reads a dead server's inbox the same way: see _undelivered_by.)
        pool = self.redis.connection_pool
        as_bytes = {**pool.connection_kwargs, "decode_responses": False}
        self._read_connection = pool.connection_class(**as_bytes)
        self._bytes_connection = pool.connection_class(**as_bytes)
        self._claim = self.redis.register_script(CLAIM)
        self._keep_alive_script = self.redis.register_script(KEEP_ALIVE)
        self._release_if_mine = self.redis.register_script(RELEASE_IF_MINE)
        self._refresh_names = self.redis.register_script(REFRESH_NAMES)
        self._lock = threading.Lock()  # guards the directory, `reachable` and the fields below
        self._directory = Directory()
        self._down_since = 0.0
        self._last_read = "0-0"  # the last inbox entry delivered (the reader writes it)
        # After an outage the other servers need a moment to write their keys again: until
        # then a missing key does not mean a dead server.
        self._patient_until = 0.0
        self._dropped = 0  # inbox lines refused (see _check); the reader counts, the heartbeat reports
        self._dropped_reported = 0
        # What the room hands over for other servers: (server id, or None for every one, line).
        self._queue: SendQueue[tuple[str | None, Line]] = SendQueue(self._send, BATCH)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- keys ---------------------------------------------------------------------------------

    def server_key(self, server_id: str) -> str:
        return f"{PREFIX}server:{server_id}"

    def name_key(self, name: str) -> str:
        return f"{PREFIX}name:{name.lower()}"

    def inbox_key(self, server_id: str) -> str:
        return f"{PREFIX}inbox:{server_id}"

    def read_key(self, server_id: str) -> str:
        return f"{PREFIX}read:{server_id}"

    def left_key(self, name: str) -> str:
        return f"{PREFIX}left:{name.lower()}"

    def settling_key(self) -> str:
        return f"{PREFIX}settling"

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> Broker:
        """Connect, claim this server's id, and start the threads."""
        try:
            self.redis.ping()
            if not self.redis.set(self.server_key(self.server_id), self.address, nx=True, px=self.ttl_ms):
                raise ValueError(f"server id {self.server_id!r} is in use by a live server")
            # Read the inbox from its current end: lines left there by an earlier server with
            # this id are not for us. (Nobody sends to us before our key exists.)
            newest = self.redis.xrevrange(self.inbox_key(self.server_id), count=1)
        except redis.RedisError as exc:
            self.redis.close()
            raise ConnectionError(f"cannot reach Redis at {without_password(self.url)}: {exc}") from exc
        last_id: str = newest[0][0] if newest else "0-0"  # type: ignore[index, assignment]
        self._last_read = last_id
        self._beat()
        # The snapshots for the servers already here go out now, before any client of ours can
        # register: so they know of this server before they can hear of its clients.
        self._queue.flush()
        self.room.elsewhere = self
        for role, target, args in (
            ("send", self._queue.run, ()),
            ("read", self._read_loop, (last_id,)),
            ("heartbeat", self._heartbeat_loop, ()),
        ):
            thread = threading.Thread(target=target, args=args, name=f"chatlab-broker-{role}", daemon=True)
            self._threads.append(thread)
            thread.start()
        log.info("sharing the chat through %s as server %r", without_password(self.url), self.server_id)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (the "left" of every client, when the server stops), delete
        this server's keys, and join the threads, all within about ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self._queue.close()  # the sender ends after what was queued before
        self._threads[0].join(timeout)
        self._stopping.set()
        for thread in self._threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.room.elsewhere = None
        try:
            self.redis.delete(
                self.server_key(self.server_id), self.inbox_key(self.server_id), self.read_key(self.server_id)
            )
        except redis.RedisError:
            pass  # they expire by themselves
        self._send_connection.disconnect()
        self._read_connection.disconnect()
        self._bytes_connection.disconnect()
        self.redis.close()

    # --- what the room calls ------------------------------------------------------------------

    def claim(self, name: str) -> bool | None:
        """Claim ``name`` for a client of this server: True if it is ours now, False if a
        client of any server has it, None if Redis cannot be asked now.

        Right after a restart of Redis the claim waits (in the registering client's thread) until
        every server has had time to re-claim its own clients' names: a name goes back to the
        client that had it, and a newcomer who wants it is told ``! name taken``."""
        if not self.reachable:
            return None
        keys = [self.name_key(name), self.server_key(self.server_id), self.settling_key()]
        deadline = time.monotonic() + (self.grace_ms / 1000 + self.heartbeat + MAX_BACKOFF)
        while True:
            try:
                claimed = self._claim(keys, [self.server_id, self.ttl_ms])
            except redis.RedisError as exc:
                self._lost(exc)
                return None
            if claimed != -1:
                break
            if time.monotonic() > deadline or self._stopping.wait(CLAIM_POLL):
                return None
        if claimed:
            with self._lock:
                self._directory.add_mine(name)
        return claimed == 1

    def joined(self, name: str) -> None:
        self._queue.put((None, Line(JOINED, name)))

    def left(self, name: str) -> None:
        """A client of this server left: tell the others, and release its name."""
        with self._lock:
            self._directory.remove_mine(name)
            self._queue.put((None, Line(LEFT, name)))  # see _see_peers: in order with the snapshots

    def direct(self, sender: str, to: str, text: str) -> str | None:
        """Send a line to a client of another server: None if it is on its way, or what to
        tell the sender."""
        with self._lock:
            server_id = self._directory.where(to)
        if server_id is None and self.reachable:
            server_id = self._look_up(to)  # joined a moment ago: its notice has not come yet
        if server_id is None:
            return f"unknown client {to!r}"
        if not self.reachable:
            return f"cannot reach {to!r} now: the link to the other servers is down"
        self._queue.put((server_id, Line(DIRECT, sender, to, text)), wake=False)  # the room will flush()
        return None

    def broadcast(self, sender: str, text: str) -> str | None:
        """Send a broadcast to the clients of every other server (None), or say why not."""
        if not self.reachable:
            return "only this server's clients got that: the link to the other servers is down"
        self._queue.put((None, Line(BROADCAST, sender, "", text)), wake=False)  # the room will flush()
        return None

    def names(self) -> list[str]:
        """The names online on the other servers (as far as we know), sorted."""
        with self._lock:
            return self._directory.names()

    def peers(self) -> list[str]:
        """The ids of the other live servers, as of the last heartbeat, sorted."""
        with self._lock:
            return self._directory.peers()

    def flush(self) -> None:
        """The room has handled the lines of one read: append what they handed over now, in
        this thread if no other is sending (see :class:`~chatlab.sendqueue.SendQueue`)."""
        self._queue.flush()

    def _look_up(self, name: str) -> str | None:
        try:
            owner: str | None = self.redis.get(self.name_key(name))  # type: ignore[assignment]
        except redis.RedisError as exc:
            self._lost(exc)
            return None
        return owner if owner and owner != self.server_id else None

    # --- sending (in whichever thread the send queue chose) --------------------------------

    def _send(self, batch: list[tuple[str | None, Line]]) -> None:
        """Append a batch to the other servers' inboxes: one entry per receiving server, all in
        one round trip (a pipeline: every command written at once, then every answer read).
        What could not be appended is reported to its sender (see :meth:`_undelivered`)."""
        with self._lock:
            everyone = self._directory.peers()
        by_server: dict[str, list[tuple[int, Line]]] = {}  # (the line's place in the batch, line)
        released = []
        for index, (server_id, line) in enumerate(batch):
            for target in everyone if server_id is None else [server_id]:
                by_server.setdefault(target, []).append((index, line))
            if line.kind == LEFT:
                released.append(line.sender)
        if not by_server and not released:
            return
        commands: list[tuple[Any, ...]] = [
            (
                "EVAL",
                SEND_IF_ALIVE,
                2,
                self.server_key(target),
                self.inbox_key(target),
                self.inbox_limit,
                self.server_id,
                pack([line for _index, line in lines]),
            )
            for target, lines in by_server.items()
        ]
        commands += [
            (
                "EVAL",
                RELEASE_IF_MINE,
                2,
                self.name_key(name),
                self.left_key(name),
                self.server_id,
                3 * self.ttl_ms,
            )
            for name in released
        ]
        try:
            results = _pipeline(self._send_connection, commands)
        except redis.RedisError as exc:
            self._lost(exc)
            self._undelivered(list(by_server.items()), link_down=True)
            return
        refused = [item for item, appended in zip(by_server.items(), results, strict=False) if not appended]
        if refused:
            self._undelivered(refused, link_down=False)

    def _undelivered(self, refused: list[tuple[str, list[tuple[int, Line]]]], *, link_down: bool) -> None:
        """Tell the senders of the lines that did not go out: never silence. A direct message
        gets ``! cannot reach``; a broadcast, once however many servers refused it, ``! not
        everyone got your line``, if a client of ours could have missed it (a server that
        stopped cleanly has announced its clients as left already)."""
        told = set()
        for server_id, lines in refused:
            with self._lock:
                anyone_there = self._directory.has_members(server_id)
            for index, line in lines:
                if line.kind == DIRECT:
                    why = "the link to the other servers is down" if link_down else "their server is down"
                    self.room.tell(line.sender, protocol.format_error(f"cannot reach {line.to!r}: {why}"))
                elif line.kind == BROADCAST and anyone_there and index not in told:
                    told.add(index)
                    why = "the link to the other servers is down" if link_down else "a server is down"
                    self.room.tell(
                        line.sender, protocol.format_error(f"not everyone got your line {line.text!r}: {why}")
                    )

    # --- the reader thread ----------------------------------------------------------------------

    def _read_loop(self, last_id: str) -> None:
        """Wait for entries in this server's inbox and hand them to the room, in order."""
        inbox = self.inbox_key(self.server_id)
        pause = 0.0
        while not self._stopping.is_set():
            try:
                if pause:  # Redis was unreachable: a fresh one has no inbox, start from its beginning
                    if not self.redis.exists(inbox):
                        last_id = "0-0"
                    pause = 0.0
                connection = self._read_connection
                connection.send_command(
                    "XREAD", "COUNT", 100, "BLOCK", READ_BLOCK_MS, "STREAMS", inbox, last_id
                )
                reply: Any = connection.read_response()  # [[inbox, [[id, [field, value, ...]], ...]]]
            except redis.RedisError as exc:
                self._lost(exc)
                pause = min(MAX_BACKOFF, pause * 2 or 0.05)
                self._stopping.wait(pause)
                continue
            for _stream, entries in reply or ():
                for raw_id, fields in entries:
                    entry_id = last_id = raw_id.decode()
                    try:
                        self._entry(entry_id, fields)
                    except redis.RedisError as exc:  # while checking it: Redis went away
                        self._lost(exc)
                        self._drop(entry_id, f"cannot be checked now ({exc})")
                    except Exception:  # one bad entry must not deafen this server
                        log.exception("cannot handle inbox entry %s", entry_id)
                    self._last_read = entry_id  # the heartbeat tells the others (read:<id>)

    # Anyone who can reach Redis can append to an inbox: every entry is checked before a client
    # sees anything of it (the module's docstring, "Who else writes to Redis?", says how).

    def _entry(self, entry_id: str, fields: list[bytes]) -> None:
        """One inbox entry (its fields as bytes): checked, then handed to :meth:`_arrived`."""
        entry = dict(zip(fields[::2], fields[1::2], strict=False))
        raw_origin, data = entry.get(b"from"), entry.get(b"lines")
        if len(fields) != 4 or raw_origin is None or data is None:
            self._drop(entry_id, "not an entry a chatlab server writes")
            return
        try:
            origin, lines = raw_origin.decode(), unpack(data.decode())
        except ValueError as exc:  # UnicodeDecodeError is one
            self._drop(entry_id, str(exc))
            return
        with self._lock:
            known = origin in self._directory.peers()
        if not known and (
            origin == self.server_id
            or protocol.unsafe_character(origin) is not None
            or not self.redis.exists(self.server_key(origin))
        ):
            self._drop(entry_id, f"from {_shown(origin)}, which is no live server of this chat", len(lines))
            return
        with self._lock:  # a server that writes to us is alive: from now on it hears everything
            if self._directory.heard_from(origin):
                self._queue_snapshots([origin])
        self._arrived(entry_id, origin, lines)

    def _arrived(self, entry_id: str, origin: str, lines: list[Line]) -> None:
        """Lines from server ``origin``: messages go to the room together, the rest in order."""
        owners = self._owners(lines)
        seen: dict[str, bool] = {}  # for this entry: sender -> whether it is a client of origin
        messages: list[Line] = []
        for line in lines:
            problem = self._check(origin, line, owners, seen)
            if problem is not None:
                self._drop(entry_id, problem)
                continue
            if line.kind in (DIRECT, BROADCAST):
                messages.append(line)
                continue
            self._deliver(origin, messages)
            messages = []
            if line.kind in (JOINED, LEFT):
                with self._lock:
                    changed = self._directory.member(origin, line.sender, line.kind == JOINED)
                if changed:
                    self._tell(line.sender, origin, "joined" if line.kind == JOINED else "left")
            elif line.kind == SNAPSHOT:
                names = [name for name in line.text.split(",") if name]
                held = [name for name in names if origin in owners.get(name.lower(), ())]
                if len(held) < len(names):
                    self._drop(entry_id, f"a snapshot of server {origin!r} names clients it does not have")
                with self._lock:
                    gone, new = self._directory.snapshot(origin, held)
                for name in gone:
                    self._tell(name, origin, "left")
                for name in new:
                    self._tell(name, origin, "joined")
            elif line.kind == ERROR:  # the text is ours, not the entry's: only the name comes from it
                self.room.tell(line.sender, protocol.format_unknown_client(line.to))
        self._deliver(origin, messages)

    def _owners(self, lines: list[Line]) -> dict[str, set[str]]:
        """Which servers hold, or held a moment ago, the names that a "joined" or a snapshot
        among ``lines`` announces ({lower-case name: server ids}): one round trip to Redis."""
        names = {line.sender.lower() for line in lines if line.kind == JOINED}
        for line in lines:
            if line.kind == SNAPSHOT:
                names.update(name.lower() for name in line.text.split(",") if name)
        ordered = sorted(name for name in names if protocol.name_error(name) is None)
        if not ordered:
            return {}
        keys = [self.name_key(name) for name in ordered] + [self.left_key(name) for name in ordered]
        found: list[Any] = self.redis.mget(keys)  # type: ignore[assignment]
        holders, left = found[: len(ordered)], found[len(ordered) :]
        return {name: {holders[i], left[i]} - {None} for i, name in enumerate(ordered)}

    def _check(
        self, origin: str, line: Line, owners: dict[str, set[str]], seen: dict[str, bool]
    ) -> str | None:
        """What is wrong with ``line`` from server ``origin`` (None: nothing). ``seen``
        remembers, for the lines of one entry, which senders are clients of ``origin`` (and,
        under "to " and the name, which receivers' names are names)."""
        if line.kind in (DIRECT, BROADCAST):  # most lines: each name is looked at once an entry
            if protocol.unsafe_character(line.text) is not None:
                return f"unsafe text from {_shown(line.sender)}: {_shown(line.text)}"
            known = seen.get(line.sender)
            if known is None:
                known = seen[line.sender] = self._is_client_of(origin, line.sender)
            if not known:
                return f"{_shown(line.sender)} is no client of server {origin!r}"
            if line.kind == DIRECT:
                to = "to " + line.to
                valid = seen.get(to)
                if valid is None:
                    valid = seen[to] = protocol.name_error(line.to) is None
                if not valid:
                    return f"the name {_shown(line.to)} is not a name"
            return None
        if line.kind == SNAPSHOT:  # its names are checked against Redis (see _owners)
            return None if not line.sender and not line.to else "a snapshot with names where none belong"
        if protocol.name_error(line.sender) is not None:
            return f"the name {_shown(line.sender)} is not a name"
        if line.kind == ERROR and protocol.name_error(line.to) is not None:
            return f"the name {_shown(line.to)} is not a name"
        if line.kind == JOINED and origin not in owners.get(line.sender.lower(), ()):
            return f"{line.sender!r} joined server {origin!r}, which does not hold that name"
        return None

    def _is_client_of(self, origin: str, name: str) -> bool:
        """Whether ``name`` is a client of server ``origin``: as far as we know, or else as far
        as Redis knows (it joined a moment ago, before its server knew of this one)."""
        if protocol.name_error(name) is not None:
            return False
        with self._lock:
            if self._directory.is_member(origin, name):
                return True
        return origin in self.redis.mget(self.name_key(name), self.left_key(name))  # type: ignore[operator]

    def _drop(self, entry_id: str, why: str, lines: int = 1) -> None:
        """Refuse what an inbox entry holds: the first few are logged, then only counted
        (the heartbeat logs the count), so that a flood of bad entries cannot flood the log."""
        self._dropped += lines
        if self._dropped <= LOGGED_DROPS:
            log.warning("inbox entry %s dropped: %s", entry_id, why)

    def _deliver(self, origin: str, messages: list[Line]) -> None:
        if not messages:
            return
        missing = self.room.arrived(
            [RemoteMessage(m.sender, m.text, to=m.to if m.kind == DIRECT else None) for m in messages]
        )
        for sender, to in missing:  # left a moment ago: the sender hears it, as on one server
            self._queue.put((origin, Line(ERROR, sender, to, f"unknown client {to!r}")))

    def _tell(self, name: str, server_id: str, what: str) -> None:
        log.info("%s %s (on server %s)", name, what, server_id)
        self.room.notice_from_elsewhere(f"{name} {what}")

    # --- the heartbeat thread -------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        pause = 0.0
        while not self._stopping.wait(pause or self.heartbeat):
            try:
                self._beat()
            except redis.RedisError as exc:
                self._lost(exc)
                pause = min(MAX_BACKOFF, pause * 2 or 0.05)
                continue
            except Exception:  # a bug, or something in Redis nobody of this chat wrote: beat on
                log.exception("heartbeat failed")
            pause = 0.0

    def _beat(self) -> None:
        """Say we are alive, keep our names, and see which servers came and went."""
        self._keep_alive()
        pattern = self.server_key("*")
        live = {key[len(pattern) - 1 :] for key in self.redis.scan_iter(match=pattern, count=1000)}
        live.discard(self.server_id)
        self._back()
        for server_id, members in self._see_peers(live).items():
            self._bury(server_id, members)
        if self._dropped > max(LOGGED_DROPS, self._dropped_reported):
            self._dropped_reported = self._dropped
            log.warning(
                "%d lines dropped from this server's inbox so far: not written by a server of this chat "
                "(is Redis open to anyone? the README says how to close it)",
                self._dropped,
            )

    def _keep_alive(self) -> None:
        """Rewrite this server's keys, with their time to live, and refresh its names."""
        with self._lock:
            mine = self._directory.mine()
        pipe = self.redis.pipeline(transaction=False)
        self._keep_alive_script(
            [self.server_key(self.server_id), self.settling_key()],
            [self.address, self.ttl_ms, self.grace_ms, self.server_id],
            client=pipe,
        )
        # The inbox and what was read of it outlive the key, so that when this server dies the
        # others can still see what it never delivered (see _undelivered_by).
        pipe.pexpire(self.inbox_key(self.server_id), 3 * self.ttl_ms)
        pipe.set(self.read_key(self.server_id), self._last_read, px=3 * self.ttl_ms)
        if mine:
            self._refresh_names(
                [self.name_key(name) for name in mine], [self.server_id, self.ttl_ms], client=pipe
            )
        results = pipe.execute()
        if results[0]:
            log.warning(
                "redis had forgotten this server (restarted?): its names are claimed again, "
                "and new names wait up to %.1f s for every server to do the same",
                self.grace_ms / 1000,
            )
        if mine:
            for name, kept in zip(mine, results[3], strict=True):
                if not kept:
                    self._name_lost(name)

    def _name_lost(self, name: str) -> None:
        """A client of another server holds ``name`` now: it was claimed while this server was
        away from Redis for longer than the grace after a restart. The later claimer loses,
        and that is ours: it is told ``! name taken`` and disconnected."""
        log.warning("%s: a client of another server took this name while we were away; ours leaves", name)
        with self._lock:
            self._directory.remove_mine(name)
        for record in self.room.connections():
            if record.name is not None and record.name.lower() == name.lower():
                self.room.tell(record.name, protocol.NAME_TAKEN)
                record.transport.abort()

    def _see_peers(self, live: set[str]) -> dict[str, dict[str, str]]:
        """The servers alive now: newcomers get a snapshot; returns the gone ones' members."""
        with self._lock:
            # Right after an outage a missing key does not mean a dead server: it stays a peer.
            patient = time.monotonic() < self._patient_until
            new = self._directory.see_peers(live, keep=patient)
            gone = {} if patient else self._directory.remove_gone()
            # A newcomer (or everyone, after an outage) learns who is here.
            self._queue_snapshots(sorted(new))
        return gone

    def _queue_snapshots(self, server_ids: list[str]) -> None:
        """Queue this server's names for each of ``server_ids``; with ``_lock`` held, like every
        "left", so that the queue's order is the order of the changes."""
        snapshot = ",".join(self._directory.mine())
        for server_id in server_ids:
            self._queue.put((server_id, Line(SNAPSHOT, "", "", snapshot)))

    def _bury(self, server_id: str, members: dict[str, str]) -> None:
        """Server ``server_id`` is gone: free its names, and tell our clients who left with it."""
        if not members:  # stopped cleanly: its clients' "left" came before its key went
            log.info("server %s is gone", server_id)
            return
        log.warning("server %s stopped answering: its %d clients left", server_id, len(members))
        # Its names would expire by themselves; freeing them now (if still that server's)
        # means a name is free again as soon as its owner is announced as gone.
        pipe = self.redis.pipeline(transaction=False)
        for key in members:
            self._release_if_mine(
                [self.name_key(key), self.left_key(key)], [server_id, 3 * self.ttl_ms], client=pipe
            )
        pipe.execute()
        for name in sorted(members.values(), key=str.lower):
            self._tell(name, server_id, "left")
        self._undelivered_by(server_id)

    def _undelivered_by(self, server_id: str) -> None:
        """Server ``server_id`` died: tell our clients which of their direct messages to it
        it may never have delivered (those after the last entry it said it had read)."""
        last_read: Any = self.redis.get(self.read_key(server_id)) or "0-0"
        connection = self._bytes_connection  # bytes, not text (see __init__)
        entries: Any = _pipeline(connection, [("XRANGE", self.inbox_key(server_id), f"({last_read}", "+")])[0]
        for _entry_id, fields in entries:
            entry = dict(zip(fields[::2], fields[1::2], strict=False))
            if entry.get(b"from") != self.server_id.encode():
                continue  # another server's lines: that server tells its own clients
            try:
                lines = unpack(entry.get(b"lines", b"").decode())
            except ValueError:
                continue  # not ours after all: somebody else wrote it
            for line in lines:
                if line.kind == DIRECT:
                    why = f"{line.to!r} may not have got your line {line.text!r}"
                    self.room.tell(
                        line.sender, protocol.format_error(f"{why}: their server stopped answering")
                    )

    # --- outage and recovery --------------------------------------------------------------------

    def _lost(self, exc: Exception) -> None:
        """Redis did not answer: log it once per outage."""
        with self._lock:
            was_reachable, self.reachable = self.reachable, False
            if was_reachable:
                self._down_since = time.monotonic()
                self._directory.outage()  # after the outage every server gets a snapshot again
        if was_reachable:
            log.warning("redis unreachable (%s): remote clients get '!' until it is back", exc)

    def _back(self) -> None:
        with self._lock:
            was_down, self.reachable = not self.reachable, True
            down_for = time.monotonic() - self._down_since
            if was_down:
                self._patient_until = time.monotonic() + self.ttl_ms / 1000
        if was_down:
            log.warning("redis reachable again after %.1f s: names re-claimed", down_for)
