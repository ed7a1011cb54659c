"""The state machine, walked through scripted segment sequences.

Each script is a list of (direction, flags, seq, ack, payload length) steps on one
4-tuple; after every step the test checks the label, the phase and *both* states,
h11-style.  Sequence numbers are relative to ISNs chosen per test, so the same
script can be replayed near 2**32 to check wraparound.
"""

from __future__ import annotations

import pytest

from handshake_viz.model import Analysis, Direction, Label, Packet, Phase, Segment, TcpState
from handshake_viz.track import Tracker, track

S = TcpState
C, SRV = ("10.0.0.1", 40000), ("10.0.0.2", 80)

FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


class Script:
    """Build packets for a client/server pair with chosen ISNs."""

    def __init__(self, isn_c: int = 1000, isn_s: int = 5000, client=C, server=SRV) -> None:
        self.isn = {"c": isn_c, "s": isn_s}
        self.ends = {"c": client, "s": server}
        self.frame = 0
        self.t = 100.0

    def pkt(self, who: str, flags: str, seq: int, ack: int = 0, length: int = 0,
            win: int = 1000, dt: float = 0.01) -> Packet:
        """``seq``/``ack`` are relative: seq to the sender's ISN, ack to the receiver's."""
        self.frame += 1
        self.t += dt
        other = "s" if who == "c" else "c"
        (src, sport), (dst, dport) = self.ends[who], self.ends[other]
        bits = 0
        for ch in flags:
            bits |= FLAG_BITS[ch]
        raw_ack = (self.isn[other] + ack) & 0xFFFFFFFF if "A" in flags else 0
        return Packet(self.frame, self.t, src, sport, dst, dport,
                      (self.isn[who] + seq) & 0xFFFFFFFF, raw_ack, bits, win, length,
                      b"x" * length)


def walk(steps, *, isn_c=1000, isn_s=5000, tracker=None):
    """Feed steps and check each expected (label, phase, client state, server state)."""
    sc = Script(isn_c, isn_s)
    tracker = tracker or Tracker()
    segments = []
    for i, (who, flags, seq, ack, length, label, phase, cs, ss) in enumerate(steps, 1):
        seg = tracker.feed(sc.pkt(who, flags, seq, ack, length))
        got = (seg.label, seg.phase, seg.client_state, seg.server_state)
        assert got == (label, phase, cs, ss), f"step {i} ({who} {flags} seq={seq} ack={ack}): {got}"
        segments.append(seg)
    return tracker, segments


L, P = Label, Phase
HS, DA, CL, RS = P.HANDSHAKE, P.DATA, P.CLOSE, P.RESET

OPEN = [
    ("c", "S", 0, 0, 0, L.SYN, HS, S.SYN_SENT, S.LISTEN),
    ("s", "SA", 0, 1, 0, L.SYN_ACK, HS, S.ESTABLISHED, S.SYN_RECEIVED),
    ("c", "A", 1, 1, 0, L.ACK, HS, S.ESTABLISHED, S.ESTABLISHED),
]
EXCHANGE = [
    ("c", "PA", 1, 1, 6, L.DATA, DA, S.ESTABLISHED, S.ESTABLISHED),
    ("s", "A", 1, 7, 0, L.ACK, DA, S.ESTABLISHED, S.ESTABLISHED),
    ("s", "PA", 1, 7, 6, L.DATA, DA, S.ESTABLISHED, S.ESTABLISHED),
    ("c", "PA", 7, 7, 6, L.PIGGYBACK, DA, S.ESTABLISHED, S.ESTABLISHED),
    ("s", "PA", 7, 13, 6, L.PIGGYBACK, DA, S.ESTABLISHED, S.ESTABLISHED),
    ("c", "A", 13, 13, 0, L.ACK, DA, S.ESTABLISHED, S.ESTABLISHED),
]


def test_normal_open_exchange_and_three_way_close_with_fin_ack():
    tracker, segs = walk(OPEN + EXCHANGE + [
        ("c", "FA", 13, 13, 0, L.FIN, CL, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("s", "FA", 13, 14, 0, L.FIN_ACK, CL, S.TIME_WAIT, S.LAST_ACK),
        ("c", "A", 14, 14, 0, L.ACK, CL, S.TIME_WAIT, S.CLOSED),
    ])
    assert [s.rel_seq for s in segs[:3]] == [0, 0, 1]
    assert [s.rel_ack for s in segs[:3]] == [None, 1, 1]
    summary = tracker.summaries()[0]
    assert (summary.conn_state, summary.history) == ("SF", "ShADadFf")
    assert (summary.bytes_c2s, summary.bytes_s2c) == (12, 12)
    assert tracker.is_finished(0)


def test_four_way_close_keeps_fin_label_on_the_second_fin():
    walk(OPEN + [
        ("c", "FA", 1, 1, 0, L.FIN, CL, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("s", "A", 1, 2, 0, L.ACK, CL, S.FIN_WAIT_2, S.CLOSE_WAIT),
        # the FIN acknowledges nothing new: it is a plain FIN, not the merged FIN-ACK
        ("s", "FA", 1, 2, 0, L.FIN, CL, S.TIME_WAIT, S.LAST_ACK),
        ("c", "A", 2, 2, 0, L.ACK, CL, S.TIME_WAIT, S.CLOSED),
    ])


def test_server_closes_first_and_ends_in_time_wait():
    walk(OPEN + [
        ("s", "FA", 1, 1, 0, L.FIN, CL, S.CLOSE_WAIT, S.FIN_WAIT_1),
        ("c", "FA", 1, 2, 0, L.FIN_ACK, CL, S.LAST_ACK, S.TIME_WAIT),
        ("s", "A", 2, 2, 0, L.ACK, CL, S.CLOSED, S.TIME_WAIT),
    ])


def test_half_close_data_keeps_flowing_after_the_first_fin():
    walk(OPEN + [
        ("c", "FA", 1, 1, 0, L.FIN, CL, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("s", "A", 1, 2, 0, L.ACK, CL, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("s", "PA", 1, 2, 100, L.DATA, DA, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("c", "A", 2, 101, 0, L.ACK, DA, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("s", "PA", 101, 2, 50, L.DATA, DA, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("s", "FA", 151, 2, 0, L.FIN, CL, S.TIME_WAIT, S.LAST_ACK),
        ("c", "A", 2, 152, 0, L.ACK, CL, S.TIME_WAIT, S.CLOSED),
    ])


def test_simultaneous_open():
    walk([
        ("c", "S", 0, 0, 0, L.SYN, HS, S.SYN_SENT, S.LISTEN),
        ("s", "S", 0, 0, 0, L.SYN, HS, S.SYN_RECEIVED, S.SYN_SENT),
        ("c", "SA", 0, 1, 0, L.SYN_ACK, HS, S.SYN_RECEIVED, S.ESTABLISHED),
        ("s", "SA", 0, 1, 0, L.SYN_ACK, HS, S.ESTABLISHED, S.ESTABLISHED),
    ])


def test_simultaneous_close_passes_through_closing():
    walk(OPEN + [
        ("c", "FA", 1, 1, 0, L.FIN, CL, S.FIN_WAIT_1, S.CLOSE_WAIT),
        # sent before the client's FIN arrived: it does not acknowledge it
        ("s", "FA", 1, 1, 0, L.FIN, CL, S.CLOSING, S.CLOSING),
        ("c", "A", 2, 2, 0, L.ACK, CL, S.CLOSING, S.TIME_WAIT),
        ("s", "A", 2, 2, 0, L.ACK, CL, S.TIME_WAIT, S.TIME_WAIT),
    ])


def test_refused_connection_syn_answered_by_rst():
    tracker, segs = walk([
        ("c", "S", 0, 0, 0, L.SYN, HS, S.SYN_SENT, S.LISTEN),
        ("s", "RA", 0, 1, 0, L.RST, RS, S.CLOSED, S.CLOSED),
    ])
    summary = tracker.summaries()[0]
    assert (summary.conn_state, summary.history) == ("REJ", "Sr")
    assert tracker.is_finished(0)


def test_rst_after_established_closes_both_sides():
    tracker, _ = walk(OPEN + EXCHANGE[:1] + [
        ("s", "RA", 1, 7, 0, L.RST, RS, S.CLOSED, S.CLOSED),
    ])
    assert tracker.summaries()[0].conn_state == "RSTR"


def test_syn_retransmitted_after_no_answer():
    _, segs = walk([
        ("c", "S", 0, 0, 0, L.SYN, HS, S.SYN_SENT, S.LISTEN),
        ("c", "S", 0, 0, 0, L.SYN, HS, S.SYN_SENT, S.LISTEN),
        ("c", "S", 0, 0, 0, L.SYN, HS, S.SYN_SENT, S.LISTEN),
    ])
    assert [s.analysis for s in segs] == [(), (Analysis.RETRANSMISSION,), (Analysis.RETRANSMISSION,)]
    assert {s.conn for s in segs} == {0}


def test_mid_stream_start_guesses_roles_from_ports_and_numbers_from_one():
    sc = Script()
    tracker = Tracker()
    # first packet is server -> client data: the lower, well-known port is the server
    seg = tracker.feed(sc.pkt("s", "PA", 500, 700, 10))
    assert seg.dir is Direction.S2C
    assert (seg.rel_seq, seg.rel_ack) == (1, 1)
    assert (seg.client_state, seg.server_state) == (S.ESTABLISHED, S.ESTABLISHED)
    assert seg.label is L.DATA
    summary = tracker.summaries()[0]
    assert summary.roles_guessed
    assert summary.client.port == 40000 and summary.server.port == 80


@pytest.mark.parametrize("isn_c, isn_s", [(0xFFFFFFF0, 0xFFFFFFFE), (0xFFFFFFFF, 5)])
def test_sequence_wraparound(isn_c, isn_s):
    tracker, segs = walk(OPEN + EXCHANGE + [
        ("c", "FA", 13, 13, 0, L.FIN, CL, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("s", "FA", 13, 14, 0, L.FIN_ACK, CL, S.TIME_WAIT, S.LAST_ACK),
        ("c", "A", 14, 14, 0, L.ACK, CL, S.TIME_WAIT, S.CLOSED),
    ], isn_c=isn_c, isn_s=isn_s)
    assert all(not s.analysis for s in segs), [s.analysis for s in segs]
    assert [s.rel_seq for s in segs if s.dir is Direction.C2S] == [0, 1, 1, 7, 13, 13, 14]
    assert tracker.summaries()[0].bytes_c2s == 12


def test_port_reuse_with_a_new_isn_starts_a_new_connection():
    sc = Script()
    tracker = Tracker()
    convs = [tracker.feed(p).conn for p in [
        sc.pkt("c", "S", 0), sc.pkt("s", "RA", 0, 1),
    ]]
    sc.isn["c"] += 100000
    convs += [tracker.feed(sc.pkt("c", "S", 0)).conn]
    assert convs == [0, 0, 1]
    assert len(tracker.summaries()) == 2


def test_reordered_handshake_syn_ack_captured_first():
    sc = Script()
    tracker = Tracker(likely_server_ports=())
    seq = [tracker.feed(p) for p in (
        sc.pkt("s", "SA", 0, 1), sc.pkt("c", "S", 0), sc.pkt("c", "A", 1, 1))]
    assert [s.dir for s in seq] == [Direction.S2C, Direction.C2S, Direction.C2S]
    assert seq[-1].client_state is S.ESTABLISHED and seq[-1].server_state is S.ESTABLISHED
    # Zeek made the SYN-ACK's sender the originator, then flipped on the SYN.
    assert tracker.summaries()[0].history == "Hs^A"


def test_dup_acks_then_fast_retransmission():
    sc = Script()
    t = Tracker()
    packets = [
        sc.pkt("c", "S", 0), sc.pkt("s", "SA", 0, 1), sc.pkt("c", "A", 1, 1),
        sc.pkt("s", "A", 1, 1, 100, dt=0.001),
        sc.pkt("s", "A", 201, 1, 100, dt=0.001),  # 101..201 lost
        sc.pkt("c", "A", 1, 101, dt=0.001),
        sc.pkt("c", "A", 1, 101, dt=0.001),
        sc.pkt("c", "A", 1, 101, dt=0.001),
        sc.pkt("s", "A", 101, 1, 100, dt=0.001),
    ]
    flags = [t.feed(p).analysis for p in packets]
    assert flags[4] == (Analysis.LOST_SEGMENT,)
    assert flags[6] == (Analysis.DUP_ACK,) and flags[7] == (Analysis.DUP_ACK,)
    assert flags[8] == (Analysis.RETRANSMISSION, Analysis.FAST_RETRANSMISSION)


def test_zero_window_and_window_update():
    sc = Script()
    t = Tracker()
    for p in (sc.pkt("c", "S", 0), sc.pkt("s", "SA", 0, 1), sc.pkt("c", "A", 1, 1)):
        t.feed(p)
    zero = t.feed(sc.pkt("c", "A", 1, 1, win=0))
    update = t.feed(sc.pkt("c", "A", 1, 1, win=4000))
    assert Analysis.ZERO_WINDOW in zero.analysis
    assert update.analysis == (Analysis.WINDOW_UPDATE,)


def test_track_generator_and_states_are_frozen_records():
    sc = Script()
    segs = list(track([sc.pkt("c", "S", 0), sc.pkt("s", "SA", 0, 1)]))
    assert [s.label for s in segs] == [L.SYN, L.SYN_ACK]
    with pytest.raises(AttributeError):
        segs[0].label = L.RST  # type: ignore[misc]


def test_feed_fields_is_shaped_like_packet_and_record_gets_segments_fields():
    """The two positional interfaces are Packet's and Segment's field lists, name for
    name: ``reader.records(tracker.feed_fields)`` and ``Tracker(record=SomeRecord)``."""
    import dataclasses
    import inspect

    params = list(inspect.signature(Tracker.feed_fields).parameters.values())[1:]
    empty = inspect.Parameter.empty
    assert [(p.name, p.default) for p in params] == [
        (f.name, empty if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(Packet)]
    sc = Script()
    packets = [sc.pkt("c", "S", 0), sc.pkt("s", "SA", 0, 1), sc.pkt("c", "A", 1, 1),
               sc.pkt("c", "PA", 1, 1, 5), sc.pkt("s", "A", 1, 6)]
    plain, raw = Tracker(), Tracker(record=lambda *fields: fields)
    for p in packets:
        assert Segment(*raw.feed(p)) == plain.feed(p)


def test_unacceptable_segment_moves_no_receiver_state():
    # fin_retransmission.pcap's shape: the client closes before the SYN-ACK arrives and
    # then sends FIN+ACK at its SYN's own sequence number: wholly before the server's
    # RCV.NXT, so the server only re-ACKs it (RFC 9293 §3.10.7.4) and stays SYN-RECEIVED.
    walk([
        ("c", "S", 0, 0, 0, L.SYN, HS, S.SYN_SENT, S.LISTEN),
        ("c", "F", 0, 0, 0, L.FIN, CL, S.FIN_WAIT_1, S.LISTEN),
        ("s", "SA", 0, 1, 0, L.SYN_ACK, HS, S.FIN_WAIT_1, S.SYN_RECEIVED),
        ("c", "FA", 0, 1, 0, L.FIN, CL, S.FIN_WAIT_1, S.SYN_RECEIVED),
        ("s", "R", 1, 0, 0, L.RST, RS, S.CLOSED, S.CLOSED),
    ])


def test_keep_alive_before_rcv_nxt_changes_nothing():
    walk(OPEN + [
        ("c", "A", 0, 1, 0, L.ACK, DA, S.ESTABLISHED, S.ESTABLISHED),
    ])
