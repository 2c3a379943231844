"""The parts of a lesson notebook the tests look at: its tagged cells, the solutions hidden in
its ``<details>`` blocks, and what a cell printed; and a client to run it in a kernel."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from traitlets.config import Config

DETAILS = re.compile(r"<details\b[^>]*>(.*?)</details>", re.S)
PYTHON_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def tagged(notebook: nbformat.NotebookNode, tag: str) -> list[int]:
    """Indexes of the cells that carry `tag`, in order."""
    return [i for i, cell in enumerate(notebook.cells) if tag in cell.metadata.get("tags", [])]


def solutions(notebook: nbformat.NotebookNode) -> list[str]:
    """The ```python blocks inside the lesson's <details> blocks, dedented, in order."""
    blocks = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for details in DETAILS.findall(cell.source):
                for indent, body in PYTHON_BLOCK.findall(details):
                    blocks.append(textwrap.dedent(indent + body).strip())
    return blocks


def text_of(cell: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def notebook_client(notebook: nbformat.NotebookNode, folder: Path, config: Config) -> NotebookClient:
    """A client that runs ``notebook``'s cells in a kernel started in ``folder`` (``config``:
    the ``kernel_config`` fixture); each cell may take 120 s."""
    resources = {"metadata": {"path": str(folder)}}
    return NotebookClient(notebook, timeout=120, kernel_name="python3", resources=resources, config=config)
