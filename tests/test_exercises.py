"""Every lesson's exercises can be solved, and their check cells know it.

In each lesson the cells a student edits are tagged ``exercise`` and the cells that check them
``check``; the solutions sit in closed ``<details>`` blocks, one ```python block per exercise, in
the same order. tests/test_lessons_rerun.py runs each lesson a second time with every exercise
cell replaced by its solution: every check cell must then say "✔". The stored notebook (checked
by strict nbval) shows the same check cells saying "✘ not yet", so a check that cannot pass, or
that passes the untouched stub, fails one of the two.

A check cell never holds the answer (issue 19, part 5): it does not spell out a one-line answer,
and for lessons 4 to 9 each exercise is also given a wrong answer, which its check must refuse;
in lesson 6 that wrong answer notes what the check compares it with, and the right answer must
not be among those (a check that computes the answer and compares gives it away).

A few claims that the lessons make about the kit are checked here too (issue 10, part 5).
"""

from __future__ import annotations

import ast
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import nbformat
import pytest
from lesson_parts import notebook_client, solutions, tagged, text_of

from chatlab.client import ChatClient
from chatlab.servers.base import SEND_BUFFER

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=[path.stem for path in LESSONS])
def test_the_stored_lesson_hides_its_solutions(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    exercises, checks, blocks = tagged(notebook, "exercise"), tagged(notebook, "check"), solutions(notebook)
    assert exercises, (
        "no cell tagged 'exercise': tag each cell the student edits 'exercise' and its check "
        "cell 'check', and give one ```python block per exercise in a closed <details> block"
    )
    assert len(exercises) == len(blocks), f"{len(exercises)} exercise cells but {len(blocks)} solution blocks"
    assert len(checks) == len(exercises) and all(e < c for e, c in zip(exercises, checks, strict=True)), (
        "every exercise cell has its check cell after it"
    )
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert "<details" in sources and not re.search(r"<details[^>]*\bopen\b", sources), "solutions stay closed"
    assert "<summary>" in sources
    for index in checks:
        assert text_of(notebook.cells[index]).startswith("✘ not yet"), notebook.cells[index].source[:80]
        assert "Traceback" not in text_of(notebook.cells[index])
    # At least one exercise asks for code (a def or a class), not only for a value.
    assert any(re.search(r"^(async def|def|class) ", block, re.M) for block in blocks)
    # A check cell never compares with the literal answer of a one-line solution.
    for block in blocks:
        if match := re.fullmatch(r"(\w+) = (.+)", block):
            for index in checks:
                source = notebook.cells[index].source
                given_away = re.search(rf"(==|\bis) {re.escape(match[2])}(?!\w)", source)
                assert not given_away, f"a check cell gives the answer away: {given_away}"
    # Nor does a check cell hold the answer in any other spelling: not the literal, not the text of
    # a string answer, and not a protocol line's parts each written out (%alice%lunch? as "alice"
    # and "lunch?"): a student who reads the check must not find the answer in it.
    for block in blocks:
        match = re.fullmatch(r"(\w+) = (.+)", block)
        if not match or len(match[2]) < 4 or re.fullmatch(r"[\d.]+|True|False", match[2]):
            continue  # short answers such as 2 or b"" turn up in any code
        value = ast.literal_eval(match[2]) if re.fullmatch(r"[\"'].*[\"']", match[2]) else None
        for index in checks:
            source = notebook.cells[index].source
            assert match[2] not in source and not (isinstance(value, str) and value in source), (
                f"a check cell holds the answer {match[2]}"
            )
            if isinstance(value, str) and value.startswith("%"):
                literals = {
                    node.value
                    for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                }
                parts = [part for part in value.split("%") if part]
                assert not set(parts) <= literals, (
                    f"a check cell spells out the answer {value!r} in parts {parts}"
                )
    # The cleanup cell stays last.
    assert "kit_threads()" in notebook.cells[-1].source


# One wrong answer per exercise, in order; each lesson's checks must all refuse them. Lesson 6's
# value answers are probes: lists that note what they are compared with.
PROBE = textwrap.dedent("""
    class Probe(list):
        \"\"\"A wrong answer that notes every value a check compares it with.\"\"\"
        seen = []
        __hash__ = None

        def __eq__(self, other):
            Probe.seen.append(other)
            return False
""")
WRONG_ANSWERS = {
    "04_client_to_client": [
        'line_for_alice = "%*%lunch?"',  # alice gets %bob%lunch?, and so does carol
        'bob_receives = "%*%bye"',
        "def route(sender, line, online):\n    return {sender: line}",
    ],
    "05_chat_with_widgets": [
        'line_bob_types = "lunch?"',  # goes to whoever is picked
        "threads_that_end = 2",  # the window's own two, and the server's thread forgotten
        "def say(window, to, text):\n    window.client.send(to, text)",  # around the window's controls
    ],
    "06_byte_stream": [
        PROBE + "second_feed = Probe()",
        PROBE + "limited_feed = Probe()",
        # forgets the rest:
        "class MyFramer:\n    def feed(self, data):\n        return data.split(b'\\n')[:-1]",
    ],
    "07_slow_client": [
        'blocked_thread = "chatlab-client-slow"',
        "carol_reaches_bob = False",
        "class Outbox:\n    def __init__(self, limit):\n        self.lines = []\n\n"
        "    def put(self, data):\n        self.lines.append(data)\n        return True\n\n"
        "    def get(self, timeout):\n        return self.lines.pop(0) if self.lines else None",  # no limit
    ],
    "08_many_clients": [
        "threads_for_20_clients = 21",  # the clients' reader threads forgotten
        "server_threads_with_2_behind = 6",  # the writer threads forgotten
        "def send_around_concurrently(clients, messages):\n    return send_around(clients, messages)",
    ],
    "09_three_models": [
        'threads_for_30_clients = {"threads": 30, "selectors": 1, "asyncio": 1}',
        'freezes_everyone = {"threads"}',
        "async def shout(reader, writer):\n    while line := await reader.readline():\n"
        "        writer.write(line)\n        await writer.drain()\n    writer.close()",  # no capitals
    ],
}


@pytest.mark.parametrize("lesson", list(WRONG_ANSWERS))
def test_a_wrong_answer_fails_its_check(lesson: str, kernel_config) -> None:
    notebook = nbformat.read(NOTEBOOKS / f"{lesson}.ipynb", as_version=4)
    exercises = tagged(notebook, "exercise")
    assert len(exercises) == len(WRONG_ANSWERS[lesson])
    for index, wrong in zip(exercises, WRONG_ANSWERS[lesson], strict=True):
        notebook.cells[index].source = wrong
    client = notebook_client(notebook, NOTEBOOKS, kernel_config)
    values = [block.split(" = ", 1)[1] for block in solutions(notebook) if re.fullmatch(r"\w+ = .+", block)]
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, index)
        probe = nbformat.v4.new_code_cell(
            "import chatlab\n"
            "seen = Probe.seen if 'Probe' in globals() else []  # what the checks compared a probe with\n"
            f"print([answer in seen for answer in [{', '.join(values)}]])\n"
            "print(chatlab.kit_threads())"
        )
        notebook.cells.append(probe)
        client.execute_cell(probe, len(notebook.cells) - 1)
    for index in tagged(notebook, "check"):
        assert text_of(notebook.cells[index]).startswith("✘ not yet"), (
            notebook.cells[index].source[:80],
            text_of(notebook.cells[index]),
        )
    compared_with_the_answer, threads_left = text_of(probe).splitlines()
    assert "True" not in compared_with_the_answer, (
        "a check compared the answer with the right one: it holds it"
    )
    assert threads_left == "[]"


def test_lesson_5_prints_the_port_where_it_asks_to_join_from_a_terminal() -> None:
    notebook = nbformat.read(NOTEBOOKS / "05_chat_with_widgets.ipynb", as_version=4)
    asks = [i for i, cell in enumerate(notebook.cells) if "Join from a terminal" in cell.source]
    assert asks, "lesson 5 asks the student to join from a terminal"
    following = notebook.cells[asks[0] + 1]
    assert following.cell_type == "code" and "server.port" in following.source
    assert re.search(r"--port=\d+ --name=", text_of(following))


def run_the_benchmarks_cell(monkeypatch: pytest.MonkeyPatch, working_dir: Path, package_dir: Path) -> dict:
    """Lesson 9's cell that finds benchmarks/, with chatlab installed in `package_dir`."""
    notebook = nbformat.read(NOTEBOOKS / "09_three_models.ipynb", as_version=4)
    source = next(
        cell.source for cell in notebook.cells if cell.cell_type == "code" and "BENCHMARKS" in cell.source
    )
    installed = types.SimpleNamespace(__file__=str(package_dir / "chatlab" / "__init__.py"))
    monkeypatch.chdir(working_dir)
    monkeypatch.setattr(sys, "path", list(sys.path))
    namespace = {"chatlab": installed, "sys": sys}
    exec(compile(source, "lesson 9", "exec"), namespace)  # noqa: S102 (the lesson's own cell)
    return namespace


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the quick benchmark is Linux-only")
def test_lesson_9_finds_the_benchmarks_when_the_kit_is_installed_without_e(monkeypatch, tmp_path) -> None:
    site_packages = tmp_path / "site-packages"  # where `pip install .` puts chatlab: no benchmarks/
    namespace = run_the_benchmarks_cell(monkeypatch, NOTEBOOKS, site_packages)
    assert namespace["BENCHMARKS"] == ROOT / "benchmarks"
    assert callable(namespace["run_benchmarks"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the quick benchmark is Linux-only")
def test_lesson_9_says_what_it_needs_without_the_kits_folder(monkeypatch, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="needs benchmarks/run.py from the kit's folder"):
        run_the_benchmarks_cell(monkeypatch, tmp_path, tmp_path / "site-packages")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the doubling is Linux's")
def test_lesson_7_linux_doubles_the_send_buffer_the_server_asks_for(start_server) -> None:
    server = start_server(delivery="queue")
    with ChatClient(port=server.port, name="ann"):
        record = server.clients()[0]
        assert record.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * SEND_BUFFER


@pytest.mark.skipif(not (shutil.which("git") and shutil.which("make")), reason="needs git and make")
def test_make_handout_leaves_out_the_labs_solutions(tmp_path: Path) -> None:
    """`make handout` in a small repository shaped like the kit's: the zip has the skeletons,
    not the reference solutions."""
    files = {
        "Makefile": (ROOT / "Makefile").read_text(),
        "notebooks/01_sockets.ipynb": "{}",
        "notebooks/labs/lab1_server.py": "# TODO\n",
        "notebooks/labs/solutions/lab1_server.py": "# answer\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "kit"]):
        subprocess.run(git + command, check=True, timeout=30)
    subprocess.run(
        ["make", "-C", str(tmp_path), "handout", "HANDOUT=out.zip"],
        check=True,
        timeout=60,
        capture_output=True,
    )
    with zipfile.ZipFile(tmp_path / "out.zip") as handout:
        names = handout.namelist()
    assert "chatlab/notebooks/labs/lab1_server.py" in names and "chatlab/Makefile" in names
    assert not [name for name in names if "solutions" in name]


# Corrections found by review (issue 10, part 5): each claim stays in the lesson that needed it.
CORRECTIONS = [
    ("01_sockets", ["ConnectionRefusedError", "TimeoutError", "firewall"]),  # refused is not the only answer
    (
        "06_byte_stream",
        ['sender.sendall(b"first line\\n")', 'sender.sendall(b"second line\\n")', "receiver.recv(1024)"],
    ),  # two separate sends, one recv()
    ("07_slow_client", ["SEND_BUFFER", "Linux doubles", "128 KiB"]),
    ("08_many_clients", ["send_around()", "main thread", "not (only) the GIL"]),  # why messages/s stay flat
    ("08_many_clients", ["server.threads()", "main thread", "one more"]),  # agrees with lesson 9's table
    ("09_three_models", ["server.threads()", "main thread", "N + 2"]),
    ("09_three_models", ["setswitchinterval", "hold the GIL for up to 100 ms"]),  # the cost of 100 ms
]


@pytest.mark.parametrize(
    ("lesson", "phrases"), CORRECTIONS, ids=[f"{name}-{i}" for i, (name, _) in enumerate(CORRECTIONS)]
)
def test_a_review_correction_stays_in_its_lesson(lesson: str, phrases: list[str]) -> None:
    notebook = nbformat.read(NOTEBOOKS / f"{lesson}.ipynb", as_version=4)
    assert any(all(phrase in " ".join(cell.source.split()) for phrase in phrases) for cell in notebook.cells)
