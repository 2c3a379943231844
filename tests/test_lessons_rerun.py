"""Every lesson can be run twice in one kernel, as a student re-running cells will, and its
exercises' solutions pass its checks.

nbval and the browser tests run each lesson once, from a fresh kernel. Here each lesson runs
top to bottom, and then again in the same kernel, the second time with every exercise cell
(tagged ``exercise``) replaced by its solution from the lesson's ``<details>`` blocks: no cell
may fail either time (no "address already in use", no name taken by a leftover client), every
check cell (tagged ``check``) must say "✔" the second time, and nothing of the kit is left
running at the end. (The stored notebook, checked by strict nbval, shows the same checks saying
"✘ not yet"; tests/test_exercises.py gives lessons 4-9 wrong answers.)
"""

from pathlib import Path

import nbformat
import pytest
from lesson_parts import notebook_client, solutions, tagged, text_of
from traitlets.config import Config

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
LABS = sorted(NOTEBOOKS.glob("labs/lab[0-9]_*.ipynb"))  # they also stop every "lab-" thread


@pytest.mark.parametrize("path", LESSONS + LABS, ids=[path.stem for path in LESSONS + LABS])
def test_a_lesson_runs_twice_in_one_kernel(path: Path, kernel_config: Config) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = notebook_client(notebook, path.parent, kernel_config)
    code_cells = [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]

    def run_every_code_cell() -> None:
        for index, cell in code_cells:
            client.execute_cell(cell, index)  # raises CellExecutionError if the cell fails

    with client.setup_kernel():
        run_every_code_cell()  # as stored
        # (a lab has no exercise cells: its student writes a file)
        for index, solution in zip(tagged(notebook, "exercise"), solutions(notebook), strict=True):
            notebook.cells[index].source = solution
        run_every_code_cell()  # solved
        probe = nbformat.v4.new_code_cell(
            "import chatlab, threading; print(chatlab.kit_threads()"
            " + sorted(t.name for t in threading.enumerate() if t.name.startswith('lab-')))"
        )
        notebook.cells.append(probe)
        client.execute_cell(probe, len(notebook.cells) - 1)
    for index in tagged(notebook, "check"):
        assert text_of(notebook.cells[index]).startswith("✔"), (
            notebook.cells[index].source[:80],
            text_of(notebook.cells[index]),
        )
    # The kernel may send one print in two pieces ("[]", then "\n"): join them.
    assert "".join(output.get("text", "") for output in probe.outputs) == "[]\n"
