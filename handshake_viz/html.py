"""The sequence diagram as one interactive, self-contained HTML page.

``hsviz plot FILE -o x.html`` and ``conn.show()`` in a notebook.  The page is
drawn in the browser from the same :class:`~handshake_viz.layout.Layout` records
the matplotlib painter paints (never from an image), with everything a reader
asks next one hover away: each segment's JSONL record, its payload and header
bytes field by field (:mod:`handshake_viz.wire`), the call that caused it or that
it released with the call's strace line and timing, and the connection's story
(:mod:`handshake_viz.explain`).

How the page is made
====================
:func:`page_data` gathers plain data: for each *view* (the conversations drawn
together; with several connections, all of them and each one alone) the folded
layout and, when it folds, the layout that opens the fold in place; for each
frame its record, payload and wire fields; for each call its record, strace
line and timing.  :func:`render_page` puts that data, gzip-compressed and
base64-encoded (a 1,000-segment connection stays far under 2 MB), into
``static/page.html`` with ``static/hsviz.css`` and ``static/hsviz.js`` inlined:
one file, nothing fetched, no server.

Wire text is never markup: the data travels as base64 (no ``<`` can appear in
it), and the script writes every string with ``textContent``, never as HTML.
The page holds two script elements, both the project's: the code, and the data
(``type="application/octet-stream"``, not executed).

Layout fields the page reads (``_LAYOUT_FIELDS`` and friends below): everything
the painter draws; a field added to a record later is simply not sent.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html as html_mod
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from handshake_viz.errors import OutputError, UsageError
from handshake_viz.layout import Layout, TimeMode, plan_trace
from handshake_viz.model import Call, CallKind, Datagram, Segment
from handshake_viz.text import escape_preview
from handshake_viz.timing import CallTiming, call_timing, call_timings
from handshake_viz.trace import strace_line

if TYPE_CHECKING:  # pragma: no cover
    from handshake_viz.explain import Explanation
    from handshake_viz.kerneljoin import KernelView, SegmentKernel
    from handshake_viz.pipeline import Connection, Flow, Trace

__all__ = ["MAX_OPEN_ROWS", "PAYLOAD_BYTES", "Page", "build_page", "page_data", "render_page",
           "trace_page", "write_page"]

#: A folded view opens into a layout of at most this many rows (more are folded again).
MAX_OPEN_ROWS = 5000
#: Payload bytes shown per segment (hex and text).
PAYLOAD_BYTES = 64
#: With more conversations than this, the page offers the whole only, not each alone.
MAX_SINGLE_VIEWS = 64

# --- what the page reads of each layout record ----------------------------------------------
_LAYOUT_FIELDS = ("title", "time_mode", "t0", "segments", "datagrams", "conns", "flows", "legend",
                  "xlim", "ylim", "lifeline_top", "lifeline_bottom", "time_x", "kernel_key", "lang")
_LIFELINE_FIELDS = ("side", "x", "endpoint", "header", "subtitle", "name", "transport")
_LANE_FIELDS = ("side", "x", "title", "columns", "direction", "lifeline")
_ROW_FIELDS = ("kind", "y", "y_end", "time_text", "time_y", "margin_text", "gap_text", "gap_y", "x_from",
               "x_to", "dir", "frame", "label", "detail", "extra", "text", "phase", "markers", "flagged",
               "conn", "flow", "lifeline_from", "lifeline_to", "text_x", "text_room", "lines",
               "kernel_tag", "dropped")
_FOLD_FIELDS = ("first_frame", "last_frame", "segments", "datagrams", "calls", "text")
_STATE_FIELDS = ("side", "state", "x", "y", "frame", "text", "shown", "lifeline", "conn", "verdict",
                 "kernel", "footnote", "badge", "duration")
_BAR_FIELDS = ("side", "x", "y0", "y1", "label", "label_x", "label_y", "note", "note_y",
               "inferred", "failed", "lifeline", "column", "count", "leader")
_MEMBER_FIELDS = ("label", "y0", "y1")  # a group's calls (plus each one's call id)
_CONNECTOR_FIELDS = ("x0", "y0", "x1", "y1", "frame", "call_index", "inferred", "kind")
_NOTE_FIELDS = ("text", "x", "y")
# the layers (handshake_viz.layers)
_FOOTNOTE_FIELDS = ("number", "kind", "text", "ref")
_QUEUE_FIELDS = ("lifeline", "listener", "backlog", "limit", "max_depth", "x_inner", "direction", "cell",
                 "slots", "y0", "y1", "text", "text_x", "text_y")
_STEP_FIELDS = ("y0", "y1", "depth", "full")
_STRIP_FIELDS = ("title", "columns", "col_right", "x0", "title_y", "header_y")
_WINDOW_FIELDS = ("frame", "y", "cells")
_MARKER_FIELDS = ("number", "kind", "x", "y", "frame", "conn")
_STORY_FIELDS = ("kind", "number", "text", "conn", "frames", "why")


def _plain(value: Any) -> Any:
    """JSON-ready: enums as their words, floats rounded (1/10,000 of a row is far below a pixel)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):
        return value.value
    return value


def _table(records: Sequence[Any], names: Sequence[str], **extra: Sequence[Any]) -> dict[str, Any]:
    """Records as columns once and rows of values (far smaller than a dict per record)."""
    keys = list(names) + list(extra)
    rows = [[_plain(getattr(r, n)) for n in names] + [col[i] for col in extra.values()]
            for i, r in enumerate(records)]
    return {"keys": keys, "rows": rows}


def _layout_json(layout: Layout, call_ids: dict[Call, int]) -> dict[str, Any]:
    out = {name: _plain(getattr(layout, name)) for name in _LAYOUT_FIELDS}
    folds = [None if r.fold is None else {n: _plain(getattr(r.fold, n)) for n in _FOLD_FIELDS}
             for r in layout.rows]
    members = [[[call_ids[m.call]] + [_plain(getattr(m, n)) for n in _MEMBER_FIELDS] for m in b.members]
               if b.count > 1 else [] for b in layout.calls]
    w = layout.windows
    out.update(
        lifelines=_table(layout.lifelines, _LIFELINE_FIELDS),
        lanes=_table(layout.lanes, _LANE_FIELDS),
        rows=_table(layout.rows, _ROW_FIELDS, fold=folds),
        states=_table(layout.states, _STATE_FIELDS),
        calls=_table(layout.calls, _BAR_FIELDS, id=[call_ids[b.call] for b in layout.calls], members=members),
        connectors=_table(layout.connectors, _CONNECTOR_FIELDS),
        notes=_table(layout.notes, _NOTE_FIELDS),
        idle=_table(layout.idle, _NOTE_FIELDS),
        footnotes=_table(layout.footnotes, _FOOTNOTE_FIELDS),
        queues=_table(layout.queues, _QUEUE_FIELDS,
                      steps=[[[_plain(getattr(st, n)) for n in _STEP_FIELDS] for st in q.steps]
                             for q in layout.queues]),
        windows=None if w is None else dict({n: _plain(getattr(w, n)) for n in _STRIP_FIELDS},
                                            rows=_table(w.rows, _WINDOW_FIELDS)),
        markers=_table(layout.markers, _MARKER_FIELDS),
        story=_table(layout.story, _STORY_FIELDS,
                     calls=[[call_ids[c] for c in line.calls if c in call_ids] for line in layout.story]),
    )
    return out


# ==========================================================================================
# The data
# ==========================================================================================


@dataclass(frozen=True, slots=True)
class _Conversation:
    """What one view draws: some connections and flows, and the calls on none of them."""

    name: str
    connections: tuple[Connection, ...]
    flows: tuple[Flow, ...]


def _frames_of(cv: _Conversation) -> list[int]:
    """The frames a view draws (folded or not), in order: what the arrow keys step through."""
    return sorted([s.frame for c in cv.connections for s in c.segments]
                  + [d.frame for f in cv.flows for d in f.datagrams])


def _payload_json(payload: bytes, length: int) -> dict[str, Any]:
    shown = payload[:PAYLOAD_BYTES]
    return {"length": length, "captured": len(payload), "hex": shown.hex(),
            "text": escape_preview(shown, limit=4 * PAYLOAD_BYTES)[1:-1]}


def _data_of(call: Call, by_frame: dict[int, Segment | Datagram]) -> bytes | None:
    """The bytes a read returned or a write sent, when the payloads of its segments add
    up to its return value (the start of them is shown in its strace line)."""
    if call.kind not in (CallKind.RECV, CallKind.SEND) or not call.ret or call.ret < 0:
        return None
    data = b"".join(by_frame[f].payload for f in call.frames if f in by_frame)
    return data if len(data) == call.ret else None


def _call_json(call: Call, timing: CallTiming, data: bytes | None) -> dict[str, Any]:
    rec = call.to_json()
    del rec["type"]
    return {"rec": rec, "strace": strace_line(call, data), "timing": timing.to_json(),
            "kind": call.kind.value}


def _wire_json(frames: dict[int, Any], seg: Segment) -> dict[str, Any] | None:
    from handshake_viz.wire import NotTcp, byte_order_lesson, dissect

    raw = frames.get(seg.frame)
    if raw is None:
        return None
    try:
        view = dissect(raw, seg)
    except NotTcp as exc:
        return {"error": str(exc)}
    return {"bytes": raw.data[:view.payload_offset].hex(),
            "fields": [[f.layer, f.name, f.offset, len(f.raw), f.value, f.host, f.note]
                       for f in view.fields],
            "lesson": byte_order_lesson(view)}


def _story_json(e: Explanation, call_ids: dict[Call, int], lang: str) -> dict[str, Any]:
    story = [{"n": n, "text": s.text(lang), "frames": list(s.frames),
              "calls": [call_ids[c] for c in s.calls if c in call_ids]}
             for n, s in enumerate(e.story, 1)]
    findings = [{"kind": f.kind.value, "text": " ".join(x.text(lang) for x in f.sentences[:-1]),
                 "why": f.why.text(lang), "frames": list(f.frames)} for f in e.findings]
    return {"conn": e.conn, "story": story, "findings": findings}


def page_data(
    connections: Sequence[Connection],
    flows: Sequence[Flow] = (),
    *,
    calls: Iterable[Call] = (),
    capture: str | os.PathLike[str] | None = None,
    time: TimeMode = "ordered",
    max_rows: int = 60,
    title: str | None = None,
    lang: str = "en",
    kernel: KernelView | None = None,
    windows: bool = False,
    explain: bool = False,
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (see the module docstring).

    ``connections``/``flows`` are what to draw (pipeline records), ``calls`` the
    trace's calls on none of them (a listener's bind, listen and close),
    ``capture`` the file they came from (for the header bytes; without it the
    page shows payloads but no wire fields).  The layers as in
    :func:`handshake_viz.layout.plan_trace`: ``kernel`` (the trace's kernel account)
    marks states, queues and drops, ``windows`` adds the window strip, ``explain`` the
    story's numbered markers (the story tab is there either way).
    """
    connections, flows = tuple(connections), tuple(flows)
    if not connections and not flows:
        raise UsageError("nothing to draw: no connections or UDP flows given")
    loose = tuple(calls)
    explained = {c.conn: c.explain() for c in connections}
    whole = _Conversation("", connections, flows)
    convs = [whole]
    if 1 < len(connections) + len(flows) <= MAX_SINGLE_VIEWS:
        convs += [_Conversation(f"conn {c.conn}: {c.summary.client} → {c.summary.server}", (c,), ())
                  for c in connections]
        convs += [_Conversation(f"UDP flow {f.flow}: {f.summary.client} → {f.summary.server}", (), (f,))
                  for f in flows]

    layouts: list[list[Layout]] = []
    for cv in convs:
        layers: dict[str, Any] = dict(kernel=kernel, windows=windows, lang=lang,
                                      explain=[explained[c.conn] for c in cv.connections] if explain else ())
        folded = plan_trace(cv.connections, cv.flows, calls=loose, time=time, max_rows=max_rows,
                            title=title if cv is whole else None, **layers)
        pair = [folded]
        if folded.fold_rows:
            total = folded.segments + folded.datagrams
            pair.append(plan_trace(cv.connections, cv.flows, calls=loose, time=time,
                                   max_rows=0 if total <= MAX_OPEN_ROWS else MAX_OPEN_ROWS,
                                   title=folded.title, **layers))
        layouts.append(pair)

    # every call once: those drawn, those of the conversations, the loose ones
    timings: dict[Call, CallTiming] = {}
    for conn in connections:
        timings.update((t.call, t) for t in call_timings(conn.calls, conn.segments))
    ordered = [b.call for pair in layouts for lay in pair for b in lay.calls]
    ordered += [c for conn in connections for c in conn.calls] + [c for f in flows for c in f.calls]
    ordered += list(loose)
    call_ids: dict[Call, int] = {}
    for c in ordered:
        call_ids.setdefault(c, len(call_ids))

    records: dict[int, Segment | Datagram] = {s.frame: s for conn in connections for s in conn.segments}
    records.update((d.frame, d) for f in flows for d in f.datagrams)
    raw: dict[int, Any] = {}
    if capture is not None:
        from handshake_viz.frames import read_frames

        raw = read_frames(capture, [f for f, r in records.items() if isinstance(r, Segment)])
    joined: dict[int, list[int]] = {}
    for c, i in call_ids.items():
        for f in c.frames:
            joined.setdefault(f, []).append(i)

    facts: dict[int, SegmentKernel] = {}
    if kernel is not None:  # what the kernel said about each segment, as the JSONL's "kernel" object
        facts = {g.frame: g for conn in connections if conn.kernel is not None for g in conn.kernel.segments}
    frames_json: dict[str, Any] = {}
    for n, rec in sorted(records.items()):
        record = rec.to_json()
        if n in facts:
            from handshake_viz.report import segment_kernel_json

            record["kernel"] = segment_kernel_json(facts[n])
        item: dict[str, Any] = {"rec": record, "payload": _payload_json(rec.payload, rec.length),
                                "calls": joined.get(n, [])}
        if isinstance(rec, Segment):
            item["wire"] = _wire_json(raw, rec)
        frames_json[str(n)] = item

    calls_json = [_call_json(c, timings.get(c) or call_timing(c, {}), _data_of(c, records))
                  for c in call_ids]
    from handshake_viz import __version__
    from handshake_viz.draw import PHASE_COLORS

    return {
        "version": 1,
        "generator": f"hsviz {__version__}",
        "source": os.fspath(capture) if capture is not None else "",
        "title": layouts[0][0].title,
        "colors": PHASE_COLORS,
        "views": [{"name": cv.name or "all", "frames": _frames_of(cv),
                   "layouts": [_layout_json(lay, call_ids) for lay in pair]}
                  for cv, pair in zip(convs, layouts)],
        "frames": frames_json,
        "calls": calls_json,
        "stories": [_story_json(explained[c.conn], call_ids, lang) for c in connections],
    }


# ==========================================================================================
# The page
# ==========================================================================================


def _static(name: str) -> str:
    return resources.files("handshake_viz").joinpath("static", name).read_text(encoding="utf-8")


def _encode(data: dict[str, Any]) -> str:
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    packed = base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")
    return "\n".join(packed[i:i + 120] for i in range(0, len(packed), 120))


def _csp_hash(text: str) -> str:
    """The page's Content-Security-Policy allows exactly its own script and style:
    no other inline script could run even if one got in."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def render_page(data: dict[str, Any]) -> str:
    """The self-contained HTML text of a page holding ``data`` (see :func:`page_data`)."""
    style, script, skeleton = _static("hsviz.css"), _static("hsviz.js"), _static("page.html")
    if "</style" in style.lower() or "</script" in script.lower() or "<!--" in script:
        raise AssertionError("static/hsviz.css or hsviz.js would end its own element early")
    parts = {
        "hsviz:csp-script": _csp_hash(script),
        "hsviz:csp-style": _csp_hash(style),
        "<!--hsviz:title-->": html_mod.escape(str(data["title"])),
        "/*hsviz:style*/": style,
        "<!--hsviz:data-->": _encode(data),
        "/*hsviz:script*/": script,
    }
    out = skeleton
    for marker, text in parts.items():
        if out.count(marker) != 1:
            raise AssertionError(f"static/page.html: marker {marker} must appear once")
        head, tail = out.split(marker)
        out = head + text + tail
    return out


@dataclass(frozen=True)
class Page:
    """An interactive diagram: ``html`` is the whole page; in Jupyter it shows inline
    (in a sandboxed frame), with ``png`` as the static picture where scripts are not
    allowed.  ``save("x.html")`` writes the page."""

    html: str
    title: str
    png: bytes | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        return _write_text(path, self.html)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/html": notebook_html(self), "text/plain": repr(self)}
        if self.png is not None:
            bundle["image/png"] = self.png
        return bundle

    def __repr__(self) -> str:
        return f"<hsviz Page: {self.title} ({len(self.html):,} bytes of HTML)>"


def notebook_html(page: Page, height: int = 640) -> str:
    """The page for a notebook cell: the static picture, and a sandboxed frame holding
    the page that a small script shows in its place.  Where scripts do not run (an
    untrusted notebook, a static renderer) the picture stays."""
    box = f"hsviz-{uuid.uuid4().hex[:12]}"
    picture = ""
    if page.png is not None:
        data = base64.b64encode(page.png).decode("ascii")
        picture = (f'<img src="data:image/png;base64,{data}" alt="{html_mod.escape(page.title)}" '
                   'style="max-width:100%">')
    frame = (f'<iframe sandbox="allow-scripts" title="{html_mod.escape(page.title)}" '
             f'style="display:none;width:100%;height:{height}px;border:1px solid #ccc" '
             f'srcdoc="{html_mod.escape(page.html, quote=True)}"></iframe>')
    show = (f'<script>(function(){{var b=document.getElementById("{box}");if(!b)return;'
            'var f=b.querySelector("iframe"),i=b.querySelector("img");'
            'f.style.display="block";if(i)i.style.display="none";})();</script>')
    return f'<div id="{box}" class="hsviz-notebook">{picture}{frame}</div>{show}'


def _write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    from handshake_viz.draw import _atomic_write

    def write(fh: Any, _fmt: str) -> None:
        fh.write(text.encode("utf-8"))

    return _atomic_write(path, {".html": "html", ".htm": "html"}, write)


# ==========================================================================================
# Entry points
# ==========================================================================================


def build_page(connections: Sequence[Connection], flows: Sequence[Flow] = (), *, png: bool = False,
               **options: Any) -> Page:
    """The :class:`Page` of these connections and flows (``options`` as
    :func:`page_data`; ``png``: with the static picture for notebooks, drawn by
    :mod:`handshake_viz.draw`)."""
    options["calls"] = tuple(options.get("calls", ()))
    data = page_data(connections, flows, **options)
    picture = None
    if png:
        import io

        from handshake_viz.draw import render_trace, write_png

        chosen = SimpleNamespace(connections=list(connections), flows=list(flows), calls=options["calls"],
                                 kernel=options.get("kernel"))
        fig = render_trace(chosen, time=options.get("time", "ordered"),
                           max_rows=options.get("max_rows", 60), title=options.get("title"),
                           windows=options.get("windows", False), explain=options.get("explain", False),
                           lang=options.get("lang", "en"))
        buf = io.BytesIO()
        write_png(fig, buf, 72)
        picture = buf.getvalue()
    return Page(render_page(data), str(data["title"]), picture)


def _chosen(trace: Trace, conns: Iterable[int] | None, flows: Iterable[int] | None
            ) -> tuple[list[Connection], list[Flow]]:
    if conns is None and flows is None:
        return list(trace.connections), list(trace.flows)
    return ([trace.connection(n) for n in sorted(set(conns or ()))],
            [trace.flow(n) for n in sorted(set(flows or ()))])


def trace_page(trace: Trace, *, conns: Iterable[int] | None = None, flows: Iterable[int] | None = None,
               time: TimeMode = "ordered", max_rows: int = 60, title: str | None = None,
               png: bool = False, kernel: bool = True, windows: bool = False, explain: bool = False,
               lang: str = "en") -> Page:
    """The page of a trace's connections and flows (all, or those numbered), with the
    layers as :func:`handshake_viz.draw.plot_trace` draws them (``kernel``: the trace's
    kernel account, when it has one)."""
    connections, chosen_flows = _chosen(trace, conns, flows)
    return build_page(connections, chosen_flows, calls=trace.calls, capture=trace.path, time=time,
                      max_rows=max_rows, title=title, png=png, kernel=trace.kernel if kernel else None,
                      windows=windows, explain=explain, lang=lang)


def write_page(trace: Trace, path: str | os.PathLike[str], **options: Any) -> Path:
    """``hsviz plot FILE -o x.html``: write the page of ``trace`` (options as
    :func:`trace_page`) atomically; OutputError names a path that cannot be written."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise OutputError(f"{os.fspath(path)}: an HTML page needs a .html name")
    return trace_page(trace, **options).save(path)
