"""Benchmark chatlab's server models against each other, and print what was measured.

Usage::

    python benchmarks/run.py                      # every model that exists, default sizes
    python benchmarks/run.py --models threads --quick --repeat 1
    python benchmarks/run.py --peer mine="python my_server.py --port {port}"

Every cell (one scenario, one size, one server, one repeat) gets a fresh server process,
``python -m chatlab.server --model MODEL --port 0 --quiet``, so no cell inherits another's
threads or memory. Peers are servers from outside the kit, measured the same way as
yardsticks: any command with ``{port}`` in it (``--peer NAME=COMMAND``), and by default the
two in ``../shared/peers/`` when that folder exists. The load generator (``loadgen.py``)
runs in this process. Where the machine has two cores or more, the server and the generator
are pinned to different ones (Linux and Windows; macOS cannot pin a process). Before the first
cell the runner waits (a bounded time) for the load average to drop, and the report says
whether the machine was quiet. Each cell runs
``--repeat`` times, interleaving the servers, and the table shows medians, with each server's
ratio to the ``asyncio-peer`` (without it, to ``asyncio``, else to the first model). Results go
to ``benchmarks/results/bench-TIME.json`` and ``.png``.

From a notebook, call :func:`run_benchmarks` (it runs in the caller's thread, prints
nothing unless given ``progress=print``, and returns the results as a dict).

The figures about a process (memory, threads, CPU time, the port it listens on) come from
psutil, which asks the operating system: ``/proc`` on Linux, other calls on macOS and Windows.
What a system cannot do is left out and said so (``meta["not_on_this_system"]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from chatlab.portable import stop_process

try:
    import resource  # limits on open files: Linux and macOS; Windows has no such limit
except ImportError:
    resource = None  # type: ignore[assignment]

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loadgen.py sits next to this file
import loadgen  # noqa: E402

HOST = loadgen.HOST
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = ("threads", "selectors", "asyncio")
BASELINE_MODEL = "asyncio"
# Independent servers beside the project (``../shared/peers/``; in CI, ``shared/peers`` next to
# the clone). Not part of the kit: yardsticks, run only when the folder is there.
PEERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "peers"
BASELINE_PEER = "asyncio-peer"
SCENARIOS = ("ring", "ring1", "latency", "churn", "capacity")
RING_SCENARIOS = ("ring", "ring1")
DEFAULT_WINDOW = 16  # ring: messages each sender keeps in flight (--window)
RING1_WINDOW = 1  # ring1: one message at a time per sender, as people chat
DEFAULT_SIZES = {
    "ring": [5, 50, 200, 1000],
    "ring1": [5, 200, 1000],
    "latency": [5, 200],
    "churn": [2000],
    "capacity": [1000, 5000],
}
QUICK_SIZES = {"ring": [3, 10], "ring1": [3, 10], "latency": [3, 10], "churn": [40], "capacity": [20]}
RING_SECONDS = 2.0  # how long a ring cell should take; M is chosen from a calibration run
QUICK_RING_MESSAGES = 20
LATENCY_ROUND_TRIPS = 2000
QUICK_LATENCY_ROUND_TRIPS = 50
SERVER_START_TIMEOUT = 15.0
SERVER_STOP_TIMEOUT = 15.0
SUMMED = {"lost", "duplicated", "reordered", "misdelivered", "errors", "hangups", "left_notices"}


# --- a server process ------------------------------------------------------------------------


# The readiness line: the kit prints "listening on 127.0.0.1:5050", the peers "listening on port 5050".
LISTENING = re.compile(r"listening on (?:[\d.]+:|port )(\d+)")


class ServerStartError(RuntimeError):
    """The server process exited, or never listened, within the start timeout."""


def _read(file) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


@dataclass
class ServerProcess:
    """One server child process (a kit model or a peer) and the files its output goes to.

    Its output goes to temporary files, not pipes: a pipe nobody reads fills up and freezes
    the server at its next warning. Standard output holds the readiness line; whatever the
    server writes to standard error (with ``--quiet``, the kit logs only warnings and errors
    there) counts as a problem and is kept with the result.
    """

    name: str
    process: subprocess.Popen
    stdout: object  # binary temporary files
    stderr: object
    port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def log_text(self) -> str:
        return _read(self.stdout) + _read(self.stderr)

    def stop(self) -> dict:
        """Stop the server with ``chatlab.portable.stop_process`` (``terminate()``, then ``kill()``
        if it hangs): on Linux and macOS SIGTERM, which chatlab's CLI turns into a clean stop (exit
        status 0); on Windows ``terminate()`` ends the process at once.

        Returns the exit code, whether it stopped in time, and the lines the server wrote to
        standard error (the readiness line aside).
        """
        started = time.monotonic()
        stop_process(self.process, SERVER_STOP_TIMEOUT)
        in_time = time.monotonic() - started < SERVER_STOP_TIMEOUT
        problems = [
            line for line in _read(self.stderr).splitlines() if line.strip() and not LISTENING.search(line)
        ]
        self.stdout.close()
        self.stderr.close()
        return {
            "server_exit": self.process.returncode,
            "server_stopped_in_time": in_time,
            "server_warnings": len(problems),
            "server_log": problems[:5],
        }


def listening_port(pid: int) -> int | None:
    """The port of an IPv4 TCP socket that process ``pid`` listens on, as ``ss -ltnp`` shows it.

    For a server that does not print a "listening on" line. psutil finds the process's sockets
    in state LISTEN (on Linux from ``/proc``; on macOS and Windows with their own calls).
    """
    try:
        process = psutil.Process(pid)
        connections = (
            process.net_connections(kind="tcp4")
            if hasattr(process, "net_connections")
            else process.connections(kind="tcp4")
        )  # psutil before 6.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN:
            return connection.laddr.port
    return None


# --- pinning to CPUs: what differs by system ------------------------------------------------------
#
# Linux pins each thread (``os.sched_setaffinity``), so every thread of the server is pinned, and
# new ones inherit it from the thread that starts them. Windows pins a whole process (psutil's
# ``cpu_affinity``, the process's affinity mask), all its threads at once. macOS has no call for
# it: nothing is pinned there, and the results say so.

PER_THREAD_PINNING = hasattr(os, "sched_setaffinity")  # Linux
CAN_PIN = PER_THREAD_PINNING or hasattr(psutil.Process, "cpu_affinity")  # Linux, Windows (not macOS)
CANNOT_PIN = "this system cannot pin a process to a CPU (macOS): the server and the generator share the CPUs"


def allowed_cpus() -> list[int] | None:
    """The CPUs this process may run on, or None if this system cannot tell or pin (macOS)."""
    if PER_THREAD_PINNING:
        return sorted(os.sched_getaffinity(0))
    if CAN_PIN:
        return sorted(psutil.Process().cpu_affinity())
    return None


def pin_self(cpus: Sequence[int]) -> None:
    """Let this thread (Windows: this process) run on ``cpus`` only; a no-op where it cannot pin."""
    if PER_THREAD_PINNING:
        os.sched_setaffinity(0, set(cpus))
    elif CAN_PIN:
        psutil.Process().cpu_affinity(list(cpus))


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of process ``pid`` (new threads inherit it) to one CPU; a no-op where it
    cannot pin."""
    if PER_THREAD_PINNING:
        try:
            threads = psutil.Process(pid).threads()
        except psutil.NoSuchProcess:
            return
        for thread in threads:
            try:
                os.sched_setaffinity(thread.id, {cpu})
            except (ProcessLookupError, OSError):
                pass  # that thread has just ended
    elif CAN_PIN:
        try:
            psutil.Process(pid).cpu_affinity([cpu])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def set_fd_limit(pid: int, soft: int) -> None:
    """Set the soft limit on open files of process ``pid`` (a child just started) to ``soft``.

    Only Linux can set another process's limit (``resource.prlimit``). Elsewhere nothing is
    done: on macOS the child inherited this process's limit, which :func:`loadgen.raise_fd_limit`
    raised just before it started; Windows has no limit on open sockets per process.
    """
    if resource is not None and hasattr(resource, "prlimit"):
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def not_on_this_system() -> list[str]:
    """What the benchmark leaves out on this system, one sentence each (none on Linux)."""
    missing = []
    if not CAN_PIN:
        missing.append(CANNOT_PIN)
    if not hasattr(os, "getloadavg"):
        missing.append(
            "this system has no load average (Windows): psutil estimates one from its first call on, "
            "so the wait for a quiet machine sees 0 at first"
        )
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def accepts(port: int) -> bool:
    """Whether something on 127.0.0.1 accepts a connection on ``port`` (the probe closes at once)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def server_argv(
    name: str, command: str | None, *, port: int, max_clients: int, extra_args: Sequence[str] = ()
) -> list[str]:
    """The command line of a kit model (``command`` None) or of a peer (its command, with
    ``{port}`` and ``{max_clients}`` filled in; run as is, without a shell, so its pid is the
    server's own)."""
    if command is None:
        return [
            sys.executable,
            "-m",
            "chatlab.server",
            "--model",
            name,
            "--host",
            HOST,
            "--port",
            str(port),
            "--max-clients",
            str(max_clients),
            "--quiet",
            *extra_args,
        ]
    return shlex.split(command.replace("{port}", str(port)).replace("{max_clients}", str(max_clients)))


def start_server(
    name: str,
    *,
    max_clients: int,
    command: str | None = None,
    cpu: int | None = None,
    fd_limit: int | None = None,
    extra_args: Sequence[str] = (),
) -> ServerProcess:
    """Start a server on 127.0.0.1 and return once it listens.

    ``name`` is a kit model (``python -m chatlab.server --model NAME --port 0``) unless
    ``command`` is given: a peer's command line, run with a free port in place of ``{port}``.
    The server is ready when it prints its "listening on" line, or psutil shows it listening,
    or (a peer) its port accepts a connection; at most SERVER_START_TIMEOUT seconds.

    The file-descriptor limit and the CPU are set from here right after the start
    (:func:`set_fd_limit`, :func:`pin`; each only where the system can) rather than in a
    ``preexec_fn``, which is unsafe in a process with threads, such as a Jupyter kernel, and
    does not exist on Windows. Raises :class:`ServerStartError`.
    """
    given_port = free_port() if command is not None else 0
    try:
        argv = server_argv(name, command, port=given_port, max_clients=max_clients, extra_args=extra_args)
    except ValueError as exc:  # shlex: unbalanced quotes
        raise ServerStartError(f"{name!r}: cannot read the command {command!r}: {exc}") from None
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    except OSError as exc:  # no such program
        stdout.close()
        stderr.close()
        raise ServerStartError(f"{name!r}: cannot run {argv[0]!r}: {exc}") from None
    server = ServerProcess(name, process, stdout, stderr)
    try:
        if fd_limit is not None:
            set_fd_limit(process.pid, fd_limit)
        if cpu is not None:
            pin(process.pid, cpu)
    except (ProcessLookupError, OSError):
        pass  # it exited already; the loop below says why
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = server.log_text().strip().splitlines()
            server.stop()
            raise ServerStartError(
                f"{name!r}: the server exited ({process.returncode}): " + (text[-1] if text else "no output")
            )
        logged = LISTENING.search(server.log_text())
        port = int(logged.group(1)) if logged else listening_port(process.pid)
        if not port and given_port and accepts(given_port):
            port = given_port  # a peer that says nothing and listens in a child of its own
        if port:
            server.port = port
            if cpu is not None:
                pin(process.pid, cpu)  # again, for threads started meanwhile
            return server
        time.sleep(0.02)
    server.stop()
    raise ServerStartError(f"{name!r}: not listening after {SERVER_START_TIMEOUT} s")


# --- the machine -------------------------------------------------------------------------------


def wait_for_quiet(threshold: float, max_wait: float, progress: Callable[[str], None]) -> dict:
    """Wait until the 1-minute load average is below ``threshold``, at most ``max_wait`` s."""
    first = load = psutil.getloadavg()[0]
    start = time.monotonic()
    if load >= threshold and max_wait > 0:
        progress(
            f"load average {load:.2f} >= {threshold}: waiting up to {max_wait:.0f} s for a quiet machine"
        )
    while load >= threshold and time.monotonic() - start < max_wait:
        time.sleep(min(5.0, max(0.0, max_wait - (time.monotonic() - start))))
        load = psutil.getloadavg()[0]
    quiet = load < threshold
    if not quiet:
        progress(f"the machine is not quiet (load average {load:.2f}); measuring anyway")
    return {
        "threshold": threshold,
        "load_at_start": round(first, 2),
        "load_when_started": round(load, 2),
        "waited_s": round(time.monotonic() - start, 1),
        "quiet": quiet,
    }


def plan_cpus(want: bool) -> dict:
    """Which CPU the server gets and which the generator gets (different ones), if possible."""
    cpus = allowed_cpus()
    if cpus is None:  # macOS
        return {
            "pinned": False,
            "why_not": "not asked" if not want else CANNOT_PIN,
            "cpus": psutil.cpu_count() or 1,
        }
    if want and len(cpus) >= 2:
        return {"pinned": True, "server_cpu": cpus[-1], "loadgen_cpu": cpus[0], "cpus": len(cpus)}
    reason = "not asked" if not want else f"only {len(cpus)} CPU available"
    return {"pinned": False, "why_not": reason, "cpus": len(cpus)}


# --- cells ----------------------------------------------------------------------------------------


def time_budget(scenario: str, size: int) -> float:
    """The longest one run of a cell may take (registering N clients grows with N, and
    every join is announced to everyone online, so with N squared for some models)."""
    return 60.0 + size * (0.05 if scenario == "churn" else 0.1)


def _fd_needed(scenario: str, size: int) -> int:
    return 64 if scenario == "churn" else size + 64


def run_cell(
    scenario: str, size: int, model: str, params: dict, cpus: dict, command: str | None = None
) -> dict:
    """Run one scenario once against a fresh server (a kit ``model``, or a peer's ``command``);
    never raises for a failed run."""
    needed = _fd_needed(scenario, size)
    try:
        loadgen.raise_fd_limit(needed)
    except loadgen.LoadError as exc:
        return {"error": f"skipped: {exc}"}
    try:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if resource is not None else None
        server = start_server(
            model,
            max_clients=size + 16 if scenario != "churn" else 64,
            command=command,
            cpu=cpus.get("server_cpu"),
            fd_limit=fd_limit,
        )
    except ServerStartError as exc:
        return {"error": str(exc)}
    try:
        timeout = params.get("timeout") or time_budget(scenario, size)
        if scenario in RING_SCENARIOS:
            result = loadgen.ring(
                server.address,
                size,
                params["m"],
                window=params["window"],
                timeout=timeout,
                server_pid=server.pid,
            )
        elif scenario == "latency":
            result = loadgen.latency(
                server.address, size, params["k"], timeout=timeout, server_pid=server.pid
            )
        elif scenario == "churn":
            result = loadgen.churn(server.address, size, timeout=timeout, server_pid=server.pid)
        else:
            result = loadgen.capacity(server.address, size, timeout=timeout, server_pid=server.pid)
    except (loadgen.LoadError, OSError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result.update(server.stop())
    return result


def calibrate_ring(model: str, n: int, window: int, cpus: dict, command: str | None = None) -> int:
    """M for a ring of N clients with ``window`` so that a cell takes about RING_SECONDS (from a
    short run)."""
    trial = run_cell("ring", n, model, {"m": max(10, 4000 // n), "window": window}, cpus, command)
    rate = trial.get("msgs_per_s")
    if not rate:
        return max(10, 4000 // n)
    return int(min(200_000, max(10, round(RING_SECONDS * rate / n, -1))))


def summarize(runs: list[dict]) -> dict:
    """Medians of the numbers, sums of the fault counts, and() of the yes/no answers."""
    ok = [run for run in runs if "error" not in run]
    summary: dict = {"runs": len(runs), "runs_ok": len(ok)}
    failures = [run["error"] for run in runs if "error" in run]
    if failures:
        summary["failures"] = failures
    keys = dict.fromkeys(key for run in ok for key in run)
    for key in keys:
        values = [run[key] for run in ok if run.get(key) is not None]
        if not values:
            summary[key] = None
        elif all(isinstance(v, bool) for v in values):
            summary[key] = all(values)
        elif all(isinstance(v, (int, float)) for v in values):
            summary[key] = sum(values) if key in SUMMED else round(statistics.median(values), 3)
        else:
            summary[key] = values[-1]
    return summary


# --- the table and the plots ----------------------------------------------------------------------

# (scenarios, key in the summary, what the row shows, how to format it); the two rings share
# their rows, so that a window of W and a window of 1 sit next to each other.
ROWS = [
    (RING_SCENARIOS, "msgs_per_s", "messages/s (higher is better)", "{:,.0f}"),
    (RING_SCENARIOS, "faults", "lost/duplicated/reordered/misdelivered", None),
    (RING_SCENARIOS, "server_cpu", "server CPU (cores busy)", "{:.2f}"),
    (RING_SCENARIOS, "loadgen_cpu", "load generator CPU (cores busy)", "{:.2f}"),
    (("latency",), "p50_us", "round trip p50 (µs)", "{:,.0f}"),
    (("latency",), "p95_us", "round trip p95 (µs)", "{:,.0f}"),
    (("latency",), "p99_us", "round trip p99 (µs)", "{:,.0f}"),
    (("churn",), "sessions_per_s", "connect+register+leave per s (higher is better)", "{:,.0f}"),
    (("churn",), "empty_after_ms", "who-list back to empty after (ms)", "{:,.1f}"),
    (("capacity",), "kib_per_client", "server memory per idle client (KiB)", "{:,.1f}"),
    (("capacity",), "threads_with", "server threads with N clients", "{:,.0f}"),
    (("capacity",), "setup_s", "time to register N clients (s)", "{:,.2f}"),
    (("capacity",), "empty_after_s", "who-list back to empty after all leave (s)", "{:,.2f}"),
]


def baseline_of(servers: Sequence[str]) -> str:
    """What the ratios divide by: the asyncio peer if it ran, else asyncio, else the first."""
    for baseline in (BASELINE_PEER, BASELINE_MODEL):
        if baseline in servers:
            return baseline
    return servers[0]


def _size_label(cell: dict) -> str:
    letter = "K" if cell["scenario"] == "churn" else "N"
    label = f"{letter}={cell['size']}"
    if cell["scenario"] in RING_SCENARIOS:
        label += f", W={cell['params']['window']}, M={cell['params']['m']}"
    return label


def _value(summary: dict, key: str, fmt: str | None) -> tuple[str, float | None]:
    if summary.get("runs_ok", 0) == 0:
        failures = summary.get("failures") or ["failed"]
        return ("skipped" if failures[0].startswith("skipped") else "failed"), None
    if key == "faults":
        counts = [summary.get(k) or 0 for k in ("lost", "duplicated", "reordered", "misdelivered")]
        return "/".join(str(c) for c in counts), None
    value = summary.get(key)
    if value is None:
        return "-", None
    return fmt.format(value), float(value)


def markdown_table(cells: list[dict], servers: Sequence[str]) -> str:
    """One row per (scenario, size, metric), one column per server (kit models, then peers),
    then each one's ratio to the baseline (:func:`baseline_of`)."""
    baseline = baseline_of(servers)
    others = [m for m in servers if m != baseline]
    header = ["scenario", "size", "metric", *servers, *(f"{m}/{baseline}" for m in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(c["scenario"], c["size"], c["model"]): c for c in cells}
    sizes = list(dict.fromkeys((c["scenario"], c["size"]) for c in cells))
    for scenarios, key, label, fmt in ROWS:
        for scenario, size in sizes:
            if scenario not in scenarios:
                continue
            shown, numbers = [], {}
            for model in servers:
                cell = by_key.get((scenario, size, model))
                text, number = _value(cell["summary"], key, fmt) if cell else ("-", None)
                shown.append(text)
                numbers[model] = number
            ratios = []
            for model in others:
                a, b = numbers.get(model), numbers.get(baseline)
                ratios.append(f"{a / b:.2f}" if a is not None and b else "-")
            first = next(by_key[(scenario, size, m)] for m in servers if (scenario, size, m) in by_key)
            lines.append("| " + " | ".join([scenario, _size_label(first), label, *shown, *ratios]) + " |")
    return "\n".join(lines)


def draw_plots(results: dict, path: Path) -> str:
    """Four small charts in one PNG; returns a message (matplotlib is optional)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone
    except ImportError:
        return "matplotlib is not installed: no plots"
    servers, cells = results["meta"]["servers"], results["cells"]

    def series(scenario: str, key: str, model: str) -> tuple[list[int], list[float]]:
        points = [
            (c["size"], c["summary"].get(key))
            for c in cells
            if c["scenario"] == scenario and c["model"] == model
        ]
        points = [(size, value) for size, value in points if value is not None]
        return [p[0] for p in points], [p[1] for p in points]

    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2)
    window = results["meta"]["window"]
    # (axes, the solid line's (scenario, key), the dashed line's or None, title)
    charts = [
        (
            axes[0][0],
            ("ring", "msgs_per_s"),
            ("ring1", "msgs_per_s"),
            f"ring: messages/s, W={window} solid, W={RING1_WINDOW} dashed",
        ),
        (
            axes[0][1],
            ("latency", "p99_us"),
            ("latency", "p50_us"),
            "latency: round trip (µs), p99 solid, p50 dashed",
        ),
        (axes[1][0], ("capacity", "kib_per_client"), None, "capacity: server KiB per idle client"),
        (axes[1][1], ("capacity", "threads_with"), None, "capacity: server threads with N clients"),
    ]
    for ax, solid, dashed, title in charts:
        sizes: set[int] = set()
        for server in servers:
            color = None
            for style, which in (("-", solid), ("--", dashed)):
                xs, ys = series(*which, server) if which else ([], [])
                if not xs:
                    continue
                sizes.update(xs)
                (line,) = ax.plot(
                    xs, ys, marker="o", linestyle=style, color=color, label=None if color else server
                )
                color = line.get_color()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("N clients")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sorted(sizes), labels=[str(size) for size in sorted(sizes)])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    figure.suptitle(
        f"chatlab server models and peers ({results['meta']['date']}, medians of {results['meta']['repeat']})"
    )
    figure.savefig(path, dpi=100)
    return f"plots: {path}"


# --- the whole run ------------------------------------------------------------------------------------


def default_peers(folder: Path = PEERS_DIR) -> dict[str, str]:
    """The two independent servers in ``folder`` as peers, or none if the folder is not there.

    Each prints "listening on port P", listens on 127.0.0.1 and stops on SIGTERM. The
    selectors peer is held to the same client limit as the kit's servers.
    """
    if not folder.is_dir():
        return {}
    python = shlex.quote(sys.executable)
    return {
        "asyncio-peer": f"{python} {shlex.quote(str(folder / 'asyncio_peer.py'))} --port {{port}}",
        "selectors-peer": f"{python} {shlex.quote(str(folder / 'selectors_peer.py'))} --port {{port}} "
        "--max-clients {max_clients}",
    }


def run_benchmarks(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    peers: Mapping[str, str] | None = None,
    window: int = DEFAULT_WINDOW,
    quick: bool = False,
    repeat: int = 3,
    scenarios: Sequence[str] = SCENARIOS,
    sizes: dict[str, list[int]] | None = None,
    ring_messages: int | None = None,
    latency_round_trips: int | None = None,
    out: str | Path | None = RESULTS_DIR,
    plots: bool = True,
    pin_cpus: bool = True,
    load_threshold: float = 1.0,
    max_wait: float | None = None,
    capacity_timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run every scenario at every size against every model and peer, ``repeat`` times, in this thread.

    ``peers`` maps a name (its column) to a server command with ``{port}`` in it (and, if it
    wants, ``{max_clients}``), measured exactly like the models; :func:`default_peers` gives
    the two in ``PEERS_DIR``. None (the default here; the command line's default is
    ``default_peers()``) measures no peer. ``window`` is how many messages each ring sender
    keeps in flight; ``ring1`` always uses 1.
    ``quick`` uses tiny sizes (seconds in all) and does not wait for a quiet machine.
    ``sizes`` overrides the sizes per scenario, e.g. ``{"ring": [5, 50]}``; ``ring_messages``
    fixes M (else it is calibrated so a ring cell takes about RING_SECONDS). A run that
    takes longer than its budget (:func:`time_budget`, or ``capacity_timeout`` for capacity)
    fails, and that cell is not run again in later rounds. Models and peers whose
    server does not start are left out, and said so. Writes ``bench-TIME.json`` (and ``.png``)
    into ``out`` unless it is None. Returns ``{"meta", "cells", "table", ...}``.

    Resource handling: every server process is stopped before the next cell starts; this
    thread's CPU affinity (on Windows, this process's) is restored on return.
    """
    say = progress or (lambda text: None)
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    if window < 1:
        raise ValueError("window must be at least 1")
    peers = dict(peers or {})
    for name, command in peers.items():
        if name in models:
            raise ValueError(f"peer {name!r} has the name of a model")
        if "{port}" not in command:
            raise ValueError(f"peer {name!r}: its command must contain {{port}}: {command!r}")
    commands: dict[str, str | None] = {**dict.fromkeys(models), **peers}  # None: a kit model
    plan = {
        name: list((sizes or {}).get(name) or (QUICK_SIZES if quick else DEFAULT_SIZES)[name])
        for name in scenarios
    }
    quiet = wait_for_quiet(
        load_threshold, 0.0 if quick and max_wait is None else (120.0 if max_wait is None else max_wait), say
    )
    cpus = plan_cpus(pin_cpus)
    say(
        "pinned: server on CPU {server_cpu}, load generator on CPU {loadgen_cpu}".format(**cpus)
        if cpus["pinned"]
        else f"not pinned ({cpus['why_not']})"
    )
    own_affinity = allowed_cpus()
    if cpus["pinned"]:
        pin_self([cpus["loadgen_cpu"]])
    try:
        available, missing = [], {}
        for name, command in commands.items():
            try:
                start_server(name, max_clients=4, command=command).stop()
                available.append(name)
            except ServerStartError as exc:
                missing[name] = str(exc)
                say(f"skipping {'model' if command is None else 'peer'} {name!r}: {exc}")
        if not available:
            raise ServerStartError("no server could be started: " + "; ".join(missing.values()))

        cells: dict[tuple[str, int, str], dict] = {}
        for scenario, scenario_sizes in plan.items():
            for size in scenario_sizes:
                params: dict = {}
                if scenario in RING_SCENARIOS:
                    params["window"] = window if scenario == "ring" else RING1_WINDOW
                    m = ring_messages or (QUICK_RING_MESSAGES if quick else None)
                    if m is None:
                        first = available[0]
                        m = calibrate_ring(first, size, params["window"], cpus, commands[first])
                        say(f"{scenario} N={size}, W={params['window']}: M={m} (calibrated on {first})")
                    params["m"] = m
                elif scenario == "latency":
                    params["k"] = latency_round_trips or (
                        QUICK_LATENCY_ROUND_TRIPS if quick else LATENCY_ROUND_TRIPS
                    )
                elif scenario == "capacity" and capacity_timeout:
                    params["timeout"] = capacity_timeout
                for name in available:
                    cells[(scenario, size, name)] = {
                        "scenario": scenario,
                        "size": size,
                        "model": name,
                        "kind": "model" if commands[name] is None else "peer",
                        "params": params,
                        "runs": [],
                    }
        for round_number in range(1, repeat + 1):  # the servers take turns inside every round
            for cell in cells.values():
                if any("timed out" in run.get("error", "") for run in cell["runs"]):
                    run = {"error": "skipped: an earlier round timed out"}  # keep the run bounded
                else:
                    run = run_cell(
                        cell["scenario"],
                        cell["size"],
                        cell["model"],
                        cell["params"],
                        cpus,
                        commands[cell["model"]],
                    )
                cell["runs"].append(run)
                say(
                    f"[{round_number}/{repeat}] {cell['model']:>14} {cell['scenario']:>8} "
                    f"{cell['size']:>5}: {_brief(run)}"
                )
    finally:
        if own_affinity is not None:
            pin_self(own_affinity)

    for cell in cells.values():
        cell["summary"] = summarize(cell["runs"])
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "models": [name for name in available if name in models],
        "models_missing": {name: why for name, why in missing.items() if name in models},
        "peers": {name: peers[name] for name in available if name in peers},
        "peers_missing": {name: why for name, why in missing.items() if name in peers},
        "servers": available,
        "baseline": baseline_of(available),
        "window": window,
        "ring1_window": RING1_WINDOW,
        "repeat": repeat,
        "quick": quick,
        "sizes": plan,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": cpus,
        "quiet": quiet,
        "load_at_end": round(psutil.getloadavg()[0], 2),
        "not_on_this_system": not_on_this_system(),
    }
    results = {"meta": meta, "cells": list(cells.values())}
    results["table"] = markdown_table(results["cells"], available)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        results["json_path"] = str(out / f"bench-{stamp}.json")
        if plots:
            results["plots"] = draw_plots(results, out / f"bench-{stamp}.png")
            say(results["plots"])
        Path(results["json_path"]).write_text(json.dumps(results, indent=1) + "\n")
        say(f"results: {results['json_path']}")
    return results


def _brief(run: dict) -> str:
    """One line about one run, for the progress log."""
    if "error" in run:
        return run["error"]
    keys = (
        "msgs_per_s",
        "lost",
        "p50_us",
        "p99_us",
        "sessions_per_s",
        "kib_per_client",
        "threads_with",
        "empty_after_ms",
        "empty_after_s",
        "server_cpu",
        "loadgen_cpu",
    )
    return ", ".join(f"{k}={run[k]}" for k in keys if k in run)


def notes(results: dict) -> str:
    """The lines under the table: how the numbers were taken."""
    meta = results["meta"]
    cpus, quiet = meta["cpus"], meta["quiet"]
    pinned = (
        f"server pinned to CPU {cpus['server_cpu']}, load generator to CPU {cpus['loadgen_cpu']}"
        if cpus["pinned"]
        else f"not pinned ({cpus['why_not']})"
    )
    calm = ("quiet" if quiet["quiet"] else "NOT quiet") + (
        f" (1-min load {quiet['load_when_started']} at the start, threshold {quiet['threshold']}, "
        f"{meta['load_at_end']} at the end)"
    )
    lines = [
        f"Medians of {meta['repeat']} runs; Python {meta['python']}, {cpus['cpus']} CPUs; {pinned}; "
        f"machine {calm}; ratios are server/{meta['baseline']}."
    ]
    if meta["peers"]:
        lines.append(
            "Peers, independent servers that are not part of the kit (their commands are in the JSON): "
            + ", ".join(meta["peers"])
            + "."
        )
    rings = [name for name in RING_SCENARIOS if name in meta["sizes"]]
    if rings:
        windows = {
            "ring": f"ring: W={meta['window']}",
            "ring1": f"ring1: W={meta['ring1_window']}, as people chat",
        }
        lines.append(
            "window W: each sender keeps W messages in flight before waiting for them to arrive ("
            + "; ".join(windows[name] for name in rings)
            + ")."
        )
    lines += [f"Not on this system: {note}." for note in meta.get("not_on_this_system", [])]
    missing = {**meta["models_missing"], **meta["peers_missing"]}
    if missing:
        lines.append(
            "Not measured: "
            + ", ".join(missing)
            + " (their server did not start: see models_missing and peers_missing in the JSON)."
        )
    for cell in results["cells"]:
        summary = cell["summary"]
        trouble = [
            f"{k}={summary[k]}"
            for k in ("duplicated", "reordered", "misdelivered", "lost", "errors", "hangups")
            if summary.get(k)
        ]
        if summary.get("server_warnings"):
            first = (summary.get("server_log") or [""])[0]
            trouble.append(f"{summary['server_warnings']} server warnings, e.g. {first!r}")
        if summary.get("back_to_empty") is False:
            trouble.append("never back to empty")
        if summary.get("server_stopped_in_time") is False:
            trouble.append(
                f"the server did not stop within {SERVER_STOP_TIMEOUT:.0f} s of SIGTERM and was killed"
            )
        trouble += summary.get("failures", [])
        if trouble:
            lines.append(
                f"{cell['model']} {cell['scenario']} {_size_label(cell)}: " + "; ".join(map(str, trouble))
            )
    return "\n".join(lines)


def _sizes_option(text: str) -> tuple[str, list[int]]:
    scenario, _, numbers = text.partition("=")
    if scenario not in SCENARIOS or not numbers:
        raise argparse.ArgumentTypeError(f"expected SCENARIO=N[,N...] with SCENARIO one of {SCENARIOS}")
    return scenario, [int(n) for n in numbers.split(",")]


def _peer_option(text: str) -> tuple[str, str]:
    name, _, command = text.partition("=")
    if not name or "{port}" not in command:
        raise argparse.ArgumentTypeError("expected NAME=COMMAND with {port} in the command")
    return name, command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark chatlab's server models, with independent peers as yardsticks."
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated models (default: %(default)s; missing ones are skipped)",
    )
    parser.add_argument(
        "--peer",
        action="append",
        type=_peer_option,
        default=[],
        metavar="NAME=COMMAND",
        help="a server from outside the kit, measured the same way: a command with {port} "
        "(repeatable; replaces the default peers)",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help=f"measure no peer (default: the two in {PEERS_DIR}, if it exists)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help="ring: messages each sender keeps in flight (default %(default)s; ring1 uses 1)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of a few seconds")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per cell; the table shows medians (default 3)"
    )
    parser.add_argument(
        "--out", default=str(RESULTS_DIR), help="where the JSON and PNG go (default: %(default)s)"
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of %(default)s"
    )
    parser.add_argument(
        "--size",
        action="append",
        type=_sizes_option,
        default=[],
        metavar="SCENARIO=N,N",
        help="sizes for one scenario, e.g. ring=5,50 (repeatable)",
    )
    parser.add_argument("--ring-messages", type=int, help="M for every ring cell (default: calibrated)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and generator to CPUs")
    parser.add_argument(
        "--load-threshold", type=float, default=1.0, help="quiet means a load average below this"
    )
    parser.add_argument(
        "--max-wait", type=float, help="longest wait for a quiet machine, s (default 120; --quick 0)"
    )
    parser.add_argument("--capacity-timeout", type=float, help="longest capacity run, s (default 60 + N/10)")
    args = parser.parse_args(argv)
    if args.peer and args.no_peers:
        parser.error("--peer and --no-peers contradict each other")
    if args.window < 1:
        parser.error("--window must be at least 1")
    peers = dict(args.peer) if args.peer else {} if args.no_peers else default_peers()

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results = run_benchmarks(
        [m for m in args.models.split(",") if m],
        peers=peers,
        window=args.window,
        quick=args.quick,
        repeat=args.repeat,
        scenarios=[s for s in args.scenarios.split(",") if s],
        sizes=dict(args.size) or None,
        ring_messages=args.ring_messages,
        out=args.out,
        plots=not args.no_plots,
        pin_cpus=not args.no_pin,
        load_threshold=args.load_threshold,
        max_wait=args.max_wait,
        capacity_timeout=args.capacity_timeout,
        progress=progress,
    )
    print(results["table"])
    print()
    print(notes(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
