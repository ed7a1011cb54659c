"""``hsviz export``: a copy of a capture as pcapng whose packets carry the socket calls.

Every segment a call caused gets a packet comment (``opt_comment``) naming the call,
``connect() pid 1234 fd 3``, and every segment that released a call says so,
``recvfrom() pid 1240 fd 4 returns 6``; Wireshark shows them in the packet list
(``pkt_comment`` / ``frame.comment``) and in the packet details.  Calls come from the
capture's ``.calls.jsonl`` (or ``--calls``); a connection without traced calls gets
the calls inferred from its segments, marked ``(inferred)`` -- never a mixture,
exactly as the diagram shows them (``--traced-only`` leaves inferred calls out).

The copy is lossless: every record of the input is written, in order, with its
original bytes -- link layer, non-TCP frames, cut frames and all -- so frame
numbers stay the same and the comments point at the right packets.

Format (pcapng, draft-ietf-opsawg-pcapng):

* a pcap input becomes one section: a Section Header Block (little-endian), one
  Interface Description Block (the pcap's link type and snaplen, ``if_tsresol`` 6
  or 9 for micro- or nanosecond files) and one Enhanced Packet Block per record;
* a pcapng input keeps its sections, byte orders, interfaces and every other
  block as they were; a packet block that gets comments is rewritten as an
  Enhanced Packet Block with its old options kept and the comments appended.
  Only the SHB's section length is set to -1 ("not given"), since comments change it.

The blocks are written here with :mod:`struct`: no libpcap, no scapy.
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from handshake_viz.errors import CaptureFileError, OutputError, UsageError
from handshake_viz.model import Call, ConnectionSummary, Direction, Segment

__all__ = [
    "ExportResult",
    "add_export_command",
    "call_comments",
    "default_output",
    "export_capture",
    "write_pcapng",
]

SHB, IDB, OPB, SPB, EPB = 0x0A0D0D0A, 1, 2, 3, 6
BOM = 0x1A2B3C4D
OPT_ENDOFOPT, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_SNAPLEN_UNLIMITED = 0
IF_TSRESOL = 9
MAX_BLOCK = 1 << 28  # 256 MiB: anything bigger is corruption, not a packet

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 6),
    b"\xa1\xb2\xc3\xd4": (">", 6),
    b"\x4d\x3c\xb2\xa1": ("<", 9),
    b"\xa1\xb2\x3c\x4d": (">", 9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ExportResult:
    """What :func:`write_pcapng` wrote."""

    path: Path
    frames: int = 0  # packet records written (the last frame number)
    commented: int = 0  # frames that got at least one comment
    comments: int = 0  # comments written
    warnings: list[str] = field(default_factory=list)


# ======================================================================================
# Comments: which call goes on which frame
# ======================================================================================


def _side_of(call: Call, summary: ConnectionSummary) -> Direction | None:
    """The direction a call's own segments travel (C2S for the client's calls)."""
    def same(a: object, b: object) -> bool:
        return a is not None and b is not None and a == b

    if same(call.local, summary.client) or same(call.remote, summary.server):
        return Direction.C2S
    if same(call.local, summary.server) or same(call.remote, summary.client):
        return Direction.S2C
    return None


def _who(call: Call) -> str:
    if call.inferred:
        return f"{call.call}()"
    parts = [f"{call.call}()", f"pid {call.pid}"]
    if call.tid and call.tid != call.pid:
        parts.append(f"tid {call.tid}")
    if call.fd is not None:
        parts.append(f"fd {call.fd}")
    return " ".join(parts)


def _returns(call: Call) -> str:
    if call.errno is not None:
        return f" returns -1 {call.errno}"
    if call.ret is None:
        return " returns"
    return f" returns {call.ret}"


def _comment(call: Call, caused: bool) -> str:
    """``connect() pid 1234 fd 3``, ``recvfrom() pid 1240 fd 4 returns 6``,
    ``read() returns 0 (inferred)``."""
    text = _who(call) + ("" if caused else _returns(call))
    return text + " (inferred)" if call.inferred else text


def call_comments(segments: Iterable[Segment], summaries: Sequence[ConnectionSummary],
                  calls: Iterable[Call]) -> dict[int, list[str]]:
    """Frame number -> comments, from calls whose ``conn`` and ``frames`` are filled in.

    A segment sent by the call's own side was *caused* by it (``connect() pid 1234
    fd 3``); one arriving from the peer *released* it (``connect() pid 1234 fd 3
    returns 0``).  On one frame the calls that caused it come first, then those it
    released, each in start order.
    """
    sender = {s.frame: s.dir for s in segments}
    by_conn = {s.conn: s for s in summaries}
    out: dict[int, list[tuple[int, float, str]]] = {}
    for c in calls:
        if c.conn is None or not c.frames:
            continue
        summary = by_conn.get(c.conn)
        own = _side_of(c, summary) if summary is not None else None
        for f in c.frames:
            d = sender.get(f)
            if d is None:
                continue
            if own is None:  # no endpoints: a connect's SYN is its own, everything else too
                caused = not (c.call == "connect" and d is Direction.S2C)
            else:
                caused = d is own
            text = _comment(c, caused)
            out.setdefault(f, []).append((0 if caused else 1, c.start, text))
    return {f: [t for *_, t in sorted(v, key=lambda x: (x[0], x[1]))] for f, v in out.items()}


# ======================================================================================
# pcapng blocks
# ======================================================================================


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * _pad4(len(value))


def _block(order: str, btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def _shb(order: str = "<") -> bytes:
    from handshake_viz import __version__

    opts = _option(order, SHB_USERAPPL, f"hsviz {__version__} export".encode()) + _option(order, 0, b"")
    return _block(order, SHB, struct.pack(order + "IHHq", BOM, 1, 0, -1) + opts)


def _idb(order: str, linktype: int, snaplen: int, tsresol: int) -> bytes:
    opts = _option(order, IF_TSRESOL, bytes([tsresol])) + _option(order, 0, b"")
    return _block(order, IDB, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def _epb(order: str, iface: int, ts: int, caplen: int, origlen: int, data: bytes,
         options: bytes, comments: Sequence[str]) -> bytes:
    """An EPB; ``options`` are the old ones without opt_endofopt (may be empty)."""
    extra = b"".join(_option(order, OPT_COMMENT, c.encode("utf-8")) for c in comments)
    opts = options + extra
    if opts:
        opts += _option(order, OPT_ENDOFOPT, b"")
    body = (struct.pack(order + "IIIII", iface, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF, caplen, origlen)
            + data + b"\0" * _pad4(len(data)) + opts)
    return _block(order, EPB, body)


def _strip_end(order: str, raw: bytes) -> bytes:
    """Options as raw bytes, up to (not including) opt_endofopt; stops at damage."""
    pos, n = 0, len(raw)
    while pos + 4 <= n:
        code, length = struct.unpack_from(order + "HH", raw, pos)
        if code == OPT_ENDOFOPT:
            break
        step = 4 + length + _pad4(length)
        if pos + step > n:
            break
        pos += step
    return raw[:pos]


# ======================================================================================
# Reading records (container only: the bytes of each frame are never decoded here)
# ======================================================================================


class _Source:
    """Exact reads from a (possibly gzip-compressed) capture file."""

    def __init__(self, path: Path, name: str) -> None:
        self.name = name
        try:
            raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise CaptureFileError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise CaptureFileError(f"{name}: is a directory, not a capture file") from None
        except OSError as exc:
            raise CaptureFileError(f"{name}: cannot open: {exc.strerror or exc}") from None
        self._raw = raw
        head = raw.read(2)
        raw.seek(0)
        self.fh: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if head == _GZIP_MAGIC else raw  # type: ignore[assignment]

    def read(self, n: int) -> bytes:
        try:
            return self.fh.read(n)
        except (OSError, EOFError) as exc:
            raise CaptureFileError(f"{self.name}: read error: {exc}") from None

    def close(self) -> None:
        if self.fh is not self._raw:
            self.fh.close()
        self._raw.close()


def _convert(src: _Source, comments: Mapping[int, Sequence[str]], result: ExportResult) -> Iterator[bytes]:
    """The output blocks, one at a time."""
    magic = src.read(4)
    if magic in _PCAP_MAGICS:
        yield from _from_pcap(src, magic, comments, result)
    elif magic == _PCAPNG_MAGIC:
        yield from _from_pcapng(src, magic, comments, result)
    elif not magic:
        raise CaptureFileError(f"{src.name}: empty file (0 bytes)")
    else:
        raise CaptureFileError(f"{src.name}: not a pcap or pcapng file (magic 0x{magic.hex()})")


def _from_pcap(src: _Source, magic: bytes, comments: Mapping[int, Sequence[str]],
               result: ExportResult) -> Iterator[bytes]:
    order, resol = _PCAP_MAGICS[magic]
    head = src.read(20)
    if len(head) < 20:
        raise CaptureFileError(f"{src.name}: pcap file header truncated: {4 + len(head)} of 24 bytes")
    _major, _minor, _zone, _sig, snaplen, network = struct.unpack(order + "HHiIII", head)
    yield _shb("<")
    yield _idb("<", network & 0x03FFFFFF, snaplen, resol)
    scale = 10 ** resol
    rec = struct.Struct(order + "IIII")
    frame = 0
    while True:
        hdr = src.read(16)
        if not hdr:
            break
        if len(hdr) < 16:
            result.warnings.append(f"{src.name}: record {frame + 1} header truncated: "
                                   f"{len(hdr)} of 16 bytes (dropped)")
            break
        sec, frac, caplen, origlen = rec.unpack(hdr)
        if caplen > MAX_BLOCK:
            raise CaptureFileError(f"{src.name}: record {frame + 1}: absurd captured length {caplen}")
        data = src.read(caplen)
        if len(data) < caplen:
            result.warnings.append(f"{src.name}: record {frame + 1} truncated: "
                                   f"{len(data)} of {caplen} bytes (dropped)")
            break
        frame += 1
        notes = comments.get(frame, ())
        _count(result, notes)
        yield _epb("<", 0, sec * scale + frac, caplen, origlen, data, b"", notes)
    result.frames = frame


def _from_pcapng(src: _Source, magic: bytes, comments: Mapping[int, Sequence[str]],
                 result: ExportResult) -> Iterator[bytes]:
    order = "<"
    frame = 0
    first = magic
    while True:
        head = first + src.read(8 - len(first)) if first else src.read(8)
        first = b""
        if not head:
            break
        if len(head) < 8:
            result.warnings.append(f"{src.name}: last block truncated: {len(head)} of 8 header bytes")
            break
        if head[:4] == _PCAPNG_MAGIC:
            bom = src.read(4)
            if len(bom) < 4:
                result.warnings.append(f"{src.name}: section header truncated")
                break
            if bom == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise CaptureFileError(f"{src.name}: pcapng section header has a bad byte-order "
                                       f"magic (0x{bom.hex()})")
            btype, total = struct.unpack(order + "II", head)
            rest_len = total - 12
            if total < 28 or total % 4 or total > MAX_BLOCK:
                raise CaptureFileError(f"{src.name}: pcapng section header with bad length {total}")
            rest = src.read(rest_len)
            if len(rest) < rest_len:
                result.warnings.append(f"{src.name}: section header truncated")
                break
            body = bom + rest[:-4]
            # section length -> -1: the comments change it
            body = body[:8] + struct.pack(order + "q", -1) + body[16:]
            yield _block(order, SHB, body)
            continue
        btype, total = struct.unpack(order + "II", head)
        if total < 12 or total % 4 or total > MAX_BLOCK:
            raise CaptureFileError(f"{src.name}: record {frame + 1}: pcapng block of type {btype} "
                                   f"has a bad length {total}")
        rest = src.read(total - 8)
        if len(rest) < total - 8:
            result.warnings.append(f"{src.name}: last block truncated: {8 + len(rest)} of {total} "
                                   "bytes (dropped)")
            break
        block = head + rest
        if btype not in (EPB, OPB, SPB):
            yield block
            continue
        frame += 1
        notes = comments.get(frame, ())
        if not notes:
            yield block
            continue
        _count(result, notes)
        yield _with_comments(src.name, order, btype, block, notes, frame)
    result.frames = frame


def _with_comments(name: str, order: str, btype: int, block: bytes, notes: Sequence[str],
                   frame: int) -> bytes:
    body = block[8:-4]
    if btype == EPB:
        if len(body) < 20:
            raise CaptureFileError(f"{name}: record {frame}: enhanced packet block too short")
        iface, hi, lo, caplen, origlen = struct.unpack_from(order + "IIIII", body)
        start = 20
    elif btype == OPB:
        if len(body) < 20:
            raise CaptureFileError(f"{name}: record {frame}: packet block too short")
        iface, _drops, hi, lo, caplen, origlen = struct.unpack_from(order + "HHIIII", body)
        start = 20
    else:  # SPB: interface 0, no timestamp, no options
        if len(body) < 4:
            raise CaptureFileError(f"{name}: record {frame}: simple packet block too short")
        (origlen,) = struct.unpack_from(order + "I", body)
        iface, hi, lo = 0, 0, 0
        start = 4
        caplen = min(origlen, len(body) - 4)
    data_end = start + caplen
    if data_end > len(body):
        raise CaptureFileError(f"{name}: record {frame}: captured length {caplen} does not fit its block")
    data = body[start:data_end]
    old = _strip_end(order, body[data_end + _pad4(caplen):]) if btype != SPB else b""
    return _epb(order, iface, (hi << 32) | lo, caplen, origlen, data, old, notes)


def _count(result: ExportResult, notes: Sequence[str]) -> None:
    if notes:
        result.commented += 1
        result.comments += len(notes)


def write_pcapng(src: str | os.PathLike[str], dest: str | os.PathLike[str],
                 comments: Mapping[int, Sequence[str]]) -> ExportResult:
    """Copy capture ``src`` (pcap or pcapng, possibly gzipped) to pcapng ``dest``, adding
    ``comments[frame]`` to each frame (1-based, as ``decode`` numbers them).

    Writes a temporary file beside ``dest`` and renames it, so a failure never leaves
    a half-written file.  Raises CaptureFileError for an unusable input and OutputError
    when ``dest`` cannot be written.
    """
    src_path, dest_path = Path(src), Path(dest)
    name = os.fspath(src)
    try:
        same = dest_path.exists() and os.path.samefile(src_path, dest_path)
    except OSError:
        same = False
    if same:
        raise OutputError(f"{dest_path}: is the input capture; choose another output with -o")
    source = _Source(src_path, name)
    result = ExportResult(dest_path)
    tmp_name = None
    try:
        directory = dest_path.parent if str(dest_path.parent) else Path(".")
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest_path.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise OutputError(f"{dest_path}: cannot write: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as out:
            try:
                for block in _convert(source, comments, result):
                    out.write(block)
            except OSError as exc:  # reading errors arrive as CaptureFileError
                raise OutputError(f"{dest_path}: cannot write: {exc.strerror or exc}") from None
        try:
            os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a capture copy need not be
            os.replace(tmp_name, dest_path)
        except OSError as exc:
            raise OutputError(f"{dest_path}: cannot write: {exc.strerror or exc}") from None
        tmp_name = None
    finally:
        source.close()
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return result


# ======================================================================================
# The whole export, and the CLI subcommand
# ======================================================================================


def default_output(src: str | os.PathLike[str]) -> Path:
    """``trace.pcap`` -> ``trace.annotated.pcapng`` beside it."""
    p = Path(src)
    stem = p.name
    for suffix in (".gz", ".pcapng", ".pcap", ".cap"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return p.with_name(stem + ".annotated.pcapng")


def export_capture(src: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None, *,
                   calls: str | os.PathLike[str] | None = None,
                   traced_only: bool = False) -> tuple[ExportResult, bool]:
    """Decode and track ``src``, line the calls up (``calls``, else the ``.calls.jsonl``
    beside it; connections without traced calls get inferred ones unless
    ``traced_only``), and write the annotated pcapng to ``dest`` (default:
    :func:`default_output`).  Returns the result and whether any traced call was used.

    A capture without TCP is still copied (with no comments).
    """
    from handshake_viz import align as align_mod
    from handshake_viz import trace as trace_mod
    from handshake_viz.decode import open_capture
    from handshake_viz.track import Tracker

    dest_path = Path(dest) if dest is not None else default_output(src)
    if dest_path.suffix.lower() != ".pcapng":
        raise OutputError(f"{dest_path}: the export is a pcapng file: name it *.pcapng")
    calls_path: Path | None
    if calls is not None:
        calls_path = Path(calls)
        if not calls_path.exists():
            raise CaptureFileError(f"{calls_path}: no such file")
    else:
        beside = trace_mod.calls_path_for(src)
        calls_path = beside if beside.exists() else None
    tracker = Tracker()
    with open_capture(src) as reader:
        segments = [tracker.feed(p) for p in reader]
        warnings = list(reader.stats.warnings)
    summaries = tracker.summaries()
    traced = trace_mod.load_calls(calls_path).calls if calls_path is not None else []
    aligned = align_mod.align(segments, summaries, traced) if traced and summaries else []
    by_conn: dict[int, list[Segment]] = {}
    for s in segments:
        by_conn.setdefault(s.conn, []).append(s)
    shown: list[Call] = []
    for summary in summaries:
        segs = by_conn.get(summary.conn, [])
        own = [c for c in aligned if c.conn == summary.conn]
        if own:
            shown.extend(own)
        elif not traced_only:
            shown.extend(align_mod.infer_calls(segs, summary))
    result = write_pcapng(src, dest_path, call_comments(segments, summaries, shown))
    result.warnings[:0] = [w for w in warnings if w not in result.warnings]
    return result, any(not c.inferred for c in shown)


def add_export_command(sub: argparse._SubParsersAction) -> None:
    """Register ``hsviz export FILE [-o OUT.pcapng] [--calls FILE] [--traced-only]``."""
    p = sub.add_parser(
        "export",
        help="write a pcapng copy of a capture whose packets name the socket calls",
        description="Copy a pcap/pcapng capture to pcapng, every frame unchanged, adding a packet "
        "comment to each segment a socket call caused ('connect() pid 1234 fd 3') or that "
        "released one ('recvfrom() pid 1240 fd 4 returns 6'), so Wireshark shows the calls too. "
        "Calls come from FILE's .calls.jsonl beside it (or --calls); a connection without "
        "traced calls gets calls inferred from its segments, marked '(inferred)'.",
    )
    p.add_argument("file", help="capture file (pcap or pcapng)")
    p.add_argument("-o", "--output", metavar="OUT", help="pcapng to write (default: "
                   "FILE.annotated.pcapng beside the input)")
    p.add_argument("--calls", metavar="FILE", help="socket calls: an strace log or a .calls.jsonl")
    p.add_argument("--traced-only", action="store_true",
                   help="comment only traced calls, never calls inferred from the segments")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.output is not None and not args.output:
        raise UsageError("-o: empty output path")
    result, traced = export_capture(args.file, args.output, calls=args.calls,
                                    traced_only=args.traced_only)
    err.writelines(f"hsviz: warning: {w}\n" for w in result.warnings)
    kind = "traced" if traced else "inferred"
    if not result.comments:
        kind = "none"
    out.write(f"{result.path}: {result.frames} frames, {result.comments} comments on "
              f"{result.commented} frames (calls: {kind})\n")
    return 0
