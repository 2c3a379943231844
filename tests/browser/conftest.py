"""Fixtures for the browser tests: one Chromium and one JupyterLab for the whole session.

The lessons are copied (without their stored outputs) into a temporary folder that JupyterLab
serves, next to a small notebook that checks the harness itself. Everything is skipped, with
the reason, when Chromium or Playwright is missing; where CHATLAB_REQUIRE_BROWSER is set (CI
sets it) a missing piece fails the tests instead, so CI can never pass them by skipping.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .lab import JupyterLabServer, NotebookPage, code_cells_to_run, tagged_cell, without_outputs

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
LABS = NOTEBOOKS / "labs"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-sync",
    "--disable-quic",
]
TIMEOUT_MS = 15_000  # any single Playwright action or expectation

# A notebook that must fail in the middle: proves the harness notices errors and stops waiting.
HARNESS_NOTEBOOK = "harness_check.ipynb"
HARNESS_CELLS = [
    'print("first cell ran")',
    'raise ValueError("deliberate failure")',
    'print("never reached")',
]


def missing(reason: str) -> None:
    """Skip on a student's laptop; fail in CI, where the browser tests must run."""
    if os.environ.get("CHATLAB_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (and CHATLAB_REQUIRE_BROWSER is set)")
    pytest.skip(reason)


def lesson_names() -> list[str]:
    return sorted(path.name for path in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def lab_names() -> list[str]:
    """The labs, as paths under notebooks/ ("labs/lab1_....ipynb"): they run in that folder,
    next to the server files they import."""
    return sorted(f"{LABS.name}/{path.name}" for path in LABS.glob("lab[0-9]_*.ipynb"))


@pytest.fixture(scope="module")  # ended before other tests: Playwright runs an event loop
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's) with a fresh profile, as one Playwright context."""
    if not CHROMIUM.exists():
        missing(f"browser tests need Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("browser tests need the playwright package (pip install playwright)")
    with tempfile.TemporaryDirectory(prefix="chatlab-chromium-") as profile:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1500, "height": 1000},
            )
            context.set_default_timeout(TIMEOUT_MS)
            yield context
            context.close()


@pytest.fixture(scope="module")  # ended before other tests: Playwright runs an event loop
def stored_lessons() -> dict[str, nbformat.NotebookNode]:
    """The lessons and labs as stored in notebooks/, outputs included, read once for the session."""
    return {name: nbformat.read(NOTEBOOKS / name, as_version=4) for name in lesson_names() + lab_names()}


@pytest.fixture(scope="module")  # ended before other tests: Playwright runs an event loop
def jupyterlab(
    chromium: Any, stored_lessons: dict[str, nbformat.NotebookNode], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterLabServer]:
    """JupyterLab over a copy of the lessons and labs (outputs stripped; the labs with their
    server files) plus the harness notebook."""
    if importlib.util.find_spec("jupyterlab") is None:
        missing("browser tests need JupyterLab (pip install jupyterlab)")
    root = tmp_path_factory.mktemp("lessons")
    shutil.copytree(LABS, root / LABS.name, ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    for name, notebook in stored_lessons.items():
        nbformat.write(without_outputs(notebook), root / name)
    harness = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in HARNESS_CELLS])
    harness.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(harness, root / HARNESS_NOTEBOOK)
    server = JupyterLabServer(root, tmp_path_factory.mktemp("jupyterlab")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")  # ended before other tests: Playwright runs an event loop
def lab_page(chromium: Any, jupyterlab: JupyterLabServer) -> Iterator[Any]:
    """One page for the notebooks opened by ``open_notebook``: JupyterLab loads once in it."""
    page = chromium.new_page()
    yield page
    page.close()


@pytest.fixture
def open_notebook(lab_page: Any, jupyterlab: JupyterLabServer) -> Iterator[Any]:
    """``open_notebook(name)`` shows a notebook in JupyterLab, alone; after the test it is
    closed and its kernel shut down."""
    opened: list[NotebookPage] = []

    def open_(name: str) -> NotebookPage:
        notebook = NotebookPage(lab_page, jupyterlab, name).open()
        opened.append(notebook)
        return notebook

    yield open_
    for notebook in opened:
        notebook.close()


@pytest.fixture
def chat_lesson(lesson_5_running: NotebookPage) -> NotebookPage:
    """Lesson 5's page, in front (a page behind another one runs its timers seldom)."""
    lesson_5_running.page.bring_to_front()
    return lesson_5_running


@pytest.fixture(scope="module")  # ended before other tests: Playwright runs an event loop
def lesson_5_running(chromium: Any, jupyterlab: JupyterLabServer) -> Iterator[NotebookPage]:
    """Lesson 5 open and run down to (not including) its cell tagged ``cleanup``.

    Shared by the tests that run every lesson and the widget tests, which use its live chat
    widgets and dashboard in this order: chat, live updates, Stop, cleanup.
    """
    names = [name for name in lesson_names() if name.startswith("05_")]
    if not names:
        missing("notebooks/05_*.ipynb (the widget chat lesson) does not exist")
    notebook = NotebookPage(chromium.new_page(), jupyterlab, names[0]).open()
    cleanup = tagged_cell(notebook.notebook, "cleanup")
    assert cleanup is not None, f"{names[0]} has no cell tagged 'cleanup'"
    notebook.cleanup_cell = cleanup
    notebook.run_all_above(cleanup)
    notebook.run_state = notebook.wait_until_ran(code_cells_to_run(notebook.notebook, cleanup))
    yield notebook
    notebook.page.close()
    jupyterlab.shutdown_kernels(notebook.name)
