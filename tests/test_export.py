"""hsviz export: a lossless pcapng copy whose packets carry the socket calls as comments.

The copy is read back with the project's own decoder (every TCP packet must come
out identical, frame numbers included) and with scapy's PcapNgReader (the comments
must sit on the right frames).  Inputs: small captures built here, the captures/
the project recorded, and the third-party corpus read in place.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
from pathlib import Path

import pytest

from handshake_viz.decode import open_capture
from handshake_viz.errors import CaptureFileError, HsvizError, OutputError
from handshake_viz.export import call_comments, default_output, export_capture
from handshake_viz.pcapio import copy_to_pcapng as write_pcapng
from handshake_viz.model import Call, Endpoint
from handshake_viz.track import Tracker

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "traces"
CAPTURES = REPO / "captures"


# ------------------------------------------------------------------------------ helpers


def frame(src: str, sport: int, dst: str, dport: int, flags: str, seq: int, ack: int = 0,
          payload: bytes = b"") -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                                                       ack=ack) / payload)


def write_pcap(path: Path, records: list[tuple[float, bytes]], *, big: bool = False,
               nano: bool = False, cut_last: int = 0) -> None:
    o = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    scale = 10**9 if nano else 10**6
    out = bytearray(struct.pack(o + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1))
    for ts, data in records:
        sec = int(ts)
        frac = round((ts - sec) * scale)
        out += struct.pack(o + "IIII", sec, frac, len(data), len(data)) + data
    path.write_bytes(bytes(out[: len(out) - cut_last]))


def conversation() -> list[tuple[float, bytes]]:
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 8080)
    t = 1_700_000_000.25
    return [
        (t + 0.001, frame(*c, *s, "S", 1000)),
        (t + 0.002, frame(*s, *c, "SA", 5000, 1001)),
        (t + 0.003, frame(*c, *s, "A", 1001, 5001)),
        (t + 0.004, frame(*c, *s, "PA", 1001, 5001, b"HELLO\n")),
        (t + 0.005, frame(*s, *c, "A", 5001, 1007)),
    ]


def packets(path: Path) -> tuple[list, int]:
    with open_capture(path) as r:
        got = list(r)
        return got, r.stats.records


def same_packets(a: Path, b: Path) -> None:
    pa, na = packets(a)
    pb, nb = packets(b)
    assert na == nb
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        assert abs(x.ts - y.ts) < 1e-6
        assert (x.frame, x.src, x.sport, x.dst, x.dport, x.seq, x.ack, x.flags, x.win, x.length,
                x.payload, x.raw_options) == (y.frame, y.src, y.sport, y.dst, y.dport, y.seq, y.ack,
                                              y.flags, y.win, y.length, y.payload, y.raw_options)


def scapy_comments(path: Path) -> dict[int, list[str]]:
    from scapy.utils import PcapNgReader

    out = {}
    with PcapNgReader(str(path)) as reader:
        for n, pkt in enumerate(reader, 1):
            got = getattr(pkt, "comments", None) or []
            if got:
                out[n] = [c.decode() if isinstance(c, bytes) else c for c in got]
    return out


def blocks(path: Path) -> list[tuple[str, int, bytes]]:
    """(byte order, type, body) of every block: a reader independent of export.py."""
    data = path.read_bytes()
    out, pos, order = [], 0, "<"
    while pos < len(data):
        if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        btype, total = struct.unpack_from(order + "II", data, pos)
        assert struct.unpack_from(order + "I", data, pos + total - 4)[0] == total
        out.append((order, btype, data[pos + 8:pos + total - 4]))
        pos += total
    return out


def epb_comments(order: str, body: bytes) -> list[str]:
    caplen = struct.unpack_from(order + "I", body, 12)[0]
    pos = 20 + caplen + (-caplen % 4)
    found = []
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, pos)
        if code == 0:
            break
        if code == 1:
            found.append(body[pos + 4:pos + 4 + length].decode())
        pos += 4 + length + (-length % 4)
    return found


# ------------------------------------------------------------------------------ pcap input


@pytest.mark.parametrize("big,nano", [(False, False), (True, False), (False, True)])
def test_pcap_becomes_pcapng_with_the_same_packets_and_comments(tmp_path: Path, big: bool, nano: bool):
    src, dest = tmp_path / "in.pcap", tmp_path / "out.pcapng"
    write_pcap(src, conversation(), big=big, nano=nano)
    notes = {1: ["connect() pid 7 fd 3"], 4: ["sendto() pid 7 fd 3", "recvfrom() pid 8 fd 4 returns 6"]}
    result = write_pcapng(src, dest, notes)
    assert (result.frames, result.commented, result.comments) == (5, 2, 3)
    same_packets(src, dest)
    assert scapy_comments(dest) == notes
    kinds = [b[1] for b in blocks(dest)]
    assert kinds == [0x0A0D0D0A, 1, 6, 6, 6, 6, 6]
    idb = blocks(dest)[1][2]
    assert struct.unpack_from("<HHI", idb) == (1, 0, 65535)
    assert idb[8:13] == struct.pack("<HH", 9, 1) + bytes([9 if nano else 6])


def test_truncated_last_record_is_dropped_with_a_warning(tmp_path: Path):
    src, dest = tmp_path / "in.pcap", tmp_path / "out.pcapng"
    write_pcap(src, conversation(), cut_last=10)
    result = write_pcapng(src, dest, {})
    assert result.frames == 4
    assert len(result.warnings) == 1 and "record 5 truncated" in result.warnings[0]
    assert packets(dest)[1] == 4


def test_gzipped_input(tmp_path: Path):
    import gzip

    src, dest = tmp_path / "in.pcap", tmp_path / "out.pcapng"
    write_pcap(src, conversation())
    gz = tmp_path / "in.pcap.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    write_pcapng(gz, dest, {2: ["x"]})
    same_packets(src, dest)
    assert default_output(gz) == tmp_path / "in.annotated.pcapng"


# ------------------------------------------------------------------------------ pcapng input


def ng_block(o: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(o + "II", btype, len(body) + 12) + body + struct.pack(o + "I", len(body) + 12)


def ng_option(o: str, code: int, value: bytes) -> bytes:
    return struct.pack(o + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def ng_section(o: str, records: list[tuple[float, bytes]], *, section_len: int = -1) -> bytes:
    shb = ng_block(o, 0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, section_len))
    idb = ng_block(o, 1, struct.pack(o + "HHI", 1, 0, 0) + ng_option(o, 9, b"\x06") + ng_option(o, 0, b""))
    out = shb + idb
    # 1: EPB with an old comment, 2: Simple Packet Block, 3: obsolete Packet Block,
    # then a Name Resolution Block (kept as is), then plain EPBs
    for i, (ts, data) in enumerate(records):
        t = round(ts * 1e6)
        pad = b"\0" * (-len(data) % 4)
        if i == 1:
            out += ng_block(o, 3, struct.pack(o + "I", len(data)) + data + pad)
            continue
        if i == 2:
            out += ng_block(o, 2, struct.pack(o + "HHIIII", 0, 0, t >> 32, t & 0xFFFFFFFF, len(data),
                                              len(data)) + data + pad)
            out += ng_block(o, 4, ng_option(o, 0, b""))  # NRB, empty record list
            continue
        opts = ng_option(o, 1, b"old comment") + ng_option(o, 0, b"") if i == 0 else b""
        out += ng_block(o, 6, struct.pack(o + "IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(data), len(data))
                        + data + pad + opts)
    return out


def test_pcapng_sections_in_both_byte_orders_keep_every_block(tmp_path: Path):
    recs = conversation()
    src, dest = tmp_path / "in.pcapng", tmp_path / "out.pcapng"
    src.write_bytes(ng_section("<", recs[:4]) + ng_section(">", recs[4:] + recs[:1], section_len=999))
    notes = {1: ["a"], 2: ["b"], 3: ["c", "d"], 6: ["e"]}
    result = write_pcapng(src, dest, notes)
    assert (result.frames, result.comments) == (6, 5)
    same_packets(src, dest)
    got = blocks(dest)
    orders = [o for o, t, _ in got if t == 0x0A0D0D0A]
    assert orders == ["<", ">"]
    # the big-endian section's length is "not given" now, as comments changed it
    assert struct.unpack_from(">q", [b for o, t, b in got if t == 0x0A0D0D0A][1], 8)[0] == -1
    assert [t for _, t, _ in got] == [0x0A0D0D0A, 1, 6, 6, 6, 4, 6, 0x0A0D0D0A, 1, 6, 6]
    epbs = [(o, b) for o, t, b in got if t == 6]
    assert [epb_comments(o, b) for o, b in epbs] == [
        ["old comment", "a"], ["b"], ["c", "d"], [], ["old comment"], ["e"]]


def test_uncommented_packet_blocks_are_copied_byte_for_byte(tmp_path: Path):
    src, dest = tmp_path / "in.pcapng", tmp_path / "out.pcapng"
    src.write_bytes(ng_section("<", conversation()))
    write_pcapng(src, dest, {})
    assert dest.read_bytes() == src.read_bytes()


# ------------------------------------------------------------------------------ errors


def test_bad_inputs_and_outputs_raise_one_line_errors_and_leave_no_file(tmp_path: Path):
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    dest = tmp_path / "out.pcapng"
    with pytest.raises(CaptureFileError, match=r"junk.pcap: not a pcap or pcapng file"):
        write_pcapng(junk, dest, {})
    assert not dest.exists() and not list(tmp_path.glob(".out.pcapng.*"))
    with pytest.raises(CaptureFileError, match="no such file"):
        write_pcapng(tmp_path / "missing.pcap", dest, {})
    src = tmp_path / "in.pcap"
    write_pcap(src, conversation())
    with pytest.raises(OutputError, match="cannot write"):
        write_pcapng(src, tmp_path / "no-such-dir" / "out.pcapng", {})
    same = tmp_path / "same.pcapng"
    same.write_bytes(ng_section("<", conversation()))
    with pytest.raises(OutputError, match="is the input capture"):
        write_pcapng(same, same, {})
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(ng_section("<", conversation()) + struct.pack("<II", 6, 7) + b"\0" * 12)
    with pytest.raises(CaptureFileError, match="bad length 7"):
        write_pcapng(bad, dest, {})
    assert not dest.exists()
    for e in (CaptureFileError, OutputError):
        assert issubclass(e, HsvizError)


# ------------------------------------------------------------------------------ calls -> comments


def test_call_comments_name_the_caused_and_the_released_segments():
    cap = conversation()
    tracker = Tracker()
    with open_capture(io.BytesIO(_pcap_bytes(cap))) as r:
        segs = [tracker.feed(p) for p in r]
    summaries = tracker.summaries()
    cli, srv = Endpoint("10.0.0.1", 40000), Endpoint("10.0.0.2", 8080)
    calls = [
        Call(7, 7, 3, "connect", 1.0, 1.1, 0, local=cli, remote=srv, conn=0, frames=(1, 2)),
        Call(8, 9, 5, "accept4", 0.5, 1.2, 4, local=srv, remote=cli, conn=0, frames=(3,)),
        Call(7, 7, 3, "sendto", 1.3, 1.4, 6, local=cli, remote=srv, nbytes=6, conn=0, frames=(4,)),
        Call(8, 8, 4, "recvfrom", 1.25, 1.5, 6, local=srv, remote=cli, nbytes=6, conn=0, frames=(4,)),
        Call(0, 0, None, "write", 1.3, 1.3, 6, local=cli, remote=srv, conn=0, frames=(4,), inferred=True),
        Call(7, 7, 3, "connect", 1.0, 1.1, -1, errno="ECONNREFUSED", remote=srv, conn=0, frames=(1, 2)),
        Call(7, 7, 3, "close", 2.0, 2.1, 0, conn=None, frames=(5,)),  # no connection: ignored
    ]
    assert call_comments(segs, summaries, calls) == {
        1: ["connect() pid 7 fd 3", "connect() pid 7 fd 3"],
        2: ["connect() pid 7 fd 3 returns 0", "connect() pid 7 fd 3 returns -1 ECONNREFUSED"],
        3: ["accept4() pid 8 tid 9 fd 5 returns 4"],
        4: ["sendto() pid 7 fd 3", "write() (inferred)", "recvfrom() pid 8 fd 4 returns 6"],
    }


def _pcap_bytes(records: list[tuple[float, bytes]]) -> bytes:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for ts, data in records:
        sec = int(ts)
        out += struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(data), len(data)) + data
    return bytes(out)


# ------------------------------------------------------------------------------ whole export


def _recorded() -> list[Path]:
    if not CAPTURES.is_dir():
        return []
    return sorted(p for p in CAPTURES.glob("*.pcap") if p.with_suffix(".calls.jsonl").exists())


@pytest.mark.parametrize("pcap", _recorded(), ids=lambda p: p.stem)
def test_export_of_a_recorded_capture_comments_every_traced_call(pcap: Path, tmp_path: Path):
    from handshake_viz.api import load

    dest = tmp_path / "annotated.pcapng"
    result, traced = export_capture(pcap, dest)
    same_packets(pcap, dest)
    comments = scapy_comments(dest)
    trace = load(pcap)
    assert traced
    by_frame = {s.frame: s for c in trace.connections for s in c.segments}
    expected = 0
    for conn in [*trace.connections, *trace.flows]:  # UDP: each sendto/recvfrom on its datagram
        for c in conn.calls:
            for f in c.frames:
                expected += 1
                assert f in comments, (c, f)
                assert any(t.startswith(f"{c.call}() pid {c.pid}") for t in comments[f])
            if c.call == "connect" and c.frames and not c.inferred:
                syn = min(c.frames)
                assert by_frame[syn].flag_str == "S"
                tid = f" tid {c.tid}" if c.tid != c.pid else ""
                assert f"connect() pid {c.pid}{tid} fd {c.fd}" in comments[syn]
    assert result.comments == expected == sum(len(v) for v in comments.values())


def _corpus() -> list[Path]:
    return sorted(CORPUS.iterdir()) if CORPUS.is_dir() else []


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"third-party corpus not found at {CORPUS}")
@pytest.mark.parametrize("capture", _corpus(), ids=lambda p: p.name)
def test_corpus_round_trip_with_inferred_calls(capture: Path, tmp_path: Path):
    dest = tmp_path / "out.pcapng"
    result, traced = export_capture(capture, dest)
    assert not traced  # no call logs beside third-party captures: inferred calls only
    same_packets(capture, dest)
    comments = scapy_comments(dest) if result.comments else {}
    assert sum(len(v) for v in comments.values()) == result.comments
    assert all(t.endswith(" (inferred)") for v in comments.values() for t in v)


def test_traced_only_writes_no_inferred_comments(tmp_path: Path):
    src = tmp_path / "in.pcap"
    write_pcap(src, conversation())
    result, traced = export_capture(src, tmp_path / "a.pcapng")
    assert result.comments and not traced
    result, _ = export_capture(src, tmp_path / "b.pcapng", traced_only=True)
    assert result.comments == 0
    same_packets(src, tmp_path / "b.pcapng")
    with pytest.raises(OutputError, match=r"name it \*\.pcapng"):
        export_capture(src, tmp_path / "c.pcap")


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``hsviz ...`` in this process (cli.main prints HsvizError as one line, exit 2)."""
    from handshake_viz.cli import main

    out, err = io.StringIO(), io.StringIO()
    status = main(argv, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_export_subcommand(tmp_path: Path):
    src = tmp_path / "trace.pcap"
    write_pcap(src, conversation())
    status, out, err = _run(["export", str(src)])
    dest = tmp_path / "trace.annotated.pcapng"
    assert status == 0 and err == ""
    # inferred: connect (SYN, SYN-ACK), accept (ACK), write and read (the data)
    assert out == f"{dest}: 5 frames, 5 comments on 4 frames (calls: inferred)\n"
    assert scapy_comments(dest) == {1: ["connect() (inferred)"], 2: ["connect() returns 0 (inferred)"],
                                    3: ["accept() returns (inferred)"],
                                    4: ["write() (inferred)", "read() returns 6 (inferred)"]}
    assert dest.stat().st_mode & 0o777 == 0o600  # payloads inside: private unless --mode widens it
    status, out, err = _run(["export", str(tmp_path / "missing.pcap"), "-o", str(tmp_path / "x.pcapng")])
    assert status == 2 and out == "" and err.count("\n") == 1 and "missing.pcap: no such file" in err
    status, out, err = _run(["export", str(src), "-o", str(tmp_path / "x.png")])
    assert status == 2 and "x.png" in err and err.count("\n") == 1


def test_hsviz_main_runs_export_when_registered(tmp_path: Path):
    from handshake_viz import cli

    src = tmp_path / "trace.pcap"
    write_pcap(src, conversation())
    if "export" not in cli.build_parser()._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        pytest.skip("cli.py does not register 'hsviz export' yet (export.add_export_command)")
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["export", str(src), "-o", str(tmp_path / "o.pcapng")], out=out, err=err) == 0
    assert os.path.exists(tmp_path / "o.pcapng")
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["export", str(tmp_path / "nope.pcap")], out=out, err=err) == 2
    assert err.getvalue().count("\n") == 1
