"""checksum.py and ``--verify-checksums``: every TCP checksum verified, as tshark's
``tcp.check_checksum`` and Zeek's default do, off unless asked for.

A scripted capture (scapy writes the packets) holds each case: checksums that verify,
one damaged on the way and then retransmitted, offloaded ones (the field holds the
pseudo-header's sum: a capture on the sending host), a zero field, one segment cut by
the snaplen, over IPv4 and IPv6.  tshark 4.0's validated status
(``tshark -o tcp.check_checksum:TRUE -T fields -e tcp.checksum.status``) of each frame
is stated beside it, and so is what Zeek (without ``-C``) makes of the connection,
with the reason.  The corpus is compared in tests/test_track_corpus.py.
"""

from __future__ import annotations

import io
import json
import socket
import struct
from pathlib import Path

import pytest

from handshake_viz import checksum
from handshake_viz.checksum import BAD, GOOD, LINK_SHORT, OFFLOADED, UNVERIFIABLE, tcp_checksum
from handshake_viz.cli import main
from handshake_viz.decode import open_capture
from handshake_viz.pipeline import load
from handshake_viz.track import Tracker

scapy = pytest.importorskip("scapy.all")
from scapy.all import IP, TCP, Ether, IPv6, IPv6ExtHdrRouting, raw  # noqa: E402

MAC = "02:00:00:00:00:01"


# ----------------------------------------------------------------------------- sums, written out


def ones_sum(data: bytes) -> int:
    """RFC 1071's one's complement sum of 16-bit words, the long way (the module takes
    the number modulo 0xFFFF: this checks it)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header(pkt, length: int) -> bytes:
    if IP in pkt:
        return socket.inet_aton(pkt[IP].src) + socket.inet_aton(pkt[IP].dst) + struct.pack("!BBH", 0, 6, length)
    return (socket.inet_pton(socket.AF_INET6, pkt[IPv6].src) + socket.inet_pton(socket.AF_INET6, pkt[IPv6].dst)
            + struct.pack("!I3xB", length, 6))


def frame(src: tuple[str, int], dst: tuple[str, int], flags: str, seq: int, ack: int = 0,
          payload: bytes = b"", how: str = "good") -> bytes:
    """One Ethernet frame.  ``how``: ``good`` (scapy's checksum), ``offload`` (the
    pseudo-header's sum, as a host that offloads the rest to its card leaves it),
    ``tso`` (the pseudo-header's sum without the length: segmentation offload),
    ``zero`` (left 0), ``damaged`` (good, then a payload byte changed on the way)."""
    ip = IPv6(src=src[0], dst=dst[0]) if ":" in src[0] else IP(src=src[0], dst=dst[0])
    pkt = Ether(src=MAC, dst=MAC) / ip / TCP(
        sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack, window=512) / payload
    pkt = Ether(raw(pkt))  # scapy fills in every length and checksum
    seglen = len(raw(pkt[TCP]))
    if how == "offload":
        pkt[TCP].chksum = ones_sum(pseudo_header(pkt, seglen))
    elif how == "tso":
        pkt[TCP].chksum = ones_sum(pseudo_header(pkt, 0))
    elif how == "zero":
        pkt[TCP].chksum = 0
    data = raw(pkt)
    if how == "damaged":
        data = data[:-1] + bytes([data[-1] ^ 0x20])
    assert (ones_sum(pseudo_header(pkt, seglen) + data[-seglen:]) == 0xFFFF) == (how == "good")
    return data


def pcap(frames: list[tuple[float, bytes, int]]) -> bytes:
    """A pcap file: (time, captured bytes, length on the wire) each."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, data, wire in frames:
        out.append(struct.pack("<IIII", int(ts), round((ts - int(ts)) * 1e6), len(data), wire) + data)
    return b"".join(out)


# ----------------------------------------------------------------------------- the scripted capture

C4, S4 = ("192.0.2.1", 40000), ("198.51.100.2", 5555)  # 5555: no likely server port, no role guess
C4B = ("192.0.2.1", 40001)
C6, S6 = ("2001:db8::1", 40002), ("2001:db8::2", 5555)
GET = b"GET / HTTP/1.0\r\n\r\n"  # 18 bytes
REPLY = b"HTTP/1.0 200 OK\r\n\r\nhi"  # 21: an odd length, padded for the sum

#: (sender, receiver, flags, seq, ack, payload, how, captured bytes or None): three
#: connections.  tshark's status: 1 good, 0 bad (offloaded ones too), 2 unverified.
SCRIPT = [
    # 1-10, IPv4, captured on the client, which offloads its checksums (as the corpus's
    # localhost-bad-chksum.pcap): every client segment holds the pseudo-header's sum
    (C4, S4, "S", 1000, 0, b"", "offload", None),  # tshark 0
    (S4, C4, "SA", 5000, 1001, b"", "good", None),  # 1
    (C4, S4, "A", 1001, 5001, b"", "offload", None),  # 0
    (C4, S4, "PA", 1001, 5001, GET, "offload", None),  # 0
    (S4, C4, "A", 5001, 1019, b"", "good", None),  # 1
    (S4, C4, "PA", 5001, 1019, REPLY, "good", None),  # 1
    (C4, S4, "A", 1019, 5022, b"", "offload", None),  # 0
    (C4, S4, "FA", 1019, 5022, b"", "offload", None),  # 0
    (S4, C4, "FA", 5022, 1020, b"", "good", None),  # 1
    (C4, S4, "A", 1020, 5023, b"", "tso", None),  # 0: segmentation offload's sum, no length
    # 11-21, IPv4, on the path: one segment damaged on the way, then retransmitted;
    # one cut by the snaplen
    (C4B, S4, "S", 2000, 0, b"", "good", None),  # 1
    (S4, C4B, "SA", 7000, 2001, b"", "good", None),  # 1
    (C4B, S4, "A", 2001, 7001, b"", "good", None),  # 1
    (C4B, S4, "PA", 2001, 7001, b"x" * 100, "damaged", None),  # 0
    (C4B, S4, "PA", 2001, 7001, b"x" * 100, "good", None),  # 1 (and a retransmission)
    (S4, C4B, "A", 7001, 2101, b"", "good", None),  # 1
    (S4, C4B, "PA", 7001, 2101, b"y" * 300, "good", 100),  # 2: 100 of 354 bytes captured
    (C4B, S4, "A", 2101, 7301, b"", "good", None),  # 1
    (C4B, S4, "FA", 2101, 7301, b"", "good", None),  # 1
    (S4, C4B, "FA", 7301, 2102, b"", "good", None),  # 1
    (C4B, S4, "A", 2102, 7302, b"", "good", None),  # 1
    # 22-30, IPv6: an offloaded segment from the client, a zero field from the server
    (C6, S6, "S", 3000, 0, b"", "good", None),  # 1
    (S6, C6, "SA", 9000, 3001, b"", "good", None),  # 1
    (C6, S6, "A", 3001, 9001, b"", "good", None),  # 1
    (C6, S6, "PA", 3001, 9001, b"hello", "offload", None),  # 0
    (S6, C6, "PA", 9001, 3006, b"welcome", "zero", None),  # 0
    (C6, S6, "FA", 3006, 9008, b"", "good", None),  # 1
    (S6, C6, "FA", 9008, 3007, b"", "good", None),  # 1
    (C6, S6, "A", 3007, 9009, b"", "good", None),  # 1
]
TSHARK_STATUS = [0, 1, 0, 0, 1, 1, 0, 0, 1, 0,
                 1, 1, 1, 0, 1, 1, 2, 1, 1, 1, 1,
                 1, 1, 1, 0, 0, 1, 1, 1]
STATUS_OF = {"good": GOOD, "damaged": BAD, "zero": BAD, "offload": OFFLOADED, "tso": OFFLOADED}
FLAG_OF = {GOOD: None, UNVERIFIABLE: None, BAD: "bad-checksum", OFFLOADED: "checksum-offloaded"}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checksums") / "checksums.pcap"
    records, t = [], 1_700_000_000.0
    for i, (src, dst, flags, seq, ack, payload, how, captured) in enumerate(SCRIPT):
        data = frame(src, dst, flags, seq, ack, payload, how)
        t += 0.2 if i == 14 else 0.001  # the retransmission waits for its timer
        records.append((t, data[:captured] if captured else data, len(data)))
    path.write_bytes(pcap(records))
    return path


def _statuses(path: Path) -> list[int]:
    with open_capture(path) as reader:
        return [fields[-1] for fields in reader.records(lambda *f: f, verify_checksums=True)]


def test_each_status_as_tshark_validates_it(scripted):
    want = [UNVERIFIABLE if captured else STATUS_OF[how] for *_, how, captured in SCRIPT]
    got = _statuses(scripted)
    assert got == want
    # tshark's "bad" is ours bad or offloaded; its "unverified" is a segment not captured whole
    assert [{GOOD: 1, BAD: 0, OFFLOADED: 0, UNVERIFIABLE: 2}[s] for s in got] == TSHARK_STATUS


def test_flags_and_nothing_else_change(scripted):
    plain, checked = Tracker(), Tracker()
    with open_capture(scripted) as reader:
        before = [plain.feed(p) for p in reader]
    with open_capture(scripted) as reader:
        after = list(reader.records(checked.feed_checked, verify_checksums=True))
    for b, a, status in zip(before, after, _statuses(scripted)):
        flag = FLAG_OF[status]
        assert [x.value for x in a.analysis] == [x.value for x in b.analysis] + ([flag] if flag else [])
        # labels, states, relative numbers and tshark's flags are the same: tshark's
        # sequence analysis does not look at checksums, and the tracker follows it
        assert (a.label, a.phase, a.rel_seq, a.rel_ack, a.client_state, a.server_state) == (
            b.label, b.phase, b.rel_seq, b.rel_ack, b.client_state, b.server_state)
    assert [a.value for a in after[14].analysis] == ["retransmission"]  # tshark: retransmission


def test_zeek_ignores_what_does_not_verify(scripted):
    tracker = Tracker()
    with open_capture(scripted) as reader:
        for _ in reader.records(tracker.feed_checked, verify_checksums=True):
            pass
    rows = [(z.orig.port, z.resp.port, z.conn_state, z.history, z.orig_pkts, z.resp_pkts, z.orig_bytes,
             z.resp_bytes) for z in tracker.zeek_connections()]
    assert rows == [
        # Zeek without -C drops a segment whose checksum fails before TCP sees it
        # (TCPAnalyzer::ValidateChecksum: a 'C' in the history, ChecksumError), offloaded
        # or not: it has no notion of offload.  So the client's SYN makes a connection
        # of its own with nothing in it (OTH, 'C', 0 packets)...
        (40000, 5555, "OTH", "C", 0, 0, 0, 0),
        # ... and the SYN-ACK starts another (a SYN-ACK whose seq is not the silent
        # responder's: IsReuse), whose originator is the server; the client's segments are
        # 'c' (once: 1, 10, 100 ... as 'T'), the server's ACK, data and FIN 'ADF'; only the
        # originator was seen to close: SH.  corpus: localhost-bad-chksum's conn-failed.log.
        (5555, 40000, "SH", "HcADF", 4, 0, 21, 0),
        # The damaged segment is a 'C'; its retransmission is the first data Zeek saw ('D',
        # no 'T'; without verification: ShADTadgFf).  'g': the snaplen kept 100 of the
        # server's 300 bytes, and the client acknowledges all of them (a content gap).
        (40001, 5555, "SF", "ShACDadgFf", 6, 4, 100, 300),
        # IPv6: the client's offloaded data 'C', the server's zero field 'c'.  The bytes
        # Zeek never saw are acknowledged on FINs, which Zeek does not count as content
        # gaps (no 'G'); they count in the sizes (Size(): the larger of the last sequence
        # number sent and the peer's ACK), once.
        (40002, 5555, "SF", "ShACcFf", 4, 2, 5, 7),
    ]


def test_without_verification_nothing_changes(scripted):
    out = io.StringIO()
    assert main(["analyze", str(scripted), "--jsonl"], out=out, err=io.StringIO()) == 0
    assert "checksum" not in out.getvalue()
    assert "ShADTadgFf" in out.getvalue()


def test_the_cut_segment_is_said_not_flagged(scripted):
    out, err = io.StringIO(), io.StringIO()
    assert main(["analyze", str(scripted), "--jsonl", "--verify-checksums"], out=out, err=err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    cut = next(r for r in lines if r.get("frame") == 17)
    assert cut["analysis"] == []
    assert err.getvalue() == (f"hsviz: warning: {scripted}: 1 TCP segment was not captured whole (a snaplen cut, "
                              "or a frame shorter than its IP header says): its checksum was not verified\n")
    flagged = {r["frame"]: r["analysis"] for r in lines if r["type"] == "segment" and r["analysis"]}
    assert flagged == {1: ["checksum-offloaded"], 3: ["checksum-offloaded"], 4: ["checksum-offloaded"],
                       7: ["checksum-offloaded"], 8: ["checksum-offloaded"], 10: ["checksum-offloaded"],
                       14: ["bad-checksum"], 15: ["retransmission"], 25: ["checksum-offloaded"],
                       26: ["bad-checksum"]}


# ----------------------------------------------------------------------------- single frames


def _status_of(data: bytes, wire: int | None = None, linktype: int = 1) -> int:
    return tcp_checksum(linktype, data, 0, len(data), (wire or len(data)) - len(data))


@pytest.mark.parametrize("payload", [b"", b"a", b"ab", b"x" * 1459, bytes(range(256)) * 5])
@pytest.mark.parametrize("ends", [(C4, S4), (C6, S6)], ids=["ipv4", "ipv6"])
def test_every_length_both_families(payload, ends):
    for how, status in STATUS_OF.items():
        assert _status_of(frame(*ends, "PA", 1, 2, payload, how)) == status, how


def test_all_ones_and_zero_sums_are_the_same_number():
    """RFC 1624 §3: 0x0000 and 0xFFFF are both zero in one's complement; a segment whose
    checksum comes out zero may carry either.  Two payload bytes chosen to make it so."""
    data = frame(C4, S4, "PA", 1, 0, b"\0\0")
    word = data[50:52]  # the checksum of the segment with a zero word: make that the word
    zero = frame(C4, S4, "PA", 1, 0, word)
    assert zero[50:52] in (b"\x00\x00", b"\xff\xff")
    for field in (b"\x00\x00", b"\xff\xff"):
        assert _status_of(zero[:50] + field + zero[52:]) == GOOD


def test_snaplen_cut_and_short_frames_are_unverifiable():
    data = frame(C4, S4, "PA", 1, 2, b"z" * 100)
    assert _status_of(data[:80], wire=len(data)) == UNVERIFIABLE
    assert _status_of(data[:54], wire=len(data)) == UNVERIFIABLE  # headers only
    # a frame shorter than its IP total length, not cut by a snaplen: the decoder (and
    # tshark) take the bytes that are there, which do not verify
    assert _status_of(data[:80]) == BAD


def test_ipv6_routing_header_final_destination():
    """RFC 8200 §8.1: with a routing header whose segments are left, the pseudo-header
    names the final destination (scapy's in6_chksum does the same)."""
    pkt = Ether(dst=MAC, src=MAC) / IPv6(src="2001:db8::1", dst="2001:db8::99") / IPv6ExtHdrRouting(
        addresses=["2001:db8::2"], segleft=1) / TCP(sport=1, dport=2, flags="PA") / b"routed"
    data = raw(pkt)
    assert _status_of(data) == GOOD
    passed = raw(Ether(dst=MAC, src=MAC) / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrRouting(
        addresses=["2001:db8::2"], segleft=0) / TCP(sport=1, dport=2, flags="PA") / b"routed")
    assert _status_of(passed) == GOOD  # no segments left: the destination is final already
    assert _status_of(data[:-1] + b"X") == BAD


def test_pppoe_length_shorter_than_ip():
    """corpus pppoe-over-qinq.pcap: the PPPoE length leaves 6 bytes fewer than the IP
    total length.  tshark's segment ends where PPPoE says, and does not verify; the IP
    header's does, and it is Zeek's: flagged bad-checksum, not ignored by the Zeek view."""
    ip = raw(IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=1, dport=2, flags="A") / (b"\0" * 6))
    ppp = struct.pack("!BBHHH", 0x11, 0, 1, len(ip) - 6 + 2, 0x0021) + ip
    data = b"\x02" * 12 + struct.pack("!H", 0x8864) + ppp
    assert _status_of(data) == LINK_SHORT
    assert checksum.ANALYSIS_BITS[LINK_SHORT] and not checksum.ZEEK_IGNORES[LINK_SHORT]


# ----------------------------------------------------------------------------- the commands


def test_no_tcp_says_what_it_says_today(tmp_path):
    udp_only = tmp_path / "udp.pcap"
    udp = raw(Ether(dst=MAC, src=MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / scapy.UDP(sport=1, dport=2) / b"x")
    arp = raw(Ether(dst=MAC, src=MAC) / scapy.ARP())
    udp_only.write_bytes(pcap([(1.0, arp, len(arp))]))
    for args in (["analyze", str(udp_only)], ["analyze", str(udp_only), "--jsonl"],
                 ["explain", str(udp_only)], ["plot", str(udp_only), "-o", str(tmp_path / "x.png")]):
        plain, checked = io.StringIO(), io.StringIO()
        a = main(args, out=io.StringIO(), err=plain)
        b = main([*args, "--verify-checksums"], out=io.StringIO(), err=checked)
        assert (a, plain.getvalue()) == (b, checked.getvalue()) == (2, plain.getvalue())
        assert plain.getvalue().count("\n") == 1 and "no TCP" in plain.getvalue()
    udp_only.write_bytes(pcap([(1.0, udp, len(udp))]))  # UDP only: flows, no checksum to verify
    out = io.StringIO()
    assert main(["analyze", str(udp_only), "--verify-checksums"], out=out, err=io.StringIO()) == 0


@pytest.mark.parametrize("command", ["analyze", "plot", "export", "explain"])
def test_bad_input_is_one_line(tmp_path, command):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    err = io.StringIO()
    assert main([command, str(bad), "--verify-checksums"], out=io.StringIO(), err=err) == 2
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("hsviz: ")


def test_export_comments_the_frames(scripted, tmp_path):
    from handshake_viz.export import export_capture

    dest = tmp_path / "x.pcapng"
    result, _ = export_capture(scripted, dest, verify_checksums=True)
    text = dest.read_bytes()
    assert text.count(b"bad TCP checksum") == 2
    assert text.count(b"TCP checksum offloaded") == 7
    export_capture(scripted, dest)
    assert b"checksum" not in dest.read_bytes()


def test_plot_marks_a_bad_checksum(scripted):
    from handshake_viz.layout import plan

    conn = load(scripted, verify_checksums=True).connections[1]
    rows = {r.frame: r for r in plan(conn.segments, conn.summary, max_rows=0).rows}
    assert "bad checksum" in rows[14].markers and rows[14].flagged  # dropped by its receiver
    conn = load(scripted, verify_checksums=True).connections[0]
    rows = {r.frame: r for r in plan(conn.segments, conn.summary, max_rows=0).rows}
    assert "checksum offloaded" in rows[4].markers and not rows[4].flagged  # nothing went wrong
