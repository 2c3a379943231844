"""A load generator for chatlab servers: many raw-socket clients in one thread, driven by `selectors`.

Every simulated client is a non-blocking socket registered with one selector (epoll on Linux),
and one loop in the caller's thread reads whatever arrived, cuts it into lines with
:class:`chatlab.protocol.LineFramer` and hands each line to that client's handler. No thread
per client: a thousand clients cost the generator a thousand file descriptors and a little
memory, so it stays cheaper than the server it measures (``run.py`` reports the CPU share of
both, which is how you check that the server, not the generator, is the bottleneck).

The scenarios speak only the wire protocol, so they measure any server model:
:func:`ring` (throughput, and that every message arrives once, in order, at the right
client), :func:`latency` (round trips while others chat), :func:`churn` (connect, register,
leave, over and over) and :func:`capacity` (memory and threads per idle client). Each returns
a dict of plain numbers.

Resource handling: everything waits in ``selector.select(timeout)`` and every scenario has a
deadline, so nothing blocks for ever; a :class:`LoadGenerator` closes every socket it opened
when its ``with`` block ends. Error handling: a refused registration, a server that hangs up
during one, or a missed deadline raise :class:`LoadError`; problems after registration (lost
messages, dropped clients, ``!`` lines) are counted and returned, not raised.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

from chatlab import protocol

try:
    import resource  # the limit on open files: Linux and macOS
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

HOST = "127.0.0.1"
RECV_SIZE = 65536
MAX_SERVER_LINE = 1 << 20  # an "online:" line for 5000 clients is about 40 KB
READ = selectors.EVENT_READ
READ_WRITE = selectors.EVENT_READ | selectors.EVENT_WRITE

LineHandler = Callable[["Conn", bytes], None]


class LoadError(RuntimeError):
    """The server refused a client, hung up while it registered, or a deadline passed."""


@dataclass(eq=False, slots=True)
class Conn:
    """One simulated client: its socket, its framer and the counts of what it has received.

    ``state`` goes ``greeting`` -> ``welcome`` -> ``online`` -> ``ready`` (registered) and
    ends ``closed``. ``online_count`` is how many names the welcome's ``* online:`` line held
    (the client itself included), so ``total - online_count`` clients will join after it.
    """

    name: str
    index: int
    sock: socket.socket = field(repr=False)
    framer: protocol.LineFramer = field(repr=False)
    on_line: LineHandler | None = field(default=None, repr=False)
    on_ready: Callable[[Conn], None] | None = field(default=None, repr=False)
    out: bytearray = field(default_factory=bytearray, repr=False)
    state: str = "greeting"
    online_count: int = 0
    joined: int = 0
    left: int = 0
    messages: int = 0
    errors: int = 0


def _counts(line: bytes, conn: Conn) -> None:
    """Count a line that no scenario handler claimed."""
    if line.startswith(b"%"):
        conn.messages += 1
    elif line.startswith(b"* "):
        if line.endswith(b" joined"):
            conn.joined += 1
        elif line.endswith(b" left"):
            conn.left += 1
    elif line.startswith(b"! "):
        conn.errors += 1


class LoadGenerator:
    """Many clients of the chat server at ``address``, served by one selector loop.

    Call every method from the one thread that created the generator; nothing here starts a
    thread. Use it as a context manager: leaving the block closes every socket.
    """

    def __init__(self, address: tuple[str, int] | list[tuple[str, int]]) -> None:
        # Several addresses: servers that share one chat (benchmarks/cluster.py); client i
        # connects to address i modulo their number.
        self.addresses = address if isinstance(address, list) else [address]
        if any(host != HOST for host, _port in self.addresses):
            raise ValueError("the load generator only talks to 127.0.0.1")
        self.address = self.addresses[0]
        self.selector = selectors.DefaultSelector()
        self.conns: set[Conn] = set()
        self.hangups = 0  # connections the server closed after registration
        self.joined_total = 0  # "* X joined" notices received by all clients together
        self._registering = 0

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for conn in list(self.conns):
            self.close(conn)
        self.selector.close()

    # --- connections ------------------------------------------------------------------------

    def open(
        self,
        names: Iterable[str],
        *,
        deadline: float,
        parallel: int = 100,
        on_ready: Callable[[Conn], None] | None = None,
    ) -> list[Conn]:
        """Connect and register a client per name, at most ``parallel`` registering at once.

        Returns once every client has read its ``* online:`` line. ``on_ready(conn)`` is called
        as each one is registered (churn closes it there). Raises :class:`LoadError` on a
        refusal or at ``deadline`` (a ``time.monotonic()`` value).
        """
        waiting = list(enumerate(names))
        waiting.reverse()  # pop() from the end keeps the names' order
        opened: list[Conn] = []
        while waiting or self._registering:
            while waiting and self._registering < parallel:
                index, name = waiting.pop()
                opened.append(self._connect(name, index, on_ready))
            if time.monotonic() > deadline:
                raise LoadError(
                    f"registration timed out: {len(opened) - self._registering} of "
                    f"{len(opened) + len(waiting)} clients registered"
                )
            self.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        return opened

    def _connect(self, name: str, index: int, on_ready: Callable[[Conn], None] | None) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex(self.addresses[index % len(self.addresses)])
        if error not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):  # under way (Windows says EWOULDBLOCK)
            sock.close()
            raise LoadError(f"cannot connect: {os.strerror(error)}")
        conn = Conn(name, index, sock, protocol.LineFramer(MAX_SERVER_LINE), on_ready=on_ready)
        self.selector.register(sock, READ, conn)  # the greeting tells us it is connected
        self.conns.add(conn)
        self._registering += 1
        return conn

    def _registration_line(self, conn: Conn, line: bytes) -> None:
        """Greeting -> send the name -> welcome -> online list -> ready."""
        if line.startswith(b"! "):
            raise LoadError(f"{conn.name} refused in state {conn.state}: {line.decode(errors='replace')}")
        if conn.state == "greeting":
            if not line.startswith(b"* chatlab"):
                raise LoadError(f"{conn.name}: unexpected greeting {line[:80]!r}")
            conn.state = "welcome"
            self.send(conn, conn.name.encode() + b"\n")
        elif conn.state == "welcome":
            if line != b"* welcome " + conn.name.encode():
                raise LoadError(f"{conn.name}: unexpected welcome {line[:80]!r}")
            conn.state = "online"
        elif conn.state == "online":
            if not line.startswith(b"* online: "):
                raise LoadError(f"{conn.name}: expected the online list, got {line[:80]!r}")
            conn.online_count = line.count(b", ") + 1
            conn.state = "ready"
            self._registering -= 1
            if conn.on_ready is not None:
                conn.on_ready(conn)

    def close(self, conn: Conn) -> None:
        """Close one client's socket (the server sees it leave)."""
        if conn.state == "closed":
            return
        if conn.state != "ready":
            self._registering -= 1
        conn.state = "closed"
        self.conns.discard(conn)
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def _hangup(self, conn: Conn) -> None:
        registering = conn.state != "ready"
        self.close(conn)
        if registering:
            raise LoadError(f"the server closed {conn.name}'s connection while it registered")
        self.hangups += 1

    # --- bytes in and out -------------------------------------------------------------------

    def send(self, conn: Conn, data: bytes) -> None:
        """Send bytes now if the socket takes them, else keep the rest until it is writable."""
        if conn.state == "closed":
            return
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._hangup(conn)
            return
        if sent < len(data):
            conn.out += data[sent:]
            self.selector.modify(conn.sock, READ_WRITE, conn)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._hangup(conn)
            return
        del conn.out[:sent]
        if not conn.out:
            self.selector.modify(conn.sock, READ, conn)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._hangup(conn)
            return
        for line in conn.framer.feed(data):
            if conn.state == "closed":  # a handler closed it (churn does, once registered)
                break
            if isinstance(line, protocol.LineTooLong):
                conn.errors += 1
            elif conn.state != "ready":
                self._registration_line(conn, line)
            elif conn.on_line is not None:
                conn.on_line(conn, line)
            else:
                self._idle_line(conn, line)

    def _idle_line(self, conn: Conn, line: bytes) -> None:
        _counts(line, conn)
        if line.startswith(b"* ") and line.endswith(b" joined"):
            self.joined_total += 1

    # --- the loop ---------------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for sockets to be ready, and serve those that are."""
        for key, events in self.selector.select(timeout):
            conn = key.data
            if events & selectors.EVENT_WRITE and conn.state != "closed":
                self._flush(conn)
            if events & selectors.EVENT_READ and conn.state != "closed":
                self._read(conn)

    def pump(
        self,
        until: Callable[[], bool],
        deadline: float,
        timer: Callable[[float], float] | None = None,
    ) -> bool:
        """Serve the sockets until ``until()`` is true (True) or ``deadline`` passes (False).

        ``timer(now)``, if given, is called every round, does whatever is due and returns when
        it wants to be called next.
        """
        while not until():
            now = time.monotonic()
            if now >= deadline:
                return False
            wait = min(0.05, deadline - now)
            if timer is not None:
                wait = max(0.0, min(wait, timer(now) - now))
            self.poll(wait)
        return True

    def settle(self, conns: list[Conn], deadline: float) -> None:
        """Wait until every client has read the "joined" notice of everyone who came after it.

        Call it right after :meth:`open` on an empty server: then the server has nothing left
        to say, and a measurement starts from a quiet server. Raises :class:`LoadError` at
        ``deadline``.
        """
        still_to_come = sum(len(conns) - c.online_count - c.joined for c in conns)
        target = self.joined_total + still_to_come
        if not self.pump(lambda: self.joined_total >= target, deadline):
            raise LoadError(
                f"timed out: {target - self.joined_total} of {still_to_come} join notices still undelivered"
            )

    def who_until_alone(
        self, name: str, deadline: float, every: float = 0.01
    ) -> tuple[float | None, list[str]]:
        """Register a fresh client ``name`` and ask ``%server%who`` until it is alone online.

        Returns (seconds until alone or None at the deadline, the last list of names). The
        fresh client is closed before returning.
        """
        start = time.monotonic()
        answer: dict[str, list[str] | None] = {"names": None}

        def on_line(conn: Conn, line: bytes) -> None:
            if line.startswith(b"* online: "):
                answer["names"] = protocol.parse_online(line[2:].decode(errors="replace"))

        (probe,) = self.open([name], deadline=deadline)
        probe.on_line = on_line
        alone = probe.online_count == 1
        names = [name] if alone else []
        while not alone and probe.state == "ready":
            answer["names"] = None
            self.send(probe, b"%server%who\n")
            if not self.pump(lambda: answer["names"] is not None, deadline):
                break
            names = answer["names"] or []
            alone = names == [name]
            if not alone:  # ask again a little later
                self.pump(lambda: False, min(deadline, time.monotonic() + every))
        elapsed = time.monotonic() - start
        self.close(probe)
        return (elapsed if alone else None), names


# --- measuring the server's process ----------------------------------------------------------


def process_status(pid: int) -> dict[str, int]:
    """The resident memory (KiB) and thread count of process ``pid``, all its threads counted.

    psutil asks the operating system: on Linux it reads ``/proc/PID/status`` and ``statm`` (the
    same VmRSS and Threads as ``ps``), on macOS and Windows it makes those systems' own calls.
    Windows may count a few threads of its own (its thread pool) in every process.
    """
    process = psutil.Process(pid)
    with process.oneshot():
        return {"rss_kib": process.memory_info().rss // 1024, "threads": process.num_threads()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time that process ``pid`` has used, all its threads together."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class CpuMeter:
    """CPU time used by the server process and by this (generator) process over an interval.

    ``share`` 1.0 means one core busy all the time. A generator share near 1.0 while the
    server's stays lower means the generator, not the server, set the pace. The system counts
    the server's time in clock ticks (10 ms on Linux), so over less than ``MIN_SECONDS`` its
    share would be mostly rounding (0, or several cores on a two-core machine): it is None then.
    """

    MIN_SECONDS = 0.25

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._wall = time.monotonic()
        self._mine = time.process_time()
        self._server = cpu_seconds(server_pid) if server_pid else 0.0

    def shares(self) -> dict[str, float | None]:
        wall = max(time.monotonic() - self._wall, 1e-9)
        result = {"loadgen_cpu": round((time.process_time() - self._mine) / wall, 3)}
        if self.server_pid:
            used = cpu_seconds(self.server_pid) - self._server
            result["server_cpu"] = round(used / wall, 3) if wall >= self.MIN_SECONDS else None
        return result


WINDOWS_SELECT_LIMIT = 512
"""The most sockets one ``select()`` watches on Windows, where ``selectors`` has nothing else."""


def raise_fd_limit(needed: int) -> int | None:
    """Make room for ``needed`` open sockets in this process; the soft limit on open files now.

    Linux and macOS limit the files (sockets included) a process may open: this raises the soft
    limit up to the hard one (``resource``), and child processes started later inherit it.
    Windows has no such limit and no ``resource`` module: None. There the selector is
    ``select()``, which watches at most 512 sockets.

    Raises :class:`LoadError` if even the hard limit, or Windows' ``select()``, is below ``needed``.
    """
    if resource is None:  # Windows
        if selectors.DefaultSelector is selectors.SelectSelector and needed > WINDOWS_SELECT_LIMIT:
            raise LoadError(
                f"{needed} sockets needed, but select() on this system watches at most {WINDOWS_SELECT_LIMIT}"
            )
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise LoadError(f"{needed} file descriptors needed, but the hard limit (ulimit -Hn) is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = hard if hard != resource.RLIM_INFINITY else needed
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        except (ValueError, OSError) as exc:  # macOS caps it below an unlimited hard limit
            raise LoadError(
                f"{needed} file descriptors needed, but the limit cannot be raised: {exc}"
            ) from None
    return soft


# --- the scenarios ----------------------------------------------------------------------------


def ring(
    address: tuple[str, int] | list[tuple[str, int]],
    n: int,
    m: int,
    *,
    window: int = 16,
    timeout: float = 60.0,
    server_pid: int | None = None,
) -> dict:
    """N clients in a ring, each sending M numbered messages to the next (i -> i+1 mod N).

    Each sender keeps at most ``window`` messages in flight (sent, not yet received), so the
    server never holds more than that per client and no client is dropped for being slow.
    Once half of them have arrived it sends the next ones in one write; with ``window=1`` it
    sends one message and waits for it to arrive before the next, as people chat.
    Every message is checked at its receiver: ``lost`` (never arrived), ``duplicated``,
    ``reordered`` (arrived after a later one from the same sender) and ``misdelivered`` (from
    anyone but the previous client, or garbled). ``msgs_per_s`` is N*M divided by the time from
    the first send to the last receive.
    """
    if n < 2 or m < 1 or window < 1:
        raise ValueError("a ring needs n >= 2 clients, m >= 1 messages and a window of 1 or more")
    deadline = time.monotonic() + timeout
    names = [f"ring{i}" for i in range(n)]
    index = {name.encode(): i for i, name in enumerate(names)}
    prefixes = [f"%{names[(i + 1) % n]}%".encode() for i in range(n)]
    sent = [0] * n  # messages sender i has sent
    arrived = [0] * n  # distinct messages from sender i that its receiver got
    highest = [-1] * n  # highest number receiver i has seen
    seen = [bytearray(m) for _ in range(n)]  # seen[i][k]: receiver i got message k
    faults = {"duplicated": 0, "reordered": 0, "misdelivered": 0}
    total = {"arrived": 0, "last": 0.0}

    with LoadGenerator(address) as gen:
        conns = gen.open(names, deadline=deadline)
        gen.settle(conns, deadline)

        def top_up(sender: int) -> None:
            stop = min(m, arrived[sender] + window)
            if sent[sender] < stop:
                prefix = prefixes[sender]
                gen.send(conns[sender], b"".join(b"%s%d\n" % (prefix, k) for k in range(sent[sender], stop)))
                sent[sender] = stop

        def on_line(conn: Conn, line: bytes) -> None:
            if not line.startswith(b"%"):
                _counts(line, conn)
                return
            receiver = conn.index
            sender_name, _, text = line[1:].partition(b"%")
            sender = index.get(sender_name)
            if sender is None or (sender + 1) % n != receiver or not text.isdigit() or int(text) >= m:
                faults["misdelivered"] += 1
                return
            number = int(text)
            if seen[receiver][number]:
                faults["duplicated"] += 1
                return
            seen[receiver][number] = 1
            if number < highest[receiver]:
                faults["reordered"] += 1
            else:
                highest[receiver] = number
            arrived[sender] += 1
            total["arrived"] += 1
            total["last"] = time.perf_counter()
            if sent[sender] - arrived[sender] <= window // 2:  # refill in batches, not line by line
                top_up(sender)

        for conn in conns:
            conn.on_line = on_line
        meter = CpuMeter(server_pid)
        first_send = time.perf_counter()
        for sender in range(n):
            top_up(sender)
        finished = gen.pump(lambda: total["arrived"] == n * m, deadline)
        cpu = meter.shares()
        elapsed = (total["last"] or time.perf_counter()) - first_send
        # A late duplicate would arrive after the last expected message; give it a moment.
        gen.pump(lambda: False, min(deadline, time.monotonic() + 0.05))
        errors = sum(c.errors for c in conns)
        left = sum(c.left for c in conns)
        hangups = gen.hangups
    return {
        "n": n,
        "m": m,
        "window": window,
        "messages": n * m,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(n * m / elapsed, 1) if finished else None,
        "lost": n * m - total["arrived"],
        **faults,
        "errors": errors,
        "left_notices": left,
        "hangups": hangups,
        "timed_out": not finished,
        **cpu,
    }


def latency(
    address: tuple[str, int] | list[tuple[str, int]],
    n: int,
    k: int,
    *,
    warmup: int = 50,
    chatter: float = 100.0,
    timeout: float = 60.0,
    server_pid: int | None = None,
) -> dict:
    """N connected clients; ``lat0`` sends K pings to ``lat1``, which answers each at once.

    Meanwhile the other N-2 clients chat lightly: ``chatter`` messages a second in all, each
    to the next of them in a ring. Returns round-trip percentiles in microseconds (the first
    ``warmup`` round trips are not counted). The time includes the generator reading and
    answering, the same for every server.
    """
    if n < 2 or k < 1:
        raise ValueError("latency needs n >= 2 clients and k >= 1 round trips")
    deadline = time.monotonic() + timeout
    names = [f"lat{i}" for i in range(n)]
    rounds = {"done": 0, "start": 0}
    rtts_ns: list[int] = []
    chat = {"next": 0.0, "count": 0}

    with LoadGenerator(address) as gen:
        conns = gen.open(names, deadline=deadline)
        gen.settle(conns, deadline)
        ping, pong, others = conns[0], conns[1], conns[2:]
        # Each end sends "%peer%N" and receives "%peer%N": the same prefix both ways.
        ping_prefix, pong_prefix = f"%{pong.name}%".encode(), f"%{ping.name}%".encode()

        def send_ping() -> None:
            rounds["start"] = time.perf_counter_ns()
            gen.send(ping, b"%s%d\n" % (ping_prefix, rounds["done"]))

        def at_ping(conn: Conn, line: bytes) -> None:
            if line.startswith(ping_prefix) and int(line[len(ping_prefix) :]) == rounds["done"]:
                if rounds["done"] >= warmup:
                    rtts_ns.append(time.perf_counter_ns() - rounds["start"])
                rounds["done"] += 1
                if rounds["done"] < warmup + k:
                    send_ping()
            else:
                _counts(line, conn)

        def at_pong(conn: Conn, line: bytes) -> None:
            if line.startswith(pong_prefix):
                gen.send(pong, line + b"\n")  # the same line goes back: "%lat0%N"
            else:
                _counts(line, conn)

        def chat_timer(now: float) -> float:
            if len(others) < 2 or chatter <= 0:
                return now + 1.0
            if not chat["next"]:
                chat["next"] = now
            while chat["next"] <= now:
                sender = others[chat["count"] % len(others)]
                receiver = others[(chat["count"] + 1) % len(others)]
                gen.send(sender, b"%%%s%%chat %d\n" % (receiver.name.encode(), chat["count"]))
                chat["count"] += 1
                chat["next"] += 1.0 / chatter
            return chat["next"]

        ping.on_line, pong.on_line = at_ping, at_pong
        meter = CpuMeter(server_pid)
        send_ping()
        finished = gen.pump(lambda: rounds["done"] >= warmup + k, deadline, timer=chat_timer)
        cpu = meter.shares()
        errors, hangups = sum(c.errors for c in conns), gen.hangups
    if len(rtts_ns) < 2:
        raise LoadError(f"only {len(rtts_ns)} round trips finished before the deadline")
    micros = [t / 1000 for t in rtts_ns]
    cuts = statistics.quantiles(micros, n=100, method="inclusive")
    return {
        "n": n,
        "k": len(micros),
        "p50_us": round(cuts[49], 1),
        "p95_us": round(cuts[94], 1),
        "p99_us": round(cuts[98], 1),
        "max_us": round(max(micros), 1),
        "chatter_msgs": chat["count"],
        "errors": errors,
        "hangups": hangups,
        "timed_out": not finished,
        **cpu,
    }


def churn(
    address: tuple[str, int],
    k: int,
    *,
    parallel: int = 4,
    timeout: float = 60.0,
    server_pid: int | None = None,
) -> dict:
    """Connect, register and disconnect K times, ``parallel`` sessions at a time.

    ``sessions_per_s`` is K divided by the time they took. Then a fresh client asks
    ``%server%who`` until it is alone: ``empty_after_ms`` is how long after the last session
    the server had forgotten every one of them (``back_to_empty`` False if it never did).
    """
    deadline = time.monotonic() + timeout
    with LoadGenerator(address) as gen:
        meter = CpuMeter(server_pid)
        start = time.perf_counter()
        gen.open((f"churn{i}" for i in range(k)), deadline=deadline, parallel=parallel, on_ready=gen.close)
        elapsed = time.perf_counter() - start
        cpu = meter.shares()
        empty_after, names = gen.who_until_alone("churnprobe", min(deadline, time.monotonic() + 10.0))
    return {
        "k": k,
        "parallel": parallel,
        "seconds": round(elapsed, 4),
        "sessions_per_s": round(k / elapsed, 1),
        "back_to_empty": empty_after is not None,
        "empty_after_ms": round(empty_after * 1000, 1) if empty_after is not None else None,
        "who_at_end": names[:10],
        **cpu,
    }


def capacity(
    address: tuple[str, int], n: int, *, server_pid: int, timeout: float = 120.0, parallel: int = 100
) -> dict:
    """N idle registered clients: the server's memory and threads before and with them.

    ``kib_per_client`` is the growth of the server's resident memory (RSS) divided by N,
    measured once every "joined" notice has been delivered. Then all N leave at once and a
    fresh client asks ``%server%who`` until it is alone: ``empty_after_s``.
    """
    deadline = time.monotonic() + timeout
    raise_fd_limit(n + 64)
    before = process_status(server_pid)
    with LoadGenerator(address) as gen:
        meter = CpuMeter(server_pid)
        start = time.monotonic()
        try:
            conns = gen.open((f"idle{i}" for i in range(n)), deadline=deadline, parallel=parallel)
            gen.settle(conns, deadline)
        except LoadError as exc:  # say how far it got
            status = process_status(server_pid)
            raise LoadError(
                f"{exc} after {time.monotonic() - start:.1f} s; the server had "
                f"{status['threads']} threads and {status['rss_kib'] // 1024} MiB"
            ) from exc
        setup = time.monotonic() - start
        cpu = meter.shares()  # while registering
        gen.pump(lambda: False, min(deadline, time.monotonic() + 0.2))  # let the server rest
        with_clients = process_status(server_pid)
        hangups, errors = gen.hangups, sum(c.errors for c in conns)
        for conn in conns:
            gen.close(conn)
        empty_after, names = gen.who_until_alone("capprobe", deadline)
    after = process_status(server_pid)
    return {
        "n": n,
        "rss_before_kib": before["rss_kib"],
        "rss_with_kib": with_clients["rss_kib"],
        "rss_after_kib": after["rss_kib"],
        "kib_per_client": round((with_clients["rss_kib"] - before["rss_kib"]) / n, 2),
        "threads_before": before["threads"],
        "threads_with": with_clients["threads"],
        "threads_after": after["threads"],
        "setup_s": round(setup, 3),
        "back_to_empty": empty_after is not None,
        "empty_after_s": round(empty_after, 3) if empty_after is not None else None,
        "who_at_end": names[:10],
        "errors": errors,
        "hangups": hangups,
        **cpu,
    }
