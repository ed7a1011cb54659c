"""Capture files -> :class:`~handshake_viz.model.Packet` records.

Theory of operation
-------------------
A capture is read in large chunks (``CHUNK`` bytes, one ``read()`` each) into a
``bytes`` buffer; every record header and every protocol header is unpacked in
place with precompiled :class:`struct.Struct` objects (``unpack_from`` at an
offset, no per-record slicing), and only the option and payload bytes of a TCP
segment are copied out.  Memory therefore stays flat whatever the file size:
one chunk, plus whatever the caller keeps.

Formats: pcap (both byte orders, microsecond ``0xa1b2c3d4`` and nanosecond
``0xa1b23c4d`` magics) and pcapng (several sections, each with its own byte
order; several interfaces, each with its own link type, ``if_tsresol`` and
``if_tsoffset``; Enhanced, Simple and the obsolete Packet blocks; every other
block is skipped).  A gzip-compressed capture is decompressed on the fly.

Link types: Ethernet (1, with stacked 802.1Q/802.1ad tags), BSD NULL (0),
OpenBSD loop (108), raw IP (101, 12, 14), raw IPv4 (228), raw IPv6 (229), Linux
cooked SLL (113) and SLL2 (276).  IPv4 with options, IPv6 with extension
headers (hop-by-hop, routing, fragment, destination options, AH).

Numbers follow Wireshark so that tests can compare with tshark field by field:

* ``frame`` counts every packet record (pcap record, pcapng EPB/SPB/OPB),
  TCP or not, from 1 -- Wireshark's ``frame.number``.
* ``length`` is the TCP payload length from the IP header (``tcp.len``): the
  IP total length (IPv6: payload length minus extension headers), capped by
  the bytes that were on the wire, minus both header lengths.  It is *not*
  the number of captured bytes, which a snaplen cuts and Ethernet trailer
  padding inflates.
* ``payload`` holds the captured payload bytes only (``len(payload) <=
  length``); ``raw_options`` the captured option bytes (cut if the snaplen
  cut the TCP header; :func:`~handshake_viz.model.parse_options` then marks
  them ``truncated``).

What is not a TCP segment is counted in :class:`DecodeStats`, never raised:
``skipped`` (ARP, UDP, ICMP, non-first IP fragments, unsupported pcapng
interfaces ...) and ``malformed`` (headers cut or inconsistent so that no
20-byte TCP header can be decoded -- including TCP packets whose header a
short snaplen cut).  ``records == tcp + skipped + malformed`` always holds.

Errors: a file that cannot be used raises
:class:`~handshake_viz.errors.CaptureFileError` with one line that starts with
the file name as the user typed it -- at open time for a missing file, a
directory, an unreadable, empty or non-capture file, a cut file header or an
unsupported pcap link type; while iterating for corruption in the middle of a
file (an absurd record length, an undefined pcapng interface).  A file whose
*last* record is cut short (a capture that was still being written, or copied
half-way) is not an error: every complete record before it is yielded, then a
warning line is appended to ``stats.warnings`` and iteration ends normally.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from handshake_viz.errors import CaptureError, CaptureFileError
from handshake_viz.model import Packet, make_packet

__all__ = [
    "LINKTYPES",
    "CaptureReader",
    "DecodeStats",
    "decode_frame",
    "iter_packets",
    "open_capture",
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

# ---------------------------------------------------------------------------
# Link types
# ---------------------------------------------------------------------------

LT_NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
LT_ETHERNET = 1
LT_RAW_12 = 12  # DLT_RAW as written by some BSDs
LT_RAW_14 = 14  # DLT_RAW on OpenBSD
LT_RAW = 101  # LINKTYPE_RAW: no link header, IP version from the first nibble
LT_LOOP = 108  # OpenBSD loopback: 4-byte address family, network byte order
LT_SLL = 113  # Linux cooked v1: 16-byte header, protocol at offset 14
LT_IPV4 = 228
LT_IPV6 = 229
LT_SLL2 = 276  # Linux cooked v2: 20-byte header, protocol at offset 0

#: Link types this decoder understands, with the names error messages use.
LINKTYPES: dict[int, str] = {
    LT_NULL: "BSD loopback (NULL)",
    LT_ETHERNET: "Ethernet",
    LT_RAW_12: "raw IP",
    LT_RAW_14: "raw IP",
    LT_RAW: "raw IP",
    LT_LOOP: "OpenBSD loopback",
    LT_SLL: "Linux cooked (SLL)",
    LT_IPV4: "raw IPv4",
    LT_IPV6: "raw IPv6",
    LT_SLL2: "Linux cooked v2 (SLL2)",
}

# Names of a few common link types we do not decode, for clearer messages.
_OTHER_LINKTYPES = {
    6: "IEEE 802.5 Token Ring",
    9: "PPP",
    10: "FDDI",
    50: "PPP in HDLC framing",
    104: "Cisco HDLC",
    105: "IEEE 802.11",
    119: "Prism 802.11",
    127: "802.11 radiotap",
    189: "Linux USB",
    192: "PPI",
    195: "IEEE 802.15.4",
    201: "Bluetooth HCI",
    220: "Linux USB (mmapped)",
    249: "Netlink",
}


def _linktype_name(linktype: int) -> str:
    return LINKTYPES.get(linktype) or _OTHER_LINKTYPES.get(linktype) or "unknown"


def _unsupported(linktype: int) -> str:
    return f"unsupported link type {linktype} ({_linktype_name(linktype)})"


_ETH_VLAN = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, old QinQ
_AF_INET6 = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, Darwin

# ---------------------------------------------------------------------------
# Address formatting: few distinct addresses, millions of packets -> cache.
# ---------------------------------------------------------------------------

_ADDR_CACHE_LIMIT = 1 << 16


class _AddrCache(dict):  # type: ignore[type-arg]
    """``cache[raw_bytes] -> str``; formats on a miss, forgets all past a bound."""

    __slots__ = ("_family",)

    def __init__(self, family: int) -> None:
        super().__init__()
        self._family = family

    def __missing__(self, raw: bytes) -> str:
        if len(self) >= _ADDR_CACHE_LIMIT:  # an address scan must not grow memory forever
            self.clear()
        # inet_ntop prints IPv6 in RFC 5952 form, as Wireshark does on Linux
        # (including ::ffff:a.b.c.d for IPv4-mapped addresses).
        text = socket.inet_ntop(self._family, raw)
        self[raw] = text
        return text


_A4 = _AddrCache(socket.AF_INET)
_A6 = _AddrCache(socket.AF_INET6)

# The fast path looks up source and destination together: 8 raw bytes -> (src, dst).
_PAIRS4: dict[bytes, tuple[str, str]] = {}


def _pair4(raw: bytes) -> tuple[str, str]:
    if len(_PAIRS4) >= _ADDR_CACHE_LIMIT:
        _PAIRS4.clear()
    pair = _PAIRS4[raw] = (_A4[raw[:4]], _A4[raw[4:]])
    return pair

# Every Packet is built through model.make_packet (a frozen dataclass's own
# __init__ would cost more than all the decoding).
_make_packet = make_packet

# ---------------------------------------------------------------------------
# Header layouts (network byte order).
# ---------------------------------------------------------------------------

# Ethernet type + IPv4 (IHL 5) + TCP fixed header in one unpack, from byte 12 of
# an Ethernet frame: ethertype, ver/IHL, total length, flags/fragment offset,
# protocol, src+dst (8 bytes, one cache key), sport, dport, seq, ack, data offset,
# flags, window.
_ETH_IP4_TCP_PAIR = struct.Struct("!HBxHxxHxB2x8sHHIIBBH")
_IP4 = struct.Struct("!BxHxxHxB2x4s4s")  # ver/IHL, total length, frag, proto, src, dst
_IP6 = struct.Struct("!4xHB x16s16s")  # payload length, next header, src, dst
_TCP = struct.Struct("!HHIIBBH")  # sport, dport, seq, ack, data offset, flags, window
_U16 = struct.Struct("!H")

# pcap: magic -> (byte order, seconds per fraction unit)
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

# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


@dataclass
class DecodeStats:
    """Counters of one pass over a capture.

    Updated while iterating (at every chunk read and when iteration stops), so a
    caller that looks only after the loop sees exact numbers.
    ``records == tcp + skipped + malformed``.
    """

    records: int = 0  # packet records read; the last frame number used
    tcp: int = 0  # Packets yielded
    skipped: int = 0  # not TCP over IP: ARP, UDP, ICMP, IP fragments past the first, ...
    malformed: int = 0  # headers cut or inconsistent: no complete 20-byte TCP header
    snaplen_cut: int = 0  # records captured shorter than they were on the wire
    warnings: list[str] = field(default_factory=list)  # full lines, file name first

    def _reset(self) -> None:
        self.records = self.tcp = self.skipped = self.malformed = self.snaplen_cut = 0
        self.warnings.clear()


# ---------------------------------------------------------------------------
# Frame decoding
# ---------------------------------------------------------------------------

# _decode returns a Packet, None for "not a TCP segment" (counted as skipped) or
# False for "malformed" (counted as malformed).
_Result = Packet | None | bool
_T = TypeVar("_T")


def _decode(
    lt: int, buf: bytes, start: int, end: int, frame: int, ts: float, extra: int,
    make: Callable[..., Any] = _make_packet,
) -> _Result:
    """Decode the frame ``buf[start:end]`` of link type ``lt``.

    ``extra`` is how many bytes of the frame were on the wire but not captured
    (wire length minus captured length, 0 if not cut).
    """
    # Fast path: Ethernet, IPv4 without options, unfragmented TCP, nothing odd.
    if lt == 1 and end - start >= 54:
        et, vihl, tot, frag, proto, sd, sp, dp, seq, ack, offb, fl, win = (
            _ETH_IP4_TCP_PAIR.unpack_from(buf, start + 12)
        )
        if (
            et == 0x0800
            and vihl == 0x45
            and proto == 6
            and not frag & 0x3FFF
            and 40 <= tot <= end - start - 14 + extra
        ):
            doff = (offb >> 2) & 0x3C
            length = tot - 20 - doff
            if doff >= 20 and length >= 0:
                t = start + 54
                p = start + 34 + doff
                q = p + length
                if q > end:
                    q = end
                try:
                    src, dst = _PAIRS4[sd]
                except KeyError:
                    src, dst = _pair4(sd)
                return make(
                    frame, ts, src, sp, dst, dp, seq, ack, fl, win, length,
                    buf[p:q], buf[t : (p if p < end else end)] if doff > 20 else b"", 4,
                )  # fmt: skip

    # General path: find the network layer.
    ver = 0  # 0: take the IP version from the first nibble
    if lt == 1:
        if end - start < 14:
            return False
        p = start + 12
        et = buf[p] << 8 | buf[p + 1]
        p += 2
        while et in _ETH_VLAN:
            if end - p < 4:
                return False
            et = buf[p + 2] << 8 | buf[p + 3]
            p += 4
        if et == 0x0800:
            ver = 4
        elif et == 0x86DD:
            ver = 6
        else:
            return None
    elif lt == LT_RAW or lt == LT_RAW_12 or lt == LT_RAW_14:
        p = start
    elif lt == LT_NULL or lt == LT_LOOP:
        if end - start < 4:
            return False
        af = int.from_bytes(buf[start : start + 4], "little")
        if af > 0xFFFF:  # written in the other byte order than we guessed
            af = int.from_bytes(buf[start : start + 4], "big")
        if af == 2:
            ver = 4
        elif af in _AF_INET6:
            ver = 6
        else:
            return None
        p = start + 4
    elif lt == LT_SLL or lt == LT_SLL2:
        hl, po = (16, 14) if lt == LT_SLL else (20, 0)
        if end - start < hl:
            return False
        et = buf[start + po] << 8 | buf[start + po + 1]
        p = start + hl
        while et in _ETH_VLAN:
            if end - p < 4:
                return False
            et = buf[p + 2] << 8 | buf[p + 3]
            p += 4
        if et == 0x0800:
            ver = 4
        elif et == 0x86DD:
            ver = 6
        else:
            return None
    elif lt == LT_IPV4:
        p, ver = start, 4
    elif lt == LT_IPV6:
        p, ver = start, 6
    else:
        return None

    avail = end - p  # captured bytes from the IP header on
    if avail < 1:
        return False
    nibble = buf[p] >> 4
    if ver == 0:
        ver = nibble
        if ver != 4 and ver != 6:
            return None  # raw link carrying something that is not IP
    elif nibble != ver:
        return False
    wire = avail + extra  # bytes from the IP header on, as on the wire

    if ver == 4:
        if avail < 20:
            return False
        vihl, tot, frag, proto, s, d = _IP4.unpack_from(buf, p)
        if proto != 6 or frag & 0x1FFF:  # not TCP, or a fragment past the first
            return None
        ihl = (vihl & 15) << 2
        if ihl < 20:
            return False
        if tot == 0:  # TCP segmentation offload: the stack left the length to the NIC
            tot = wire
        elif tot > wire:  # frame shorter than the IP header claims: use what was there
            tot = wire
        if tot < ihl:
            return False
        t = p + ihl
        iplen = tot - ihl  # bytes of TCP header + payload
        src = _A4[s]
        dst = _A4[d]
    else:
        if avail < 40:
            return False
        plen, nh, s, d = _IP6.unpack_from(buf, p)
        t = p + 40
        if plen == 0:  # jumbogram or offload: take what was on the wire
            plen = wire - 40
        elif plen > wire - 40:
            plen = wire - 40
        ext = 0
        while nh != 6:
            if nh == 0 or nh == 43 or nh == 60:  # hop-by-hop, routing, destination options
                if end - t < 2:
                    return False
                hl = (buf[t + 1] + 1) << 3
            elif nh == 44:  # fragment
                if end - t < 8:
                    return False
                if _U16.unpack_from(buf, t + 2)[0] & 0xFFF8:
                    return None  # not the first fragment: no TCP header here
                hl = 8
            elif nh == 51:  # authentication header
                if end - t < 2:
                    return False
                hl = (buf[t + 1] + 2) << 2
            else:  # UDP, ICMPv6, ESP, no next header, ...
                return None
            nh = buf[t]
            t += hl
            ext += hl
        iplen = plen - ext
        if iplen < 0:
            return False
        src = _A6[s]
        dst = _A6[d]

    if end - t < 20:
        return False  # even the fixed TCP header was not captured
    sp, dp, seq, ack, offb, fl, win = _TCP.unpack_from(buf, t)
    doff = (offb >> 2) & 0x3C
    length = iplen - doff
    if doff < 20 or length < 0:
        return False
    o = t + 20
    pl = t + doff
    q = pl + length
    if q > end:
        q = end
    return make(
        frame, ts, src, sp, dst, dp, seq, ack, fl, win, length,
        buf[pl:q], buf[o : (pl if pl < end else end)] if doff > 20 else b"", ver,
    )  # fmt: skip


def decode_frame(
    linktype: int,
    data: bytes | bytearray | memoryview,
    *,
    frame: int,
    ts: float,
    wirelen: int | None = None,
) -> Packet | None:
    """One link-layer frame -> :class:`Packet`, or ``None`` if it is not a decodable TCP segment.

    ``wirelen`` is the frame's length on the wire when the capture cut it
    (default: ``len(data)``); it makes ``Packet.length`` match tshark's ``tcp.len``.
    Raises :class:`~handshake_viz.errors.CaptureError` for a link type this module
    does not decode (a programming error of the caller, not bad traffic).
    """
    if linktype not in LINKTYPES:
        raise CaptureError(_unsupported(linktype))
    buf = data if type(data) is bytes else bytes(data)
    n = len(buf)
    extra = 0 if wirelen is None or wirelen <= n else wirelen - n
    result = _decode(linktype, buf, 0, n, frame, ts, extra)
    return result if result else None  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Files
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


class CaptureReader:
    """An open pcap or pcapng file: iterate it for its TCP packets.

    Iterating streams the file in chunks and yields :class:`Packet` records in
    file order; :attr:`stats` counts what was read.  A reader over a regular file
    can be iterated again (it rereads from the start and resets :attr:`stats`);
    a reader over a pipe only once.  Use it as a context manager, or call
    :meth:`close`, to close the file it opened (a stream passed in by the caller
    is left open).
    """

    name: str
    format: str  # "pcap" or "pcapng"
    linktypes: list[int]  # pcap: the file's link type; pcapng: one per interface seen so far
    snaplen: int  # pcap header snaplen; pcapng: that of the first interface (0 if unknown)
    ts_resolution: float  # pcap: 1e-6 or 1e-9; pcapng: that of the first interface
    stats: DecodeStats

    def __init__(self, stream: BinaryIO, name: str, *, owns: bool) -> None:
        self.name = name
        self._stream = stream
        self._owns = owns
        self._iterated = False
        self.stats = DecodeStats()
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
        """Read up to ``size`` bytes, looping on short reads until ``minimum`` or EOF."""
        parts: list[bytes] = []
        got = 0
        while True:
            try:
                data = stream.read(size - got)
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
        if linktype not in LINKTYPES:
            raise CaptureFileError(f"{self.name}: {_unsupported(linktype)}")
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
        if lts and not any(lt in LINKTYPES for lt in lts):
            raise CaptureFileError(f"{self.name}: {_unsupported(lts[0])}")

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

    def __iter__(self) -> Iterator[Packet]:
        return self.records(_make_packet)

    def records(self, make: Callable[..., _T]) -> Iterator[_T]:
        """Iterate as ``iter(reader)`` does, but build each TCP packet with ``make``
        (called with Packet's fields, in order) instead of as a Packet: the JSON Lines
        writer takes only the fields it prints, in a tuple."""
        if self.format == "pcap":
            return self._iter_pcap(make)
        return self._iter_pcapng(make)

    def _read(self, n: int) -> bytes:
        """Read ``n`` bytes (fewer only at end of file)."""
        return self._read_at_least(self._stream, n, n)

    def _iter_pcap(self, make: Callable[..., Any]) -> Iterator[Any]:
        name = self.name
        stats = self.stats
        buf = self._start()
        read = self._read
        decode = _decode
        lt = self.linktypes[0]
        rec = struct.Struct(self._order + "IIII").unpack_from
        units = self._units
        maxcap = max(MAX_CAPLEN, self.snaplen)
        eth = lt == LT_ETHERNET
        fast = _ETH_IP4_TCP_PAIR.unpack_from
        pairs = _PAIRS4
        pos = _PCAP_HEADER_LEN
        blen = len(buf)
        frame = ntcp = nskip = nbad = ncut = 0
        try:
            while True:
                if blen - pos < 16:
                    tail, buf = buf[pos:], b""  # let the old chunk go before reading the next
                    buf = tail + read(CHUNK)
                    pos, blen = 0, len(buf)
                    stats.records, stats.tcp, stats.skipped = frame, ntcp, nskip
                    stats.malformed, stats.snaplen_cut = nbad, ncut
                    if blen < 16:
                        if blen:
                            stats.warnings.append(
                                f"{name}: record {frame + 1} header truncated: {blen} of 16 bytes"
                            )
                        return
                sec, frac, caplen, wirelen = rec(buf, pos)
                if caplen > maxcap:
                    raise CaptureFileError(
                        f"{name}: record {frame + 1}: captured length {caplen} is larger "
                        f"than {maxcap} bytes (corrupt file?)"
                    )
                start = pos + 16
                end = start + caplen
                if end > blen:
                    tail, buf = buf[pos:], b""  # let the old chunk go before reading the next
                    buf = tail + read(max(CHUNK, end - blen))
                    pos, blen = 0, len(buf)
                    start, end = 16, 16 + caplen
                    stats.records, stats.tcp, stats.skipped = frame, ntcp, nskip
                    stats.malformed, stats.snaplen_cut = nbad, ncut
                    if end > blen:
                        stats.warnings.append(
                            f"{name}: record {frame + 1} truncated: {blen - 16} of {caplen} bytes"
                        )
                        return
                frame += 1
                pos = end
                if wirelen > caplen:
                    ncut += 1
                    extra = wirelen - caplen
                else:
                    extra = 0
                # The fast path of _decode, inlined: Ethernet, IPv4 without options,
                # unfragmented TCP.  Anything else goes through _decode.  (About 5 % of
                # decoding a pcap; pcapng, with a link type per interface, simply calls
                # _decode, whose first test is the same fast path.)
                if eth and caplen >= 54:
                    et, vihl, tot, frag, proto, sd, sp, dp, seq, ack, offb, fl, win = fast(
                        buf, start + 12
                    )
                    if (
                        et == 0x0800
                        and vihl == 0x45
                        and proto == 6
                        and not frag & 0x3FFF
                        and 40 <= tot <= caplen - 14 + extra
                    ):
                        doff = (offb >> 2) & 0x3C
                        length = tot - 20 - doff
                        if doff >= 20 and length >= 0:
                            p = start + 34 + doff
                            q = p + length
                            if q > end:
                                q = end
                            try:
                                src, dst = pairs[sd]
                            except KeyError:
                                src, dst = _pair4(sd)
                            ntcp += 1
                            yield make(
                                frame, sec + frac / units, src, sp, dst, dp, seq, ack, fl,
                                win, length, buf[p:q],
                                buf[start + 54 : (p if p < end else end)] if doff > 20 else b"",
                                4,
                            )  # fmt: skip
                            continue
                r = decode(lt, buf, start, end, frame, sec + frac / units, extra, make)
                if r:
                    ntcp += 1
                    yield r  # type: ignore[misc]
                elif r is None:
                    nskip += 1
                else:
                    nbad += 1
        finally:
            stats.records, stats.tcp, stats.skipped = frame, ntcp, nskip
            stats.malformed, stats.snaplen_cut = nbad, ncut

    def _iter_pcapng(self, make: Callable[..., Any]) -> Iterator[Any]:
        name = self.name
        stats = self.stats
        buf = self._start()
        read = self._read
        decode = _decode
        pos = 0
        base = 0  # file offset of buf[0], for messages
        blen = len(buf)
        frame = ntcp = nskip = nbad = ncut = 0
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
                    tail, buf = buf[pos:], b""  # let the old chunk go before reading the next
                    buf = tail + read(CHUNK)
                    pos, blen = 0, len(buf)
                    stats.records, stats.tcp, stats.skipped = frame, ntcp, nskip
                    stats.malformed, stats.snaplen_cut = nbad, ncut
                    if blen < 12:
                        if blen:
                            stats.warnings.append(
                                f"{name}: pcapng block at byte {base} truncated: "
                                f"{blen} of at least 12 bytes"
                            )
                        return
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
                    tail, buf = buf[pos:], b""  # let the old chunk go before reading the next
                    buf = tail + read(max(CHUNK, pos + size - blen))
                    pos, blen = 0, len(buf)
                    stats.records, stats.tcp, stats.skipped = frame, ntcp, nskip
                    stats.malformed, stats.snaplen_cut = nbad, ncut
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
                    end = start + caplen
                    pos += size
                    if wirelen > caplen:
                        ncut += 1
                        extra = wirelen - caplen
                    else:
                        extra = 0
                    if not ok:
                        nskip += 1
                        continue
                    ts = ((hi << 32) | lo) / ticks + offset
                    r = decode(lt, buf, start, end, frame, ts, extra, make)
                    if r:
                        ntcp += 1
                        yield r  # type: ignore[misc]
                    elif r is None:
                        nskip += 1
                    else:
                        nbad += 1
                    continue
                if btype == 3:  # Simple Packet Block: no interface id, no timestamp
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
                    if wirelen > caplen:
                        ncut += 1
                    start = pos + 12
                    pos += size
                    if not ok:
                        nskip += 1
                        continue
                    r = decode(lt, buf, start, start + caplen, frame, 0.0, wirelen - caplen, make)
                    if r:
                        ntcp += 1
                        yield r  # type: ignore[misc]
                    elif r is None:
                        nskip += 1
                    else:
                        nbad += 1
                    continue
                if btype == 1:  # Interface Description Block
                    if size < 20:
                        raise CaptureFileError(
                            f"{name}: pcapng interface block at byte {base + pos} too short "
                            f"({size} bytes)"
                        )
                    lt, ticks, offset, snap = _parse_idb(buf, pos, size, order)
                    ok = lt in LINKTYPES
                    if not ok:
                        stats.warnings.append(
                            f"{name}: interface {len(ifaces)}: {_unsupported(lt)}; "
                            f"its packets are skipped"
                        )
                    ifaces.append((lt, ticks, offset, snap, ok))
                    self.linktypes.append(lt)
                elif btype == _PCAPNG_SHB:  # a new section: interfaces start again
                    ifaces = []
                pos += size
        finally:
            stats.records, stats.tcp, stats.skipped = frame, ntcp, nskip
            stats.malformed, stats.snaplen_cut = nbad, ncut

    # -- resources ----------------------------------------------------------

    def close(self) -> None:
        """Close the file if this reader opened it."""
        if self._owns:
            for stream in (self._stream, self._raw):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<CaptureReader {self.name!r} {self.format} linktypes={self.linktypes} "
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


def open_capture(source: Source, *, name: str | None = None) -> CaptureReader:
    """Open a pcap or pcapng capture (possibly gzip-compressed) for reading.

    ``source`` is a path (``"-"`` reads standard input) or a binary file object.
    ``name`` is what messages call the file (default: the path as given, or the
    file object's ``name``).  Raises :class:`~handshake_viz.errors.CaptureFileError`
    when the file is missing, a directory, unreadable, empty, not a capture, has a
    cut file header, or (pcap) an unsupported link type.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        path = os.fspath(source)
        shown = name or (path if isinstance(path, str) else os.fsdecode(path))
        if path == "-":
            return CaptureReader(sys.stdin.buffer, name or "-", owns=False)
        try:
            stream = open(path, "rb", buffering=0)  # we do our own large reads
        except FileNotFoundError:
            raise CaptureFileError(f"{shown}: no such file") from None
        except IsADirectoryError:
            raise CaptureFileError(f"{shown}: is a directory, not a capture file") from None
        except PermissionError:
            raise CaptureFileError(f"{shown}: permission denied") from None
        except OSError as exc:
            raise CaptureFileError(f"{shown}: cannot open: {_why(exc)}") from None
        try:
            return CaptureReader(stream, shown, owns=True)  # type: ignore[arg-type]
        except BaseException:
            stream.close()
            raise
    shown = name or str(getattr(source, "name", "") or "<stream>")
    return CaptureReader(source, shown, owns=False)


def iter_packets(path: Source) -> Iterator[Packet]:
    """Every TCP packet of a capture, in file order (open, iterate, close)."""
    with open_capture(path) as reader:
        yield from reader
