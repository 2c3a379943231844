"""Chat in a notebook: a :class:`ChatWidget` per person and a :class:`ServerDashboard`.

A ``ChatWidget`` is a :class:`~chatlab.client.ChatClient` with a face: a recipient picker, a
text box, a Send button and a log of what was sent and what arrived. A ``ServerDashboard``
shows what a running server (:mod:`chatlab.servers`) keeps about its clients, which
threads and sockets it uses, and a feed of its events, with Start and Stop buttons.

Which thread does what. The kernel's main thread builds the widgets and runs every button
click and Enter key press (the browser's messages are handled there), so sending happens in
the main thread. Everything that *arrives* happens in other threads, and those threads never
print (output printed from a thread lands in whatever cell happens to be running): they only
set trait values such as ``HTML.value`` and ``Dropdown.options``, which reach the browser on
their own. Each ChatWidget has a thread of its own, ``chatlab-widget-alice``, that takes the
lines its client's reader thread (``chatlab-reader-alice``) queued (``client.recv()``) and
writes them into the log; it ends when the connection
ends, and the widget then shows that and disables Send. A dashboard has one thread,
``chatlab-dashboard``: the server's threads only mark the dashboard "dirty" when an event
happens, and that thread redraws at most :attr:`ServerDashboard.max_redraws_per_second` times
a second (a burst of a hundred messages is one redraw) and once a second anyway, so the
"connected for" clock moves and a server started or stopped elsewhere is noticed.

Enter to send, and why it takes a few lines. In ipywidgets 8 a text box tells the kernel about
Enter with a ``{"event": "submit"}`` message, sent *before* the box commits what was typed
(ipywidgets 8.1), and with ``continuous_update=True`` the commits of the last keys can be held
back in the browser while that message overtakes them: a fast typist's message arrived cut
short in our browser test. ``Text.on_submit`` is deprecated (it warns), and the recommended
``continuous_update=False`` plus observing ``value`` also fires when the box merely loses focus
(picking a recipient after typing would send the message early, to the old recipient). So the
box uses ``continuous_update=False`` (the browser commits the text on Enter or when the box
loses focus) and :meth:`ChatWidget._on_enter` joins the two events: Enter arms the box, and
the commit that follows it sends; if no commit follows within :data:`ENTER_GRACE` seconds (the
text was already committed, e.g. before the recipient was picked), what is in the box is sent
then. A commit without Enter is only a draft, which Send sends. Code drives a widget the way
a person does: ``alice.text.value = "hi"`` then ``alice.send_button.click()``.

Re-running a cell is safe: a new ChatWidget with the name and address of an open one closes
the old one first (the server would refuse the name otherwise), a new ServerDashboard closes
older dashboards of the same server, and :func:`close_all` closes every chat widget and
dashboard of this module (use it with ``ChatServer.stop_all()`` in a lesson's last cell).
"""

from __future__ import annotations

import asyncio
import html
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import ipywidgets as widgets

from . import protocol
from .client import ChatClient, ConnectionClosed, NameRefused
from .room import ClientRecord, ServerEvent
from .servers import ServerBase

EVERYONE = "everyone"
"""The recipient-picker entry that broadcasts (sent as ``%*%text``)."""

ENTER_GRACE = 0.25
"""Seconds to wait, after Enter, for the browser to commit the text box (see above)."""

_open: list[ChatWidget | ServerDashboard] = []  # every widget of this module not closed yet
# Re-entrant on purpose: the garbage collector may run a forgotten widget's __del__, which
# closes it and so takes this lock, in whatever this thread is doing, also while it holds the
# lock (a plain Lock once hung a test suite there). And what holds it only copies _open.
_open_lock = threading.RLock()


def _open_items() -> list[ChatWidget | ServerDashboard]:
    """A copy of the open widgets, to look through without holding the lock."""
    with _open_lock:
        return list(_open)


def close_all() -> int:
    """Close every ChatWidget and ServerDashboard still open; returns how many there were."""
    items = _open_items()
    for item in items:
        item.close()
    return len(items)


def _remember(item: ChatWidget | ServerDashboard) -> None:
    with _open_lock:
        _open.append(item)


def _forget(item: ChatWidget | ServerDashboard) -> None:
    with _open_lock:
        if item in _open:
            _open.remove(item)


# --- looks ------------------------------------------------------------------------------------
# Inline styles built on JupyterLab's theme variables, so light and dark themes both work.

_FONT = "font-family:var(--jp-ui-font-family,sans-serif);font-size:12px;line-height:1.4;"
_MUTED = "var(--jp-ui-font-color2,#666)"
_BORDER = "var(--jp-border-color2,#ddd)"
_ERROR = "var(--jp-error-color1,#d32f2f)"
_OK = "var(--jp-success-color1,#388e3c)"
_SENT = "var(--jp-brand-color1,#1976d2)"
# A hanging indent: a long entry's later rows start further right than any entry, so no
# message can be padded until a row of it reads like an entry of its own ("← teacher: ...").
_HANGING = "padding-left:2em;text-indent:-2em;"
_ENTRY_STYLES = {
    "sent": f"color:{_SENT};",
    "received": "",
    "notice": f"color:{_MUTED};font-style:italic;",
    "error": f"color:{_ERROR};",
    "closed": f"color:{_MUTED};border-top:1px dashed {_BORDER};margin-top:2px;",
}


def _scroll_box(inner: str, height: str) -> str:
    """A box of fixed height that starts scrolled to its bottom, whenever it is redrawn."""
    # column-reverse anchors the scroll position at the end: the newest line stays in view
    # each time the HTML is replaced, without any JavaScript.
    return (
        f'<div style="{_FONT}height:{height};overflow-y:auto;display:flex;'
        f"flex-direction:column-reverse;white-space:normal;overflow-wrap:anywhere;"
        f'border:1px solid {_BORDER};border-radius:3px;padding:2px 6px;">'
        f"<div>{inner}</div></div>"
    )


def _table(title: str, headers: list[str], rows: list[list[str]], empty: str) -> str:
    """A compact HTML table. Cells come escaped; whole numbers are right-aligned."""
    cell = f"padding:1px 8px 1px 0;border-bottom:1px solid {_BORDER};text-align:left;"
    head = "".join(f'<th style="{cell}font-weight:600;">{h}</th>' for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="{cell}{"text-align:right;" if value.isdigit() else ""}">{value}</td>'
            for value in row
        )
        + "</tr>"
        for row in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" style="{cell}color:{_MUTED};">{empty}</td></tr>'
    return (
        f'<div style="{_FONT}white-space:normal;">'
        f'<div style="font-weight:600;margin:4px 0 2px;">{title}</div>'
        f'<table style="border-collapse:collapse;">{head and "<tr>" + head + "</tr>"}{body}</table></div>'
    )


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


# --- the chat widget ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    """One line of a chat log; ``kind`` is sent, received, notice, error or closed.

    ``text[start:]`` is what somebody typed (``text[:start]`` is the log's own "← alice: "). It
    is shown isolated (``<bdi>``), so right-to-left text can never reorder the sender's name.
    """

    kind: str
    text: str
    start: int = 0


class ChatWidget(widgets.VBox):
    """A chat window for one client: recipient picker, log, text box and Send button.

    Typing ``%bob%hi`` (any line starting with ``%``) sends the line exactly as written;
    anything else goes to the recipient picked in ``.to`` ("everyone" broadcasts).

    ``transcript()`` is the log as plain text, one string per line:

    - ``→ bob: hi``, ``→ everyone: hi``, ``→ %server%who`` what this widget sent
    - ``← bob: hello``   a message that arrived from bob (direct or broadcast)
    - ``* bob joined``   a notice from the server, ``! unknown client 'zed'`` an error
    - ``(connection closed)`` the connection ended

    Its parts: ``.to`` (the recipient picker), ``.chat_log`` (an HTML widget; ``.log`` is
    ipywidgets' own logger), ``.text`` and ``.send_button``.

    The log starts with the ``* welcome alice`` and ``* online: ...`` lines the client read
    while it registered.

    Resource handling: the constructor connects and registers (a refused name raises the
    client's :class:`~chatlab.client.NameRefused` before any widget is made) and starts the
    ``chatlab-widget-NAME`` thread. :meth:`close` closes the connection, joins that thread and
    closes the widget views. The widget reads its client's lines itself: do not call
    ``widget.client.recv()`` while it is open.

    ``tls=`` and ``code=`` are the client's (:class:`~chatlab.client.ChatClient`): TLS with
    the system's CAs (``True``) or a context that trusts the class's certificate, and the
    class code a server started with ``--code`` asks for.
    """

    log_height = "170px"
    max_entries = 200

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = protocol.DEFAULT_PORT,
        name: str = "",
        *,
        timeout: float = 5.0,
        client: ChatClient | None = None,
        tls: bool | ssl.SSLContext | None = None,
        code: str | None = None,
    ) -> None:
        if client is None:
            replacing = _close_same(host, port, name)
            # may raise NameRefused (or CodeRefused, TlsFailed: see ChatClient)
            client = _connect(host, port, name, timeout, replacing, tls=tls, code=code)
            address: tuple[str, int] | None = (host, port)
        else:
            address = None
        name = client.name
        self.client = client
        self.name = name
        self.address = address
        self._entries: list[LogEntry] = []
        self._changed = threading.Condition()  # guards _entries, _online and the picker
        self._online: set[str] = set()
        self._closed = False
        self._enter_pressed = False  # Enter seen, its commit not yet (see the module docstring)

        self.header = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", margin="0 8px 0 0"))
        self.to = widgets.Dropdown(
            options=[EVERYONE],
            value=EVERYONE,
            description="to",
            style={"description_width": "initial"},
            layout=widgets.Layout(width="auto", flex="1 1 auto"),
        )
        self.chat_log = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.text = widgets.Text(
            placeholder="message, or %name%message",
            continuous_update=False,
            layout=widgets.Layout(width="auto", flex="1 1 auto"),
        )
        self.send_button = widgets.Button(
            description="Send",
            button_style="primary",
            tooltip="send (or press Enter)",
            layout=widgets.Layout(width="60px", flex="0 0 60px"),
        )
        for part, suffix in (
            (self.text, "text"),
            (self.to, "to"),
            (self.send_button, "send"),
            (self.chat_log, "log"),
            (self.header, "header"),
        ):
            part.add_class(f"chatlab-{name}-{suffix}")
        super().__init__(
            children=[
                widgets.HBox([self.header, self.to], layout=widgets.Layout(align_items="center")),
                self.chat_log,
                widgets.HBox([self.text, self.send_button]),
            ],
            # Alone it is at most 360px wide; in a chat_row three share a notebook's width.
            layout=widgets.Layout(
                flex="1 1 190px",
                min_width="180px",
                max_width="360px",
                padding="4px",
                border=f"1px solid {_BORDER}",
                margin="0 6px 6px 0",
            ),
        )
        self.add_class("chatlab-chat")
        self.send_button.on_click(lambda _button: self.submit())
        self.text.on_msg(self._on_enter)
        self.text.observe(self._on_commit, "value")

        with self._changed:
            self._set_online(client.online)
        self._add("notice", f"* welcome {name}")
        self._add("notice", "* online: " + ", ".join(client.online))
        self._draw_header()
        _remember(self)
        self._thread = threading.Thread(target=self._receive_loop, name=f"chatlab-widget-{name}", daemon=True)
        self._thread.start()

    @classmethod
    def from_client(cls, client: ChatClient) -> ChatWidget:
        """A widget for a client that is already registered; the widget then owns it."""
        return cls(client=client)

    def __repr__(self) -> str:  # what a notebook shows as text/plain: stable, no addresses
        state = "closed" if self._closed else "connected"
        return f"ChatWidget(name={self.name!r}, {state})"

    # --- sending: the kernel's main thread -------------------------------------------------

    def _on_enter(self, _widget: object, content: dict, _buffers: object) -> None:
        """The browser saw Enter in the text box; its text may be committed right after."""
        if content.get("event") != "submit":
            return
        self._enter_pressed = True
        try:
            loop = asyncio.get_running_loop()  # the kernel's loop, in the main thread
        except RuntimeError:  # called directly by code, not by the kernel: nothing to wait for
            self._enter_grace_over()
        else:
            loop.call_later(ENTER_GRACE, self._enter_grace_over)

    def _on_commit(self, change: dict) -> None:
        """The text box's value changed: after Enter that is the text to send."""
        if self._enter_pressed and change["new"].strip():
            self._enter_pressed = False
            self.submit()

    def _enter_grace_over(self) -> None:
        if self._enter_pressed:  # no commit came: the text was committed earlier
            self._enter_pressed = False
            self.submit()

    def submit(self) -> None:
        """Send what is in the text box (what Enter and the Send button do), then clear it."""
        line = self.text.value
        if not line.strip():
            return
        if self._closed:
            self._add("error", "! not connected")
            return
        with self._changed:  # the picker cannot change under us while we read it
            to = self.to.value
        try:
            if line.startswith(protocol.MESSAGE_SIGIL):
                self._add("sent", line, "→ ")  # logged first, so a reply cannot come before it
                self.client.send_line(line)
            elif to == EVERYONE:
                self._add("sent", line, f"→ {EVERYONE}: ")
                self.client.broadcast(line)
            else:
                self._add("sent", line, f"→ {to}: ")
                self.client.send(to, line)
        except ValueError as exc:
            self._add("error", f"! {exc}")
            return
        except ConnectionClosed:
            self._add("error", "! not sent: the connection is closed")
            return
        self.text.value = ""

    # --- receiving: the chatlab-widget-NAME thread -------------------------------------------

    def _receive_loop(self) -> None:
        while True:
            try:
                line = self.client.recv(timeout=None)
            except ConnectionClosed:
                break
            self._show(line)
        self._closed = True
        for part in (self.text, self.to, self.send_button):
            part.disabled = True
        self.text.placeholder = "disconnected"
        self._draw_header()
        self._add("closed", "(connection closed)")  # last: whoever waits for it sees the rest done

    def _show(self, line: str) -> None:
        parsed = protocol.parse_server_line(line)
        if parsed.kind == "message":
            self._add("received", parsed.text, f"← {parsed.sender}: ")
        elif parsed.kind == "notice":
            self._follow_presence(parsed.text)
            self._add("notice", f"* {parsed.text}")
        elif parsed.kind == "error":
            self._add("error", f"! {parsed.text}")
        else:
            self._add("received", line)

    def _follow_presence(self, notice: str) -> None:
        """Keep the picker current from ``online: ...``, ``bob joined`` and ``bob left``."""
        names = protocol.parse_online(notice)
        who, _, what = notice.partition(" ")
        with self._changed:
            if names is not None:
                self._set_online(names)
            elif what == "joined" and protocol.NAME_PATTERN.fullmatch(who):
                self._set_online(self._online | {who})
            elif what == "left" and protocol.NAME_PATTERN.fullmatch(who):
                self._set_online(self._online - {who})

    def _set_online(self, names: Iterable[str]) -> None:
        """Called with ``_changed`` held. Keeps the picked recipient if still online."""
        self._online = set(names)
        options = [EVERYONE] + sorted((n for n in self._online if n != self.name), key=str.lower)
        if list(self.to.options) == options:
            return
        picked = self.to.value
        with self.to.hold_sync():  # one message to the browser, not a flicker to "everyone"
            self.to.options = options
            self.to.value = picked if picked in options else EVERYONE

    # --- the log (any thread) ------------------------------------------------------------------

    def _add(self, kind: str, text: str, prefix: str = "") -> None:
        with self._changed:
            self._entries.append(LogEntry(kind, prefix + text, len(prefix)))
            del self._entries[: -self.max_entries]
            rows = "".join(
                f'<div style="{_HANGING}{_ENTRY_STYLES[e.kind]}">{_escape(e.text[: e.start])}'
                f"<bdi>{_escape(e.text[e.start :])}</bdi></div>"
                for e in self._entries
            )
            self.chat_log.value = _scroll_box(rows, self.log_height)
            self._changed.notify_all()

    def _draw_header(self) -> None:
        dot = f'<span style="color:{_MUTED if self._closed else _OK};">●</span>'
        self.header.value = f'<span style="{_FONT}font-size:13px;">{dot} <b>{_escape(self.name)}</b></span>'

    def transcript(self) -> list[str]:
        """The log as plain text lines (see the class docstring for their form)."""
        with self._changed:
            return [entry.text for entry in self._entries]

    def wait_for(self, fragment: str, timeout: float = 2.0) -> str:
        """Wait until a line of the log contains ``fragment`` and return that line.

        Raises TimeoutError after ``timeout`` seconds. Any line counts, old or new, so pick a
        fragment that is new (e.g. the message text).
        """

        def found() -> str | None:
            return next((e.text for e in self._entries if fragment in e.text), None)

        with self._changed:
            if self._changed.wait_for(lambda: found() is not None, timeout):
                return found()  # type: ignore[return-value]
        raise TimeoutError(f"{self.name}'s log has no line with {fragment!r} after {timeout} s")

    @property
    def closed(self) -> bool:
        """True once the connection has ended (the log says so and Send is disabled)."""
        return self._closed

    @property
    def recipients(self) -> list[str]:
        """The picker's options: "everyone", then the others online, sorted."""
        return list(self.to.options)

    def close(self) -> None:
        """Close the connection, join the widget's thread and close the widget views."""
        if "client" not in self.__dict__:  # ipywidgets calls close() from __del__ too
            return super().close()
        _forget(self)
        self.client.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        for part in (self.header, self.to, self.chat_log, self.text, self.send_button, *self.children):
            part.close()
        super().close()


def _close_same(host: str, port: int, name: str) -> bool:
    """Close an open widget that has this name on this server (a re-run cell's old widget)."""
    same = [
        w
        for w in _open_items()
        if isinstance(w, ChatWidget) and w.address == (host, port) and w.name.lower() == name.lower()
    ]
    for widget in same:
        widget.close()
    return bool(same)


def _connect(
    host: str,
    port: int,
    name: str,
    timeout: float,
    replacing: bool,
    *,
    tls: bool | ssl.SSLContext | None = None,
    code: str | None = None,
) -> ChatClient:
    """Connect and register; after closing an old widget of that name, allow the server a
    moment to notice (its thread for the old connection frees the name when it sees EOF)."""
    deadline = time.monotonic() + (2.0 if replacing else 0.0)
    while True:
        try:
            return ChatClient(host, port, name, timeout=timeout, tls=tls, code=code)
        except NameRefused as exc:
            if str(exc) != "name taken" or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def chat_row(*chats: ChatWidget) -> widgets.HBox:
    """Put chat widgets side by side; they wrap onto a new row when the notebook is narrow."""
    return widgets.HBox(list(chats), layout=widgets.Layout(flex_flow="row wrap"))


# --- the server dashboard ------------------------------------------------------------------------

_THREAD_ROLES = (
    ("chatlab-accept", "server: accepts connections"),
    ("chatlab-client-", "server: reads {}'s lines"),
    ("chatlab-writer-", "server: writes to {}"),
    ("chatlab-selectors", "server: one selectors loop for everyone"),
    ("chatlab-asyncio", "server: one asyncio loop for everyone"),
    ("chatlab-reader-", "client {}: receives"),
    ("chatlab-widget-", "window {}: fills its log"),
    ("chatlab-dashboard", "redraws this dashboard"),
)


def _thread_role(name: str) -> str:
    for prefix, role in _THREAD_ROLES:
        if name.startswith(prefix):
            return role.format(name[len(prefix) :])
    return ""


def _since(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _address(sock_call: Callable[[], tuple]) -> str:
    """``host:port`` from ``sock.getsockname`` or ``sock.getpeername``, if still open."""
    try:
        host, port = sock_call()[:2]
    except OSError:
        return "(closed)"
    return f"{host}:{port}"


def _feed_line(event: ServerEvent) -> tuple[str, str]:
    """How the feed shows one event: (style kind, text)."""
    who = event.client or f"{event.address[0]}:{event.address[1]}"
    if event.kind == "message":
        to = EVERYONE if event.to == "*" else event.to
        return "received", f"{who} → {to}: {event.text}"
    if event.kind == "error":
        return "error", f"! {who}: {event.text}"
    if event.kind == "registered":
        return "notice", f"{who} joined"
    if event.kind == "left":
        return "notice", f"{who} left ({event.text})"
    return "notice", f"{who} connected"


def _clients_html(records: list[ClientRecord]) -> str:
    now = time.time()
    rows = [
        [
            _escape(r.name or ""),
            r.ip,
            str(r.port),
            str(r.fd),
            _escape(r.thread.name if r.thread else "-"),
            _since(now - r.connected_at),
            str(r.messages_in),
            str(r.messages_out),
        ]
        for r in records
    ]
    headers = ["name", "IP", "port", "fd", "serving thread", "connected for", "sent", "received"]
    return _table("Clients", headers, rows, "no clients")


def _threads_html() -> str:
    threads = sorted((t for t in threading.enumerate() if t.name.startswith("chatlab")), key=lambda t: t.name)
    rows = [
        [
            _escape(t.name),
            "yes" if t.is_alive() else "no",
            "yes" if t.daemon else "no",
            _escape(_thread_role(t.name)),
        ]
        for t in threads
    ]
    return _table("Threads (chatlab's, in this kernel)", ["name", "alive", "daemon", "job"], rows, "none")


def _feed_html(events: list[ServerEvent]) -> str:
    rows = []
    for event in events:
        kind, text = _feed_line(event)
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        rows.append(
            f'<div style="{_ENTRY_STYLES[kind]}"><span style="color:{_MUTED};'
            f'font-style:normal;">{stamp}</span> {_escape(text)}</div>'
        )
    inner = "".join(rows) or f'<div style="color:{_MUTED};">no events yet</div>'
    return f'<div style="{_FONT}font-weight:600;margin:4px 0 2px;">Events</div>' + _scroll_box(inner, "140px")


@dataclass(frozen=True)
class Counters:
    """What a dashboard counts in the server's event history."""

    connections: int = 0
    joined: int = 0
    left: int = 0
    messages: int = 0
    broadcasts: int = 0
    errors: int = 0

    @classmethod
    def count(cls, events: list[ServerEvent]) -> Counters:
        kinds = [e.kind for e in events]
        return cls(
            connections=kinds.count("connected"),
            joined=kinds.count("registered"),
            left=sum(1 for e in events if e.kind == "left" and e.client is not None),
            messages=kinds.count("message"),
            broadcasts=sum(1 for e in events if e.kind == "message" and e.to == "*"),
            errors=kinds.count("error"),
        )

    def __str__(self) -> str:
        return (
            f"connections {self.connections}, joined {self.joined}, left {self.left}, "
            f"messages {self.messages} ({self.broadcasts} broadcast), errors {self.errors}"
        )


class ServerDashboard(widgets.VBox):
    """A live view of a server of any model: status, clients, threads, sockets, counters, events.

    Resource handling: the constructor subscribes to the server's events and starts the
    ``chatlab-dashboard`` thread; :meth:`close` unsubscribes, stops and joins that thread and
    closes the views. The Start and Stop buttons call ``server.start()`` and ``server.stop()``
    in the main thread (Stop disconnects every client and joins the server's threads).

    Counters come from the server's event history (its last ``history`` events, 1000 by
    default), so a dashboard opened late still counts what happened before it.
    """

    server: ServerBase
    max_redraws_per_second = 5
    tick = 1.0  # seconds between redraws when nothing happens
    feed_length = 40

    def __init__(self, server: ServerBase) -> None:
        older = [d for d in _open_items() if isinstance(d, ServerDashboard) and d.server is server]
        for dashboard in older:
            dashboard.close()
        self.server = server
        self.status = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        self.start_button = widgets.Button(
            description="Start", icon="play", button_style="success", layout=widgets.Layout(width="80px")
        )
        self.stop_button = widgets.Button(
            description="Stop", icon="stop", button_style="danger", layout=widgets.Layout(width="80px")
        )
        self.clients_table = widgets.HTML()
        self.threads_table = widgets.HTML(layout=widgets.Layout(margin="0 24px 0 0"))
        self.sockets_table = widgets.HTML()
        self.feed = widgets.HTML(layout=widgets.Layout(width="100%"))
        for part, suffix in (
            (self.status, "status"),
            (self.clients_table, "clients"),
            (self.threads_table, "threads"),
            (self.sockets_table, "sockets"),
            (self.feed, "feed"),
            (self.start_button, "start"),
            (self.stop_button, "stop"),
        ):
            part.add_class(f"chatlab-dashboard-{suffix}")
        super().__init__(
            children=[
                widgets.HBox(
                    [self.status, self.start_button, self.stop_button],
                    layout=widgets.Layout(align_items="center"),
                ),
                self.clients_table,
                widgets.HBox(
                    [self.threads_table, self.sockets_table], layout=widgets.Layout(flex_flow="row wrap")
                ),
                self.feed,
            ],
            layout=widgets.Layout(padding="4px 8px", border=f"1px solid {_BORDER}", max_width="900px"),
        )
        self.add_class("chatlab-dashboard")
        self.start_button.on_click(lambda _button: self.start())
        self.stop_button.on_click(lambda _button: self.stop())

        self._draw_lock = threading.Lock()  # the main thread and the dashboard thread both draw
        self._wake = threading.Condition()
        self._dirty = False
        self._closing = False
        self.redraws = 0  # how many times the tables were drawn (to see the throttling work)
        self.refresh()
        self._unsubscribe = server.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._redraw_loop, name="chatlab-dashboard", daemon=True)
        self._thread.start()
        _remember(self)

    def __repr__(self) -> str:
        return f"ServerDashboard({'running' if self.server.running else 'stopped'})"

    # --- buttons: the kernel's main thread -------------------------------------------------------

    def start(self) -> None:
        """Start the server (what the Start button does) and redraw."""
        if not self.server.running:
            try:
                self.server.start()
            except OSError as exc:
                self.refresh(problem=f"cannot start: {exc.strerror or exc}")
                return
        self.refresh()

    def stop(self) -> None:
        """Stop the server (what the Stop button does): clients are disconnected."""
        self.server.stop()
        self.refresh()

    # --- redrawing -----------------------------------------------------------------------------

    def _on_event(self, _event: ServerEvent) -> None:
        """Runs in a server thread for every event: only mark the view out of date."""
        with self._wake:
            self._dirty = True
            self._wake.notify()

    def _redraw_loop(self) -> None:
        """The chatlab-dashboard thread: redraw when dirty, at most N times a second."""
        pause = 1.0 / self.max_redraws_per_second
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._dirty or self._closing, self.tick)
                if self._closing:
                    return
                self._dirty = False
            self.refresh()
            with self._wake:  # events during this pause are coalesced into the next redraw
                if self._wake.wait_for(lambda: self._closing, pause):
                    return

    def refresh(self, problem: str = "") -> None:
        """Redraw everything now, from the server's current state (any thread)."""
        with self._draw_lock:  # the state is read inside: the last redraw shows the latest
            records = self.server.clients()
            events = self.server.events()
            self.status.value = self._status_html(records, events, problem)
            self.start_button.disabled = self.server.running
            self.stop_button.disabled = not self.server.running
            self.clients_table.value = _clients_html(records)
            self.threads_table.value = _threads_html()
            self.sockets_table.value = _table(
                "Server sockets",
                ["kind", "fd", "local", "remote", "client"],
                self._socket_rows(records),
                "none (stopped)",
            )
            self.feed.value = _feed_html(events[-self.feed_length :])
            self.redraws += 1

    def _status_html(self, records: list[ClientRecord], events: list[ServerEvent], problem: str) -> str:
        server = self.server
        if server.running:
            waiting = server.connection_count() - len(records)
            state = (
                f'<span style="color:{_OK};">●</span> <b>running</b> on '
                f"{server.host}:{server.port} · {_escape(server.describe())} · "
                f"{len(records)} online" + (f" · {waiting} waiting for a name" if waiting > 0 else "")
            )
        else:
            state = f'<span style="color:{_MUTED};">●</span> <b>stopped</b>'
        if problem:
            state += f' · <span style="color:{_ERROR};">{_escape(problem)}</span>'
        counters = Counters.count(events)
        return (
            f'<div style="{_FONT}white-space:normal;"><div style="font-size:13px;">{state}</div>'
            f'<div style="color:{_MUTED};">{counters}</div></div>'
        )

    def _socket_rows(self, records: list[ClientRecord]) -> list[list[str]]:
        rows = []
        listener = self.server.listener
        if listener is not None:
            rows.append(["listening", str(listener.fileno()), _address(listener.getsockname), "-", "-"])
        for r in records:
            rows.append(
                [
                    "connected",
                    str(r.fd),
                    _address(r.sock.getsockname),
                    _address(r.sock.getpeername),
                    _escape(r.name or ""),
                ]
            )
        return rows

    # --- text for notebooks and tests ----------------------------------------------------------------

    def summary(self) -> str:
        """The dashboard's state as plain text: no ports, fds or times, so it is repeatable."""
        records = self.server.clients()
        names = ", ".join(r.label for r in records) or "nobody"
        lines = [f"server: {'running' if self.server.running else 'stopped'}, {len(records)} online: {names}"]
        lines += [f"  {r.name}: sent {r.messages_in}, received {r.messages_out}" for r in records]
        lines.append(f"events: {Counters.count(self.server.events())}")
        return "\n".join(lines)

    def close(self) -> None:
        """Unsubscribe, stop and join the dashboard thread, close the views."""
        if "_thread" not in self.__dict__:  # ipywidgets calls close() from __del__ too
            return super().close()
        _forget(self)
        self._unsubscribe()
        with self._wake:
            self._closing = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        for part in (
            self.status,
            self.start_button,
            self.stop_button,
            self.clients_table,
            self.threads_table,
            self.sockets_table,
            self.feed,
            *self.children,
        ):
            part.close()
        super().close()
