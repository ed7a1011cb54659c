"""Frames -> :class:`~handshake_viz.model.Packet` (TCP) and
:class:`~handshake_viz.model.UdpPacket` (UDP) records.

Theory of operation
-------------------
:mod:`handshake_viz.pcapio` walks a capture file's records; this module turns one
frame into a packet.  Every header is unpacked in place with precompiled
:class:`struct.Struct` objects (``unpack_from`` at an offset, no per-record
slicing), and only the option and payload bytes of a segment are copied out.  The
first test is a fast path for the commonest frame (Ethernet, IPv4 without options,
unfragmented TCP); everything else takes the general path, which finds the network
layer once (:func:`_network`: one dispatch on the link type, one loop over VLAN
tags) and then reads IPv4 (with options) or IPv6 (with extension headers).

Link types: Ethernet (1, with stacked 802.1Q/802.1ad tags, MPLS labels and PPPoE
sessions), BSD NULL (0),
OpenBSD loop (108), raw IP (101, 12, 14), raw IPv4 (228), raw IPv6 (229), Linux
cooked SLL (113) and SLL2 (276).  IPv6 extension headers: hop-by-hop, routing,
fragment, destination options, AH.

Numbers follow Wireshark so that tests can compare with tshark field by field:

* ``frame`` counts every packet record, TCP or not, from 1 (``frame.number``).
* ``length`` is the TCP payload length from the IP header (``tcp.len``): the IP
  total length (IPv6: payload length minus extension headers), capped by the
  bytes that were on the wire, minus both header lengths.  It is *not* the
  number of captured bytes, which a snaplen cuts and Ethernet trailer padding
  inflates.  A UDP datagram's ``length`` is its UDP length field minus the
  8-byte header (capped likewise).
* ``payload`` holds the captured payload bytes only (``len(payload) <=
  length``); ``raw_options`` the captured option bytes (cut if the snaplen
  cut the TCP header; :func:`~handshake_viz.model.parse_options` then marks
  them ``truncated``).

What is not decoded is counted in :class:`DecodeStats`, never raised:
``skipped`` (ARP, ICMP, UDP unless asked for, non-first IP fragments,
unsupported pcapng interfaces ...) and ``malformed`` (headers cut or
inconsistent so that no 20-byte TCP header, or 8-byte UDP header, can be
decoded).  ``records == tcp + udp + skipped + malformed`` always holds.
File errors are :mod:`~handshake_viz.pcapio`'s (one line, the file name first).

TCP checksums are not looked at here: :mod:`~handshake_viz.checksum` verifies them
when asked (``records(..., verify_checksums=True)``), wrapping this module's decoder,
so the default path costs nothing for them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from handshake_viz import pcapio
from handshake_viz.errors import CaptureError
from handshake_viz.model import Packet, UdpPacket, make_packet
from handshake_viz.pcapio import Source

if TYPE_CHECKING:  # pragma: no cover
    from handshake_viz.checksum import ChecksumCounts

__all__ = [
    "LINKTYPES",
    "CaptureReader",
    "DecodeStats",
    "decode_frame",
    "header_length",
    "ip_packet",
    "iter_packets",
    "open_capture",
]

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

#: Link types this decoder understands, with the names messages use.
LINKTYPES: dict[int, str] = {
    lt: pcapio.LINKTYPE_NAMES[lt]
    for lt in (LT_NULL, LT_ETHERNET, LT_RAW_12, LT_RAW_14, LT_RAW, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2)
}


def _unsupported(linktype: int) -> str:
    return pcapio.unsupported(linktype)


_ETH_VLAN = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, old QinQ
_AF_INET6 = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, Darwin
_NO_CAP = 1 << 30  # no enclosing header limits the IP packet's length

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
# an Ethernet frame: ethertype, ver/IHL, total length, identification, flags/fragment offset,
# protocol, src+dst (8 bytes, one cache key), sport, dport, seq, ack, data offset,
# flags, window.
_ETH_IP4_TCP_PAIR = struct.Struct("!HBxHHHxB2x8sHHIIBBH")
_IP4 = struct.Struct("!BxHHHxB2x4s4s")  # ver/IHL, total length, id, frag, proto, src, dst
_IP6 = struct.Struct("!4xHB x16s16s")  # payload length, next header, src, dst
_TCP = struct.Struct("!HHIIBBH")  # sport, dport, seq, ack, data offset, flags, window
_U16 = struct.Struct("!H")
_UDP = struct.Struct("!HHH")  # sport, dport, length

# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


@dataclass
class DecodeStats(pcapio.ReadStats):
    """Counters of one pass over a capture (see :class:`~handshake_viz.pcapio.ReadStats`):
    ``records == tcp + udp + skipped + malformed``."""

    udp: int = 0  # UDP datagrams decoded (only when asked for)
    # TCP segments by checksum status, when verified (records(..., verify_checksums=True))
    checksums: ChecksumCounts | None = None

    @property
    def tcp(self) -> int:
        """TCP segments decoded."""
        return self.decoded - self.udp

    def _reset(self) -> None:
        super()._reset()
        self.udp = 0
        self.checksums = None


# ---------------------------------------------------------------------------
# Frame decoding
# ---------------------------------------------------------------------------

# _decode returns what ``make``/``make_udp`` made, None for "not for us" (counted as
# skipped) or False for "malformed" (counted as malformed).
_Result = Packet | None | bool
_T = TypeVar("_T")


def _network(lt: int, buf: bytes, start: int, end: int) -> tuple[int, int, int] | None | bool:
    """Where the IP header of a frame of link type ``lt`` starts: ``(offset, version,
    cap)`` (version 0: read it from the first nibble; ``cap``: how many bytes from the
    offset on an enclosing header says the IP packet has, ``_NO_CAP`` if none does),
    None when the frame carries no IP (ARP, LLDP, an MPLS pseudowire, PPPoE discovery,
    PPP control, …), False when a link header itself was cut.

    Between the Ethernet (or SLL) header and IP, any stack of 802.1Q/802.1ad tags,
    MPLS labels (RFC 3032: four bytes each, the last with the bottom-of-stack bit; IP
    is told from the first nibble after it, as Wireshark's heuristic does) and one
    PPPoE session header (RFC 2516: its length field covers the 2-byte PPP protocol
    and the IP packet, and caps it: Wireshark gives a TCP segment no more payload
    than the PPPoE length leaves, and so does this).
    """
    ver = 0
    cap = _NO_CAP
    if lt == 1 or lt == LT_SLL or lt == LT_SLL2:
        if lt == 1:
            hl, po = 14, 12
        else:
            hl, po = (16, 14) if lt == LT_SLL else (20, 0)
        if end - start < hl:
            return False
        et = buf[start + po] << 8 | buf[start + po + 1]
        p = start + hl
        while et != 0x0800 and et != 0x86DD:
            if et in _ETH_VLAN:  # stacked 802.1Q / 802.1ad tags
                if end - p < 4:
                    return False
                et = buf[p + 2] << 8 | buf[p + 3]
                p += 4
            elif et == 0x8847 or et == 0x8848:  # MPLS unicast / multicast label stack
                while True:
                    if end - p < 4:
                        return False
                    bottom = buf[p + 2] & 1
                    p += 4
                    if bottom:
                        break
                if p >= end:
                    return False
                ver = buf[p] >> 4
                return (p, ver, cap) if ver == 4 or ver == 6 else None
            elif et == 0x8864:  # PPPoE session stage
                if end - p < 8:
                    return False
                proto = buf[p + 6] << 8 | buf[p + 7]
                cap = (buf[p + 4] << 8 | buf[p + 5]) - 2
                p += 8
                if proto == 0x0021:
                    return p, 4, cap
                if proto == 0x0057:
                    return p, 6, cap
                return None
            else:
                return None
        ver = 4 if et == 0x0800 else 6
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
    elif lt == LT_IPV4:
        p, ver = start, 4
    elif lt == LT_IPV6:
        p, ver = start, 6
    else:
        return None
    return p, ver, cap


def ip_packet(linktype: int, data: bytes) -> bytes | None:
    """The IP packet inside a frame (``replay --inject`` re-sends it), or None."""
    found = _network(linktype, data, 0, len(data))
    return data[found[0]:found[0] + found[2]] if found else None


_LINK_HEADER = {LT_ETHERNET: 14, LT_SLL: 16, LT_SLL2: 20, LT_NULL: 4, LT_LOOP: 4}


def header_length(linktype: int, data: bytes) -> int:
    """How many leading bytes of a frame are headers: link, IP (with options and
    IPv6 extension headers) and the TCP header (with options) or UDP header.  What
    ``--no-payload`` keeps: the IP header still gives every length, so the analysis
    of a headers-only file is that of the full one.  A frame that carries no IP
    keeps its link header; an IP packet of another protocol, or a later fragment,
    its IP header.  Never more than ``len(data)``.
    """
    n = len(data)
    found = _network(linktype, data, 0, n)
    if not found:
        return min(n, _LINK_HEADER.get(linktype, 0)) if found is None else n
    p, ver, _ = found
    if p >= n:
        return n
    if ver == 0:
        ver = data[p] >> 4
    if ver == 4 and n - p >= 20:
        t = p + ((data[p] & 15) << 2)
        proto = data[p + 9]
        if _U16.unpack_from(data, p + 6)[0] & 0x1FFF:
            return min(n, t)  # a later fragment: no transport header in it
    elif ver == 6 and n - p >= 40:
        proto, t = data[p + 6], p + 40
        while proto in (0, 43, 44, 51, 60) and t + 8 <= n:
            if proto == 44 and _U16.unpack_from(data, t + 2)[0] & 0xFFF8:
                return min(n, t + 8)
            step = 8 if proto == 44 else (data[t + 1] + 2) << 2 if proto == 51 else (data[t + 1] + 1) << 3
            proto, t = data[t], t + step
    else:
        return n  # IP header cut or not IP after all: nothing past the headers was captured
    if proto == 6 and t + 13 <= n:
        return min(n, t + ((data[t + 12] >> 2) & 0x3C or 20))
    if proto == 17:
        return min(n, t + 8)
    return min(n, t)


def _decode(
    lt: int, buf: bytes, start: int, end: int, frame: int, ts: float, extra: int,
    make: Callable[..., Any] = _make_packet, make_udp: Callable[..., Any] | None = None,
) -> _Result:
    """Decode the frame ``buf[start:end]`` of link type ``lt``: ``make(...)`` of a TCP
    segment's fields (Packet's, in order), ``make_udp(...)`` of a UDP datagram's
    (UdpPacket's) when ``make_udp`` is given, else None (skipped), or False (malformed).

    ``extra`` is how many bytes of the frame were on the wire but not captured
    (wire length minus captured length, 0 if not cut).
    """
    # Fast path: Ethernet, IPv4 without options, unfragmented TCP, nothing odd.
    if lt == 1 and end - start >= 54:
        et, vihl, tot, ipid, frag, proto, sd, sp, dp, seq, ack, offb, fl, win = (
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
                    buf[p:q], buf[t : (p if p < end else end)] if doff > 20 else b"", 4, ipid,
                )  # fmt: skip

    # General path: find the network layer.
    found = _network(lt, buf, start, end)
    if not found:
        return found  # type: ignore[return-value]
    p, ver, cap = found
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
    if cap < wire:  # PPPoE's length says the packet ends sooner
        wire = cap

    if ver == 4:
        if avail < 20:
            return False
        vihl, tot, ipid, frag, proto, s, d = _IP4.unpack_from(buf, p)
        if frag & 0x1FFF or (proto != 6 and (proto != 17 or make_udp is None)):
            return None  # a fragment past the first, or neither TCP nor (wanted) UDP
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
        ipid = 0
        t = p + 40
        if plen == 0:  # jumbogram or offload: take what was on the wire
            plen = wire - 40
        elif plen > wire - 40:
            plen = wire - 40
        ext = 0
        while nh != 6 and nh != 17:
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
            else:  # ICMPv6, ESP, no next header, ...
                return None
            nh = buf[t]
            t += hl
            ext += hl
        iplen = plen - ext
        if iplen < 0:
            return False
        if nh == 17 and make_udp is None:
            return None
        proto = nh
        src = _A6[s]
        dst = _A6[d]

    if proto == 17:  # UDP (RFC 768): the length field covers header and payload
        if end - t < 8:
            return False
        sp, dp, ulen = _UDP.unpack_from(buf, t)
        if ulen < 8:
            return False
        length = (ulen if ulen <= iplen else iplen) - 8
        q = t + 8 + length
        return make_udp(frame, ts, src, sp, dst, dp, length, buf[t + 8 : (q if q < end else end)], ver)  # type: ignore[misc]
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
        buf[pl:q], buf[o : (pl if pl < end else end)] if doff > 20 else b"", ver, ipid,
    )  # fmt: skip


def decode_frame(
    linktype: int,
    data: bytes | bytearray | memoryview,
    *,
    frame: int,
    ts: float,
    wirelen: int | None = None,
    udp: bool = False,
) -> Packet | UdpPacket | None:
    """One link-layer frame -> :class:`Packet` (or, with ``udp``, :class:`UdpPacket`), or
    ``None`` if it is not a decodable TCP segment (or UDP datagram).

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
    result = _decode(linktype, buf, 0, n, frame, ts, extra, _make_packet, UdpPacket if udp else None)
    return result if result else None  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _counting(stats: DecodeStats, make_udp: Callable[..., Any]) -> Callable[..., Any]:
    """``make_udp``, counting the datagrams in ``stats.udp``."""

    def udp(*fields: Any) -> Any:
        stats.udp += 1
        return make_udp(*fields)

    return udp


class CaptureReader(pcapio.CaptureFile):
    """An open capture (see :class:`~handshake_viz.pcapio.CaptureFile`, which reads the
    records): iterate it for its TCP packets; :meth:`records` builds them with another
    constructor (and UDP datagrams with ``make_udp``); :attr:`stats` counts what was
    read.  Use it as a context manager, or call :meth:`close`.
    """

    stats: DecodeStats

    def __iter__(self) -> Iterator[Packet]:
        return self.walk(_decode, _make_packet)

    def records(self, make: Callable[..., _T], make_udp: Callable[..., Any] | None = None,
                *, verify_checksums: bool = False) -> Iterator[_T]:
        """Iterate as ``iter(reader)`` does, but build each TCP packet with ``make``
        (called with Packet's fields, in order) instead of as a Packet -- the JSON Lines
        writer takes only the fields it prints, in a tuple -- and, with ``make_udp``,
        each UDP datagram with it (UdpPacket's fields), in the same stream.

        With ``verify_checksums`` every TCP segment's checksum is verified too
        (:mod:`~handshake_viz.checksum`): ``make`` gets its status after Packet's
        fields (``Tracker.feed_checked``), and ``stats.checksums`` counts them."""
        udp = None if make_udp is None else _counting(self.stats, make_udp)
        if verify_checksums:
            from handshake_viz.checksum import verified_records

            return verified_records(self, make, udp)
        return self.walk(_decode, make, udp)


def open_capture(source: Source, *, name: str | None = None) -> CaptureReader:
    """Open a pcap or pcapng capture (possibly gzip-compressed) for decoding.

    ``source`` is a path (``"-"`` reads standard input) or a binary file object.
    ``name`` is what messages call the file (default: the path as given, or the
    file object's ``name``).  Raises :class:`~handshake_viz.errors.CaptureFileError`
    when the file is missing, a directory, unreadable, empty, not a capture, has a
    cut file header, or (pcap) an unsupported link type.
    """
    return pcapio.open_file(source, supported=LINKTYPES, name=name, stats=DecodeStats(), cls=CaptureReader)


def iter_packets(path: Source) -> Iterator[Packet]:
    """Every TCP packet of a capture, in file order (open, iterate, close)."""
    with open_capture(path) as reader:
        yield from reader
