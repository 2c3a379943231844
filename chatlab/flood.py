"""Flood control: a token bucket per client, and the lines that wait for their tokens.

A server started with ``rate=R`` (``--rate R``) gives every client a bucket that fills with R
tokens a second and holds at most ``2 * R`` (two seconds' worth: a burst a chatting human never
reaches). Every line the client sends takes a token. When the bucket is empty, the server stops
reading that client's socket until tokens have flowed back in. Nothing is thrown away: the
client's lines wait in the kernel's buffers, and once those are full TCP's own flow control
makes the client's ``send()`` wait. Its lines arrive late, never lost, never out of order, and
every other client is served as before. (Unless it hangs up meanwhile: then the lines still
waiting are dropped and counted in the log, see :mod:`chatlab.servers.session`.)

A server reads whatever has arrived, often many lines at once. The lines of a read that find no
token wait in the client's :class:`Throttle` (at most one read's worth) and go to the room, in
order, as tokens come in; the socket is read again only once none are waiting. So the rate
holds for what the others receive, not only for what the server reads.

On a classroom server that is fair (:mod:`chatlab.door`), all the connections from one address
draw from one :class:`SharedBucket`: ten connections from one laptop get the rate of one, and
the names they register cost a token each, like lines.

Like :mod:`chatlab.protocol`, this module has no sockets and no clock of its own: the caller
says what time it is, so the arithmetic is tested without waiting.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

__all__ = ["BURST_SECONDS", "TICK", "SharedBucket", "Throttle", "TokenBucket", "slow_down"]

BURST_SECONDS = 2.0  # a full bucket holds this many seconds' worth of lines
# While lines wait, the server hands them over in batches of this many seconds' worth (at
# least one line): ten wake-ups a second, not one per line.
TICK = 0.1


def slow_down(rate: float) -> str:
    """What a client is told (as a ``! `` line) the first time its lines have to wait."""
    return f"slow down: at most {rate:g} lines per second; your lines wait"


@dataclass
class TokenBucket:
    """Tokens for one client: ``rate`` per second flow in, up to ``burst``; each line takes one.

    >>> bucket = TokenBucket.for_rate(10.0, now=0.0)   # holds 20 tokens, full
    >>> bucket.take(25, now=0.0)                       # 25 lines: 20 may go now
    20
    >>> bucket.wait(5, now=0.0)                        # tokens for the other 5: in half a second
    0.5
    >>> bucket.take(5, now=0.5)
    5
    """

    rate: float  # tokens per second
    burst: float  # the most it holds
    tokens: float  # what it holds now
    stamp: float  # when ``tokens`` was last brought up to date

    @classmethod
    def for_rate(cls, rate: float, now: float) -> TokenBucket:
        """A full bucket for ``rate`` lines per second, holding :data:`BURST_SECONDS` of them."""
        if not rate > 0:  # also refuses nan
            raise ValueError("the rate must be a positive number of lines per second")
        burst = BURST_SECONDS * rate
        return cls(rate=rate, burst=burst, tokens=burst, stamp=now)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, lines: int, now: float) -> int:
        """Take a token for each of ``lines`` lines, or for as many as there are whole tokens;
        return how many lines may go now."""
        self._refill(now)
        granted = min(lines, math.floor(self.tokens))
        self.tokens -= granted
        return granted

    def wait(self, lines: int, now: float) -> float:
        """Seconds until there are tokens for ``lines`` lines (a burst's worth at most); 0.0 if
        there are now."""
        self._refill(now)
        wanted = min(lines, max(1.0, math.floor(self.burst)))
        return max(0.0, (wanted - self.tokens) / self.rate)


@dataclass
class SharedBucket(TokenBucket):
    """A :class:`TokenBucket` that several connections draw from, each perhaps in a thread of
    its own (all the connections of one address): taking and asking hold its lock."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take(self, lines: int, now: float) -> int:
        with self.lock:  # another thread's clock may have read a moment later: never go back
            return super().take(lines, max(now, self.stamp))

    def wait(self, lines: int, now: float) -> float:
        with self.lock:
            return super().wait(lines, max(now, self.stamp))


@dataclass
class Throttle:
    """Flood control for one connection: its bucket and the lines waiting for tokens.

    The server hands it every line it reads (:meth:`admit`), passes on the lines it returns,
    and reads the socket again only once :meth:`wait` says 0.0. ``told`` records that the client
    has been told to slow down (once per connection: a script that floods would not read a
    notice a second anyway).
    """

    bucket: TokenBucket
    waiting: list = field(default_factory=list)  # lines read, not handed over yet, in order
    told: bool = False

    @classmethod
    def for_rate(cls, rate: float, now: float) -> Throttle:
        return cls(TokenBucket.for_rate(rate, now))

    def admit(self, lines: list, now: float) -> list:
        """Queue ``lines`` behind those already waiting; return the ones that may go now."""
        self.waiting.extend(lines)
        granted = self.bucket.take(len(self.waiting), now)
        ready = self.waiting[:granted]
        del self.waiting[:granted]
        return ready

    def wait(self, now: float) -> float:
        """Seconds until the next batch of waiting lines may go; 0.0 when none wait (read on)."""
        if not self.waiting:
            return 0.0
        batch = max(1, math.floor(self.bucket.rate * TICK))
        # Never 0.0 while lines wait, which would mean "read on".
        return max(self.bucket.wait(min(len(self.waiting), batch), now), 1e-3)
