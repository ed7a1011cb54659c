"""Tests for handshake_viz.decode: capture files -> Packet records.

Three kinds of evidence:

* the third-party corpus (read in place from ../shared/corpus), compared packet
  by packet with what tshark printed for the same files;
* small captures built byte by byte here with ``struct``, one per format,
  link type and header variant, and one per kind of bad input;
* captures written by scapy's own writers, compared with scapy's dissection.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import struct
import tracemalloc
from pathlib import Path

import pytest

from handshake_viz import decode, pcapio
from handshake_viz.decode import (
    CaptureReader,
    DecodeStats,
    decode_frame,
    iter_packets,
    open_capture,
)
from handshake_viz.errors import CaptureError, CaptureFileError
from handshake_viz.model import Packet

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TRACES = sorted(p.name for p in (CORPUS / "traces").glob("*")) if CORPUS.is_dir() else []
# both batches: (folder of traces and expected files, file name)
BATCHES = ("", "batch2/")
ALL_TRACES = [f"{b}{p.name}" for b in BATCHES for p in sorted((CORPUS / b / "traces").glob("*"))] \
    if CORPUS.is_dir() else []


def _corpus_paths(trace: str) -> tuple[Path, Path]:
    """``batch2/x.pcap`` -> (its capture, the prefix of its expected files)."""
    batch, _, name = trace.rpartition("/")
    folder = CORPUS / batch
    return folder / "traces" / name, folder / "expected" / name


def _link_length(protocols: str) -> int:
    """The link-layer bytes before IP, from tshark's frame.protocols."""
    layers = protocols.split(":")
    first = {"eth": 14, "sll": 16, "null": 4}.get(layers[0], 0)
    return first + 4 * layers.count("vlan") + 4 * layers.count("mpls") + 8 * layers.count("pppoes")


# ---------------------------------------------------------------------------
# Byte builders (network byte order unless stated; checksums left 0)
# ---------------------------------------------------------------------------

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def tcp(
    sport: int = 1234,
    dport: int = 80,
    seq: int = 1000,
    ack: int = 0,
    flags: int = 0x02,
    win: int = 65535,
    options: bytes = b"",
    payload: bytes = b"",
    doff: int | None = None,
) -> bytes:
    assert len(options) % 4 == 0
    words = doff if doff is not None else 5 + len(options) // 4
    return (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, words << 4, flags, win, 0, 0)
        + options
        + payload
    )


def ipv4(
    body: bytes,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    *,
    proto: int = 6,
    options: bytes = b"",
    frag: int = 0,
    total: int | None = None,
) -> bytes:
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    tot = ihl * 4 + len(body) if total is None else total
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl, 0, tot, 7, frag, 64, proto, 0,
            bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))),
        )
        + options
        + body
    )


def ipv6(
    body: bytes,
    src: str = "2001:db8::1",
    dst: str = "2001:db8::2",
    *,
    nh: int = 6,
    plen: int | None = None,
) -> bytes:
    import ipaddress

    return (
        struct.pack("!IHBB", 0x60000000, len(body) if plen is None else plen, nh, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + body
    )


def ether(body: bytes, etype: int = 0x0800, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return MAC_B + MAC_A + tags + struct.pack("!H", etype) + body


def pcap_bytes(
    frames: list[tuple[float, bytes] | tuple[float, bytes, int]],
    *,
    linktype: int = 1,
    order: str = "<",
    nano: bool = False,
    snaplen: int = 65535,
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    units = 10**9 if nano else 10**6
    for item in frames:
        ts, data = item[0], item[1]
        wirelen = item[2] if len(item) > 2 else len(data)  # type: ignore[misc]
        sec = int(ts)
        frac = round((ts - sec) * units)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), wirelen) + data)
    return b"".join(out)


def block(btype: int, body: bytes, order: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(order: str = "<") -> bytes:
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def idb(
    linktype: int,
    *,
    snaplen: int = 0,
    tsresol: int | None = None,
    tsoffset: int | None = None,
    order: str = "<",
) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += option(9, bytes([tsresol]), order)
    if tsoffset is not None:
        opts += option(14, struct.pack(order + "q", tsoffset), order)
    if opts:
        opts += option(0, b"", order)
    return block(1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts, order)


def epb(iface: int, ticks: int, data: bytes, wirelen: int | None = None, order: str = "<") -> bytes:
    head = struct.pack(
        order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
        len(data) if wirelen is None else wirelen,
    )  # fmt: skip
    return block(6, head + data, order)


def opb(iface: int, ticks: int, data: bytes, order: str = "<") -> bytes:
    head = struct.pack(
        order + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)
    )
    return block(2, head + data, order)


def spb(data: bytes, wirelen: int | None = None, order: str = "<") -> bytes:
    return block(3, struct.pack(order + "I", len(data) if wirelen is None else wirelen) + data, order)


def read_all(data: bytes, name: str = "t.pcap") -> tuple[list[Packet], DecodeStats]:
    with open_capture(io.BytesIO(data), name=name) as reader:
        packets = list(reader)
    return packets, reader.stats


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


SYN = tcp(40000, 80, 0xFFFFFFF0, 0, 0x02, 29200, options=bytes.fromhex("020405b4"))
SYN_ACK = tcp(80, 40000, 77, 0xFFFFFFF1, 0x12, 28960)
DATA = tcp(40000, 80, 0xFFFFFFF1, 78, 0x18, 229, payload=b"hello world")


def check_invariant(stats: DecodeStats) -> None:
    assert stats.records == stats.tcp + stats.skipped + stats.malformed


# ---------------------------------------------------------------------------
# The corpus, against tshark
# ---------------------------------------------------------------------------


def _tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _option_kinds(raw: bytes) -> list[int]:
    """Option kinds as tshark lists them: every EOL/NOP byte, and cut options too."""
    kinds, i = [], 0
    while i < len(raw):
        kind = raw[i]
        kinds.append(kind)
        if kind in (0, 1):
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2:
            break
        i += raw[i + 1]
    return kinds


def _ints(cell: str) -> list[int]:
    return [int(v) for v in cell.split("|")] if cell else []


@pytest.mark.parametrize(
    "trace",
    ALL_TRACES
    or [pytest.param("corpus", marks=pytest.mark.skip(reason=f"corpus not found at {CORPUS}"))],
)
def test_corpus_matches_tshark(trace: str) -> None:
    path, expected = _corpus_paths(trace)
    rows = _tsv(Path(f"{expected}.tshark.tsv"))
    extra = {r["frame.number"]: r for r in _tsv(Path(f"{expected}.tshark-extra.tsv"))}
    with open_capture(path) as reader:
        packets = list(reader)
    stats = reader.stats
    check_invariant(stats)
    assert len(packets) == len(rows) == stats.tcp
    for pkt, row in zip(packets, rows):
        x = extra[row["frame.number"]]
        where = f"{trace} frame {row['frame.number']}"
        assert pkt.frame == int(row["frame.number"]), where
        assert pkt.ts == pytest.approx(float(row["frame.time_epoch"]), abs=1e-6), where
        assert pkt.ip_version == int(row["ip.version"]), where
        assert (pkt.src, pkt.sport) == (row["ip.src"], int(row["tcp.srcport"])), where
        assert (pkt.dst, pkt.dport) == (row["ip.dst"], int(row["tcp.dstport"])), where
        assert pkt.seq == int(row["tcp.seq_raw"]), where
        assert pkt.ack == int(row["tcp.ack_raw"]), where
        assert pkt.length == int(row["tcp.len"]), where
        assert pkt.flags == int(x["tcp.flags"], 16) & 0xFF, where
        assert pkt.win == int(x["tcp.window_size_value"]), where

        # The captured bytes: options as tshark walked them, payload as far as captured.
        assert _option_kinds(pkt.raw_options) == _ints(x["tcp.option_kind"]), where
        link = _link_length(x["frame.protocols"])
        ip_hdr = int(x["ip.hdr_len"]) if x["ip.hdr_len"] else 40
        captured = int(x["frame.cap_len"]) - link - ip_hdr - int(x["tcp.hdr_len"])
        assert len(pkt.payload) == max(0, min(pkt.length, captured)), where
        assert len(pkt.raw_options) == max(
            0, min(int(x["tcp.hdr_len"]) - 20, int(x["frame.cap_len"]) - link - ip_hdr - 20)
        ), where

        opts = pkt.options
        assert opts.mss == (int(x["tcp.options.mss_val"]) if x["tcp.options.mss_val"] else None)
        shift = x["tcp.options.wscale.shift"]
        assert opts.wscale == (int(shift) if shift else None), where
        # tshark prints SACK edges relative to the peer's ISN, the base of the relative ack.
        base = (int(row["tcp.ack_raw"]) - int(row["tcp.ack"])) & 0xFFFFFFFF
        sack = [((le - base) & 0xFFFFFFFF, (re - base) & 0xFFFFFFFF) for le, re in opts.sack]
        assert sack == list(
            zip(_ints(x["tcp.options.sack_le"]), _ints(x["tcp.options.sack_re"]))
        ), where
        if x["tcp.options.tfo.request"]:
            assert opts.tfo_cookie == b"", where
        elif x["tcp.options.tfo.cookie"]:
            assert opts.tfo_cookie == bytes.fromhex(x["tcp.options.tfo.cookie"]), where
        else:
            assert opts.tfo_cookie is None, where


@pytest.mark.skipif(not TRACES, reason=f"corpus not found at {CORPUS}")
def test_corpus_snaplen_cut_captures() -> None:
    """truncated-header.pcap: tshark lists the first SYN (options cut) even though Zeek
    skips it; we yield it too, with the 14 option bytes that were captured (of 20)."""
    with open_capture(CORPUS / "traces" / "truncated-header.pcap") as reader:
        packets = list(reader)
    assert reader.stats.snaplen_cut == reader.stats.records == 24
    first = packets[0]
    assert first.frame == 1 and first.flags == 0xC2  # SYN, ECE, CWR
    assert len(first.raw_options) == 14 and first.options.mss == 1460
    assert first.options.sack_perm  # the cut timestamp option (length byte 8) is not decoded
    assert first.options.ts_val is None
    assert first.length == 0
    data = [p for p in packets if p.length]
    assert data and all(len(p.payload) < p.length for p in data)
    with open_capture(CORPUS / "traces" / "retransmit-fast009.pcap") as reader:
        packets = list(reader)
    assert reader.stats.snaplen_cut == 21 and reader.stats.warnings == []
    assert max(p.length for p in packets) == 1446 and all(p.payload == b"" for p in packets)


@pytest.mark.skipif(not TRACES, reason=f"corpus not found at {CORPUS}")
def test_corpus_payload_bytes_match_scapy() -> None:
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    path = CORPUS / "traces" / "get.pcap"
    expected = [bytes(p[TCP].payload) for p in rdpcap(str(path)) if TCP in p]
    got = [p.payload for p in iter_packets(path)]
    assert got == expected and any(got)


# ---------------------------------------------------------------------------
# pcap variants
# ---------------------------------------------------------------------------


def test_pcap_both_byte_orders_give_the_same_packets() -> None:
    frames = [(1700000000.25, ether(ipv4(SYN))), (1700000000.5, ether(ipv4(SYN_ACK, "10.0.0.2", "10.0.0.1")))]
    le, _ = read_all(pcap_bytes(frames, order="<"))
    be, _ = read_all(pcap_bytes(frames, order=">"))
    assert le == be
    assert [p.frame for p in le] == [1, 2]
    syn = le[0]
    assert (syn.src, syn.sport, syn.dst, syn.dport) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert (syn.seq, syn.ack, syn.flags, syn.win, syn.length) == (0xFFFFFFF0, 0, 0x02, 29200, 0)
    assert syn.raw_options == bytes.fromhex("020405b4") and syn.options.mss == 1460
    assert syn.ts == 1700000000.25 and syn.ip_version == 4
    assert type(syn) is Packet


def test_pcap_nanosecond_timestamps() -> None:
    data = pcap_bytes([(1700000000.123456789, ether(ipv4(SYN)))], nano=True, order=">")
    with open_capture(io.BytesIO(data), name="ns.pcap") as reader:
        (pkt,) = list(reader)
        assert reader.ts_resolution == 1e-9 and reader.format == "pcap"
    assert pkt.ts == pytest.approx(1700000000.123456789, abs=1e-7)
    assert pkt.ts != pytest.approx(1700000000.123457, abs=1e-7)  # not read as microseconds


def test_payload_length_and_ethernet_trailer_padding() -> None:
    # A pure ACK is 54 bytes; Ethernet pads it to 60: the padding is not payload.
    ack = ether(ipv4(tcp(1, 2, 5, 6, 0x10, 100))) + b"\0" * 6
    data = ether(ipv4(DATA))
    packets, stats = read_all(pcap_bytes([(1.0, ack), (2.0, data)]))
    assert [(p.length, p.payload) for p in packets] == [(0, b""), (11, b"hello world")]
    assert stats.tcp == 2 and stats.snaplen_cut == 0


def test_snaplen_cut_packet_keeps_ip_length() -> None:
    opts = bytes.fromhex("020405b4 0402080a 00000001 00000000 01030307")
    syn = ether(ipv4(tcp(options=opts)))
    data = ether(ipv4(tcp(seq=1, ack=1, flags=0x18, payload=b"x" * 1000)))
    frames = [(1.0, syn[:64], len(syn)), (2.0, data[:60], len(data))]
    packets, stats = read_all(pcap_bytes(frames, snaplen=64))
    assert stats.snaplen_cut == 2 and stats.tcp == 2
    assert packets[0].length == 0
    assert packets[0].raw_options == opts[:10] and packets[0].options.truncated
    assert packets[1].length == 1000 and packets[1].payload == b"x" * 6


def test_headers_cut_or_inconsistent_are_counted_malformed() -> None:
    good = ether(ipv4(SYN))
    frames = [
        (1.0, good[:40], len(good)),  # snaplen cut inside the TCP header
        (2.0, ether(ipv4(SYN, options=b"\x01" * 40))[:60]),  # IHL 15, frame ends early
        (3.0, ether(ipv4(tcp(doff=4)))),  # TCP data offset below 5
        (4.0, ether(ipv4(tcp(doff=15)))),  # header longer than the IP packet
        (5.0, ether(ipv4(SYN))[:10]),  # runt Ethernet frame
        (6.0, ether(ipv6(SYN))[:40]),  # cut IPv6 header
        (7.0, good),
    ]
    packets, stats = read_all(pcap_bytes(frames))
    assert [p.frame for p in packets] == [7]
    assert stats.malformed == 6 and stats.records == 7 and stats.snaplen_cut == 1
    check_invariant(stats)


def test_ip_total_length_beyond_frame_uses_bytes_on_the_wire() -> None:
    # tshark's tcp.len uses the smaller of the IP total length and what was on the wire.
    short = ether(ipv4(DATA, total=20 + 20 + 500))
    (pkt,), _ = read_all(pcap_bytes([(1.0, short)]))
    assert pkt.length == 11 and pkt.payload == b"hello world"


def test_tso_zero_total_length_uses_frame_length() -> None:
    (pkt,), _ = read_all(pcap_bytes([(1.0, ether(ipv4(DATA, total=0)))]))
    assert pkt.length == 11


def test_non_tcp_is_skipped_and_counted() -> None:
    arp = ether(bytes(28), etype=0x0806)
    udp = ether(ipv4(struct.pack("!HHHH", 53, 53, 8, 0), proto=17))
    icmp = ether(ipv4(bytes(8), proto=1))
    icmp6 = ether(ipv6(bytes(8), nh=58), etype=0x86DD)
    llc = ether(bytes(40), etype=0x0026)  # 802.3 length field, not an ethertype
    frames = [(1.0, arp), (2.0, udp), (3.0, ether(ipv4(SYN))), (4.0, icmp), (5.0, icmp6), (6.0, llc)]
    packets, stats = read_all(pcap_bytes(frames))
    assert [p.frame for p in packets] == [3]
    assert (stats.records, stats.tcp, stats.skipped, stats.malformed) == (6, 1, 5, 0)


def test_ipv4_options_and_fragments() -> None:
    rr = bytes([7, 11, 4]) + bytes(8) + b"\x00"  # record route + end of options: 12 bytes
    first = ipv4(DATA, options=rr, frag=0x2000)  # MF set, offset 0: TCP header present
    later = ipv4(tcp(), frag=0x2003)  # offset 24 bytes, more to come: no TCP header here
    last = ipv4(tcp(), frag=0x1000)  # offset 32768 bytes, the last fragment
    frames = [(1.0, ether(first)), (2.0, ether(later)), (3.0, ether(last))]
    packets, stats = read_all(pcap_bytes(frames))
    assert [p.frame for p in packets] == [1]
    assert packets[0].length == 11 and packets[0].payload == b"hello world"
    assert packets[0].sport == 40000
    assert stats.skipped == 2


def test_ipv6_extension_headers() -> None:
    def ext(nh: int, length_units: int, size: int) -> bytes:
        return bytes([nh, length_units]) + bytes(size - 2)

    chain = (
        ext(43, 0, 8)  # hop-by-hop -> routing
        + ext(60, 1, 16)  # routing (16 bytes) -> destination options
        + ext(44, 0, 8)  # destination options -> fragment
        + bytes([51, 0, 0, 0]) + struct.pack("!I", 99)  # fragment, offset 0 -> AH
        + bytes([6, 4]) + bytes(22)  # AH: (4 + 2) * 4 = 24 bytes -> TCP
    )
    pkt6 = ipv6(chain + DATA, "fe80::1", "::ffff:10.1.2.3", nh=0)
    later = ipv6(bytes([6, 0]) + struct.pack("!HI", 0x0010, 99) + b"rest", nh=44)
    udp6 = ipv6(bytes([17, 0]) + bytes(6) + bytes(8), nh=60)
    frames = [(1.0, ether(pkt6, 0x86DD)), (2.0, ether(later, 0x86DD)), (3.0, ether(udp6, 0x86DD))]
    packets, stats = read_all(pcap_bytes(frames))
    assert len(packets) == 1 and stats.skipped == 2
    p = packets[0]
    assert (p.src, p.dst, p.ip_version) == ("fe80::1", "::ffff:10.1.2.3", 6)
    assert p.length == 11 and p.payload == b"hello world" and p.seq == 0xFFFFFFF1


def test_ipv6_addresses_are_compressed() -> None:
    pkt = ipv6(SYN, "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8:0:1:0:0:0:1")
    (p,), _ = read_all(pcap_bytes([(1.0, pkt)], linktype=229))
    assert (p.src, p.dst) == ("2001:db8::1", "2001:db8:0:1::1")


# ---------------------------------------------------------------------------
# Link types
# ---------------------------------------------------------------------------


def _sll(body: bytes, proto: int) -> bytes:
    return struct.pack("!HHH8sH", 0, 772, 6, MAC_A + b"\0\0", proto) + body


def _sll2(body: bytes, proto: int) -> bytes:
    return struct.pack("!HHIHBB8s", proto, 0, 1, 772, 0, 6, MAC_A + b"\0\0") + body


def _mpls(body: bytes, labels: int = 1) -> bytes:
    """An MPLS label stack (RFC 3032): label, TC, bottom-of-stack bit on the last, TTL."""
    return b"".join(struct.pack("!I", (16 + i) << 12 | (i == labels - 1) << 8 | 64)
                    for i in range(labels)) + body


def _pppoe(body: bytes, proto: int = 0x0021, length: int | None = None) -> bytes:
    """A PPPoE session header (RFC 2516) and the PPP protocol field; ``length`` covers
    the protocol field and the packet."""
    return struct.pack("!BBHHH", 0x11, 0, 0x0F07, len(body) + 2 if length is None else length,
                       proto) + body


LINK_CASES = {
    "ethernet": (1, ether(ipv4(DATA))),
    "mpls": (1, ether(_mpls(ipv4(DATA)), 0x8847)),
    "mpls-3-labels-ipv6": (1, ether(_mpls(ipv6(DATA), 3), 0x8847)),
    "mpls-in-vlan": (1, ether(_mpls(ipv4(DATA)), 0x8847, vlans=((0x8100, 5),))),
    "pppoe": (1, ether(_pppoe(ipv4(DATA)), 0x8864)),
    "pppoe-in-qinq": (1, ether(_pppoe(ipv4(DATA)), 0x8864, vlans=((0x8100, 3704), (0x8100, 2474)))),
    "pppoe-ipv6": (1, ether(_pppoe(ipv6(DATA), 0x0057), 0x8864)),
    "vlan": (1, ether(ipv4(DATA), vlans=((0x8100, 100),))),
    "qinq": (1, ether(ipv4(DATA), vlans=((0x88A8, 10), (0x8100, 20)))),
    "ethernet-ipv6": (1, ether(ipv6(DATA), 0x86DD)),
    "vlan-ipv6": (1, ether(ipv6(DATA), 0x86DD, vlans=((0x8100, 7),))),
    "null-le": (0, struct.pack("<I", 2) + ipv4(DATA)),
    "null-be": (0, struct.pack(">I", 2) + ipv4(DATA)),
    "null-ipv6-darwin": (0, struct.pack("<I", 30) + ipv6(DATA)),
    "null-ipv6-freebsd": (0, struct.pack(">I", 28) + ipv6(DATA)),
    "null-ipv6-bsd": (0, struct.pack("<I", 24) + ipv6(DATA)),
    "loop": (108, struct.pack(">I", 2) + ipv4(DATA)),
    "loop-ipv6": (108, struct.pack(">I", 24) + ipv6(DATA)),
    "raw-101": (101, ipv4(DATA)),
    "raw-101-ipv6": (101, ipv6(DATA)),
    "raw-12": (12, ipv4(DATA)),
    "raw-14": (14, ipv6(DATA)),
    "ipv4-228": (228, ipv4(DATA)),
    "ipv6-229": (229, ipv6(DATA)),
    "sll": (113, _sll(ipv4(DATA), 0x0800)),
    "sll-ipv6": (113, _sll(ipv6(DATA), 0x86DD)),
    "sll2": (276, _sll2(ipv4(DATA), 0x0800)),
    "sll2-ipv6": (276, _sll2(ipv6(DATA), 0x86DD)),
}


@pytest.mark.parametrize("case", sorted(LINK_CASES))
def test_link_types(case: str) -> None:
    linktype, frame = LINK_CASES[case]
    packets, stats = read_all(pcap_bytes([(5.5, frame)], linktype=linktype))
    assert stats.tcp == 1, case
    (p,) = packets
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.win) == (40000, 80, 0xFFFFFFF1, 78, 0x18, 229)
    assert (p.length, p.payload, p.ts, p.frame) == (11, b"hello world", 5.5, 1)
    assert p.ip_version == (6 if "ipv6" in case or case == "raw-14" else 4)
    assert p.src == ("2001:db8::1" if p.ip_version == 6 else "10.0.0.1")
    # decode_frame (the live-capture entry point) agrees with the file reader.
    assert decode_frame(linktype, memoryview(frame), frame=1, ts=5.5) == p


def test_link_types_non_ip_is_skipped() -> None:
    frames = [
        (0, struct.pack("<I", 7) + ipv4(DATA)),  # NULL with an unknown family
        (113, _sll(bytes(28), 0x0806)),  # SLL carrying ARP
        (276, _sll2(bytes(28), 0x0806)),
        (101, b"\x00" * 40),  # raw link, version nibble 0
        (228, ipv6(DATA)),  # IPv4 link type carrying IPv6: malformed
    ]
    results = [decode_frame(lt, data, frame=1, ts=0.0) for lt, data in frames]
    assert results == [None] * 5
    not_ip = [
        ether(_mpls(bytes(4) + ether(ipv4(DATA))), 0x8847),  # a pseudowire: control word, Ethernet
        ether(_pppoe(bytes(20), 0xC021), 0x8864),  # PPP LCP
        ether(bytes(20), 0x8863),  # PPPoE discovery
    ]
    assert [decode_frame(1, f, frame=1, ts=0.0) for f in not_ip] == [None] * 3
    cut = [ether(_mpls(b"", 2)[:6], 0x8847), ether(_pppoe(b"")[:5], 0x8864)]
    packets, stats = read_all(pcap_bytes([(1.0, f) for f in cut]))
    assert (packets, stats.malformed) == ([], 2)


def test_pppoe_length_caps_the_ip_packet() -> None:
    """pppoe-over-qinq.pcap's six frames: the PPPoE length is 6 bytes short of the IP
    total length.  tshark gives the TCP segment only what PPPoE's length leaves
    (tcp.len 0, not 6), so does hsviz; Zeek would count the IP length (its
    ``*_ip_bytes``), which hsviz does not report."""
    seg = ipv4(tcp(flags=0x10) + bytes(6))
    frame = ether(_pppoe(seg, length=len(seg) + 2 - 6), 0x8864, vlans=((0x8100, 1), (0x8100, 2)))
    (p,), _ = read_all(pcap_bytes([(1.0, frame)]))
    assert (p.length, p.payload) == (0, b"")


def test_unsupported_link_type_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "wifi.pcap", pcap_bytes([(1.0, b"\0" * 40)], linktype=105))
    with pytest.raises(CaptureFileError) as err:
        open_capture("wifi.pcap")
    assert str(err.value) == "wifi.pcap: unsupported link type 105 (IEEE 802.11)"
    with pytest.raises(CaptureError):
        decode_frame(105, b"\0" * 40, frame=1, ts=0.0)


# ---------------------------------------------------------------------------
# pcapng
# ---------------------------------------------------------------------------


def test_pcapng_interfaces_resolutions_and_block_kinds() -> None:
    t = 1_700_000_000
    eth_syn = ether(ipv4(SYN))
    raw_ack = ipv4(SYN_ACK, "10.0.0.2", "10.0.0.1")
    data = b"".join(
        [
            shb(),
            idb(1, tsresol=6),  # interface 0: Ethernet, microseconds
            idb(101, tsresol=9, tsoffset=100),  # interface 1: raw IP, ns, +100 s
            idb(228, tsresol=0x80 | 20),  # interface 2: raw IPv4, 2**-20 s
            block(4, b"\x00\x00\x00\x00"),  # name resolution block: skipped
            epb(0, t * 10**6 + 250_000, eth_syn),
            epb(1, t * 10**9 + 123_456_789, raw_ack),
            block(0x0BAD, b"custom"),  # unknown block: skipped
            block(5, struct.pack("<III", 0, 0, 0)),  # interface statistics: skipped
            epb(2, t * 2**20 + 2**19, ipv4(DATA)),
            opb(0, t * 10**6 + 750_000, ether(ipv4(DATA))),
            spb(ether(ipv4(DATA))),  # no timestamp: 0.0
            epb(0, t * 10**6, ether(bytes(28), etype=0x0806)),  # ARP: counts as a frame
            epb(1, t * 10**9, ipv4(DATA)),
        ]
    )
    with open_capture(io.BytesIO(data), name="multi.pcapng") as reader:
        assert reader.format == "pcapng" and reader.linktypes == [1, 101, 228]
        assert reader.ts_resolution == 1e-6  # the first interface's
        packets = list(reader)
        assert reader.linktypes == [1, 101, 228]
    stats = reader.stats
    assert [p.frame for p in packets] == [1, 2, 3, 4, 5, 7]
    assert (stats.records, stats.tcp, stats.skipped) == (7, 6, 1)
    ts = [p.ts for p in packets]
    assert ts[0] == t + 0.25
    assert ts[1] == pytest.approx(t + 100.123456789, abs=1e-7)
    assert ts[2] == t + 0.5
    assert ts[3] == t + 0.75
    assert ts[4] == 0.0
    assert ts[5] == t + 100
    assert [p.flags for p in packets] == [0x02, 0x12, 0x18, 0x18, 0x18, 0x18]


def test_pcapng_sections_with_both_byte_orders() -> None:
    t = 1_600_000_000
    data = b"".join(
        [
            shb("<"),
            idb(228, order="<"),
            epb(0, t * 10**6, ipv4(SYN), order="<"),
            shb(">"),  # a new section: interfaces start again, now big-endian
            idb(1, tsresol=3, order=">"),
            epb(0, t * 1000 + 5, ether(ipv4(SYN_ACK, "10.0.0.2", "10.0.0.1")), order=">"),
            spb(ether(ipv4(DATA)), order=">"),
        ]
    )
    packets, stats = read_all(data, "two.pcapng")
    assert [(p.frame, p.flags) for p in packets] == [(1, 0x02), (2, 0x12), (3, 0x18)]
    assert packets[0].ts == t and packets[1].ts == t + 0.005
    assert stats.warnings == []


def test_pcapng_simple_packet_block_uses_interface_snaplen() -> None:
    frame = ether(ipv4(tcp(payload=b"y" * 100)))
    data = shb() + idb(1, snaplen=64) + spb(frame)
    (p,), stats = read_all(data, "spb.pcapng")
    assert p.length == 100 and p.payload == b"y" * 10
    assert stats.snaplen_cut == 1


def test_pcapng_unsupported_interfaces() -> None:
    data = shb() + idb(1) + idb(105) + epb(1, 0, b"\0" * 40) + epb(0, 0, ether(ipv4(SYN)))
    packets, stats = read_all(data, "mixed.pcapng")
    assert [p.frame for p in packets] == [2] and stats.skipped == 1
    assert stats.warnings == [
        "mixed.pcapng: interface 1: unsupported link type 105 (IEEE 802.11); its packets are skipped"
    ]
    only_wifi = shb() + idb(105) + epb(0, 0, b"\0" * 40)
    with pytest.raises(CaptureFileError) as err:
        open_capture(io.BytesIO(only_wifi), name="wifi.pcapng")
    assert str(err.value) == "wifi.pcapng: unsupported link type 105 (IEEE 802.11)"


# ---------------------------------------------------------------------------
# Sources: paths, streams, gzip, iterating twice
# ---------------------------------------------------------------------------


def test_path_stream_gzip_and_reiteration(tmp_path: Path) -> None:
    data = pcap_bytes([(1.0, ether(ipv4(SYN))), (2.0, ether(ipv4(DATA)))])
    path = write(tmp_path, "a.pcap", data)
    gz = write(tmp_path, "a.pcap.gz", gzip.compress(data))
    from_path = list(iter_packets(path))
    assert len(from_path) == 2
    assert list(iter_packets(str(gz))) == from_path
    assert list(iter_packets(os.fsencode(path))) == from_path
    with open(path, "rb") as f:
        reader = open_capture(f)
        assert reader.name == str(path)
        assert list(reader) == from_path
    with open_capture(path) as reader:
        assert list(reader) == from_path and reader.stats.tcp == 2
        assert list(reader) == from_path and reader.stats.tcp == 2  # stats reset, not doubled
    stream = open_capture(io.BufferedReader(_Pipe(data)), name="pipe")
    assert list(stream) == from_path
    with pytest.raises(CaptureFileError, match="^pipe: a stream can be read only once$"):
        list(stream)


class _Pipe(io.RawIOBase):
    """A non-seekable stream that returns at most 7 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), 7, len(self._data))
        b[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


def test_short_reads_from_a_pipe_are_handled() -> None:
    frames = [(float(i), ether(ipv4(DATA))) for i in range(50)]
    data = pcap_bytes(frames)
    reader = open_capture(_Pipe(data), name="slow")  # type: ignore[arg-type]
    assert len(list(reader)) == 50 and reader.stats.warnings == []


def test_records_split_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every record boundary position relative to a chunk boundary is exercised."""
    monkeypatch.setattr(pcapio, "CHUNK", 97)
    frames = [(1.0 + i, ether(ipv4(tcp(seq=i, flags=0x18, payload=b"z" * (i % 13))))) for i in range(60)]
    packets, stats = read_all(pcap_bytes(frames))
    assert [p.seq for p in packets] == list(range(60))
    assert stats.records == 60 and stats.warnings == []
    assert [len(p.payload) for p in packets] == [i % 13 for i in range(60)]
    ng = shb() + idb(1) + b"".join(epb(0, i, f[1]) for i, f in enumerate(frames))
    packets_ng, _ = read_all(ng, "c.pcapng")
    assert [p.seq for p in packets_ng] == list(range(60))


# ---------------------------------------------------------------------------
# Bad input: one line, starting with the file name as typed
# ---------------------------------------------------------------------------


def _open_error(name: str) -> str:
    with pytest.raises(CaptureFileError) as err, open_capture(name) as reader:
        list(reader)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_missing_file(in_tmp: Path) -> None:
    assert _open_error("nope.pcap") == "nope.pcap: no such file"


def test_directory(in_tmp: Path) -> None:
    (in_tmp / "dir.pcap").mkdir()
    assert _open_error("dir.pcap") == "dir.pcap: is a directory, not a capture file"


def test_permission_denied(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(in_tmp, "secret.pcap", pcap_bytes([]))
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads anything: make the open fail the way it would for a user

        def deny(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(pcapio, "open", deny, raising=False)
    assert _open_error("secret.pcap") == "secret.pcap: permission denied"


def test_empty_file(in_tmp: Path) -> None:
    write(in_tmp, "empty.pcap", b"")
    assert _open_error("empty.pcap") == "empty.pcap: empty file (0 bytes)"


def test_not_a_capture(in_tmp: Path) -> None:
    write(in_tmp, "trace.pcap", b"<html><body>404</body></html>")
    assert _open_error("trace.pcap") == "trace.pcap: not a pcap or pcapng file (magic 0x3c68746d)"
    write(in_tmp, "tiny.pcap", b"abc")
    assert _open_error("tiny.pcap") == "tiny.pcap: not a pcap or pcapng file (3 bytes)"


def test_file_header_cut_short(in_tmp: Path) -> None:
    write(in_tmp, "short.pcap", pcap_bytes([])[:10])
    assert _open_error("short.pcap") == "short.pcap: pcap file header truncated: 10 of 24 bytes"
    write(in_tmp, "short.pcapng", shb()[:20])
    assert _open_error("short.pcapng") == "short.pcapng: pcapng section header truncated: 20 of 28 bytes"
    bad_bom = bytearray(shb())
    bad_bom[8:12] = b"ABCD"
    write(in_tmp, "bom.pcapng", bytes(bad_bom))
    assert _open_error("bom.pcapng") == (
        "bom.pcapng: pcapng section header has a bad byte-order magic (0x41424344)"
    )


def test_truncated_tail_is_a_warning(in_tmp: Path) -> None:
    syn = ether(ipv4(tcp(options=bytes.fromhex("020405b4") * 5)))  # 74 bytes
    assert len(syn) == 74
    full = pcap_bytes([(1.0, syn), (2.0, syn), (3.0, syn)])
    write(in_tmp, "trace.pcap", full[: len(full) - 34])  # record 3: 40 of 74 bytes
    with open_capture("trace.pcap") as reader:
        packets = list(reader)
    assert [p.frame for p in packets] == [1, 2]
    assert reader.stats.warnings == ["trace.pcap: record 3 truncated: 40 of 74 bytes"]
    write(in_tmp, "head.pcap", full[: 24 + 2 * (16 + 74) + 7])
    with open_capture("head.pcap") as reader:
        assert len(list(reader)) == 2
    assert reader.stats.warnings == ["head.pcap: record 3 header truncated: 7 of 16 bytes"]


def test_truncated_pcapng_tail_is_a_warning(in_tmp: Path) -> None:
    frame = ether(ipv4(SYN))
    full = shb() + idb(1) + epb(0, 1, frame) + epb(0, 2, frame)
    write(in_tmp, "cut.pcapng", full[:-20])
    with open_capture("cut.pcapng") as reader:
        assert [p.frame for p in reader] == [1]
    # 58 frame bytes, 2 padding bytes and the 4-byte trailer: cutting 20 leaves 44 of 58.
    assert len(frame) == 58
    assert reader.stats.warnings == ["cut.pcapng: record 2 truncated: 44 of 58 bytes"]
    write(in_tmp, "trailer.pcapng", full[:-2])  # all packet bytes there, block cut
    with open_capture("trailer.pcapng") as reader:
        assert [p.frame for p in reader] == [1]
    offset = len(full) - len(epb(0, 2, frame))
    assert reader.stats.warnings == [
        f"trailer.pcapng: pcapng block at byte {offset} truncated: 90 of 92 bytes"
    ]
    write(in_tmp, "cut2.pcapng", full[:-len(epb(0, 2, frame)) + 5])
    with open_capture("cut2.pcapng") as reader:
        assert len(list(reader)) == 1
    offset = len(full) - len(epb(0, 2, frame))
    assert reader.stats.warnings == [f"cut2.pcapng: pcapng block at byte {offset} truncated: 5 of at least 12 bytes"]


def test_absurd_record_length_mid_file_is_an_error(in_tmp: Path) -> None:
    frame = ether(ipv4(SYN))
    data = bytearray(pcap_bytes([(1.0, frame), (2.0, frame), (3.0, frame)]))
    second = 24 + 16 + len(frame)
    data[second + 8 : second + 12] = struct.pack("<I", 0xFFFFFFFF)
    write(in_tmp, "bad.pcap", bytes(data))
    got: list[Packet] = []
    with pytest.raises(CaptureFileError) as err, open_capture("bad.pcap") as reader:
        got.extend(reader)
    assert [p.frame for p in got] == [1]  # everything before the corruption was yielded
    assert str(err.value) == (
        "bad.pcap: record 2: captured length 4294967295 is larger than 262144 bytes (corrupt file?)"
    )


def test_corrupt_pcapng_blocks_are_errors(in_tmp: Path) -> None:
    frame = ether(ipv4(SYN))
    head = shb() + idb(1)
    bad_len = bytearray(epb(0, 0, frame))
    bad_len[4:8] = struct.pack("<I", 13)
    write(in_tmp, "len.pcapng", head + bytes(bad_len))
    assert _open_error("len.pcapng") == (
        f"len.pcapng: pcapng block at byte {len(head)} has an invalid length 13 (corrupt file?)"
    )
    write(in_tmp, "iface.pcapng", head + epb(3, 0, frame))
    assert _open_error("iface.pcapng") == (
        "iface.pcapng: record 1: interface 3 was not described (corrupt file?)"
    )
    big = bytearray(epb(0, 0, frame))
    big[20:24] = struct.pack("<I", 5000)
    write(in_tmp, "cap.pcapng", head + bytes(big))
    assert _open_error("cap.pcapng") == (
        f"cap.pcapng: record 1: captured length 5000 does not fit its {len(big)}-byte block "
        "(corrupt file?)"
    )


# ---------------------------------------------------------------------------
# Cross-check with scapy's writers and dissectors
# ---------------------------------------------------------------------------


def _scapy_packets() -> list[object]:
    from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
    from scapy.layers.inet6 import (
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import Raw

    def E() -> Ether:  # explicit MACs: scapy would otherwise resolve them on the network
        return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123, 0)), ("NOP", None), ("WScale", 7)]
    pkts = [
        E() / IP(src="192.0.2.1", dst="198.51.100.7") / TCP(sport=5555, dport=443, seq=1, flags="S", options=opts),
        E() / Dot1Q(vlan=5) / IP(src="192.0.2.7", dst="192.0.2.1", options=[IPOption_RR()])
        / TCP(sport=443, dport=5555, seq=99, ack=2, flags="SA", window=1000),
        E() / ARP(),
        E() / IP() / UDP() / Raw(b"dns?"),
        E() / IPv6(src="2001:db8::5", dst="2001:db8:1::9") / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(m=1) / TCP(sport=1, dport=2, flags="PA", seq=7) / Raw(b"v6 data"),
        E() / IP(src="10.9.8.7", dst="10.7.8.9") / TCP(sport=80, dport=81, flags="FA", seq=2**32 - 1, ack=5)
        / Raw(b"bye"),
    ]
    for i, p in enumerate(pkts):
        p.time = 1_650_000_000 + i / 8
    return pkts


def _expected_from_scapy(pkts: list[object]) -> list[tuple[object, ...]]:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    out = []
    for i, p in enumerate(pkts, 1):
        p = p.__class__(bytes(p))  # type: ignore[attr-defined]
        if TCP not in p:
            continue
        ip = p[IP] if IP in p else p[IPv6]
        t = p[TCP]
        out.append(
            (i, ip.src, t.sport, ip.dst, t.dport, t.seq, t.ack, int(t.flags), t.window,
             len(t.payload), bytes(t.payload), bytes(t)[20 : t.dataofs * 4])
        )  # fmt: skip
    return out


def _as_tuples(packets: list[Packet]) -> list[tuple[object, ...]]:
    return [
        (p.frame, p.src, p.sport, p.dst, p.dport, p.seq, p.ack, p.flags, p.win, p.length, p.payload,
         p.raw_options)
        for p in packets
    ]  # fmt: skip


def test_scapy_pcap_writer(tmp_path: Path) -> None:
    from scapy.utils import wrpcap

    pkts = _scapy_packets()
    for nano in (False, True):
        path = tmp_path / f"scapy-{nano}.pcap"
        wrpcap(str(path), pkts, nano=nano)
        with open_capture(path) as reader:
            packets = list(reader)
        assert _as_tuples(packets) == _expected_from_scapy(pkts)
        assert [p.ts for p in packets] == pytest.approx(
            [1_650_000_000 + i / 8 for i in (0, 1, 4, 5)], abs=1e-6
        )
        assert reader.stats.skipped == 2 and reader.stats.records == 6


def test_scapy_pcapng_writer(tmp_path: Path) -> None:
    from scapy.utils import PcapNgWriter

    pkts = _scapy_packets()
    path = tmp_path / "scapy.pcapng"
    with PcapNgWriter(str(path)) as writer:
        for p in pkts:
            writer.write(p)
    with open_capture(path) as reader:
        packets = list(reader)
    assert reader.format == "pcapng"
    assert _as_tuples(packets) == _expected_from_scapy(pkts)
    assert [p.ts for p in packets] == pytest.approx(
        [1_650_000_000 + i / 8 for i in (0, 1, 4, 5)], abs=1e-6
    )


# ---------------------------------------------------------------------------
# Streaming: memory does not grow with the number of packets
# ---------------------------------------------------------------------------


def _many(path: Path, count: int, payload: int) -> None:
    base = ether(ipv4(tcp(flags=0x18, payload=b"p" * payload)))
    with path.open("wb") as f:
        f.write(pcap_bytes([]))
        f.write((struct.pack("<IIII", 1, 0, len(base), len(base)) + base) * count)


def test_tracemalloc_peak_stays_small_while_streaming(tmp_path: Path) -> None:
    # Large frames make a large file from few packets: tracemalloc makes every
    # allocation in the reader's (long) generator slow, so the packet count stays low.
    path = tmp_path / "big.pcap"
    _many(path, 20_000, 1400)
    assert path.stat().st_size > 28 * 2**20
    tracemalloc.start()
    try:
        count = 0
        with open_capture(path) as reader:
            for pkt in reader:
                count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000 and pkt.length == 1400
    assert peak < 3 * pcapio.CHUNK + 2**20  # about two chunks, never the file


_RSS_SCRIPT = """
import sys
from handshake_viz.decode import open_capture
n = sum(1 for _ in open_capture(sys.argv[1]))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(n, hwm)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_flat_with_packet_count(tmp_path: Path) -> None:
    import subprocess
    import sys

    def peak_kib(count: int) -> int:
        path = tmp_path / f"{count}.pcap"
        _many(path, count, 40)
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(path)],
            check=True, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        assert int(out[0]) == count
        return int(out[1])

    small, large = peak_kib(20_000), peak_kib(300_000)
    # The large file is ~30 MB bigger; the reader's peak may differ by noise only.
    assert large - small < 6 * 1024, (small, large)


def test_public_names() -> None:
    assert sorted(decode.__all__) == sorted(
        ["CaptureReader", "DecodeStats", "LINKTYPES", "decode_frame", "header_length", "ip_packet", "iter_packets",
         "open_capture"]
    )
    assert isinstance(open_capture(io.BytesIO(pcap_bytes([]))), CaptureReader)
