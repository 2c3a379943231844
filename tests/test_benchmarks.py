"""The benchmark runner, smoke-tested with tiny sizes against the threaded server.

What is checked is that the benchmark measures honestly: every ring message arrived once, in
order, at the right client; the server was back to empty after churn and capacity; the
table and the JSON hold every cell. Nothing about speed is asserted (the machine may be busy).
"""

from __future__ import annotations

import importlib.util
import json
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


def table_rows(table: str) -> list[list[str]]:
    """The cells of a markdown table, header first, the |---| line left out."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    assert set(table.splitlines()[1]) <= set("|-"), table
    return [rows[0], *rows[2:]]


def test_a_quick_run_from_the_command_line_is_complete_and_loses_nothing(bench, tmp_path):
    completed = subprocess.run(
        [sys.executable, str(RUN_PY), "--quick", "--models", "threads", "--repeat", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    (json_file,) = tmp_path.glob("bench-*.json")
    assert json_file.with_suffix(".png").stat().st_size > 0  # matplotlib is in the dev set-up
    results = json.loads(json_file.read_text())
    meta, cells = results["meta"], results["cells"]
    assert meta["models"] == ["threads"] and meta["baseline"] == "threads" and meta["repeat"] == 2

    planned = {(scenario, size) for scenario, sizes in bench.QUICK_SIZES.items() for size in sizes}
    assert {(c["scenario"], c["size"]) for c in cells} == planned
    for cell in cells:
        assert cell["model"] == "threads"
        assert len(cell["runs"]) == 2
        assert [run.get("error") for run in cell["runs"]] == [None, None], cell
        for run in cell["runs"]:
            assert run["server_exit"] == 0 and run["server_stopped_in_time"] is True, run
            assert run["server_warnings"] == 0, run
            if cell["scenario"] == "ring":
                assert run["messages"] == cell["size"] * cell["params"]["m"]
                faults = {k: run[k] for k in ("lost", "duplicated", "reordered", "misdelivered", "hangups", "errors")}
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
        assert cell["summary"]["runs_ok"] == 2

    # The table printed is the one saved; one row per metric and size, one column per model.
    assert completed.stdout.startswith(results["table"])
    rows = table_rows(results["table"])
    assert rows[0] == ["scenario", "size", "metric", "threads"]
    assert all(len(row) == 4 for row in rows)
    faults = [row[3] for row in rows if row[2] == "lost/duplicated/reordered/misdelivered"]
    assert faults == ["0/0/0/0"] * len(bench.QUICK_SIZES["ring"])
    assert {row[0] for row in rows[1:]} == set(bench.SCENARIOS)
    assert "failed" not in results["table"] and "skipped" not in results["table"]


def test_a_model_that_does_not_exist_is_left_out_and_said_so(bench):
    results = bench.run_benchmarks(["nosuchmodel", "threads"], quick=True, repeat=1, scenarios=["ring"],
                                   sizes={"ring": [3]}, out=None, pin_cpus=False)
    assert results["meta"]["models"] == ["threads"]
    assert "invalid choice" in results["meta"]["models_missing"]["nosuchmodel"]
    (cell,) = results["cells"]
    assert cell["summary"]["lost"] == 0 and cell["summary"]["runs_ok"] == 1
    assert "nosuchmodel" not in results["table"]


def test_the_table_gives_every_model_as_a_ratio_to_asyncio(bench):
    def cell(model: str, rate: float, lost: int = 0) -> dict:
        runs = [{"msgs_per_s": rate, "lost": lost, "duplicated": 0, "reordered": 0, "misdelivered": 0}]
        return {"scenario": "ring", "size": 5, "model": model, "params": {"m": 10},
                "runs": runs, "summary": bench.summarize(runs)}

    models = ["threads", "selectors", "asyncio"]
    table = bench.markdown_table([cell("threads", 500.0, lost=2), cell("selectors", 1500.0), cell("asyncio", 1000.0)],
                                 models)
    rows = table_rows(table)
    assert rows[0] == ["scenario", "size", "metric", *models, "threads/asyncio", "selectors/asyncio"]
    assert rows[1] == ["ring", "N=5, M=10", "messages/s (higher is better)", "500", "1,500", "1,000", "0.50", "1.50"]
    assert rows[2][2:6] == ["lost/duplicated/reordered/misdelivered", "2/0/0/0", "0/0/0/0", "0/0/0/0"]


def test_medians_and_sums_over_repeats(bench):
    runs = [{"p50_us": 10.0, "lost": 1, "back_to_empty": True},
            {"p50_us": 30.0, "lost": 0, "back_to_empty": False},
            {"p50_us": 20.0, "lost": 2, "back_to_empty": True},
            {"error": "LoadError: registration timed out"}]
    summary = bench.summarize(runs)
    assert summary["p50_us"] == 20.0 and summary["lost"] == 3 and summary["back_to_empty"] is False
    assert summary["runs"] == 4 and summary["runs_ok"] == 3
    assert summary["failures"] == ["LoadError: registration timed out"]


class FaultyRoom(ChatRoom):
    """A real room that mishandles ring0's messages to ring1 on purpose: it drops "3",
    delivers "5" twice, holds "2" back until after "4", and sends "6" to ring2 instead."""

    def _direct(self, record, to, text):
        if record.name != "ring0":
            return super()._direct(record, to, text)
        if text == "2":
            self.held = (record, to, text)
        elif text == "3":
            pass
        elif text == "6":
            super()._direct(record, "ring2", text)
        else:
            super()._direct(record, to, text)
            if text == "5":
                super()._direct(record, to, text)
            if text == "4":
                super()._direct(*self.held)


def test_the_ring_counts_what_a_faulty_server_gets_wrong(bench):
    server = ChatServer("127.0.0.1", 0)
    server.room = FaultyRoom()
    with server:
        result = bench.loadgen.ring(server.address, 3, 10, timeout=2.0)
    assert result["timed_out"] is True and result["msgs_per_s"] is None
    faults = {k: result[k] for k in ("lost", "duplicated", "reordered", "misdelivered")}
    assert faults == {"lost": 2, "duplicated": 1, "reordered": 1, "misdelivered": 1}


def test_thread_cost_prints_both_figures_for_a_few_threads():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "thread_cost.py"), "--threads", "50",
                             "--cycles", "50"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    memory, start = result.stdout.splitlines()
    assert memory.startswith("memory per idle thread blocked in recv(): ") and memory.endswith("(50 threads)")
    assert float(memory.split(": ")[1].split()[0]) > 0  # a thread costs something
    assert start.startswith("start a thread and join it: ") and start.endswith("µs (median of 5 rounds)")
