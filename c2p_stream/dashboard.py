"""The Rich terminal dashboard: an adapter from LabelEvents to an 80x24 screen.

`DashboardState` (pure, updated from events) and `render` (pure) hold all the logic
and are tested without a terminal; `Dashboard` only wires them to `rich.live.Live`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from rich import get_console
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from c2p_stream.events import ATTRIBUTES, LabelEvent

HISTORY_HOPS = 60  # recent labels shown in the strips, 1 s per hop
LATENCY_HOPS = 600  # latencies kept for p50/p99 (10 min at 1 hop/s)
MAX_BARS = 8  # probability rows per attribute; with more clusters the likeliest are shown
# the 16 standard colors only: tmux (TERM=screen) maps 256-color greys to black
CLUSTER_COLORS = ("cyan", "magenta", "yellow", "green", "bright_blue", "red", "bright_white", "bright_magenta")
TREND_ARROWS = {"rising": "↑", "falling": "↓", "flat": "→"}
COMPASS_ARROWS = {
    "north": "↑", "north-east": "↗", "east": "→", "south-east": "↘",
    "south": "↓", "south-west": "↙", "west": "←", "north-west": "↖",
}
LEVEL_FLOOR_DBFS = -60.0  # left end of the input meter


@dataclass
class DashboardState:
    """What the screen shows, folded from the event stream; no terminal needed.

    Histories hold 0-based cluster ids, None for a hop without speech.
    `cluster_names` (attribute -> one name per cluster, from the checkpoint) is optional:
    without it, names and k are learned from the events as clusters show up.
    """

    model_name: str
    source: str  # e.g. "file talk.wav", "mic: USB Audio"
    clients: int = 0  # connected websocket clients
    ended: str | None = None  # reason once the stream is over, e.g. "eof"
    history_hops: int = HISTORY_HOPS
    cluster_names: dict[str, list[str]] | None = None
    last: LabelEvent | None = field(default=None, init=False)  # newest event
    n_events: int = field(default=0, init=False)
    n_speech: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.history = {a: deque(maxlen=self.history_hops) for a in ATTRIBUTES}
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_HOPS)
        given = self.cluster_names or {}
        self.k = {a: len(given.get(a, ())) for a in ATTRIBUTES}  # clusters per attribute
        self.names = {a: dict(enumerate(given.get(a, ()))) for a in ATTRIBUTES}  # id -> name

    def update(self, event: LabelEvent) -> None:
        self.last = event
        self.n_events += 1
        self.n_speech += event.speech
        self.latencies_ms.append(event.latency_ms)
        for attribute in ATTRIBUTES:
            label = getattr(event, attribute) if event.speech else None
            self.history[attribute].append(None if label is None else label.cluster)
            if label is not None:
                self.k[attribute] = len(label.probabilities)
                self.names[attribute][label.cluster] = label.name

    def latency_percentiles_ms(self) -> tuple[float, float] | None:
        """(p50, p99) over the last LATENCY_HOPS hops, None before the first event."""
        if not self.latencies_ms:
            return None
        p50, p99 = np.percentile(np.fromiter(self.latencies_ms, float), [50, 99])
        return float(p50), float(p99)

    def status(self) -> str:
        """One line: ended / waiting / no speech / live, with the current window."""
        if self.ended is not None:
            return f"ended: {self.ended}"
        if self.last is None:
            return "waiting for audio"
        e = self.last
        state = "live" if e.speech else "no speech"
        return f"{state} · hop {e.seq} · window {e.start_s:.0f}–{e.end_s:.0f} s"


def render(state: DashboardState, width: int = 80) -> RenderableType:
    """The whole screen for `state`, at most `width` cells wide and 19 lines tall."""
    inner = width - 4  # panel border and padding
    column = (inner - 1) // 2
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=column)
    grid.add_column(width=inner - 1 - column)
    grid.add_row(*(_attribute_column(state, a, column) for a in ATTRIBUTES))
    body = Group(
        grid,
        Text(""),
        *(_strip(state, a, inner) for a in ATTRIBUTES),
        Text(""),
        _pairing_line(state),
        _input_line(state),
        _latency_line(state),
        _status_line(state),
    )
    title = _fit(f"c2p-stream · {state.model_name} · {state.source}", inner - 4)
    style = "red" if state.ended else "bright_blue"
    return Panel(body, title=Text(title, style="bold"), title_align="left", border_style=style, width=width)


def _attribute_column(state: DashboardState, attribute: str, width: int) -> RenderableType:
    letter = attribute[0].upper()
    e = state.last
    label = getattr(e, attribute) if e is not None and e.speech else None
    head = Text(f"{attribute.upper():8} ", style="bold")
    if label is None:
        head.append("no speech" if e is not None else "—", style="dim italic")
    else:
        head.append(f"{letter}{label.cluster + 1} ", style=f"bold {_color(label.cluster)}")
        head.append(f"{label.name} {TREND_ARROWS.get(label.trend, '?')}", style="bold")
    rows = [head]
    k = state.k[attribute]
    probs = list(label.probabilities) if label is not None else [0.0] * k
    shown = sorted(sorted(range(k), key=lambda c: -probs[c])[:MAX_BARS])
    bar_width = max(width - 21, 4)  # "A3 " + 12-cell name + " " + bar + " 0.90"
    for c in shown:
        current = label is not None and c == label.cluster
        row = Text(f"{letter}{c + 1:<2}", style=_color(c) if label is not None else "dim")
        row.append(f"{_fit(state.names[attribute].get(c, ''), 12):12} ", style="bold" if current else "")
        row.append_text(_bar(probs[c], bar_width, _color(c)))
        row.append(f" {probs[c]:.2f}", style="bold" if current else "dim")
        rows.append(row)
    if k == 0:
        rows.append(Text("waiting for speech", style="dim"))
    return Group(*rows)


def _strip(state: DashboardState, attribute: str, width: int) -> Text:
    """Recent cluster ids, oldest left, newest right; '·' for no speech."""
    text = Text(f"{attribute:8} ", style="bold")
    history = list(state.history[attribute])[-(width - 9 - 4):]
    for cluster in history:
        text.append("·" if cluster is None else _cluster_char(cluster), style="dim" if cluster is None else f"bold {_color(cluster)}")
    text.append(" now" if history else "", style="dim")
    return text


def _pairing_line(state: DashboardState) -> Text:
    e = state.last
    text = Text("pairing  ", style="bold")
    if e is None or not e.speech or e.pairing is None:
        return text.append("—", style="dim")
    text.append(e.pairing, style="bold reverse")
    if e.direction:
        text.append(f"   {COMPASS_ARROWS.get(e.direction, '•')} {e.direction}", style="bold")
        text.append("  on the AV plane (x valence, y arousal)", style="dim")
    return text


def _input_line(state: DashboardState) -> Text:
    """Input level meter and the capture-side counters."""
    text = Text("input    ", style="bold")
    e = state.last
    if e is None:
        return text.append("—", style="dim")
    dbfs = e.level_dbfs
    fraction = 0.0 if not math.isfinite(dbfs) else (dbfs - LEVEL_FLOOR_DBFS) / -LEVEL_FLOOR_DBFS
    color = "red" if dbfs > -3 else "yellow" if dbfs > -12 else "green"
    text.append(f"{dbfs:6.1f} dBFS " if math.isfinite(dbfs) else "  -inf dBFS ")
    text.append_text(_bar(fraction, 20, color))
    _append_counter(text, "overflows", f"{e.overflows}", e.overflows > 0)
    return _append_counter(text, "lag", f"{e.capture_lag_s:.2f} s", e.capture_lag_s > 1.0)


def _latency_line(state: DashboardState) -> Text:
    """Latency percentiles and the output-side counters."""
    pcts = state.latency_percentiles_ms()
    text = Text("latency  ", style="bold")
    text.append("p50 —  p99 —" if pcts is None else f"p50 {_ms(pcts[0])} ms  p99 {_ms(pcts[1])} ms")
    skipped = 0 if state.last is None else state.last.skipped_hops
    _append_counter(text, "skipped hops", f"{skipped}", skipped > 0)
    return _append_counter(text, "clients", f"{state.clients}", False)


def _append_counter(text: Text, name: str, value: str, bad: bool) -> Text:
    text.append(f"   {name} ", style="dim")
    return text.append(value, style="bold yellow" if bad else "")


def _ms(value_ms: float) -> str:
    return f"{value_ms:.0f}" if value_ms >= 100 else f"{value_ms:.1f}"


def _status_line(state: DashboardState) -> Text:
    if state.ended is not None:
        return Text(f"■ {state.status()}", style="bold red")
    speech = state.last is not None and state.last.speech
    return Text(f"{'●' if speech else '○'} {state.status()}", style="bold green" if speech else "dim")


def _bar(fraction: float, width: int, color: str) -> Text:
    """A horizontal bar of `width` cells filled to `fraction` in eighths of a cell."""
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
    return Text(filled, style=color).append("░" * (width - len(filled)), style="bright_black")


def _cluster_char(cluster: int) -> str:
    return "123456789abcdefghijklmnopqrstuvwxyz"[cluster] if cluster < 35 else "+"


def _color(cluster: int) -> str:
    return CLUSTER_COLORS[cluster % len(CLUSTER_COLORS)]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


class Dashboard:
    """Live terminal view. `update` is safe from any thread (e.g. the engine worker);
    Live redraws from the shared state on its own thread at `refresh_per_second`.

    Inline rather than full-screen: it stays readable in tmux, prints from elsewhere
    scroll above it, and the last frame (with "ended: <reason>") stays after stop().
    """

    def __init__(self, model_name: str, source: str, console: Console | None = None,
                 refresh_per_second: float = 4, screen: bool = False,
                 cluster_names: dict[str, list[str]] | None = None):
        self.state = DashboardState(model_name, source, cluster_names=cluster_names)
        self._lock = threading.Lock()
        self._console = console or get_console()
        self._live = Live(console=self._console, screen=screen, refresh_per_second=refresh_per_second,
                          get_renderable=self._renderable)

    def _renderable(self) -> RenderableType:
        with self._lock:
            return render(self.state, width=min(self._console.width, 100))

    def start(self) -> None:
        self._live.start()

    def update(self, event: LabelEvent) -> None:
        with self._lock:
            self.state.update(event)

    def set_clients(self, n: int) -> None:
        with self._lock:
            self.state.clients = n

    def end(self, reason: str) -> None:
        with self._lock:
            self.state.ended = reason
        self._live.refresh()

    def stop(self) -> None:
        self._live.stop()

    def __enter__(self) -> Dashboard:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
