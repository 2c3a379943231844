"""Drive a real JupyterLab in a real Chromium: start the server, open notebooks, run cells.

`JupyterLabServer` starts ``jupyter lab`` over a folder of notebooks on a free port of
127.0.0.1 and stops it again (kernels first, through the REST API). `NotebookPage` wraps a
Playwright page showing one notebook: it runs cells through the menus, as a student would, and
waits (always with a time limit) until the kernel is idle and every expected cell has run.

Every selector is scoped to the notebook panel on show, because JupyterLab can restore other
tabs next to the one we open.

Loading JupyterLab costs Chromium about 4.5 s of CPU, opening a notebook in a loaded JupyterLab
about 2 s: a page that already shows JupyterLab opens the next notebook with JupyterLab's own
``docmanager:open`` command (the server exposes the app as ``window.jupyterapp``, as
JupyterLab's own browser tests do), after closing the notebook before it.
"""

from __future__ import annotations

import copy
import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nbformat

PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
SCREENSHOTS = Path(__file__).parent / "screenshots"

# Evaluated in the page: where the visible notebook stands. Prompts read "[ ]:" before a cell
# runs, "[*]:" while it is queued or running and "[7]:" after. An error output is drawn like
# stderr, so stderr text that looks like an exception counts as an error.
_STATE_JS = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
  const WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json';
  const looksLikeError = /Traceback|\\b[A-Z]\\w*(Error|Exception|Interrupt)\\b/;
  return {
    kernel: indicator ? indicator.getAttribute('data-status') : null,
    cells: cells.map((cell, index) => {
      const isCode = cell.classList.contains('jp-CodeCell');
      const prompt = isCode ? cell.querySelector('.jp-InputArea-prompt') : null;
      const stderr = [...cell.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
        .map(node => node.textContent);
      const shown = [...cell.querySelectorAll(
        '.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output')];
      return {
        index: index,
        code: isCode,
        // Only a widget view's output carries no data-mime-type (it stays, empty, once the
        // widget is closed).
        mimes: shown.map(node => node.getAttribute('data-mime-type') || WIDGET_VIEW),
        broken: shown.map(node => node.textContent).filter(text => /Error displaying widget/.test(text)),
        prompt: prompt ? prompt.textContent.trim() : '',
        stderr: stderr,
        errors: stderr.filter(text => looksLikeError.test(text)),
      };
    }),
  };
}
"""

_KERNEL_JS = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const indicator = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const items = [...document.querySelectorAll('.jp-StatusBar-TextItem')].map(e => e.textContent);
  return {
    indicator: indicator ? indicator.getAttribute('data-status') : null,
    statusbar: items.some(text => / \\| Idle$/.test(text) && !text.startsWith('No Kernel')),
  };
}
"""

# Evaluated in a page that shows JupyterLab: close every document (without asking to save it;
# its kernel stays until the REST API shuts it down) and open ``path`` in its place. False if
# the page shows no usable JupyterLab (not loaded yet, or a dialog is up): load it then.
_OPEN_JS = """
async (path) => {
  const app = window.jupyterapp;
  if (!app || document.querySelector('.jp-Dialog')) return false;
  for (const widget of [...app.shell.widgets('main')]) widget.dispose();
  if (path !== null) await app.commands.execute('docmanager:open', {path});
  return true;
}
"""


def free_port() -> int:
    """A port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_outputs(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy without outputs and execution counts: every prompt reads "[ ]" until it runs."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return notebook


def code_cells_to_run(notebook: nbformat.NotebookNode, stop_at: int | None = None) -> list[int]:
    """Indices (among all cells) of the non-empty code cells before ``stop_at``.

    JupyterLab does not send an empty code cell to the kernel, so its prompt stays "[ ]".
    """
    end = len(notebook.cells) if stop_at is None else stop_at
    return [
        index
        for index, cell in enumerate(notebook.cells[:end])
        if cell.cell_type == "code" and cell.source.strip()
    ]


def tagged_cell(notebook: nbformat.NotebookNode, tag: str) -> int | None:
    """Index of the first cell carrying ``tag`` in its metadata, or None."""
    for index, cell in enumerate(notebook.cells):
        if tag in cell.get("metadata", {}).get("tags", []):
            return index
    return None


class JupyterLabServer:
    """``jupyter lab`` over ``root_dir``: no token, no browser, one fixed free port.

    Resource handling: :meth:`start` returns once ``/api/status`` answers (or raises with the
    server's log); :meth:`stop` shuts every kernel down through the REST API, then terminates
    the server (and kills it, with its process group, if it does not exit in time).
    """

    def __init__(self, root_dir: Path, work_dir: Path) -> None:
        self.root_dir = root_dir
        self.work_dir = work_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work_dir / "jupyterlab.log"
        # Kernels on Unix sockets (POSIX), named after files here: a short path keeps each
        # socket's under the 104 bytes macOS allows.
        short = "/tmp" if os.name == "posix" else None
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="chatlab-lab-", dir=short))
        self.process: subprocess.Popen[bytes] | None = None
        self._cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self._cookies))

    def _environment(self) -> dict[str, str]:
        settings = self.work_dir / "settings"
        notification = settings / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True, exist_ok=True)
        # Without this JupyterLab asks "get Jupyter news?" in a pop-up that can cover widgets.
        (notification / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        env = dict(os.environ)
        for variable, folder in [
            ("JUPYTERLAB_SETTINGS_DIR", settings),
            ("JUPYTERLAB_WORKSPACES_DIR", self.work_dir / "workspaces"),
            ("JUPYTER_CONFIG_DIR", self.work_dir / "config"),
            ("JUPYTER_RUNTIME_DIR", self.runtime_dir),
            ("IPYTHONDIR", self.work_dir / "ipython"),
        ]:
            folder.mkdir(parents=True, exist_ok=True)
            env[variable] = str(folder)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout: float = 60.0, tries: int = 3) -> JupyterLabServer:
        """Start it; if another program took the free port first, start it on a new one."""
        for _ in range(tries):
            if self._launch(timeout):
                return self
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError(f"jupyter lab found its port taken {tries} times:\n{self.log()}")

    def _launch(self, timeout: float) -> bool:
        """True once it answers; False if it exited because its port was taken."""
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            "--IdentityProvider.token=",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: see _OPEN_JS
            f"--ServerApp.root_dir={self.root_dir}",
        ]
        if os.name == "posix":
            # Not five TCP ports per kernel that another test's connection can take first
            # (the kernel would die at start): see pytest_configure in the root conftest.py.
            command.append("--KernelManager.transport=ipc")
        if os.geteuid() == 0:
            command.append("--allow-root")  # JupyterLab refuses to run as root without it
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root_dir,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kernels die with it if killed
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "already in use" in self.log():
                    return False
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.request("GET", "/api/status", timeout=2)
                self.request("GET", "/lab", timeout=10, raw=True)  # sets the _xsrf cookie
                return True
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"jupyter lab did not answer within {timeout} s:\n{self.log()}")

    def log(self, last: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-last:]
        except OSError:
            return ""

    def request(self, method: str, path: str, *, timeout: float = 10, raw: bool = False) -> Any:
        """One REST call; state-changing ones echo the ``_xsrf`` cookie (403 otherwise)."""
        headers = {}
        xsrf = next((c.value for c in self._cookies if c.name == "_xsrf"), None)
        if xsrf is not None:
            headers["X-XSRFToken"] = xsrf
        request = urllib.request.Request(self.url + path, method=method, headers=headers)
        with self._opener.open(request, timeout=timeout) as response:
            body = response.read()
        if raw or not body:
            return body
        return json.loads(body)

    def shutdown_kernels(self, notebook_path: str | None = None) -> int:
        """Shut down the kernels of ``notebook_path`` (a path under root_dir), or all of them."""
        stopped = 0
        if notebook_path is None:
            kernel_ids = [kernel["id"] for kernel in self.request("GET", "/api/kernels")]
        else:
            kernel_ids = [
                session["kernel"]["id"]
                for session in self.request("GET", "/api/sessions")
                if session.get("path") == notebook_path and session.get("kernel")
            ]
        for kernel_id in kernel_ids:
            try:
                self.request("DELETE", f"/api/kernels/{kernel_id}", timeout=20)
                stopped += 1
            except urllib.error.HTTPError as error:
                if error.code != 404:  # 404: it was already gone
                    raise
        return stopped

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            return
        try:
            self.shutdown_kernels()
        except (OSError, urllib.error.URLError, ValueError):
            pass  # the server may be broken; terminating it below still ends its kernels
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


class NotebookPage:
    """One notebook open in JupyterLab, in its own browser page."""

    def __init__(self, page: Any, server: JupyterLabServer, name: str) -> None:
        self.page = page
        self.server = server
        self.name = name
        self.notebook = nbformat.read(server.root_dir / name, as_version=4)
        self.panel = page.locator(PANEL)
        self.cleanup_cell: int | None = None  # set by whoever runs only the cells above it
        self.run_state: dict[str, Any] | None = None  # the state() after the first run

    def open(self, timeout: float = 60.0) -> NotebookPage:
        """Show only this notebook in JupyterLab and wait for its kernel to be idle.

        Opened in the JupyterLab the page shows, if it does (see _OPEN_JS), else in a fresh one.
        """
        self.page.bring_to_front()  # a page behind another one runs its timers seldom
        if not self.page.url.startswith(self.server.url) or not self.page.evaluate(_OPEN_JS, self.name):
            self.page.goto(f"{self.server.url}/lab/tree/{self.name}?reset", timeout=timeout * 1000)
        self.panel.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
        self.wait_for_kernel(timeout)
        # Cells are attached to the page a few at a time.
        self.page.wait_for_function(
            f"document.querySelectorAll('{PANEL} .jp-Notebook .jp-Cell').length"
            f" === {len(self.notebook.cells)}",
            timeout=timeout * 1000,
        )
        return self

    def wait_for_kernel(self, timeout: float = 60.0) -> None:
        """Wait until this notebook's kernel has started, is connected to the page and idle.

        The toolbar's indicator says "idle" before any kernel exists, and a Run All clicked
        then is lost when the kernel arrives; so the status bar ("Python 3 (ipykernel) | Idle")
        and the server's session list must agree too.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            page_state = self.page.evaluate(_KERNEL_JS)
            if page_state and page_state["indicator"] == "idle" and page_state["statusbar"]:
                sessions = self.server.request("GET", "/api/sessions")
                if any(
                    session.get("path") == self.name
                    and session["kernel"]["execution_state"] == "idle"
                    and session["kernel"]["connections"] >= 1
                    for session in sessions
                ):
                    return
            self.page.wait_for_timeout(200)
        raise TimeoutError(f"{self.name}: the kernel was not ready within {timeout} s")

    def close(self) -> None:
        """Close the notebook, leaving the page with JupyterLab for the next one; then shut its
        kernel down."""
        if self.page.url.startswith(self.server.url):
            self.page.evaluate(_OPEN_JS, None)
        self.server.shutdown_kernels(self.name)

    def cell(self, index: int) -> Any:
        return self.panel.locator(".jp-Notebook .jp-Cell").nth(index)

    def state(self) -> dict[str, Any]:
        return self.page.evaluate(_STATE_JS)

    def _menu(self, menu: str, command: str) -> None:
        self.page.locator(".lm-MenuBar-item", has_text=menu).first.click()
        self.page.locator(f'.lm-Menu-item[data-command="{command}"]').click()

    def run_all(self) -> None:
        """Run → Run All Cells."""
        self._menu("Run", "runmenu:run-all")

    def run_all_above(self, index: int) -> None:
        """Select cell ``index`` and use Run → Run All Above Selected Cell."""
        self.cell(index).locator(".jp-InputPrompt").click()
        self._menu("Run", "notebook:run-all-above")

    def run_cell(self, index: int) -> None:
        """Select cell ``index`` and run just that one (Shift+Enter from command mode)."""
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Shift+Enter")

    def wait_until_ran(self, indices: list[int], timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the cells ``indices`` have run (or one failed) and the kernel is idle.

        Returns the final :meth:`state`. Raises TimeoutError (with what was seen) otherwise.
        """
        started_at = time.monotonic()
        deadline = started_at + timeout
        state: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            state = self.state()
            if state and state["kernel"] == "idle":
                cells = state["cells"]
                if time.monotonic() - started_at > 15 and all(cells[i]["prompt"] == "[ ]:" for i in indices):
                    raise TimeoutError(f"{self.name}: none of the cells {indices} started in 15 s")
                busy = [c["index"] for c in cells if c["prompt"] == "[*]:"]
                failed = any(c["errors"] for c in cells)
                ran = all(cells[i]["prompt"][1:-2].strip().isdigit() for i in indices)
                if not busy and (ran or failed):
                    return state
            self.page.wait_for_timeout(250)
        prompts = state and [(c["index"], c["prompt"]) for c in state["cells"] if c["code"]]
        raise TimeoutError(
            f"{self.name}: cells {indices} did not all run within {timeout} s; "
            f"kernel {state and state['kernel']}, prompts {prompts}"
        )

    def screenshot(self, name: str, locator: Any | None = None) -> Path:
        """Save a PNG in tests/browser/screenshots/ (of ``locator`` if given, else the page)."""
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        if locator is None:
            self.page.screenshot(path=str(path))
        else:
            locator.scroll_into_view_if_needed()
            locator.screenshot(path=str(path))
        return path


def error_report(state: dict[str, Any]) -> list[str]:
    """One line per cell that shows an error output, with the start of its text."""
    return [
        f"cell {cell['index']} {cell['prompt']} {' | '.join(cell['errors'])[:1500]}"
        for cell in state["cells"]
        if cell["errors"]
    ]
