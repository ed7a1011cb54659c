"""The records that flow between the stages, and the vocabulary they use.

Every stage speaks in these types and nothing else::

    decode / capture  ->  Packet          (one TCP segment as it was on the wire)
    track             ->  Segment         (a Packet labelled: conn, dir, label, phase,
                                           relative numbers, analysis flags, both states)
                      ->  ConnectionSummary (one per connection, Zeek-style)
    trace             ->  Call            (one socket call from strace or a demo program)
    align             ->  Call            (the same, with ``conn`` and ``frames`` filled in)

All records are frozen dataclasses: a stage never edits what it was given, it
returns new records.  Enumerations are ``str`` enums whose values are the exact
strings of the JSONL schema, so ``json.dumps`` of a value needs no mapping.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

# What a user of the package meets: the records and their enums (handshake_viz
# re-exports exactly these).  The helpers the stages share (normalize_ip, call_kind,
# SYSCALLS, COUNTS_MESSAGES, flag_letters, parse_options, Word, and the constructors
# fast_constructor, field_picker and make_packet) are imported by name.
__all__ = [
    "Analysis",
    "Call",
    "CallKind",
    "ConnectionSummary",
    "Datagram",
    "Direction",
    "Endpoint",
    "Flag",
    "FlowSummary",
    "Label",
    "Packet",
    "Phase",
    "Segment",
    "TcpOptions",
    "TcpState",
    "UdpPacket",
    "ZeekConnection",
]


class Flag(enum.IntFlag):
    """TCP header flag bits (RFC 9293 §3.1, RFC 3168 for ECE/CWR).

    ``Flag(seg.flags) & Flag.SYN`` tests a bit; ``flag_letters(seg.flags)`` spells them.
    """

    FIN = 0x01  # no more data from sender
    SYN = 0x02  # synchronize sequence numbers
    RST = 0x04  # reset the connection
    PSH = 0x08  # push function
    ACK = 0x10  # acknowledgment field is significant
    URG = 0x20  # urgent pointer field is significant
    ECE = 0x40  # ECN echo
    CWR = 0x80  # congestion window reduced


# Letters in the order the schema prints them: "FSRPAUEC".
_LETTERS = (
    (Flag.FIN, "F"),
    (Flag.SYN, "S"),
    (Flag.RST, "R"),
    (Flag.PSH, "P"),
    (Flag.ACK, "A"),
    (Flag.URG, "U"),
    (Flag.ECE, "E"),
    (Flag.CWR, "C"),
)
_LETTER_CACHE: dict[int, str] = {}


def flag_letters(flags: int) -> str:
    """``flag_letters(0x12) == "SA"``: the set bits as letters from ``FSRPAUEC``."""
    try:
        return _LETTER_CACHE[flags]
    except KeyError:
        text = "".join(ch for bit, ch in _LETTERS if flags & bit)
        _LETTER_CACHE[flags] = text
        return text


class Word(str, enum.Enum):
    """A closed vocabulary whose values are the JSONL schema's exact strings, so
    ``json.dumps`` of a member needs no mapping and ``str()`` gives the word."""

    def __str__(self) -> str:
        return str(self.value)


class Label(Word):
    """What a segment does in the conversation, as the lessons name it.

    ``[s.label.value for s in conn.segments[:3]] == ["SYN", "SYN-ACK", "ACK"]``
    """

    SYN = "SYN"
    SYN_ACK = "SYN-ACK"
    ACK = "ACK"  # no payload, no SYN/FIN/RST
    DATA = "DATA"  # payload that acknowledges nothing new from the peer
    PIGGYBACK = "PIGGYBACK"  # payload that also acknowledges new bytes from the peer
    FIN = "FIN"
    FIN_ACK = "FIN-ACK"  # a FIN that also acknowledges the peer's FIN
    RST = "RST"


class Phase(Word):
    """Which part of the connection's life a segment belongs to."""

    HANDSHAKE = "handshake"
    DATA = "data"
    CLOSE = "close"
    RESET = "reset"


class TcpState(Word):
    """RFC 9293 §3.3.2 connection states, as seen from the capture."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


class Direction(Word):
    """Which way a segment travels: ``seg.dir is Direction.C2S`` for client to server."""

    C2S = "c2s"
    S2C = "s2c"


class Analysis(Word):
    """Analysis flags, named as Wireshark's ``tcp.analysis.*`` fields."""

    RETRANSMISSION = "retransmission"
    FAST_RETRANSMISSION = "fast-retransmission"
    SPURIOUS_RETRANSMISSION = "spurious-retransmission"
    OUT_OF_ORDER = "out-of-order"
    DUP_ACK = "dup-ack"
    LOST_SEGMENT = "lost-segment"  # previous segment not captured
    ACK_UNSEEN = "ack-unseen"  # acknowledges a segment that was not captured
    ZERO_WINDOW = "zero-window"
    ZERO_WINDOW_PROBE = "zero-window-probe"
    WINDOW_UPDATE = "window-update"
    WINDOW_FULL = "window-full"
    KEEP_ALIVE = "keep-alive"
    KEEP_ALIVE_ACK = "keep-alive-ack"
    # hsviz's own, not Wireshark's: the capture holds this segment twice (see
    # seqanalysis.DUPLICATE_WINDOW); the flags above are what tshark says of the copy.
    DUPLICATE = "duplicate"
    # Only with checksum verification on (``--verify-checksums``, see checksum.py):
    # the TCP checksum does not verify (tshark's "incorrect checksum"; Zeek ignores the
    # segment) ...
    BAD_CHECKSUM = "bad-checksum"
    # ... or the field holds only the pseudo-header's sum: the sending host left the
    # rest to its network card (checksum offload; every loopback capture).
    CHECKSUM_OFFLOADED = "checksum-offloaded"


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """Decoded TCP options (RFC 9293 §3.2, RFC 7323, RFC 2018, RFC 7413)."""

    mss: int | None = None
    wscale: int | None = None  # shift as sent; see ``wscale_effective``
    sack_perm: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    ts_val: int | None = None
    ts_ecr: int | None = None
    tfo_cookie: bytes | None = None  # b"" is a cookie request
    truncated: bool = False  # the option list ran past the captured bytes

    @property
    def wscale_effective(self) -> int | None:
        """RFC 7323 §2.3: a shift above 14 is treated as 14."""
        return None if self.wscale is None else min(self.wscale, 14)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mss is not None:
            out["mss"] = self.mss
        if self.wscale is not None:
            out["wscale"] = self.wscale
        if self.sack_perm:
            out["sack_perm"] = True
        if self.sack:
            out["sack"] = [list(b) for b in self.sack]
        if self.ts_val is not None:
            out["ts_val"] = self.ts_val
            out["ts_ecr"] = self.ts_ecr
        if self.tfo_cookie is not None:
            out["tfo_cookie"] = self.tfo_cookie.hex()
        if self.truncated:
            out["truncated"] = True
        return out


_EMPTY_OPTIONS = TcpOptions()
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32x2 = struct.Struct("!II")


def parse_options(raw: bytes) -> TcpOptions:
    """Decode the TCP option bytes that follow the fixed 20-byte header.

    Malformed or cut-off options end the walk and set ``truncated``; they never raise.
    """
    if not raw:
        return _EMPTY_OPTIONS
    mss = wscale = ts_val = ts_ecr = None
    sack_perm = False
    sack: list[tuple[int, int]] = []
    tfo: bytes | None = None
    truncated = False
    i, n = 0, len(raw)
    while i < n:
        kind = raw[i]
        if kind == 0:  # end of option list
            break
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= n:
            truncated = True
            break
        length = raw[i + 1]
        if length < 2 or i + length > n:
            truncated = True
            break
        body = raw[i + 2 : i + length]
        if kind == 2 and length == 4:
            mss = _U16.unpack(body)[0]
        elif kind == 3 and length == 3:
            wscale = body[0]
        elif kind == 4 and length == 2:
            sack_perm = True
        elif kind == 5 and length >= 10 and (length - 2) % 8 == 0:
            sack.extend(_U32x2.unpack_from(body, j) for j in range(0, length - 2, 8))
        elif kind == 8 and length == 10:
            ts_val, ts_ecr = _U32x2.unpack(body)
        elif kind == 34:  # RFC 7413 TCP Fast Open cookie
            tfo = bytes(body)
        elif kind == 254 and length >= 4 and body[:2] == b"\xf9\x89":  # experimental TFO
            tfo = bytes(body[2:])
        i += length
    return TcpOptions(mss, wscale, sack_perm, tuple(sack), ts_val, ts_ecr, tfo, truncated)


class _TcpHeaderView:
    """What a Packet and a Segment both tell of their TCP header's bits."""

    __slots__ = ()
    flags: int
    raw_options: bytes

    @property
    def options(self) -> TcpOptions:
        return parse_options(self.raw_options)

    @property
    def flag_str(self) -> str:
        return flag_letters(self.flags)


class _TrackedView:
    """What a Segment and a Datagram both tell once tracking placed them in their
    connection or flow: which way they went, and their frame as scapy sees it."""

    __slots__ = ()
    dir: Direction

    @property
    def is_c2s(self) -> bool:
        return self.dir is Direction.C2S

    def packet(self, capture: str | os.PathLike[str] | None = None) -> Any:
        """This segment's or datagram's frame as a scapy packet (``Ether/IP/TCP/Raw`` or
        ``Ether/IP/UDP/Raw`` on Ethernet), so ``.show()``, ``hexdump()`` and the rest of
        scapy work on it.  ``capture``: the file it came from (default: that of the
        loaded Trace that holds this record).

        >>> seg.packet().show()                                   # doctest: +SKIP
        """
        from handshake_viz.frames import packet_of

        return packet_of(self, capture)  # type: ignore[arg-type]  # only Segment and Datagram mix this in

@dataclass(frozen=True, slots=True)
class Packet(_TcpHeaderView):
    """One TCP segment as decoded from a capture, before any tracking.

    ``length`` is the TCP payload length from the IP header (sequence space the
    segment carries), which can exceed ``len(payload)`` when the capture's
    snaplen cut the frame; ``payload`` holds only the bytes actually captured.
    """

    frame: int  # 1-based record number in the capture file
    ts: float  # epoch seconds
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int  # bit mask of Flag
    win: int  # raw window field, unscaled
    length: int
    payload: bytes = b""
    raw_options: bytes = b""
    ip_version: int = 4
    ip_id: int = 0  # IPv4's identification field (0 for IPv6): a copy has its original's

    @property
    def flag_set(self) -> Flag:
        return Flag(self.flags)


@dataclass(frozen=True, slots=True)
class Segment(_TcpHeaderView, _TrackedView):
    """A Packet after tracking: which connection, which way, what it means.

    ``rel_seq``/``rel_ack`` are Wireshark's relative numbers: 0 for the SYN, 1 for
    the first data byte; ``rel_ack`` is ``None`` when the ACK bit is clear.
    ``client_state``/``server_state`` are the RFC 9293 states *after* this segment.
    """

    frame: int
    ts: float
    conn: int
    dir: Direction
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    rel_seq: int
    rel_ack: int | None
    length: int
    flags: int
    win: int
    label: Label
    phase: Phase
    analysis: tuple[Analysis, ...]
    client_state: TcpState
    server_state: TcpState
    payload: bytes = b""
    raw_options: bytes = b""
    ip_version: int = 4

    @property
    def rel_end(self) -> int:
        """Relative sequence number just past this segment's payload."""
        return self.rel_seq + self.length

    def to_json(self) -> dict[str, Any]:
        """The ``"type": "segment"`` record of the JSONL schema (parsed from the one
        line writer, ``report.segment_jsonl``: the schema is defined once)."""
        import json

        from handshake_viz.report import segment_jsonl

        return json.loads(segment_jsonl(self))  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a connection: ``str(Endpoint("127.0.0.1", 8080)) == "127.0.0.1:8080"``."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {"ip": self.ip, "port": self.port}


@dataclass(frozen=True, slots=True)
class ConnectionSummary:
    """One TCP connection, summarised the way Zeek's conn.log does.

    ``bytes_c2s``/``bytes_s2c`` count sequence space (as Zeek's orig_bytes), not
    captured payload.  ``roles_guessed`` is true when no SYN was seen and the
    client was chosen by the port heuristic.
    """

    conn: int
    client: Endpoint
    server: Endpoint
    first_ts: float
    last_ts: float
    segments: int
    bytes_c2s: int
    bytes_s2c: int
    conn_state: str
    history: str
    client_state: TcpState
    server_state: TcpState
    roles_guessed: bool = False
    ip_version: int = 4

    @property
    def duration(self) -> float:
        return self.last_ts - self.first_ts

    def to_json(self) -> dict[str, Any]:
        """The ``"type": "connection"`` record of the JSONL schema (from
        ``report.connection_jsonl``, its one definition)."""
        import json

        from handshake_viz.report import connection_jsonl

        return json.loads(connection_jsonl(self))  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ZeekConnection:
    """One connection as Zeek's conn.log would log it.  Zeek's connections are not
    always Wireshark's streams (``conn``, the stream it belongs to): Zeek starts a new
    one on the same ports after a RST or a close, or when it dropped an unanswered
    SYN's connection (see ``handshake_viz.zeek``).  ``orig``/``resp`` are Zeek's
    roles; the byte counts are sequence space (64 bits: they do not wrap)."""

    conn: int
    ts: float
    orig: Endpoint
    resp: Endpoint
    conn_state: str
    history: str
    orig_bytes: int
    resp_bytes: int
    orig_pkts: int
    resp_pkts: int
    missed_bytes: int = 0


@dataclass(frozen=True, slots=True)
class UdpPacket:
    """One UDP datagram as decoded from a capture, before it is put in a flow.

    ``length`` is the UDP payload length from the UDP header (capped by what the IP
    header says was on the wire); ``payload`` holds the bytes actually captured.
    """

    frame: int
    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    length: int
    payload: bytes = b""
    ip_version: int = 4


@dataclass(frozen=True, slots=True)
class Datagram(_TrackedView, UdpPacket):
    """A UDP datagram in its flow: no handshake, no acknowledgement, no close.

    It is the UdpPacket it was decoded as, with two facts the flows add (keyword-only,
    after the packet's own fields): ``flow`` numbers the address pairs in order of first
    appearance (both directions are one flow); ``dir`` is ``c2s`` when the flow's client
    sent it.
    """

    flow: int = field(kw_only=True)
    dir: Direction = field(kw_only=True)

    def to_json(self) -> dict[str, Any]:
        """The ``"type": "datagram"`` record of the JSONL schema (from
        ``report.datagram_jsonl``, its one definition)."""
        import json

        from handshake_viz.report import datagram_jsonl

        return json.loads(datagram_jsonl(self))  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class FlowSummary:
    """One UDP flow: the two endpoints, when, and how much each way.

    The client is whoever sent first, unless only the sender's port looks like a
    server's (a capture that starts with a reply).
    """

    flow: int
    client: Endpoint
    server: Endpoint
    first_ts: float
    last_ts: float
    datagrams: int
    datagrams_c2s: int
    bytes_c2s: int
    bytes_s2c: int
    ip_version: int = 4

    @property
    def duration(self) -> float:
        return self.last_ts - self.first_ts


class CallKind(Word):
    """What a system call does to a socket, whatever its name (``write`` and ``sendto``
    both SEND).  Set once, where a call is parsed or recorded (``Call.kind``)."""

    SOCKET = "socket"
    BIND = "bind"
    LISTEN = "listen"
    CONNECT = "connect"
    ACCEPT = "accept"
    SEND = "send"  # moves bytes out: write, send, sendto, sendmsg, sendfile, splice, …
    RECV = "recv"  # moves bytes in: read, recv, recvfrom, recvmsg, …
    SHUTDOWN = "shutdown"
    CLOSE = "close"
    WAIT = "wait"  # poll, select, epoll_wait: waits for a socket to be ready
    OPTION = "option"  # setsockopt, getsockopt
    QUERY = "query"  # getsockname, getpeername
    OTHER = "other"


#: Every system call hsviz knows by name, and its kind.  The strace runner traces
#: exactly these; the parser, the alignment and the diagram read ``Call.kind``.
SYSCALLS: dict[str, CallKind] = {
    **dict.fromkeys(("socket",), CallKind.SOCKET),
    **dict.fromkeys(("bind",), CallKind.BIND),
    **dict.fromkeys(("listen",), CallKind.LISTEN),
    **dict.fromkeys(("connect",), CallKind.CONNECT),
    **dict.fromkeys(("accept", "accept4"), CallKind.ACCEPT),
    **dict.fromkeys(("write", "writev", "pwrite64", "pwritev", "pwritev2", "send", "sendto", "sendmsg",
                     "sendmmsg", "sendfile", "sendfile64", "splice"), CallKind.SEND),
    **dict.fromkeys(("read", "readv", "pread64", "preadv", "preadv2", "recv", "recvfrom", "recvmsg",
                     "recvmmsg"), CallKind.RECV),
    **dict.fromkeys(("shutdown",), CallKind.SHUTDOWN),
    **dict.fromkeys(("close",), CallKind.CLOSE),
    **dict.fromkeys(("poll", "ppoll", "select", "pselect6", "_newselect", "epoll_wait", "epoll_pwait",
                     "epoll_pwait2"), CallKind.WAIT),
    **dict.fromkeys(("setsockopt", "getsockopt"), CallKind.OPTION),
    **dict.fromkeys(("getsockname", "getpeername"), CallKind.QUERY),
}

#: Calls whose return value counts messages, not bytes (``nbytes`` stays unknown).
COUNTS_MESSAGES = frozenset({"sendmmsg", "recvmmsg"})


def call_kind(name: str) -> CallKind:
    """``call_kind("sendto") is CallKind.SEND``; unknown names are OTHER."""
    return SYSCALLS.get(name, CallKind.OTHER)


def normalize_ip(ip: str) -> str:
    """The one spelling of an address: IPv4-mapped IPv6 (``::ffff:10.0.0.1``) becomes
    IPv4, IPv6 is compressed (RFC 5952), a zone or brackets are dropped; text that is
    no address is returned as it is."""
    return _normalize_ip(ip)


@functools.lru_cache(maxsize=4096)
def _normalize_ip(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip.strip("[]").split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass(frozen=True, slots=True)
class Call:
    """One socket system call, from strace or from a demo program's own log.

    ``start``/``end`` are epoch seconds on the same clock as the capture.
    ``local``/``remote`` are the socket's addresses when known (strace ``-yy``).
    ``conn`` and ``frames`` are filled in by ``align``: the connection the call
    belongs to and the frames of the segments it caused or that released it.
    ``inferred`` marks calls reconstructed from segments, never from a trace.

    Facts the parser or recorder saw, so that no later stage reads ``args``:
    ``kind`` (from ``call`` when not given), ``msg_flags`` (``MSG_FASTOPEN``,
    ``MSG_PEEK`` … of a send or receive), ``how`` (``SHUT_WR`` … of a shutdown) and
    ``sockaddr`` (the address argument: connect's and sendto's destination, bind's
    address, accept's peer).  ``args`` stays as text for people.
    """

    pid: int
    tid: int
    fd: int | None
    call: str
    start: float
    end: float
    ret: int | None
    errno: str | None = None
    args: str = ""
    local: Endpoint | None = None
    remote: Endpoint | None = None
    nbytes: int | None = None  # bytes moved by a read/write-like call
    conn: int | None = None
    frames: tuple[int, ...] = field(default=())
    inferred: bool = False
    kind: CallKind = None  # type: ignore[assignment]  # filled from ``call`` when not given
    msg_flags: tuple[str, ...] = ()
    how: str | None = None
    sockaddr: Endpoint | None = None

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", SYSCALLS.get(self.call, CallKind.OTHER))

    @property
    def failed(self) -> bool:
        return self.errno is not None

    @property
    def sends_fin(self) -> bool:
        """A shutdown that sends a FIN (SHUT_WR, SHUT_RDWR; SHUT_RD sends nothing)."""
        return self.kind is CallKind.SHUTDOWN and self.how != "SHUT_RD"

    @property
    def fast_open(self) -> bool:
        """A send with MSG_FASTOPEN: it connects the socket as it sends (RFC 7413)."""
        return self.kind is CallKind.SEND and "MSG_FASTOPEN" in self.msg_flags

    @property
    def peeks(self) -> bool:
        """A receive with MSG_PEEK: the bytes stay queued for the next read."""
        return self.kind is CallKind.RECV and "MSG_PEEK" in self.msg_flags

    def to_json(self) -> dict[str, Any]:
        """The ``"type": "call"`` record of the JSONL schema."""
        return {
            "type": "call",
            "conn": self.conn,
            "pid": self.pid,
            "tid": self.tid,
            "fd": self.fd,
            "call": self.call,
            "start": self.start,
            "end": self.end,
            "ret": self.ret,
            "errno": self.errno,
            "args": self.args,
            "local": self.local.to_json() if self.local else None,
            "remote": self.remote.to_json() if self.remote else None,
            "nbytes": self.nbytes,
            "inferred": self.inferred,
            "frames": list(self.frames),
        }


_R = TypeVar("_R")


def fast_constructor(cls: type[_R], sample: tuple[Any, ...]) -> Callable[..., _R]:
    """A positional constructor for a frozen, slotted dataclass, about 5x cheaper.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``
    (about 2.6 µs for Packet's 14 fields, 3.7 µs for Segment's 23: more than decoding or
    tracking a typical segment).  The constructor returned here fills an object of a
    helper class with exactly the same slots and then switches its ``__class__``
    (allowed between identical slot layouts): the result is a genuine, frozen ``cls``.
    It is checked once against ``cls(*sample)`` (type, equality, hash); if anything
    differs (a changed field list, another Python implementation) ``cls`` itself is
    returned.  decode builds every Packet and track every Segment through this.
    """
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if tuple(getattr(cls, "__slots__", ())) != names or len(sample) != len(names):
        return cls
    body = "\n".join(f"    self.{n} = {n}" for n in names)
    namespace: dict[str, Any] = {"_cls": cls}
    exec(f"def __init__(self, {', '.join(names)}):\n{body}\n    self.__class__ = _cls\n", namespace)
    builder = type(f"_{cls.__name__}Builder", cls.__bases__, {"__slots__": names, "__init__": namespace["__init__"]})
    try:
        made, ref = builder(*sample), cls(*sample)
        if type(made) is not cls or made != ref or hash(made) != hash(ref):
            return cls
    except (TypeError, AttributeError):  # pragma: no cover - other interpreters
        return cls
    return builder


def field_picker(cls: type, *groups: tuple[str, ...]) -> Callable[..., tuple[Any, ...]]:
    """A function shaped like ``cls``'s constructor that returns some of its fields,
    chosen by name: with one group, the tuple of those fields; with several, a tuple
    of such tuples.  ``field_picker(Segment, ("conn", "dir"))(*fields)`` is
    ``(conn, dir)``.

    For callbacks that are handed a record's fields positionally (``Tracker(record=…)``,
    ``CaptureReader.records(…)``) and keep a few of them: the function is generated,
    so it costs what writing it out would (a NamedTuple of the same fields costs
    twice as much to build, and pickles eighteen times slower), and the field list
    stays ``cls``'s own instead of a copy that could drift.  Unknown names raise
    ValueError at once.
    """
    params = fields(cls)
    names = {f.name for f in params}
    for group in groups:
        unknown = [n for n in group if n not in names]
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}")
    namespace: dict[str, Any] = {}
    signature = []
    for f in params:
        if f.default is not MISSING:
            namespace[f"_default_{f.name}"] = f.default
            signature.append(f"{f.name}=_default_{f.name}")
        else:
            signature.append(f.name)

    def spell(group: tuple[str, ...]) -> str:
        return f"({', '.join(group)}{',' if len(group) == 1 else ''})"

    result = spell(groups[0]) if len(groups) == 1 else spell(tuple(map(spell, groups)))
    name = f"pick_{cls.__name__.lower()}_fields"
    exec(f"def {name}({', '.join(signature)}):\n    return {result}\n", namespace)
    picker: Callable[..., tuple[Any, ...]] = namespace[name]
    picker.__qualname__ = name
    picker.__doc__ = f"{cls.__name__}'s fields in, {' + '.join(map(spell, groups))} out."
    return picker


# Packet's constructor, five times cheaper (decode builds every Packet through it; the
# tracker, those its fast path needs after all).
make_packet: Callable[..., Packet] = fast_constructor(
    Packet, (7, 1.5, "10.0.0.1", 1, "::1", 2, 3, 4, 0x12, 5, 6, b"x", b"\x01", 6, 9)
)
