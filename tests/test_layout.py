"""Tests for handshake_viz.layout: the sequence diagram as plain data.

Evidence, in order of realism:

* ``captures/echo.pcap`` (a loopback echo the project recorded) and the
  third-party corpus, read in place, decoded and tracked by the real stages;
* the echo exchange of the design mock-up (``shared/mockup-echo.png``: same
  timings, payloads and calls), rebuilt here as Packets and fed through the real
  Tracker, so the states and labels are the tracker's, not hand-written;
* long synthetic exchanges (also through the Tracker) for folding.

The builders here are shared with tests/test_draw.py.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from handshake_viz.errors import UsageError
from handshake_viz.layout import SECOND_LINE, UDP_NOTE, Layout, plan, plan_trace, segment_text
from handshake_viz.model import (
    Analysis,
    Call,
    CallKind,
    ConnectionSummary,
    Datagram,
    Direction,
    Endpoint,
    FlowSummary,
    Label,
    Packet,
    Phase,
    Segment,
    TcpState,
    call_kind,
)
from handshake_viz.pipeline import Connection, Flow, Trace
from handshake_viz.text import escape_preview, human_duration
from handshake_viz.track import Tracker

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TRACES = sorted((CORPUS / "traces").glob("*")) if CORPUS.is_dir() else []
needs_corpus = pytest.mark.skipif(not TRACES, reason=f"third-party corpus not found at {CORPUS}")

# ==========================================================================================
# Builders
# ==========================================================================================

T0 = 1_700_000_000.0
CLIENT = ("127.0.0.1", 49736)
SERVER = ("127.0.0.1", 18081)
C_ISN, S_ISN = 1_000_000, 5_000_000
F, S, R, P, A = 0x01, 0x02, 0x04, 0x08, 0x10


def syn_options(tsval: int, tsecr: int, wscale: int) -> bytes:
    """MSS 65495, SACK permitted, timestamps, NOP, window scale (Linux loopback SYN)."""
    return (b"\x02\x04\xff\xd7\x04\x02\x08\x0a" + struct.pack("!II", tsval, tsecr)
            + b"\x01\x03\x03" + bytes([wscale]))


def packet(frame: int, ms: float, c2s: bool, flags: int, seq: int, ack: int,
           payload: bytes = b"", *, win: int = 512, raw: bytes = b"",
           client: tuple[str, int] = CLIENT, server: tuple[str, int] = SERVER) -> Packet:
    src, dst = (client, server) if c2s else (server, client)
    return Packet(frame, T0 + ms / 1e3, src[0], src[1], dst[0], dst[1], seq, ack, flags, win,
                  len(payload), payload, raw)


def echo_packets() -> list[Packet]:
    """The mock-up's exchange: handshake, three hello/HELLO echoes, client closes first."""
    h, H = b"hello\n", b"HELLO\n"
    c, s = C_ISN, S_ISN
    return [
        packet(1, 0.000, True, S, c, 0, win=65495, raw=syn_options(1, 0, 10)),
        packet(2, 0.034, False, S | A, s, c + 1, win=65483, raw=syn_options(2, 1, 10)),
        packet(3, 0.054, True, A, c + 1, s + 1),
        packet(4, 0.268, True, P | A, c + 1, s + 1, h),
        packet(5, 0.277, False, A, s + 1, c + 7),
        packet(6, 0.460, False, P | A, s + 1, c + 7, H),
        packet(7, 0.491, True, A, c + 7, s + 7),
        packet(8, 0.892, True, P | A, c + 7, s + 7, h),
        packet(9, 1.012, False, P | A, s + 7, c + 13, H),
        packet(10, 1.255, True, P | A, c + 13, s + 13, h),
        packet(11, 1.363, False, P | A, s + 13, c + 19, H),
        packet(12, 1.586, True, F | A, c + 19, s + 19),
        packet(13, 1.684, False, F | A, s + 19, c + 20),
        packet(14, 1.701, True, A, c + 20, s + 20),
    ]


ECHO_LABELS = [
    "SYN seq=0",
    "SYN-ACK seq=0 ack=1",
    "ACK ack=1",
    'DATA seq=1:7 ack=1 len=6 "hello\\n"',
    "ACK ack=7",
    'DATA seq=1:7 ack=7 len=6 "HELLO\\n"',
    "ACK ack=7",
    'DATA seq=7:13 ack=7 len=6 "hello\\n"',
    'PIGGYBACK seq=7:13 ack=13 len=6 "HELLO\\n"',
    'PIGGYBACK seq=13:19 ack=13 len=6 "hello\\n"',
    'PIGGYBACK seq=13:19 ack=19 len=6 "HELLO\\n"',
    "FIN seq=19 ack=19",
    "FIN-ACK seq=19 ack=20",
    "ACK ack=20",
]


def tracked(packets: list[Packet]) -> tuple[list[Segment], list[ConnectionSummary]]:
    tracker = Tracker()
    segments = [tracker.feed(p) for p in packets]
    return segments, tracker.summaries()


def echo() -> tuple[list[Segment], ConnectionSummary]:
    segments, summaries = tracked(echo_packets())
    return segments, summaries[0]


def call(pid: int, name: str, fd: int | None, start_ms: float, end_ms: float, ret: int | None,
         frames: tuple[int, ...] = (), *, server: bool = False, errno: str | None = None,
         nbytes: int | None = None, inferred: bool = False, tid: int | None = None) -> Call:
    local, remote = Endpoint(*CLIENT), Endpoint(*SERVER)
    if server:
        local, remote = remote, local
    if name == "listen":
        remote = None
    return Call(pid, pid if tid is None else tid, fd, name, T0 + start_ms / 1e3, T0 + end_ms / 1e3,
                ret, errno, "", local, remote, nbytes, 0, frames, inferred)


def echo_calls(*, inferred: bool = False) -> list[Call]:
    """The mock-up's strace calls, aligned to the frames by issue 5's rules."""
    c, s = 2943, 2931
    kw = {"inferred": inferred}
    return [
        call(c, "connect", 3, -0.05, 0.040, 0, (1, 2), **kw),
        call(c, "sendto", 3, 0.262, 0.270, 6, (4,), nbytes=6, **kw),
        call(c, "recvfrom", 3, 0.272, 0.462, 6, (6,), nbytes=6, **kw),
        call(c, "sendto", 3, 0.880, 0.894, 6, (8,), nbytes=6, **kw),
        call(c, "recvfrom", 3, 0.896, 1.014, 6, (9,), nbytes=6, **kw),
        call(c, "sendto", 3, 1.250, 1.257, 6, (10,), nbytes=6, **kw),
        call(c, "recvfrom", 3, 1.259, 1.365, 6, (11,), nbytes=6, **kw),
        call(c, "close", 3, 1.580, 1.590, 0, (12,), **kw),
        call(s, "listen", 3, -5.0, -4.99, 0, server=True, **kw),
        call(s, "accept4", 3, -3.0, 0.060, 4, (3,), server=True, **kw),
        call(s, "recvfrom", 4, 0.062, 0.270, 6, (4,), server=True, nbytes=6, **kw),
        call(s, "sendto", 4, 0.455, 0.462, 6, (6,), server=True, nbytes=6, **kw),
        call(s, "recvfrom", 4, 0.464, 0.894, 6, (8,), server=True, nbytes=6, **kw),
        call(s, "sendto", 4, 1.008, 1.013, 6, (9,), server=True, nbytes=6, **kw),
        call(s, "recvfrom", 4, 1.015, 1.257, 6, (10,), server=True, nbytes=6, **kw),
        call(s, "sendto", 4, 1.360, 1.364, 6, (11,), server=True, nbytes=6, **kw),
        call(s, "recvfrom", 4, 1.366, 1.588, 0, (12,), server=True, nbytes=0, **kw),
        call(s, "close", 4, 1.680, 1.686, 0, (13,), server=True, **kw),
    ]


def long_exchange(pairs: int, *, request: bytes = b"ping\n" * 20, response: bytes = b"PONG\n" * 100,
                  gap_ms: float = 0.2) -> tuple[list[Segment], ConnectionSummary]:
    """Handshake, ``pairs`` request/response pairs (the response piggybacks the ACK), close."""
    c, s = C_ISN, S_ISN
    pk: list[Packet] = []
    ms = 0.0

    def add(c2s: bool, flags: int, seq: int, ack: int, payload: bytes = b"") -> None:
        nonlocal ms
        pk.append(packet(len(pk) + 1, ms, c2s, flags, seq, ack, payload))
        ms += gap_ms

    add(True, S, c, 0)
    add(False, S | A, s, c + 1)
    c, s = c + 1, s + 1
    add(True, A, c, s)
    for _ in range(pairs):
        add(True, P | A, c, s, request)
        c += len(request)
        add(False, P | A, s, c, response)
        s += len(response)
    add(True, F | A, c, s)
    add(False, F | A, s, c + 1)
    add(True, A, c + 1, s + 1)
    segments, summaries = tracked(pk)
    return segments, summaries[0]


def corpus_connections(name: str) -> list[tuple[list[Segment], ConnectionSummary]]:
    from handshake_viz.decode import open_capture

    tracker = Tracker()
    with open_capture(CORPUS / "traces" / name) as reader:
        segments = [tracker.feed(p) for p in reader]
    return [([s for s in segments if s.conn == summ.conn], summ) for summ in tracker.summaries()]


def capture_connections(path: Path) -> list[tuple[list[Segment], ConnectionSummary]]:
    from handshake_viz.decode import open_capture

    tracker = Tracker()
    with open_capture(path) as reader:
        segments = [tracker.feed(p) for p in reader]
    return [([s for s in segments if s.conn == summ.conn], summ) for summ in tracker.summaries()]


MULTI_PCAP = REPO / "captures" / "multi-client.pcap"
UDP_PCAP = REPO / "captures" / "udp.pcap"


def trace_of(path: Path) -> Trace:
    """A capture as the pipeline's Trace, built with today's ``api.load`` (decode,
    track, align): its connections, and every traced call (listen() too)."""
    from handshake_viz.api import load

    loaded = load(path)
    conns = tuple(Connection(c.summary, c.segments, c.calls) for c in loaded.connections)
    return Trace(loaded.path, conns, (), loaded.calls, loaded.warnings, loaded.calls_path)


def udp_trace(path: Path = UDP_PCAP) -> Trace:
    """The UDP lesson as the pipeline will give it: one Flow of Datagrams, and the
    calls with ``frames`` filled the way the aligner will (a sendto caused the next
    datagram from its port, a recvfrom was released by the next one to it)."""
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap

    from handshake_viz.trace import read_calls_jsonl

    raw = [(frame, p) for frame, p in enumerate(rdpcap(str(path)), 1) if UDP in p]
    first = raw[0][1]
    client = Endpoint(first[IP].src, first[UDP].sport)
    server = Endpoint(first[IP].dst, first[UDP].dport)
    grams = []
    for frame, p in raw:
        payload = bytes(p[UDP].payload)
        c2s = (p[IP].src, p[UDP].sport) == (client.ip, client.port)
        grams.append(Datagram(frame, float(p.time), p[IP].src, p[UDP].sport, p[IP].dst, p[UDP].dport,
                              len(payload), payload, flow=0, dir=Direction.C2S if c2s else Direction.S2C))
    c2s = [d for d in grams if d.is_c2s]
    summary = FlowSummary(0, client, server, grams[0].ts, grams[-1].ts, len(grams), len(c2s),
                          sum(d.length for d in c2s), sum(d.length for d in grams if not d.is_c2s))
    queues: dict[tuple[str, int], list[Datagram]] = {}
    for d in grams:
        queues.setdefault(("out", d.sport), []).append(d)
        queues.setdefault(("in", d.dport), []).append(d)
    calls = []
    for c in read_calls_jsonl(path.with_suffix(".calls.jsonl")):
        way = {CallKind.SEND: "out", CallKind.RECV: "in"}.get(c.kind)
        queue = queues.get((way, c.local.port), []) if way and c.local else []
        calls.append(replace(c, frames=(queue.pop(0).frame,)) if queue else c)
    flow = Flow(summary, tuple(grams), tuple(calls))
    return Trace(path, (), (flow,), tuple(calls))


def accounted(layout: Layout) -> int:
    """Segments the layout shows: drawn rows plus what the folds say they hide."""
    return len(layout.segment_rows) + sum(r.fold.segments for r in layout.fold_rows if r.fold)


# ==========================================================================================
# Text
# ==========================================================================================


def test_payload_preview_is_escaped_quoted_and_cut_at_16_characters() -> None:
    assert escape_preview(b"HELLO\n") == '"HELLO\\n"'
    assert escape_preview(b'say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert escape_preview(b"\x00\xff\t\r") == '"\\x00\\xff\\t\\r"'
    assert escape_preview(b"") == ""
    exactly16 = b"0123456789abcdef"
    assert escape_preview(exactly16) == '"0123456789abcdef"'
    cut = escape_preview(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert cut == '"GET / HTTP/1.1…"'  # at most 16 characters inside the quotes, … included
    # an escape is never cut in half
    assert escape_preview(b"abcdefghijklmn\x01\x02") == '"abcdefghijklmn…"'
    # fewer bytes captured than the segment carried (snaplen): marked as cut
    assert escape_preview(b"hi", length=1448) == '"hi…"'


def test_human_duration_always_has_a_unit() -> None:
    assert human_duration(0.4) == "0.4 s"
    assert human_duration(0.012) == "12 ms"
    assert human_duration(0.0015) == "1.5 ms"
    assert human_duration(0.00035) == "350 µs"
    assert human_duration(250.0) == "250 s"


def test_echo_labels_match_the_mockup_in_order() -> None:
    segments, summary = echo()
    layout = plan(segments, summary)
    assert list(layout.labels) == ECHO_LABELS
    assert [r.frame for r in layout.rows] == list(range(1, 15))
    assert [r.phase for r in layout.rows] == [Phase.HANDSHAKE] * 3 + [Phase.DATA] * 8 + [Phase.CLOSE] * 3


def test_syn_rows_carry_window_and_options_other_rows_do_not() -> None:
    segments, summary = echo()
    rows = plan(segments, summary).rows
    assert rows[0].extra == "win=65495 mss=65495 wscale=10 sackOK"
    assert rows[1].extra == "win=65483 mss=65495 wscale=10 sackOK"
    assert all(r.extra == "" for r in rows[2:])


def test_rst_and_syn_with_payload_texts() -> None:
    segments, _ = tracked([
        packet(1, 0, True, S, 10, 0, b"GET / HTTP/1.1\r\n"),
        packet(2, 1, False, R | A, 0, 28),
    ])
    syn_label, syn_detail, _ = segment_text(segments[0])
    # 16 characters at most inside the quotes, the … included
    assert (syn_label, syn_detail) == ("SYN", 'seq=0 len=16 "GET / HTTP/1.1…"')
    rst_label, rst_detail, _ = segment_text(segments[1])
    assert rst_label == "RST" and rst_detail.startswith("seq=")
    bare, _ = tracked([packet(1, 0, True, R, 10, 0)])
    label, detail, _ = segment_text(bare[0])
    assert label == "RST" and detail.startswith("seq=") and "ack" not in detail  # no ACK bit


def test_times_are_ms_since_the_first_syn() -> None:
    segments, summary = echo()
    layout = plan(segments, summary)
    assert layout.t0 == segments[0].ts
    assert [r.time_text for r in layout.rows][:3] == ["0.000 ms", "0.034 ms", "0.054 ms"]
    assert layout.rows[-1].time_text == "1.701 ms"
    assert layout.rows[-1].t_ms == pytest.approx(1.701, abs=1e-3)  # epoch floats: ~0.2 µs


def test_title_names_endpoints_count_duration_and_zeek_state() -> None:
    segments, summary = echo()
    title = plan(segments, summary).title
    assert "127.0.0.1:49736 → 127.0.0.1:18081" in title
    assert "14 segments" in title and "1.70 ms" in title
    assert f"{summary.conn_state} {summary.history}" in title


def test_headers_and_subtitles() -> None:
    segments, summary = echo()
    client, server = plan(segments, summary).lifelines
    assert (client.header, client.x) == ("client 127.0.0.1:49736", 0.0)
    assert (server.header, server.x) == ("server 127.0.0.1:18081", 1.0)
    assert client.subtitle == server.subtitle == "TCP (kernel)"


# ==========================================================================================
# Geometry and states
# ==========================================================================================


def test_ordered_rows_are_evenly_spaced_and_arrows_point_from_sender_to_receiver() -> None:
    segments, summary = echo()
    layout = plan(segments, summary)
    ys = [r.y for r in layout.rows]
    assert ys == [float(i) for i in range(len(ys))]
    for r, seg in zip(layout.rows, segments):
        assert r.y_end > r.y
        if seg.dir is Direction.C2S:
            assert (r.x_from, r.x_to) == (0.0, 1.0)
        else:
            assert (r.x_from, r.x_to) == (1.0, 0.0)


def test_states_are_written_where_they_change_on_the_right_lifeline() -> None:
    segments, summary = echo()
    layout = plan(segments, summary)
    rows = {r.frame: r for r in layout.rows}
    got = [(m.side, m.text, m.frame) for m in layout.states]
    # derived from the tracker's states, one mark per change per side
    expected = []
    prev = {"client": None, "server": None}
    for seg in segments:
        for side, st in (("client", seg.client_state), ("server", seg.server_state)):
            if st is not prev[side]:
                expected.append((side, st.value, seg.frame))
                prev[side] = st
    assert sorted(got, key=lambda g: (g[2], g[0])) == sorted(expected, key=lambda g: (g[2], g[0]))
    assert [m.text for m in layout.states if m.side == "client"] == [
        "SYN-SENT", "ESTABLISHED", "FIN-WAIT-1", "TIME-WAIT"]
    assert [m.text for m in layout.states if m.side == "server"] == [
        "LISTEN", "SYN-RECEIVED", "ESTABLISHED", "CLOSE-WAIT", "LAST-ACK", "CLOSED"]
    for m in layout.states:
        assert m.x == (0.0 if m.side == "client" else 1.0)
        if m.frame is None:
            continue
        seg = next(s for s in segments if s.frame == m.frame)
        sender = "client" if seg.dir is Direction.C2S else "server"
        row = rows[m.frame]
        if m.text == "LISTEN":
            assert m.y < row.y  # found listening before the first SYN arrived
        elif m.side == sender:
            assert m.y == row.y  # at departure
        else:
            assert m.y == row.y_end  # at arrival


def test_time_wait_note_names_the_side_that_closed_first() -> None:
    segments, summary = echo()
    assert [n.text for n in plan(segments, summary).notes] == ["client closed first → TIME-WAIT (2·MSL)"]
    # the server closes first: swap who sends the first FIN
    c, s = C_ISN, S_ISN
    pk = echo_packets()[:3] + [
        packet(4, 1.0, False, F | A, s + 1, c + 1),
        packet(5, 1.1, True, F | A, c + 1, s + 2),
        packet(6, 1.2, False, A, s + 2, c + 2),
    ]
    segs, summaries = tracked(pk)
    notes = [n.text for n in plan(segs, summaries[0]).notes]
    assert notes[0].startswith("server closed first → TIME-WAIT")


def test_a_reset_is_said_at_the_bottom() -> None:
    c, s = C_ISN, S_ISN
    segs, summaries = tracked(echo_packets()[:4] + [packet(5, 0.3, False, R | A, s + 1, c + 7)])
    layout = plan(segs, summaries[0])
    assert layout.rows[-1].phase is Phase.RESET and layout.rows[-1].label == "RST"
    assert [n.text for n in layout.notes] == [
        "server reset the connection (RST, frame 5): no TIME-WAIT, unread data is lost"]


def test_real_time_rows_follow_the_clock_but_never_crowd() -> None:
    segments, summary = echo()
    # the server thinks for 300 ms before its first answer
    shifted = [packet(p.frame, (p.ts - T0) * 1e3 + (300.0 if p.frame >= 5 else 0.0),
                      (p.src, p.sport) == CLIENT, p.flags, p.seq, p.ack, p.payload, win=p.win,
                      raw=p.raw_options) for p in echo_packets()]
    segs, summaries = tracked(shifted)
    layout = plan(segs, summaries[0], time="real")
    ys = [r.y for r in layout.rows]
    gaps = [b - a for a, b in zip(ys, ys[1:])]
    assert min(gaps) >= 1.0 - 1e-9  # never closer than a row
    # the long think time is by far the largest gap, between frame 4 and frame 5
    assert gaps.index(max(gaps)) == 3 and max(gaps) > 5 * sorted(gaps)[len(gaps) // 2]
    assert layout.time_mode == "real"
    (idle,) = layout.idle  # the long stretch says how long it was
    assert idle.text == "0.3 s without segments"
    assert ys[3] < idle.y < ys[4]
    # ordered mode ignores it
    assert [r.y for r in plan(segs, summaries[0]).rows] == [float(i) for i in range(14)]


def test_bad_options_raise_usage_errors() -> None:
    segments, summary = echo()
    with pytest.raises(UsageError, match="--time sideways"):
        plan(segments, summary, time="sideways")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--max-rows -1"):
        plan(segments, summary, max_rows=-1)
    with pytest.raises(UsageError, match="no segments"):
        plan([], summary)
    other = [s for s in tracked([packet(1, 0, True, S, 1, 0, client=("10.0.0.9", 1))] + echo_packets())[0]]
    with pytest.raises(UsageError, match="one connection at a time"):
        plan(other, None)


def test_summary_is_optional() -> None:
    segments, summary = echo()
    layout = plan(segments)
    assert list(layout.labels) == ECHO_LABELS
    assert layout.lifelines[0].endpoint == "127.0.0.1:49736"


# ==========================================================================================
# Folding
# ==========================================================================================


def test_no_fold_up_to_max_rows_and_with_zero() -> None:
    segments, summary = long_exchange(27)  # 3 + 54 + 3 = 60 segments
    assert len(segments) == 60
    assert not plan(segments, summary, max_rows=60).fold_rows
    assert len(plan(segments, summary, max_rows=0).rows) == 60
    layout = plan(segments, summary, max_rows=59)
    (fold,) = layout.fold_rows
    assert fold.fold is not None and fold.fold.segments == 2 and len(layout.rows) == 59


def test_fold_keeps_handshake_and_close_and_counts_right() -> None:
    segments, summary = long_exchange(600)
    n = len(segments)
    layout = plan(segments, summary, max_rows=60)
    assert len(layout.rows) == 60 and layout.segments == n
    (fold_row,) = layout.fold_rows
    fold = fold_row.fold
    assert fold is not None
    assert accounted(layout) == n
    frames = [r.frame for r in layout.segment_rows]
    assert frames[:3] == [1, 2, 3] and frames[-3:] == [n - 2, n - 1, n]
    head = [r for r in layout.rows if r.index < fold_row.index]
    tail = [r for r in layout.rows if r.index > fold_row.index]
    assert abs(len(head) - len(tail)) <= 1
    hidden = [s for s in segments if fold.first_frame <= s.frame <= fold.last_frame]
    assert fold.segments == len(hidden) == n - 59
    assert fold.segments_c2s == sum(s.dir is Direction.C2S for s in hidden)
    assert fold.segments_s2c == fold.segments - fold.segments_c2s
    assert fold.bytes_c2s == sum(s.length for s in hidden if s.dir is Direction.C2S)
    assert fold.bytes_s2c == sum(s.length for s in hidden if s.dir is Direction.S2C)
    assert fold.duration == pytest.approx(hidden[-1].ts - hidden[0].ts)
    assert fold_row.text.startswith(f"… {fold.segments:,} segments, ")
    assert fold_row.text.endswith(" …")
    assert any(f"{fold.segments:,} segments folded" in note.text for note in layout.notes)


def test_fold_text_says_each_way_when_bytes_match_and_humanises() -> None:
    segments, summary = long_exchange(1200, request=b"x" * 75, response=b"y" * 75)
    layout = plan(segments, summary, max_rows=60)
    (fold,) = layout.fold_rows
    assert fold.fold is not None
    assert "KiB each way" in fold.text
    assert fold.fold.segments > 1000
    assert f"… {fold.fold.segments:,} segments," in fold.text  # thousands separator
    uneven, s2 = long_exchange(200)
    text = plan(uneven, s2, max_rows=20).fold_rows[0].text
    assert "client→server" in text and "server→client" in text


@pytest.mark.parametrize("max_rows", [1, 2, 3, 7, 10, 61])
def test_any_budget_accounts_for_every_segment(max_rows: int) -> None:
    segments, summary = long_exchange(40)
    layout = plan(segments, summary, max_rows=max_rows)
    assert len(layout.rows) == min(max_rows, len(segments))
    assert accounted(layout) == len(segments)


def test_fold_counts_analysis_flags_it_hides() -> None:
    # after the 14th request, the client repeats its last ACK four times (dup ACKs)
    segs, _ = long_exchange(30)
    pk = [packet(s.frame, (s.ts - T0) * 1e3, s.dir is Direction.C2S, s.flags, s.seq, s.ack, s.payload)
          for s in segs]
    request = pk[29]  # client -> server, carries data and acks the server's bytes so far
    assert (request.src, request.sport) == CLIENT and request.payload
    ms = (pk[30].ts - T0) * 1e3
    dups = [packet(0, ms + 0.01 * (i + 1), True, A, request.seq + len(request.payload), request.ack)
            for i in range(4)]
    packets = [Packet(i + 1, p.ts, p.src, p.sport, p.dst, p.dport, p.seq, p.ack, p.flags, p.win,
                      p.length, p.payload, p.raw_options)
               for i, p in enumerate(pk[:31] + dups + pk[31:])]
    segments, summaries = tracked(packets)
    assert sum(Analysis.DUP_ACK in s.analysis for s in segments) >= 3
    layout = plan(segments, summaries[0], max_rows=10)
    (fold,) = layout.fold_rows
    assert fold.fold is not None
    hidden = [s for s in segments if fold.fold.first_frame <= s.frame <= fold.fold.last_frame]
    expect = Counter(a for s in hidden for a in s.analysis)
    assert expect[Analysis.DUP_ACK] >= 3
    assert dict(fold.fold.analysis) == dict(expect)
    assert f"{expect[Analysis.DUP_ACK]} dup ACKs" in fold.text


# ==========================================================================================
# Calls
# ==========================================================================================


def _rows_by_frame(layout: Layout) -> dict[int, object]:
    return {r.frame: r for r in layout.rows if r.frame is not None}


def test_calls_go_to_their_side_and_respect_causality() -> None:
    segments, summary = echo()
    calls = echo_calls()
    layout = plan(segments, summary, calls)
    rows = _rows_by_frame(layout)
    assert len(layout.calls) == len(calls)
    assert [ln.title for ln in layout.lanes] == ["client process (pid 2943)", "server process (pid 2931)"]
    client_lane, server_lane = layout.lanes
    assert client_lane.x < 0.0 < 1.0 < server_lane.x
    for bar in layout.calls:
        assert bar.side == ("server" if bar.call.pid == 2931 else "client")
        assert bar.y0 < bar.y1
        assert not bar.inferred
        sent = [f for f in bar.call.frames
                if (next(s for s in segments if s.frame == f).dir is Direction.C2S) == (bar.side == "client")]
        recv = [f for f in bar.call.frames if f not in sent]
        for f in sent:
            assert bar.y0 <= rows[f].y  # the call starts before its segment leaves
        for f in recv:
            assert bar.y1 >= rows[f].y_end  # and returns after the segment it waited for arrives
    labels = [b.label for b in layout.calls]
    assert "connect(3)" in labels and "accept4(3) → 4" in labels
    assert "recvfrom(4) → 0 (EOF)" in labels and "sendto(3) → 6" in labels


def test_a_call_that_starts_before_a_segment_is_drawn_above_it() -> None:
    segments, summary = echo()
    layout = plan(segments, summary, echo_calls())
    rows = _rows_by_frame(layout)
    send = next(b for b in layout.calls if b.call.call == "sendto" and b.call.frames == (4,))
    # started 6 µs before frame 4, 208 µs after frame 3: between them, near frame 4
    assert rows[3].y_end < send.y0 < rows[4].y
    listen = next(b for b in layout.calls if b.call.call == "listen")
    accept = next(b for b in layout.calls if b.call.call.startswith("accept"))
    assert listen.y0 < accept.y0 < rows[1].y  # both before the SYN, in their order


def test_connectors_join_each_call_to_its_frames() -> None:
    segments, summary = echo()
    layout = plan(segments, summary, echo_calls())
    rows = _rows_by_frame(layout)
    joined = Counter()
    for c in layout.connectors:
        bar = layout.calls[c.call_index]
        assert c.x0 == bar.x_inner and c.x1 == (0.0 if bar.side == "client" else 1.0)
        assert bar.y0 <= c.y0 <= bar.y1
        assert c.y1 in (rows[c.frame].y, rows[c.frame].y_end)
        joined[c.call_index] += 1
    for i, bar in enumerate(layout.calls):
        assert joined[i] == len(set(bar.call.frames))


def test_lane_texts_never_collide() -> None:
    segments, summary = echo()
    layout = plan(segments, summary, echo_calls())
    for side in ("client", "server"):
        ys = sorted([b.label_y for b in layout.calls if b.side == side]
                    + [b.note_y for b in layout.calls if b.side == side and b.note])
        assert all(b - a >= 0.3 - 1e-9 for a, b in zip(ys, ys[1:]))


def test_inferred_calls_are_marked_and_titled() -> None:
    segments, summary = echo()
    layout = plan(segments, summary, echo_calls(inferred=True))
    assert all(b.inferred for b in layout.calls)
    assert all(c.inferred for c in layout.connectors)
    assert [ln.title for ln in layout.lanes] == ["client process (calls inferred)",
                                                 "server process (calls inferred)"]
    assert "call-inferred" in layout.legend and "call-traced" not in layout.legend


def test_accept_called_late_shows_the_queue_wait() -> None:
    segments, summary = echo()
    calls = [call(2931, "accept4", 3, 0.200, 0.210, 4, (3,), server=True)]
    layout = plan(segments, summary, calls)
    (bar,) = layout.calls
    assert bar.note == "connection queued 146 µs before accept()"
    (queue,) = [c for c in layout.connectors if c.kind == "queue"]
    assert queue.y0 == _rows_by_frame(layout)[3].y_end and queue.y1 == bar.y0


def test_failed_and_eof_calls_are_labelled() -> None:
    segs, summaries = tracked([
        packet(1, 0, True, S, C_ISN, 0),
        packet(2, 0.05, False, R | A, 0, C_ISN + 1),
    ])
    refused = call(1, "connect", 3, -0.01, 0.06, -1, (1, 2), errno="ECONNREFUSED")
    layout = plan(segs, summaries[0], [refused])
    (bar,) = layout.calls
    assert bar.label == "connect(3) → ECONNREFUSED" and bar.failed
    assert bar.note == "refused: a RST answered the SYN"
    assert [n.text for n in layout.notes] == [
        "server refused the connection: a RST answered the SYN (nothing listening on port 18081)"]
    assert "LISTEN" not in [m.text for m in layout.states]  # nobody was


def test_calls_of_other_connections_and_unplaceable_calls() -> None:
    segments, summary = echo()
    other = Call(1, 1, 5, "sendto", T0, T0 + 1e-4, 3, conn=7)
    lost = Call(99, 99, 5, "futex", T0, T0 + 1e-4, 0)
    layout = plan(segments, summary, [other, lost])
    assert layout.calls == ()
    assert any("1 socket call not drawn" in n.text for n in layout.notes)


def test_calls_inside_a_fold_are_counted_not_drawn() -> None:
    segments, summary = long_exchange(100)
    mid = segments[100]
    hidden = call(2943, "sendto", 3, (mid.ts - T0) * 1e3 - 0.001, (mid.ts - T0) * 1e3 + 0.001, 100,
                  (mid.frame,))
    layout = plan(segments, summary, [hidden], max_rows=20)
    (fold,) = layout.fold_rows
    assert fold.fold is not None and fold.fold.calls == 1
    assert layout.calls == () and "1 socket call" in fold.text


def test_the_layout_reads_call_kinds_from_the_model() -> None:
    assert call_kind("sendto") is CallKind.SEND and call_kind("recvmsg") is CallKind.RECV
    assert call_kind("accept4") is CallKind.ACCEPT and call_kind("shutdown") is CallKind.SHUTDOWN
    # a shutdown sends the FIN: its bar starts above the FIN it caused, like close()'s
    segments, summary = echo()
    shut = call(2943, "shutdown", 3, 1.580, 1.590, 0, (12,))
    (bar,) = plan(segments, summary, [shut]).calls
    fin = next(r for r in plan(segments, summary).rows if r.frame == 12)
    assert bar.side == "client" and bar.y0 <= fin.y and bar.label == "shutdown(3)"


# ==========================================================================================
# Real captures
# ==========================================================================================


ECHO_PCAP = REPO / "captures" / "echo.pcap"


@pytest.mark.skipif(not ECHO_PCAP.exists(), reason="captures/echo.pcap not recorded yet")
def test_recorded_echo_capture_reads_like_the_mockup() -> None:
    ((segments, summary),) = capture_connections(ECHO_PCAP)
    layout = plan(segments, summary)
    labels = [r.label for r in layout.rows]
    assert labels[:3] == ["SYN", "SYN-ACK", "ACK"] and labels[-3:] == ["FIN", "FIN-ACK", "ACK"]
    assert [r.text for r in layout.rows] == [" ".join(filter(None, segment_text(s)[:2])) for s in segments]
    assert layout.rows[0].time_text == "0.000 ms"
    assert [m.text for m in layout.states if m.side == "client"][-1] == "TIME-WAIT"


@needs_corpus
@pytest.mark.parametrize("trace", [p.name for p in TRACES])
def test_every_corpus_connection_plans_and_accounts_for_every_segment(trace: str) -> None:
    for segments, summary in corpus_connections(trace):
        for max_rows in (0, 5, 60):
            layout = plan(segments, summary, max_rows=max_rows)
            assert accounted(layout) == len(segments) == layout.segments
            if max_rows:
                assert len(layout.rows) <= max_rows
            drawn = {r.frame for r in layout.segment_rows}
            for r in layout.segment_rows:
                seg = next(s for s in segments if s.frame == r.frame)
                label, detail, _ = segment_text(seg)
                assert r.text == f"{label} {detail}".rstrip()
                assert r.label == seg.label.value
            assert len(drawn) == len(layout.segment_rows)
        # ordered rows are in capture order
        frames = [r.frame for r in plan(segments, summary, max_rows=0).rows]
        assert frames == [s.frame for s in segments]


@needs_corpus
def test_a_long_syn_line_wraps_and_makes_room() -> None:
    segments, summary = corpus_connections("tcp-fast-open.pcap")[1]
    layout = plan(segments, summary)
    first, second, third = layout.rows[:3]
    assert first.label == "SYN" and first.detail.startswith("seq=0 len=86 ")
    assert first.lines == 2 and first.extra.endswith("TFO cookie")
    assert second.y - first.y == pytest.approx(1.0 + SECOND_LINE)
    assert third.y - second.y == pytest.approx(1.0)


@needs_corpus
def test_missing_syn_says_the_roles_were_guessed() -> None:
    ((segments, summary),) = corpus_connections("missing-syn.pcap")
    layout = plan(segments, summary)
    if summary.roles_guessed:
        assert any("guessed" in n.text for n in layout.notes) and "roles guessed" in layout.title


@needs_corpus
def test_retransmissions_are_marked_on_their_arrows() -> None:
    ((segments, summary),) = corpus_connections("retransmit-fast009.pcap")
    layout = plan(segments, summary, max_rows=0)
    flagged = [r for r in layout.rows if r.flagged]
    assert flagged, "the capture has retransmissions and dup ACKs"
    for r in layout.rows:
        seg = next(s for s in segments if s.frame == r.frame)
        if Analysis.DUP_ACK in seg.analysis:
            assert "dup ACK" in r.markers and r.flagged
        if Analysis.FAST_RETRANSMISSION in seg.analysis:
            assert "fast retransmission" in r.markers and "retransmission" not in r.markers
    assert "flagged" in layout.legend


@needs_corpus
def test_single_rst_is_one_row_and_states_are_shown() -> None:
    ((segments, summary),) = corpus_connections("single-rst.pcap")
    layout = plan(segments, summary)
    assert len(layout.rows) == 1 and layout.rows[0].label == Label.RST.value
    assert layout.states  # the tracker's states after the RST are written
    assert all(m.state in TcpState for m in layout.states)


# ==========================================================================================
# Several conversations on one time axis
# ==========================================================================================


needs_multi = pytest.mark.skipif(not MULTI_PCAP.exists(), reason="captures/multi-client.pcap missing")
needs_udp = pytest.mark.skipif(not UDP_PCAP.exists(), reason="captures/udp.pcap missing")


def multi_layout(**kw: object) -> tuple[Trace, Layout]:
    trace = trace_of(MULTI_PCAP)
    return trace, plan_trace(trace.connections, calls=trace.calls, **kw)  # type: ignore[arg-type]


@needs_multi
def test_a_server_with_three_clients_is_one_lifeline_and_one_lane() -> None:
    trace, layout = multi_layout()
    servers = [ln for ln in layout.lifelines if ln.side == "server"]
    clients = [ln for ln in layout.lifelines if ln.side == "client"]
    assert len(servers) == 1 and len(clients) == 3
    (server,) = servers
    assert server.endpoint == str(trace.connections[0].summary.server) and server.x == 1.0
    assert server.conns == (0, 1, 2) and server.name == "server"
    # clients on the left in order of first appearance, the innermost at 0
    first_seen = sorted(trace.connections, key=lambda c: c.segments[0].frame)
    assert [ln.endpoint for ln in clients] == [str(c.summary.client) for c in first_seen]
    assert [ln.name for ln in clients] == ["client 1", "client 2", "client 3"]
    xs = [ln.x for ln in layout.lifelines]
    assert xs == sorted(xs) and clients[-1].x == 0.0
    assert all(b - a >= 0.8 for a, b in zip(xs, xs[1:]))
    # one lane per lifeline; the server's holds every call of its process on that port
    assert sorted(ln.lifeline for ln in layout.lanes) == [0, 1, 2, 3]
    s = layout.lifelines.index(server)
    on_server = [b for b in layout.calls if b.lifeline == s]
    assert {b.call.call for b in on_server} >= {"listen", "accept4", "recvfrom", "sendto", "close"}
    # every call is on the lane of the lifeline at its socket's own address
    for b in layout.calls:
        assert b.call.local is not None and layout.lifelines[b.lifeline].endpoint == str(b.call.local)
        assert b.x > server.x if b.lifeline == s else b.x < layout.lifelines[b.lifeline].x


@needs_multi
def test_three_handshakes_complete_and_three_accepts_return_in_order() -> None:
    trace, layout = multi_layout()
    s = next(i for i, ln in enumerate(layout.lifelines) if ln.side == "server")
    accepts = [b for b in layout.calls if b.call.kind is CallKind.ACCEPT]
    assert len(accepts) == 3 and all(b.lifeline == s for b in accepts)
    assert [b.y1 for b in accepts] == sorted(b.y1 for b in accepts)  # they return in order …
    assert [b.call.end for b in accepts] == sorted(b.call.end for b in accepts)
    # … each after its own connection's handshake completed in the kernel
    rows = _rows_by_frame(layout)
    by_conn = {c.conn: c for c in trace.connections}
    for bar in accepts:
        conn = by_conn[bar.call.conn]
        last_ack = next(seg for seg in conn.segments if seg.label is Label.ACK)
        assert bar.y1 >= rows[last_ack.frame].y_end
        established = [m for m in layout.states if m.conn == conn.conn and m.lifeline == s
                       and m.state is TcpState.ESTABLISHED]
        assert len(established) == 1 and established[0].y <= bar.y1


@needs_multi
def test_rows_of_all_connections_interleave_in_capture_order() -> None:
    trace, layout = multi_layout(max_rows=0)
    segments = sorted((seg for c in trace.connections for seg in c.segments), key=lambda s: s.frame)
    assert [r.frame for r in layout.rows] == [s.frame for s in segments]
    assert len({r.conn for r in layout.rows}) == 3  # not one connection after the other …
    order = [r.conn for r in layout.rows]
    assert order != sorted(order)  # conn 0's data comes after conn 1's handshake
    ys = [r.y for r in layout.rows]
    assert ys == sorted(ys)
    for r in layout.rows:  # … each arrow between its own client and the shared server
        summary = trace.connections[r.conn].summary  # type: ignore[index]
        ends = {layout.lifelines[r.lifeline_from].endpoint, layout.lifelines[r.lifeline_to].endpoint}
        assert ends == {str(summary.client), str(summary.server)}
        assert (r.text_x, r.text_room) == (0.5, 1.0)  # texts in the gap every arrow crosses
    assert layout.segments == len(segments) and layout.conns == (0, 1, 2)


@needs_multi
def test_states_on_the_shared_server_lifeline_name_their_client() -> None:
    _trace, layout = multi_layout()
    s = next(i for i, ln in enumerate(layout.lifelines) if ln.side == "server")
    server_marks = [m for m in layout.states if m.lifeline == s]
    assert [m.text for m in server_marks].count("LISTEN") == 1  # the listening socket, once
    assert server_marks[0].text == "LISTEN" and server_marks[0].conn is None
    name_of = {}
    for r in layout.rows:
        name_of[r.conn] = layout.lifelines[r.lifeline_from if layout.lifelines[r.lifeline_from].side
                                           == "client" else r.lifeline_to].name
    for m in server_marks[1:]:
        assert m.text == f"{m.state.value} ({name_of[m.conn]})"
    for conn, name in name_of.items():
        mine = [m.state for m in server_marks if m.conn == conn]
        assert mine == [TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT,
                        TcpState.LAST_ACK, TcpState.CLOSED], name
    # client lifelines are not shared: plain states, as in the one-connection diagram
    assert all("(" not in m.text for m in layout.states if m.lifeline != s)


@needs_multi
def test_the_whole_trace_folds_into_max_rows_and_counts_everything() -> None:
    trace, layout = multi_layout(max_rows=12)
    assert len(layout.rows) == 12
    assert accounted(layout) == sum(len(c.segments) for c in trace.connections) == 36
    (fold,) = layout.fold_rows
    assert fold.x_from == layout.lifelines[0].x and fold.x_to == layout.lifelines[-1].x
    assert any("folded to keep 12 rows" in n.text for n in layout.notes)
    # the server's states that changed inside the fold: one mark per state, in the band
    s = len(layout.lifelines) - 1
    at_fold = [m for m in layout.states if m.lifeline == s and fold.y <= m.y <= fold.y_end]
    assert [m.text for m in at_fold] == ["ESTABLISHED (client 3)", "CLOSED (client 1, client 2)"]


@needs_multi
def test_notes_say_each_connection_once_and_the_title_counts() -> None:
    _trace, layout = multi_layout()
    assert [n.text for n in layout.notes] == ["conns 0, 1, 2: client closed first → TIME-WAIT (2·MSL)"]
    assert layout.title.startswith("3 TCP connections to 127.0.0.1:")
    assert "36 segments" in layout.title
    _trace, titled = multi_layout(title="three clients")
    assert titled.title == "three clients"


@needs_multi
def test_a_chosen_connection_keeps_the_trace_calls_of_its_sockets() -> None:
    trace = trace_of(MULTI_PCAP)
    layout = plan_trace(trace.connections[1:2], calls=trace.calls)
    assert [ln.side for ln in layout.lifelines] == ["client", "server"]
    names = [b.call.call for b in layout.calls]
    assert "listen" in names  # on no connection, but on the server's socket
    assert names.count("accept4") == 1  # the other connections' accepts are not drawn
    assert not any("not drawn" in n.text for n in layout.notes)  # they are not lost either


def test_a_restarted_server_is_the_same_lifeline_and_every_call_is_drawn_in_order() -> None:
    """time-wait: the server closes first, restarts on its port (bind() fails with
    EADDRINUSE, then works with SO_REUSEADDR) and serves a second client."""
    path = REPO / "captures" / "time-wait.pcap"
    if not path.exists():
        pytest.skip("captures/time-wait.pcap missing")
    trace = trace_of(path)
    layout = plan_trace(trace.connections, calls=trace.calls)
    assert [ln.side for ln in layout.lifelines] == ["client", "client", "server"]
    assert len(layout.calls) == len(trace.calls)  # socket()/setsockopt() before bind() too,
    assert not any("not drawn" in n.text for n in layout.notes)  # by their fd's other calls
    server = [b for b in layout.calls if b.lifeline == 2]
    assert {"socket", "setsockopt", "bind", "listen", "accept4"} <= {b.call.call for b in server}
    # the restart's calls all start between two rows: each gets a step, in order
    first = next(i for i, r in enumerate(layout.rows) if r.conn == 1)
    restart = [b for b in server if layout.rows[first - 1].y_end < b.y0 < layout.rows[first].y]
    assert [b.call.call for b in restart] == ["socket", "bind", "close", "socket", "setsockopt",
                                              "bind", "listen", "accept4"]
    assert [b.label_y for b in restart] == sorted(b.label_y for b in restart)
    assert restart[1].label == "bind(13) → EADDRINUSE" and restart[1].failed
    assert [m.text for m in layout.states if m.lifeline == 2 and m.state is TcpState.TIME_WAIT] == [
        "TIME-WAIT (client 1)"]


def test_one_connection_plans_the_same_either_way() -> None:
    segments, summary = echo()
    calls = echo_calls()
    conn = Connection(summary, tuple(segments), tuple(calls))
    assert plan_trace([conn]) == plan(segments, summary, calls)
    assert plan_trace([conn], time="real", max_rows=5) == plan(segments, summary, calls, time="real",
                                                               max_rows=5)


def test_plan_trace_needs_something_to_draw() -> None:
    with pytest.raises(UsageError, match="nothing to draw"):
        plan_trace([])
    segments, summary = echo()
    with pytest.raises(UsageError, match="--max-rows -2"):
        plan_trace([Connection(summary, tuple(segments))], max_rows=-2)


# ==========================================================================================
# UDP
# ==========================================================================================


@needs_udp
def test_datagrams_are_rows_with_their_calls_and_nothing_tcp() -> None:
    trace = udp_trace()
    (flow,) = trace.flows
    layout = plan_trace(flows=trace.flows)
    assert [r.kind for r in layout.rows] == ["datagram"] * 6
    assert [r.text for r in layout.rows] == ['UDP len=6 "hello\\n"', 'UDP len=6 "HELLO\\n"'] * 3
    assert all(r.phase is None and not r.flagged and not r.markers and r.extra == "" for r in layout.rows)
    assert layout.states == ()  # no handshake, no states
    assert layout.segments == 0 and layout.datagrams == 6 and layout.flows == (0,)
    assert [ln.subtitle for ln in layout.lifelines] == ["UDP (kernel)", "UDP (kernel)"]
    assert [ln.endpoint for ln in layout.lifelines] == [str(flow.summary.client), str(flow.summary.server)]
    assert layout.legend == ("udp", "call-traced")
    assert UDP_NOTE in [n.text for n in layout.notes]
    assert layout.title.startswith("UDP flow 0: ") and "6 datagrams" in layout.title
    rows = _rows_by_frame(layout)
    # sendto/recvfrom joined to their datagrams; the client's socket is 0.0.0.0:port
    sends = [b for b in layout.calls if b.call.call == "sendto"]
    recvs = [b for b in layout.calls if b.call.call == "recvfrom"]
    assert len(sends) == len(recvs) == 6
    for b in sends:
        (f,) = b.call.frames
        assert b.y0 <= rows[f].y and layout.lifelines[b.lifeline].x == rows[f].x_from
    for b in recvs:
        (f,) = b.call.frames
        assert b.y1 >= rows[f].y_end and layout.lifelines[b.lifeline].x == rows[f].x_to
        assert b.label.endswith("→ 6") and not b.note
    joined = {(c.call_index, c.frame) for c in layout.connectors}
    assert joined == {(i, f) for i, b in enumerate(layout.calls) for f in b.call.frames}
    client_socket = next(b for b in layout.calls if b.call.call == "socket" and b.call.local.ip == "0.0.0.0")
    assert layout.lifelines[client_socket.lifeline].side == "client"


def test_an_empty_udp_recv_is_not_an_end_of_stream() -> None:
    d = Datagram(1, T0, *CLIENT, *SERVER, 0, b"", flow=0, dir=Direction.C2S)
    flow = Flow(FlowSummary(0, Endpoint(*CLIENT), Endpoint(*SERVER), T0, T0, 1, 1, 0, 0), (d,),
                (Call(7, 7, 3, "recvfrom", T0 - 1e-4, T0 + 1e-4, 0, local=Endpoint(*SERVER), frames=(1,)),))
    layout = plan_trace(flows=[flow])
    (bar,) = layout.calls
    assert bar.label == "recvfrom(3) → 0" and bar.note == "" and bar.side == "server"
    assert layout.rows[0].text == "UDP len=0"


def test_a_dns_lookup_and_an_http_connection_in_one_figure() -> None:
    """A UDP flow before a TCP connection: four lifelines, rows in capture order,
    TCP rows with states and phases, UDP rows with neither."""
    segments, summary = echo()
    resolver, dns = Endpoint("127.0.0.1", 40000), Endpoint("127.0.0.53", 53)
    query = Datagram(101, T0 - 2e-3, resolver.ip, resolver.port, dns.ip, dns.port, 30,
                     b"\x12\x34\x01\x00", flow=0, dir=Direction.C2S)
    answer = Datagram(102, T0 - 1e-3, dns.ip, dns.port, resolver.ip, resolver.port, 46,
                      b"\x12\x34\x81\x80", flow=0, dir=Direction.S2C)
    flow = Flow(FlowSummary(0, resolver, dns, query.ts, answer.ts, 2, 1, 30, 46), (query, answer))
    # frame numbers of one capture: the lookup comes first
    segs = [replace(s, frame=s.frame + 102) for s in segments]
    conn = Connection(summary, tuple(segs))
    layout = plan_trace([conn], [flow])
    assert [r.kind for r in layout.rows] == ["datagram"] * 2 + ["segment"] * 14
    assert [(ln.side, ln.transport) for ln in layout.lifelines] == [
        ("client", "udp"), ("client", "tcp"), ("server", "udp"), ("server", "tcp")]
    assert [ln.x for ln in layout.lifelines][1:3] == [0.0, 1.0]
    assert layout.rows[0].text == 'UDP len=30 "\\x124\\x01\\x00…"'
    assert {m.lifeline for m in layout.states} == {1, 3}  # only the TCP lifelines have states
    assert layout.legend[:5] == ("handshake", "data", "close", "reset", "udp")
    assert layout.title == ("1 UDP flow to 127.0.0.53:53, 1 TCP connection to 127.0.0.1:18081   "
                            "2 datagrams, 14 segments, 3.70 ms")
    assert UDP_NOTE in [n.text for n in layout.notes]
    for r in layout.rows:  # every arrow's texts sit in the gap between the inner client and server
        assert (r.text_x, r.text_room) == (0.5, 1.0)
