"""The tracker's fast path (``Tracker._steady``) is only an optimisation.

Turning it off must not change a single Segment or summary: every test here runs
the same packets through a normal Tracker and through one whose fast path always
declines, and compares everything.  The packets are the real corpus (read in
place) and seeded random streams: plausible conversations perturbed with
retransmissions, gaps, overlaps, zero windows, keep-alives, window changes,
RSTs, half-closes, port reuse, snaplen-cut payloads and reordering, which put
segments on both sides of every condition the fast path tests.  ``feed_all``
(the summaries-only entry point) is checked against ``feed`` the same way.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from handshake_viz.decode import open_capture
from handshake_viz.model import Packet
from handshake_viz.track import Tracker

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TRACES = sorted([*(CORPUS / "traces").glob("*"), *(CORPUS / "batch2" / "traces").glob("*")]) if CORPUS.is_dir() else []

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MASK = 0xFFFFFFFF
OPTIONS = [
    b"",
    b"\x01\x01\x08\x0a\x00\x00\x00\x05\x00\x00\x00\x07",  # NOP NOP timestamps
    b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03\x03\x07",
    b"\x01\x01\x05\x0a\x00\x00\x00\x10\x00\x00\x00\x20",  # SACK block
    b"\x03\x03\x0e\x00",  # window scale 14
]


class _NoFastPath(Tracker):
    """Every segment through the general path."""

    def _steady(self, fwd, *fields):  # type: ignore[no-untyped-def,override]
        return None


class _CountingTracker(Tracker):
    def __init__(self) -> None:
        super().__init__()
        self.fast = 0

    def _steady(self, fwd, *fields):  # type: ignore[no-untyped-def,override]
        seg = super()._steady(fwd, *fields)
        self.fast += seg is not None
        return seg


def _random_stream(rng: random.Random, n_conns: int, n_packets: int, calm: float = 1.0) -> list[Packet]:
    """A few interleaved conversations, with the perturbations the module docstring lists
    (``calm`` > 1 makes them that many times rarer)."""
    hosts = ["10.0.0.1", "10.0.0.2", "fe80::1"]
    conns = []
    for i in range(n_conns):
        c = (rng.choice(hosts), rng.choice([40000 + i, 80, 6669, 40000]))
        s = (rng.choice(hosts), rng.choice([80, 8080, 443, 6669]))
        isn = {"c": rng.choice([rng.getrandbits(32), MASK - rng.randrange(3000)]),
               "s": rng.choice([rng.getrandbits(32), MASK - rng.randrange(3000)])}
        conns.append({"ends": {"c": c, "s": s}, "isn": isn, "nxt": dict(isn), "win": {"c": 1000, "s": 2000},
                      "acked": {"c": None, "s": None}, "sent": [],
                      "stage": rng.choice(["syn", "syn", "syn", "est", "synack"])})
    out: list[Packet] = []
    t = 1_700_000_000.0
    for frame in range(1, n_packets + 1):
        cn = rng.choice(conns)
        who = rng.choice("cs")
        flags, length = ACK, 0
        stage = cn["stage"]
        if stage == "syn":
            who, flags, cn["stage"] = "c", SYN, "synack"
            if rng.random() < 0.2:  # port reuse or a SYN retransmitted with a new ISN
                cn["isn"]["c"] = cn["nxt"]["c"] = rng.getrandbits(32)
        elif stage == "synack":
            who, flags, cn["stage"] = "s", SYN | ACK, "ack"
        elif stage == "ack":
            who, cn["stage"] = "c", "est"
            for side in "cs":
                if cn["nxt"][side] == cn["isn"][side]:
                    cn["nxt"][side] = (cn["nxt"][side] + 1) & MASK
        else:
            r = rng.random()
            if r >= 0.8 and rng.random() * calm > 1.0:
                r = 0.6  # calm: a plain ACK instead of a FIN, RST, SYN or odd flags
            if r < 0.45:
                length = rng.choice([1, 10, 100, 1448, 0])
                flags = PSH | ACK if rng.random() < 0.8 else ACK
            elif r < 0.8:
                pass
            elif r < 0.85:
                flags, length = FIN | ACK, rng.choice([0, 0, 5])
            elif r < 0.87:
                flags = RST | (ACK if rng.random() < 0.5 else 0)
            elif r < 0.89:
                who, flags, cn["stage"] = "c", SYN, "synack"
            elif r < 0.9:
                flags = FIN
            elif r < 0.91:
                flags, length = rng.randrange(256), rng.choice([0, 3])
        other = "s" if who == "c" else "c"
        src, dst = cn["ends"][who], cn["ends"][other]
        seq = cn["isn"][who] if flags & SYN else cn["nxt"][who]
        ack = cn["nxt"][other] if flags & ACK else 0
        if flags & SYN and flags & ACK:
            ack = (cn["isn"]["c"] + 1) & MASK
        q = rng.random() * calm
        if q < 0.05 and cn["sent"]:
            src, dst, seq, ack, flags, length = rng.choice(cn["sent"][-10:])  # retransmission
        elif q < 0.08:
            seq = (seq - rng.choice([1, 10, 100])) & MASK  # keep-alive, overlap
        elif q < 0.10:
            seq = (seq + rng.choice([1, 100, 1448])) & MASK  # a gap in the capture
        elif q < 0.12:
            ack = (ack + rng.choice([1, 100, -1, -100])) & MASK
        if length and cn["acked"][other] is not None and rng.random() < 0.2:
            fill = (cn["acked"][other] + cn["win"][other] - seq) & MASK  # fill the window
            if 0 < fill < 5000:
                length = fill
        if flags & ACK:
            cn["acked"][who] = ack
        w = rng.random() * calm
        if w < 0.04:
            win = 0
        else:
            if w < 0.08:
                cn["win"][who] = rng.choice([500, 1000, 2000, 65535])
            win = cn["win"][who]
        if (seq == cn["nxt"][who] or flags & SYN) and not flags & RST:
            cn["nxt"][who] = (seq + length + (1 if flags & (SYN | FIN) else 0)) & MASK
        cn["sent"].append((src, dst, seq, ack, flags, length))
        t += rng.choice([0.0, 0.000001, 0.0001, 0.001, 0.01, 0.5])
        captured = length if rng.random() < 0.9 else rng.randrange(length + 1)
        options = OPTIONS[1] if rng.random() < 0.6 else rng.choice(OPTIONS)
        out.append(Packet(frame, t, src[0], src[1], dst[0], dst[1], seq, ack, flags, win, length,
                          b"x" * captured, options, 6 if ":" in src[0] else 4))
    for i in range(len(out) - 1):
        if rng.random() * calm < 0.03:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _same_either_way(packets: list[Packet]) -> int:
    fast, slow = _CountingTracker(), _NoFastPath()
    for p in packets:
        a, b = fast.feed(p), slow.feed(p)
        assert a == b, f"frame {p.frame}: fast path {a}\n general path {b}"
    assert fast.summaries() == slow.summaries()
    summaries_only = Tracker()
    assert summaries_only.feed_all(iter(packets)) == len(packets)
    assert summaries_only.summaries() == slow.summaries()
    return fast.fast


def _same_either_way_checked(packets: list[Packet], statuses: list[int]) -> int:
    """``_same_either_way`` with every packet's checksum status given
    (``Tracker.feed_checked``): flagged segments and Zeek's ignoring them must not
    change what the fast path decides for the rest."""
    fast, slow = _CountingTracker(), _NoFastPath()
    for p, status in zip(packets, statuses, strict=True):
        fields = (p.frame, p.ts, p.src, p.sport, p.dst, p.dport, p.seq, p.ack, p.flags, p.win,
                  p.length, p.payload, p.raw_options, p.ip_version, p.ip_id, status)
        a, b = fast.feed_checked(*fields), slow.feed_checked(*fields)
        assert a == b, f"frame {p.frame} ({status}): fast path {a}\n general path {b}"
    assert fast.summaries() == slow.summaries()
    assert fast.zeek_connections() == slow.zeek_connections()
    return fast.fast


@pytest.mark.parametrize("calm", [1.0, 20.0])
@pytest.mark.parametrize("seed", range(20))
def test_random_streams_with_checksums_same_either_way(seed, calm):
    from handshake_viz.checksum import STATUS_NAMES

    rng = random.Random(5000 + seed)
    packets = _random_stream(rng, rng.randint(1, 6), rng.randint(50, 400), calm)
    statuses = [0 if rng.random() < 0.8 else rng.randrange(len(STATUS_NAMES)) for _ in packets]
    _same_either_way_checked(packets, statuses)


@pytest.mark.parametrize("calm", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("seed", range(40))
def test_random_streams_same_with_and_without_the_fast_path(seed, calm):
    rng = random.Random(seed)
    _same_either_way(_random_stream(rng, rng.randint(1, 6), rng.randint(50, 400), calm))


def test_random_streams_do_take_the_fast_path():
    taken = sum(_same_either_way(_random_stream(random.Random(1000 + i), 2, 300, 20.0))
                for i in range(5))
    assert taken > 300  # of 1500: otherwise the comparisons above prove little


def test_a_clean_conversation_is_mostly_fast_path():
    rng = random.Random(7)
    packets = []
    isn_c, isn_s = rng.getrandbits(32), MASK - 500  # the server's numbers wrap
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 80)

    def pkt(src, dst, flags, seq, ack, length=0):
        packets.append(Packet(len(packets) + 1, 100.0 + len(packets) * 0.001, *src, *dst,
                              seq & MASK, ack & MASK, flags, 500, length, b"x" * length, OPTIONS[1]))

    pkt(c, s, SYN, isn_c, 0)
    pkt(s, c, SYN | ACK, isn_s, isn_c + 1)
    pkt(c, s, ACK, isn_c + 1, isn_s + 1)
    a, b = isn_c + 1, isn_s + 1
    for _ in range(30):
        pkt(c, s, PSH | ACK, a, b, 100)
        a += 100
        pkt(s, c, PSH | ACK, b, a, 300)
        b += 300
        pkt(c, s, ACK, a, b)
    pkt(c, s, FIN | ACK, a, b)
    pkt(s, c, FIN | ACK, b, a + 1)
    pkt(c, s, ACK, a + 1, b + 1)
    taken = _same_either_way(packets)
    assert taken >= 85  # of 96: all but the handshake, the first data each way and the close


@pytest.mark.skipif(not TRACES, reason=f"third-party corpus not found at {CORPUS}")
@pytest.mark.parametrize("trace", TRACES, ids=lambda p: p.name)
def test_corpus_same_with_and_without_the_fast_path(trace):
    with open_capture(trace) as reader:
        packets = list(reader)
    _same_either_way(packets)
    with open_capture(trace) as reader:
        statuses = [f[-1] for f in reader.records(lambda *f: f, verify_checksums=True)]
    _same_either_way_checked(packets, statuses)


class _Conversation:
    """Scripted packets: ``send("c", flags, seq, ack, length, at)`` with numbers relative to
    each side's ISN and times in ms."""

    def __init__(self) -> None:
        self.isn = {"c": 1000, "s": MASK - 99}  # the server's numbers wrap
        self.ends = {"c": ("10.0.0.1", 40000), "s": ("10.0.0.2", 80)}
        self.packets: list[Packet] = []

    def send(self, who: str, flags: int, seq: int, ack: int = 0, length: int = 0, at: float = 0.0) -> None:
        other = "s" if who == "c" else "c"
        self.packets.append(Packet(
            len(self.packets) + 1, 100.0 + at / 1000, *self.ends[who], *self.ends[other],
            (self.isn[who] + seq) & MASK, (self.isn[other] + ack) & MASK if flags & ACK else 0,
            flags, 500, length, b"x" * length, OPTIONS[1]))

    def open(self) -> None:
        self.send("c", SYN, 0, at=0)
        self.send("s", SYN | ACK, 0, 1, at=1)
        self.send("c", ACK, 1, 1, at=2)
        self.send("c", PSH | ACK, 1, 1, 10, at=3)  # first data each way: Zeek's D letters
        self.send("s", PSH | ACK, 1, 11, 10, at=4)


def test_a_new_ack_on_the_fast_path_resets_the_duplicate_ack_count():
    conv = _Conversation()
    conv.open()
    conv.send("c", PSH | ACK, 11, 11, 100, at=10)
    conv.send("c", PSH | ACK, 111, 11, 100, at=11)
    conv.send("s", ACK, 11, 11, at=12)
    conv.send("s", ACK, 11, 11, at=13)  # duplicate ACKs: the count is 2
    conv.send("s", ACK, 11, 211, at=14)  # a new ACK (fast path): the count is 0 again
    conv.send("c", PSH | ACK, 211, 11, 100, at=15)
    conv.send("s", ACK, 11, 211, at=16)  # one duplicate: 1, not 3
    conv.send("c", PSH | ACK, 211, 11, 100, at=17)  # a retransmission, but not a fast one
    assert _same_either_way(conv.packets) >= 2
    segs = list(map(Tracker().feed, conv.packets))
    names = [a.value for a in segs[-1].analysis]
    assert "retransmission" in names and "fast-retransmission" not in names, names


def test_data_on_the_fast_path_moves_the_last_ack_time():
    conv = _Conversation()
    conv.open()
    conv.send("c", PSH | ACK, 11, 11, 100, at=10)
    conv.send("c", PSH | ACK, 111, 11, 100, at=11)
    conv.send("s", ACK, 11, 111, at=12)
    conv.send("s", ACK, 11, 111, at=13)
    conv.send("s", ACK, 11, 111, at=14)  # duplicate ACKs of 111
    conv.send("s", PSH | ACK, 11, 111, 50, at=30)  # data with the same ACK (fast path)
    conv.send("c", PSH | ACK, 111, 61, 100, at=40)  # 10 ms after that ACK: fast retransmission
    assert _same_either_way(conv.packets) >= 1
    segs = list(map(Tracker().feed, conv.packets))
    assert "fast-retransmission" in [a.value for a in segs[-1].analysis]
