"""The diagram's layers (handshake_viz.layers): the kernel's account and the explanation,
checked through the Layout records and the painted artists, on the recorded lessons of
tests/data/kernel/ (pcap, calls and kernel events recorded together on this machine)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from handshake_viz import draw, pipeline  # noqa: E402
from handshake_viz.cli import main  # noqa: E402
from handshake_viz.kerneljoin import Side, Verdict  # noqa: E402
from handshake_viz.layers import duration_text, usable_window, wait_text  # noqa: E402
from handshake_viz.layout import Layout, plan_trace  # noqa: E402
from handshake_viz.model import Analysis, TcpState  # noqa: E402

from test_draw import _boxes, assert_legible  # noqa: E402
from test_layout import CORPUS, needs_corpus  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "kernel"
LESSONS = ("echo", "backlog", "time-wait", "half-close", "refused", "reset")


@pytest.fixture(autouse=True)
def _close_figures():  # type: ignore[no-untyped-def]
    yield
    plt.close("all")


def drawn_texts(fig) -> list[str]:  # type: ignore[no-untyped-def]
    """Every text the figure draws (after a draw, as the legibility check makes one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return [text for text, _bb, _a in _boxes(fig, fig.axes[0])]


def trace(name: str, **kw: object) -> pipeline.Trace:
    return pipeline.load(DATA / f"{name}.pcap", **kw)  # type: ignore[arg-type]


def layered(t: pipeline.Trace, **kw: object) -> Layout:
    return plan_trace(t.connections, t.flows, calls=t.calls, kernel=t.kernel, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# without the layers the picture is what it was
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LESSONS)
def test_without_kernel_data_the_layout_is_unchanged(name: str) -> None:
    plain = trace(name, kernel=False)
    with_kernel = trace(name)
    assert plain.kernel is None and with_kernel.kernel is not None
    before = plan_trace(plain.connections, calls=plain.calls)
    assert plan_trace(with_kernel.connections, calls=with_kernel.calls) == before  # not asked for
    assert draw._plan_trace(plain, None, None, "ordered", 60, None) == before  # none to draw
    assert not (before.kernel_key or before.footnotes or before.queues or before.windows
                or before.markers or before.story)
    assert all(m.verdict is None and not m.badge and m.shown == m.text for m in before.states)
    assert not any(r.kernel_tag or r.dropped for r in before.rows)


# ---------------------------------------------------------------------------------------
# states: the kernel's verdict on every mark, differences named
# ---------------------------------------------------------------------------------------


def test_echo_states_all_agree_but_the_two_linux_differences() -> None:
    t = trace("echo")
    layout = layered(t)
    marks = layout.states
    assert marks and all(m.verdict is not None for m in marks)
    odd = {(m.side, m.state, m.verdict, m.kernel) for m in marks if m.verdict != "agree"}
    assert odd == {("server", TcpState.SYN_RECEIVED, "linux", "SYN_RECV"),
                   ("client", TcpState.TIME_WAIT, "linux", "CLOSE+tw")}
    # each difference is named in a numbered note the mark cites; nothing disagrees
    notes = {f.number: f for f in layout.footnotes}
    assert {f.kind for f in notes.values()} == {"linux"}
    syn_recv = next(m for m in marks if m.state is TcpState.SYN_RECEIVED)
    time_wait = next(m for m in marks if m.state is TcpState.TIME_WAIT)
    assert syn_recv.badge == f"≈{syn_recv.footnote}" and "request mini-socket" in notes[syn_recv.footnote].text
    assert time_wait.badge == f"≈{time_wait.footnote}" and "time-wait mini-socket" in notes[time_wait.footnote].text
    assert [f.number for f in layout.footnotes] == [1, 2]  # numbered down the page
    assert all(m.badge == "✓" for m in marks if m.verdict == "agree")
    # the verdicts are the kernel join's, mark for mark
    k = t.connections[0].kernel
    assert k is not None
    assert sum(m.verdict == "agree" for m in marks) == k.agree
    assert sum(m.verdict == "linux" for m in marks) == sum(c.verdict is Verdict.LINUX for c in k.checks)
    assert layout.kernel_key.startswith("The kernel's own account")


def test_a_disagreement_is_marked_and_explained() -> None:
    from dataclasses import replace

    t = trace("echo")
    conn = t.connections[0]
    k = conn.kernel
    assert k is not None
    # pretend the kernel had seen the server's CLOSE-WAIT as something else
    checks = tuple(replace(c, verdict=Verdict.DISAGREE, note="the kernel says ESTABLISHED")
                   if c.side is Side.SERVER and c.inferred is TcpState.CLOSE_WAIT else c for c in k.checks)
    view = replace(t.kernel, connections=(replace(k, checks=checks),))  # type: ignore[arg-type]
    layout = plan_trace([conn], calls=t.calls, kernel=view)
    (bad,) = [m for m in layout.states if m.verdict == "disagree"]
    note = next(f for f in layout.footnotes if f.number == bad.footnote)
    assert bad.badge == f"✗{bad.footnote}" and note.kind == "disagree"
    assert note.text == f"server CLOSE-WAIT after #{bad.frame}: the kernel says ESTABLISHED"


def test_durations_where_they_matter() -> None:
    half = layered(trace("half-close"))
    shown = {m.state: m.duration for m in half.states if m.duration}
    # the server sat in CLOSE-WAIT, the client in FIN-WAIT-2, for the 16 ms it kept sending
    assert shown[TcpState.CLOSE_WAIT].endswith(" ms") and shown[TcpState.FIN_WAIT_2].endswith(" ms")
    assert shown[TcpState.TIME_WAIT] == "60 s (fixed)"
    assert TcpState.ESTABLISHED not in shown and TcpState.SYN_SENT not in shown  # µs: noise
    close_wait = next(m for m in half.states if m.state is TcpState.CLOSE_WAIT)
    assert close_wait.shown == f"CLOSE-WAIT · {close_wait.duration}"
    # a SYN-SENT held for a second by a dropped SYN is worth saying
    backlog = layered(trace("backlog"))
    assert "SYN-SENT · 1.0 s" in {m.shown for m in backlog.states}
    assert duration_text(None, TcpState.CLOSE_WAIT) == "" and duration_text(None, TcpState.TIME_WAIT)


# ---------------------------------------------------------------------------------------
# the accept queue and the dropped SYN
# ---------------------------------------------------------------------------------------


def test_backlog_layout_holds_the_queue_and_the_dropped_syn() -> None:
    t = trace("backlog")
    layout = layered(t)
    (q,) = layout.queues
    server = layout.lifelines[q.lifeline]
    assert server.side == "server" and q.listener == server.endpoint
    assert (q.backlog, q.limit, q.max_depth) == (1, 2, 2)
    assert q.text == "accept queue: 2 queued, backlog 1 (full)"
    assert q.slots == 2 and max(st.depth for st in q.steps) == 2
    full = [st for st in q.steps if st.full]
    assert full and all(st.depth == 2 for st in full)
    # drawn between the server's lifeline and its lane, past every state mark
    lane = next(ln for ln in layout.lanes if ln.lifeline == q.lifeline)
    outer = q.x_inner + q.direction * q.slots * q.cell
    assert server.x < q.x_inner < outer < lane.x
    # the queue filled while the first two connections waited for accept()
    accepts = sorted(b.y1 for b in layout.calls if b.call.call.startswith("accept") and b.lifeline == q.lifeline)
    assert full[0].y0 < accepts[0]
    # the third client's first SYN was dropped because the queue was full; it came again
    (dropped,) = [r for r in layout.rows if r.dropped]
    third = t.connection(2)
    assert dropped.frame == third.segments[0].frame and dropped.label == "SYN"
    assert dropped.kernel_tag.endswith("dropped: accept queue full")
    again = next(r for r in layout.rows if r.frame == third.segments[1].frame)
    assert again.label == "SYN" and Analysis.RETRANSMISSION in again.analysis
    (note,) = [f for f in layout.footnotes if f.kind == "drop"]
    assert dropped.kernel_tag.startswith(note.ref + " ")
    assert f"#{dropped.frame}: the kernel dropped this SYN: accept queue full" in note.text
    assert f"sent again as #{again.frame}" in note.text
    assert "queue" in layout.legend and "dropped" in layout.legend


def test_the_refused_syn_is_dropped_with_the_kernel_s_reason() -> None:
    layout = layered(trace("refused"))
    (row,) = [r for r in layout.rows if r.dropped]
    assert row.frame == 1 and row.kernel_tag.endswith("dropped: no socket on that port")
    (note,) = layout.footnotes
    assert "skb:kfree_skb reason NO_SOCKET" in note.text
    assert not layout.queues  # nobody listened


def test_quiet_queues_are_not_drawn() -> None:
    for name in ("echo", "time-wait", "half-close"):
        assert layered(trace(name)).queues == ()  # one connection at a time: nothing stood out


# ---------------------------------------------------------------------------------------
# --windows
# ---------------------------------------------------------------------------------------


def test_windows_strip_has_one_line_per_probed_segment() -> None:
    t = trace("echo")
    layout = layered(t, windows=True)
    w = layout.windows
    assert w is not None and w.columns[1:] == ("cwnd", "ssthresh", "srtt", "snd_wnd", "usable", "rcv_wnd")
    k = t.connections[0].kernel
    assert k is not None
    probed = {g.frame: g.probe for g in k.segments if g.probe is not None}
    assert [r.frame for r in w.rows] == sorted(probed)
    for r in w.rows:
        p = probed[r.frame]
        row = next(x for x in layout.rows if x.frame == r.frame)
        assert r.y == row.y_end and r.who == layout.lifelines[row.lifeline_to].name  # type: ignore[index]
        assert (r.cwnd, r.srtt_us, r.snd_wnd, r.rcv_wnd) == (p.cwnd, p.srtt_us, p.snd_wnd, p.rcv_wnd)
        assert r.ssthresh is None and r.cells[2] == "∞"  # no loss yet
        assert r.usable == usable_window(p) == p.snd_wnd - (p.snd_nxt - p.snd_una)
        assert r.cells[0] == f"#{r.frame} {r.who}"
    assert w.x0 > max(b.label_x for b in layout.calls)  # beside the ladder, right of everything
    assert layout.xlim[1] >= w.col_right[-1]
    assert layered(t).windows is None  # only when asked


def test_windows_adds_the_strip_s_artists() -> None:
    t = trace("echo")
    drawn = drawn_texts(draw.render_trace(t, windows=True))
    layout = layered(t, windows=True)
    assert layout.windows is not None
    for r in layout.windows.rows:
        assert r.cells[0] in drawn and r.cells[4] in drawn
    assert layout.windows.title in drawn and "cwnd" in drawn
    plain = drawn_texts(draw.render_trace(t))
    assert "cwnd" not in plain and layout.windows.title not in plain


# ---------------------------------------------------------------------------------------
# the explanation layer
# ---------------------------------------------------------------------------------------


def test_markers_sit_on_the_first_frame_each_sentence_cites() -> None:
    t = trace("echo")
    e = t.connections[0].explain()
    layout = layered(t, explain=True)
    story = [line for line in layout.story if line.kind == "story"]
    assert [line.text for line in story] == [s.text() for s in e.story]
    assert [line.number for line in story] == [str(n) for n in range(1, len(e.story) + 1)]
    by_number = {m.number: m for m in layout.markers}
    row_of = {r.frame: r for r in layout.rows}
    for n, sentence in enumerate(e.story, 1):
        cited = sentence.frames or tuple(f for c in sentence.calls for f in c.frames)
        if not cited:
            assert str(n) not in by_number
            continue
        m = by_number[str(n)]
        assert m.frame == min(cited) and m.y == row_of[m.frame].time_y and m.kind == "story"
    # in the margin, left of the times
    assert all(layout.xlim[0] < m.x < layout.time_x for m in layout.markers)
    assert layout.story[0].kind == "heading" and layout.story[0].text.startswith("conn 0: ")


def test_findings_are_lettered_and_marked() -> None:
    layout = layered(trace("backlog"), explain=True)
    findings = [line for line in layout.story if line.kind == "finding"]
    assert [f.number for f in findings] == [chr(65 + i) for i in range(len(findings))]
    assert any(f.why for f in findings)
    marked = {m.number for m in layout.markers if m.kind == "finding"}
    assert marked == {f.number for f in findings if f.frames}
    # numbers run on across the three connections: one number, one sentence
    numbers = [int(line.number) for line in layout.story if line.kind == "story"]
    assert numbers == list(range(1, len(numbers) + 1))


def test_call_labels_carry_waits_that_matter() -> None:
    t = trace("backlog")
    plain_labels = {b.label for b in layered(t).calls}
    labels = {b.label for b in layered(t, explain=True).calls}
    assert "connect(14)  [blocked 1.0 s: SYN-ACK]" in labels  # the dropped SYN's second
    assert any(label.startswith("accept4(3) → 12  [blocked 0.7 s: a connection]") for label in labels)
    assert "recvfrom(15) → 20" in labels  # quick: no bracket
    assert not any("[blocked" in label for label in plain_labels)


def test_wait_text_skips_noise() -> None:
    from handshake_viz.model import Call, CallKind
    from handshake_viz.timing import CallTiming, Wait

    c = Call(pid=1, tid=1, fd=3, call="read", start=0.0, end=0.043, ret=6, errno=None, args="",
             kind=CallKind.RECV)
    assert wait_text(CallTiming(c, Wait.DATA, 43.0)) == "[blocked 43 ms: data]"
    assert wait_text(CallTiming(c, Wait.DATA, 0.2)) == ""
    assert wait_text(CallTiming(c, Wait.NOTHING, 50.0)) == ""
    assert wait_text(CallTiming(c, Wait.DATA, None)) == ""


def test_the_story_is_written_under_the_figure_and_grows_it() -> None:
    t = trace("echo")
    fig = draw.render_trace(t, explain=True)
    plain = draw.render_trace(t)
    assert fig.get_size_inches()[1] > plain.get_size_inches()[1] + 3
    drawn = "\n".join(drawn_texts(fig))
    e = t.connections[0].explain()
    for sentence in e.story:  # wrapped, every word there
        assert " ".join(sentence.text().split()[:4]) in drawn.replace("\n", " ")


def test_the_story_in_chinese() -> None:
    t = trace("echo")
    layout = layered(t, explain=True, lang="zh")
    assert layout.lang == "zh" and layout.story[0].text.startswith("连接 0")
    assert "三次握手" in " ".join(line.text for line in layout.story)
    fig = draw.render_trace(t, explain=True, lang="zh")
    if draw.cjk_font() is not None:
        assert_legible(fig, fig.axes[0], layout)


def test_without_a_cjk_font_one_warning_and_still_a_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(draw, "cjk_font", lambda: None)
    with pytest.warns(UserWarning, match="no font with Chinese glyphs"):
        fig = draw.render_trace(trace("echo"), explain=True, lang="zh")
    assert fig.get_size_inches()[1] > 10


# ---------------------------------------------------------------------------------------
# legibility with every layer on
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LESSONS)
def test_legible_with_the_layers_on(name: str) -> None:
    t = trace(name)
    layout = layered(t, windows=True, explain=True)
    fig = draw.render_trace(t, windows=True, explain=True)
    assert_legible(fig, fig.axes[0], layout)


def test_plot_cli_layers(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    png = tmp_path / "backlog.png"
    assert main(["plot", str(DATA / "backlog.pcap"), "--all", "--windows", "--explain", "--lang", "en",
                 "-o", str(png)], out=out, err=err) == 0, err.getvalue()
    assert png.stat().st_size > 100_000 and err.getvalue() == ""
    # --windows without kernel events: a line that says so, and the picture anyway
    from test_layout import ECHO_PCAP

    err = io.StringIO()
    assert main(["plot", str(ECHO_PCAP), "--windows", "-o", str(tmp_path / "e.png")], out=out, err=err) == 0
    assert err.getvalue().startswith("hsviz: warning: --windows: ") and "kernel.jsonl" in err.getvalue()


def test_cli_without_a_cjk_font_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import warnings

    monkeypatch.setattr(draw, "cjk_font", lambda: None)
    err = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing else may leak out as a Python warning
        assert main(["plot", str(DATA / "echo.pcap"), "--explain", "--lang", "zh", "-o", str(tmp_path / "zh.png")],
                    out=io.StringIO(), err=err) == 0
    assert err.getvalue() == f"hsviz: warning: {draw.NO_CJK_FONT}\n"
    assert (tmp_path / "zh.png").stat().st_size > 50_000


@needs_corpus
@pytest.mark.parametrize("name", ["get.pcap", "retransmit-fast009.pcap", "tcp-fast-open.pcap", "missing-syn.pcap"])
def test_corpus_diagrams_with_the_story_are_legible(name: str) -> None:
    t = pipeline.load(CORPUS / "traces" / name)
    layout = plan_trace(t.connections[:1], calls=t.calls, explain=True)
    assert layout.story and layout.markers
    fig = draw.render_trace(t, conns=[t.connections[0].conn], explain=True)
    assert_legible(fig, fig.axes[0], layout)
