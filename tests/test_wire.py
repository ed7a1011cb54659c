"""`hsviz show`: a frame's header fields, each field's bytes exactly as on the wire.

The fields are checked against scapy, which decodes the same frames independently:
every field's bytes must be the bytes scapy's own field holds, packed in network
byte order, and every byte of the headers must belong to exactly one field.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from handshake_viz.cli import main
from handshake_viz.frames import read_frames, segment_at, show_frame
from handshake_viz.pcapio import Frame
from handshake_viz.wire import NotTcp, dissect, show_lines

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "captures"
CORPUS = REPO.parent / "shared" / "corpus" / "traces"

SHIPPED = [CAPTURES / "echo.pcap", CAPTURES / "time-wait.pcap", REPO / "tests" / "data" / "align" / "c-echo.pcap"]
FROM_CORPUS = ["ipv6.pcap", "option-sack.pcap", "tcp-fast-open.pcap", "payload-syn.pcap"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def expected_fields(frame: Frame) -> dict[tuple[str, str], bytes]:
    """(layer, field name) -> bytes, from scapy's decoding of the frame."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from handshake_viz.frames import to_scapy

    pkt = to_scapy(frame)
    u8, u16, u32 = (lambda v: struct.pack("!B", v)), (lambda v: struct.pack("!H", v)), (lambda v: struct.pack("!I", v))
    mac = lambda m: bytes.fromhex(m.replace(":", ""))  # noqa: E731
    want = {}
    if Ether in pkt:
        want = {("Ethernet", "destination MAC"): mac(pkt.dst), ("Ethernet", "source MAC"): mac(pkt.src)}
    if IP in pkt:
        ip = pkt[IP]
        want.update({
            ("IPv4", "version, header length"): u8(ip.version << 4 | ip.ihl),
            ("IPv4", "DSCP, ECN"): u8(ip.tos),
            ("IPv4", "total length"): u16(ip.len),
            ("IPv4", "identification"): u16(ip.id),
            ("IPv4", "flags, fragment offset"): u16(int(ip.flags) << 13 | ip.frag),
            ("IPv4", "time to live"): u8(ip.ttl),
            ("IPv4", "protocol"): u8(ip.proto),
            ("IPv4", "header checksum"): u16(ip.chksum),
            ("IPv4", "source address"): bytes(map(int, ip.src.split("."))),
            ("IPv4", "destination address"): bytes(map(int, ip.dst.split("."))),
        })
    else:
        import socket

        ip6 = pkt[IPv6]
        want.update({
            ("IPv6", "version, traffic class, flow label"): u32(ip6.version << 28 | ip6.tc << 20 | ip6.fl),
            ("IPv6", "payload length"): u16(ip6.plen),
            ("IPv6", "next header"): u8(ip6.nh),
            ("IPv6", "hop limit"): u8(ip6.hlim),
            ("IPv6", "source address"): socket.inet_pton(socket.AF_INET6, ip6.src),
            ("IPv6", "destination address"): socket.inet_pton(socket.AF_INET6, ip6.dst),
        })
    tcp = pkt[TCP]
    want.update({
        ("TCP", "source port"): u16(tcp.sport),
        ("TCP", "destination port"): u16(tcp.dport),
        ("TCP", "sequence number"): u32(tcp.seq),
        ("TCP", "acknowledgment number"): u32(tcp.ack),
        ("TCP", "data offset"): u8(tcp.dataofs << 4 | tcp.reserved << 1 | (int(tcp.flags) >> 8)),
        ("TCP", "flags"): u8(int(tcp.flags) & 0xFF),
        ("TCP", "window"): u16(tcp.window),
        ("TCP", "checksum"): u16(tcp.chksum),
        ("TCP", "urgent pointer"): u16(tcp.urgptr),
    })
    return want


def tcp_frames(path: Path) -> list[Frame]:
    return [fr for fr in read_frames(path).values() if _is_tcp(fr)]


def _is_tcp(fr: Frame) -> bool:
    try:
        dissect(fr)
    except NotTcp:
        return False
    return True


def captures() -> list[Path]:
    found = list(SHIPPED)
    found += [CORPUS / name for name in FROM_CORPUS if (CORPUS / name).is_file()]
    return found


@pytest.mark.parametrize("path", captures(), ids=lambda p: p.name)
def test_every_field_holds_the_bytes_scapy_decodes(path: Path) -> None:
    from scapy.layers.inet import TCP

    from handshake_viz.frames import to_scapy

    frames = tcp_frames(path)
    assert frames, f"{path.name}: no TCP frames"
    for fr in frames:
        view = dissect(fr)
        got = {(f.layer, f.name): f.raw for f in view.fields}
        for key, raw in expected_fields(fr).items():
            assert got[key] == raw, f"{path.name} frame {fr.frame}: {key}"
        # the options are the bytes scapy puts between the fixed header and the payload
        tcp = to_scapy(fr)[TCP]
        options = b"".join(f.raw for f in view.fields if f.layer == "TCP option")
        assert options == bytes(tcp)[20:tcp.dataofs * 4], f"{path.name} frame {fr.frame}"
        # every header byte belongs to exactly one field, in wire order
        spans = [(f.offset, f.offset + len(f.raw)) for f in view.fields]
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert spans[-1][1] == view.payload_offset
        assert fr.data[view.payload_offset:] .startswith(view.payload)


def test_host_order_and_the_call_that_made_the_bytes() -> None:
    view = show_frame(CAPTURES / "echo.pcap", 1)  # the SYN, client -> server port 53745
    dport = view.field("TCP", "destination port")
    assert dport.hex == "d1 f1" and dport.value == "53745" and dport.host == "htons(53745)"
    assert "f1 d1" in dport.note and "61905" in dport.note and "server" in dport.note
    src = view.field("IPv4", "source address")
    assert src.hex == "7f 00 00 01" and src.host == 'inet_pton(AF_INET, "127.0.0.1")'
    seq = view.field("TCP", "sequence number")
    assert seq.host == f"htonl({int.from_bytes(seq.raw, 'big')})" and "relative 0" in seq.value
    assert "unused" in view.field("TCP", "acknowledgment number").value  # a SYN has no ACK bit


def test_byte_order_lesson_with_port_8080() -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    data = bytes(Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=40000, dport=8080, flags="S"))
    view = dissect(Frame(1, 0.0, 1, data, len(data)))
    assert view.field("TCP", "destination port").hex == "1f 90"
    text = "\n".join(show_lines(view))
    assert "htons(8080)" in text and "90 1f" in text and "read as 36895" in text and "read port 36895" in text


def test_cli_prints_each_field_with_its_bytes_as_captured() -> None:
    path = CAPTURES / "echo.pcap"
    data = read_frames(path, [4])[4].data
    code, out, err = run("show", str(path), "--frame", "4")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"frame 4 of {path}: 72 bytes captured, Ethernet / IPv4 / TCP")
    assert "conn 0, client → server: DATA seq=1:7 ack=1 len=6" in lines[1]
    # every field line: offset, then its bytes, which are the frame's bytes at that offset
    checked = 0
    for i, line in enumerate(lines):
        head = line[:6].strip()
        if not head.isdigit() or "payload" in line:
            continue
        offset = int(head)
        hexes = line[8:31].split()
        j = i + 1
        while j < len(lines) and lines[j][:6].strip() == "" and lines[j][8:10].strip() and "(" not in lines[j][:40]:
            hexes += lines[j][8:31].split()
            j += 1
        assert bytes.fromhex("".join(hexes)) == data[offset:offset + len(hexes)], line
        checked += 1
    assert checked >= 25
    assert "htons(53745)" in out and 'inet_pton(AF_INET, "127.0.0.1")' in out
    assert '"hello\\n"' in out and "Had the program forgotten htons(53745)" in out


@pytest.mark.parametrize("argv, message", [
    (["captures/udp.pcap", "--frame", "1"], "frame 1 is a UDP datagram, not a TCP segment"),
    (["captures/echo.pcap", "--frame", "99"], "frame 99 out of range (the capture has 14 frames)"),
    (["captures/echo.pcap", "--frame", "0"], "frame 0: frame numbers start at 1"),
    (["captures/missing.pcap", "--frame", "1"], "no such file"),
])
def test_cli_refuses_in_one_line(argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    code, out, err = run("show", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("hsviz: ")


def test_segment_at_tracks_up_to_the_frame_only() -> None:
    seg = segment_at(CAPTURES / "echo.pcap", 2)
    assert seg is not None and seg.label.value == "SYN-ACK" and seg.rel_ack == 1
    assert segment_at(CAPTURES / "udp.pcap", 1) is None


def test_other_link_layers_and_ipv6() -> None:
    """Linux cooked and raw IP frames, IPv6 with an extension header: still every byte once."""
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
    from scapy.layers.l2 import CookedLinux

    from handshake_viz.pcapio import Frame

    sll = bytes(CookedLinux(pkttype=0, lladdrtype=772, lladdrlen=6, proto=0x86DD)
                / IPv6(src="::1", dst="::1") / IPv6ExtHdrDestOpt() / TCP(sport=8080, dport=40000, flags="SA"))
    view = dissect(Frame(1, 0.0, 113, sll, len(sll)))
    assert view.layers == ("Linux cooked", "IPv6", "TCP")
    assert view.field("IPv6", "destination options").raw == bytes(IPv6ExtHdrDestOpt(nh=6))
    assert view.field("TCP", "source port").hex == "1f 90"
    assert view.payload_offset == len(sll)
    raw = sll[16:]
    view = dissect(Frame(2, 0.0, 101, raw, len(raw)))
    assert view.layers == ("IPv6", "TCP") and view.fields[0].offset == 0
    with pytest.raises(NotTcp, match="cut short"):
        dissect(Frame(3, 0.0, 101, raw[:50], 50))
