"""The lessons in a real JupyterLab, in a real Chromium, clicked and typed into like a student.

0. the harness itself notices a failing cell (so the checks below can fail);
1. every lesson and lab runs with Run All (lesson 5: down to its ``cleanup`` cell) and shows
   no error, and its figures and widgets appear as often as in the stored notebook;
2. in the widget chat lesson (05) alice's widget sends to bob's, with Send and with Enter, and
   an unknown recipient shows an error in alice's log only; the dashboard lists the clients;
3. a terminal client in another process chats with the widgets while the kernel is idle;
4. the dashboard's Stop button stops the server;
5. lesson 5's cleanup cell then leaves no chatlab thread.

Lesson 5 (1, down to its cleanup cell) and tests 2-5 share lesson 5's page and kernel (the
``chat_lesson`` fixture) and must run in this order, which is the file's order: the root
conftest.py keeps the tests that are not parametrized together, in one worker. Screenshots land
in tests/browser/screenshots/.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

from .conftest import HARNESS_NOTEBOOK, lab_names, lesson_names
from .lab import NotebookPage, code_cells_to_run, error_report

try:
    from playwright.sync_api import expect
except ImportError:  # the fixtures skip every test then
    expect = None

# A message crossing from one widget to another takes 0.1-0.2 s on a quiet machine. In the first
# minute of `make test` (six workers starting JupyterLab, Chromium and servers on two cores) the
# kernel once took over 5 s to clear a text box: wait longer than that (a pass returns at once).
SHORT_MS = 20_000
RICH_MIMES = ("image/png", "application/vnd.jupyter.widget-view+json")


def ran(prompt: str) -> bool:
    return prompt[1:-2].strip().isdigit()  # "[7]:" but not "[ ]:" or "[*]:"


def rich_outputs(stored_cell) -> list[str]:
    """The figures and widget views a stored cell shows, as the mime types drawn."""
    return sorted(
        next(mime for mime in RICH_MIMES if mime in output.get("data", {}))
        for output in stored_cell.get("outputs", [])
        if any(mime in output.get("data", {}) for mime in RICH_MIMES)
    )


def rich_shown(cell_state) -> list[str]:
    return sorted(mime for mime in cell_state["mimes"] if mime in RICH_MIMES)


def test_harness_sees_a_failing_cell(open_notebook):
    """The checks below can fail: a raised exception is found and the run stops there."""
    notebook = open_notebook(HARNESS_NOTEBOOK)
    notebook.run_all()
    state = notebook.wait_until_ran(code_cells_to_run(notebook.notebook), timeout=60)
    notebook.screenshot("harness_check")
    errors = error_report(state)
    assert len(errors) == 1 and errors[0].startswith("cell 1 [2]:"), errors
    assert "ValueError" in errors[0] and "deliberate failure" in errors[0]
    assert [cell["prompt"] for cell in state["cells"]] == ["[1]:", "[2]:", "[ ]:"]


@pytest.mark.parametrize("name", [n for n in lesson_names() + lab_names() if not n.startswith("05_")])
def test_lesson_runs_without_errors(name, open_notebook, stored_lessons):
    notebook = open_notebook(name)
    notebook.run_all()
    state = notebook.wait_until_ran(code_cells_to_run(notebook.notebook))
    check_ran_as_stored(notebook, state, stored_lessons[name])


def test_widget_lesson_runs_without_errors(chat_lesson, stored_lessons):
    """Lesson 5 down to its cleanup cell: the widget tests below use the live chat."""
    state = chat_lesson.run_state
    assert state is not None
    check_ran_as_stored(chat_lesson, state, stored_lessons[chat_lesson.name])
    assert not ran(state["cells"][chat_lesson.cleanup_cell]["prompt"]), "cleanup ran too early"


def check_ran_as_stored(notebook: NotebookPage, state, stored) -> None:
    """Every cell ran without an error, and shows the figures and widgets the stored one does."""
    name = notebook.name
    notebook.screenshot(f"lesson_{name.removesuffix('.ipynb').replace('/', '_')}")
    assert not error_report(state), f"{name} shows errors:\n" + "\n".join(error_report(state))
    expected = code_cells_to_run(notebook.notebook, notebook.cleanup_cell)
    not_run = [i for i in expected if not ran(state["cells"][i]["prompt"])]
    assert not not_run, f"{name}: cells {not_run} did not run"
    broken = [(cell["index"], cell["broken"]) for cell in state["cells"] if cell["broken"]]
    assert not broken, f"{name}: widgets that did not render: {broken}"
    # Figures and widgets show up as often as in the stored notebook (once each).
    shown_differently = [
        (i, "stored", rich_outputs(stored.cells[i]), "shown", rich_shown(state["cells"][i]))
        for i in expected
        if rich_outputs(stored.cells[i]) != rich_shown(state["cells"][i])
    ]
    assert not shown_differently, (
        f"{name}: figures/widgets differ from the stored notebook: {shown_differently}"
    )
    stderr = [(cell["index"], text) for cell in state["cells"] for text in cell["stderr"]]
    if stderr:
        warnings.warn(f"{name} wrote to stderr: {stderr}", stacklevel=1)


# --- lesson 5: the chat widgets and the dashboard -------------------------------------------------


def part(notebook: NotebookPage, css_class: str, inner: str = ""):
    """The first element with ``css_class`` (and ``inner`` inside it) in the visible notebook."""
    return notebook.panel.locator(f".{css_class} {inner}".strip()).first


def type_and_send(notebook: NotebookPage, sender: str, text: str, *, enter: bool) -> None:
    box = part(notebook, f"chatlab-{sender}-text", "input")
    box.fill(text)
    if enter:
        box.press("Enter")
    else:
        part(notebook, f"chatlab-{sender}-send").click()
    expect(box).to_have_value("", timeout=SHORT_MS)  # the widget clears the box once sent


def dashboard_port(notebook: NotebookPage) -> int:
    status = part(notebook, "chatlab-dashboard-status").text_content() or ""
    found = re.search(r"127\.0\.0\.1:(\d+)", status)
    assert found, f"the dashboard status shows no 127.0.0.1:PORT: {status!r}"
    return int(found.group(1))


def test_widgets_chat_with_each_other(chat_lesson):
    notebook = chat_lesson
    for name in ("alice", "bob", "carol"):
        expect(part(notebook, f"chatlab-{name}-log")).to_be_visible()
    expect(part(notebook, "chatlab-dashboard")).to_be_visible()
    alice_log = part(notebook, "chatlab-alice-log")
    bob_log = part(notebook, "chatlab-bob-log")
    carol_log = part(notebook, "chatlab-carol-log")

    # Pick bob in the recipient list and click Send.
    part(notebook, "chatlab-alice-to", "select").select_option("bob")
    type_and_send(notebook, "alice", "hello bob, from the browser", enter=False)
    expect(bob_log).to_contain_text("← alice: hello bob, from the browser", timeout=SHORT_MS)
    expect(alice_log).to_contain_text("→ bob: hello bob, from the browser")

    # Type the recipient into the line and press Enter.
    type_and_send(notebook, "alice", "%bob%sent with Enter", enter=True)
    expect(bob_log).to_contain_text("← alice: sent with Enter", timeout=SHORT_MS)

    # Nobody called zed: the error goes back to the sender only, in its own colour. (The
    # lesson's own cells may have shown this error already: count the lines.)
    error_lines = alice_log.get_by_text("! unknown client 'zed'", exact=True)
    errors_before = error_lines.count()
    type_and_send(notebook, "alice", "%zed%hi", enter=True)
    expect(error_lines).to_have_count(errors_before + 1, timeout=SHORT_MS)
    sent_line = alice_log.get_by_text("→ %zed%hi", exact=True)
    color = "e => getComputedStyle(e).color"
    assert error_lines.last.evaluate(color) != sent_line.evaluate(color), "errors look like messages"

    # Direct messages are private: carol saw none of it.
    expect(carol_log).not_to_contain_text("hello bob")
    expect(carol_log).not_to_contain_text("zed")
    expect(bob_log).not_to_contain_text("zed")

    clients = part(notebook, "chatlab-dashboard-clients")
    for name in ("alice", "bob", "carol"):
        expect(clients.locator("tr", has_text=name)).to_have_count(1)
    expect(part(notebook, "chatlab-dashboard-status")).to_contain_text("running")
    _screenshot_chat(notebook, "lesson05_widgets_chat")


def test_terminal_client_reaches_widgets_while_kernel_idle(chat_lesson):
    notebook = chat_lesson
    port = dashboard_port(notebook)
    before = notebook.state()
    assert before["kernel"] == "idle"
    alice_log = part(notebook, "chatlab-alice-log")
    alice_to = part(notebook, "chatlab-alice-to", "select")
    clients = part(notebook, "chatlab-dashboard-clients")

    with TerminalClient(port, "dave") as dave:
        dave.expect("* you are dave")
        # The join reaches the widgets and the dashboard by itself.
        expect(alice_to.locator("option", has_text="dave")).to_have_count(1, timeout=SHORT_MS)
        expect(clients.locator("tr", has_text="dave")).to_have_count(1, timeout=SHORT_MS)

        sent = time.monotonic()
        dave.send("%alice%hello alice, from a terminal")
        expect(alice_log).to_contain_text("← dave: hello alice, from a terminal", timeout=2_000)
        arrived = time.monotonic() - sent
        print(f"terminal -> widget log in {arrived * 1000:.0f} ms")

        alice_to.select_option("dave")
        type_and_send(notebook, "alice", "hi dave, from the browser", enter=True)
        dave.expect("%alice%hi dave, from the browser")
        _screenshot_chat(notebook, "lesson05_terminal_client")
        dave.send("/quit")
        assert dave.wait() == 0

    expect(clients.locator("tr", has_text="dave")).to_have_count(0, timeout=SHORT_MS)
    expect(alice_to.locator("option", has_text="dave")).to_have_count(0, timeout=SHORT_MS)
    expect(alice_log).to_contain_text("* dave left")
    after = notebook.state()
    assert after["kernel"] == "idle"
    prompts = [cell["prompt"] for cell in before["cells"]]
    assert [cell["prompt"] for cell in after["cells"]] == prompts, "a cell ran meanwhile"


def test_dashboard_stop_button_stops_the_server(chat_lesson):
    notebook = chat_lesson
    port = dashboard_port(notebook)
    status = part(notebook, "chatlab-dashboard-status")
    stop = part(notebook, "chatlab-dashboard-stop")
    expect(stop).to_be_enabled()
    stop.click()
    expect(status).to_contain_text("stopped", timeout=SHORT_MS)
    expect(status).not_to_contain_text("running")
    expect(stop).to_be_disabled()
    expect(part(notebook, "chatlab-dashboard-start")).to_be_enabled()
    expect(part(notebook, "chatlab-dashboard-clients")).to_contain_text("no clients")
    for name in ("alice", "bob", "carol"):
        expect(part(notebook, f"chatlab-{name}-log")).to_contain_text("(connection closed)")
        expect(part(notebook, f"chatlab-{name}-send")).to_be_disabled()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    _screenshot_chat(notebook, "lesson05_stopped")


def test_cleanup_cell_leaves_no_thread(chat_lesson):
    notebook = chat_lesson
    cleanup = notebook.cleanup_cell
    notebook.run_cell(cleanup)
    state = notebook.wait_until_ran([cleanup], timeout=30)
    notebook.screenshot("lesson05_cleanup", notebook.cell(cleanup))
    assert not error_report(state), error_report(state)
    output = notebook.cell(cleanup).locator(".jp-OutputArea").text_content() or ""
    assert "[]" in output and "chatlab-" not in output, f"threads left after cleanup: {output!r}"


def _screenshot_chat(notebook: NotebookPage, name: str) -> None:
    """Two pictures: the cell with the chat widgets and the cell with the dashboard."""
    chats = notebook.panel.locator(".jp-Cell", has=notebook.page.locator(".chatlab-chat")).first
    dashboard = notebook.panel.locator(".jp-Cell", has=notebook.page.locator(".chatlab-dashboard")).first
    notebook.screenshot(f"{name}_chats", chats)
    notebook.screenshot(f"{name}_dashboard", dashboard)


class TerminalClient:
    """``python -m chatlab.client`` in its own process, typed into through a pipe."""

    def __init__(self, port: int, name: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatlab.client", "--port", str(port), "--name", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, fragment: str, timeout: float = 5.0) -> str:
        """Wait for a printed line containing ``fragment``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"the terminal client printed no {fragment!r}; it printed {self.seen}")

    def wait(self, timeout: float = 5.0) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout=timeout)

    def __enter__(self) -> TerminalClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self._reader.join(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout):
            pipe.close()
