"""Pictures of busy programs and hostile text (issue 13), checked through artists.

* Captures made here, live on loopback under ``hsviz capture -- CMD`` (strace):
  a threaded HTTP/1.1 server with three keep-alive clients, a RESP exchange full
  of ``$`` and ``\\r\\n``, a client that sets five socket options, a 20 MB
  transfer (``tests/programs/busy.py``).  Each is planned and painted at the
  default size, in both time modes, and must pass ``test_draw.assert_legible``: no
  text over another text or a call bar, every call label beside its own bar or
  pointing at it with a leader line.
* Hostile strings (``$``, backslashes, braces, control characters, invalid UTF-8,
  right-to-left marks, very long lines) through every text path: a payload
  preview, a call's name and errno, a title made of a file name.  The figure
  renders (PNG and SVG) and its text equals the escaped input.
* ``--time real`` on every file in ``captures/``: every row inside the axes,
  above the legend.
* What the Layout says about groups, leaders and the time margin, without pixels.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from conftest import can_capture, require  # noqa: E402
from handshake_viz import draw  # noqa: E402
from handshake_viz.draw import render, render_trace, save_figure  # noqa: E402
from handshake_viz.layout import (  # noqa: E402
    TITLE_CHARS,
    TimeMode,
    _stack,
    plain,
    plan,
    plan_trace,
)
from handshake_viz.pipeline import load  # noqa: E402
from handshake_viz.text import escape_preview  # noqa: E402
from test_draw import _boxes, assert_labels_reach_their_bars, assert_legible, texts  # noqa: E402
from test_layout import A, C_ISN, P, S_ISN, call, echo, echo_calls, packet, tracked  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUSY = REPO / "tests" / "programs" / "busy.py"
CAPTURES = sorted((REPO / "captures").glob("*.pcap"))


@pytest.fixture(autouse=True)
def _close_figures():  # type: ignore[no-untyped-def]
    yield
    plt.close("all")


# ==========================================================================================
# Busy programs, captured here
# ==========================================================================================


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four busy programs, each captured once under strace (about 10 s in all)."""
    require(can_capture(), "needs root or CAP_NET_RAW to capture (runs in CI)")
    require(shutil.which("strace") is not None, "needs strace (apt-get install strace)")
    out = tmp_path_factory.mktemp("busy")
    made = {}
    for mode in ("http", "resp", "options", "bulk"):
        port, pcap = _free_port(), out / f"{mode}.pcap"
        got = subprocess.run([sys.executable, "-m", "handshake_viz", "capture", "--port", str(port),
                              "-o", str(pcap), "--", sys.executable, str(BUSY), mode, str(port)],
                             capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
        assert got.returncode == 0, got.stderr[-2000:]
        assert "hsviz: command exited with status 0" in got.stderr, got.stderr[-2000:]
        made[mode] = pcap
    return made


@pytest.mark.parametrize("time", ["ordered", "real"])
@pytest.mark.parametrize("mode", ["http", "resp", "options", "bulk"])
def test_busy_programs_are_legible(busy: dict[str, Path], mode: str, time: TimeMode) -> None:
    trace = load(busy[mode])
    assert trace.calls and not any(c.inferred for c in trace.calls)
    layout = plan_trace(trace.connections, calls=trace.calls, time=time)
    fig = render_trace(trace, time=time)
    assert_legible(fig, fig.axes[0], layout)
    drawn = {t for t, _bb, _a in _boxes(fig, fig.axes[0])}
    if mode == "http":
        assert len(layout.conns) == 3 and len(layout.lifelines) == 4
    elif mode == "resp":
        # the previews keep their "$" and "\r\n" as written, as plain text
        details = [r.detail for r in layout.arrow_rows if "$" in r.detail]
        assert details and set(details) <= drawn
        assert any('"*3\\r\\n$3\\r\\nSET' in d for d in details)
    elif mode == "options":
        (five,) = [b for b in layout.calls if b.label.startswith("5 × setsockopt(")]
        assert five.count == 5 and [m.label for m in five.members] == [
            f"setsockopt({five.call.fd})"] * 5
        assert all(five.y0 <= m.y0 <= m.y1 <= five.y1 for m in five.members)
        assert five.label in drawn
    else:  # bulk: a fold, joined once per lane
        (fold,) = layout.fold_rows
        joins = [c for c in layout.connectors if c.frame is None and c.y1 == fold.y_mid]
        lanes = [layout.calls[c.call_index].lifeline for c in joins]
        assert len(lanes) == len(set(lanes)) <= 2


# ==========================================================================================
# Hostile text
# ==========================================================================================

HOSTILE = [
    "$4\r\nname\r\n",  # RESP: math text, then two control characters
    "price $5 and $6",  # two dollars: would be drawn in math italics
    "\\frac{1}{2} {braces} \\\\",
    "bell\x07esc\x1b[31mred\x00nul\x7f",
    "invalid \udcff\udcfe utf-8",  # bytes 0xff 0xfe decoded with surrogateescape
    "rtl \u202eevil\u202c \u200fmark\u200e zero\u200bwidth \ufeffbom",
    "long " * 400,
]


def _hostile_layout(s: str, payload: bytes):  # type: ignore[no-untyped-def]
    """The echo exchange with a hostile payload on frame 4 and a hostile call."""
    from test_layout import echo_packets

    pkts = echo_packets()
    p4 = pkts[3]
    pkts[3] = replace(p4, payload=payload, length=len(payload))
    # the peer acknowledges what was sent: shift nothing else (only frame 4's text is read)
    segments, summaries = tracked(pkts)
    calls = echo_calls() + [call(2943, s, 3, 0.9, 0.95, -1, errno=s)]
    return segments, summaries[0], calls


@pytest.mark.parametrize(("hostile", "text_mode"), [(h, "text") for h in HOSTILE]
                         + [("".join(HOSTILE), "paths")], ids=[*map(str, range(len(HOSTILE))), "all-paths"])
def test_hostile_strings_are_drawn_as_their_escaped_text(hostile: str, text_mode: str,
                                                         tmp_path: Path) -> None:
    payload = hostile.encode("utf-8", "surrogateescape")
    segments, summary, calls = _hostile_layout(hostile, payload)
    layout = plan(segments, summary, calls)
    fig = render(segments, summary, calls, text_mode=text_mode)
    ax = fig.axes[0]
    FigureCanvasAgg(fig).draw()
    drawn = [t for t, _bb, _a in _boxes(fig, ax)]  # Text artists and glyph outlines alike
    assert any(isinstance(c, draw._TextPaths) for c in ax.collections) == (text_mode == "paths")
    # the payload preview: escaped once, printable ASCII, on the figure as it is
    preview = escape_preview(payload, len(payload))
    (row,) = [r for r in layout.rows if r.frame == 4]
    assert preview in row.detail and preview.replace("…", "").isascii()
    assert any(preview in t for t in drawn)
    # the call's name and errno: escaped and cut by layout.plain, drawn as they are
    (bar,) = [b for b in layout.calls if b.call.errno == hostile]
    assert bar.label == f"{plain(hostile)}(3) → {plain(hostile)}"
    assert bar.label in drawn
    assert all(ch.isprintable() for ch in bar.label)
    assert len(plain(hostile)) <= 32
    # everything on the figure is printable (no control, bidi or invisible character)
    assert all(ch.isprintable() for t in drawn for ch in t.replace("\n", ""))
    # and the figure is written (drawn for a PNG above): an SVG that is valid XML
    ET.parse(save_figure(fig, tmp_path / "x.svg"))


def test_a_file_name_as_title_is_escaped(tmp_path: Path) -> None:
    from test_layout import UDP_PCAP, udp_trace

    if not UDP_PCAP.exists():
        pytest.skip("captures/udp.pcap not recorded")
    name = "capture-\udcff$1$-\u202e.pcap\x1b[2J" + "x" * 300  # os.fsdecode of a hostile name
    fig = render_trace(udp_trace(), title=name)
    want = plain(name, TITLE_CHARS)
    assert fig.axes[0].get_title() == want and want.isprintable() and len(want) == TITLE_CHARS
    assert "\\udcff" in want and "\\u202e" in want and "\\x1b" in want
    ET.parse(save_figure(fig, tmp_path / "t.svg"))


def test_plain_escapes_what_cannot_be_shown_and_keeps_the_rest() -> None:
    assert plain("sendto") == "sendto"
    assert plain("$5 {x} \\n") == "$5 {x} \\n"  # printable text is unchanged
    assert plain("a\x1bb") == "a\\x1bb"
    assert plain("a\u200fb\ufeff") == "a\\u200fb\\ufeff"
    assert plain("\udcff") == "\\udcff"
    cut = plain("x" * 29 + "\x1b\x1b")
    assert cut == "x" * 29 + "…"  # never half an escape
    assert len(plain("y" * 100)) == 32 and plain("y" * 100).endswith("…")


# ==========================================================================================
# --time real on every shipped capture
# ==========================================================================================


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_real_time_keeps_every_row_inside_the_axes_above_the_legend(path: Path) -> None:
    trace = load(path)
    layout = plan_trace(trace.connections, trace.flows, calls=trace.calls, time="real")
    fig = render_trace(trace, time="real")
    ax = fig.axes[0]
    FigureCanvasAgg(fig).draw()
    box = ax.get_window_extent()
    legend = ax.get_legend()
    assert legend is not None
    legend_box = legend.get_window_extent()
    to_px = ax.transData.transform
    for r in layout.rows:
        for y in (r.y, r.y_end):
            _x, py = to_px((r.x_to if r.kind != "fold" else r.text_x, y))
            assert box.y0 <= py <= box.y1, f"{path.name}: row {r.index} outside the axes"
            assert py > legend_box.y1, f"{path.name}: row {r.index} under the legend"
    for b in layout.calls:
        assert box.y0 <= to_px((b.x, b.y1))[1] <= box.y1, f"{path.name}: {b.label} cut off"
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    notes = [t for t in ax.texts if t.get_text() in {n.text for n in layout.notes}]
    assert len(notes) == len(layout.notes)
    for t in notes:
        bb = t.get_window_extent(renderer)
        assert bb.y0 > legend_box.y1 and bb.y0 >= 0, f"{path.name}: footnote {t.get_text()!r} lost"


# ==========================================================================================
# The Layout: groups, leaders, the time margin
# ==========================================================================================


def test_stack_moves_texts_apart_as_little_as_possible() -> None:
    assert _stack([0.0, 1.0, 2.0], 0.3) == [0.0, 1.0, 2.0]  # room enough: unmoved
    assert _stack([1.0, 1.0, 1.0], 0.3) == pytest.approx([0.7, 1.0, 1.3])  # a crowd spreads both ways
    got = _stack([0.0, 0.1, 5.0], 0.3)
    assert got == pytest.approx([-0.1, 0.2, 5.0])
    assert all(b - a >= 0.3 - 1e-9 for a, b in zip(got, got[1:]))


def _options_calls() -> list:  # type: ignore[type-arg]
    """The echo's calls, with five setsockopt before the client's connect and a burst of
    ten poll/recvfrom pairs after the last segment, all within microseconds."""
    c = 2943
    calls = echo_calls()
    opts = [call(c, "setsockopt", 3, -0.30 + 0.01 * i, -0.295 + 0.01 * i, 0) for i in range(5)]
    burst = []
    for i in range(10):
        t = 1.75 + 0.002 * i
        burst.append(call(c, "poll", 3, t, t + 0.0005, 1, tid=c + 1))
        burst.append(call(c, "recvfrom", 3, t + 0.001, t + 0.0015, 100, nbytes=100, tid=c + 1))
    return calls + opts + burst


def test_calls_that_repeat_share_a_bar_and_keep_each_call() -> None:
    segments, summary = echo()
    calls = _options_calls()
    layout = plan(segments, summary, calls)
    (five,) = [b for b in layout.calls if b.call.call == "setsockopt"]
    assert five.label == "5 × setsockopt(3)" and five.count == 5
    assert [m.call for m in five.members] == [c for c in calls if c.call == "setsockopt"]
    assert [m.label for m in five.members] == ["setsockopt(3)"] * 5
    (burst,) = [b for b in layout.calls if b.call.tid == 2944]
    assert burst.label == "20 × poll/recvfrom(3), 1000 B" and burst.count == 20
    # everything is accounted for: every call is in exactly one bar
    assert sorted(id(c) for b in layout.calls for c in b.calls) == sorted(id(c) for c in calls)
    # the echo's own calls (each tied to its segment) stay one to a bar
    assert all(b.count == 1 for b in layout.calls if b.call in echo_calls())


def test_a_group_of_sends_says_the_result_and_the_bytes() -> None:
    from handshake_viz.layout import _group_label

    sends = [call(1, "sendto", 4, i * 0.01, i * 0.01 + 0.005, 65536, nbytes=65536) for i in range(40)]
    assert _group_label(sends, "tcp") == "40 × sendto(4) → 65536, 2.5 MiB"
    mixed = sends[:2] + [replace(sends[2], ret=1000, nbytes=1000)]
    assert _group_label(mixed, "tcp") == "3 × sendto(4), 129 KiB"
    failed = [call(1, "recvfrom", 4, 0, 0.1, -1, errno="EAGAIN")] * 3
    assert _group_label(failed, "tcp") == "3 × recvfrom(4) → EAGAIN"


def test_labels_beside_their_bars_or_with_a_leader() -> None:
    segments, summary = echo()
    layout = plan(segments, summary, _options_calls())
    for b in layout.calls:
        if b.leader is None:  # level with its bar, beside it
            assert b.y0 - 0.13 < b.label_y < b.y1 + 0.13
        else:  # from the bar's outer edge to the label
            x0, y0, x1, y1 = b.leader
            assert b.y0 <= y0 <= b.y1 and y1 == b.label_y
            assert abs(x0 - b.x) == pytest.approx(0.045)
            assert abs(x1 - b.label_x) < 0.03
    ys = sorted(y for b in layout.calls if b.lifeline == 0 for y in (b.label_y,))
    assert all(b - a >= 0.3 - 1e-9 for a, b in zip(ys, ys[1:]))


def test_the_checker_catches_a_label_away_from_its_bar() -> None:
    segments, summary = echo()
    calls = echo_calls()
    layout = plan(segments, summary, calls)
    k = next(i for i, b in enumerate(layout.calls) if b.leader is None)
    moved = list(layout.calls)
    moved[k] = replace(moved[k], label_y=moved[k].label_y + 3.0)
    bad = replace(layout, calls=tuple(moved))
    fig = draw.Figure(figsize=draw.figure_size(bad))
    ax = fig.add_axes((0.1, 0.05, 0.8, 0.85))
    draw.paint(bad, ax)
    FigureCanvasAgg(fig).draw()
    with pytest.raises(AssertionError, match="neither touches its bar nor points at it"):
        assert_labels_reach_their_bars(fig, ax, bad)


def _nagle_segments():  # type: ignore[no-untyped-def]
    """Handshake, then a request in two writes: the second waits 43 ms for the delayed
    ACK of the first (Nagle), and two rows at the same printed time."""
    c, s = C_ISN + 1, S_ISN + 1
    pk = [packet(1, 0.0, True, 0x02, C_ISN, 0), packet(2, 0.01, False, 0x12, S_ISN, C_ISN + 1),
          packet(3, 0.02, True, A, c, s),
          packet(4, 13.580, True, P | A, c, s, b"GET / HTTP/1.1\r\n"),
          packet(5, 13.583, False, P | A, s, c + 16, b"HTTP/1.1 200 OK\r\n"),
          packet(6, 56.6, True, P | A, c + 16, s + 17, b"\r\n"),
          packet(7, 56.7, False, A, s + 17, c + 18)]
    segments, summaries = tracked(pk)
    return segments, summaries[0]


@pytest.mark.parametrize("time", ["ordered", "real"])
def test_the_time_margin_says_a_time_once_and_the_wait_that_matters(time: TimeMode) -> None:
    segments, summary = _nagle_segments()
    layout = plan(segments, summary, time=time)
    rows = layout.rows
    assert [r.time_text for r in rows[3:5]] == ["13.58 ms", "13.58 ms"]
    assert rows[3].margin_text == "13.58 ms" and rows[4].margin_text == ""
    assert all(r.margin_text == r.time_text for r in rows[:4])
    gaps = {r.frame: r.gap_text for r in rows if r.gap_text}
    if time == "ordered":
        assert gaps == {4: "+14 ms", 6: "+43 ms"}
        r6 = rows[5]
        assert r6.gap_y is not None and rows[4].time_y < r6.gap_y < r6.time_y
    else:  # tall stretches get an idle note instead, once
        idle = [n.text for n in layout.idle]
        assert all(f"{gaps[f][1:]} without segments" not in idle for f in gaps)
        assert "43 ms without segments" in idle or gaps.get(6) == "+43 ms"
    fig = render(segments, summary, time=time)
    drawn = texts(fig.axes[0])
    assert drawn.count("13.58 ms") == 1
    assert all(g in drawn for g in gaps.values())


def test_a_margin_wide_enough_for_times_years_apart() -> None:
    # captures merged from several days (Zeek's mixed-vlan-mpls.pcap): 149,873,366,619 ms
    segments, summary = _nagle_segments()
    far = [replace(s, ts=s.ts + 5e6 * i) for i, s in enumerate(segments)]
    layout = plan(far, summary)
    widest = max(len(r.margin_text) for r in layout.rows)
    assert widest >= len("20,000,000,000 ms")
    from handshake_viz.layout import TIME_CHAR

    assert layout.xlim[0] <= layout.time_x - widest * TIME_CHAR
    fig = render(far, summary)
    assert_legible(fig, fig.axes[0], layout)


# ==========================================================================================
# The rest of issue 13: replay prints the calls, the DataFrame keeps integers
# ==========================================================================================


@pytest.mark.skipif(not (REPO / "captures" / "echo.calls.jsonl").exists(), reason="no echo call log")
def test_replay_prints_the_socket_calls_beside_the_capture() -> None:
    got = subprocess.run([sys.executable, "-m", "handshake_viz", "replay",
                          str(REPO / "captures" / "echo.pcap"), "--speed", "0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    assert "conn 0: socket calls" in got.stdout
    assert "connect(18) = 0  frames 1,2" in got.stdout


def test_to_dataframe_keeps_integer_columns_integer() -> None:
    pd = pytest.importorskip("pandas")
    df = load(REPO / "captures" / "echo.pcap").connections[0].to_dataframe()
    assert str(df["rel_ack"].dtype) == "Int64"
    assert df["rel_ack"].isna().tolist() == [True] + [False] * (len(df) - 1)  # the SYN has no ACK
    assert df["rel_ack"].iloc[1] == 1 and not isinstance(df["rel_ack"].iloc[1], float)
    for col in ("frame", "conn", "sport", "dport", "seq", "ack", "rel_seq", "len", "win"):
        assert pd.api.types.is_integer_dtype(df[col]), col
