"""The door of a classroom server: who may come in, how many at a time, and how fast.

A server on a shared network meets students who try things. Without a door, one laptop that
opens a hundred connections and says nothing fills every seat; one loop that reconnects
floods everyone with "joined" and "left"; ten connections get ten times the flood rate. The
:class:`Door` counts by *address* (the IP a connection comes from, one per laptop on a class
network) and turns away, at the accept, with one ``!`` line:

- an address with ``per_address`` connections open already ("too many connections from your
  address"), or that opens new ones faster than ``arrivals`` a second (in bursts of
  ``per_address``, or ``arrivals`` if more): "too many new connections from your address";
- a connection that would make more than ``joining`` connections wait at the door at once
  (server-wide), or more than ``joining_per_address`` from one address ("server busy"). At the
  door means not named yet: in the TLS handshake, asked for the class code, asked for a name;
- anyone once ``max_clients`` clients are *named* ("server full"): a connection at the door
  does not take a seat, so idle connections cannot fill the room, only the door's small pool.

It also keeps, for each address, the flood-control bucket (:mod:`chatlab.flood`) that all of
its connections draw from, so ten connections get the rate of one, and every name they send
costs a token like a line. All of this is the door's *fairness*, on by default when the server
listens beyond loopback (``fair=None``; ``fair=True`` turns it on for tests on 127.0.0.1).

One guard is on whatever ``fair`` says: a wrong class code is answered only after
``WRONG_CODE_DELAY`` seconds, and an address may have at most ``guesses`` wrong codes waiting for
their answer at once; a guess beyond that is not even checked. So one student gets a few
guesses a second, however many connections it opens, and hanging up early does not help.

What the door cannot do: tell two students behind one address apart (a room behind NAT looks
like one laptop: raise ``per_address``, ``arrivals`` and ``joining_per_address``, and know that
the flood rate is then the room's), or stop a student who uses many addresses. Names are not
accounts, and the class code is a sign on the door, not a lock.

Like :mod:`chatlab.flood` it has no socket and no clock: the caller says what time it is. It
is thread-safe (one lock), since in the threaded server every client's thread calls it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from . import protocol
from .flood import BURST_SECONDS, SharedBucket, TokenBucket

__all__ = [
    "BUSY",
    "TOO_FAST",
    "TOO_MANY_CONNECTIONS",
    "TOO_MANY_GUESSES",
    "Door",
    "Visitor",
]

TOO_MANY_CONNECTIONS = protocol.format_error("too many connections from your address")
TOO_FAST = protocol.format_error("too many new connections from your address; wait a moment")
BUSY = protocol.format_error("server busy: too many connections are joining; try again soon")
TOO_MANY_GUESSES = protocol.format_error("too many class code guesses from your address; wait")
FORGET_AFTER = 512  # addresses the door remembers before it forgets the quiet ones


@dataclass(slots=True)
class Visitor:
    """What the door knows about one address (a student's laptop, on a class network)."""

    arrivals: TokenBucket  # new connections: ``arrivals`` a second, in bursts (see the module)
    lines: SharedBucket | None = None  # flood control, shared by all its connections (``rate``)
    connections: int = 0  # open now
    joining: int = 0  # of which still at the door: not named yet
    guesses: list[float] = field(default_factory=list)  # when each waiting wrong code is answered


class Door:
    """Admission by address for one server (see the module docstring); every method is quick.

    A session calls :meth:`enter` at the accept (None: come in; else the line to refuse it
    with), :meth:`seat` before its name is handled (it leaves the door's pool for a seat),
    :meth:`unseat` if the name was refused (back to the pool), and :meth:`leave` when it ends. Without
    fairness only the class-code guard (:meth:`guess`) counts anything.
    """

    def __init__(
        self,
        *,
        fair: bool,
        max_clients: int,
        per_address: int,
        arrivals: float,
        joining: int,
        joining_per_address: int,
        guesses: int,
        rate: float | None,
    ) -> None:
        self.fair = fair
        self.max_clients = max_clients
        self.per_address = per_address
        self.arrivals = arrivals
        self.joining_limit = joining
        self.joining_per_address = joining_per_address
        self.guesses = guesses
        self.rate = rate
        self.named_count = 0  # clients with a name (or about to have one: a seat taken)
        self.joining_count = 0  # connections at the door, server-wide
        self._visitors: dict[str, Visitor] = {}
        self._lock = threading.Lock()

    def _visitor(self, ip: str, now: float) -> Visitor:
        visitor = self._visitors.get(ip)
        if visitor is None:
            if len(self._visitors) >= FORGET_AFTER:
                self._forget_quiet(now)
            burst = float(max(self.per_address, self.arrivals))
            visitor = Visitor(TokenBucket(rate=self.arrivals, burst=burst, tokens=burst, stamp=now))
            if self.rate is not None:
                lines = BURST_SECONDS * self.rate  # as TokenBucket.for_rate fills one
                visitor.lines = SharedBucket(rate=self.rate, burst=lines, tokens=lines, stamp=now)
            self._visitors[ip] = visitor
        return visitor

    def _forget_quiet(self, now: float) -> None:
        """Forget the addresses with nothing open, nothing waiting and full buckets again."""
        for ip, visitor in list(self._visitors.items()):
            if visitor.connections or any(until > now for until in visitor.guesses):
                continue
            buckets = [visitor.arrivals] if visitor.lines is None else [visitor.arrivals, visitor.lines]
            if all(bucket.wait(int(bucket.burst), now) == 0.0 for bucket in buckets):
                del self._visitors[ip]

    def enter(self, ip: str, now: float) -> bytes | None:
        """A new connection from ``ip``: None to let it in (it now waits at the door), else
        the line it is refused with (:data:`TOO_MANY_CONNECTIONS`, :data:`TOO_FAST`,
        :data:`BUSY`). Whether a seat is free is :meth:`full`: over TLS a full server says so
        only after the handshake, so the connection is let in to hear it."""
        if not self.fair:
            return None
        with self._lock:
            visitor = self._visitor(ip, now)
            if visitor.connections >= self.per_address:
                return TOO_MANY_CONNECTIONS
            if not visitor.arrivals.take(1, now):
                return TOO_FAST
            if self.joining_count >= self.joining_limit or visitor.joining >= self.joining_per_address:
                return BUSY
            visitor.connections += 1
            visitor.joining += 1
            self.joining_count += 1
            return None

    def full(self) -> bool:
        """Whether ``max_clients`` clients are named (fair; the room counts otherwise)."""
        return self.fair and self.named_count >= self.max_clients

    def bucket(self, ip: str, now: float) -> SharedBucket | None:
        """The flood-control bucket every connection from ``ip`` draws from (fair, with a rate)."""
        if not self.fair or self.rate is None:
            return None
        with self._lock:
            return self._visitor(ip, now).lines

    def seat(self, ip: str) -> bool:
        """Take a seat for a name from ``ip`` about to be registered, and leave the door's pool
        (before the welcome goes out: the client may connect again as soon as it has it);
        False if ``max_clients`` are named. :meth:`unseat` if the name was not registered."""
        if not self.fair:
            return True
        with self._lock:
            if self.named_count >= self.max_clients:
                return False
            self.named_count += 1
            self._visitors[ip].joining -= 1
            self.joining_count -= 1
            return True

    def unseat(self, ip: str) -> None:
        """Give back a seat taken by :meth:`seat` whose name was not registered: back in the pool."""
        if self.fair:
            with self._lock:
                self.named_count -= 1
                self._visitors[ip].joining += 1
                self.joining_count += 1

    def leave(self, ip: str, *, joining: bool, seated: bool) -> None:
        """A connection from ``ip`` let in by :meth:`enter` is over; it was still ``joining``,
        or ``seated`` (named)."""
        if not self.fair:
            return
        with self._lock:
            visitor = self._visitors[ip]
            visitor.connections -= 1
            if joining:
                visitor.joining -= 1
                self.joining_count -= 1
            if seated:
                self.named_count -= 1

    def guess(self, ip: str, now: float, answer_at: float) -> bool:
        """A class code from ``ip``, to be answered at ``answer_at`` if it is wrong: True if it
        may be checked (it counts as waiting until then: :meth:`right` takes it back), False if
        ``ip`` has ``guesses`` waiting already."""
        with self._lock:
            visitor = self._visitor(ip, now)
            visitor.guesses = [until for until in visitor.guesses if until > now]
            if len(visitor.guesses) >= self.guesses:
                return False
            visitor.guesses.append(answer_at)
            return True

    def right(self, ip: str, answer_at: float) -> None:
        """The code was right: it was not a guess that waits."""
        with self._lock:
            visitor = self._visitors.get(ip)
            if visitor is not None and answer_at in visitor.guesses:
                visitor.guesses.remove(answer_at)
