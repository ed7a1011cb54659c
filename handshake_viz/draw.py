"""Paint a :class:`~handshake_viz.layout.Layout` with matplotlib.

Seaborn-style entry points: data first, keyword-only options, draw on the
caller's Axes (or a new figure sized to the diagram) and return the Axes; never
``plt.show()``.  All decisions about *what* is drawn were made by
``layout.plan_trace``; this module only decides how it looks.

* :func:`plot_trace` — plan and paint a whole trace (or chosen connections and
  UDP flows) on one time axis, one lifeline per socket address; return the Axes.
* :func:`plot_connection` — the same for one connection.
* :func:`render_trace`, :func:`render` — the same on a new pyplot-free Figure
  (for the CLI and batch jobs: nothing is registered with pyplot, nothing leaks).
* :func:`paint` — paint an existing Layout onto an Axes.
* :func:`save_figure` — write png/svg/pdf atomically (temp file + rename).
* :func:`plot_all` — a multi-page PDF, one connection (or flow) per page.

Speed: arrows, arrowheads, call bars and connectors are a handful of batched
collections, so a 1,000-segment connection with ``max_rows=0`` renders in about
a second (``benchmarks/bench_plot.py``); the texts are the bulk of the cost.

The backend is never chosen here: scripts and tests call ``matplotlib.use("Agg")``
themselves; :func:`render`, :func:`save_figure` and :func:`plot_all` do not need
a GUI backend at all.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.textpath import TextToPath
from matplotlib.transforms import Affine2D

from handshake_viz.errors import OutputError, UsageError
from handshake_viz.layout import Layout, QueueGauge, Row, TimeMode, plan, plan_trace
from handshake_viz.model import Call, ConnectionSummary, Segment

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "PHASE_COLORS",
    "Style",
    "figure_size",
    "paint",
    "plot_all",
    "plot_connection",
    "plot_trace",
    "render",
    "render_trace",
    "save_figure",
    "write_png",
]

PHASE_COLORS: dict[str, str] = {
    "handshake": "#1f77b4",
    "data": "#2ca02c",
    "close": "#d62728",
    "reset": "#9467bd",
    "udp": "#d9730d",  # datagrams: no phase, one colour
}
_INK = "#222222"
_KERNEL = "#2f5597"  # the kernel layer's own words (queue notes, the window strip's title)
_VERDICT = {"agree": "#2e7d32", "linux": "#b26a00", "disagree": "#b00020"}
_QUEUE_FACE = "#8fb0de"
_QUEUE_FULL = "#e57373"
_DROP = "#37474f"
_STORY = "#1f4f9f"
_GREY = "#666666"
_LIFELINE = "#333333"
_CALL_FACE = "#fde9b4"
_CALL_EDGE = "#c8961e"
_NOTE = "#8a6d00"
_FLAG = "#b00020"
_FOLD_FACE = "#f1f1f1"
_MONO = "DejaVu Sans Mono"

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
_MAX_PIXELS = 60_000  # Agg refuses images of 2**16 pixels or more in either direction
_FIT = 0.9  # widest text line, as a share of the room between its lifelines
# Every Text artist is plain text: wire text and traced programs' text contain "$"
# (Redis's "$4\r\n"), backslashes and braces, which math text or TeX would parse.
_PLAIN: dict[str, Any] = {"parse_math": False, "usetex": False}


@dataclass(frozen=True)
class Style:
    """Options for the look; pass any of them as keywords to the plotting functions."""

    colors: tuple[tuple[str, str], ...] = tuple(PHASE_COLORS.items())  # phase (or "udp") -> colour
    font_scale: float = 1.0  # multiplies every font size
    row_height: float = 0.58  # inches per row (new figures)
    unit_width: float = 3.6  # inches between the two lifelines (new figures)
    dpi: float = 100.0
    show_times: bool = True  # real time in the left margin
    show_details: bool = True  # seq/ack line under each arrow
    legend: bool = True
    text_mode: str = "auto"  # "text": Text artists; "paths": glyph outlines; "auto": by count

    def color(self, phase: str) -> str:
        return dict(self.colors).get(phase, PHASE_COLORS.get(phase, _INK))


_STYLE_KEYS = tuple(f.name for f in fields(Style))


def _style(options: dict[str, Any]) -> Style:
    unknown = sorted(set(options) - set(_STYLE_KEYS))
    if unknown:
        raise UsageError(f"unknown style option {unknown[0]!r} (known: {', '.join(_STYLE_KEYS)})")
    if "colors" in options and isinstance(options["colors"], dict):
        merged = dict(PHASE_COLORS)
        merged.update(options["colors"])
        options = dict(options, colors=tuple(merged.items()))
    st = replace(Style(), **options)
    if st.text_mode not in ("auto", "text", "paths"):
        raise UsageError(f"text_mode={st.text_mode!r}: use 'auto', 'text' or 'paths'")
    return st


# Font sizes (points) before font_scale.
_SIZES = {
    "title": 12.0,
    "header": 10.5,
    "subtitle": 8.0,
    "lane": 10.0,
    "label": 10.5,
    "detail": 7.5,
    "marker": 7.5,
    "time": 8.0,
    "state": 7.5,
    "call": 8.5,
    "note": 7.5,
    "fold": 9.0,
    "footer": 9.0,
    "legend": 9.0,
}
_LEGEND_TEXT = {
    "udp": "UDP datagram",
    "flagged": "flagged segment (dashed)",
    "fold": "folded run",
    "call-traced": "socket call (traced)",
    "call-inferred": "socket call (inferred)",
    "queue": "accept queue (connections waiting for accept())",
    "dropped": "dropped by the kernel",
}
_TOP_IN = 1.25  # title + headers above the axes (inches)
_LINE_IN = 0.2  # one more header line
_HEADER_GAP = 24.0  # points between two neighbouring lifeline headers
_BOTTOM_IN = 0.55  # legend below the axes
_LANES_ABOVE_PT = 20.0  # the row of lane titles above the headers, when they have one


# ==========================================================================================
# Text measurement (exact widths without a renderer, cached)
# ==========================================================================================

_TTP = TextToPath()


Family = str | tuple[str, ...]  # a font family, or a list of them (the first with the glyph draws it)


@lru_cache(maxsize=8192)
def _text_width_pt(text: str, size: float, family: Family, weight: str, style: str) -> float:
    prop = FontProperties(family=list(family) if isinstance(family, tuple) else family, weight=weight,
                          style=style, size=size)
    width, _h, _d = _TTP.get_text_width_height_descent(text, prop, ismath=False)
    return float(width)


def _mono_width_pt(text: str, size: float) -> float:
    # DejaVu Sans Mono: every glyph advances 0.602 em (plus a little for hinting at
    # screen resolutions); no need to shape the string.
    return len(text) * 0.625 * size


# ==========================================================================================
# Arrowheads: one collection whose triangles point along their arrows on screen
# ==========================================================================================


class _ArrowHeads(PolyCollection):
    """Filled triangles at arrow tips, sized in points, rotated at draw time.

    The head's direction depends on the data-to-screen aspect, known only when
    the figure is drawn, so the vertices are recomputed in ``draw`` (cheap: one
    vectorised transform for all arrows).
    """

    def __init__(self, tails: np.ndarray, tips: np.ndarray, *, length: float, half_width: float,
                 **kwargs: Any) -> None:
        self._tails = np.asarray(tails, dtype=float).reshape(-1, 2)
        self._tips = np.asarray(tips, dtype=float).reshape(-1, 2)
        self._shape = np.array([[0.0, 0.0], [-length, half_width], [-length, -half_width]])
        super().__init__([self._shape] * len(self._tips), offsets=self._tips, **kwargs)

    def draw(self, renderer: Any) -> None:
        if len(self._tips):
            trans = self.get_offset_transform()
            d = trans.transform(self._tips) - trans.transform(self._tails)
            ang = np.arctan2(d[:, 1], d[:, 0])
            cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
            sx, sy = self._shape[:, 0][None, :], self._shape[:, 1][None, :]
            verts = np.stack([cos * sx - sin * sy, sin * sx + cos * sy], axis=-1)
            self.set_verts(list(verts))
        super().draw(renderer)


# ==========================================================================================
# Many texts at once: glyph outlines in one collection
# ==========================================================================================
#
# matplotlib 3.11 lays out and rasterises every Text glyph by glyph from Python
# (~3 ms for a 30-character string on this machine), so a 1,000-row diagram with
# three texts per row would take ~10 s to draw.  Above a threshold the row texts
# are drawn instead as glyph outlines (cached per character, or per string for the
# few bold labels) batched into one PathCollection: ~0.1 ms per string.  The
# outlines are unhinted, so small diagrams keep real Text artists (crisper at
# 100 %, selectable in SVG/PDF).

_TEXT_PATHS_ABOVE = 400  # row texts; more than this draws them as glyph outlines
_MONO_ADVANCE = 0.60205  # DejaVu Sans Mono advance width, em
_EMPTY_PATH = (np.zeros((0, 2)), np.zeros(0, dtype=np.uint8))


@lru_cache(maxsize=4096)
def _outline(text: str, family: str, weight: str, style: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (points at size 1, baseline at y=0, starting at x=0) and codes.

    Straight from the font, never through ``TextPath``: that reads a string with two
    ``$`` as math text, and wire text is plain text."""
    if not text.strip():
        return _EMPTY_PATH
    prop = FontProperties(family=family, weight=weight, style=style)
    verts, codes = _TTP.get_text_path(prop, text, ismath=False)
    if not len(verts):
        return _EMPTY_PATH
    return np.asarray(verts, dtype=float) / _TTP.FONT_SCALE, np.asarray(codes, dtype=np.uint8)


@lru_cache(maxsize=64)
def _line_metrics(family: str, weight: str, style: str) -> tuple[float, float]:
    """(height, descent) in em of a text line, as matplotlib's Text measures it ("lp")."""
    prop = FontProperties(family=family, weight=weight, style=style, size=1)
    _w, h, d = _TTP.get_text_width_height_descent("lp", prop, ismath=False)
    return float(h), float(d)


class _TextPaths(PathCollection):
    """Texts drawn as glyph outlines; ``strings`` keeps what they say, in order."""

    strings: tuple[str, ...]
    anchors: np.ndarray


class _Writer:
    """Puts texts on the axes: as Text artists, or (``paths=True``) batched outlines."""

    def __init__(self, ax: Axes, paths: bool) -> None:
        self.ax = ax
        self.paths = paths
        self._pending: dict[float, list[tuple[Any, ...]]] = {}

    def text(self, x: float, y: float, s: str, *, size: float, color: str, ha: str = "center",
             va: str = "center", mono: bool = False, weight: str = "normal",
             style: str = "normal", zorder: float = 4) -> None:
        family = _MONO if mono else "DejaVu Sans"
        if not self.paths:
            self.ax.text(x, y, s, ha=ha, va=va, fontsize=size, color=color, family=family,
                         fontweight=weight, fontstyle=style, zorder=zorder, **_PLAIN)
            return
        self._pending.setdefault(zorder, []).append((x, y, s, size, color, ha, va, family, weight,
                                                    style, mono))

    def flush(self) -> None:
        from matplotlib.path import Path as MPath

        for zorder, items in self._pending.items():
            paths, offsets, colors = [], [], []
            for x, y, s, size, color, ha, va, family, weight, style, mono in items:
                if mono:
                    pieces = []
                    for i, ch in enumerate(s):
                        v, c = _outline(ch, family, weight, style)
                        if len(v):
                            pieces.append((v + (i * _MONO_ADVANCE, 0.0), c))
                    width = len(s) * _MONO_ADVANCE
                    if pieces:
                        verts = np.concatenate([p[0] for p in pieces])
                        codes = np.concatenate([p[1] for p in pieces])
                    else:
                        verts, codes = _EMPTY_PATH
                else:
                    verts, codes = _outline(s, family, weight, style)
                    width = _text_width_pt(s, 1.0, family, weight, style)
                h, d = _line_metrics(family, weight, style)
                dx = {"left": 0.0, "center": -width / 2, "right": -width}[ha]
                dy = {"baseline": 0.0, "bottom": d, "top": d - h, "center": d - h / 2}[va]
                if len(verts):
                    paths.append(MPath((verts + (dx, dy)) * size, codes))
                else:
                    paths.append(MPath(np.zeros((1, 2)), [MPath.MOVETO]))
                offsets.append((x, y))
                colors.append(color)
            coll = _TextPaths(paths, offsets=np.asarray(offsets, dtype=float),
                              offset_transform=self.ax.transData, facecolors=colors,
                              edgecolors="none", linewidths=0, zorder=zorder)
            coll.set_transform(Affine2D().scale(1 / 72) + self.ax.figure.dpi_scale_trans)
            coll.strings = tuple(item[2] for item in items)
            coll.anchors = np.asarray(offsets, dtype=float)
            self.ax.add_collection(coll)
        self._pending.clear()


# ==========================================================================================
# Painting
# ==========================================================================================


def figure_size(layout: Layout, **style: Any) -> tuple[float, float]:
    """Inches (width, height) of a figure that shows ``layout`` at the default text sizes:
    the diagram at ``unit_width``/``row_height`` per unit, widened if the title, a
    note or the legend needs more room."""
    st = _style(style)
    return _sizes(layout, st)[:2]


def _bold_width(text: str, size: float) -> float:
    return max(_text_width_pt(line, size, "DejaVu Sans", "bold", "normal")
               for line in text.split("\n"))


def _header_room(layout: Layout, texts: list[str], size: float) -> float:
    """Points per lifeline unit that neighbouring headers ``texts`` need."""
    need = 0.0
    for (a, ta), (b, tb) in zip(zip(layout.lifelines, texts), zip(layout.lifelines[1:], texts[1:])):
        need = max(need, ((_bold_width(ta, size) + _bold_width(tb, size)) / 2 + _HEADER_GAP)
                   / (b.x - a.x))
    return need


def _headers(layout: Layout, size: float, unit_pt: float) -> tuple[list[str], bool]:
    """Lifeline headers on one line (``client 127.0.0.1:49736``) when neighbours fit
    side by side, else on two (name, then endpoint: long IPv6 addresses)."""
    one = [ln.header for ln in layout.lifelines]
    if _header_room(layout, one, size) <= unit_pt:
        return one, False
    return [f"{ln.name}\n{ln.endpoint}" for ln in layout.lifelines], True


@dataclass(frozen=True)
class _Heads:
    """What is written above the axes: lifeline headers (one or two lines each) and
    lane titles, beside their own lifeline's header or, when one of them would run
    into a neighbour's header, all on a row of their own above the headers."""

    texts: tuple[str, ...]
    two_lines: bool
    lanes_above: bool
    lane_shift: tuple[float, ...]  # points, per lane: away from its own header (beside it only)


def _heads(layout: Layout, k: float, pt_per_x: float) -> _Heads:
    size, lane_size = _SIZES["header"] * k, _SIZES["lane"] * k
    texts, two = _headers(layout, size, pt_per_x)
    widths = [_bold_width(t, size) for t in texts]
    at = [(ln.x - layout.xlim[0]) * pt_per_x for ln in layout.lifelines]
    boxes = [(x - w / 2 - 6, x + w / 2 + 6) for x, w in zip(at, widths)]  # padding included
    shifts: list[float] = []
    clash = False
    for lane in layout.lanes:
        lane_w = _text_width_pt(lane.title, lane_size, "DejaVu Sans", "normal", "normal")
        room = abs(lane.x - layout.lifelines[lane.lifeline].x) * pt_per_x
        need = widths[lane.lifeline] / 2 + 6 + 12 + lane_w / 2  # box padding + air
        shift = max(0.0, need - room) * lane.direction
        centre = (lane.x - layout.xlim[0]) * pt_per_x + shift
        clash = clash or any(centre - lane_w / 2 - 6 < b1 and b0 < centre + lane_w / 2 + 6
                             for i, (b0, b1) in enumerate(boxes) if i != lane.lifeline)
        shifts.append(shift)
    return _Heads(tuple(texts), two, clash, tuple(0.0 for _ in shifts) if clash else tuple(shifts))


def _sizes(layout: Layout, st: Style) -> tuple[float, float, float]:
    k = st.font_scale
    size = _SIZES["header"] * k
    texts, two = _headers(layout, size, st.unit_width * 72)
    unit = st.unit_width
    if two:  # even on two lines the headers need more room: widen the diagram
        unit = max(unit, _header_room(layout, texts, size) / 72)
    heads = _heads(layout, k, unit * 72)
    axes_w = (layout.xlim[1] - layout.xlim[0]) * unit
    widths = [axes_w, _text_width_pt(layout.title, _SIZES["title"] * k, "DejaVu Sans", "normal",
                                     "normal") * 1.04 / 72 + 0.8]
    widths += [_text_width_pt(n.text, _SIZES["footer"] * k, "DejaVu Sans", "normal", "normal")
               * 1.04 / 72 + 0.8 for n in layout.notes]
    legend_pt = sum(_text_width_pt(_LEGEND_TEXT.get(key, key), _SIZES["legend"] * k, "DejaVu Sans",
                                   "normal", "normal") + 60 for key in layout.legend)
    widths.append(legend_pt / 72 + 0.4)
    width = max(widths)
    height = (layout.ylim[1] - layout.ylim[0]) * st.row_height + _top_in(heads, k) + _bottom_in(layout, st, width)
    return width, height, axes_w


def _bottom_in(layout: Layout, st: Style, fig_w: float) -> float:
    """Inches under the axes: the legend, and the panel of notes and story when there is one."""
    return _BOTTOM_IN * st.font_scale + _panel(layout, st, fig_w)[2]


def _top_in(heads: _Heads, k: float) -> float:
    return (_TOP_IN + (_LINE_IN if heads.two_lines else 0.0)
            + (_LANES_ABOVE_PT / 72 if heads.lanes_above else 0.0)) * k


def _new_figure(layout: Layout, st: Style, *, pyplot: bool) -> tuple[Figure, Axes]:
    w, h, axes_w = _sizes(layout, st)
    if pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(w, h), dpi=st.dpi)
    else:
        fig = Figure(figsize=(w, h), dpi=st.dpi)
    fig.patch.set_facecolor("white")
    heads = _heads(layout, st.font_scale, axes_w * 72 / (layout.xlim[1] - layout.xlim[0]))
    top, bottom = _top_in(heads, st.font_scale), _bottom_in(layout, st, w)
    ax = fig.add_axes(((w - axes_w) / 2 / w, bottom / h, axes_w / w, 1.0 - (top + bottom) / h))
    return fig, ax


def paint(layout: Layout, ax: Axes, **style: Any) -> Axes:
    """Draw ``layout`` onto ``ax`` (limits, artists, title, legend) and return ``ax``.

    Texts are sized in points; at the default figure size (:func:`figure_size`)
    none of them overlap.  On a much smaller Axes they will.
    """
    st = _style(style)
    fs = {k: v * st.font_scale for k, v in _SIZES.items()}
    ax.set_xlim(*layout.xlim)
    ax.set_ylim(layout.ylim[1], layout.ylim[0])  # time runs down
    ax.set_axis_off()

    # points per data unit, to keep texts clear of the sloped arrows
    fig = ax.figure
    bbox = ax.get_position()
    fw, fh = fig.get_size_inches()
    pt_per_x = bbox.width * fw * 72 / (layout.xlim[1] - layout.xlim[0])
    pt_per_y = bbox.height * fh * 72 / (layout.ylim[1] - layout.ylim[0])

    n_texts = 3 * len(layout.rows) + len(layout.calls)
    paths = st.text_mode == "paths" or (st.text_mode == "auto" and n_texts > _TEXT_PATHS_ABOVE)
    out = _Writer(ax, paths)
    _paint_frame(layout, ax, fs, pt_per_x)
    _paint_folds(layout, ax, fs, pt_per_x, out)
    _paint_arrows(layout, ax, st, fs, pt_per_x, pt_per_y, out)
    _paint_states(layout, ax, fs, pt_per_x)
    _paint_queues(layout, ax, fs)
    _paint_calls(layout, ax, fs, out)
    _paint_windows(layout, ax, fs, out)
    _paint_markers(layout, ax, fs)
    _paint_footer(layout, ax, st, fs)
    _paint_panel(layout, ax, st)
    out.flush()
    return ax


def _paint_frame(layout: Layout, ax: Axes, fs: dict[str, float], pt_per_x: float) -> None:
    top, bottom = layout.lifeline_top, layout.lifeline_bottom
    # Lifelines, solid except across fold bands (dotted there: time is compressed).
    solid: list[list[tuple[float, float]]] = []
    dotted: list[list[tuple[float, float]]] = []
    for line in layout.lifelines:
        y = top
        for row in layout.fold_rows:
            solid.append([(line.x, y), (line.x, row.y - 0.2)])
            dotted.append([(line.x, row.y - 0.2), (line.x, row.y_end + 0.2)])
            y = row.y_end + 0.2
        solid.append([(line.x, y), (line.x, bottom)])
    ax.add_collection(LineCollection(solid, colors=_LIFELINE, linewidths=1.6, zorder=1))
    if dotted:
        ax.add_collection(LineCollection(dotted, colors=_LIFELINE, linewidths=1.6,
                                         linestyles=(0, (1, 3)), zorder=1))
    if layout.lanes:
        ax.add_collection(LineCollection([[(ln.x, top), (ln.x, bottom)] for ln in layout.lanes],
                                         colors="#aaaaaa", linewidths=0.8, linestyles=(0, (1, 2)),
                                         zorder=0))
    # Headers above the axes, in points so they do not depend on the row count.
    xy_axes = ("data", "axes fraction")
    heads = _heads(layout, fs["header"] / _SIZES["header"], pt_per_x)
    for line, header in zip(layout.lifelines, heads.texts):
        ax.annotate(header, xy=(line.x, 1.0), xycoords=xy_axes, xytext=(0, 24),
                    textcoords="offset points", ha="center", va="bottom", fontsize=fs["header"],
                    fontweight="bold", color=_INK, annotation_clip=False, multialignment="center",
                    bbox=dict(boxstyle="round,pad=0.3", fc="#f4f4f4", ec=_INK, lw=0.9), **_PLAIN)
        ax.annotate(line.subtitle, xy=(line.x, 1.0), xycoords=xy_axes, xytext=(0, 6),
                    textcoords="offset points", ha="center", va="bottom",
                    fontsize=fs["subtitle"], color=_GREY, annotation_clip=False, **_PLAIN)
    header_top = 24 + (14 if heads.two_lines else 0) + 22  # the boxes' tops, roughly
    lane_y = header_top if heads.lanes_above else 24
    for lane, shift in zip(layout.lanes, heads.lane_shift):
        ax.annotate(lane.title, xy=(lane.x, 1.0), xycoords=xy_axes, xytext=(shift, lane_y),
                    textcoords="offset points", ha="center", va="bottom", fontsize=fs["lane"],
                    color=_INK, annotation_clip=False, **_PLAIN)
    pad = 58 + (14 if heads.two_lines else 0) + (_LANES_ABOVE_PT if heads.lanes_above else 0)
    ax.set_title(layout.title, fontsize=fs["title"], pad=pad, color=_INK, **_PLAIN)


def _wrap(text: str, size: float, room_pt: float, style: str = "italic") -> str:
    """Break a ``, ``-separated text into lines of at most ``room_pt`` (greedy);
    the commas stay at the line ends, so joining the lines with spaces gives the text."""
    parts = text.split(", ")
    lines: list[str] = []
    for part in parts:
        candidate = f"{lines[-1]}, {part}" if lines else part
        if lines and _text_width_pt(candidate, size, "DejaVu Sans", "normal", style) * 1.04 > room_pt:
            lines[-1] += ","
            lines.append(part)
        elif lines:
            lines[-1] = candidate
        else:
            lines.append(part)
    return "\n".join(lines)


def _paint_folds(layout: Layout, ax: Axes, fs: dict[str, float], pt_per_x: float,
                 out: _Writer) -> None:
    folds = layout.fold_rows
    if not folds:
        return
    x0, x1 = layout.lifelines[0].x - 0.02, layout.lifelines[-1].x + 0.02
    boxes = [[(x0, r.y - 0.2), (x1, r.y - 0.2), (x1, r.y_end + 0.2), (x0, r.y_end + 0.2)]
             for r in folds]
    ax.add_collection(PolyCollection(boxes, facecolors=_FOLD_FACE, edgecolors="#999999",
                                     linewidths=0.8, linestyles=(0, (4, 3)), zorder=0.5))
    for r in folds:
        size = fs["fold"]
        room = 0.96 * r.text_room * pt_per_x
        text = _wrap(r.text, size, room)
        if text.count("\n") >= 2:  # three lines or more: smaller, to stay inside the band
            size = 0.85 * size
            text = _wrap(r.text, size, room)
        ax.text(r.text_x, r.y_mid, text, ha="center", va="center", fontsize=size,
                fontstyle="italic", color=_INK, zorder=4, multialignment="center",
                linespacing=1.25, **_PLAIN)
        _paint_time(layout, r, fs, out)


def _paint_arrows(layout: Layout, ax: Axes, st: Style, fs: dict[str, float],
                  pt_per_x: float, pt_per_y: float, out: _Writer) -> None:
    rows = layout.arrow_rows
    if not rows:
        return
    gap = 0.012  # arrowheads touch, not cross, the receiving lifeline
    tails = np.array([(r.x_from, r.y) for r in rows])
    tips = np.array([(r.x_to - gap if r.x_to > r.x_from else r.x_to + gap, r.y_end) for r in rows])
    colors = [st.color("udp" if r.kind == "datagram" else r.phase.value if r.phase else "")
              for r in rows]
    styles = ["--" if r.flagged else "-" for r in rows]
    ax.add_collection(LineCollection(np.stack([tails, tips], axis=1), colors=colors,
                                     linewidths=1.6, linestyles=styles, zorder=2))
    heads = _ArrowHeads(tails, tips, length=9.0, half_width=3.6, facecolors=colors,
                        edgecolors="none", offset_transform=ax.transData, zorder=2.1)
    heads.set_transform(Affine2D().scale(1 / 72) + ax.figure.dpi_scale_trans)
    ax.add_collection(heads)
    # an arrow that passes other lifelines gets a dot where it starts: its sender
    xs = sorted(ln.x for ln in layout.lifelines)
    starts = [(r.x_from, r.y, color) for r, color in zip(rows, colors)
              if any(min(r.x_from, r.x_to) < x < max(r.x_from, r.x_to) for x in xs)]
    if starts:
        ax.scatter([s[0] for s in starts], [s[1] for s in starts], s=16,
                   c=[s[2] for s in starts], linewidths=0, zorder=2.2)
    dropped = [(tip[0], tip[1]) for r, tip in zip(rows, tips) if r.dropped]
    if dropped:  # the kernel dropped it on arrival: a cross where it arrived
        ax.scatter([d[0] for d in dropped], [d[1] for d in dropped], s=70, marker="x", c=_FLAG,
                   linewidths=2.2, zorder=2.3)

    label_size, detail_size, marker_size = fs["label"], fs["detail"], fs["marker"]
    for r, color in zip(rows, colors):
        mid_y = (r.y + r.y_end) / 2
        slope = abs((r.y_end - r.y) / (r.x_to - r.x_from))  # rows per lifeline unit
        # the label line: role (bold, phase colour) + analysis tag (red box), centred together
        lw = _text_width_pt(r.label, label_size, "DejaVu Sans", "bold", "normal") / pt_per_x
        tag = ", ".join(r.markers)
        tw, sep = _tag_width(tag, marker_size, pt_per_x)
        kw, ksep = _tag_width(r.kernel_tag, marker_size, pt_per_x)
        total = lw + sep + tw + ksep + kw
        left = r.text_x - total / 2
        # baseline: above the arrow wherever the line spans it (the arrow is highest
        # next to its sender)
        x_near = left if r.x_to > r.x_from else left + total
        y_arrow = r.y + abs(x_near - r.x_from) * slope
        base = min(mid_y - 0.10, y_arrow - 0.05)
        out.text(left + lw / 2, base, r.label, ha="center", va="baseline", size=label_size,
                 weight="bold", color=color)
        # the analysis tags (red), and what the kernel did with it (the kernel layer: dropped, why)
        for text, at, face in ((tag, left + lw + sep, _FLAG), (r.kernel_tag, left + lw + sep + tw + ksep, _DROP)):
            if text:
                ax.text(at + 4 / pt_per_x, base, text, ha="left", va="baseline", fontsize=marker_size,
                        fontweight="bold", color="white", zorder=4,
                        bbox=dict(boxstyle="round,pad=0.25", fc=face, ec="none"), **_PLAIN)
        if st.show_details:
            if r.lines == 2:
                lines = [r.detail, r.extra]
            else:
                lines = [r.detail + (f"  {r.extra}" if r.extra else "")]
            widest = max(_mono_width_pt(line, detail_size) for line in lines) / pt_per_x
            size = detail_size
            fit = _FIT * r.text_room
            if widest > fit:  # shrink to fit between the lifelines, never below 6 pt
                size = max(6.0, size * fit / widest)
            # top of the first line: below the arrow wherever the line spans it (the
            # arrow is lowest next to its receiver)
            dw = _mono_width_pt(lines[0], size) / pt_per_x
            x_far = r.text_x + dw / 2 if r.x_to > r.x_from else r.text_x - dw / 2
            y_low = r.y + abs(x_far - r.x_from) * slope
            top = max(mid_y + 0.12, y_low + 0.06)
            for i, line in enumerate(lines):
                if line:
                    out.text(r.text_x, top + i * size * 1.3 / pt_per_y, line, ha="center", va="top",
                             size=size, mono=True, color="#333333")
        if st.show_times:
            _paint_time(layout, r, fs, out)


def _tag_width(tag: str, size: float, pt_per_x: float) -> tuple[float, float]:
    """(width, space before it) of a tag box on a row's label line, in lifeline units."""
    if not tag:
        return 0.0, 0.0
    return (_text_width_pt(tag, size, "DejaVu Sans", "bold", "normal") + 8) / pt_per_x, 10 / pt_per_x


def _paint_time(layout: Layout, r: Row, fs: dict[str, float], out: _Writer) -> None:
    """A row's time in the margin (once: empty when the row above said the same) and the
    wait before it when that stands out (``+43 ms``, between the two rows)."""
    if r.margin_text:
        out.text(layout.time_x, r.time_y, r.margin_text, ha="right", va="center", size=fs["time"],
                 mono=True, color=_GREY)
    if r.gap_text and r.gap_y is not None:
        out.text(layout.time_x, r.gap_y, r.gap_text, ha="right", va="center", size=fs["time"],
                 mono=True, color=_NOTE, weight="bold")


def _paint_states(layout: Layout, ax: Axes, fs: dict[str, float], pt_per_x: float) -> None:
    """State marks in their boxes; with the kernel's account the box's edge takes the
    verdict's colour and the verdict's glyph (``✓``, ``≈1``, ``✗2``) stands beside it."""
    size = fs["state"]
    for m in layout.states:
        left = m.side == "client"
        edge = _VERDICT.get(m.verdict or "", "#b5b5b5")
        box = dict(boxstyle="round,pad=0.22", fc="white", ec=edge, lw=0.7 if m.verdict is None else 0.9)
        x = m.x - 0.03 if left else m.x + 0.03
        ax.text(x, m.y, m.shown, ha="right" if left else "left", va="center", fontsize=size,
                fontstyle="italic", color="#555555", bbox=box, zorder=5, **_PLAIN)
        if m.badge:
            # past the box's outer end (its padding is 0.22 em), on white: connectors run there
            width = _text_width_pt(m.shown, size, "DejaVu Sans", "normal", "italic") + 0.22 * size + 4
            bx = x - width / pt_per_x if left else x + width / pt_per_x
            ax.text(bx, m.y, m.badge, ha="right" if left else "left", va="center", fontsize=size * 1.1,
                    fontweight="bold", color=_VERDICT[m.verdict or "agree"], zorder=5,
                    bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none"), **_PLAIN)


def _paint_queues(layout: Layout, ax: Axes, fs: dict[str, float]) -> None:
    """Accept queues: a gauge of slots between a listener's lifeline and its lane, filled
    while connections wait for accept(), red where the queue was full; and its note."""
    if not layout.queues:
        return
    empty, filled, faces = [], [], []
    for q in layout.queues:
        def cell(slot: int, y0: float, y1: float, q: QueueGauge = q) -> list[tuple[float, float]]:
            a = q.x_inner + q.direction * slot * q.cell
            b = a + q.direction * q.cell
            return [(a, y0), (b, y0), (b, y1), (a, y1)]

        empty += [cell(i, q.y0, q.y1) for i in range(q.slots)]
        for st in q.steps:
            for i in range(min(st.depth, q.slots)):
                filled.append(cell(i, st.y0, st.y1))
                faces.append(_QUEUE_FULL if st.full else _QUEUE_FACE)
        if q.text:
            ax.text(q.text_x, q.text_y, q.text, ha="right" if q.direction < 0 else "left", va="center",
                    fontsize=fs["note"], fontstyle="italic", color=_KERNEL, zorder=4, **_PLAIN)
    ax.add_collection(PolyCollection(empty, facecolors="white", edgecolors="#9aa9bf", linewidths=0.6,
                                     zorder=1.2))
    ax.add_collection(PolyCollection(filled, facecolors=faces, edgecolors="#5a78a8", linewidths=0.6,
                                     zorder=1.3))


def _paint_windows(layout: Layout, ax: Axes, fs: dict[str, float], out: _Writer) -> None:
    """--windows: the receiving socket's variables, one line per probed segment."""
    w = layout.windows
    if w is None:
        return
    size = fs["detail"]
    ax.text(w.x0, w.title_y, w.title, ha="left", va="center", fontsize=size, fontstyle="italic",
            color=_KERNEL, zorder=4, **_PLAIN)
    edges = (w.x0,) + w.col_right
    for i, head in enumerate(w.columns):
        x, ha = (w.x0, "left") if i == 0 else (w.col_right[i], "right")
        out.text(x, w.header_y, head, ha=ha, size=size, mono=True, weight="bold", color=_INK)
    rule_y = w.header_y + 0.22
    ax.add_collection(LineCollection([[(edges[0], rule_y), (edges[-1], rule_y)]], colors="#cccccc",
                                     linewidths=0.6, zorder=1))
    for row in w.rows:
        for i, cell in enumerate(row.cells):
            x, ha = (w.x0, "left") if i == 0 else (w.col_right[i], "right")
            out.text(x, row.y, cell, ha=ha, size=size, mono=True, color="#333333" if i else _GREY)


def _paint_markers(layout: Layout, ax: Axes, fs: dict[str, float]) -> None:
    """The explanation layer's numbered markers (a finding's letter in red) in the margin."""
    for m in layout.markers:
        face = _FLAG if m.kind == "finding" else _STORY
        ax.text(m.x, m.y, m.number, ha="center", va="center", fontsize=fs["marker"], fontweight="bold",
                color="white", zorder=5, bbox=dict(boxstyle="round,pad=0.25", fc=face, ec="none"), **_PLAIN)


def _paint_calls(layout: Layout, ax: Axes, fs: dict[str, float], out: _Writer) -> None:
    if not layout.calls:
        return
    from handshake_viz.layout import BAR_HALF_WIDTH

    rects, faces, styles = [], [], []
    for b in layout.calls:
        h = BAR_HALF_WIDTH
        rects.append([(b.x - h, b.y0), (b.x + h, b.y0), (b.x + h, b.y1), (b.x - h, b.y1)])
        faces.append("none" if b.inferred else _CALL_FACE)
        styles.append((0, (3, 2)) if b.inferred else "solid")
    ax.add_collection(PolyCollection(rects, facecolors=faces, edgecolors=_CALL_EDGE,
                                     linewidths=1.0, linestyles=styles, zorder=3))
    links = [c for c in layout.connectors if c.kind == "call"]
    if links:
        ax.add_collection(LineCollection(
            [[(c.x0, c.y0), (c.x1, c.y1)] for c in links], colors=_CALL_EDGE, linewidths=0.9,
            linestyles=[(0, (4, 2)) if not c.inferred else (0, (1, 2)) for c in links], zorder=1.5))
    leaders = [b.leader for b in layout.calls if b.leader is not None]
    if leaders:  # a label moved away from its bar points at it
        ax.add_collection(LineCollection([[(x0, y0), (x1, y1)] for x0, y0, x1, y1 in leaders],
                                         colors=_CALL_EDGE, linewidths=0.7, zorder=3.5))
    queues = [c for c in layout.connectors if c.kind == "queue"]
    if queues:
        ax.add_collection(LineCollection([[(c.x0, c.y0), (c.x1, c.y1)] for c in queues],
                                         colors=_NOTE, linewidths=1.2, linestyles=(0, (1, 1.5)),
                                         zorder=2.5))
    for b in layout.calls:
        left = b.side == "client"
        out.text(b.label_x, b.label_y, b.label, ha="right" if left else "left", va="center",
                 size=fs["call"], mono=True, color=_FLAG if b.failed else _INK)
        if b.note:
            ax.text(b.label_x, b.note_y, b.note, ha="right" if left else "left", va="center",
                    fontsize=fs["note"], fontstyle="italic", color=_NOTE, zorder=4, **_PLAIN)


def _paint_footer(layout: Layout, ax: Axes, st: Style, fs: dict[str, float]) -> None:
    for note in layout.idle:
        ax.text(note.x, note.y, note.text, ha="center", va="center", fontsize=fs["fold"],
                fontstyle="italic", color=_GREY, **_PLAIN)
    for note in layout.notes:
        ax.text(note.x, note.y, note.text, ha="center", va="center", fontsize=fs["footer"],
                color="#444444", **_PLAIN)
    if not st.legend:
        return
    handles: list[Any] = []
    for key in layout.legend:
        text = _LEGEND_TEXT.get(key, key)
        if key == "flagged":
            handles.append(Line2D([], [], color=_INK, lw=1.6, ls="--", label=text))
        elif key == "fold":
            handles.append(Patch(fc=_FOLD_FACE, ec="#999999", ls="--", label=text))
        elif key == "call-traced":
            handles.append(Patch(fc=_CALL_FACE, ec=_CALL_EDGE, label=text))
        elif key == "call-inferred":
            handles.append(Patch(fc="none", ec=_CALL_EDGE, ls="--", label=text))
        elif key == "queue":
            handles.append(Patch(fc=_QUEUE_FACE, ec="#5a78a8", label=text))
        elif key == "dropped":
            handles.append(Line2D([], [], color=_FLAG, marker="x", ls="none", mew=2.2, ms=8, label=text))
        else:
            handles.append(Line2D([], [], color=st.color(key), lw=2, label=text))
    legend = ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                       bbox_transform=ax.transAxes, ncol=len(handles), frameon=False,
                       fontsize=fs["legend"], handlelength=2.2, columnspacing=1.6,
                       borderaxespad=0.2)
    for t in legend.get_texts():
        t.update(_PLAIN)


# ==========================================================================================
# The panel under the diagram: the kernel layer's key and notes, the story (explain)
# ==========================================================================================

_PANEL_MAX_IN = 11.0  # the text column is never wider than this: lines stay readable
_PANEL_SIZE = 8.5  # points
_PANEL_LEADING = 1.32  # line height, in font sizes
_PANEL_GAP_PT = 3.5  # between two paragraphs (twice that between two sections)
_PANEL_INDENT_PT = 24.0  # a numbered paragraph's text starts here
#: Fonts with Chinese glyphs, by name (any one installed will do) and by Debian's paths
#: (fonts-noto-cjk, fonts-wqy-zenhei, fonts-wqy-microhei, fonts-droid-fallback), for a
#: font installed after matplotlib's font list was made.
_CJK_NAMES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC",
              "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback")
_CJK_FILES = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
              "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
              "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
              "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf")
NO_CJK_FONT = ("no font with Chinese glyphs found (apt-get install fonts-noto-cjk or fonts-wqy-zenhei): "
               "the Chinese text is drawn with missing glyphs")


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The name of an installed font with Chinese glyphs (registering it with matplotlib
    when it was installed after matplotlib listed the fonts), or None."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    for name in _CJK_NAMES:
        if name in names:
            return _with_weights(name)
    for path in _CJK_FILES:
        if os.path.isfile(path):
            before = len(font_manager.fontManager.ttflist)
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):
                continue
            added = font_manager.fontManager.ttflist[before:]
            if added:
                return _with_weights(added[0].name)
    return None


def _with_weights(name: str) -> str:
    """``name``, listed for the regular and bold weights the story asks for: a CJK font
    with one face (WenQuanYi Zen Hei says it is medium, 500) would otherwise make
    matplotlib log "Failed to find font weight normal" for every text."""
    from dataclasses import replace as copy

    from matplotlib import font_manager

    faces = [f for f in font_manager.fontManager.ttflist if f.name == name]
    for weight in (400, 700):
        if faces and not any(f.weight == weight for f in faces):
            font_manager.fontManager.ttflist.append(copy(faces[0], weight=weight))
    return name


def _family(lang: str) -> Family:
    """The story's font: DejaVu Sans, falling back to a CJK font for Chinese characters
    (the English story names some terms in Chinese too: 四次挥手)."""
    cjk = cjk_font()
    if cjk is None:
        if lang == "zh":
            import warnings

            warnings.warn(NO_CJK_FONT, stacklevel=3)
        return "DejaVu Sans"
    return ("DejaVu Sans", cjk)


_TOKEN = re.compile(r"[\u2e80-\u9fff\u3000-\u303f\uff00-\uffef]|[^\s\u2e80-\u9fff\u3000-\u303f\uff00-\uffef]+|\s+")


def _wrap_words(text: str, size: float, room_pt: float, family: Family, style: str = "normal",
                weight: str = "normal") -> list[str]:
    """Greedy line breaks at spaces, and between any two Chinese characters."""
    import warnings

    lines: list[str] = []
    line, width = "", 0.0
    for token in _TOKEN.findall(text):
        with warnings.catch_warnings():  # no CJK font: said once by _family, not per glyph
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            w = _text_width_pt(token, size, family, weight, style)
        if token.isspace():
            if line:
                line, width = line + " ", width + w
            continue
        if line.strip() and width + w > room_pt:
            lines.append(line.rstrip())
            line, width = "", 0.0
        line, width = line + token, width + w
    if line.strip():
        lines.append(line.rstrip())
    return lines or [""]


@dataclass(frozen=True)
class _Para:
    """One paragraph of the panel: a head in the number column ("≈1", "3.", "A") and its
    wrapped text."""

    head: str
    head_color: str
    text: str  # lines joined by newlines
    lines: int
    size: float
    color: str
    style: str
    weight: str
    indent: float  # points from the column's left edge
    gap_before: float  # points


def _panel(layout: Layout, st: Style, fig_w: float) -> tuple[list[_Para], float, float]:
    """The paragraphs under the diagram, the column's width (points) and the panel's
    height (inches): the kernel layer's key and footnotes, then the story."""
    k = st.font_scale
    if not (layout.kernel_key or layout.footnotes or layout.story):
        return [], 0.0, 0.0
    col = min(fig_w - 0.8, _PANEL_MAX_IN) * 72
    family = _family(layout.lang)
    size = _PANEL_SIZE * k
    paras: list[_Para] = []

    def add(head: str, text: str, *, color: str = "#333333", style: str = "normal", weight: str = "normal",
            head_color: str = _INK, indent: float | None = None, gap: float = _PANEL_GAP_PT * k,
            big: float = 1.0) -> None:
        at = (_PANEL_INDENT_PT * k if head else 0.0) if indent is None else indent
        lines = _wrap_words(text, size * big, col - at, family, style, weight)
        paras.append(_Para(head, head_color, "\n".join(lines), len(lines), size * big, color, style, weight,
                           at, gap))

    if layout.kernel_key:
        add("", layout.kernel_key, color=_KERNEL, style="italic")
    for f in layout.footnotes:
        add(f.ref, f.text, head_color=_VERDICT["linux" if f.kind == "linux" else "disagree"])
    for line in layout.story:
        if line.kind == "heading":
            add("", line.text, weight="bold", gap=3 * _PANEL_GAP_PT * k, big=1.08)
        elif line.kind == "story":
            add(f"{line.number}.", line.text, head_color=_STORY)
        else:
            add(line.number, line.text, head_color=_FLAG)
            add("", line.why, color=_GREY, style="italic", indent=_PANEL_INDENT_PT * k, gap=0.0)
    height = sum(p.gap_before + p.lines * p.size * _PANEL_LEADING for p in paras)
    return paras, col, height / 72 + 0.15 * k


def _paint_panel(layout: Layout, ax: Axes, st: Style) -> None:
    """The panel, a column centred under the axes, below the legend."""
    fig = ax.figure
    paras, col, _h = _panel(layout, st, fig.bbox.width / fig.dpi)
    if not paras:
        return
    family = _family(layout.lang)
    fam = list(family) if isinstance(family, tuple) else family
    y = -_BOTTOM_IN * st.font_scale * 72  # points below the axes: the legend's room first
    for p in paras:
        y -= p.gap_before
        common: dict[str, Any] = dict(xy=(0.5, 0.0), xycoords="axes fraction", textcoords="offset points",
                                      va="top", ha="left", annotation_clip=False, fontsize=p.size, **_PLAIN)
        if p.head:
            ax.annotate(p.head, xytext=(-col / 2, y), color=p.head_color, fontweight="bold",
                        family=fam, linespacing=_PANEL_LEADING, **common)
        ax.annotate(p.text, xytext=(-col / 2 + p.indent, y), color=p.color, fontstyle=p.style,
                    fontweight=p.weight, family=fam, linespacing=_PANEL_LEADING, **common)
        y -= p.lines * p.size * _PANEL_LEADING


# ==========================================================================================
# Entry points
# ==========================================================================================


def _unpack(conn: Any, summary: ConnectionSummary | None, calls: Iterable[Call]
            ) -> tuple[list[Segment], ConnectionSummary | None, list[Call]]:
    """Accept a list of Segments, or any object with ``segments`` (and optionally
    ``summary`` and ``calls``) attributes, or a ``(segments, summary[, calls])`` tuple."""
    calls = list(calls)
    if hasattr(conn, "segments"):
        segs = list(conn.segments)
        summary = summary if summary is not None else getattr(conn, "summary", None)
        if not calls:
            calls = list(getattr(conn, "calls", ()) or ())
        return segs, summary, calls
    if isinstance(conn, tuple) and conn and not isinstance(conn[0], Segment):
        segs = list(conn[0])
        if summary is None and len(conn) > 1:
            summary = conn[1]
        if not calls and len(conn) > 2:
            calls = list(conn[2])
        return segs, summary, calls
    return list(conn), summary, calls


def plot_connection(
    segments_or_conn: Sequence[Segment] | Any,
    summary: ConnectionSummary | None = None,
    calls: Iterable[Call] = (),
    *,
    ax: Axes | None = None,
    time: TimeMode = "ordered",
    max_rows: int = 60,
    **style: Any,
) -> Axes:
    """Draw one connection's sequence diagram and return the Axes.

    Draws on ``ax`` when given, else on a new pyplot figure sized to the
    diagram (so it shows inline in notebooks).  Never calls ``plt.show()``.
    ``time``/``max_rows`` as in :func:`handshake_viz.layout.plan`; ``style``
    keywords are the fields of :class:`Style`.
    """
    _style(style)
    segs, summary, calls = _unpack(segments_or_conn, summary, calls)
    return _plot(plan(segs, summary, calls, time=time, max_rows=max_rows), ax, style)


def render(
    segments_or_conn: Sequence[Segment] | Any,
    summary: ConnectionSummary | None = None,
    calls: Iterable[Call] = (),
    *,
    time: TimeMode = "ordered",
    max_rows: int = 60,
    **style: Any,
) -> Figure:
    """Like :func:`plot_connection`, on a new Figure that pyplot does not know about."""
    _style(style)
    segs, summary, calls = _unpack(segments_or_conn, summary, calls)
    return _render(plan(segs, summary, calls, time=time, max_rows=max_rows), style)


def plot_trace(
    trace: Any,
    *,
    conns: Iterable[int] | None = None,
    flows: Iterable[int] | None = None,
    ax: Axes | None = None,
    time: TimeMode = "ordered",
    max_rows: int = 60,
    title: str | None = None,
    kernel: bool = True,
    windows: bool = False,
    explain: bool = False,
    lang: str = "en",
    **style: Any,
) -> Axes:
    """Draw several conversations of a trace on one time axis and return the Axes.

    ``trace`` is a :class:`handshake_viz.pipeline.Trace` (or anything with
    ``connections`` and optionally ``flows`` and ``calls``), or a sequence of
    connections and flows.  ``conns``/``flows`` pick connection and flow numbers;
    by default everything is drawn, and naming either draws only what is named.
    One lifeline per socket address: a server's listening port is one lifeline
    with one lane, whatever the number of clients.  Draws on ``ax`` when given,
    else on a new pyplot figure sized to the diagram; never calls ``plt.show()``.
    ``time``/``max_rows`` as in :func:`handshake_viz.layout.plan_trace`; ``style``
    keywords are the fields of :class:`Style`.

    The layers (:mod:`handshake_viz.layers`): ``kernel`` draws the kernel's account
    when the trace has one (``X.kernel.jsonl``: verdicts on the states, durations, the
    accept queue, drops), ``windows`` adds its window variables beside the ladder,
    ``explain`` numbers the rows each story sentence cites and writes the story (in
    ``lang``, "en" or "zh") under the diagram.
    """
    _style(style)
    layout = _plan_trace(trace, conns, flows, time, max_rows, title, _Layers(kernel, windows, explain, lang))
    if ax is _NEW_FIGURE:
        return _render(layout, style)  # type: ignore[return-value]
    return _plot(layout, ax, style)


#: ``plot_trace(ax=_NEW_FIGURE)``: :func:`render_trace`'s way in (a pyplot-free Figure).
_NEW_FIGURE: Any = object()


def render_trace(trace: Any, **options: Any) -> Figure:
    """Like :func:`plot_trace` (the same keywords but ``ax``), on a new Figure that
    pyplot does not know about (the CLI, the demo, batch jobs: nothing leaks)."""
    if "ax" in options:
        raise TypeError("render_trace() draws on a new figure: it takes no ax (use plot_trace)")
    return plot_trace(trace, ax=_NEW_FIGURE, **options)  # type: ignore[arg-type, no-any-return]


def _plot(layout: Layout, ax: Axes | None, style: dict[str, Any]) -> Axes:
    if ax is None:
        _fig, ax = _new_figure(layout, _style(style), pyplot=True)
    return paint(layout, ax, **style)


def _render(layout: Layout, style: dict[str, Any]) -> Figure:
    fig, ax = _new_figure(layout, _style(style), pyplot=False)
    paint(layout, ax, **style)
    return fig


def _select(trace: Any, conns: Iterable[int] | None, flows: Iterable[int] | None
            ) -> tuple[list[Any], list[Any], list[Call]]:
    """The connections and flows of ``trace`` to draw, and the trace's own calls
    (those on no connection among them: a listen(), the listening socket's close())."""
    if hasattr(trace, "connections"):
        all_conns = list(trace.connections)
        all_flows = list(getattr(trace, "flows", ()) or ())
        calls = list(getattr(trace, "calls", ()) or ())
    else:
        items = list(trace)
        all_conns = [c for c in items if hasattr(c, "segments")]
        all_flows = [f for f in items if hasattr(f, "datagrams")]
        calls = []
    if conns is None and flows is None:
        return all_conns, all_flows, calls
    picked: list[list[Any]] = []
    for want, have, what in ((conns, all_conns, "connection"), (flows, all_flows, "flow")):
        numbers = {getattr(x.summary, "conn" if what == "connection" else "flow"): x for x in have}
        chosen = list(dict.fromkeys(want or ()))
        for n in chosen:
            if n not in numbers:
                raise UsageError(f"{what} {n}: not in the trace (it has "
                                 f"{len(have)} {what}{'' if len(have) == 1 else 's'})")
        picked.append([numbers[n] for n in sorted(chosen)])
    return picked[0], picked[1], calls


@dataclass(frozen=True)
class _Layers:
    """Which layers to draw (see :func:`plot_trace`)."""

    kernel: bool = True
    windows: bool = False
    explain: bool = False
    lang: str = "en"

    def options(self, trace: Any) -> dict[str, Any]:
        """plan_trace's keywords for ``trace``: its kernel account only when it has one."""
        view = getattr(trace, "kernel", None) if self.kernel else None
        return dict(kernel=view, windows=self.windows, explain=self.explain, lang=self.lang)


def _plan_trace(trace: Any, conns: Iterable[int] | None, flows: Iterable[int] | None,
                time: TimeMode, max_rows: int, title: str | None, layers: _Layers = _Layers()) -> Layout:
    connections, chosen_flows, calls = _select(trace, conns, flows)
    return plan_trace(connections, chosen_flows, calls=calls, time=time, max_rows=max_rows,
                      title=title, **layers.options(trace))


def _check_output(path: str | os.PathLike[str], allowed: dict[str, str]) -> tuple[Path, str]:
    p = Path(path)
    shown = os.fspath(path)
    fmt = allowed.get(p.suffix.lower())
    if fmt is None:
        names = list(allowed)
        choices = ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1]
        if not p.suffix:
            raise OutputError(f"{shown}: no file extension to pick the output format from "
                              f"(use {choices})")
        raise OutputError(f"{shown}: unknown output format '{p.suffix}' (use {choices})")
    parent = p.parent
    if p.is_dir():
        raise OutputError(f"{shown}: is a directory")
    if not parent.is_dir():
        raise OutputError(f"{shown}: directory {os.fspath(parent)} does not exist")
    return p, fmt


def _temp_beside(p: Path) -> tuple[int, Path]:
    """Create an empty file next to ``p`` (same filesystem, so the rename is atomic).
    Created with mode 0o666 so the umask applies as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for attempt in range(100):
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{attempt}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise OutputError(f"{p}: cannot create a temporary file beside it")  # pragma: no cover


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _atomic_write(path: str | os.PathLike[str], allowed: dict[str, str], write: Any) -> Path:
    p, fmt = _check_output(path, allowed)
    shown = os.fspath(path)
    try:
        fd, tmp = _temp_beside(p)
    except OSError as exc:
        raise OutputError(f"{shown}: cannot write: {_why(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh, fmt)
        os.replace(tmp, p)
    except OSError as exc:
        _unlink(tmp)
        raise OutputError(f"{shown}: cannot write: {_why(exc)}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return p


def _unlink(tmp: Path) -> None:
    try:
        tmp.unlink()
    except OSError:
        pass


def _dpi_for(fig: Figure, fmt: str) -> float:
    dpi = float(fig.dpi)
    if fmt == "png":
        biggest = max(fig.get_size_inches())
        if biggest * dpi > _MAX_PIXELS:
            dpi = _MAX_PIXELS / biggest
    return dpi


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path``; the format comes from the extension (.png, .svg, .pdf).

    The file appears complete or not at all: it is written to a temporary file in
    the same directory and renamed.  Raises :class:`OutputError` (one line naming
    the path) for an unknown extension, a missing directory or an unwritable path.
    Very tall PNGs get a lower dpi so they stay within Agg's 65,536-pixel limit.
    """

    def write(fh: Any, fmt: str) -> None:
        dpi = _dpi_for(fig, fmt)
        if fmt == "png":
            write_png(fig, fh, dpi)
        else:
            fig.savefig(fh, format=fmt, dpi=dpi, facecolor="white")

    return _atomic_write(path, _FORMATS, write)


#: How Agg hints hsviz's text in a PNG: FreeType's autohinter, matplotlib's default
#: until 3.10.  matplotlib 3.11 runs each font's own hinting instructions by default,
#: and its text path loads each glyph anew: on a connection of 15 exchanges (250
#: texts, 3,600 glyphs) Agg draws in 0.45 s with the autohinter against 0.55 s (0.38 s
#: with no hinting at all, whose text at hsviz's 100 dpi looks lighter and runs a
#: little wider).  The autohinted glyphs are as crisp (compared crop by crop).
PNG_HINTING = "force_autohint"


class _Pixels(io.RawIOBase):
    """A file for ``savefig(format="rgba")`` that keeps what it is given instead of
    copying it: Agg writes its whole canvas at once, and the copy would be as large."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[Any] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._parts.append(data)
        return memoryview(data).nbytes

    def data(self) -> memoryview:
        if len(self._parts) == 1:
            return memoryview(self._parts[0]).cast("B")
        return memoryview(b"".join(bytes(p) for p in self._parts))


def write_png(fig: Figure, fh: Any, dpi: float, facecolor: Any = "white") -> None:
    """``fig`` drawn by Agg and written to ``fh`` as a PNG.

    The same pixels as ``fig.savefig(fh, format="png")`` (text drawn as
    :data:`PNG_HINTING` says) but, where every pixel is opaque (the usual white
    background), written without the alpha channel: a tenth smaller, and a quarter
    faster to compress.  Tall images are compressed at zlib's fastest level, where
    compression would take longer than the drawing."""
    import matplotlib as mpl
    from PIL import Image, PngImagePlugin

    raw = _Pixels()
    with mpl.rc_context({"text.hinting": PNG_HINTING}):
        fig.savefig(cast(BinaryIO, raw), format="rgba", dpi=dpi, facecolor=facecolor)
    data = raw.data()
    width = int(fig.get_figwidth() * dpi)  # Agg's own rounding of the canvas
    height = len(data) // (4 * width) if width > 0 else 0
    if width <= 0 or 4 * width * height != len(data):  # pragma: no cover - a canvas not Agg's size
        fig.savefig(fh, format="png", dpi=dpi, facecolor=facecolor)
        return
    image = Image.frombuffer("RGBA", (width, height), data, "raw", "RGBA", 0, 1)  # type: ignore[arg-type]  # any buffer
    if np.frombuffer(data, np.uint8)[3::4].min() == 255:
        image = image.convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"hsviz (matplotlib {mpl.__version__}, Pillow)")
    level = 1 if width * height > 8e6 else 6  # zlib time dominates on tall images
    image.save(fh, format="png", dpi=(dpi, dpi), pnginfo=info, compress_level=level)


def plot_all(
    conns: Iterable[Any] | Any,
    path: str | os.PathLike[str],
    *,
    time: TimeMode = "ordered",
    max_rows: int = 60,
    kernel: bool = True,
    windows: bool = False,
    explain: bool = False,
    lang: str = "en",
    **style: Any,
) -> Path:
    """One PDF page per connection (``--pages``).  ``conns`` is a trace (then every
    connection and every UDP flow gets a page, with the trace's calls that belong
    to it, e.g. the server's ``listen()``), or items that :func:`plot_connection`
    accepts (a Segment list, a ``(segments, summary[, calls])`` tuple, or an
    object with ``segments``/``summary``/``calls``).  Written atomically.  The layers
    as in :func:`plot_trace` (a trace's pages only)."""
    from matplotlib.backends.backend_pdf import PdfPages

    _style(style)
    # plan everything first: bad input fails before any file is touched
    layouts = []
    if hasattr(conns, "connections"):
        connections, flows, calls = _select(conns, None, None)
        layers = _Layers(kernel, windows, explain, lang).options(conns)
        layouts += [plan_trace([c], calls=calls, time=time, max_rows=max_rows, **layers) for c in connections]
        layouts += [plan_trace((), [f], calls=calls, time=time, max_rows=max_rows) for f in flows]
    else:
        for item in conns:
            segs, summary, item_calls = _unpack(item, None, ())
            layouts.append(plan(segs, summary, item_calls, time=time, max_rows=max_rows))
    if not layouts:
        raise UsageError(f"{os.fspath(path)}: no connections to draw")

    def write(fh: Any, fmt: str) -> None:
        st = _style(style)
        with PdfPages(fh) as pdf:
            for layout in layouts:
                fig, ax = _new_figure(layout, st, pyplot=False)
                paint(layout, ax, **style)
                pdf.savefig(fig, facecolor="white")

    return _atomic_write(path, {".pdf": "pdf"}, write)
