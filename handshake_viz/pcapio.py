"""Capture files: the one module that knows pcap and pcapng.

Reading
-------
:func:`open_file` opens a pcap (both byte orders, microsecond ``0xa1b2c3d4`` and
nanosecond ``0xa1b23c4d`` magics) or pcapng (several sections, each with its own
byte order; several interfaces, each with its own link type, ``if_tsresol`` and
``if_tsoffset``; Enhanced, Simple and the obsolete Packet blocks; every other
block is skipped) capture, gzip-compressed or not, and returns a
:class:`CaptureFile`.  Its :meth:`~CaptureFile.walk` is the hot path of every
analysis: the file is read in large chunks (``CHUNK`` bytes a ``read()``) and each
record header is unpacked in place with precompiled :class:`struct.Struct`
objects; the frame is handed to a decoder as ``(buffer, start, end)``, never
copied, so memory stays flat whatever the file size.
:meth:`~CaptureFile.frames` yields each record's bytes for the slower consumers
(replay, ``--inject``, ``hsviz show``).

``frame`` numbers every packet record from 1, TCP or not, as Wireshark's
``frame.number`` does.  A file that cannot be used raises
:class:`~handshake_viz.errors.CaptureFileError` with one line that starts with the
file name as the user typed it: at open time for a missing, unreadable, empty or
non-capture file, a cut file header or an unsupported pcap link type; while
walking for corruption in the middle of the file (an absurd record length, an
undefined pcapng interface).  A file whose *last* record is cut short (still being
written, or copied half-way) is not an error: every complete record before it is
read, then a warning is added to ``stats.warnings``.

Writing
-------
:class:`PcapWriter` writes a little-endian microsecond pcap as a live capture
arrives, whole records only (a killed writer leaves a valid file).
:func:`copy_to_pcapng` copies any capture to pcapng, every record unchanged, with
packet comments added (``hsviz export``).
"""

from __future__ import annotations

import gzip
import os
import signal
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from handshake_viz.errors import CaptureFileError, OutputError, os_error
from handshake_viz.outfile import DEFAULT_MODE, AtomicFile, create_live, unlinked

__all__ = [
    "CALLS_SUFFIX",
    "CHUNK",
    "KERNEL_SUFFIX",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_NAMES",
    "MAX_CAPLEN",
    "CaptureFile",
    "CopyResult",
    "Frame",
    "PcapWriter",
    "ReadStats",
    "beside",
    "copy_to_pcapng",
    "open_file",
    "unsupported",
]

Source = str | bytes | os.PathLike[str] | os.PathLike[bytes] | BinaryIO

#: Bytes read per ``read()`` call.  Large enough that the per-call cost vanishes,
#: small enough to stay in cache and keep peak memory low.
CHUNK = 1 << 20

#: Largest captured length accepted for one record unless the file's snaplen is
#: larger (Wireshark's WTAP_MAX_PACKET_SIZE_STANDARD).  A larger value in a record
#: header means the file is corrupt, not that a huge packet follows.
MAX_CAPLEN = 262144

#: Largest pcapng block accepted (a packet block plus generous options).
MAX_BLOCK = 16 << 20

LINKTYPE_ETHERNET = 1

#: Names of link types, for messages (tcpdump.org's LINKTYPE_ list).
LINKTYPE_NAMES: dict[int, str] = {
    0: "BSD loopback (NULL)",
    1: "Ethernet",
    6: "IEEE 802.5 Token Ring",
    9: "PPP",
    10: "FDDI",
    12: "raw IP",
    14: "raw IP",
    50: "PPP in HDLC framing",
    101: "raw IP",
    104: "Cisco HDLC",
    105: "IEEE 802.11",
    108: "OpenBSD loopback",
    113: "Linux cooked (SLL)",
    119: "Prism 802.11",
    127: "802.11 radiotap",
    189: "Linux USB",
    192: "PPI",
    195: "IEEE 802.15.4",
    201: "Bluetooth HCI",
    220: "Linux USB (mmapped)",
    228: "raw IPv4",
    229: "raw IPv6",
    249: "Netlink",
    276: "Linux cooked v2 (SLL2)",
}


#: What hsviz writes beside a capture ``X.pcap``: its socket calls and its kernel events.
CALLS_SUFFIX, KERNEL_SUFFIX = "calls.jsonl", "kernel.jsonl"


def beside(capture: str | os.PathLike[str], suffix: str) -> Path:
    """The file of a capture's ``suffix`` beside it: ``beside("trace.pcap", "calls.jsonl")``
    is ``trace.calls.jsonl`` (the same for .pcapng and .cap; other names keep theirs:
    ``trace.dump.calls.jsonl``)."""
    p = Path(capture)
    stem = p.stem if p.suffix.lower() in (".pcap", ".pcapng", ".cap") else p.name
    return p.with_name(f"{stem}.{suffix}")


def unsupported(linktype: int) -> str:
    """``unsupported link type 9 (PPP)``: the words every message uses."""
    return f"unsupported link type {linktype} ({LINKTYPE_NAMES.get(linktype, 'unknown')})"


# pcap: magic -> (byte order, fraction units per second)
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_PCAP_HEADER_LEN = 24
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ReadStats:
    """Counters of one pass over a capture.

    Updated while walking (at every chunk read and when the walk stops), so a
    caller that looks only after the loop sees exact numbers.
    ``records == decoded + skipped + malformed``.
    """

    records: int = 0  # packet records read; the last frame number used
    decoded: int = 0  # records the decoder made something of
    skipped: int = 0  # not for this decoder (ARP, ICMP, …), or on an undecodable interface
    malformed: int = 0  # headers cut or inconsistent
    snaplen_cut: int = 0  # records captured shorter than they were on the wire
    warnings: list[str] = field(default_factory=list)  # full lines, file name first

    def _reset(self) -> None:
        self.set(0, 0, 0, 0, 0)
        self.warnings.clear()

    def set(self, records: int, decoded: int, skipped: int, malformed: int, snaplen_cut: int) -> None:
        """The counts so far (a walk keeps them in locals and writes them here now and then)."""
        self.records, self.decoded, self.skipped = records, decoded, skipped
        self.malformed, self.snaplen_cut = malformed, snaplen_cut

    def count(self, decoded: int, malformed: int) -> None:
        """What the decoder made of the :attr:`records` read: the rest were skipped."""
        self.decoded, self.malformed = decoded, malformed
        self.skipped = self.records - decoded - malformed


# Where a record's frame is: (linktype, buf, start, end, frame, ts, extra), the frame
# being buf[start:end] (CaptureFile.positions).
Position = tuple[int, bytes, int, int, int, float, int]


class Decoder(Protocol):
    """What :meth:`CaptureFile.walk` calls for each frame (see there)."""

    def __call__(self, linktype: int, buf: bytes, start: int, end: int, frame: int, ts: float,
                 extra: int, make: Callable[..., Any], make_udp: Callable[..., Any] | None,
                 /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Frame:
    """One record of a capture file: its frame number, time, link type and bytes.

    ``wirelen`` is the frame's length on the wire (more than ``len(data)`` when the
    capture's snaplen cut it).
    """

    frame: int
    ts: float
    linktype: int
    data: bytes
    wirelen: int


def _as_frame(lt: int, buf: bytes, start: int, end: int, frame: int, ts: float, extra: int,
              make: Callable[..., Any], _make_udp: object) -> Frame:
    return make(frame, ts, lt, buf[start:end], end - start + extra)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


class _Chain:
    """A raw reader that first returns ``head`` and then reads from ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._stream.read(n)

    def close(self) -> None:
        pass


class CaptureFile:
    """An open pcap or pcapng file (possibly gzip-compressed).

    :meth:`walk` streams the records in chunks and hands each frame to a frame
    decoder; :meth:`frames` yields each record's bytes (for replay, inject and
    ``hsviz show``); :attr:`stats` counts what was read.  A file over a regular file
    can be walked again (it rereads from the start and resets :attr:`stats`); one
    over a pipe only once.  Use it as a context manager, or call :meth:`close`, to
    close the file it opened (a stream passed in by the caller is left open).

    ``supported`` names the link types the caller can decode: a pcap of another
    link type is refused at open, a pcapng interface of another is skipped with a
    warning.
    """

    name: str
    format: str  # "pcap" or "pcapng"
    linktypes: list[int]  # pcap: the file's link type; pcapng: one per interface seen so far
    snaplen: int  # pcap header snaplen; pcapng: that of the first interface (0 if unknown)
    ts_resolution: float  # pcap: 1e-6 or 1e-9; pcapng: that of the first interface
    stats: ReadStats
    #: Called with the records read so far at every chunk read (``hsviz analyze``'s
    #: progress line, :mod:`handshake_viz.progress`); None: nothing is called.
    progress: Callable[[int], object] | None = None

    def __init__(self, stream: BinaryIO, name: str, *, owns: bool,
                 supported: Mapping[int, str], stats: ReadStats | None = None) -> None:
        self.name = name
        self._stream = stream
        self._owns = owns
        self._iterated = False
        self._supported = supported
        self.stats = ReadStats() if stats is None else stats
        self.linktypes = []
        self.snaplen = 0
        self.ts_resolution = 1e-6
        self._head = self._read_at_least(self._stream, CHUNK, 28)
        head = self._head
        if not head:
            raise CaptureFileError(f"{name}: empty file (0 bytes)")
        self._raw = stream
        if head[:2] == _GZIP_MAGIC:
            self._stream = gzip.GzipFile(fileobj=_Chain(head, stream), mode="rb")  # type: ignore[call-overload]
            self._head = head = self._read_at_least(self._stream, CHUNK, 28)
            if not head:
                raise CaptureFileError(f"{name}: empty file (gzip-compressed, 0 bytes inside)")
        magic = head[:4]
        if magic in _PCAP_MAGICS:
            self._open_pcap(head)
        elif magic == _PCAPNG_MAGIC:
            self._open_pcapng(head)
        elif len(head) < 4:
            raise CaptureFileError(f"{name}: not a pcap or pcapng file ({len(head)} bytes)")
        else:
            hint = ""
            if magic in (b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34"):
                hint = ": modified (Kuznetzov) pcap, not supported"
            raise CaptureFileError(
                f"{name}: not a pcap or pcapng file (magic 0x{magic.hex()}){hint}"
            )

    # -- opening ----------------------------------------------------------

    def _read_at_least(self, stream: BinaryIO, size: int, minimum: int) -> bytes:
        """Read up to ``size`` bytes, looping on short reads until ``minimum`` or EOF.

        Each ``read()`` asks for at most ``CHUNK`` bytes: a record header may claim
        4 GiB, and ``read(n)`` allocates ``n`` bytes before it reads one, so memory
        must follow what the file holds, not what it claims."""
        parts: list[bytes] = []
        got = 0
        while True:
            try:
                data = stream.read(min(size - got, CHUNK))
            except (OSError, EOFError, ValueError, zlib.error) as exc:  # ValueError: closed
                raise CaptureFileError(f"{self.name}: read error: {_why(exc)}") from None
            if not data:
                break
            parts.append(data)
            got += len(data)
            if got >= minimum:
                break
        return b"".join(parts)

    def _open_pcap(self, head: bytes) -> None:
        if len(head) < _PCAP_HEADER_LEN:
            raise CaptureFileError(
                f"{self.name}: pcap file header truncated: {len(head)} of {_PCAP_HEADER_LEN} bytes"
            )
        order, units = _PCAP_MAGICS[head[:4]]
        major, minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(
            order + "HHiIII", head, 4
        )
        if major != 2:
            raise CaptureFileError(f"{self.name}: unsupported pcap version {major}.{minor}")
        linktype = network & 0x03FFFFFF  # upper bits may carry the FCS length
        if linktype not in self._supported:
            raise CaptureFileError(f"{self.name}: {unsupported(linktype)}")
        self.format = "pcap"
        self.linktypes = [linktype]
        self.snaplen = snaplen
        self.ts_resolution = 1.0 / units
        self._order = order
        self._units = units

    def _open_pcapng(self, head: bytes) -> None:
        self.format = "pcapng"
        if len(head) < 28:
            raise CaptureFileError(
                f"{self.name}: pcapng section header truncated: {len(head)} of 28 bytes"
            )
        order = _bom_order(head, 8)
        if order is None:
            raise CaptureFileError(
                f"{self.name}: pcapng section header has a bad byte-order magic "
                f"(0x{head[8:12].hex()})"
            )
        major, minor = struct.unpack_from(order + "HH", head, 12)
        if major != 1:
            raise CaptureFileError(f"{self.name}: unsupported pcapng version {major}.{minor}")
        # Look at the interfaces declared before the first packet (within the first
        # chunk): if every one has a link type we cannot decode, say so now.
        pos, lts = 0, list[int]()
        while pos + 12 <= len(head):
            btype, blen = struct.unpack_from(order + "II", head, pos)
            if btype == _PCAPNG_SHB and pos:
                break
            if blen < 12 or blen % 4 or pos + blen > len(head):
                break
            if btype in (2, 3, 6):
                break
            if btype == 1 and blen >= 20:
                iface = _parse_idb(head, pos, blen, order)
                if not lts:
                    self.snaplen = iface[3]
                    self.ts_resolution = 1.0 / iface[1]
                lts.append(iface[0])
            pos += blen
        self.linktypes = lts
        if lts and not any(lt in self._supported for lt in lts):
            raise CaptureFileError(f"{self.name}: {unsupported(lts[0])}")

    # -- iteration ----------------------------------------------------------

    def _start(self) -> bytes:
        """The first chunk of the file, for a new pass."""
        if not self._iterated:
            self._iterated = True
            head = self._head
            self._head = b""  # do not keep a chunk alive for the reader's lifetime
            return head
        try:
            seekable = self._stream.seekable() and not isinstance(self._stream, gzip.GzipFile)
            if seekable:
                self._stream.seek(0)
        except (OSError, AttributeError, ValueError):
            seekable = False
        if not seekable:
            raise CaptureFileError(f"{self.name}: a stream can be read only once")
        self.stats._reset()
        return self._read_at_least(self._stream, CHUNK, CHUNK)

    def walk(self, decode: Decoder, make: Callable[..., Any], make_udp: Callable[..., Any] | None = None
             ) -> Iterator[Any]:
        """Every record's frame through ``decode``; yields what it returns when truthy.

        ``decode(linktype, buf, start, end, frame, ts, extra, make, make_udp)`` gets the
        frame ``buf[start:end]`` (``extra``: bytes on the wire beyond those captured) and
        returns a record, ``None`` (not for this reader: counted as skipped) or
        ``False`` (malformed).  This loop is the hot path of a whole-file analysis: it
        unpacks record headers in place in large chunks and never copies a frame.
        """
        positions = self.positions()
        nok = nbad = 0
        try:
            for lt, buf, start, end, frame, ts, extra in positions:
                r = decode(lt, buf, start, end, frame, ts, extra, make, make_udp)
                if r:
                    nok += 1
                    yield r
                elif r is not None:
                    nbad += 1
        finally:
            positions.close()  # its counts first (a reader that stops early)
            self.stats.count(nok, nbad)

    def positions(self) -> Generator[Position, None, None]:
        """Where each record's frame is, in file order: ``(linktype, buf, start, end,
        frame, ts, extra)``, the frame being ``buf[start:end]`` (see :meth:`walk`).

        Records of a link type this reader does not decode are counted and passed over.
        :attr:`stats` gets the records read and those the snaplen cut; whoever decodes
        the frames sets the rest (:meth:`ReadStats.count`).
        """
        if self.format == "pcap":
            return self._pcap_positions()
        return self._pcapng_positions()

    def frames(self) -> Iterator[Frame]:
        """Each record as a :class:`Frame` (its bytes copied), in file order."""
        return self.walk(_as_frame, Frame)

    def _refill(self, buf: bytes, pos: int, size: int, records: int, ncut: int) -> bytes:
        """The unread rest of ``buf``, then (up to) ``size`` more bytes of the file; the
        walk's counts so far go to :attr:`stats`, and the records read to
        :attr:`progress`."""
        self.stats.records, self.stats.snaplen_cut = records, ncut
        if self.progress is not None:
            self.progress(records)
        return buf[pos:] + self._read(size)

    def _next_chunk(self, buf: bytes, pos: int, records: int, ncut: int, least: int,
                    truncated: str) -> bytes:
        """:meth:`_refill` by a chunk; empty at the end of the file, with the warning
        ``truncated`` (``{}``: the bytes left) when fewer than the ``least`` bytes a
        header needs are left."""
        buf = self._refill(buf, pos, CHUNK, records, ncut)
        if len(buf) >= least:
            return buf
        if buf:
            self.stats.warnings.append(f"{self.name}: {truncated.format(len(buf))}")
        return b""

    def _read(self, n: int) -> bytes:
        """Read ``n`` bytes (fewer only at end of file)."""
        return self._read_at_least(self._stream, n, n)

    def _pcap_positions(self) -> Generator[Position, None, None]:
        name = self.name
        stats = self.stats
        buf = self._start()
        lt = self.linktypes[0]
        rec = struct.Struct(self._order + "IIII").unpack_from
        units = self._units
        maxcap = max(MAX_CAPLEN, self.snaplen)
        pos = _PCAP_HEADER_LEN
        blen = len(buf)
        frame = ncut = 0
        try:
            while True:
                if blen - pos < 16:
                    buf = self._next_chunk(buf, pos, frame, ncut, 16,
                                           f"record {frame + 1} header truncated: {{}} of 16 bytes")
                    if not buf:
                        return
                    pos, blen = 0, len(buf)
                sec, frac, caplen, wirelen = rec(buf, pos)
                if caplen > maxcap:
                    raise CaptureFileError(
                        f"{name}: record {frame + 1}: captured length {caplen} is larger "
                        f"than {maxcap} bytes (corrupt file?)"
                    )
                start = pos + 16
                end = start + caplen
                if end > blen:
                    buf = self._refill(buf, pos, max(CHUNK, end - blen), frame, ncut)
                    pos, blen = 0, len(buf)
                    start, end = 16, 16 + caplen
                    if end > blen:
                        stats.warnings.append(
                            f"{name}: record {frame + 1} truncated: {blen - 16} of {caplen} bytes"
                        )
                        return
                frame += 1
                pos = end
                if wirelen > caplen:
                    ncut += 1
                    yield lt, buf, start, end, frame, sec + frac / units, wirelen - caplen
                else:
                    yield lt, buf, start, end, frame, sec + frac / units, 0
        finally:
            stats.records, stats.snaplen_cut = frame, ncut

    def _pcapng_positions(self) -> Generator[Position, None, None]:
        name = self.name
        stats = self.stats
        buf = self._start()
        pos = 0
        base = 0  # file offset of buf[0], for messages
        blen = len(buf)
        frame = ncut = 0
        order = "<"
        hdr = struct.Struct("<3I").unpack_from  # block type, block length, first field
        # block type, length, then (EPB) interface, ts high, ts low, caplen, wirelen
        blk = struct.Struct("<7I").unpack_from
        # per interface: (link type, ticks per second, offset seconds, snaplen, decodable)
        ifaces: list[tuple[int, int, int, int, bool]] = []
        self.linktypes = []
        try:
            while True:
                if blen - pos < 28:
                    base += pos
                    buf = self._next_chunk(buf, pos, frame, ncut, 12, f"pcapng block at byte {base} "
                                           "truncated: {} of at least 12 bytes")
                    if not buf:
                        return
                    pos, blen = 0, len(buf)
                if blen - pos >= 28:
                    btype, size, iid, hi, lo, caplen, wirelen = blk(buf, pos)
                else:  # a small block at the very end of the file
                    btype, size, iid = hdr(buf, pos)
                    hi = lo = caplen = wirelen = 0
                if btype == _PCAPNG_SHB:
                    new_order = _bom_order(buf, pos + 8)
                    if new_order is None:
                        raise CaptureFileError(
                            f"{name}: pcapng section header at byte {base + pos} has a bad "
                            f"byte-order magic (0x{buf[pos + 8 : pos + 12].hex()})"
                        )
                    if new_order != order:
                        order = new_order
                        hdr = struct.Struct(order + "3I").unpack_from
                        blk = struct.Struct(order + "7I").unpack_from
                        btype, size, iid = hdr(buf, pos)
                if size < 12 or size % 4 or size > MAX_BLOCK:
                    raise CaptureFileError(
                        f"{name}: pcapng block at byte {base + pos} has an invalid length "
                        f"{size} (corrupt file?)"
                    )
                if pos + size > blen:
                    base += pos
                    buf = self._refill(buf, pos, max(CHUNK, pos + size - blen), frame, ncut)
                    pos, blen = 0, len(buf)
                    if blen >= 28:
                        btype, size, iid, hi, lo, caplen, wirelen = blk(buf, 0)
                    if size > blen:
                        if btype in (2, 6) and 0 <= blen - 28 < caplen:
                            stats.warnings.append(
                                f"{name}: record {frame + 1} truncated: "
                                f"{blen - 28} of {caplen} bytes"
                            )
                        else:
                            stats.warnings.append(
                                f"{name}: pcapng block at byte {base} truncated: "
                                f"{blen} of {size} bytes"
                            )
                        return
                if btype == 6 or btype == 2:  # Enhanced / obsolete Packet Block
                    frame += 1
                    if size < 32:
                        raise CaptureFileError(
                            f"{name}: record {frame}: pcapng packet block at byte "
                            f"{base + pos} too short ({size} bytes)"
                        )
                    if btype == 2:  # 16-bit interface id, then a 16-bit drop count
                        iid = iid & 0xFFFF if order == "<" else iid >> 16
                    if caplen > size - 32:
                        raise CaptureFileError(
                            f"{name}: record {frame}: captured length {caplen} does not fit "
                            f"its {size}-byte block (corrupt file?)"
                        )
                    try:
                        lt, ticks, offset, _snap, ok = ifaces[iid]
                    except IndexError:
                        raise CaptureFileError(
                            f"{name}: record {frame}: interface {iid} was not described "
                            f"(corrupt file?)"
                        ) from None
                    start = pos + 28
                    ts = ((hi << 32) | lo) / ticks + offset
                elif btype == 3:  # Simple Packet Block: no interface id, no timestamp
                    frame += 1
                    if not ifaces:
                        raise CaptureFileError(
                            f"{name}: record {frame}: interface 0 was not described "
                            f"(corrupt file?)"
                        )
                    lt, _ticks, _offset, snap, ok = ifaces[0]
                    wirelen = iid  # the field after the block length
                    caplen = min(wirelen, size - 16)
                    if snap:
                        caplen = min(caplen, snap)
                    start = pos + 12
                    ts = 0.0
                else:
                    start = -1  # not a packet
                if start >= 0:  # a packet block, of either kind
                    pos += size
                    extra = wirelen - caplen
                    if extra > 0:
                        ncut += 1
                    else:
                        extra = 0
                    if ok:
                        yield lt, buf, start, start + caplen, frame, ts, extra
                    continue
                if btype == 1:  # Interface Description Block
                    if size < 20:
                        raise CaptureFileError(
                            f"{name}: pcapng interface block at byte {base + pos} too short "
                            f"({size} bytes)"
                        )
                    lt, ticks, offset, snap = _parse_idb(buf, pos, size, order)
                    ok = lt in self._supported
                    if not ok:
                        stats.warnings.append(
                            f"{name}: interface {len(ifaces)}: {unsupported(lt)}; "
                            f"its packets are skipped"
                        )
                    ifaces.append((lt, ticks, offset, snap, ok))
                    self.linktypes.append(lt)
                elif btype == _PCAPNG_SHB:  # a new section: interfaces start again
                    ifaces = []
                pos += size
        finally:
            stats.records, stats.snaplen_cut = frame, ncut

    # -- resources ----------------------------------------------------------

    def close(self) -> None:
        """Close the file if this reader opened it."""
        if self._owns:
            for stream in (self._stream, self._raw):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} {self.format} linktypes={self.linktypes} "
            f"records={self.stats.records}>"
        )


def _bom_order(buf: bytes, off: int) -> str | None:
    bom = buf[off : off + 4]
    if bom == b"\x4d\x3c\x2b\x1a":
        return "<"
    if bom == b"\x1a\x2b\x3c\x4d":
        return ">"
    return None


def _parse_idb(buf: bytes, pos: int, size: int, order: str) -> tuple[int, int, int, int]:
    """Interface Description Block -> (link type, ticks per second, offset s, snaplen)."""
    linktype, snaplen = struct.unpack_from(order + "HxxI", buf, pos + 8)
    ticks, offset = 1_000_000, 0  # default if_tsresol is 6 (microseconds)
    opt = pos + 16
    stop = pos + size - 4
    u16x2 = struct.Struct(order + "HH")
    while opt + 4 <= stop:
        code, olen = u16x2.unpack_from(buf, opt)
        if code == 0:  # opt_endofopt
            break
        value = opt + 4
        if value + olen > stop:
            break  # a cut option list: keep the defaults
        if code == 9 and olen >= 1:  # if_tsresol
            res = buf[value]
            ticks = 2 ** (res & 0x7F) if res & 0x80 else 10**res
        elif code == 14 and olen >= 8:  # if_tsoffset, seconds
            offset = struct.unpack_from(order + "q", buf, value)[0]
        opt = value + ((olen + 3) & ~3)
    return linktype, ticks, offset, snaplen


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


_F = TypeVar("_F", bound="CaptureFile")


def _open_for_reading(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], shown: str,
                      buffering: int = -1) -> BinaryIO:
    """``path`` opened to read bytes, or a :class:`CaptureFileError` naming ``shown``."""
    try:
        return open(path, "rb", buffering=buffering)  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise CaptureFileError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise CaptureFileError(f"{shown}: is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureFileError(f"{shown}: permission denied") from None
    except OSError as exc:
        raise os_error(exc, shown, "open", CaptureFileError) from None


def open_file(source: Source, *, supported: Mapping[int, str], name: str | None = None,
              stats: ReadStats | None = None, cls: type[_F] = CaptureFile) -> _F:  # type: ignore[assignment]
    """Open a pcap or pcapng capture (possibly gzip-compressed) for reading its records.

    ``source`` is a path (``"-"`` reads standard input) or a binary file object.
    ``name`` is what messages call the file (default: the path as given, or the
    file object's ``name``); ``cls`` what to make of it (a CaptureFile subclass).  Raises :class:`~handshake_viz.errors.CaptureFileError`
    when the file is missing, a directory, unreadable, empty, not a capture, has a
    cut file header, or (pcap) an unsupported link type.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        path = os.fspath(source)
        shown = name or (path if isinstance(path, str) else os.fsdecode(path))
        if path == "-":
            return cls(sys.stdin.buffer, name or "-", owns=False, supported=supported, stats=stats)
        stream = _open_for_reading(path, shown, buffering=0)  # we do our own large reads
        try:
            return cls(stream, shown, owns=True, supported=supported, stats=stats)  # type: ignore[arg-type]
        except BaseException:
            stream.close()
            raise
    shown = name or str(getattr(source, "name", "") or "<stream>")
    return cls(source, shown, owns=False, supported=supported, stats=stats)


# ---------------------------------------------------------------------------
# Writing: a live pcap
# ---------------------------------------------------------------------------

DEFAULT_SNAPLEN = 262144

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_HEADER = struct.Struct("<IHHiIII")  # magic, 2, 4, thiszone, sigfigs, snaplen, linktype
_PCAP_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len


class PcapWriter:
    """Write a classic little-endian, microsecond pcap as records arrive.

    Microsecond resolution because every reader (tcpdump, tshark, scapy, Zeek,
    tcptrace) reads it; loopback ordering is kept by record order anyway.

    Records are buffered whole in memory and written with ``os.write``, never
    through a buffered file that could flush half a record, so if the process
    dies the file holds the header and complete records only.  A record reaches
    the file at most ``2 * flush_interval`` (100 ms by default) after ``write``:
    ``write`` flushes once the oldest pending record is ``flush_interval`` old,
    and a background thread does the same when no more writes come (a capture
    whose consumer is stuck printing still gets its records onto the disk).
    Per record this costs one lock and one ``bytearray`` extend, not a syscall.

    The file is made new (:func:`~handshake_viz.outfile.create_live`: never through
    a link, ``mode`` 0600 unless told).  When a write fails (the disk is full) the
    file is cut back to the last record written whole, so it stays readable by
    every tool, and the OutputError says how many packets it keeps and how many
    are lost (:attr:`lost`); every later ``write`` counts its record as lost and
    raises again.  A file that loses its name while it is written (its directory
    removed) is an error too, found at the next flush.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = DEFAULT_SNAPLEN,
        flush_interval: float = 0.05,
        max_buffer: int = 1 << 20,
        background_flush: bool = True,
        mode: int = DEFAULT_MODE,
    ) -> None:
        self.path = Path(path)
        self.linktype = linktype
        self.snaplen = snaplen
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.records = 0  # records given to write()
        self.on_disk = 0  # records written whole to the file
        self.lost = 0  # records that will never be in the file
        self._size = 0  # bytes of header and whole records in the file
        self._buf = bytearray()
        self._buf_records = 0
        self._pending_since = 0.0
        self._lock = threading.Lock()
        self._error: OutputError | None = None  # the first failure, raised by every later call
        self._fd: int | None = create_live(self.path, mode)
        self._write_out(_PCAP_HEADER.pack(_PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype), 0)
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None
        if background_flush:
            self._flusher = threading.Thread(target=self._flush_loop, name="pcap-flush", daemon=True)
            self._flusher.start()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(
        self,
        data: bytes,
        ts: float | None = None,
        *,
        ts_ns: int | None = None,
        wirelen: int | None = None,
    ) -> None:
        """Append one record.  ``ts_ns`` (epoch nanoseconds) wins over ``ts`` (seconds)."""
        if self._error is not None:
            self.records += 1
            self.lost += 1
            self._error_raised = True
            raise self._error
        if self._fd is None:
            raise ValueError("write to a closed PcapWriter")
        if ts_ns is not None:
            usec_total = ts_ns // 1000
        elif ts is not None:
            usec_total = round(ts * 1_000_000)
        else:
            usec_total = time.time_ns() // 1000
        caplen = min(len(data), self.snaplen)
        orig = max(wirelen if wirelen is not None else len(data), caplen)
        record = _PCAP_RECORD.pack(usec_total // 1_000_000, usec_total % 1_000_000, caplen, orig) + (
            data[:caplen] if caplen < len(data) else data
        )
        with self._lock:
            buf = self._buf
            now = time.monotonic()
            if not buf:
                self._pending_since = now
            # One extend per record: a signal handler that raises between two
            # bytecodes can never leave half a record in the buffer.
            buf += record
            self._buf_records += 1
            self.records += 1
            if len(buf) >= self.max_buffer or now - self._pending_since >= self.flush_interval:
                self._flush_raising()

    def maybe_flush(self, now: float | None = None) -> None:
        """Flush if the oldest pending record has waited ``flush_interval`` or more;
        raises the writer's error, if any, even when nothing is pending."""
        if self._error is not None:
            self._error_raised = True
            raise self._error
        if self._buf and (now if now is not None else time.monotonic()) - self._pending_since >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush_raising()

    def _flush_raising(self) -> None:
        """_flush_locked for a caller: the error it raises has reached someone."""
        try:
            self._flush_locked()
        except OutputError:
            self._error_raised = True
            raise

    def _flush_locked(self) -> None:
        if self._error is not None:
            raise self._error
        if self._buf and self._fd is not None:
            # SIGINT/SIGTERM are held while the buffer goes out, so a handler that
            # raises cannot make the bytes be written twice or cut in half.
            with _signals_held():
                data, self._buf = self._buf, bytearray()
                n, self._buf_records = self._buf_records, 0
                self._write_out(data, n)

    def _flush_loop(self) -> None:
        while not self._closing.wait(self.flush_interval):
            with self._lock:
                if not self._buf or time.monotonic() - self._pending_since < self.flush_interval:
                    continue
                try:
                    self._flush_locked()
                except OutputError:
                    return  # kept in self._error: the capture's next call raises it

    def close(self) -> None:
        """Write what is pending and close the file.  Safe to call more than once.
        Raises the writer's error if no call has raised it yet."""
        if self._fd is None:
            return
        self._closing.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._lock:
            try:
                if self._error is None:
                    self._flush_locked()
                if self._error is None and self._fd is not None and unlinked(self._fd):
                    self._fail(self._gone())
            except OutputError:
                pass
            finally:
                fd, self._fd = self._fd, None
                if fd is not None:
                    os.close(fd)
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error

    _error_raised = False

    def _fail(self, error: OutputError) -> OutputError:
        self._error = error
        return error

    def _write_out(self, data: bytes | bytearray, records: int) -> None:
        """Write ``data`` (whole records, ``records`` of them, or the file header);
        on a failure cut the file back to its last whole record and raise."""
        assert self._fd is not None
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            whole, kept = _whole_records(data, done) if records else (0, 0)
            try:
                os.ftruncate(self._fd, self._size + whole)
            except OSError:
                pass
            self._size += whole
            self.on_disk += kept
            self.lost += records - kept
            reason = exc.strerror or str(exc)
            if not records and not self.on_disk:
                raise self._fail(OutputError(str(os_error(exc, self.path, "write")))) from None
            raise self._fail(OutputError(
                f"{self.path}: cannot write: {reason}: the file keeps the first "
                f"{self.on_disk:,} packets, cut back to the last whole record; "
                f"{self.lost:,} lost")) from None
        finally:
            view.release()
        self._size += len(data)
        self.on_disk += records
        if unlinked(self._fd):
            raise self._fail(self._gone())

    def _gone(self) -> OutputError:
        self.lost = self.records
        return OutputError(f"{self.path}: the file was removed while it was written (its directory "
                           f"deleted?): its {self.records:,} packets are lost")

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave captured data in memory
        try:
            self.close()
        except Exception:  # noqa: BLE001,S110 - nothing left to report to at interpreter exit
            pass


def _whole_records(data: bytes | bytearray, written: int) -> tuple[int, int]:
    """(bytes, records) of the whole pcap records at the start of ``data`` that lie
    within its first ``written`` bytes."""
    pos = count = 0
    while pos + 16 <= written:
        end = pos + 16 + _PCAP_RECORD.unpack_from(data, pos)[2]
        if end > written:
            break
        pos, count = end, count + 1
    return pos, count


class _signals_held:
    """Block SIGINT and SIGTERM in the main thread for the duration (no-op elsewhere)."""

    _SIGS = frozenset({signal.SIGINT, signal.SIGTERM})

    def __enter__(self) -> None:
        self._old: set[int] | None = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.pthread_sigmask(signal.SIG_BLOCK, self._SIGS)

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)




# ---------------------------------------------------------------------------
# Writing: a pcapng copy with packet comments (hsviz export)
# ---------------------------------------------------------------------------

# pcapng (draft-ietf-opsawg-pcapng): block types, byte-order magic, option codes
SHB, IDB, OPB, SPB, EPB = _PCAPNG_SHB, 1, 2, 3, 6
BOM = 0x1A2B3C4D
OPT_ENDOFOPT, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_TSRESOL = 9

@dataclass
class CopyResult:
    """What :func:`copy_to_pcapng` wrote."""

    path: Path
    frames: int = 0  # packet records written (the last frame number)
    commented: int = 0  # frames that got at least one comment
    comments: int = 0  # comments written
    warnings: list[str] = field(default_factory=list)


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
        raw = _open_for_reading(path, name)  # closed in close()
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


#: ``cut(linktype, frame)``: how many leading bytes of a frame an export keeps.
Cut = Callable[[int, bytes], int]


def _convert(src: _Source, comments: Mapping[int, Sequence[str]], result: CopyResult,
             cut: Cut | None = None) -> Iterator[bytes]:
    """The output blocks, one at a time."""
    magic = src.read(4)
    if magic in _PCAP_MAGICS:
        yield from _from_pcap(src, magic, comments, result, cut)
    elif magic == _PCAPNG_MAGIC:
        yield from _from_pcapng(src, magic, comments, result, cut)
    elif not magic:
        raise CaptureFileError(f"{src.name}: empty file (0 bytes)")
    else:
        raise CaptureFileError(f"{src.name}: not a pcap or pcapng file (magic 0x{magic.hex()})")


def _from_pcap(src: _Source, magic: bytes, comments: Mapping[int, Sequence[str]],
               result: CopyResult, cut: Cut | None) -> Iterator[bytes]:
    order, units = _PCAP_MAGICS[magic]
    resol = 9 if units == 1e9 else 6
    head = src.read(20)
    if len(head) < 20:
        raise CaptureFileError(f"{src.name}: pcap file header truncated: {4 + len(head)} of 24 bytes")
    _major, _minor, _zone, _sig, snaplen, network = struct.unpack(order + "HHiIII", head)
    linktype = network & 0x03FFFFFF
    if linktype > 0xFFFF:  # a pcapng interface holds 16 bits: no such link type exists
        raise CaptureFileError(f"{src.name}: {unsupported(linktype)}")
    yield _shb("<")
    yield _idb("<", linktype, snaplen, resol)
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
        if cut is not None:
            data = data[: cut(linktype, data)]
            caplen = len(data)
        yield _epb("<", 0, sec * scale + frac, caplen, origlen, data, b"", notes)
    result.frames = frame


def _from_pcapng(src: _Source, magic: bytes, comments: Mapping[int, Sequence[str]],
                 result: CopyResult, cut: Cut | None) -> Iterator[bytes]:
    order = "<"
    frame = 0
    linktypes: list[int] = []  # the section's interfaces, for ``cut``
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
            linktypes = []
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
        if btype == IDB and total >= 20:
            linktypes.append(struct.unpack_from(order + "H", block, 8)[0])
        if btype not in (EPB, OPB, SPB):
            yield block
            continue
        frame += 1
        notes = comments.get(frame, ())
        if not notes and cut is None:
            yield block
            continue
        _count(result, notes)
        yield _with_comments(src.name, order, btype, block, notes, frame, cut, linktypes)
    result.frames = frame


def _with_comments(name: str, order: str, btype: int, block: bytes, notes: Sequence[str],
                   frame: int, cut: Cut | None = None, linktypes: Sequence[int] = ()) -> bytes:
    """The packet block rewritten as an EPB with ``notes`` added to its options, its
    frame cut by ``cut`` (to nothing when its interface is unknown)."""
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
    if cut is not None:
        data = data[: cut(linktypes[iface], data)] if iface < len(linktypes) else b""
    return _epb(order, iface, (hi << 32) | lo, len(data), origlen, data, old, notes)


def _count(result: CopyResult, notes: Sequence[str]) -> None:
    if notes:
        result.commented += 1
        result.comments += len(notes)


def copy_to_pcapng(src: str | os.PathLike[str], dest: str | os.PathLike[str],
                   comments: Mapping[int, Sequence[str]], *, mode: int = DEFAULT_MODE,
                   cut: Cut | None = None) -> CopyResult:
    """Copy capture ``src`` (pcap or pcapng, possibly gzipped) to pcapng ``dest``, adding
    ``comments[frame]`` to each frame (1-based, as ``decode`` numbers them).

    ``cut(linktype, frame_bytes)`` gives how many leading bytes of each frame to keep
    (``--snaplen``, ``--no-payload``); the record keeps its length on the wire.
    Writes a temporary file beside ``dest`` (``mode``, 0600 by default) and renames it,
    so a failure never leaves a half-written file and no link is followed.  Raises
    CaptureFileError for an unusable input and OutputError when ``dest`` cannot be
    written.
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
    result = CopyResult(dest_path)
    try:
        with AtomicFile(dest_path, "wb", mode_bits=mode) as out:
            for block in _convert(source, comments, result, cut):
                out.write(block)
    finally:
        source.close()
    return result


# ======================================================================================
# The whole export, and the CLI subcommand
# ======================================================================================


