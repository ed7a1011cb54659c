"""Tests for handshake_viz.draw: the painted figure, checked through its artists.

Assertions are on artists (which texts, in which order, how many arrows and
bars, where text boxes sit relative to each other and to the lifelines), never
on pixels.  Every figure is closed after each test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from handshake_viz import draw  # noqa: E402
from handshake_viz.draw import (  # noqa: E402
    paint,
    plot_all,
    plot_connection,
    plot_trace,
    render,
    render_trace,
    save_figure,
)
from handshake_viz.errors import OutputError, UsageError  # noqa: E402
from handshake_viz.layout import plan, plan_trace  # noqa: E402

from test_layout import (  # noqa: E402  (tests/ is on sys.path under pytest)
    ECHO_LABELS,
    ECHO_PCAP,
    MULTI_PCAP,
    TRACES,
    UDP_PCAP,
    capture_connections,
    corpus_connections,
    echo,
    echo_calls,
    long_exchange,
    needs_corpus,
    needs_multi,
    needs_udp,
    trace_of,
    udp_trace,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(autouse=True)
def _no_show(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the library must never call plt.show()")

    monkeypatch.setattr(plt, "show", refuse)


def texts(ax) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.get_text() for t in ax.texts]


def in_order(needles: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


def arrow_collections(ax) -> list[LineCollection]:  # type: ignore[no-untyped-def]
    return [c for c in ax.collections if isinstance(c, LineCollection) and c.get_zorder() == 2]


# ==========================================================================================
# plot_connection: seaborn-style contract
# ==========================================================================================


def test_draws_on_the_given_axes_and_returns_it() -> None:
    segments, summary = echo()
    fig, ax = plt.subplots(figsize=(14, 12))
    out = plot_connection(segments, summary, ax=ax)
    assert out is ax and len(fig.axes) == 1


def test_without_axes_makes_a_figure_sized_to_the_rows() -> None:
    segments, summary = echo()
    short = plot_connection(segments, summary)
    long_segments, long_summary = long_exchange(40)
    tall = plot_connection(long_segments, long_summary, max_rows=0)
    assert short.figure is not tall.figure
    h_short, h_tall = short.figure.get_size_inches()[1], tall.figure.get_size_inches()[1]
    rows_short, rows_tall = len(segments), len(long_segments)
    per_row = (h_tall - h_short) / (rows_tall - rows_short)
    assert per_row == pytest.approx(draw.Style().row_height, rel=0.05)


def test_accepts_a_connection_like_object() -> None:
    segments, summary = echo()
    conn = SimpleNamespace(segments=tuple(segments), summary=summary, calls=tuple(echo_calls()))
    ax = plot_connection(conn)
    assert "connect(3)" in texts(ax)
    assert "client process (pid 2943)" in texts(ax)


def test_row_texts_appear_in_order_with_details_times_and_states() -> None:
    segments, summary = echo()
    ax = plot_connection(segments, summary)
    got = texts(ax)
    labels = [label.split(" ")[0] for label in ECHO_LABELS]
    assert in_order(labels, got)
    details = [label.partition(" ")[2] for label in ECHO_LABELS]
    details[0] += "  win=65495 mss=65495 wscale=10 sackOK"
    details[1] += "  win=65483 mss=65495 wscale=10 sackOK"
    assert in_order(details, got)
    assert in_order(["0.000 ms", "0.034 ms", "0.054 ms", "1.701 ms"], got)
    for state in ("SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1", "CLOSE-WAIT",
                  "LAST-ACK", "TIME-WAIT", "CLOSED", "LISTEN"):
        assert state in got
    assert "client closed first → TIME-WAIT (2·MSL)" in got
    assert ax.get_title().startswith("conn 0: 127.0.0.1:49736 → 127.0.0.1:18081")
    assert "client 127.0.0.1:49736" in got and "server 127.0.0.1:18081" in got


def test_one_arrow_and_one_arrowhead_per_segment() -> None:
    segments, summary = echo()
    ax = plot_connection(segments, summary)
    (shafts,) = arrow_collections(ax)
    assert len(shafts.get_segments()) == len(segments)
    heads = [c for c in ax.collections if isinstance(c, draw._ArrowHeads)]
    assert len(heads) == 1 and len(heads[0].get_offsets()) == len(segments)
    # arrowheads point at the receiver: each tip sits on the receiving lifeline
    for (x, _y), seg in zip(heads[0].get_offsets(), segments):
        assert abs(x - (1.0 if seg.is_c2s else 0.0)) < 0.05
    # colours by phase
    colours = {tuple(c) for c in shafts.get_colors()}
    assert len(colours) == 3  # handshake, data, close


def test_call_bars_connectors_and_legend() -> None:
    segments, summary = echo()
    calls = echo_calls()
    ax = plot_connection(segments, summary, calls)
    bars = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_zorder() == 3]
    assert len(bars) == 1 and len(bars[0].get_paths()) == len(calls)
    got = texts(ax)
    assert in_order(["listen(3)", "accept4(3) → 4", "recvfrom(4) → 6"], got)
    assert "connect(3)" in got and "close(3)" in got and "recvfrom(4) → 0 (EOF)" in got
    assert "FIN read as end of stream" in got
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["handshake", "data", "close", "reset", "socket call (traced)"]
    n_frames = sum(len(set(c.frames)) for c in calls)
    links = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_zorder() == 1.5]
    assert len(links) == 1 and len(links[0].get_segments()) == n_frames


def test_inferred_calls_are_hollow_and_dashed() -> None:
    segments, summary = echo()
    ax = plot_connection(segments, summary, echo_calls(inferred=True))
    (bars,) = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_zorder() == 3]
    assert all(face[3] == 0 for face in bars.get_facecolors())  # hollow
    assert all(ls[1] is not None for ls in bars.get_linestyles())  # dashed
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "socket call (inferred)" in legend and "socket call (traced)" not in legend


def test_fold_row_is_drawn_with_its_text_and_counts() -> None:
    segments, summary = long_exchange(300)
    ax = plot_connection(segments, summary, max_rows=30)
    layout = plan(segments, summary, max_rows=30)
    (fold,) = layout.fold_rows
    shown = [t for t in texts(ax) if "segments" in t and "…" in t]
    assert len(shown) == 1
    assert shown[0].replace("\n", " ") == fold.text  # wrapped at commas, nothing lost
    (shafts,) = arrow_collections(ax)
    assert len(shafts.get_segments()) == len(layout.segment_rows) == 29


def test_flagged_segments_get_a_tag_and_a_dashed_arrow() -> None:
    if not TRACES:
        pytest.skip("third-party corpus not found")
    ((segments, summary),) = corpus_connections("retransmit-fast009.pcap")
    ax = plot_connection(segments, summary, max_rows=0)
    got = texts(ax)
    assert "fast retransmission" in got and "dup ACK" in got
    (shafts,) = arrow_collections(ax)
    dashed = [ls for ls in shafts.get_linestyles() if ls[1] is not None]
    layout = plan(segments, summary, max_rows=0)
    assert len(dashed) == sum(r.flagged for r in layout.rows)


def test_unknown_style_option_is_a_usage_error() -> None:
    segments, summary = echo()
    with pytest.raises(UsageError, match="unknown style option 'colour'"):
        plot_connection(segments, summary, colour="red")
    ax = plot_connection(segments, summary, colors={"data": "black"}, show_times=False)
    assert "0.034 ms" not in texts(ax)


def test_importing_draw_picks_no_backend_and_no_pyplot() -> None:
    code = ("import sys, matplotlib; import handshake_viz.draw, handshake_viz.layout; "
            "print('matplotlib.pyplot' in sys.modules, "
            "matplotlib.rcParams._get_backend_or_none())")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == ["False", "None"]


# ==========================================================================================
# Legibility: no text collides with another or with a lifeline at the default size
# ==========================================================================================


def _boxes(fig: Figure, ax):  # type: ignore[no-untyped-def]
    """(text, window box, anchor in data coordinates) of every text drawn: Text
    artists (their bbox patch when they have one) and the glyph outlines of a busy
    figure (``draw._TextPaths``)."""
    renderer = fig.canvas.get_renderer()
    boxes = []
    for t in ax.texts:
        if not t.get_text().strip():
            continue
        patch = t.get_bbox_patch()
        bb = patch.get_window_extent(renderer) if patch is not None else t.get_window_extent(renderer)
        boxes.append((t.get_text(), bb, tuple(t.get_position())))
    scale = fig.dpi / 72
    for coll in ax.collections:
        if not isinstance(coll, draw._TextPaths):
            continue
        for text, path, anchor in zip(coll.strings, coll.get_paths(), coll.anchors):
            if not text.strip() or not len(path.vertices):
                continue
            ext = path.get_extents()
            x, y = ax.transData.transform(anchor)
            boxes.append((text, Bbox([[x + ext.x0 * scale, y + ext.y0 * scale],
                                      [x + ext.x1 * scale, y + ext.y1 * scale]]), tuple(anchor)))
    return boxes


def _overlaps(a, b, tol: float = 1.0) -> bool:  # type: ignore[no-untyped-def]
    return (a.x0 + tol < b.x1 - tol and b.x0 + tol < a.x1 - tol
            and a.y0 + tol < b.y1 - tol and b.y0 + tol < a.y1 - tol)


def _bar_boxes(ax, layout):  # type: ignore[no-untyped-def]
    """Each call bar's window box, in layout order."""
    from handshake_viz.layout import BAR_HALF_WIDTH

    out = []
    for b in layout.calls:
        (x0, y0), (x1, y1) = ax.transData.transform([(b.x - BAR_HALF_WIDTH, b.y0),
                                                    (b.x + BAR_HALF_WIDTH, b.y1)])
        out.append(Bbox([[min(x0, x1), min(y0, y1)], [max(x0, x1), max(y0, y1)]]))
    return out


def _gap(a, b) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(horizontal, vertical) distance between two boxes (0 where they overlap)."""
    return (max(0.0, a.x0 - b.x1, b.x0 - a.x1), max(0.0, a.y0 - b.y1, b.y0 - a.y1))


def assert_labels_reach_their_bars(fig: Figure, ax, layout, boxes=None) -> None:  # type: ignore[no-untyped-def]
    """Every call label's box touches its own bar, or a leader line runs from the bar
    to the label; the leader lines drawn are exactly the layout's."""
    boxes = boxes if boxes is not None else _boxes(fig, ax)
    at = {(text, (round(float(anchor[0]), 6), round(float(anchor[1]), 6))): bb
          for text, bb, anchor in boxes}
    from handshake_viz.layout import CALL_LABEL_GAP

    bars = _bar_boxes(ax, layout)
    to_px = ax.transData.transform
    near = abs(to_px((CALL_LABEL_GAP, 0.0))[0] - to_px((0.0, 0.0))[0]) + 3  # px: a label gap
    for b, bar in zip(layout.calls, bars):
        bb = at.get((b.label, (round(b.label_x, 6), round(b.label_y, 6))))
        assert bb is not None, f"label {b.label!r} not drawn where the layout puts it"
        dx, dy = _gap(bb, bar)
        if dx <= near and dy == 0:  # beside its bar, a label gap away
            continue
        assert b.leader is not None, f"{b.label!r} neither touches its bar nor points at it"
        (lx0, ly0), (lx1, ly1) = to_px([b.leader[:2], b.leader[2:]])
        assert _gap(Bbox([[lx0, ly0], [lx0, ly0]]), bar) == (0.0, 0.0) or \
            max(_gap(Bbox([[lx0, ly0], [lx0, ly0]]), bar)) <= 1.5, f"{b.label!r}: leader starts off its bar"
        assert max(_gap(Bbox([[lx1, ly1], [lx1, ly1]]), bb)) <= near, f"{b.label!r}: leader ends off its label"
    leaders = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_zorder() == 3.5]
    drawn = [seg for c in leaders for seg in c.get_segments()]
    assert len(drawn) == sum(b.leader is not None for b in layout.calls)


def assert_legible(fig: Figure, ax, layout) -> None:  # type: ignore[no-untyped-def]
    """No text overlaps another text or a call bar; row texts stay between their
    lifelines, states off the arrows, lane texts off the lifelines; every call label
    touches or points at its own bar; everything fits in the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    boxes = _boxes(fig, ax)
    pairs = [(ta, a, tb, b) for (ta, a, _), (tb, b, _) in combinations(boxes, 2) if _overlaps(a, b)]
    clashes = [(ta, tb) for ta, _a, tb, _b in pairs]
    assert not clashes, f"overlapping texts: {clashes[:5]}"
    bars = _bar_boxes(ax, layout)
    on_bars = [(text, b.label) for text, bb, _ in boxes for b, bar in zip(layout.calls, bars)
               if _overlaps(bb, bar)]
    assert not on_bars, f"texts on call bars: {on_bars[:5]}"
    assert_labels_reach_their_bars(fig, ax, layout, boxes)
    to_px = ax.transData.transform
    # row texts stay in their row's room between two lifelines (the text gap), states
    # stay outside the text gap, lane texts cross no lifeline
    row_room: dict[str, tuple[float, float]] = {}
    for r in layout.arrow_rows:
        room = (to_px((r.text_x - r.text_room / 2, 0.0))[0], to_px((r.text_x + r.text_room / 2, 0.0))[0])
        for t in (r.label, r.detail, f"{r.detail}  {r.extra}", r.extra, ", ".join(r.markers), r.kernel_tag):
            if t:
                row_room[t] = room
    main = layout.arrow_rows[0]  # every arrow's texts share this gap
    gap = row_room[main.label]
    states = {m.shown for m in layout.states} | {m.badge for m in layout.states if m.badge}
    lane_texts = ({b.label for b in layout.calls} | {b.note for b in layout.calls if b.note}
                  | {q.text for q in layout.queues if q.text})
    lines_px = [to_px((ln.x, 0.0))[0] for ln in layout.lifelines]
    for text, bb, _ in boxes:
        if text in row_room:
            x0, x1 = row_room[text]
            assert x0 < bb.x0 and bb.x1 < x1, f"{text!r} crosses a lifeline"
        elif text in states:
            assert bb.x1 < gap[0] or bb.x0 > gap[1], f"state {text!r} on the arrows"
        elif text in lane_texts:
            assert not any(bb.x0 < x < bb.x1 for x in lines_px), f"call text {text!r} crosses a lifeline"
    # the title, headers and legend fit in the figure
    width = fig.bbox.width
    title = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert title.x0 >= 0 and title.x1 <= width
    for _text, bb, _ in boxes:
        assert bb.x0 >= -1 and bb.x1 <= width + 1, f"{_text!r} leaves the figure"


def test_the_legibility_check_catches_a_cramped_figure() -> None:
    segments, summary = echo()
    layout = plan(segments, summary, echo_calls())
    fig = Figure(figsize=(6, 4))
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.7))
    paint(layout, ax)
    with pytest.raises(AssertionError, match="overlapping texts"):
        assert_legible(fig, ax, layout)


def test_echo_with_calls_is_legible_at_the_default_size() -> None:
    segments, summary = echo()
    calls = echo_calls()
    fig = render(segments, summary, calls)
    assert_legible(fig, fig.axes[0], plan(segments, summary, calls))


def test_echo_without_calls_is_legible_at_the_default_size() -> None:
    segments, summary = echo()
    fig = render(segments, summary)
    assert_legible(fig, fig.axes[0], plan(segments, summary))


@needs_corpus
@pytest.mark.parametrize("trace", ["get.pcap", "retransmit-fast009.pcap", "ipv6.pcap",
                                   "tcp-fast-open.pcap", "missing-syn.pcap", "truncated-header.pcap"])
def test_corpus_diagrams_are_legible(trace: str) -> None:
    for segments, summary in corpus_connections(trace)[:2]:
        fig = render(segments, summary)
        assert_legible(fig, fig.axes[0], plan(segments, summary))


@pytest.mark.skipif(not ECHO_PCAP.exists(), reason="captures/echo.pcap not recorded yet")
def test_recorded_echo_is_legible_with_its_calls() -> None:
    ((segments, summary),) = capture_connections(ECHO_PCAP)
    calls = []
    try:
        from handshake_viz.api import load

        calls = list(load(ECHO_PCAP).connections[0].calls)
    except (ImportError, AttributeError):  # alignment not available yet
        pass
    fig = render(segments, summary, calls)
    assert_legible(fig, fig.axes[0], plan(segments, summary, calls))


# ==========================================================================================
# Many rows: glyph outlines instead of Text artists
# ==========================================================================================


def test_many_rows_are_drawn_as_batched_outlines_with_the_same_strings() -> None:
    segments, summary = long_exchange(100)
    layout = plan(segments, summary, max_rows=0)
    ax = plot_connection(segments, summary, max_rows=0)
    (batch,) = [c for c in ax.collections if isinstance(c, draw._TextPaths)]
    assert in_order([r.label for r in layout.rows], list(batch.strings))
    assert in_order([r.time_text for r in layout.rows], list(batch.strings))
    assert not any(t.get_text() == "PIGGYBACK" for t in ax.texts)
    # forcing Text artists gives the same strings
    ax2 = plot_connection(segments, summary, max_rows=0, text_mode="text")
    assert in_order([r.label for r in layout.rows], texts(ax2))
    assert not [c for c in ax2.collections if isinstance(c, draw._TextPaths)]


# ==========================================================================================
# Files
# ==========================================================================================


MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".svg": b"<?xml", ".pdf": b"%PDF-"}


@pytest.mark.parametrize("ext", [".png", ".svg", ".pdf", ".PNG"])
def test_save_figure_picks_the_format_from_the_extension(tmp_path: Path, ext: str) -> None:
    segments, summary = echo()
    out = save_figure(render(segments, summary), tmp_path / f"echo{ext}")
    assert out == tmp_path / f"echo{ext}"
    assert out.read_bytes().startswith(MAGIC[ext.lower()])
    assert [p.name for p in tmp_path.iterdir()] == [f"echo{ext}"]  # no temp file left


def test_png_is_agg_s_picture_without_the_alpha_channel(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    segments, summary = echo()
    fig = render(segments, summary)
    ours = Image.open(save_figure(fig, tmp_path / "echo.png"))
    buf = io.BytesIO()
    with matplotlib.rc_context({"text.hinting": draw.PNG_HINTING}):
        fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    agg = Image.open(io.BytesIO(buf.getvalue()))
    assert ours.mode == "RGB" and agg.mode == "RGBA" and ours.size == agg.size
    assert ours.info["Software"].startswith("hsviz (matplotlib ")
    assert (np.asarray(ours) == np.asarray(agg)[..., :3]).all()  # the same pixels
    assert len((tmp_path / "echo.png").read_bytes()) < len(buf.getvalue())
    # a see-through background keeps its alpha channel
    draw.write_png(fig, buf := io.BytesIO(), 50, facecolor="none")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "RGBA"


def test_unknown_extension_is_one_clear_line(tmp_path: Path) -> None:
    segments, summary = echo()
    fig = render(segments, summary)
    with pytest.raises(OutputError) as err:
        save_figure(fig, "out.xyz")
    assert str(err.value) == "out.xyz: unknown output format '.xyz' (use .png, .svg or .pdf)"
    with pytest.raises(OutputError, match="no file extension"):
        save_figure(fig, tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_unwritable_paths_are_output_errors(tmp_path: Path) -> None:
    segments, summary = echo()
    fig = render(segments, summary)
    with pytest.raises(OutputError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "x.png")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match=re.escape(str(blocker / "x.png"))):
        save_figure(fig, blocker / "x.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        save_figure(fig, tmp_path / "dir.png")
    for exc in (PermissionError(13, "Permission denied"), OSError(28, "No space left on device")):
        def failing_open(*_a: object, _exc: OSError = exc, **_k: object) -> int:
            raise _exc

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(draw.os, "open", failing_open)
            with pytest.raises(OutputError, match=f"cannot write: {exc.strerror.lower()}"):
                save_figure(fig, tmp_path / "x.png")


def test_a_failed_write_leaves_no_half_written_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    segments, summary = echo()
    fig = render(segments, summary)
    target = tmp_path / "echo.png"
    target.write_bytes(b"the previous picture")

    def full_disk(fh, **_kw: object) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fig, "savefig", full_disk)
    with pytest.raises(OutputError, match=r"echo\.png: cannot write: no space left on device"):
        save_figure(fig, target)
    assert target.read_bytes() == b"the previous picture"
    assert [p.name for p in tmp_path.iterdir()] == ["echo.png"]


@needs_corpus
def test_plot_all_writes_one_pdf_page_per_connection(tmp_path: Path) -> None:
    conns = corpus_connections("ipv6.pcap")
    out = plot_all(conns, tmp_path / "all.pdf")
    data = out.read_bytes()
    assert data.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == len(conns) == 6
    with pytest.raises(OutputError, match=r"all\.png: unknown output format '\.png' \(use \.pdf\)"):
        plot_all(conns, tmp_path / "all.png")
    with pytest.raises(UsageError, match="no connections"):
        plot_all([], tmp_path / "none.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.pdf"]


def test_paint_paints_a_given_layout() -> None:
    segments, summary = echo()
    layout = plan(segments, summary, echo_calls())
    fig, ax = plt.subplots(figsize=draw.figure_size(layout))
    assert paint(layout, ax) is ax
    assert ax.get_xlim() == layout.xlim
    assert ax.get_ylim() == (layout.ylim[1], layout.ylim[0])  # time runs down
    assert all(isinstance(t, Text) for t in ax.texts)


# ==========================================================================================
# Several conversations, one figure
# ==========================================================================================


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@needs_multi
@pytest.mark.parametrize("time", ["ordered", "real"])
def test_multi_client_is_legible_at_the_default_size(time: str) -> None:
    trace = trace_of(MULTI_PCAP)
    fig = render_trace(trace, time=time)
    layout = plan_trace(trace.connections, calls=trace.calls, time=time)
    assert_legible(fig, fig.axes[0], layout)
    got = texts(fig.axes[0])
    assert [t for t in got if t.startswith("accept4(")] == [
        b.label for b in layout.calls if b.call.call == "accept4"]
    for ln in layout.lifelines:
        assert ln.header in got
    # the process titles have a row of their own above the headers (no room beside them)
    titles = [t for t in fig.axes[0].texts if t.get_text() in {lane.title for lane in layout.lanes}]
    headers = [t for t in fig.axes[0].texts if t.get_text() in {ln.header for ln in layout.lifelines}]
    assert len(titles) == 4 and min(t.xyann[1] for t in titles) > max(t.xyann[1] for t in headers)


@needs_multi
def test_multi_client_png_is_at_most_2400_pixels_wide(tmp_path: Path) -> None:
    trace = trace_of(MULTI_PCAP)
    width, _height = png_size(save_figure(render_trace(trace), tmp_path / "multi.png"))
    assert width <= 2400
    # the figure grows with the lifelines: one connection of it is narrower
    one, _ = png_size(save_figure(render_trace(trace, conns=[0]), tmp_path / "one.png"))
    assert one < width


@needs_multi
def test_plot_trace_draws_on_the_given_axes_and_picks_connections() -> None:
    trace = trace_of(MULTI_PCAP)
    fig, ax = plt.subplots(figsize=(24, 20))
    assert plot_trace(trace, conns=[2, 0], ax=ax) is ax and len(fig.axes) == 1
    got = texts(ax)
    headers = [t for t in got if t.startswith(("client ", "server ")) and "process" not in t]
    servers = [t for t in headers if t.startswith("server ")]
    clients = [t for t in headers if t.startswith("client ")]
    assert len(servers) == 1 and len(clients) == 2
    heads = [c for c in ax.collections if isinstance(c, draw._ArrowHeads)]
    assert len(heads[0].get_offsets()) == 24  # two connections of twelve segments
    # without an Axes: a new figure, sized to the diagram
    ax2 = plot_trace(trace)
    assert ax2.figure is not fig and ax2.figure.get_size_inches()[0] > 14
    with pytest.raises(UsageError, match="connection 7: not in the trace"):
        plot_trace(trace, conns=[7])


@needs_multi
def test_arrows_that_pass_other_lifelines_mark_their_sender() -> None:
    trace = trace_of(MULTI_PCAP)
    layout = plan_trace(trace.connections, calls=trace.calls)
    fig = render_trace(trace)
    ax = fig.axes[0]
    (dots,) = [c for c in ax.collections if c.get_zorder() == 2.2]
    passing = [r for r in layout.arrow_rows if any(
        min(r.x_from, r.x_to) < ln.x < max(r.x_from, r.x_to) for ln in layout.lifelines)]
    assert [tuple(p) for p in dots.get_offsets()] == [(r.x_from, r.y) for r in passing]
    assert passing and all(layout.lifelines[r.lifeline_from].name != "client 3" for r in passing)


@needs_multi
def test_plot_all_gives_a_trace_one_page_per_connection(tmp_path: Path) -> None:
    trace = trace_of(MULTI_PCAP)
    data = plot_all(trace, tmp_path / "pages.pdf").read_bytes()
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 3


@needs_udp
@pytest.mark.parametrize("ext", [".png", ".svg", ".pdf"])
def test_udp_figure_is_written_in_every_format(tmp_path: Path, ext: str) -> None:
    out = save_figure(render_trace(udp_trace()), tmp_path / f"udp{ext}")
    assert out.read_bytes().startswith(MAGIC[ext])


@needs_udp
def test_udp_svg_names_its_calls_and_no_tcp(tmp_path: Path) -> None:
    svg = save_figure(render_trace(udp_trace()), tmp_path / "udp.svg").read_text()
    assert "sendto(" in svg and "recvfrom(" in svg
    assert not re.search(r"\bSYN\b", svg)  # nor SYN-ACK: no handshake drawn or in the legend
    assert "nothing tells the sender" in svg and "UDP datagram" in svg


@needs_udp
def test_udp_is_drawn_like_tcp_arrows_calls_connectors() -> None:
    trace = udp_trace()
    fig = render_trace(trace)
    ax = fig.axes[0]
    layout = plan_trace(flows=trace.flows, calls=trace.calls)
    assert_legible(fig, ax, layout)
    got = texts(ax)
    assert got.count("UDP") == 6 and got.count('len=6 "hello\\n"') == 3
    (shafts,) = arrow_collections(ax)
    assert {tuple(c) for c in shafts.get_colors()} == {matplotlib.colors.to_rgba(draw.PHASE_COLORS["udp"])}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["UDP datagram", "socket call (traced)"]
    links = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_zorder() == 1.5]
    assert len(links[0].get_segments()) == 12  # six sendto and six recvfrom, each to its datagram
