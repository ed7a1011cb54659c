"""Wireshark's sequence analysis on its own: a few segments each, straight into
``seqanalysis.analyze``.

The main check is tests/test_track_corpus.py (every packet of real captures against
tshark's own flags); these name the conditions one at a time.
"""

from __future__ import annotations

from handshake_viz.model import Analysis
from handshake_viz.seqanalysis import SeqFlow, analysis_names, analyze, scaled_window

A = Analysis
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
WSCALE_7 = b"\x01\x03\x03\x07"  # NOP, window scale 7


class Pair:
    """Two directions of one connection; ``send`` analyses one segment.  Sequence
    numbers are relative to each side's ISN, times in milliseconds."""

    def __init__(self, first_rtt: float | None = 0.001) -> None:
        self.flows = {"c": SeqFlow(), "s": SeqFlow()}
        self.isn = {"c": 1000, "s": 5000}
        self.t = 100.0
        self.first_rtt = first_rtt

    def send(self, who: str, flags: str, seq: int, ack: int = 0, length: int = 0,
             win: int = 1000, dt: float = 10.0, options: bytes = b"") -> tuple[Analysis, ...]:
        other = "s" if who == "c" else "c"
        fwd, rev = self.flows[who], self.flows[other]
        bits = 0
        for ch in flags:
            bits |= FLAG_BITS[ch]
        self.t += dt / 1000
        raw_ack = self.isn[other] + ack if "A" in flags else 0
        window = scaled_window(fwd, rev, bits, win, options)
        return analysis_names(analyze(fwd, rev, bits, self.isn[who] + seq, raw_ack, length,
                                      self.t, window, self.first_rtt))

    def open(self, options: bytes = b"") -> None:
        assert self.send("c", "S", 0, options=options) == ()
        assert self.send("s", "SA", 0, 1, options=options) == ()
        assert self.send("c", "A", 1, 1) == ()


def test_in_order_data_and_acks_flag_nothing():
    pair = Pair()
    pair.open()
    assert pair.send("c", "PA", 1, 1, 100) == ()
    assert pair.send("s", "A", 1, 101) == ()
    assert pair.send("s", "PA", 1, 101, 50) == ()
    assert pair.send("c", "A", 101, 51) == ()


def test_duplicate_acks_then_fast_retransmission():
    pair = Pair()
    pair.open()
    assert pair.send("c", "PA", 1, 1, 100, dt=1) == ()
    assert pair.send("c", "PA", 201, 1, 100, dt=1) == (A.LOST_SEGMENT,)  # 101..201 not captured
    assert pair.send("s", "A", 1, 101, dt=1) == ()
    assert pair.send("s", "A", 1, 101, dt=1) == (A.DUP_ACK,)
    assert pair.send("s", "A", 1, 101, dt=1) == (A.DUP_ACK,)
    assert pair.flows["s"].dupacks == 2
    assert pair.send("c", "PA", 101, 1, 100, dt=1) == (A.RETRANSMISSION, A.FAST_RETRANSMISSION)


def test_a_dup_ack_needs_the_same_window():
    pair = Pair()
    pair.open()
    pair.send("c", "PA", 1, 1, 100)
    assert pair.send("s", "A", 1, 101) == ()
    assert pair.send("s", "A", 1, 101, win=2000) == (A.WINDOW_UPDATE,)
    assert pair.send("s", "A", 1, 101, win=2000) == (A.DUP_ACK,)


def test_retransmission_after_the_out_of_order_bound():
    pair = Pair(first_rtt=0.002)
    pair.open()
    pair.send("c", "PA", 1, 1, 100)
    pair.send("c", "PA", 101, 1, 100, dt=1)
    # long after the last new data (10 ms > the 2 ms first RTT): resent
    assert pair.send("c", "PA", 1, 1, 100, dt=10) == (A.RETRANSMISSION,)


def test_out_of_order_within_the_first_rtt():
    pair = Pair(first_rtt=0.005)
    pair.open()
    pair.send("c", "PA", 101, 1, 100, dt=1)  # 1..101 is late
    # sooner than one RTT after 101..201: the earlier segment, reordered, not resent
    assert pair.send("c", "PA", 1, 1, 100, dt=1) == (A.OUT_OF_ORDER,)


def test_spurious_retransmission_of_acknowledged_data():
    pair = Pair()
    pair.open()
    pair.send("c", "PA", 1, 1, 100)
    pair.send("s", "A", 1, 101)
    assert pair.send("c", "PA", 1, 1, 100) == (A.RETRANSMISSION, A.SPURIOUS_RETRANSMISSION)


def test_window_full_when_data_reaches_the_peers_window():
    pair = Pair()
    pair.open()
    pair.send("s", "A", 1, 1, win=300, dt=1)  # the server's window: 300 bytes from ack 1
    assert pair.send("c", "PA", 1, 1, 200) == ()
    assert pair.send("c", "PA", 201, 1, 100) == (A.WINDOW_FULL,)


def test_zero_window_probe_and_its_ack():
    pair = Pair()
    pair.open()
    assert pair.send("s", "A", 1, 1, win=0) == (A.ZERO_WINDOW,)
    assert pair.send("c", "PA", 1, 1, 1) == (A.ZERO_WINDOW_PROBE,)
    # the probe's ACK (nothing new, window still 0) is neither a dup-ack nor reported
    assert pair.send("s", "A", 1, 1, win=0) == (A.ZERO_WINDOW,)


def test_keep_alive_and_its_ack():
    pair = Pair()
    pair.open()
    pair.send("c", "PA", 1, 1, 100)
    pair.send("s", "A", 1, 101)
    assert pair.send("c", "A", 100, 1, dt=1000) == (A.KEEP_ALIVE,)  # one before next seq
    assert pair.send("s", "A", 1, 101) == (A.KEEP_ALIVE_ACK,)
    assert pair.send("c", "A", 100, 1, 1, dt=1000) == (A.KEEP_ALIVE,)  # with one garbage byte


def test_ack_of_data_never_seen():
    pair = Pair()
    pair.open()
    pair.send("c", "PA", 1, 1, 100)
    assert pair.send("s", "A", 1, 301) == (A.ACK_UNSEEN,)


def test_window_scale_only_when_both_syns_offer_it():
    pair = Pair()
    pair.open(options=WSCALE_7)
    assert pair.flows["c"].win_scale == pair.flows["s"].win_scale == 7
    pair.send("c", "PA", 1, 1, 100, win=10)
    assert pair.flows["c"].window == 10 << 7
    one = Pair()
    one.send("c", "S", 0, options=WSCALE_7)
    one.send("s", "SA", 0, 1)  # no option: no scaling either way
    assert one.flows["c"].win_scale == one.flows["s"].win_scale == 0


def test_names_come_in_wiresharks_order_once_each():
    from handshake_viz.seqanalysis import A_DUPACK, A_FAST, A_RETRANS, A_SPURIOUS, A_ZWIN

    assert analysis_names(0) == ()
    assert analysis_names(A_FAST | A_RETRANS) == (A.RETRANSMISSION, A.FAST_RETRANSMISSION)
    assert analysis_names(A_SPURIOUS) == (A.RETRANSMISSION, A.SPURIOUS_RETRANSMISSION)
    assert analysis_names(A_ZWIN | A_DUPACK) == (A.DUP_ACK, A.ZERO_WINDOW)
    assert analysis_names(A_ZWIN | A_DUPACK) is analysis_names(A_ZWIN | A_DUPACK)
