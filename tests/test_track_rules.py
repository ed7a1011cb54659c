"""One scripted capture per rule of issue 12, written here with scapy, each with what
tshark 4.0 and Zeek say of it (tshark's values checked with tshark 4.0.17 on the same
packets; Zeek's from the rule in its source, zeek/zeek
src/packet_analysis/protocol/tcp/TCPSessionAdapter.cc, as the corpus confirms)."""

from __future__ import annotations

from pathlib import Path

import pytest

scapy = pytest.importorskip("scapy.all")

from handshake_viz.decode import open_capture  # noqa: E402
from handshake_viz.track import Tracker  # noqa: E402

C, S = "10.0.0.1", "10.0.0.2"


def _seg(src: str, sport: int, dst: str, dport: int, flags: str, seq: int, ack: int = 0,
         data: bytes = b"", ipid: int = 1):  # type: ignore[no-untyped-def]
    p = (scapy.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
         / scapy.IP(src=src, dst=dst, id=ipid)
         / scapy.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=1000))
    return p / scapy.Raw(data) if data else p


def c(*a, **k):  # type: ignore[no-untyped-def]
    return _seg(C, 40000, S, 80, *a, **k)


def s(*a, **k):  # type: ignore[no-untyped-def]
    return _seg(S, 80, C, 40000, *a, **k)


def _run(tmp_path: Path, packets: list, times: list[float]) -> tuple[list, Tracker]:
    for p, t in zip(packets, times):
        p.time = t
    path = tmp_path / "rule.pcap"
    scapy.wrpcap(str(path), packets)
    tracker = Tracker()
    with open_capture(path) as reader:
        return [tracker.feed(p) for p in reader], tracker


def _flags(seg) -> set[str]:  # type: ignore[no-untyped-def]
    return {a.value for a in seg.analysis}


def test_syn_ack_first_then_ack_flips_zeek_to_caret_h(tmp_path: Path) -> None:
    """Rule 1.  The SYN-ACK's sender is the server, whatever the ports (both 1080 and
    8000 are "likely" server ports to Zeek).  Zeek first keeps it as originator (a
    stealth scan looks the same), then flips when the ACK follows: history '^hA...'."""
    segs, t = _run(tmp_path, [
        _seg(S, 8000, C, 1080, "SA", 500, 101), _seg(C, 1080, S, 8000, "A", 101, 501),
        _seg(C, 1080, S, 8000, "PA", 101, 501, b"POST"), _seg(S, 8000, C, 1080, "A", 501, 105),
    ], [1.0, 1.1, 1.2, 1.3])
    (summary,) = t.summaries()
    assert (summary.client.port, summary.server.port) == (1080, 8000)
    assert [x.dir.value for x in segs] == ["s2c", "c2s", "c2s", "s2c"]
    (z,) = t.zeek_connections()
    assert (z.orig.port, z.resp.port, z.history) == (1080, 8000, "^hADa")


def test_syn_ack_then_rst_is_not_flipped(tmp_path: Path) -> None:
    """Rule 1: with only the SYN-ACK and the client's RST, Zeek keeps the SYN-ACK's
    sender as originator (history 'Hr')."""
    _, t = _run(tmp_path, [_seg(S, 8000, C, 1080, "SA", 500, 101), _seg(C, 1080, S, 8000, "R", 101)],
                [1.0, 1.1])
    (z,) = t.zeek_connections()
    assert (z.orig.port, z.history) == (8000, "Hr")


def test_rst_before_syn_ack_keeps_the_syn_ack_at_zero(tmp_path: Path) -> None:
    """Rule 2.  tshark: SYN 0/0, RST-ACK 1/1, SYN-ACK 0/1, ACK 1/1, data 1/1, ACK 1/6:
    the responder's base is its SYN-ACK's, not the RST's sequence number."""
    segs, _ = _run(tmp_path, [
        c("S", 1000), s("RA", 0, 1001), s("SA", 5000, 1001), c("A", 1001, 5001),
        s("PA", 5001, 1001, b"hello"), c("A", 1001, 5006),
    ], [1.0, 1.01, 1.02, 1.03, 1.04, 1.05])
    assert [(x.rel_seq, x.rel_ack) for x in segs] == [(0, None), (1, 1), (0, 1), (1, 1), (1, 1), (1, 6)]


def test_mid_stream_first_data_is_no_retransmission(tmp_path: Path) -> None:
    """Rule 3.  No SYN: the first data segment starts the originator's sequence space as
    if a SYN came just before it (Zeek's init_endpoint), so it is no 'T'; the real
    retransmission later is: Zeek 'DaT' (was 'DTa')."""
    _, t = _run(tmp_path, [
        c("PA", 100, 900, b"x" * 10), s("A", 900, 110), c("PA", 110, 900, b"y" * 10),
        c("PA", 110, 900, b"y" * 10, ipid=7),
    ], [1.0, 1.1, 1.2, 2.5])
    (z,) = t.zeek_connections()
    assert z.history == "DaT"


def test_copies_are_duplicates_and_what_tshark_calls_them(tmp_path: Path) -> None:
    """Rule 4.  Each segment captured twice within microseconds (same IP id): tshark
    calls the copied SYN, SYN-ACK, data and FIN retransmissions (the SYN-ACK and FIN
    too: not out-of-order, a copy ends where the original did) and says nothing of the
    RST-ACK's copy; hsviz says so and adds 'duplicate' to every copy."""
    segs, _ = _run(tmp_path, [
        c("S", 100, ipid=1), c("S", 100, ipid=1), s("SA", 500, 101, ipid=9), s("SA", 500, 101, ipid=9),
        c("A", 101, 501, ipid=2), c("PA", 101, 501, b"hello", ipid=3), c("PA", 101, 501, b"hello", ipid=3),
        s("A", 501, 106, ipid=10), c("FA", 106, 501, ipid=4), c("FA", 106, 501, ipid=4),
        s("RA", 501, 107, ipid=11), s("RA", 501, 107, ipid=11),
    ], [1.0, 1.000001, 1.01, 1.010002, 1.02, 1.03, 1.030001, 1.04, 1.05, 1.05, 1.06, 1.060001])
    copies = {2, 4, 7, 10, 12}
    for x in segs:
        tshark = {"retransmission"} if x.frame in copies - {12} else set()
        assert _flags(x) - {"duplicate"} == tshark, x.frame
        assert ("duplicate" in _flags(x)) == (x.frame in copies), x.frame


def test_distinct_packets_that_look_alike_are_not_duplicates(tmp_path: Path) -> None:
    """Two dup ACKs a receiver sends for two out-of-order segments differ in IP id;
    two bare RSTs a stack sends for two refused segments are alike by design (RFC 9293
    §3.10.7.1).  Neither is a duplicate; a copy a second later is not either."""
    segs, _ = _run(tmp_path, [
        c("S", 100), s("SA", 500, 101), c("A", 101, 501, ipid=2),
        s("A", 501, 101, ipid=20), s("A", 501, 101, ipid=21),
        c("R", 101, ipid=5), c("R", 101, ipid=5), c("R", 101, ipid=5),
    ], [1.0, 1.01, 1.02, 1.03, 1.0301, 1.04, 1.0400001, 2.5])
    assert not any("duplicate" in _flags(x) for x in segs)


def test_zeek_starts_a_new_connection_after_a_reject_and_after_its_attempt_timer(tmp_path: Path) -> None:
    """tshark keeps one stream; Zeek logs a SYN re-sent after a RST-ACK as a new
    connection (IsReuse: a SYN after a close), and drops an originator whose SYN got
    no answer for 5 s (tcp_attempt_delay): what follows is a connection with no SYN."""
    segs, t = _run(tmp_path, [
        c("S", 100), s("RA", 0, 101), c("S", 100), s("RA", 0, 101),
    ], [1.0, 1.05, 1.5, 1.55])
    assert {x.conn for x in segs} == {0}
    assert [(z.conn_state, z.history, z.orig_pkts, z.resp_pkts) for z in t.zeek_connections()] == [
        ("REJ", "Sr", 1, 1), ("REJ", "Sr", 1, 1)]
    _, t = _run(tmp_path, [c("S", 100), c("A", 101, 501), c("PA", 101, 501, b"x" * 10),
                           c("PA", 111, 501, b"y" * 10)], [1.0, 1.1, 1.2, 7.0])
    assert [(z.conn_state, z.history, z.orig_bytes) for z in t.zeek_connections()] == [
        ("S0", "SAD", 10), ("OTH", "D", 10)]
