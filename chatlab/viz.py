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

The last blocks draw what no log records: the calls of a first conversation, the segments that
end a connection (``segment_ladder`` from tables of :class:`Segment` rows), a process's fd
table pointing at one socket (``fd_table``), a fault link's wiretap, and two servers joined
through Redis.
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
BROKER_COLOR = "#A93226"  # Redis in the pictures of lesson 13 (a brick red, not the error red)
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


# --- how a connection ends (lessons 1, 10 and 11) --------------------------------------------------
# Three pictures of what the kernel does underneath a socket: the calls of a first conversation
# (lesson 1), the segments that end a connection (a ladder, drawn from tables of Segment rows
# below, like h11's state table), and a process's fd table pointing at one socket, to show why
# close() and shutdown() differ. And the wiretap of a chatlab.faults link, as dots over time.


@dataclass(frozen=True)
class Call:
    """One call in :func:`socket_calls`: the row it is on, whose it is, and its text."""

    row: int
    side: str  # "server" or "client"
    text: str


# Lesson 1's conversation: the calls each side makes, and what travels between them
# (client row, server row, label).
FIRST_CONVERSATION = (
    Call(0, "server", "socket()"),
    Call(1, "server", "bind(('127.0.0.1', 0))"),
    Call(2, "server", "listen()"),
    Call(3, "client", "socket()"),
    Call(4, "client", "connect(address)"),
    Call(5, "server", "accept()  → conn"),
    Call(6, "client", "sendall(b'hello')"),
    Call(7, "server", "conn.recv()  → b'hello'"),
    Call(8, "client", "close()"),
    Call(9, "server", "conn.recv()  → b''"),
)
FIRST_CONVERSATION_ARROWS = ((4, 4, "connection"), (6, 7, "bytes"), (8, 9, "end of stream"))


def socket_calls(
    calls: Iterable[Call] = FIRST_CONVERSATION,
    arrows: Iterable[tuple[int, int, str]] = FIRST_CONVERSATION_ARROWS,
    *,
    notes: Iterable[tuple[int, str]] = ((4, "(the OS queues it)"),),
    figsize: tuple[float, float] = (8.0, 5.0),
) -> Figure:
    """The calls of a server (left) and a client (right), time running downwards, with an arrow
    for each thing that travels from the client's row to the server's. ``notes`` are grey notes
    beside the server's lane. Calls carry gids ``call:SIDE:ROW``, arrows ``travel:LABEL``."""
    calls = list(calls)
    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0, 0, 1, 1))
    last = max((call.row for call in calls), default=0)
    for x, title in ((0, "server"), (1, "client")):
        ax.text(x, -1, title, ha="center", fontsize=13, weight="bold", color=TEXT_COLOR)
        ax.plot([x, x], [-0.5, last + 0.5], color=WAITING_COLOR, zorder=0)
    for call in calls:
        on_client = call.side == "client"
        ax.text(
            (1.04 if on_client else -0.04),
            call.row,
            call.text,
            ha="left" if on_client else "right",
            va="center",
            family=MONO,
            fontsize=9.5,
            color=TEXT_COLOR,
            gid=f"call:{call.side}:{call.row}",
            bbox=dict(boxstyle="round", facecolor="white", edgecolor=GONE_COLOR),
        )
    for row, text in notes:
        ax.text(-0.04, row, text, ha="right", va="center", color=GONE_COLOR, style="italic")
    for start, end, label in arrows:
        ax.annotate(
            "",
            xy=(0, end),
            xytext=(1, start),
            gid=f"travel:{label}",
            arrowprops=dict(arrowstyle="->", color=PALETTE[0], lw=1.5),
        )
        ax.text(0.5, (start + end) / 2 - 0.3, label, ha="center", color=PALETTE[0])
    ax.set_xlim(-1.3, 2.3)
    ax.set_ylim(last + 1, -1.7)
    ax.axis("off")
    return fig


@dataclass(frozen=True)
class Segment:
    """One TCP segment on a ladder: who sends it (``"left"`` or ``"right"``), its flags, and
    what each side's program sees or which state its socket is in once the segment has gone
    (``left``) or arrived (``right``), and the other way round for a segment sent from the right."""

    sender: str
    flags: str  # "FIN", "ACK", "RST", "data", ...
    left: str = ""
    right: str = ""


# The three endings of lesson 10. "left" closes first.
CLEAN_CLOSE = (
    Segment("left", "FIN", "close()  FIN_WAIT_1", "recv() → b''  CLOSE_WAIT"),
    Segment("right", "ACK", "FIN_WAIT_2", ""),
    Segment("right", "FIN", "TIME_WAIT", "close()  LAST_ACK"),
    Segment("left", "ACK", "", "CLOSED"),
)
SEND_AFTER_CLOSE = (
    Segment("left", "FIN", "close(): socket gone", "recv() → b''"),
    Segment("right", "ACK", "", ""),
    Segment("right", "data", "(no socket for it)", "send() 'works'"),
    Segment("left", "RST", "", "next send(): BrokenPipeError"),
)
ABORT = (
    Segment("right", "data", "", "sendall(b'hi')"),
    Segment("left", "RST", "close() with bytes unread", "recv() → ConnectionResetError"),
)
# What TIME_WAIT lasts on each system, as lesson 10 says.
TIME_WAIT_NOTE = "TIME_WAIT: 60 s on Linux, about 30 s on macOS, up to 240 s on Windows"

_FLAG_COLORS = {"FIN": PALETTE[0], "ACK": GONE_COLOR, "RST": ERROR_COLOR, "data": PALETTE[2]}


def segment_ladder(
    *ladders: tuple[str, Iterable[Segment]],
    left: str = "closes first",
    right: str = "the other side",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One panel per ``(title, segments)``: two lanes, time running downwards, a slanted arrow
    per segment (it takes time to travel), labelled with its flags and coloured by them (FIN
    blue, ACK grey, RST red, data green), and beside each lane what its program saw or which
    state its socket reached. A side that reaches TIME_WAIT gets a bar down to the bottom: it
    keeps the connection's trace after the others have forgotten it.

    Arrows carry gids ``segment:PANEL:ROW:FLAGS`` (panel and row from 0), the TIME_WAIT bar
    ``time_wait:PANEL``.
    """
    panels = [(title, list(segments)) for title, segments in ladders]
    rows = max((len(segments) for _, segments in panels), default=1)
    if figsize is None:
        figsize = (5.8 * max(len(panels), 1), 1.4 + 0.75 * rows)
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    bottom = rows + 0.9
    for number, (ax, (title, segments)) in enumerate(zip(axes, panels, strict=False)):
        ax.set_title(title, fontsize=11, color=TEXT_COLOR)
        for x, name in ((0, left), (1, right)):
            ax.text(x, -0.55, name, ha="center", va="bottom", fontsize=9.5, weight="bold", color=TEXT_COLOR)
            ax.plot([x, x], [-0.2, bottom], color=SERVER_COLOR, linewidth=1.2, zorder=1)
        for row, segment in enumerate(segments):
            start, end = (0, 1) if segment.sender == "left" else (1, 0)
            y0, y1 = row + 0.1, row + 0.75
            color = _FLAG_COLORS.get(segment.flags, TEXT_COLOR)
            ax.annotate(
                "",
                xy=(end, y1),
                xytext=(start, y0),
                zorder=3,
                gid=f"segment:{number}:{row}:{segment.flags}",
                arrowprops=dict(
                    arrowstyle="-|>", color=color, linewidth=1.8, mutation_scale=14, shrinkA=0, shrinkB=0
                ),
            )
            ax.text(
                0.5,
                (y0 + y1) / 2,
                segment.flags,
                ha="center",
                va="center",
                family=MONO,
                fontsize=9,
                weight="bold",
                color=color,
                zorder=4,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none"),
            )
            # A note sits where its side is at that moment: the sender when it sends, the
            # receiver when the segment arrives.
            left_y, right_y = (y0, y1) if segment.sender == "left" else (y1, y0)
            for note_x, y, text, ha in (
                (-0.04, left_y, segment.left, "right"),
                (1.04, right_y, segment.right, "left"),
            ):
                if text:
                    ax.text(note_x, y, text, ha=ha, va="center", fontsize=8.5, family=MONO, color=TEXT_COLOR)
            if "TIME_WAIT" in segment.left:
                ax.plot(
                    [-0.012, -0.012],
                    [left_y, bottom],
                    color=PALETTE[1],
                    linewidth=5,
                    zorder=2,
                    solid_capstyle="butt",
                    gid=f"time_wait:{number}",
                )
                ax.text(
                    -0.06,
                    bottom,
                    TIME_WAIT_NOTE.replace(": ", "\n").replace(", ", "\n"),
                    ha="right",
                    va="bottom",
                    fontsize=7.5,
                    style="italic",
                    color=PALETTE[1],
                )
        ax.set_xlim(-1.75, 2.75)
        ax.set_ylim(bottom + 0.1, -0.9)
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02, wspace=0.05)
    return fig


@dataclass(frozen=True)
class FdPanel:
    """One moment in :func:`fd_table`: which of the process's fds point at the socket, what the
    connection is doing, and what the other end and a thread blocked in ``recv()`` see."""

    title: str
    fds: tuple[tuple[int, bool], ...]  # (fd, still points at the socket?); False: the number is free
    connection: str
    peer: str
    reader: str
    ended: bool = False  # the connection is over (drawn in red)


CLOSE_VS_SHUTDOWN = (
    FdPanel(
        "two fds, one socket", ((5, True), (6, True)), "ESTABLISHED", "waits in recv()", "waits in recv()"
    ),
    FdPanel("close(5)", ((5, False), (6, True)), "ESTABLISHED", "notices nothing", "still waits"),
    FdPanel(
        "shutdown() on 6",
        ((5, False), (6, True)),
        "ended: FIN sent",
        "recv() → b''",
        "wakes: recv() → b''",
        ended=True,
    ),
)


def fd_table(
    panels: Iterable[FdPanel] = CLOSE_VS_SHUTDOWN, *, figsize: tuple[float, float] | None = None
) -> Figure:
    """One panel per moment: the process's fd table (0-2 are stdin, stdout and stderr), an
    arrow from each fd that points at the socket to the socket in the kernel, the connection
    from the socket to the other end, and a thread blocked in ``recv()`` that holds the socket
    itself, not an fd. A freed fd is drawn empty: its number may go to the next file opened.

    Arrows from fds carry gids ``fd:PANEL:FD``; the socket ``socket:PANEL``; the connection
    ``connection:PANEL:open`` or ``connection:PANEL:ended``.
    """
    panels = list(panels)
    if figsize is None:
        figsize = (4.4 * max(len(panels), 1), 3.4)
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    socket_y = 3.0
    for number, (ax, panel) in enumerate(zip(axes, panels, strict=False)):
        ax.set_title(panel.title, fontsize=11, family=MONO, color=TEXT_COLOR)
        ax.text(0.75, 6.55, "fd table", ha="center", fontsize=9, weight="bold", color=TEXT_COLOR)
        ax.text(3.3, 6.55, "kernel", ha="center", fontsize=9, weight="bold", color=TEXT_COLOR)
        rows = [(0, "stdin"), (1, "stdout"), (2, "stderr")] + [(fd, "socket") for fd, _ in panel.fds]
        pointing = dict(panel.fds)
        for i, (fd, what) in enumerate(rows):
            y = 5.9 - i * 0.8
            free = fd in pointing and not pointing[fd]
            ax.add_patch(
                FancyBboxPatch(
                    (0.1, y - 0.32),
                    1.3,
                    0.64,
                    boxstyle="square,pad=0",
                    facecolor="white" if free else _tint(SERVER_COLOR, 0.9),
                    edgecolor=GONE_COLOR,
                    linestyle="--" if free else "-",
                )
            )
            ax.text(0.32, y, str(fd), ha="center", va="center", family=MONO, fontsize=10, color=TEXT_COLOR)
            label = "free" if free else what
            ax.text(0.95, y, label, ha="center", va="center", fontsize=8, style="italic", color=GONE_COLOR)
            if pointing.get(fd):
                ax.annotate(
                    "",
                    xy=(2.4, socket_y + 0.2),
                    xytext=(1.4, y),
                    gid=f"fd:{number}:{fd}",
                    arrowprops=dict(
                        arrowstyle="-|>",
                        color=SERVER_COLOR,
                        linewidth=1.5,
                        mutation_scale=12,
                        shrinkA=0,
                        shrinkB=0,
                    ),
                )
        color = ERROR_COLOR if panel.ended else PALETTE[2]
        ax.add_patch(
            FancyBboxPatch(
                (2.4, socket_y - 0.7),
                1.8,
                1.5,
                boxstyle="round,pad=0.05",
                facecolor=_tint(color),
                edgecolor=color,
                linewidth=1.5,
                gid=f"socket:{number}",
            )
        )
        ax.text(
            3.3,
            socket_y + 0.45,
            "socket",
            ha="center",
            va="center",
            fontsize=9.5,
            weight="bold",
            color=TEXT_COLOR,
        )
        ax.text(
            3.3,
            socket_y - 0.2,
            panel.connection,
            ha="center",
            va="center",
            fontsize=8,
            family=MONO,
            color=color,
        )
        # the thread blocked in recv() holds the socket, not an fd
        ax.annotate(
            "",
            xy=(3.3, socket_y - 0.75),
            xytext=(3.3, 1.05),
            arrowprops=dict(
                arrowstyle="-|>", color=PALETTE[3], linewidth=1.3, linestyle="--", shrinkA=0, shrinkB=0
            ),
        )
        ax.text(3.3, 0.75, "a thread in recv()", ha="center", va="center", fontsize=8, color=PALETTE[3])
        ax.text(3.3, 0.3, panel.reader, ha="center", va="center", fontsize=8, family=MONO, color=PALETTE[3])
        # the connection to the other end
        ax.plot(
            [4.25, 4.95],
            [socket_y + 0.05] * 2,
            color=color,
            linewidth=2,
            linestyle=":" if panel.ended else "-",
            gid=f"connection:{number}:{'ended' if panel.ended else 'open'}",
        )
        ax.add_patch(
            FancyBboxPatch(
                (4.95, socket_y - 0.25),
                0.9,
                0.6,
                boxstyle="round,pad=0.05",
                facecolor=_tint(SERVER_COLOR),
                edgecolor=SERVER_COLOR,
            )
        )
        ax.text(5.4, socket_y + 0.05, "peer", ha="center", va="center", fontsize=8.5, color=TEXT_COLOR)
        ax.text(
            5.4, socket_y - 0.5, panel.peer, ha="center", va="top", fontsize=8, family=MONO, color=TEXT_COLOR
        )
        ax.set_xlim(0, 6.3)
        ax.set_ylim(0, 6.9)
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02, wspace=0.08)
    return fig


def wire_timeline(records: Iterable, title: str = "The link's writes over time") -> Figure:
    """The wiretap of a :class:`chatlab.faults.FaultyLink` (``record=True``) as dots over time:
    one row per direction, a dot per write (bigger for more bytes), a red cross for a reset or
    a close. Dots carry gids ``write:DIRECTION``, crosses ``end:DIRECTION:EVENT``."""
    records = list(records)
    fig = Figure(figsize=(8, 2.2))
    ax = fig.add_axes((0.2, 0.25, 0.77, 0.62))
    ax.set_title(title, fontsize=10, color=TEXT_COLOR)
    start = records[0].at if records else 0.0
    for row, direction in enumerate(("down", "up")):
        writes = [r for r in records if r.direction == direction]
        data = [r for r in writes if r.event == "data"]
        ax.scatter(
            [(r.at - start) * 1000 for r in data],
            [row] * len(data),
            s=[8 + len(r.data) for r in data],
            alpha=0.6,
            color=PALETTE[row],
            gid=f"write:{direction}",
        )
        for r in writes:
            if r.event != "data":
                x = (r.at - start) * 1000
                ax.scatter([x], [row], marker="x", s=120, color=ERROR_COLOR, gid=f"end:{direction}:{r.event}")
                ax.annotate(r.event, (x, row), textcoords="offset points", xytext=(6, 6), color=ERROR_COLOR)
    ax.set_yticks([0, 1], ["down (to the client)", "up (to the server)"], fontsize=9)
    ax.set_ylim(-0.6, 1.6)
    ax.set_xlabel("milliseconds since the first write", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


# --- several servers through Redis (lesson 13) ------------------------------------------------------


# Lesson 13's chat: which server each client is connected to.
TWO_SERVERS = {"alice": "server one", "carol": "server one", "bob": "server two", "dave": "server two"}


def cluster_topology(homes: dict[str, str] = TWO_SERVERS, *, broker: str = "Redis") -> Figure:
    """Two servers, their clients around them (at most two each), and the broker in the middle:
    TCP from each client to its own server, and from each server to the broker. Boxes carry gids
    ``client:NAME``, ``server:NAME`` and ``broker``; lines ``tcp:CLIENT->SERVER`` and
    ``broker:SERVER``."""
    servers = sorted(set(homes.values()))
    if len(servers) != 2:
        raise ValueError(f"cluster_topology() draws two servers, not {len(servers)}")
    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    ax.set_xlim(-0.5, 10.5)
    ax.set_ylim(-0.2, 3.4)
    ax.axis("off")
    colors = client_colors(homes)
    places = {servers[0]: (2.5, 1.6), servers[1]: (7.5, 1.6)}
    spots = {servers[0]: [(0.5, 2.8), (0.5, 0.4)], servers[1]: [(9.5, 2.8), (9.5, 0.4)]}
    for name in sorted(homes, key=str.lower):
        server = homes[name]
        x, y = spots[server].pop(0)
        sx, sy = places[server]
        ax.plot([x, sx], [y, sy], color=GONE_COLOR, linewidth=1.5, zorder=1, gid=f"tcp:{name}->{server}")
        _box(ax, x, y, name, colors[name], width=1.1, height=0.5, gid=f"client:{name}")
    for server, (x, y) in places.items():
        ax.plot([x, 5.0], [y, 1.6], color=BROKER_COLOR, linewidth=2, zorder=1, gid=f"broker:{server}")
        _box(ax, x, y, server, SERVER_COLOR, gid=f"server:{server}")
    _box(ax, 5.0, 1.6, broker, BROKER_COLOR, width=1.4, gid="broker")
    ax.text(5.0, 2.45, "names, heartbeats,\none inbox per server", ha="center", fontsize=9, color=TEXT_COLOR)
    ax.set_title(f"Two servers, one chat: TCP to the clients, {broker} in the middle", color=TEXT_COLOR)
    return fig


# Lesson 13: one message from alice (on server one) to bob (on server two).
ONE_MESSAGE_LANES = ("alice", "server one", "Redis", "server two", "bob")
ONE_MESSAGE_STEPS = (
    ("alice", "server one", "%bob%hi bob"),
    ("server one", "Redis", "XADD inbox:two"),
    ("Redis", "server two", "XREAD returns it"),
    ("server two", "bob", "%alice%hi bob"),
)


def message_path(
    lanes: Iterable[str] = ONE_MESSAGE_LANES,
    steps: Iterable[tuple[str, str, str]] = ONE_MESSAGE_STEPS,
    *,
    title: str = "One message across two servers",
) -> Figure:
    """A lane per party (a name with "server" in it is a server, "Redis" the broker, any other a
    client), and one row per step: an arrow from one lane to another, labelled with what travels.
    Arrows carry gids ``step:ROW:SOURCE->TARGET`` (rows from 1)."""
    lanes, steps = list(lanes), list(steps)
    x = {name: i * 2.2 for i, name in enumerate(lanes)}
    clients = [name for name in lanes if "server" not in name and name != "Redis"]
    colors = {
        **client_colors(clients),
        **{name: SERVER_COLOR for name in lanes if "server" in name},
        "Redis": BROKER_COLOR,
    }
    fig = Figure(figsize=(9, 3.8))
    ax = fig.add_subplot()
    ax.set_xlim(-1, x[lanes[-1]] + 1)
    ax.set_ylim(-len(steps) - 0.6, 1)
    ax.axis("off")
    for name in lanes:
        ax.plot([x[name], x[name]], [0.3, -len(steps) - 0.4], color=colors[name], linewidth=1, linestyle=":")
        _box(ax, x[name], 0.55, name, colors[name], width=1.7, height=0.5)
    for row, (source, target, label) in enumerate(steps, start=1):
        ax.annotate(
            "",
            xy=(x[target], -row),
            xytext=(x[source], -row),
            gid=f"step:{row}:{source}->{target}",
            arrowprops={"arrowstyle": "->", "color": colors[source], "linewidth": 1.8},
        )
        ax.text(
            (x[source] + x[target]) / 2,
            -row + 0.12,
            label,
            ha="center",
            fontsize=9,
            family=MONO,
            color=TEXT_COLOR,
        )
    ax.set_title(title, color=TEXT_COLOR)
    return fig


# --- beyond one computer: listeners, flood control, a crash (lessons 12 and 13) -----------------
#
# Pictures of what no event log records: which listening socket a connection can reach, a token
# bucket draining and filling, a crashed server's heartbeat running out. Each is drawn from a few
# numbers that a small function without I/O works out (:func:`accepts`, :func:`bucket_run`,
# :func:`crash_times`), so a test can hold the numbers against the real thing: a socket,
# :mod:`chatlab.flood`, the broker's heartbeat.

EVERY_IPV4 = "0.0.0.0"
NOTE_COLOR = "#546E7A"
_LABEL_BOX = dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85)  # over ticks


def _box(
    ax, x: float, y: float, text: str, color: str, width: float = 1.6, height: float = 0.6, **kwargs
) -> None:
    """A rounded box of ``color`` centred on (x, y), with ``text`` in white."""
    gid = kwargs.pop("gid", None)
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.05",
            facecolor=color,
            edgecolor="none",
            zorder=2,
            gid=gid,
        )
    )
    ax.text(x, y, text, ha="center", va="center", color="white", zorder=3, **{"fontsize": 10, **kwargs})


def accepts(bound: str, arriving_at: str) -> bool:
    """Whether a listening socket bound to ``bound`` takes a connection made to ``arriving_at``.

    A listener takes only the connections that arrive at the address it is bound to;
    ``0.0.0.0`` stands for every IPv4 address the computer has. (IPv4 only: IPv6's "every
    address" is ``::``.)
    """
    return bound in (arriving_at, EVERY_IPV4)


def _is_loopback(address: str) -> bool:
    return address.startswith("127.")


def listeners(
    interfaces: Iterable[tuple[str, str]] = (("lo", "127.0.0.1"), ("wlan0", "192.168.1.20")),
    bound: Iterable[str] = ("127.0.0.1", "192.168.1.20", EVERY_IPV4),
    *,
    port: int = 5050,
    title: str = "Which listening socket a connection can reach",
    figsize: tuple[float, float] = (10.0, 5.4),
) -> Figure:
    """One computer's addresses (``interfaces``: name and IPv4 address) and listening sockets
    (``bound``: the address each is bound to), and who reaches which.

    A program on this computer may connect to any of its addresses; another computer reaches
    only the addresses on a network (not ``127.x.y.z``, loopback). A connection that arrives
    at an address goes to a listener bound to that address or to ``0.0.0.0``
    (:func:`accepts`); at an address where nothing listens it is refused. Each listener has a
    port of its own (``port``, ``port + 1``, ...): on one port, Linux refuses a listener on
    ``0.0.0.0`` beside one on ``127.0.0.1`` ("Address already in use", with or without
    ``SO_REUSEADDR``). Gids: ``client:this computer`` and ``client:another computer``,
    ``interface:NAME``, ``listener:ADDRESS``,
    ``connect:CLIENT->NAME`` for each way in, ``reach:NAME->ADDRESS`` for each listener an
    address leads to, ``reached-from:ADDRESS`` for the note under each listener.
    """
    interfaces, bound = list(interfaces), list(bound)
    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0.0, 0.07, 1.0, 0.83))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 6)
    ax.axis("off")
    fig.suptitle(title, fontsize=13, color=TEXT_COLOR, y=0.97)

    # The computer: a frame holding a program of its own, its addresses and its listeners.
    ax.add_patch(
        FancyBboxPatch(
            (2.55, 0.25),
            7.3,
            5.45,
            boxstyle="round,pad=0.05",
            facecolor="#F4F6F8",
            edgecolor=GONE_COLOR,
            linewidth=1.2,
            zorder=0,
            gid="computer",
        )
    )
    ax.text(
        2.75, 5.45, "this computer", ha="left", va="center", fontsize=10, style="italic", color=NOTE_COLOR
    )

    def column(count: int) -> list[float]:
        return [4.6 - 3.2 * i / max(count - 1, 1) for i in range(count)] if count > 1 else [3.0]

    iface_y = dict(zip((name for name, _ in interfaces), column(len(interfaces)), strict=True))
    listener_y = dict(zip(bound, column(len(bound)), strict=True))
    client_x = {"this computer": 3.55, "another computer": 1.15}
    local_y, remote_y = (
        max((iface_y[name] for name, address in interfaces if _is_loopback(address)), default=4.6),
        min((iface_y[name] for name, address in interfaces if not _is_loopback(address)), default=2.0),
    )
    iface_x, listener_x = 5.85, 8.35

    def line(x0, y0, x1, y1, color, gid, width=1.8, style="-"):
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            zorder=1,
            gid=gid,
            arrowprops=dict(
                arrowstyle="-|>", color=color, linewidth=width, linestyle=style, shrinkA=0, shrinkB=0
            ),
        )

    for name, address in interfaces:
        y = iface_y[name]
        line(
            client_x["this computer"] + 0.7,
            local_y,
            iface_x - 0.85,
            y,
            PALETTE[0],
            f"connect:this computer->{name}",
        )
        if not _is_loopback(address):
            line(
                client_x["another computer"] + 0.7,
                remote_y,
                iface_x - 0.85,
                y,
                PALETTE[1],
                f"connect:another computer->{name}",
            )
        for where in bound:
            if accepts(where, address):
                line(
                    iface_x + 0.85,
                    y,
                    listener_x - 0.95,
                    listener_y[where],
                    SERVER_COLOR,
                    f"reach:{name}->{where}",
                )
        kind = "loopback" if _is_loopback(address) else "network"
        _box(
            ax,
            iface_x,
            y,
            f"{name} ({kind})\n{address}",
            "#607D8B",
            1.7,
            0.62,
            gid=f"interface:{name}",
            fontsize=9.5,
        )

    for i, where in enumerate(bound):
        y = listener_y[where]
        note = " (every IPv4\naddress)" if where == EVERY_IPV4 else ""
        _box(
            ax,
            listener_x,
            y,
            f"listens on\n{where}:{port + i}{note}",
            SERVER_COLOR,
            1.9,
            0.8 if note else 0.62,
            gid=f"listener:{where}",
            fontsize=9,
        )
        arrivals = [address for _, address in interfaces if accepts(where, address)]
        if not arrivals:
            who = "reached by nobody: no such address here"
        elif all(_is_loopback(address) for address in arrivals):
            who = "reached from this computer only"
        else:
            who = "reached from this computer\nand from other computers"
        ax.text(
            listener_x,
            y - (0.55 if note else 0.45),
            who,
            ha="center",
            va="top",
            fontsize=8,
            style="italic",
            color=NOTE_COLOR,
            gid=f"reached-from:{where}",
        )

    _box(
        ax,
        client_x["this computer"],
        local_y,
        "a client\nhere",
        PALETTE[0],
        1.3,
        0.62,
        gid="client:this computer",
        fontsize=9.5,
    )
    _box(
        ax,
        client_x["another computer"],
        remote_y,
        "a client on\nanother\ncomputer",
        PALETTE[1],
        1.5,
        0.9,
        gid="client:another computer",
        fontsize=9.5,
    )
    fig.text(
        0.5,
        0.02,
        "A connection arrives at one address and goes to a listener bound to that address, or to 0.0.0.0; "
        "elsewhere it is refused.",
        ha="center",
        va="bottom",
        fontsize=9,
        color=NOTE_COLOR,
    )
    return fig


# --- a token bucket (flood control, chatlab.flood) ---------------------------------------------


@dataclass(frozen=True)
class BucketRun:
    """What a token bucket did with one client's lines: when each came and when it went on.

    ``level`` is the bucket's level as (time, tokens) corners: it rises by ``rate`` a second
    up to ``burst`` between them, and drops by one token at each line that goes on.
    """

    rate: float
    burst: float
    sent: list[float]
    passed: list[float]
    level: list[tuple[float, float]]


def bucket_run(send_times: Iterable[float], rate: float, until: float | None = None) -> BucketRun:
    """Lines arriving at ``send_times`` (seconds) through a :class:`chatlab.flood.TokenBucket`
    for ``rate`` lines a second that is full at time 0.

    Lines go on in order; one that finds no token waits for it (the server reads no more of
    that client meanwhile), so a line goes on when it has arrived, the line before it has gone,
    and the bucket holds a token. The server hands waiting lines over in batches of a tenth of
    a second (:data:`chatlab.flood.TICK`); this follows each line on its own. The level is
    followed to ``until`` (default: a second after the last line went on).
    """
    from .flood import TokenBucket  # here, not at the top: only this picture needs it

    bucket = TokenBucket.for_rate(rate, now=0.0)
    level: list[tuple[float, float]] = [(0.0, bucket.tokens)]
    sent = sorted(send_times)
    passed: list[float] = []

    def rise_to(now: float) -> None:
        """The corners of the level from the last one up to ``now``, before a token is taken."""
        then, tokens = level[-1]
        full_at = then + (bucket.burst - tokens) / rate
        if then < full_at < now:
            level.append((full_at, bucket.burst))
        level.append((now, min(bucket.burst, tokens + (now - then) * rate)))

    now = 0.0
    for arrival in sent:
        now = max(now, arrival)
        for _ in range(3):  # a token due at `now` can be a rounding error short: wait that too
            wait = bucket.wait(1, now)
            if wait == 0.0 and bucket.take(1, now) == 1:
                break
            now += max(wait, 1e-9)
        else:
            raise RuntimeError("the bucket gave no token")  # not reached: tokens always come
        shown = max(arrival, round(now, 6))  # without the nanoseconds added above
        rise_to(shown)
        level.append((shown, bucket.tokens))
        passed.append(shown)
    end = (passed[-1] if passed else 0.0) + 1.0 if until is None else until
    if end > level[-1][0]:
        rise_to(end)
    return BucketRun(rate, bucket.burst, sent, passed, level)


def token_bucket(
    send_times: Iterable[float] | None = None,
    rate: float = 10.0,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 5.6),
) -> Figure:
    """Flood control for one client, over time: the bucket's level above, its lines below.

    By default the client sends 30 lines at once at 0.5 s (a burst), then 5 a second from 2 s
    to 6 s (steady, below the rate), against ``rate`` 10: the full bucket (20 tokens, two
    seconds' worth) lets 20 of the burst through at once, the other 10 wait for their tokens,
    and the steady lines never wait while the bucket fills again. Gids: ``level``, ``full``,
    ``sent`` and ``passed`` (the two counts of lines).
    """
    if send_times is None:
        send_times = [0.5] * 30 + [2.0 + 0.2 * i for i in range(21)]
    run = bucket_run(send_times, rate)
    end = run.level[-1][0]
    fig = Figure(figsize=figsize)
    top = fig.add_axes((0.1, 0.56, 0.86, 0.33))
    bottom = fig.add_axes((0.1, 0.17, 0.86, 0.3), sharex=top)
    fig.suptitle(
        title or f"A token bucket: {rate:g} tokens a second, {run.burst:g} at most, one per line",
        fontsize=13,
        color=TEXT_COLOR,
        y=0.97,
    )
    times, tokens = zip(*run.level, strict=True)
    top.plot(times, tokens, color=PALETTE[0], linewidth=2, gid="level")
    top.axhline(run.burst, color=GONE_COLOR, linestyle="--", linewidth=1.2, gid="full")
    top.text(
        end, run.burst, f"full: {run.burst:g} tokens", ha="right", va="bottom", fontsize=8.5, color=NOTE_COLOR
    )
    top.set_ylim(0, run.burst * 1.25)
    waited = [i for i, (came, went) in enumerate(zip(run.sent, run.passed, strict=True)) if went > came]
    if waited:  # where the bucket ran dry
        first = waited[0]
        top.annotate(
            f"empty: {len(waited)} lines wait for their tokens",
            (run.sent[first], 0),
            xytext=(8, 0.45 * run.burst),
            textcoords=("offset points", "data"),
            ha="left",
            va="center",
            fontsize=8.5,
            color=NOTE_COLOR,
            arrowprops=dict(arrowstyle="-", color=NOTE_COLOR, linewidth=0.8),
            gid="empty",
        )
    top.set_ylabel("tokens", fontsize=9, color=TEXT_COLOR)

    def counts(when: list[float]) -> tuple[list[float], list[int]]:
        return [0.0, *when, end], [0, *range(1, len(when) + 1), len(when)]

    bottom.step(
        *counts(run.sent),
        where="post",
        color=PALETTE[1],
        linewidth=4.5,
        alpha=0.75,
        label="lines the client sent",
        gid="sent",
    )
    bottom.step(
        *counts(run.passed),
        where="post",
        color=SERVER_COLOR,
        linewidth=2,
        label="lines passed on to the room",
        gid="passed",
    )
    bottom.set_ylabel("lines so far", fontsize=9, color=TEXT_COLOR)
    bottom.set_xlabel("time (s)", fontsize=9, color=TEXT_COLOR)
    bottom.set_xlim(0, end)
    bottom.set_ylim(0, len(run.sent) * 1.1 + 1)
    for ax in (top, bottom):
        ax.tick_params(labelsize=8, colors=TEXT_COLOR)
        ax.grid(color="#E3E7EB", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    top.tick_params(labelbottom=False)
    fig.legend(loc="lower center", ncol=2, frameon=False, fontsize=9, bbox_to_anchor=(0.53, 0.0))
    return fig


# --- a server dies: heartbeats and a time to live (chatlab.broker) -----------------------------


@dataclass(frozen=True)
class Crash:
    """The times of a server crash in a cluster, as the broker's heartbeats make them.

    Every server rewrites its key at each of its ``beats``; a key lives ``ttl`` seconds unless
    rewritten. The ``crashed`` server stops at ``crash_at``: its key ``expires`` ``ttl`` after
    its ``last_beat``, and each other server has ``noticed`` at its first heartbeat after that.
    """

    heartbeat: float
    ttl: float
    crashed: str
    crash_at: float
    beats: dict[str, list[float]]
    last_beat: float
    expires: float
    noticed: dict[str, float]


def crash_times(
    servers: Iterable[str] = ("one", "two", "three"),
    crashed: str = "three",
    crash_at: float = 3.2,
    *,
    heartbeat: float = 1.0,
    ttl_heartbeats: int = 5,
    until: float | None = None,
) -> Crash:
    """When each thing happens when ``crashed`` is killed at ``crash_at`` (seconds).

    The defaults are the broker's (:data:`chatlab.broker.HEARTBEAT`, ``TTL_HEARTBEATS``). The
    servers started at different moments: server i (in the given order) beats at
    ``i * heartbeat / n + k * heartbeat``. ``until`` (default: a heartbeat after the last server
    noticed) ends the beats drawn.
    """
    servers = list(servers)
    if crashed not in servers:
        raise ValueError(f"{crashed!r} is not one of the servers")
    ttl = heartbeat * ttl_heartbeats
    offset = {name: i * heartbeat / len(servers) for i, name in enumerate(servers)}

    def beat(name: str, k: int) -> float:
        """Server ``name``'s k-th heartbeat (rounded: a time drawn, not a float's last digits)."""
        return round(offset[name] + k * heartbeat, 9)

    def beats_before(name: str, moment: float) -> int:
        """How many heartbeats ``name`` makes up to ``moment``, that one included."""
        return max(0, math.floor((moment - offset[name]) / heartbeat + 1e-9) + 1)

    last_beat = beat(crashed, beats_before(crashed, crash_at) - 1)
    expires = round(last_beat + ttl, 9)
    # Its first heartbeat after the key expired (Redis keeps a key up to its expiry, that moment too).
    noticed = {name: beat(name, beats_before(name, expires)) for name in servers if name != crashed}
    end = max(noticed.values(), default=expires) + heartbeat if until is None else until

    def beats(name: str) -> list[float]:
        stop = last_beat if name == crashed else end
        return [beat(name, k) for k in range(beats_before(name, stop))]

    return Crash(
        heartbeat,
        ttl,
        crashed,
        crash_at,
        {name: beats(name) for name in servers},
        last_beat,
        expires,
        noticed,
    )


def heartbeat_timeline(
    crash: Crash | None = None,
    *,
    title: str = "A server dies: its heartbeats stop, its key runs out, the others notice",
    figsize: tuple[float, float] = (10.0, 4.6),
) -> Figure:
    """A row per server, time running right: heartbeats as ticks, each server's key alive as a
    band, the crash, the key expiring a time to live after the last heartbeat, and each other
    server noticing at its next heartbeat (``crash`` defaults to :func:`crash_times`'s).

    Gids: ``beat:NAME`` (one per heartbeat), ``key:NAME``, ``crash:NAME``, ``expires:NAME``,
    ``noticed:NAME``, ``ttl`` (the span from the last heartbeat to the expiry).
    """
    crash = crash or crash_times()
    names = list(crash.beats)
    row = {name: len(names) - 1 - i for i, name in enumerate(names)}  # the first at the top
    end = max(max(beats, default=0.0) for beats in crash.beats.values())
    end = max(end, crash.expires, *crash.noticed.values()) + 0.3
    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0.12, 0.22, 0.85, 0.64))
    fig.suptitle(title, fontsize=13, color=TEXT_COLOR, y=0.97)
    dead = crash.crashed
    for name in names:
        y = row[name]
        key_until = crash.expires if name == dead else end
        ax.barh(
            y,
            key_until,
            left=0,
            height=0.34,
            color=_tint(SERVER_COLOR, 0.8),
            edgecolor="none",
            gid=f"key:{name}",
        )
        for beat in crash.beats[name]:
            ax.plot([beat, beat], [y - 0.22, y + 0.22], color=SERVER_COLOR, linewidth=2, gid=f"beat:{name}")
        if name in crash.noticed:
            when = crash.noticed[name]
            ax.plot(
                [when],
                [y],
                marker="D",
                markersize=9,
                color=PALETTE[2],
                markeredgecolor="white",
                zorder=4,
                gid=f"noticed:{name}",
            )
            ax.annotate(
                f"{name} notices: {dead}'s clients left",
                (when, y),
                xytext=(-6, 12),
                textcoords="offset points",
                ha="right",
                va="bottom",
                fontsize=8.5,
                color=TEXT_COLOR,
                bbox=_LABEL_BOX,
            )
    y = row[dead]
    ax.barh(
        y,
        crash.expires - crash.crash_at,
        left=crash.crash_at,
        height=0.34,
        color="white",
        alpha=0.55,
        hatch="///",
        edgecolor=ERROR_COLOR,
        linewidth=0,
        gid="orphaned",
    )
    ax.plot(
        [crash.crash_at],
        [y],
        marker="X",
        markersize=12,
        color=ERROR_COLOR,
        markeredgecolor="white",
        zorder=5,
        gid=f"crash:{dead}",
    )
    ax.annotate(
        "killed",
        (crash.crash_at, y),
        xytext=(0, 12),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=8.5,
        color=ERROR_COLOR,
        bbox=_LABEL_BOX,
    )
    ax.plot(
        [crash.expires],
        [y],
        marker="o",
        markersize=9,
        color="white",
        markeredgecolor=ERROR_COLOR,
        markeredgewidth=2,
        zorder=5,
        gid=f"expires:{dead}",
    )
    ax.annotate(
        "its key expires",
        (crash.expires, y),
        xytext=(6, 12),
        textcoords="offset points",
        ha="left",
        va="bottom",
        fontsize=8.5,
        color=ERROR_COLOR,
        bbox=_LABEL_BOX,
    )
    ax.annotate(
        "",
        xy=(crash.expires, y - 0.36),
        xytext=(crash.last_beat, y - 0.36),
        gid="ttl",
        arrowprops=dict(arrowstyle="<|-|>", color=NOTE_COLOR, linewidth=1.2, shrinkA=0, shrinkB=0),
    )
    heartbeats = crash.ttl / crash.heartbeat
    ax.text(
        (crash.last_beat + crash.expires) / 2,
        y - 0.42,
        f"time to live: {heartbeats:g} heartbeats after the last one",
        ha="center",
        va="top",
        fontsize=8.5,
        color=NOTE_COLOR,
    )
    ax.set_yticks([row[name] for name in names], [f"server {name}" for name in names], fontsize=10)
    ax.set_ylim(-0.8, len(names) - 0.4)
    ax.set_xlim(0, end)
    ax.set_xlabel("time (s)", fontsize=9, color=TEXT_COLOR)
    ax.tick_params(labelsize=8, colors=TEXT_COLOR)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.legend(
        handles=[
            Line2D(
                [],
                [],
                color=SERVER_COLOR,
                marker="|",
                linestyle="",
                markersize=10,
                markeredgewidth=2,
                label="heartbeat: rewrites its key",
            ),
            Patch(facecolor=_tint(SERVER_COLOR, 0.8), label="its key alive in Redis"),
            Patch(facecolor="white", edgecolor=ERROR_COLOR, hatch="///", label="alive, but nobody home"),
            Line2D(
                [], [], color=PALETTE[2], marker="D", linestyle="", markersize=8, label="notices the silence"
            ),
        ],
        loc="lower center",
        ncol=4,
        frameon=False,
        fontsize=8.5,
        bbox_to_anchor=(0.54, 0.0),
    )
    return fig


# --- one flood, with and without flood control (lesson 12) ----------------------------------------


def spam_received(
    without: dict[str, list[float]],
    with_rate: dict[str, list[float]],
    rate: float = 200.0,
    *,
    flood_at: float = 0.5,
    seconds: float = 3.0,
    figsize: tuple[float, float] = (10.0, 3.6),
) -> Figure:
    """The spam lines each student received over time: without flood control (left) and with
    ``--rate rate`` (right), on one scale.

    ``without`` and ``with_rate`` map a student to the times (seconds from the start) at which
    its spam lines arrived; the spammer floods at ``flood_at``. The right panel also draws what
    flood control lets through at most: a full bucket at once (:data:`chatlab.flood.BURST_SECONDS`
    worth), then ``rate`` a second. Each panel's title says the most any student received. Gids:
    ``received:<panel>:<student>`` (panel ``without`` or ``rate``), ``flood`` and ``allowed``.
    """
    from .flood import BURST_SECONDS  # here, not at the top: only this picture needs it

    colors = client_colors([*without, *with_rate])
    fig = Figure(figsize=figsize)
    left, right = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, panel, title, spam in (
        (left, "without", "no flood control", without),
        (right, "rate", f"--rate {rate:g}", with_rate),
    ):
        for name, times in sorted(spam.items()):
            arrived = sorted(times)
            ax.step(
                [0.0, *arrived],
                range(len(arrived) + 1),
                where="post",
                color=colors[name],
                linewidth=1.5,
                label=name,
                gid=f"received:{panel}:{name}",
            )
        ax.axvline(
            flood_at, color=ERROR_COLOR, linestyle=":", linewidth=2, label="spammer floods", gid="flood"
        )
        most = max((len(times) for times in spam.values()), default=0)
        ax.set_title(f"{title}: {most:,} lines", color=TEXT_COLOR, family=MONO, fontsize=11)
        ax.set_xlabel("seconds", fontsize=9, color=TEXT_COLOR)
        ax.set_xlim(0, seconds)
        ax.tick_params(labelsize=8, colors=TEXT_COLOR)
        ax.grid(color="#E3E7EB", linewidth=0.8)
        ax.set_axisbelow(True)
    burst = rate * BURST_SECONDS
    right.plot(
        [flood_at, seconds],
        [burst, burst + rate * (seconds - flood_at)],
        color=TEXT_COLOR,
        linestyle="--",
        linewidth=1,
        label=f"at most {burst:g}, then {rate:g} a second",
        gid="allowed",
    )
    left.set_ylabel("spam lines received", fontsize=9, color=TEXT_COLOR)
    right.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    return fig
