"""report's JSON Lines writers are hand-rolled for speed; they must print exactly what
``json.dumps(record.to_json())`` prints, the schema's definition.  Checked on every
segment and connection of the corpus (read in place) and on records built here to
reach the unusual cases: every option kind, no ACK, analysis lists, odd strings."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from handshake_viz import report
from handshake_viz.decode import open_capture
from handshake_viz.model import (
    Analysis,
    ConnectionSummary,
    Direction,
    Endpoint,
    Label,
    Phase,
    Segment,
    TcpState,
)
from handshake_viz.track import Tracker

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TRACES = sorted((CORPUS / "traces").glob("*")) if CORPUS.is_dir() else []

OPTIONS = [
    b"",
    b"\x01\x01\x08\x0a\x00\x00\x00\x05\x00\x00\x00\x07",  # NOP NOP timestamps (the fast case)
    b"\x01\x01\x08\x0a\xff\xff\xff\xff\x00\x00\x00\x00",
    b"\x01\x01\x08\x0b\x00\x00\x00\x05\x00\x00\x00\x07",  # not a timestamps option after all
    b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03\x03\x07",
    b"\x01\x01\x05\x0a\x00\x00\x00\x10\x00\x00\x00\x20",  # one SACK block
    b"\x01\x01\x08\x0a\x00\x00\x00\x05",  # cut short
    b"\x22\x06\x01\x02\x03\x04",  # TFO cookie
    b"\x03\x03\xff\x00",  # window scale 255
]


def _segment(**changes) -> Segment:
    base = Segment(
        frame=1, ts=1_700_000_000.123456, conn=0, dir=Direction.C2S, src="10.0.0.1", sport=40000,
        dst="10.0.0.2", dport=80, seq=4_000_000_000, ack=5, rel_seq=1, rel_ack=1, length=0,
        flags=0x10, win=512, label=Label.ACK, phase=Phase.DATA, analysis=(),
        client_state=TcpState.ESTABLISHED, server_state=TcpState.ESTABLISHED,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("raw", OPTIONS, ids=lambda r: r.hex() or "none")
def test_segment_line_equals_json_dumps_for_each_option_list(raw):
    seg = _segment(raw_options=raw)
    assert report.segment_jsonl(seg) == json.dumps(seg.to_json())
    assert report.options_json(raw) == json.dumps(seg.options.to_json())


def test_segment_line_equals_json_dumps_for_unusual_values():
    cases = [
        _segment(rel_ack=None, flags=0x02, label=Label.SYN, phase=Phase.HANDSHAKE,
                 client_state=TcpState.SYN_SENT, server_state=TcpState.LISTEN),
        _segment(dir=Direction.S2C, src="2001:db8::1", dst="::ffff:10.0.0.1", ip_version=6),
        _segment(ts=0.000001, frame=10**9, flags=0xFF, win=0),
        _segment(ts=1e16),
        _segment(analysis=(Analysis.RETRANSMISSION, Analysis.FAST_RETRANSMISSION, Analysis.DUP_ACK)),
        _segment(flags=0x1FF),  # a bit beyond the eight the schema names
    ]
    for label, phase in itertools.product(Label, Phase):
        cases.append(_segment(label=label, phase=phase))
    for cs, ss in itertools.product(TcpState, TcpState):
        cases.append(_segment(client_state=cs, server_state=ss))
    for seg in cases:
        assert report.segment_jsonl(seg) == json.dumps(seg.to_json()), seg


def test_connection_line_equals_json_dumps_for_unusual_values():
    odd = ConnectionSummary(
        7, Endpoint('a"b\\c\u00e9', 1), Endpoint("::1", 2), 0.00001, 1e16, 3, 4, 5, 'S"F',
        "h\u00e9\n^", TcpState.CLOSED, TcpState.TIME_WAIT, True, 6,
    )
    plain = ConnectionSummary(0, Endpoint("10.0.0.1", 40000), Endpoint("10.0.0.2", 80),
                              1.5, 2.25, 10, 0, 100, "SF", "ShADadFf", TcpState.TIME_WAIT,
                              TcpState.CLOSED)
    for s in (odd, plain):
        assert report.connection_jsonl(s) == json.dumps(s.to_json())


def test_summary_lines_count_in_the_singular_for_one():
    from handshake_viz.model import FlowSummary

    def conn(n: int) -> ConnectionSummary:
        return ConnectionSummary(0, Endpoint("10.0.0.1", 40000), Endpoint("10.0.0.2", 80), 1.5, 1.5, n,
                                 0, 0, "S0", "S", TcpState.SYN_SENT, TcpState.LISTEN)

    def flow(n: int) -> FlowSummary:
        return FlowSummary(0, Endpoint("10.0.0.1", 5000), Endpoint("10.0.0.2", 53), 1.0, 1.0, n, n, 36, 0)

    assert "  1 segment  " in report.format_summary(conn(1))
    assert "  2 segments  " in report.format_summary(conn(2))
    assert "  1 datagram (1 →, 0 ←)" in report.format_flow_summary(flow(1))
    assert "  3 datagrams (3 →, 0 ←)" in report.format_flow_summary(flow(3))


@pytest.mark.skipif(not TRACES, reason=f"third-party corpus not found at {CORPUS}")
@pytest.mark.parametrize("trace", TRACES, ids=lambda p: p.name)
def test_corpus_lines_equal_json_dumps(trace):
    tracker = Tracker()
    with open_capture(trace) as reader:
        for seg in map(tracker.feed, reader):
            assert report.segment_jsonl(seg) == json.dumps(seg.to_json())
    for summary in tracker.summaries():
        assert report.connection_jsonl(summary) == json.dumps(summary.to_json())


@pytest.mark.skipif(not TRACES, reason=f"third-party corpus not found at {CORPUS}")
def test_tracker_rows_picked_by_name_make_the_same_lines():
    """``hsviz analyze --jsonl``'s records: the halves picked from Segment's fields by
    name, one process (both_fields) or two (track_fields + packet_fields)."""
    for trace in TRACES:
        with open_capture(trace) as reader:
            packets = list(reader)
        segments = list(map(Tracker().feed, packets))
        pairs = list(map(Tracker(record=report.both_fields).feed, packets))
        assert [t for _, t in pairs] == list(map(Tracker(record=report.track_fields).feed, packets))
        assert [p for p, _ in pairs] == [
            report.packet_fields(*dataclasses.astuple(p)) for p in packets]
        assert report.segment_lines(pairs) == [json.dumps(s.to_json()) for s in segments]
        for (p, t), seg in zip(pairs, segments):
            assert p == tuple(getattr(seg, name) for name in report.PACKET_FIELDS)
            assert t == tuple(getattr(seg, name) for name in report.TRACK_FIELDS)


def test_field_picker_names_fields_and_keeps_the_constructors_shape():
    import inspect

    from handshake_viz.model import Packet, field_picker

    pick = field_picker(Packet, ("win",))
    assert pick(1, 2.0, "a", 3, "b", 4, 5, 6, 0x10, 512, 0) == (512,)
    assert list(inspect.signature(pick).parameters) == [f.name for f in dataclasses.fields(Packet)]
    assert field_picker(Packet, ("src", "dst"), ("ts",))(
        *dataclasses.astuple(Packet(1, 2.0, "a", 3, "b", 4, 5, 6, 0x10, 512, 0))) == (("a", "b"), (2.0,))
    with pytest.raises(ValueError, match="no field rel_seq"):
        field_picker(Packet, ("seq", "rel_seq"))


def test_format_call_never_prints_none():
    from handshake_viz.model import Call
    from handshake_viz.report import format_call

    done = Call(1, 1, 3, "read", 10.0, 10.1, 5)
    failed = Call(1, 1, 3, "connect", 10.0, 10.1, -1, errno="ECONNREFUSED")
    blocked = Call(1, 1, 3, "accept4", 10.0, 10.1, None)
    inferred = Call(1, 1, None, "accept", 10.0, 10.0, None, inferred=True)
    assert format_call(done).endswith("read(3) = 5")
    assert format_call(failed).endswith("connect(3) = -1 ECONNREFUSED")
    assert format_call(blocked).endswith("accept4(3) = ? (unfinished: still blocked when tracing stopped)")
    assert format_call(inferred).endswith("accept() = ? (inferred)")
    assert not any("None" in format_call(c) for c in (done, failed, blocked, inferred))
