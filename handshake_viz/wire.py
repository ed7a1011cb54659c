"""A TCP segment's headers as they are on the wire, field by field (``hsviz show``).

Every multi-byte field of Ethernet, IP and TCP goes out big-endian, most
significant byte first: *network byte order*.  Some of those bytes the program
wrote itself — the port in the sockaddr it gave ``bind()`` or ``connect()`` as
``htons(8080)`` (``1f 90``), the address as ``inet_pton(AF_INET, "127.0.0.1")``
(``7f 00 00 01``) — and the kernel wrote the rest, sequence numbers included
(``htonl(seq)``).  A little-endian machine (x86, most ARM) keeps 8080 in memory
as ``90 1f``: a program that forgot ``htons()`` sends those two bytes, and the
other side reads port 36895.

:func:`dissect` lists a frame's fields in wire order: each field's offset, its
bytes exactly as captured, its value, and for ports, addresses, seq and ack the
host-order value and the call that puts it in network order.  It reads the
bytes itself (link layer, IPv4 or IPv6 with extension headers, TCP with its
options) and needs nothing but the frame; a :class:`~handshake_viz.model.Segment`
adds what tracking knows (relative numbers, which side is the server).
:func:`show_lines` is the text ``hsviz show`` prints; :meth:`WireView.to_json`
the same for the HTML page's byte panel.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handshake_viz.errors import UsageError
from handshake_viz.model import Direction, Segment, flag_letters
from handshake_viz.pcapio import Frame, unsupported
from handshake_viz.text import escape_preview

__all__ = ["NotTcp", "WireField", "WireView", "dissect", "show_lines"]


class NotTcp(UsageError):
    """The frame carries no TCP segment that can be taken apart."""


@dataclass(frozen=True, slots=True)
class WireField:
    """One header field: where it is, its bytes as sent, and what they say.

    ``host`` is the host-order value and the call that puts it in network order
    (``htons(53745)``); ``note`` what a little-endian machine would have sent
    without that call, or another word on the field.
    """

    layer: str  # "Ethernet", "IPv4", "IPv6", "TCP", "TCP option"
    name: str  # "source port"
    offset: int  # from the frame's first byte
    raw: bytes  # the field's bytes exactly as captured (network byte order)
    value: str  # "53745", "127.0.0.1", "PSH ACK"
    host: str = ""  # 'htons(53745)', 'inet_pton(AF_INET, "127.0.0.1")', 'htonl(2297337587)'
    note: str = ""

    @property
    def hex(self) -> str:
        return self.raw.hex(" ")

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "name": self.name, "offset": self.offset, "size": len(self.raw),
                "value": self.value, "host": self.host, "note": self.note}


@dataclass(frozen=True, slots=True)
class WireView:
    """A frame taken apart: its header fields in wire order, then its payload."""

    frame: int
    linktype: int
    captured: int  # bytes in the capture
    wirelen: int  # bytes on the wire
    fields: tuple[WireField, ...]
    payload_offset: int  # where the TCP payload starts
    payload_length: int  # TCP payload length from the IP header (may exceed what was captured)
    payload: bytes  # the captured payload bytes
    segment: Segment | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.layer.replace(" option", "") for f in self.fields))

    def field(self, layer: str, name: str) -> WireField:
        """The field ``name`` of ``layer`` (KeyError when there is none)."""
        for f in self.fields:
            if f.layer == layer and f.name == name:
                return f
        raise KeyError(f"{layer} {name}")

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame, "linktype": self.linktype, "captured": self.captured,
                "wirelen": self.wirelen, "fields": [f.to_json() for f in self.fields],
                "payload_offset": self.payload_offset, "payload_length": self.payload_length}


# ==========================================================================================
# Byte order
# ==========================================================================================

_LITTLE = sys.byteorder == "little"


def _swapped16(raw: bytes) -> str:
    """What a little-endian machine sends for this u16 without htons(), and how it reads."""
    back = raw[::-1]
    if back == raw:
        return f"without htons(): the same bytes ({raw.hex(' ')})"
    return f"without htons(): {back.hex(' ')} on a little-endian machine, read as {int.from_bytes(back, 'big')}"


# ==========================================================================================
# Reading the layers
# ==========================================================================================


class _Reader:
    """Collects fields while walking a frame; every read is bounds-checked."""

    def __init__(self, data: bytes, frame: int) -> None:
        self.data = data
        self.frame = frame
        self.fields: list[WireField] = []

    def take(self, layer: str, name: str, offset: int, size: int, value: Callable[[bytes], str],
             host: Callable[[bytes], str] | None = None, note: Callable[[bytes], str] | None = None
             ) -> bytes:
        raw = self.data[offset:offset + size]
        if len(raw) < size:
            raise NotTcp(f"frame {self.frame}: cut short in the {layer} header "
                         f"({len(self.data)} bytes captured)")
        self.fields.append(WireField(layer, name, offset, raw, value(raw),
                                     host(raw) if host else "", note(raw) if note else ""))
        return raw


def _u(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _dec(raw: bytes) -> str:
    return str(_u(raw))


def _hex(raw: bytes) -> str:
    return f"0x{_u(raw):0{2 * len(raw)}x}"


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


_ETHERTYPES = {0x0800: "IPv4", 0x86DD: "IPv6", 0x8100: "802.1Q VLAN", 0x88A8: "802.1ad VLAN",
               0x9100: "QinQ VLAN", 0x0806: "ARP"}
_VLAN = (0x8100, 0x88A8, 0x9100)
_PROTOCOLS = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 0: "hop-by-hop options",
              43: "routing header", 44: "fragment header", 60: "destination options",
              51: "authentication header"}
_AF_INET6 = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, Darwin


def _ethertype(raw: bytes) -> str:
    et = _u(raw)
    return f"0x{et:04x} ({_ETHERTYPES.get(et, 'other')})"


def _link(r: _Reader, linktype: int) -> tuple[int, int]:
    """Fields of the link header: ``(offset of the IP header, IP version or 0)``."""
    d = r.data
    if linktype == 1:  # Ethernet, with stacked VLAN tags
        r.take("Ethernet", "destination MAC", 0, 6, _mac)
        r.take("Ethernet", "source MAC", 6, 6, _mac)
        p = 12
        et = _u(r.take("Ethernet", "EtherType", p, 2, _ethertype))
        while et in _VLAN:
            r.take("Ethernet", "VLAN tag", p + 2, 2,
                   lambda raw: f"VLAN {_u(raw) & 0xFFF}, priority {_u(raw) >> 13}")
            p += 4
            et = _u(r.take("Ethernet", "EtherType", p, 2, _ethertype))
        return p + 2, {0x0800: 4, 0x86DD: 6}.get(et, -1)
    if linktype == 113:  # Linux cooked v1
        r.take("Linux cooked", "packet type", 0, 2, _dec)
        r.take("Linux cooked", "ARPHRD type", 2, 2, _dec)
        r.take("Linux cooked", "address length", 4, 2, _dec)
        r.take("Linux cooked", "address", 6, 8, _mac)
        et = _u(r.take("Linux cooked", "protocol", 14, 2, _ethertype))
        return 16, {0x0800: 4, 0x86DD: 6}.get(et, -1)
    if linktype == 276:  # Linux cooked v2
        et = _u(r.take("Linux cooked v2", "protocol", 0, 2, _ethertype))
        r.take("Linux cooked v2", "reserved", 2, 2, _dec)
        r.take("Linux cooked v2", "interface index", 4, 4, _dec)
        r.take("Linux cooked v2", "ARPHRD type", 8, 2, _dec)
        r.take("Linux cooked v2", "packet type", 10, 1, _dec)
        r.take("Linux cooked v2", "address length", 11, 1, _dec)
        r.take("Linux cooked v2", "address", 12, 8, _mac)
        return 20, {0x0800: 4, 0x86DD: 6}.get(et, -1)
    if linktype in (0, 108):  # BSD loopback: the family in the capturing host's order
        raw = d[:4]
        if linktype == 0 and _u(raw) > 0xFFFF:
            family = int.from_bytes(raw, "little")
            order = "little-endian: the capturing host's own byte order, not the network's"
        else:
            family = _u(raw)
            order = "big-endian"
        name = "AF_INET" if family == 2 else "AF_INET6" if family in _AF_INET6 else "other"
        r.take("Loopback", "address family", 0, 4, lambda _raw: f"{family} ({name})",
               note=lambda _raw: order)
        return 4, 4 if family == 2 else 6 if family in _AF_INET6 else -1
    if linktype in (12, 14, 101):
        return 0, 0
    if linktype == 228:
        return 0, 4
    if linktype == 229:
        return 0, 6
    raise NotTcp(f"frame {r.frame}: {unsupported(linktype)}")


def _protocol(raw: bytes) -> str:
    return f"{raw[0]} ({_PROTOCOLS.get(raw[0], 'other')})"


def _addresses(r: _Reader, layer: str, start: int) -> None:
    """Source and destination address, as the program would have written them."""
    family, name, size = (socket.AF_INET, "AF_INET", 4) if layer == "IPv4" else (socket.AF_INET6, "AF_INET6", 16)
    for i, which in enumerate(("source address", "destination address")):
        r.take(layer, which, start + i * size, size, lambda raw: socket.inet_ntop(family, raw),
               host=lambda raw: f'inet_pton({name}, "{socket.inet_ntop(family, raw)}")')


def _ipv4(r: _Reader, p: int) -> tuple[int, int, int]:
    """IPv4 fields: ``(protocol, offset of the next header, bytes after the IP header)``."""
    d = r.data
    if len(d) < p + 20:
        raise NotTcp(f"frame {r.frame}: cut short in the IPv4 header ({len(d)} bytes captured)")
    ihl = (d[p] & 15) * 4
    r.take("IPv4", "version, header length", p, 1,
           lambda raw: f"{raw[0] >> 4}, {raw[0] & 15} words ({(raw[0] & 15) * 4} bytes)")
    r.take("IPv4", "DSCP, ECN", p + 1, 1, lambda raw: f"{raw[0] >> 2}, {raw[0] & 3}")
    total = _u(r.take("IPv4", "total length", p + 2, 2, _dec))
    r.take("IPv4", "identification", p + 4, 2, lambda raw: f"{_hex(raw)} ({_u(raw)})")

    def frag(raw: bytes) -> str:
        v = _u(raw)
        flags = [n for bit, n in ((0x4000, "DF"), (0x2000, "MF"), (0x8000, "reserved bit")) if v & bit]
        return f"{', '.join(flags) or 'no flags'}; fragment offset {v & 0x1FFF}"

    r.take("IPv4", "flags, fragment offset", p + 6, 2, frag)
    r.take("IPv4", "time to live", p + 8, 1, _dec)
    proto = r.take("IPv4", "protocol", p + 9, 1, _protocol)[0]
    r.take("IPv4", "header checksum", p + 10, 2, _hex)
    _addresses(r, "IPv4", p + 12)
    if ihl > 20:
        r.take("IPv4", "options", p + 20, ihl - 20, lambda raw: f"{len(raw)} bytes")
    if ihl < 20:
        raise NotTcp(f"frame {r.frame}: IPv4 header length {ihl} is less than 20")
    return proto, p + ihl, (total or len(d) - p) - ihl


def _ipv6(r: _Reader, p: int) -> tuple[int, int, int]:
    """IPv6 fields (and extension headers): like :func:`_ipv4`."""
    d = r.data

    def first(raw: bytes) -> str:
        v = _u(raw)
        return f"version {v >> 28}, traffic class {(v >> 20) & 0xFF}, flow label 0x{v & 0xFFFFF:05x}"

    r.take("IPv6", "version, traffic class, flow label", p, 4, first)
    plen = _u(r.take("IPv6", "payload length", p + 4, 2, _dec))
    nh = r.take("IPv6", "next header", p + 6, 1, _protocol)[0]
    r.take("IPv6", "hop limit", p + 7, 1, _dec)
    _addresses(r, "IPv6", p + 8)
    t = p + 40
    ext = 0
    while nh in (0, 43, 44, 51, 60):
        if len(d) < t + 2:
            raise NotTcp(f"frame {r.frame}: cut short in an IPv6 extension header")
        size = 8 if nh == 44 else (d[t + 1] + 2) * 4 if nh == 51 else (d[t + 1] + 1) * 8
        kind = _PROTOCOLS[nh]
        nxt = d[t]
        r.take("IPv6", kind, t, size, lambda raw: f"{len(raw)} bytes, next header {_protocol(raw)}")
        nh, t, ext = nxt, t + size, ext + size
    return nh, t, (plen or len(d) - p - 40) - ext


_OPTION_NAMES = {0: "end of options", 1: "no-operation", 2: "maximum segment size",
                 3: "window scale", 4: "SACK permitted", 5: "SACK", 8: "timestamps",
                 34: "Fast Open cookie"}


def _option_value(kind: int, body: bytes) -> str:
    if kind == 2 and len(body) == 2:
        return f"MSS {_u(body)}"
    if kind == 3 and len(body) == 1:
        return f"shift {body[0]} (window × {1 << min(body[0], 14)})"
    if kind == 8 and len(body) == 8:
        return f"TSval {_u(body[:4])}, TSecr {_u(body[4:])}"
    if kind == 5 and len(body) % 8 == 0:
        return ", ".join(f"{_u(body[i:i + 4])}-{_u(body[i + 4:i + 8])}" for i in range(0, len(body), 8))
    if kind == 34:
        return f"cookie {body.hex()}" if body else "cookie request"
    return f"{len(body)} bytes" if body else ""


def _tcp_options(r: _Reader, start: int, end: int) -> None:
    d = r.data
    i = start
    end = min(end, len(d))
    while i < end:
        kind = d[i]
        if kind in (0, 1):
            r.take("TCP option", _OPTION_NAMES[kind], i, 1, lambda _raw: "")
            i += 1
            if kind == 0 and i < end:
                r.take("TCP option", "padding", i, end - i, lambda raw: f"{len(raw)} bytes")
                return
            continue
        size = d[i + 1] if i + 1 < end else 0
        if size < 2 or i + size > end:
            r.take("TCP option", "cut or malformed option", i, end - i, lambda raw: f"{len(raw)} bytes")
            return
        r.take("TCP option", _OPTION_NAMES.get(kind, f"option {kind}"), i, size,
               lambda raw: _option_value(raw[0], raw[2:]))
        i += size


def _tcp(r: _Reader, t: int, segment: Segment | None) -> int:
    """TCP fields; returns the offset of the payload."""
    d = r.data
    if len(d) < t + 20:
        raise NotTcp(f"frame {r.frame}: cut short in the TCP header ({len(d)} bytes captured)")
    server_port = _server_port(segment)

    def port_note(raw: bytes) -> str:
        port = _u(raw)
        if server_port is None:
            who = ""
        elif port == server_port:
            who = "the server's: given to bind() and connect(); "
        else:
            who = "the client's: picked by its kernel at connect(); "
        return who + _swapped16(raw)

    for name, at in (("source port", 0), ("destination port", 2)):
        r.take("TCP", name, t + at, 2, _dec, host=lambda raw: f"htons({_u(raw)})", note=port_note)
    rel: dict[str, int | None] = {}
    if segment is not None:
        rel = {"sequence number": segment.rel_seq, "acknowledgment number": segment.rel_ack}
    has_ack = bool(d[t + 13] & 0x10)
    for name, at in (("sequence number", 4), ("acknowledgment number", 8)):
        def value(raw: bytes, name: str = name) -> str:
            if name.startswith("ack") and not has_ack:
                return f"{_dec(raw)} (unused: the ACK flag is clear)"
            relative = rel.get(name)
            return _dec(raw) + (f" (relative {relative})" if relative is not None else "")

        r.take("TCP", name, t + at, 4, value, host=lambda raw: f"htonl({_u(raw)})")
    doff = (d[t + 12] >> 4) * 4
    r.take("TCP", "data offset", t + 12, 1,
           lambda raw: f"{raw[0] >> 4} words ({(raw[0] >> 4) * 4} bytes)"
                       + (f", reserved bits {raw[0] & 15:04b}" if raw[0] & 15 else ""))
    r.take("TCP", "flags", t + 13, 1,
           lambda raw: f"{_hex(raw)} {_flag_names(raw[0])}".rstrip())
    r.take("TCP", "window", t + 14, 2, _dec)
    r.take("TCP", "checksum", t + 16, 2, _hex)
    r.take("TCP", "urgent pointer", t + 18, 2, _dec)
    if doff < 20:
        raise NotTcp(f"frame {r.frame}: TCP data offset {doff} is less than 20")
    if doff > 20:
        _tcp_options(r, t + 20, t + doff)
    return t + doff


_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def _flag_names(bits: int) -> str:
    return " ".join(n for i, n in enumerate(_FLAG_NAMES) if bits & (1 << i))


def _server_port(segment: Segment | None) -> int | None:
    if segment is None:
        return None
    return segment.dport if segment.dir is Direction.C2S else segment.sport


# ==========================================================================================
# Entry points
# ==========================================================================================


def dissect(frame: Frame, segment: Segment | None = None) -> WireView:
    """Take ``frame`` apart field by field (``segment``: the same frame as tracked, for
    relative numbers and which port is the server's).  Raises :class:`NotTcp` for a
    frame that carries no TCP segment, or one cut short inside its headers."""
    r = _Reader(frame.data, frame.frame)
    p, version = _link(r, frame.linktype)
    if version == -1:
        raise NotTcp(f"frame {frame.frame}: not IP ({_describe_link(r)})")
    if version == 0:
        if len(frame.data) <= p:
            raise NotTcp(f"frame {frame.frame}: empty")
        version = frame.data[p] >> 4
    if version == 4:
        proto, t, after_ip = _ipv4(r, p)
    elif version == 6:
        proto, t, after_ip = _ipv6(r, p)
    else:
        raise NotTcp(f"frame {frame.frame}: not IP (version {version})")
    if proto != 6:
        what = {17: "a UDP datagram", 1: "ICMP", 58: "ICMPv6"}.get(proto, f"IP protocol {proto}")
        raise NotTcp(f"frame {frame.frame} is {what}, not a TCP segment")
    payload_at = _tcp(r, t, segment)
    length = max(0, after_ip - (payload_at - t))
    payload = frame.data[payload_at:payload_at + length]
    return WireView(frame.frame, frame.linktype, len(frame.data), frame.wirelen, tuple(r.fields),
                    payload_at, length, payload, segment)


def _describe_link(r: _Reader) -> str:
    last = r.fields[-1] if r.fields else None
    return last.value if last is not None else "no IP header"


_BYTES_PER_LINE = 8


def show_lines(view: WireView, source: str = "") -> list[str]:
    """What ``hsviz show`` prints: a heading, one line per field (offset, bytes as sent,
    name, value, host order), the payload, and the byte-order lesson."""
    seg = view.segment
    where = f" of {source}" if source else ""
    head = (f"frame {view.frame}{where}: {view.captured} bytes captured"
            + (f" ({view.wirelen} on the wire)" if view.wirelen != view.captured else "")
            + f", {' / '.join(view.layers)}")
    out = [head]
    if seg is not None:
        from handshake_viz.layout import segment_text

        label, detail, _extra = segment_text(seg)
        role = "client → server" if seg.dir is Direction.C2S else "server → client"
        out.append(f"conn {seg.conn}, {role}: {label} {detail} (flags {flag_letters(seg.flags)}); "
                   f"then client {seg.client_state.value}, server {seg.server_state.value}")
    out.append("")
    width = max(len(f.name) for f in view.fields)
    out.append(f"{'offset':>6}  {'bytes (as sent)':<{3 * _BYTES_PER_LINE - 1}}  {'field':<{width}}  value")
    layer = None
    for f in view.fields:
        if f.layer != layer:
            layer = f.layer
            out.append(layer)
        chunks = [f.raw[i:i + _BYTES_PER_LINE].hex(" ")
                  for i in range(0, len(f.raw), _BYTES_PER_LINE)] or [""]
        value = f.value + (f"   ← {f.host}" if f.host else "")
        out.append(f"{f.offset:>6}  {chunks[0]:<{3 * _BYTES_PER_LINE - 1}}  {f.name:<{width}}  {value}".rstrip())
        for more in chunks[1:]:
            out.append(f"{'':>6}  {more}")
        if f.note:
            out.append(f"{'':>6}  {'':<{3 * _BYTES_PER_LINE - 1}}  {'':<{width}}  ({f.note})")
    cut = "" if len(view.payload) == view.payload_length else f" ({len(view.payload)} captured)"
    out.append(f"payload: {view.payload_length} bytes{cut}")
    for i in range(0, min(len(view.payload), 64), 16):
        chunk = view.payload[i:i + 16]
        out.append(f"{view.payload_offset + i:>6}  {chunk.hex(' '):<47}  {escape_preview(chunk, limit=64)}")
    if len(view.payload) > 64:
        out.append(f"{'':>6}  … {len(view.payload) - 64} more bytes")
    out += [""] + byte_order_lesson(view)
    return out


def byte_order_lesson(view: WireView) -> list[str]:
    """The byte-order lesson on this frame's own numbers (the server's port when known)."""
    ports = [f for f in view.fields if f.layer == "TCP" and f.name.endswith(" port")]
    server = _server_port(view.segment)
    port = next((f for f in ports if server is not None and _u(f.raw) == server), ports[-1])
    value = _u(port.raw)
    little = port.raw[::-1].hex(" ")
    machine = "little-endian" if _LITTLE else "big-endian"
    lines = [
        "Byte order: every number above is sent big-endian (network byte order), most "
        "significant byte first.",
        f"Port {value} is 0x{value:04x}: htons({value}) puts it on the wire as {port.hex}; "
        f"this machine is {machine}"
        + (f" and keeps {value} in memory as {little}." if _LITTLE else "."),
    ]
    if port.raw[::-1] != port.raw:
        lines.append(f"Had the program forgotten htons({value}), a little-endian machine would have "
                     f"sent {little}, and the peer would read port {int.from_bytes(port.raw[::-1], 'big')}.")
    return lines
