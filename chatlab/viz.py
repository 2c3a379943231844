"""Pictures of a chat session: who is connected, who said what in which order, which thread ran when.

Every function takes plain data (the server's :class:`~chatlab.room.ClientRecord` list, its
:class:`~chatlab.room.ServerEvent` log, or :class:`Span` records) and returns a new matplotlib
:class:`~matplotlib.figure.Figure`. Nothing here touches a socket or a thread of the server, and
nothing goes through ``pyplot``: a figure is shown once, when a notebook cell ends with it, and
never again by accident. Layouts are deterministic (names are sorted) and sizes are fixed, so a
figure's text repr is the same on every run. Draw from the notebook's main thread; the one piece
meant for any thread is :meth:`ThreadRecorder.span`, which worker threads call to record what
they did.

One palette runs through all pictures: the server is dark slate, each client keeps its colour
(picked by its place among the sorted names), errors are red. Each drawn item carries a
matplotlib ``gid`` such as ``"deliver:alice->bob"``, so tests (and curious students) can find
what was drawn with ``fig.findobj(lambda a: a.get_gid() == ...)``.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from matplotlib.artist import Artist
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyBboxPatch, Patch

from . import protocol
from .room import ClientRecord, ServerEvent

SERVER_COLOR = "#2F3E4E"
ERROR_COLOR = "#C0392B"
GONE_COLOR = "#9AA3AD"
WAITING_COLOR = "#CDD3DA"
TEXT_COLOR = "#263238"
# Seaborn's "deep" colours without its red (red means an error here).
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#8172B3", "#937860", "#DA8BC3", "#CCB974", "#64B5CD")
MONO = "DejaVu Sans Mono"
MAX_LABEL = 60  # characters of wire text on an arrow, at most
LABEL_SIZE = 8.5
MONO_ADVANCE = 0.602  # width of a DejaVu Sans Mono character, in font sizes


def _enable_inline_display() -> None:
    """Let a bare Figure show as a picture in Jupyter without importing pyplot.

    The PNG formatter for figures is registered when the inline backend module is imported,
    which normally happens inside ``pyplot``; these figures are made without it.
    """
    if "ipykernel" in sys.modules:
        try:
            import matplotlib_inline.backend_inline  # noqa: F401
        except ImportError:
            pass


_enable_inline_display()


def client_colors(names: Iterable[str]) -> dict[str, str]:
    """A colour per client name, by its place among the sorted names (the same in every picture)."""
    ordered = sorted(set(names), key=str.lower)
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(ordered)}


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- reading the event log ------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One line the server delivered: ``sender``'s ``text`` reached ``receiver``."""

    sender: str
    receiver: str
    text: str
    broadcast: bool = False


def _replay(events: Iterable[ServerEvent]) -> Iterator[tuple[ServerEvent, frozenset[str]]]:
    """Each event with the names online just before it (``registered`` adds, ``left`` removes)."""
    online: set[str] = set()
    for event in events:
        yield event, frozenset(online)
        if event.kind == "registered" and event.client:
            online.add(event.client)
        elif event.kind == "left" and event.client:
            online.discard(event.client)


def _receivers(event: ServerEvent, online: frozenset[str]) -> list[str]:
    """Who got a message: its receiver, or for a broadcast everyone else online then."""
    if event.to == "*":
        return sorted(online - {event.client or ""}, key=str.lower)
    return [event.to or ""]


def deliveries(events: Iterable[ServerEvent]) -> list[Delivery]:
    """Every delivery a server's event log implies, in order.

    A direct message has one; a broadcast has one per other client that the log shows online
    at that moment (the log is replayed from the start, so pass all of it).
    """
    return [
        Delivery(event.client or "", receiver, event.text, broadcast=event.to == "*")
        for event, online in _replay(events)
        if event.kind == "message"
        for receiver in _receivers(event, online)
    ]


def _message_counts(events: list[ServerEvent]) -> dict[str, tuple[int, int]]:
    """name -> (messages it sent, messages delivered to it)."""
    sent = Counter(event.client or "" for event in events if event.kind == "message")
    received = Counter(delivery.receiver for delivery in deliveries(events))
    return {name: (sent[name], received[name]) for name in sent.keys() | received.keys()}


def _names_in(events: list[ServerEvent]) -> set[str]:
    names = {event.client for event in events if event.client}
    names |= {event.to for event in events if event.kind == "message" and event.to and event.to != "*"}
    return names


# --- topology --------------------------------------------------------------------------------


def topology(
    clients: Iterable[ClientRecord | str],
    events: Iterable[ServerEvent] | None = None,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (7.0, 6.0),
) -> Figure:
    """The server in the middle and a node per client, each joined to the server by its connection.

    ``clients`` is ``server.clients()`` (nodes then show the client's port) or a list of names.
    Each spoke is labelled with how many messages that client sent and received and is as wide
    as their sum: counted from ``events`` when given (clients that appear there but are gone
    are drawn grey and dashed), otherwise from the records' own counters. The default title
    counts the clients. Nodes carry gids ``client:NAME``, spokes ``edge:NAME`` and their
    labels ``edge-label:NAME``.
    """
    records = list(clients)
    names_now = [c if isinstance(c, str) else c.label for c in records]
    ports = {c.label: c.port for c in records if isinstance(c, ClientRecord)}
    log = list(events) if events is not None else None
    lower_now = {name.lower() for name in names_now}
    gone = sorted({n for n in _names_in(log) if n.lower() not in lower_now}) if log else []
    names = sorted(set(names_now) | set(gone), key=str.lower)
    colors = client_colors(names)

    if log is not None:
        counts = _message_counts(log)
    else:
        counts = {c.label: (c.messages_in, c.messages_out) for c in records if isinstance(c, ClientRecord)}
    busiest = max((sum(counts.get(n, (0, 0))) for n in names), default=0)

    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0.0, 0.08, 1.0, 0.84))
    ax.set_xlim(-1.75, 1.75)
    ax.set_ylim(-1.65, 1.65)
    ax.set_aspect("equal", adjustable="box")
    ax.axis("off")
    if title is None:
        title = f"{len(names_now)} client{'s' if len(names_now) != 1 else ''} connected to one server"
        title += f" ({len(gone)} left)" if gone else ""
    fig.suptitle(title, fontsize=13, color=TEXT_COLOR, y=0.97)

    server_box = FancyBboxPatch(
        (-0.26, -0.13),
        0.52,
        0.26,
        boxstyle="round,pad=0.03",
        facecolor=SERVER_COLOR,
        edgecolor="none",
        zorder=3,
        gid="server",
    )
    ax.add_patch(server_box)
    ax.text(0, 0, "server", ha="center", va="center", color="white", fontsize=12, fontweight="bold", zorder=4)

    n = len(names)
    start = 180.0 if n <= 1 else 90.0 + 180.0 / n  # a symmetric ring, first name upper left
    radius, node_radius = 1.3, 0.27
    for i, name in enumerate(names):
        angle = math.radians(start - 360.0 * i / n)
        dx, dy = round(math.cos(angle), 9), round(math.sin(angle), 9)
        x, y = radius * dx, radius * dy
        here = name in names_now
        color = colors[name] if here else GONE_COLOR
        sent, received = counts.get(name, (0, 0))
        width = 1.5 + (7.0 * (sent + received) / busiest if busiest else 0.0)
        ax.add_line(
            Line2D(
                [0, x],
                [0, y],
                color=color,
                linewidth=width,
                alpha=0.75 if here else 0.8,
                linestyle="-" if here else (0, (3, 2)),
                solid_capstyle="round",
                zorder=1,
                gid=f"edge:{name}",
            )
        )
        if counts:
            # Half-way along the visible part of the spoke, between the server's box and the node.
            box_exit = min(0.3 / abs(dx) if dx else 9.0, 0.17 / abs(dy) if dy else 9.0)
            along = (box_exit + radius - node_radius) / 2
            ax.text(
                along * dx,
                along * dy,
                f"sent {sent}\nreceived {received}",
                ha="center",
                va="center",
                fontsize=8.5,
                color=TEXT_COLOR,
                zorder=5,
                linespacing=1.3,
                gid=f"edge-label:{name}",
                bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor=color, linewidth=1),
            )
        ax.add_patch(
            Circle(
                (x, y),
                node_radius,
                facecolor=_tint(color),
                edgecolor=color,
                linewidth=2.2,
                zorder=3,
                linestyle="-" if here else "--",
                gid=f"client:{name}",
            )
        )
        detail = f"port {ports[name]}" if name in ports else ("" if here else "left")
        size = 11 if len(name) <= 7 else max(7, 11 * 7 / len(name))
        ax.text(
            x,
            y + (0.05 if detail else 0),
            name,
            ha="center",
            va="center",
            fontsize=size,
            fontweight="bold",
            color=TEXT_COLOR if here else GONE_COLOR,
            zorder=4,
            gid=f"name:{name}",
        )
        if detail:
            ax.text(
                x,
                y - 0.09,
                detail,
                ha="center",
                va="center",
                fontsize=7.5,
                color=TEXT_COLOR if here else GONE_COLOR,
                zorder=4,
                gid=f"detail:{name}",
            )

    if not names:
        ax.text(0, -0.45, "no clients yet", ha="center", fontsize=10, color=GONE_COLOR)
    caption = "Each client has one connection: to the server, which passes every message on."
    if counts:
        caption += "\nLine width: messages sent + received over that connection."
    fig.text(0.5, 0.02, caption, ha="center", va="bottom", fontsize=9, color="#546E7A")
    return fig


def _tint(color: str, amount: float = 0.82) -> tuple[float, float, float]:
    """``color`` mixed with white (a light fill for a node drawn in ``color``)."""
    r, g, b = to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


# --- sequence diagram --------------------------------------------------------------------------

# What a refused line was, as far as the log tells: an error event keeps the reason, not the line.
_REFUSED_LINES = {
    "expected %name%message": "(a line without %name%)",
    "line too long": "(a line that is too long)",
    "invalid utf-8": "(bytes that are not UTF-8)",
    "control characters are not allowed": "(a line with control characters)",
}


def _refusal(event: ServerEvent) -> tuple[str, bool, str]:
    """A refused line as drawn: (the line that came in, whether that is wire text, the reply).

    The log keeps why a line was refused, not the line: ``unknown client 'zed'`` came from a
    line ``%zed%...`` whose text is not known; the event names the unknown one (``unknown``).
    """
    reason, unknown = event.text, event.unknown
    if unknown is not None and reason.startswith("unknown client "):
        return f"%{unknown}%…", True, _as_text(protocol.format_unknown_client(unknown))
    if unknown is not None and reason.startswith("unknown command "):
        return f"%server%{unknown}", True, _as_text(protocol.format_unknown_command(unknown))
    return _REFUSED_LINES.get(reason, "(a line)"), False, _as_text(protocol.format_error(reason))


def _as_text(line: bytes) -> str:
    """A line the server sends, as text without its newline."""
    return line.decode().removesuffix("\n")


def _dropped(event: ServerEvent) -> bool:
    """An error the server raised about a client without being sent a line (it fell too far behind)."""
    return event.kind == "error" and event.text.startswith("too slow")


@dataclass(frozen=True)
class _Step:
    """One event as drawn in the sequence diagram, with who was online just before it."""

    event: ServerEvent
    receivers: tuple[str, ...]
    online: frozenset[str]

    @property
    def rows(self) -> int:
        if self.event.kind == "message":  # the line in, then a row per receiver
            return 1 + max(len(self.receivers), 1)
        if self.event.kind == "error" and self.event.client and not _dropped(self.event):
            return 2  # the refused line in, the error line back
        return 1


def _steps(log: list[ServerEvent]) -> list[_Step]:
    return [
        _Step(event, tuple(_receivers(event, online)) if event.kind == "message" else (), online)
        for event, online in _replay(log)
        # A connection without a name has no lane (its errors are still drawn).
        if event.kind != "connected" and not (event.kind == "left" and not event.client)
    ]


@dataclass(frozen=True)
class _Lanes:
    """Where things go: each client's lane (the server's is at x = 0) and how much text fits."""

    x: dict[str, float]
    colors: dict[str, str]
    x_min: float
    x_max: float
    chars_per_unit: float  # label characters that fit in one unit of x


def sequence_diagram(
    events: Iterable[ServerEvent],
    *,
    max_rows: int = 30,
    title: str = "Messages and errors through the server (time runs down)",
    figsize: tuple[float, float] = (10.0, 7.0),
) -> Figure:
    """Who said what, in order: a lane per client and one for the server, time running down.

    Each message is two arrows: the line its sender wrote to the server (``%bob%hi``) and,
    a row below, the line the server wrote to the receiver (``%alice%hi``). A broadcast has
    one such arrow per receiver (every other client online then), each on its own row, in the
    order of their names. A refused line is an arrow that ends at a red ``x`` on the server's
    lane, then the ``! ...`` line sent back. The log keeps why a line was refused, not the line
    itself, so ``! unknown client 'zed'`` is drawn coming from ``%zed%…``. Joins and leaves are
    marked on the client's lane, which is solid while the client is online.

    Not drawn, because the server's log does not record them: commands such as
    ``%server%who`` and their answers, and the ``* alice joined`` / ``* alice left`` notices
    the server sends to the others. When the log needs more than ``max_rows`` rows only the
    latest events are drawn. Arrows carry gids ``send:alice``, ``deliver:alice->bob``,
    ``refused:alice`` (a refused line) and ``error:alice`` (the error line back).
    """
    log = list(events)
    names = sorted(_names_in(log), key=str.lower)
    steps = _steps(log)
    hidden = 0
    while sum(step.rows for step in steps) > max_rows:
        steps.pop(0)
        hidden += 1
    rows = max(sum(step.rows for step in steps), 1)

    left, right = names[: len(names) // 2], names[len(names) // 2 :]
    lane_x = {name: float(i - len(left)) for i, name in enumerate(left)}
    lane_x.update({name: float(i + 1) for i, name in enumerate(right)})

    fig = Figure(figsize=figsize)
    axes_box = (0.02, 0.1, 0.96, 0.76)
    ax = fig.add_axes(axes_box)
    x_min, x_max = min(-1.0, -len(left)) - 0.7, max(1.0, len(right)) + 0.7
    top, bottom = 0.8, -rows + 0.3
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(bottom, top)
    ax.axis("off")
    points_per_unit = figsize[0] * axes_box[2] * 72 / (x_max - x_min)
    lanes = _Lanes(
        lane_x,
        client_colors(names),
        x_min,
        x_max,
        chars_per_unit=points_per_unit / (MONO_ADVANCE * LABEL_SIZE),
    )
    fig.suptitle(title, fontsize=13, color=TEXT_COLOR, y=0.97)
    if hidden:
        fig.text(
            0.5,
            0.925,
            f"… {hidden} earlier event{'s' if hidden != 1 else ''} not shown",
            ha="center",
            va="center",
            fontsize=9,
            style="italic",
            color="#546E7A",
        )

    # Lanes: a head above the axes (x in data, y in axes units, so it keeps its place however
    # many rows there are), a dotted lifeline, solid while the client is online.
    heads = ax.get_xaxis_transform()
    ax.text(
        0,
        1.035,
        "server",
        transform=heads,
        ha="center",
        va="center",
        fontsize=11,
        fontweight="bold",
        color="white",
        zorder=4,
        bbox=dict(boxstyle="round,pad=0.4", facecolor=SERVER_COLOR, edgecolor="none"),
    )
    ax.plot([0, 0], [top, bottom], color=SERVER_COLOR, linewidth=2.5, zorder=1)
    for name in names:
        x, color = lane_x[name], lanes.colors[name]
        ax.text(
            x,
            1.035,
            _short(name, 14),
            transform=heads,
            ha="center",
            va="center",
            fontsize=11,
            fontweight="bold",
            color=TEXT_COLOR,
            zorder=4,
            gid=f"lane:{name}",
            bbox=dict(boxstyle="round,pad=0.4", facecolor=_tint(color), edgecolor=color, linewidth=1.8),
        )
        ax.plot([x, x], [top, bottom], color=GONE_COLOR, linewidth=1, linestyle=(0, (2, 3)), zorder=1)
        for y_from, y_to in _online_rows(name, steps, top, bottom):
            ax.plot(
                [x, x], [y_from, y_to], color=color, linewidth=2.5, alpha=0.8, zorder=1, solid_capstyle="butt"
            )

    y = 0.0
    for step in steps:
        _draw_step(ax, step, y, lanes)
        y -= step.rows

    if not steps:
        ax.text(
            0,
            -0.1,
            "nothing happened yet",
            ha="center",
            va="center",
            fontsize=10,
            color=GONE_COLOR,
            bbox=dict(facecolor="white", edgecolor="none"),
            zorder=5,
        )
    fig.legend(
        handles=_sequence_legend(),
        loc="lower center",
        ncol=4,
        frameon=False,
        fontsize=9,
        bbox_to_anchor=(0.5, 0.01),
    )
    return fig


def _online_rows(name: str, steps: list[_Step], top: float, bottom: float) -> list[tuple[float, float]]:
    """The stretches of a lane (as y ranges) while ``name`` was online."""
    stretches = []
    since = top if steps and name in steps[0].online else None
    y = 0.0
    for step in steps:
        if step.event.client == name and step.event.kind == "registered":
            since = y
        elif step.event.client == name and step.event.kind == "left" and since is not None:
            stretches.append((since, y))
            since = None
        y -= step.rows
    if since is not None:
        stretches.append((since, bottom))
    return stretches


def _arrow(ax, x_from: float, x_to: float, y: float, color: str, gid: str, dashed: bool = False) -> None:
    # Above the labels: a long label may touch the arrow a row above, but never hides it.
    ax.annotate(
        "",
        xy=(x_to, y),
        xytext=(x_from, y),
        zorder=5,
        gid=gid,
        arrowprops=dict(
            arrowstyle="-|>",
            color=color,
            linewidth=1.8,
            mutation_scale=15,
            shrinkA=0,
            shrinkB=1,
            linestyle="--" if dashed else "-",
        ),
    )


def _arrow_label(
    ax,
    lanes: _Lanes,
    x_from: float,
    x_to: float,
    y: float,
    text: str,
    color: str = TEXT_COLOR,
    wire: bool = True,
) -> None:
    """Text just above an arrow: wire text in monospace, a description in italics.

    Centred on the arrow, and moved sideways if it would run off the picture; every arrow has
    a row of its own, so a label may be wider than its arrow. Only a label wider than the whole
    picture is cut short.
    """
    room = int((lanes.x_max - lanes.x_min) * lanes.chars_per_unit) - 2
    text = _short(text, min(room, MAX_LABEL))
    half = (len(text) + 1) / lanes.chars_per_unit / 2  # +1: the white patch's padding
    x = min(max((x_from + x_to) / 2, lanes.x_min + half), lanes.x_max - half)
    ax.annotate(
        text,
        (x, y),
        xytext=(0, 1.5),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=LABEL_SIZE,
        family=MONO if wire else None,
        style="normal" if wire else "italic",
        color=color,
        zorder=4,
        bbox=dict(boxstyle="round,pad=0.05", facecolor="white", edgecolor="none", alpha=0.85),
    )


def _server_note(ax, y: float, text: str, color: str, gid: str | None = None, wire: bool = True) -> None:
    """A note beside the server's lane; with a ``gid``, after a red x (something went wrong)."""
    if gid is not None:
        ax.plot(
            [0], [y], marker="X", markersize=10, color=ERROR_COLOR, markeredgecolor="white", zorder=5, gid=gid
        )
    ax.annotate(
        _short(text, MAX_LABEL),
        (0.15, y),
        ha="left",
        va="center",
        fontsize=LABEL_SIZE,
        family=MONO if wire else None,
        style="normal" if wire else "italic",
        color=color,
        zorder=4,
        bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none"),
    )


def _lane_note(ax, x: float, y: float, text: str, marker: str, color: str, gid: str) -> None:
    ax.plot([x], [y], marker=marker, markersize=9, color=color, markeredgecolor="white", zorder=4, gid=gid)
    ax.text(
        x + 0.1,
        y,
        text,
        ha="left",
        va="center",
        fontsize=8.5,
        style="italic",
        color="#546E7A",
        zorder=4,
        bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.9),
    )


def _draw_step(ax, step: _Step, y: float, lanes: _Lanes) -> None:
    event = step.event
    sender = event.client or ""  # "" for a connection with no name yet
    if event.kind == "registered":
        _lane_note(ax, lanes.x[sender], y, "joins", "o", lanes.colors[sender], f"join:{sender}")
    elif event.kind == "left":
        reason = "" if event.text == "disconnected" else f" ({_short(event.text, 24)})"
        _lane_note(ax, lanes.x[sender], y, "leaves" + reason, "s", lanes.colors[sender], f"leave:{sender}")
    elif event.kind == "error" and not sender:  # a connection with no name yet, e.g. "name taken"
        _server_note(ax, y, f"! {event.text}  (to a connection with no name)", ERROR_COLOR, "error:")
    elif _dropped(event):  # nothing was sent or answered: the server let go of the client
        _server_note(ax, y, f"{sender}: {event.text}", ERROR_COLOR, f"error:{sender}", wire=False)
    elif event.kind == "error":  # a refused line: it comes in, the error goes back
        x = lanes.x[sender]
        line, wire, reply = _refusal(event)
        _arrow(ax, x, 0, y, lanes.colors[sender], f"refused:{sender}")
        _arrow_label(ax, lanes, x, 0, y, line, wire=wire)
        ax.plot([0], [y], marker="X", markersize=10, color=ERROR_COLOR, markeredgecolor="white", zorder=5)
        _arrow(ax, 0, x, y - 1, ERROR_COLOR, f"error:{sender}", dashed=True)
        _arrow_label(ax, lanes, 0, x, y - 1, reply, ERROR_COLOR)
    elif event.kind == "message":
        color = lanes.colors[sender]
        _arrow(ax, lanes.x[sender], 0, y, color, f"send:{sender}")
        _arrow_label(ax, lanes, lanes.x[sender], 0, y, f"%{event.to}%{event.text}")
        for row, receiver in enumerate(step.receivers, start=1):  # a row each: one arrow per line sent
            _arrow(ax, 0, lanes.x[receiver], y - row, color, f"deliver:{sender}->{receiver}")
            _arrow_label(ax, lanes, 0, lanes.x[receiver], y - row, f"%{sender}%{event.text}")
        if not step.receivers:
            _server_note(ax, y - 1, "(nobody else is online)", GONE_COLOR, wire=False)


def _sequence_legend() -> list:
    return [
        Line2D(
            [],
            [],
            color=TEXT_COLOR,
            marker=">",
            markersize=6,
            linewidth=1.8,
            label="a line on the wire (as typed / as delivered)",
        ),
        Line2D(
            [],
            [],
            color=ERROR_COLOR,
            marker="X",
            linestyle="--",
            markersize=8,
            label="refused, and the error line back",
        ),
        Line2D([], [], color=GONE_COLOR, marker="o", linestyle="", markersize=8, label="joins"),
        Line2D([], [], color=GONE_COLOR, marker="s", linestyle="", markersize=8, label="leaves"),
    ]


# --- threads over time -----------------------------------------------------------------------


@dataclass
class Span:
    """A thread doing one thing from ``start`` to ``end`` (seconds, as from ``time.time()``).

    ``end`` is None while it is still going on.
    """

    thread: str
    start: float
    end: float | None
    activity: str = ""


def spans_from_events(
    events: Iterable[ServerEvent], started: float, stopped: float | None = None
) -> list[Span]:
    """The server's threads as the event log tells it.

    ``chatlab-accept`` runs from ``started`` to ``stopped``. Each connection's thread
    (``chatlab-client-NAME``) runs from ``connected`` to ``left``: "waiting for a name" until
    the client registers, "serving NAME" after. A connection that never got a name keeps the
    thread name it started with, ``chatlab-client-IP:PORT``. Spans still open when the log ends
    end at ``stopped`` (None: still running).
    """
    spans = [Span("chatlab-accept", started, stopped, "accepting connections")]
    open_spans: dict[tuple[str, int], Span] = {}  # connection address -> its current span
    for event in events:
        address = event.address
        if event.kind == "connected":
            ip, port = address
            span = Span(f"chatlab-client-{ip}:{port}", event.time, None, "waiting for a name")
            open_spans[address] = span
            spans.append(span)
        elif event.kind == "registered" and address in open_spans:
            waiting = open_spans[address]
            waiting.end = event.time
            waiting.thread = f"chatlab-client-{event.client}"  # the server renames the thread
            span = Span(waiting.thread, event.time, None, f"serving {event.client}")
            open_spans[address] = span
            spans.append(span)
        elif event.kind == "left" and address in open_spans:
            open_spans.pop(address).end = event.time
    for span in open_spans.values():
        span.end = stopped
    return spans


class ThreadRecorder:
    """Record what threads do, for :func:`thread_timeline`.

    Call ``with recorder.span("counting"): ...`` in any thread; when the block ends a
    :class:`Span` with the current thread's name, the start and end times and the activity is
    added. Many threads record into one shared list, so it is guarded by a lock: the habit
    lesson 2 teaches (a bare ``list.append`` happens to be safe in CPython, but a reader should
    not need to know that).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []

    @contextmanager
    def span(self, activity: str = "") -> Iterator[None]:
        thread = threading.current_thread().name
        start = time.time()
        try:
            yield
        finally:
            span = Span(thread, start, time.time(), activity)
            with self._lock:
                self._spans.append(span)

    @property
    def spans(self) -> list[Span]:
        """A copy of the recorded spans, earliest start first."""
        with self._lock:
            return sorted(self._spans, key=lambda span: span.start)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()


def _natural_key(text: str) -> list:
    """Sort "worker-2" before "worker-10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _activity_colors(activities: Iterable[str]) -> dict[str, str]:
    """Serving a client is drawn in that client's colour; other activities share the palette."""
    activities = set(activities)
    served = [a.removeprefix("serving ") for a in activities if a.startswith("serving ")]
    by_client = client_colors(served)
    colors = {"waiting for a name": WAITING_COLOR, "accepting connections": SERVER_COLOR}
    others = sorted(
        (a for a in activities if a not in colors and not a.startswith("serving ")), key=_natural_key
    )
    colors.update({a: PALETTE[i % len(PALETTE)] for i, a in enumerate(others)})
    colors.update({a: by_client[a.removeprefix("serving ")] for a in activities if a.startswith("serving ")})
    return {a: colors[a] for a in activities}


def thread_timeline(
    spans: Iterable[Span],
    *,
    now: float | None = None,
    title: str = "Which thread was doing what, when",
    figsize: tuple[float, float] = (9.0, 4.0),
) -> Figure:
    """One row per thread (sorted by name), a bar per span, coloured by activity.

    Time is measured from the earliest start, in ms when everything fits in 2 s. A span still
    going on (``end`` None) is drawn up to ``now`` (default: the latest time in ``spans``) with
    an open end. Bars carry gids ``span:THREAD:ACTIVITY``.
    """
    spans = list(spans)
    fig = Figure(figsize=figsize)
    longest = max((len(span.thread) for span in spans), default=10)
    left_margin = min(0.45, (0.25 + 0.075 * longest) / figsize[0])  # room for the thread names
    ax = fig.add_axes((left_margin, 0.36, 0.97 - left_margin, 0.54))
    fig.suptitle(title, fontsize=13, color=TEXT_COLOR, y=0.97)
    if not spans:
        ax.text(
            0.5, 0.5, "no spans recorded", ha="center", va="center", transform=ax.transAxes, color=GONE_COLOR
        )
        ax.set_yticks([])
        return fig

    t0 = min(span.start for span in spans)
    latest = max(max(span.start, span.end or span.start) for span in spans)
    now = latest if now is None else now
    scale, unit = (1000.0, "ms") if now - t0 < 2.0 else (1.0, "s")
    threads = sorted({span.thread for span in spans}, key=_natural_key)
    row = {thread: i for i, thread in enumerate(threads)}
    colors = _activity_colors(span.activity for span in spans)

    for span in spans:
        end = now if span.end is None else span.end
        left, width = (span.start - t0) * scale, max((end - span.start) * scale, 0.0)
        ax.barh(
            row[span.thread],
            width,
            left=left,
            height=0.62,
            color=colors[span.activity],
            edgecolor="white",
            linewidth=0.8,
            gid=f"span:{span.thread}:{span.activity}",
        )
        if span.end is None:
            ax.plot(
                [left + width],
                [row[span.thread]],
                marker=">",
                markersize=8,
                color=colors[span.activity],
                clip_on=False,
            )

    ax.set_yticks(range(len(threads)), threads, fontsize=9, family=MONO)
    ax.set_ylim(len(threads) - 0.4, -0.6)  # first thread at the top
    ax.set_xlim(left=0, right=max((now - t0) * scale * 1.02, 1e-9))
    ax.set_xlabel(f"time since the first span started ({unit})", fontsize=9, color=TEXT_COLOR)
    ax.tick_params(axis="x", labelsize=8, colors=TEXT_COLOR)
    ax.tick_params(axis="y", length=0, colors=TEXT_COLOR)
    ax.grid(axis="x", color="#E3E7EB", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)

    labelled = sorted(colors, key=_natural_key)
    handles: list[Artist] = [Patch(facecolor=colors[a], label=a or "(no activity)") for a in labelled]
    if any(span.end is None for span in spans):
        handles.append(Line2D([], [], marker=">", linestyle="", color=TEXT_COLOR, label="still running"))
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=min(len(handles), 4),
        frameon=False,
        fontsize=9,
        bbox_to_anchor=(left_margin + (0.97 - left_margin) / 2, 0.2),
    )
    return fig
