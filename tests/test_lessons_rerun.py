"""Every lesson can be run twice in one kernel, as a student re-running cells will.

nbval and the browser tests run each lesson once, from a fresh kernel. Here each lesson runs
top to bottom, and then again in the same kernel: no cell may fail the second time (no
"address already in use", no name taken by a leftover client), and nothing of the kit is
left running at the end.
"""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from traitlets.config import Config

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
LABS = sorted(NOTEBOOKS.glob("labs/lab[0-9]_*.ipynb"))  # they also stop every "lab-" thread


@pytest.fixture
def tmp_sockets() -> Iterator[str]:
    """A folder with a short path: a Unix socket's path must stay under 104 bytes (macOS)."""
    short = "/tmp" if os.name == "posix" else None
    with tempfile.TemporaryDirectory(prefix="chatlab-kernel-", dir=short) as folder:
        yield folder


@pytest.mark.parametrize("path", LESSONS + LABS, ids=[path.stem for path in LESSONS + LABS])
def test_a_lesson_runs_twice_in_one_kernel(path: Path, tmp_sockets: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    config = Config()
    if os.name == "posix":  # Unix sockets, not TCP ports another test's connection can take first
        config.KernelManager.transport = "ipc"  # (the root conftest.py does the same for nbval)
        config.KernelManager.ip = os.path.join(tmp_sockets, "k")
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        config=config,
    )
    code_cells = [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    with client.setup_kernel():
        for _ in range(2):
            for index, cell in code_cells:
                client.execute_cell(cell, index)  # raises CellExecutionError if the cell fails
        probe = nbformat.v4.new_code_cell(
            "import chatlab, threading; print(chatlab.kit_threads()"
            " + sorted(t.name for t in threading.enumerate() if t.name.startswith('lab-')))"
        )
        notebook.cells.append(probe)
        client.execute_cell(probe, len(notebook.cells) - 1)
    # The kernel may send one print in two pieces ("[]", then "\n"): join them.
    assert "".join(output.get("text", "") for output in probe.outputs) == "[]\n"
