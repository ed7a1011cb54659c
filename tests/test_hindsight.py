"""Tests for handshake_viz.hindsight: what a whole connection settles (RFC 9293 §3.10.7.1).

A SYN answered by a RST found nobody listening: the ladder, the diagram and
explain say the responder was CLOSED; the streaming JSONL keeps the states as
known after each segment (the tracker's LISTEN at the SYN).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from handshake_viz.cli import main
from handshake_viz.hindsight import Settler, refusing_rst, settle
from handshake_viz.layout import plan_trace
from handshake_viz.model import TcpState
from handshake_viz.pipeline import load

from test_layout import echo, packet, tracked  # noqa: E402  (tests/ is on sys.path)

REFUSED = Path(__file__).resolve().parents[1] / "captures" / "refused.pcap"
S, RA, A = 0x02, 0x14, 0x10


def refused_segments(syns: int = 1):  # type: ignore[no-untyped-def]
    pkts = [packet(i + 1, 0.01 * i, True, S, 1000, 0) for i in range(syns)]
    pkts.append(packet(syns + 1, 0.05, False, RA, 0, 1001))
    segs, _ = tracked(pkts)
    return segs


def test_the_tracker_assumes_listen_and_settle_says_closed() -> None:
    segs = refused_segments()
    assert segs[0].server_state is TcpState.LISTEN  # as known at the SYN
    assert refusing_rst(segs) is segs[1]
    settled = settle(segs)
    assert [s.server_state for s in settled] == [TcpState.CLOSED, TcpState.CLOSED]
    assert [s.client_state for s in settled] == [s.client_state for s in segs]


def test_an_answered_connection_is_left_alone() -> None:
    segments, _ = echo()
    assert refusing_rst(segments) is None
    assert settle(segments) is segments


def test_the_streaming_settler_holds_only_unanswered_syns() -> None:
    segs = refused_segments(syns=2)  # a retransmitted SYN, then the RST
    st = Settler()
    assert st.feed(segs[0]) == () and st.feed(segs[1]) == ()
    out = st.feed(segs[2])
    assert [s.server_state for s in out] == [TcpState.CLOSED] * 3
    echo_segs, _ = echo()
    passed = [s for seg in echo_segs for s in st.feed(seg)]
    assert passed == echo_segs  # the SYN-ACK releases the held SYN unchanged
    lone = refused_segments()[0]
    st2 = Settler()
    assert st2.feed(lone) == () and list(st2.release(lone.conn)) == [lone]


def _ladder(path: Path) -> str:
    out = io.StringIO()
    assert main(["analyze", str(path)], out=out, err=io.StringIO()) == 0
    return out.getvalue()


def test_ladder_picture_and_explain_agree_on_a_refused_syn(tmp_path: Path) -> None:
    bare = tmp_path / "refused.pcap"  # no call log beside it: analyze streams
    shutil.copy(REFUSED, bare)
    for path in (REFUSED, bare):
        syn_line = next(line for line in _ladder(path).splitlines() if "→ SYN " in line)
        assert syn_line.rstrip().endswith("SYN-SENT | CLOSED")
    trace = load(REFUSED)
    conn = trace.connections[0]
    assert [s.server_state for s in conn.segments] == [TcpState.CLOSED, TcpState.CLOSED]
    layout = plan_trace(trace.connections, calls=trace.calls)
    server = [m.text for m in layout.states if layout.lifelines[m.lifeline].side == "server"]
    assert server == ["CLOSED"]
    assert "Nothing listened on port" in conn.explain().text()
    # the streaming JSONL keeps what was known after each segment
    out = io.StringIO()
    assert main(["analyze", str(bare), "--jsonl"], out=out, err=io.StringIO()) == 0
    states = [json.loads(line)["state"] for line in out.getvalue().splitlines()
              if line.startswith('{"type": "segment"')]
    assert states == [{"client": "SYN-SENT", "server": "LISTEN"},
                      {"client": "CLOSED", "server": "CLOSED"}]
