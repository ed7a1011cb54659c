"""The TCP state machine: Packet records in, labelled Segment records out.

Theory of operation
===================

The tracker watches a capture from the outside, the way a person reading a
packet trace does.  It never sends anything and it never refuses a segment: a
segment the RFC would drop is still labelled, and the states only move when the
capture shows evidence for the move.  No files, sockets or clocks are touched
here (sans-IO): ``Tracker.feed(packet)`` returns a ``Segment`` and that is all.

Per segment it decides five things, each in its own section below:

1. **Which connection.**  Segments are grouped by their 4-tuple.  As in
   Wireshark's ``tcp.stream``, a SYN (without ACK) whose sequence number differs
   from the one that opened the current connection on that 4-tuple starts a new
   connection (port reuse); a SYN with the same number is a retransmission.

2. **Who is the client.**  Whoever sent the SYN.  If the first segment is a
   SYN-ACK, its receiver is the client.  With neither (a capture that starts
   mid-stream) the server is guessed from the ports, as Wireshark and Zeek do:
   a well-known port (< 1024, or a common service port) is the server, else the
   lower port; ``ConnectionSummary.roles_guessed`` says so.

3. **Relative numbers**, exactly as Wireshark: the SYN is 0 and the first data
   byte 1; with no SYN seen the first segment's sequence number counts as 1; the
   reverse direction's base is taken from the first ACK (``ack - 1``).  All
   arithmetic is modulo 2**32 (RFC 9293 §3.4), so wraparound is harmless.

4. **Label, phase and RFC 9293 states.**  See ``_SEND`` and ``_RECV``: two
   transition tables, h11-style, indexed by the current state and an event that
   the segment represents for its sender and for its receiver.  The capture point
   is treated as both the send and the arrival instant (true on loopback).  Each
   segment is processed as its sender's events first, then its receiver's, and
   within a side ACK before FIN before RST (RFC 9293 §3.10.7.4 processes the ACK
   field before the FIN bit).

5. **Analysis flags**, following Wireshark's TCP sequence analysis so that
   ``hsviz`` and ``tshark`` agree on the same capture (see ``_analyze``).

Zeek's view (conn_state and history, with its own originator/responder roles
that it may flip, marked ``^``) is kept alongside by ``zeek.ZeekView`` so the summary
can be compared with Zeek's conn.log letter for letter.

Speed: most segments of a capture are in-order data or ACKs of a connection in
full swing, for which all of the above flags nothing and moves no state.
``Tracker._steady`` recognises exactly those and makes the few updates they need;
everything else goes through ``Tracker._feed``, the general path, which is the
reference (tests/test_track_fastpath.py runs both ways and compares).
"""

from __future__ import annotations

import enum
import marshal
from collections import deque
from dataclasses import dataclass, field, fields
from operator import attrgetter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar, overload

from handshake_viz.model import (
    Analysis,
    ConnectionSummary,
    Direction,
    Endpoint,
    Label,
    Packet,
    Phase,
    Segment,
    TcpState,
    fast_constructor,
    make_packet as _make_packet,
    parse_options,
)
from handshake_viz.seqnum import ACK, FIN, HALF, MASK, RST, SYN
from handshake_viz.seqnum import members as _members
from handshake_viz.seqnum import seq_ge as _seq_ge
from handshake_viz.seqnum import seq_gt as _seq_gt
from handshake_viz.seqnum import seq_lt as _seq_lt
from handshake_viz.zeek import EndpointState as _Z
from handshake_viz.zeek import Z
from handshake_viz.zeek import ZeekEndpoint as _ZEnd
from handshake_viz.zeek import ZeekView as _ZeekView

__all__ = ["LIKELY_SERVER_PORTS", "ConnectionStore", "Tracker", "discard", "track"]

C2S, S2C = Direction.C2S, Direction.S2C

# Ports that Zeek (with its default analyzers loaded) registers as a server's; used to
# reproduce Zeek's role flips, and (with every port below 1024) to guess roles when no
# SYN was captured.
LIKELY_SERVER_PORTS: frozenset[int] = frozenset(
    {21, 22, 23, 25, 53, 69, 80, 81, 88, 102, 110, 123, 135, 137, 138, 139, 143, 161, 162, 389,
     443, 445, 465, 502, 514, 563, 587, 631, 636, 853, 989, 990, 992, 993, 995, 1080, 1194, 1433, 1521, 1883, 2049, 2181, 2375, 3128, 3306, 3389, 4222, 5060, 5061, 5222,
     5353, 5432, 5672, 5900, 6379, 6443, 6666, 6667, 6668, 6669, 8000, 8008, 8080, 8081, 8443,
     8888, 9000, 9092, 9200, 11211, 27017}
)


L = _members(Label)
P = _members(Phase)


# --------------------------------------------------------------------------------------
# RFC 9293 states: the transition tables
# --------------------------------------------------------------------------------------


class Event(str, enum.Enum):
    """What a segment means to one side, as sender or receiver.

    A ``str`` enum so that the transition tables hash it in C (a plain Enum's
    ``__hash__`` is a Python function).
    """

    SYN = "SYN"  # a SYN without ACK
    SYN_ACK = "SYN-ACK"
    ACK_OF_SYN = "ACK of SYN"  # acknowledges this side's SYN
    ACK_OF_FIN = "ACK of FIN"  # acknowledges this side's FIN
    ACKS_PEER_SYN = "acks the peer's SYN"  # as sender: proof it got the SYN-ACK
    FIN = "FIN"
    RST = "RST"


S = _members(TcpState)
E = _members(Event)
# _SEND[state][event]: the sender's new state when it sends the event (RFC 9293 §3.3.2
# figure 5: the "snd" arcs; and §3.10.4 CLOSE in each state).
_SEND: dict[TcpState, dict[Event, TcpState]] = {
    S.CLOSED: {Event.SYN: S.SYN_SENT, Event.SYN_ACK: S.SYN_RECEIVED, Event.RST: S.CLOSED},
    S.LISTEN: {Event.SYN: S.SYN_SENT, Event.SYN_ACK: S.SYN_RECEIVED, Event.RST: S.CLOSED},
    # Sending an ACK of the peer's SYN from SYN-SENT shows the SYN-ACK arrived, even when
    # the capture saw the SYN-ACK first (a reordered handshake).
    S.SYN_SENT: {Event.SYN_ACK: S.SYN_RECEIVED, Event.ACKS_PEER_SYN: S.ESTABLISHED,
                 Event.FIN: S.FIN_WAIT_1, Event.RST: S.CLOSED},
    S.SYN_RECEIVED: {Event.FIN: S.FIN_WAIT_1, Event.RST: S.CLOSED},
    S.ESTABLISHED: {Event.FIN: S.FIN_WAIT_1, Event.RST: S.CLOSED},
    S.CLOSE_WAIT: {Event.FIN: S.LAST_ACK, Event.RST: S.CLOSED},
    S.FIN_WAIT_1: {Event.RST: S.CLOSED},
    S.FIN_WAIT_2: {Event.RST: S.CLOSED},
    S.CLOSING: {Event.RST: S.CLOSED},
    S.LAST_ACK: {Event.RST: S.CLOSED},
    S.TIME_WAIT: {Event.RST: S.CLOSED},
}
# _RECV[state][event]: the receiver's new state when the event arrives (RFC 9293 §3.10.7).
_RECV: dict[TcpState, dict[Event, TcpState]] = {
    S.LISTEN: {},  # §3.10.7.2: a SYN is answered (SYN-ACK) before the state shows it
    S.CLOSED: {},
    # §3.10.7.3: SYN-SENT + SYN,ACK acking our SYN -> ESTABLISHED; + SYN -> SYN-RECEIVED
    S.SYN_SENT: {Event.SYN: S.SYN_RECEIVED, Event.ACK_OF_SYN: S.ESTABLISHED, Event.RST: S.CLOSED},
    # §3.10.7.4 fifth check: an acceptable ACK in SYN-RECEIVED -> ESTABLISHED
    S.SYN_RECEIVED: {Event.ACK_OF_SYN: S.ESTABLISHED, Event.FIN: S.CLOSE_WAIT, Event.RST: S.CLOSED},
    S.ESTABLISHED: {Event.FIN: S.CLOSE_WAIT, Event.RST: S.CLOSED},
    S.FIN_WAIT_1: {Event.ACK_OF_FIN: S.FIN_WAIT_2, Event.FIN: S.CLOSING, Event.RST: S.CLOSED},
    S.FIN_WAIT_2: {Event.FIN: S.TIME_WAIT, Event.RST: S.CLOSED},
    S.CLOSE_WAIT: {Event.RST: S.CLOSED},
    S.CLOSING: {Event.ACK_OF_FIN: S.TIME_WAIT, Event.RST: S.CLOSED},
    S.LAST_ACK: {Event.ACK_OF_FIN: S.CLOSED, Event.RST: S.CLOSED},
    S.TIME_WAIT: {Event.RST: S.CLOSED},
}


def _next(table: dict[TcpState, dict[Event, TcpState]], state: TcpState, event: Event) -> TcpState:
    """A move the table does not list leaves the state alone: a passive observer sees
    retransmissions and stray segments that change nothing."""
    return table[state].get(event, state)


# --------------------------------------------------------------------------------------
# Per-direction bookkeeping (Wireshark's tcp_flow_t, pared down to what is used)
# --------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Flow:
    """What one direction of one connection has shown so far.

    A flow belongs to the endpoint that sends in its direction: ``state`` is that
    endpoint's RFC 9293 state and ``zeek`` its Zeek endpoint record.  ``peer`` is the
    other direction of the same connection, so the hot path reaches everything it
    needs from the flow it looked up, without enum-keyed dictionaries.
    """

    dir: Direction = Direction.C2S
    state: TcpState = TcpState.CLOSED
    conn: _Conn = field(default=None, repr=False)  # type: ignore[assignment]
    peer: _Flow = field(default=None, repr=False)  # type: ignore[assignment]
    zeek: _ZEnd = field(default=None, repr=False)  # type: ignore[assignment]
    base: int | None = None  # ISN (seq of SYN) or first seq - 1
    syn_seq: int | None = None  # raw seq of the SYN sent this way
    fin_end: int | None = None  # raw seq just past the FIN sent this way
    fin_acked: bool = False
    syn_acked: bool = False
    highest_ack: int | None = None  # highest ack number sent this way
    data_end: int = 0  # highest relative end of payload (sequence space, excl. SYN/FIN)
    # Wireshark sequence analysis (tcp_analyze_seq_info + flow fields)
    nextseq: int = 0
    nextseq_time: float = 0.0
    maxseqtobeacked: int = 0
    lastack: int = 0
    lastack_time: float = 0.0
    dupacks: int = 0
    window: int | None = None
    win_scale: int = -1  # -1 unknown, else the shift to apply
    last_flags: int = 0  # analysis bits of the last segment this way
    # The conditions of Tracker._steady that only the general path can change, as of
    # the last segment it took either way (see _ready).
    ready: bool = False


def _ready(fwd: _Flow, rev: _Flow) -> bool:
    """Whether ``fwd`` may take the fast path as far as the general path decides it:
    this side has acked before (so "acks new bytes" compares with its own last ACK),
    no FIN either way yet (no ACK of a FIN, phase stays "data"), the peer's SYN, if
    seen, is acknowledged (no handshake step), the first RTT is known (else this could
    be the handshake's ACK, which sets it), and both Zeek endpoints are initialised and
    this one is active.  Only ``Tracker._feed`` changes any of these (``_steady``
    moves ``highest_ack``, but never back to None)."""
    conn = fwd.conn
    return (
        fwd.highest_ack is not None
        and fwd.fin_end is None
        and rev.fin_end is None
        and (rev.syn_seq is None or rev.syn_acked)
        and not (conn.first_rtt is None and conn.syn_time is not None)
        and fwd.zeek.state is not Z.INACTIVE
        and fwd.zeek.start_seq is not None
        and rev.zeek.start_seq is not None
    )


# Analysis bits, internal (order of the output list follows Wireshark's expert info).
_A_RETRANS = 1 << 0
_A_FAST = 1 << 1
_A_SPURIOUS = 1 << 2
_A_OOO = 1 << 3
_A_DUPACK = 1 << 4
_A_LOST = 1 << 5
_A_ACK_LOST = 1 << 6
_A_ZWIN = 1 << 7
_A_ZWP = 1 << 8
_A_WUPD = 1 << 9
_A_WFULL = 1 << 10
_A_KA = 1 << 11
_A_KA_ACK = 1 << 12
_A_ZWP_ACK = 1 << 13

_BIT_NAMES: tuple[tuple[int, tuple[Analysis, ...]], ...] = (
    (_A_RETRANS, (Analysis.RETRANSMISSION,)),
    # Wireshark reports a fast or spurious retransmission as a retransmission too.
    (_A_FAST, (Analysis.RETRANSMISSION, Analysis.FAST_RETRANSMISSION)),
    (_A_SPURIOUS, (Analysis.RETRANSMISSION, Analysis.SPURIOUS_RETRANSMISSION)),
    (_A_OOO, (Analysis.OUT_OF_ORDER,)),
    (_A_DUPACK, (Analysis.DUP_ACK,)),
    (_A_LOST, (Analysis.LOST_SEGMENT,)),
    (_A_ACK_LOST, (Analysis.ACK_UNSEEN,)),
    (_A_ZWIN, (Analysis.ZERO_WINDOW,)),
    (_A_ZWP, (Analysis.ZERO_WINDOW_PROBE,)),
    (_A_WUPD, (Analysis.WINDOW_UPDATE,)),
    (_A_WFULL, (Analysis.WINDOW_FULL,)),
    (_A_KA, (Analysis.KEEP_ALIVE,)),
    (_A_KA_ACK, (Analysis.KEEP_ALIVE_ACK,)),
)
_ANALYSIS_CACHE: dict[int, tuple[Analysis, ...]] = {0: ()}


def _analysis_tuple(bits: int) -> tuple[Analysis, ...]:
    try:
        return _ANALYSIS_CACHE[bits]
    except KeyError:
        out: list[Analysis] = []
        for bit, names in _BIT_NAMES:
            if bits & bit:
                out.extend(n for n in names if n not in out)
        result = tuple(out)
        _ANALYSIS_CACHE[bits] = result
        return result


# --------------------------------------------------------------------------------------
# One connection
# --------------------------------------------------------------------------------------


class _Conn:
    __slots__ = (
        "index", "client", "server", "roles_guessed", "c2s", "s2c", "first_ts", "last_ts",
        "segments", "zeek", "syn_time", "first_rtt", "ip_version", "closed", "handshake_acked",
        "queued",
    )

    def __init__(self, index: int, p: Packet, likely: frozenset[int]) -> None:
        self.index = index
        flags = p.flags
        a, b = (p.src, p.sport), (p.dst, p.dport)
        guessed = False
        if flags & SYN and not flags & ACK:
            client_is_src = True
        elif flags & SYN:
            client_is_src = False
        else:
            guessed = True
            client_is_src = not _looks_like_server(p.sport, p.dport, likely)
        self.client, self.server = (a, b) if client_is_src else (b, a)
        self.roles_guessed = guessed
        if guessed:
            # Mid-stream: both sides were already talking (RFC 9293 states unknown before).
            client_state, server_state = S.ESTABLISHED, S.ESTABLISHED
        elif not client_is_src:
            # The capture starts at the SYN-ACK: the client's SYN went out uncaptured.
            client_state, server_state = S.SYN_SENT, S.LISTEN
        else:
            client_state, server_state = S.CLOSED, S.LISTEN
        self.first_ts = p.ts
        self.last_ts = p.ts
        self.segments = 0
        self.zeek = zeek = _ZeekView(p, client_is_src, likely)
        self.c2s = c2s = _Flow(C2S, client_state, self, zeek=zeek.ends[True])
        self.s2c = s2c = _Flow(S2C, server_state, self, c2s, zeek.ends[False])
        c2s.peer = s2c
        self.syn_time: float | None = None
        self.first_rtt: float | None = None
        self.ip_version = p.ip_version
        self.closed = False  # a FIN was acked both ways, or a RST was seen
        self.handshake_acked = False
        self.queued = False  # in the tracker's queue of finished connections

    def summary(self) -> ConnectionSummary:
        return _summary(self.summary_fields())

    def summary_fields(self) -> _SummaryFields:
        """The summary as plain values (what ``_pack`` stores, and ``_summary`` makes
        a ConnectionSummary of)."""
        c2s, s2c = self.c2s, self.s2c
        zeek = self.zeek
        b_c2s, b_s2c = c2s.data_end, s2c.data_end
        if zeek.orig_is_client:
            conn_state = zeek.conn_state(b_c2s, b_s2c)
        else:
            conn_state = zeek.conn_state(b_s2c, b_c2s)
        (cip, cport), (sip, sport) = self.client, self.server
        return (self.index, cip, cport, sip, sport, self.first_ts, self.last_ts, self.segments,
                b_c2s, b_s2c, conn_state, zeek.history, c2s.state.value, s2c.state.value,
                self.roles_guessed, self.ip_version)


# conn, client ip, port, server ip, port, first_ts, last_ts, segments, bytes_c2s,
# bytes_s2c, conn_state, history, client_state, server_state, roles_guessed, ip_version
_SummaryFields = tuple[int, str, int, str, int, float, float, int, int, int, str, str, str, str,
                       bool, int]


def _summary(f: _SummaryFields) -> ConnectionSummary:
    return ConnectionSummary(
        f[0], Endpoint(f[1], f[2]), Endpoint(f[3], f[4]), f[5], f[6], f[7], f[8], f[9], f[10],
        f[11], TcpState(f[12]), TcpState(f[13]), f[14], f[15],
    )


def _looks_like_server(sport: int, dport: int, likely: frozenset[int]) -> bool:
    """True if ``sport`` looks like the server's port (mid-stream role guess)."""
    s_known = sport < 1024 or sport in likely
    d_known = dport < 1024 or dport in likely
    if s_known != d_known:
        return s_known
    return sport < dport


# --------------------------------------------------------------------------------------
# Finished connections, packed (Tracker(store=...))
# --------------------------------------------------------------------------------------


class ConnectionStore(Protocol):
    """Where a Tracker puts finished connections it no longer keeps in memory.

    ``key`` names the connection's 4-tuple in either direction (both directions give
    the same key); ``state`` is opaque bytes.  ``find`` returns the newest connection
    stored under ``key``: with port reuse, several are.  ``put`` for a connection
    already stored replaces it.  ``spill.SqliteStore`` keeps them in a temporary file;
    ``spill.MemoryStore`` in a dict.
    """

    def put(self, conn: int, key: str, state: bytes) -> None: ...

    def get(self, conn: int) -> bytes | None: ...

    def find(self, key: str) -> tuple[int, bytes] | None: ...


def _store_key(a: tuple[str, int], b: tuple[str, int]) -> str:
    """The same text for a 4-tuple in both directions."""
    if b < a:
        a, b = b, a
    return f"{a[0]} {a[1]} {b[0]} {b[1]}"


_FLOW_SCALARS = tuple(f.name for f in fields(_Flow))[5:]  # after dir, state, conn, peer, zeek
_ZEND_SCALARS = tuple(f.name for f in fields(_ZEnd))[2:]  # after state, prev_state
_CONN_SCALARS = ("index", "client", "server", "roles_guessed", "first_ts", "last_ts", "segments",
                 "syn_time", "first_rtt", "ip_version", "closed", "handshake_acked")
_flow_scalars = attrgetter(*_FLOW_SCALARS)
_zend_scalars = attrgetter(*_ZEND_SCALARS)
_conn_scalars = attrgetter(*_CONN_SCALARS)


def _pack(conn: _Conn) -> bytes:
    """Everything the tracker knows of ``conn``, and its summary, as marshal bytes (about
    500 bytes, against about 2 KB as objects); ``_unpack`` gives it back exactly."""
    z = conn.zeek
    flows = tuple((f.state.value, *_flow_scalars(f)) for f in (conn.c2s, conn.s2c))
    ends = tuple((int(e.state), int(e.prev_state), *_zend_scalars(e)) for e in z.ends)
    state = (*_conn_scalars(conn), flows, z.orig_is_client, z.history, ends)
    return marshal.dumps((state, conn.summary_fields()))


def _unpack(blob: bytes) -> _Conn:
    state, _ = marshal.loads(blob)
    conn = _Conn.__new__(_Conn)
    n = len(_CONN_SCALARS)
    for name, value in zip(_CONN_SCALARS, state[:n]):
        setattr(conn, name, value)
    flows, orig_is_client, history, ends = state[n:]
    z = _ZeekView.__new__(_ZeekView)
    z.orig_is_client, z.history = orig_is_client, history
    z.ends = tuple(_ZEnd(_Z(e[0]), _Z(e[1]), *e[2:]) for e in ends)  # type: ignore[assignment]
    conn.zeek = z
    conn.c2s, conn.s2c = (
        _Flow(d, TcpState(f[0]), conn, None, z.ends[d is C2S], *f[1:])  # type: ignore[arg-type]
        for d, f in zip((C2S, S2C), flows)
    )
    conn.c2s.peer, conn.s2c.peer = conn.s2c, conn.c2s
    conn.queued = False
    return conn


def _unpack_summary(blob: bytes) -> ConnectionSummary:
    return _summary(marshal.loads(blob)[1])


# Every Segment is built through model.fast_constructor (a frozen dataclass's own
# __init__ costs more than tracking a typical segment).
_make_segment = fast_constructor(Segment, (
    7, 1.5, 2, Direction.S2C, "10.0.0.1", 1, "::1", 2, 3, 4, 5, None, 6, 0x12, 8, L.SYN_ACK,
    P.HANDSHAKE, (Analysis.DUP_ACK,), S.SYN_SENT, S.LISTEN, b"x", b"\x01", 6))




def discard(*fields: object) -> bool:
    """A ``record`` that keeps nothing, for a tracker fed only for its summaries
    (``feed_all``, ``hsviz analyze --summary``): not None, which would mean "not
    taken" to ``_steady``'s caller."""
    return True


# --------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------


R = TypeVar("R")


class Tracker(Generic[R]):
    """Feed it Packets in capture order; it returns one Segment per Packet.

    >>> tracker = Tracker()
    >>> segments = [tracker.feed(p) for p in packets]      # doctest: +SKIP
    >>> tracker.summaries()[0].conn_state                  # doctest: +SKIP
    'SF'

    Memory grows with the number of connections, never with the number of segments.
    With a ``store``, only with the open ones: once more than ``keep_finished``
    connections have finished (both FINs acknowledged, or reset), the oldest go to the
    store, packed, and come back whole if a late segment of theirs turns up, so the
    labels and numbers stay those of a tracker that kept everything.
    ``likely_server_ports`` are the ports Zeek's role guess treats as a server's
    (besides every port below 1024); pass an empty set to mimic ``zeek -b``.

    ``record`` is what ``feed`` builds from a segment's fields, called with
    Segment's fields in order (default: Segment itself).  ``hsviz analyze --jsonl``
    passes ``report.segment_row``, a plain tuple: cheaper to build and to pickle
    than a record it would only take apart again.
    """

    @overload
    def __init__(
        self: Tracker[Segment], *, likely_server_ports: Iterable[int] = ...,
        store: ConnectionStore | None = ..., keep_finished: int = ...,
    ) -> None: ...

    @overload
    def __init__(
        self: Tracker[R], *, likely_server_ports: Iterable[int] = ..., record: Callable[..., R],
        store: ConnectionStore | None = ..., keep_finished: int = ...,
    ) -> None: ...

    def __init__(
        self,
        *,
        likely_server_ports: Iterable[int] = LIKELY_SERVER_PORTS,
        record: Callable[..., Any] | None = None,
        store: ConnectionStore | None = None,
        keep_finished: int = 4096,
    ) -> None:
        self._likely = frozenset(likely_server_ports)
        self._make: Callable[..., Any] = _make_segment if record is None else record
        # (src, sport, dst, dport) as the packet has them -> the flow in that direction;
        # both directions of a connection are entered.
        self._flows: dict[tuple[str, int, str, int], _Flow] = {}
        self._conns: dict[int, _Conn] = {}  # by number: all of them, or (with a store) those in memory
        self._count = 0
        self._store = store
        self._keep = max(1, keep_finished)
        self._finished: deque[_Conn] = deque()  # finished connections in memory, oldest first
        self._stored = False  # anything put in the store yet

    # -- public ---------------------------------------------------------------------

    def feed(self, p: Packet) -> R:
        """Label one packet; the returned Segment's states are those *after* it."""
        return self.feed_fields(
            p.frame, p.ts, p.src, p.sport, p.dst, p.dport, p.seq, p.ack, p.flags, p.win,
            p.length, p.payload, p.raw_options, p.ip_version,
        )  # fmt: skip

    def feed_fields(
        self, frame: int, ts: float, src: str, sport: int, dst: str, dport: int, seq: int,
        ack: int, flags: int, win: int, length: int, payload: bytes = b"",
        raw_options: bytes = b"", ip_version: int = 4,
    ) -> R:
        """``feed`` for a packet given as Packet's fields, in order.

        ``reader.records(tracker.feed_fields)`` decodes and tracks with no Packet
        built for the segments the fast path takes (most of them): a Packet's
        construction and the reads of its fields cost a sixth of tracking.
        """
        fwd = self._flows.get((src, sport, dst, dport))
        if fwd is None and self._stored:
            fwd = self._restore(src, sport, dst, dport)
        if fwd is not None and flags & (SYN | FIN | RST | ACK) == ACK:
            seg = self._steady(fwd, frame, ts, src, sport, dst, dport, seq, ack, flags, win,
                               length, payload, raw_options, ip_version)
            if seg is not None:
                return seg
        p = _make_packet(frame, ts, src, sport, dst, dport, seq, ack, flags, win, length,
                         payload, raw_options, ip_version)
        if fwd is None or (flags & (SYN | ACK) == SYN and fwd.base is not None and seq != fwd.base):
            # a new 4-tuple, or port reuse: a SYN with a new ISN starts a new connection
            # (tcp.stream)
            fwd = self._open(p)
        return self._feed(fwd, p)

    def feed_all(self, packets: Iterable[Packet]) -> int:
        """Feed every packet for the summaries' sake only; returns how many were fed.

        The same as calling ``feed`` on each, except that no Segment is built (the
        records ``hsviz analyze --summary`` would throw away cost a tenth of the time).
        """
        make, self._make = self._make, discard
        n = 0
        try:
            feed = self.feed_fields
            for p in packets:
                feed(p.frame, p.ts, p.src, p.sport, p.dst, p.dport, p.seq, p.ack, p.flags, p.win,
                     p.length, p.payload, p.raw_options, p.ip_version)
                n += 1
        finally:
            self._make = make
        return n

    def summaries(self) -> list[ConnectionSummary]:
        """One summary per connection so far, in connection-number order."""
        return [self.summary(i) for i in range(self._count)]

    def summary(self, conn: int) -> ConnectionSummary:
        c = self._conns.get(conn)
        if c is not None:
            return c.summary()
        blob = self._store.get(conn) if self._store is not None and 0 <= conn < self._count else None
        if blob is None:
            raise IndexError(f"no connection {conn} (of {self._count})")
        return _unpack_summary(blob)

    @property
    def connection_count(self) -> int:
        return self._count

    @property
    def connections_in_memory(self) -> int:
        return len(self._conns)

    def is_finished(self, conn: int) -> bool:
        """True once the connection was reset, or both FINs were acknowledged."""
        c = self._conns.get(conn)
        if c is not None:
            return c.closed
        if 0 <= conn < self._count:
            return True  # only finished connections are stored
        raise IndexError(f"no connection {conn} (of {self._count})")

    # -- internals -------------------------------------------------------------------

    def _open(self, p: Packet) -> _Flow:
        """Start the next connection number; return the packet's flow."""
        conn = _Conn(self._count, p, self._likely)
        self._count += 1
        self._conns[conn.index] = conn
        self._enter(conn)
        return conn.c2s if (p.src, p.sport) == conn.client else conn.s2c

    def _enter(self, conn: _Conn) -> None:
        (cip, cport), (sip, sport) = conn.client, conn.server
        # s2c first: when both ends are the same address and port, the one key is c2s's.
        self._flows[(sip, sport, cip, cport)] = conn.s2c
        self._flows[(cip, cport, sip, sport)] = conn.c2s

    def _finished_now(self, conn: _Conn) -> None:
        """Queue a connection that just finished; store the oldest beyond ``keep_finished``."""
        conn.queued = True
        queue = self._finished
        queue.append(conn)
        store = self._store
        if store is None:
            return
        flows = self._flows
        while len(queue) > self._keep:
            old = queue.popleft()
            (cip, cport), (sip, sport) = old.client, old.server
            for key, flow in (((cip, cport, sip, sport), old.c2s), ((sip, sport, cip, cport), old.s2c)):
                if flows.get(key) is flow:  # not if a newer connection took the 4-tuple over
                    del flows[key]
            store.put(old.index, _store_key(old.client, old.server), _pack(old))
            del self._conns[old.index]
            self._stored = True
            # A connection and its flows refer to each other: break the cycle, so that
            # they are freed now even with the cyclic collector off (as analyze runs).
            old.c2s.conn = old.s2c.conn = old.c2s.peer = old.s2c.peer = None  # type: ignore[assignment]

    def _restore(self, src: str, sport: int, dst: str, dport: int) -> _Flow | None:
        """The packet's flow from the store (a late segment of a finished connection, or
        a SYN reusing its ports), or None for a 4-tuple never seen."""
        found = self._store.find(_store_key((src, sport), (dst, dport)))  # type: ignore[union-attr]
        if found is None:
            return None
        index, blob = found
        conn = self._conns.get(index)
        if conn is None:
            conn = _unpack(blob)
            self._conns[index] = conn
            self._finished_now(conn)  # it is finished: queued again, as the newest
        self._enter(conn)
        return self._flows.get((src, sport, dst, dport))

    def _feed(self, fwd: _Flow, p: Packet) -> R:
        """The general path: every rule, for any segment."""
        flags, seq, ack, length, ts = p.flags, p.seq, p.ack, p.length, p.ts
        conn, rev = fwd.conn, fwd.peer
        conn.segments += 1
        conn.last_ts = ts

        # ---- relative numbers (Wireshark's base_seq rules) --------------------------
        if fwd.base is None:
            fwd.base = seq if flags & SYN else (seq - 1) & MASK
        if rev.base is None and flags & ACK:
            rev.base = (ack - 1) & MASK
        rel_seq = (seq - fwd.base) & MASK
        rel_ack = (ack - rev.base) & MASK if flags & ACK and rev.base is not None else None

        # ---- first RTT (SYN to the handshake's ACK), used for out-of-order ----------
        if flags & SYN and not flags & ACK:
            conn.syn_time = ts
        elif flags & (SYN | ACK) == ACK and conn.first_rtt is None and conn.syn_time is not None:
            conn.first_rtt = ts - conn.syn_time

        # ---- window scaling (RFC 7323 §2.2: only if both SYNs carry the option) -----
        if flags & SYN:
            ws = parse_options(p.raw_options).wscale_effective if p.raw_options else None
            if flags & ACK:
                if ws is None or rev.win_scale < 0:
                    fwd.win_scale = rev.win_scale = 0 if ws is None or rev.win_scale == -2 else fwd.win_scale
                else:
                    fwd.win_scale = ws
            else:
                fwd.win_scale = ws if ws is not None else -2  # -2: offered no scaling
        window = p.win if flags & SYN else p.win << max(fwd.win_scale, 0)

        bits = self._analyze(conn, fwd, rev, p, window)

        # ---- label, phase and RFC 9293 states ---------------------------------------
        label, phase = self._label_and_states(conn, fwd, rev, p)

        # ---- byte counts in sequence space (Zeek's orig_bytes) ----------------------
        if length:
            data_rel_end = (rel_seq + length + (1 if flags & SYN else 0) - 1) & MASK
            if data_rel_end < HALF and data_rel_end > fwd.data_end:
                fwd.data_end = data_rel_end

        conn.zeek.feed(p, fwd.dir is C2S)
        fwd.ready = _ready(fwd, rev)
        rev.ready = _ready(rev, fwd)
        if conn.closed and not conn.queued:
            self._finished_now(conn)

        return self._make(  # type: ignore[no-any-return]
            p.frame, ts, conn.index, fwd.dir, p.src, p.sport, p.dst, p.dport, seq, ack, rel_seq,
            rel_ack, length, flags, p.win, label, phase, _analysis_tuple(bits),
            conn.c2s.state, conn.s2c.state, p.payload, p.raw_options, p.ip_version,
        )

    def _steady(
        self, fwd: _Flow, frame: int, ts: float, src: str, sport: int, dst: str, dport: int,
        seq: int, ack: int, flags: int, win: int, length: int, payload: bytes,
        raw_options: bytes, ip_version: int,
    ) -> R | None:
        """The fast path: an in-order ACK or data segment of a connection in full swing.

        Most of a capture is such segments, and for them ``_feed`` would flag nothing,
        change no RFC 9293 state, write no Zeek history letter and only move a few
        counters.  This method tests exactly the conditions under which that is so
        (the caller has checked: ACK set; SYN, FIN and RST clear) and, if they hold,
        makes the same updates ``_feed`` would and returns the Segment.  Otherwise it returns None having changed nothing, and ``_feed``
        takes the segment.

        Invariants it relies on: ``fwd.nextseq`` is non-zero only after ``_feed`` saw a
        segment this way (which set ``fwd.base``); ``fwd.highest_ack`` is set only by an
        ACK sent this way (which set ``rev.base``); a Zeek endpoint past INACTIVE has its
        ``start_seq``, ``last_seq`` and ``contig``.
        """
        nextseq = fwd.nextseq
        rev = fwd.peer
        # In order (not LOST, not a retransmission, out-of-order or keep-alive); neither
        # window zero (not ZERO WINDOW, not a ZERO WINDOW PROBE, no Zeek 'W'); and what
        # only the general path decides (_ready).
        if seq != nextseq or not nextseq or not win or not rev.window or not fwd.ready:
            return None
        highest_ack: int = fwd.highest_ack  # type: ignore[assignment]
        conn = fwd.conn
        lastack = fwd.lastack
        if length:
            end = (seq + length) & MASK
            rev_lastack = rev.lastack
            # not SPURIOUS (data already acknowledged), not WINDOW FULL
            if rev_lastack and ((rev_lastack - end) & MASK) < HALF:
                return None
            if rev.win_scale != -1 and end == (rev_lastack + rev.window) & MASK:
                return None
        elif ack == lastack:
            return None  # a DUP ACK, WINDOW UPDATE or keep-alive ACK candidate
        else:
            end = seq
        # not ACKED UNSEEN
        rev_max = rev.maxseqtobeacked
        if rev_max and 0 < ((ack - rev_max) & MASK) < HALF:
            return None
        # Zeek: both endpoints initialised, this one active, no retransmission ('T'), no
        # content gap ('G').
        zend, zpeer = fwd.zeek, rev.zeek
        zstate = zend.state
        last_seq: int = zend.last_seq  # type: ignore[assignment]
        zadvance = zstate is not Z.RESET and 0 < ((end - last_seq) & MASK) < HALF
        if length and not zadvance and zstate is not Z.RESET:
            return None
        peer_contig = zpeer.contig
        if peer_contig is not None and 0 < ((ack - peer_contig) & MASK) < HALF:
            return None

        # ---- all clear: the updates _feed would make ----------------------------------
        conn.segments += 1
        conn.last_ts = ts
        base = fwd.base
        rel_seq = (seq - base) & MASK  # type: ignore[operator]
        rel_ack = (ack - rev.base) & MASK  # type: ignore[operator]
        # sequence analysis: nothing flagged
        if ack != lastack:
            fwd.dupacks = 0
        if length:
            fwd.nextseq = end
            fwd.nextseq_time = ts
        if not fwd.maxseqtobeacked or seq == fwd.maxseqtobeacked:
            fwd.maxseqtobeacked = fwd.nextseq
        scale = fwd.win_scale
        fwd.window = win << scale if scale > 0 else win
        fwd.lastack = ack
        fwd.lastack_time = ts
        fwd.last_flags = 0
        # label: does the ACK field acknowledge new bytes?
        if 0 < ((ack - highest_ack) & MASK) < HALF:
            fwd.highest_ack = ack
            label = L.PIGGYBACK if length else L.ACK
        else:
            label = L.DATA if length else L.ACK
        if length:
            data_rel_end = (rel_seq + length - 1) & MASK
            if data_rel_end < HALF and data_rel_end > fwd.data_end:
                fwd.data_end = data_rel_end
        # Zeek: the history letter of the first data ('D') or ACK ('A') this way, the
        # highest sequence sent, contiguous captured payload
        code = "D" if length else "A"
        if code not in zend.seen:
            conn.zeek._check(fwd.dir is C2S, code)
        if zadvance:
            zend.last_seq = end
        if length and zend.contig is not None:
            contig = zend.contig
            if (not 0 < ((seq - contig) & MASK) < HALF and len(payload) >= length
                    and 0 < ((end - contig) & MASK) < HALF):
                zend.contig = end
        return self._make(  # type: ignore[no-any-return]
            frame, ts, conn.index, fwd.dir, src, sport, dst, dport, seq, ack, rel_seq,
            rel_ack, length, flags, win, label, P.DATA, (),
            conn.c2s.state, conn.s2c.state, payload, raw_options, ip_version,
        )

    @staticmethod
    def _label_and_states(conn: _Conn, fwd: _Flow, rev: _Flow, p: Packet) -> tuple[Label, Phase]:
        flags, seq, ack, length = p.flags, p.seq, p.ack, p.length
        # What the ACK field newly acknowledges (RFC 9293 §3.10.7.4, fifth check).
        acks_new = False
        acks_syn = acks_fin = False
        if flags & ACK:
            # "New bytes": beyond what this side acknowledged before and beyond the
            # peer's SYN (acknowledging only a SYN acknowledges no data).
            before = fwd.highest_ack
            if before is None and rev.syn_seq is not None:
                before = (rev.syn_seq + 1) & MASK
            if before is None or _seq_gt(ack, before):
                acks_new = before is not None
            if fwd.highest_ack is None or _seq_gt(ack, fwd.highest_ack):
                fwd.highest_ack = ack
            if rev.syn_seq is not None and not rev.syn_acked and _seq_gt(ack, rev.syn_seq):
                rev.syn_acked = acks_syn = True
            if rev.fin_end is not None and not rev.fin_acked and _seq_ge(ack, rev.fin_end):
                rev.fin_acked = acks_fin = True

        if flags & RST:
            label, phase = L.RST, P.RESET
            # RFC 9293 §3.10.7: a RST in any synchronised state (or answering a SYN) closes both.
            fwd.state = _next(_SEND, fwd.state, E.RST)
            rev.state = _next(_RECV, rev.state, E.RST)
            conn.closed = True
            return label, phase

        if flags & SYN:
            if fwd.syn_seq is None or fwd.syn_seq != seq:
                fwd.syn_seq = seq
            if flags & ACK:
                label = L.SYN_ACK
                fwd.state = _next(_SEND, fwd.state, E.SYN_ACK)
                if acks_syn or (rev.syn_seq is not None and rev.syn_acked):
                    rev.state = _next(_RECV, rev.state, E.ACK_OF_SYN)
            else:
                label = L.SYN
                fwd.state = _next(_SEND, fwd.state, E.SYN)
                rev.state = _next(_RECV, rev.state, E.SYN)
            return label, P.HANDSHAKE

        phase = P.DATA
        if acks_syn:
            fwd.state = _next(_SEND, fwd.state, E.ACKS_PEER_SYN)
        # RFC 9293 §3.10.7.4, first check: a segment wholly before what the receiver has
        # already acknowledged (its RCV.NXT) is not acceptable: the receiver only answers
        # with an ACK and none of its states move (fin_retransmission.pcap: a FIN+ACK
        # reusing the SYN's sequence number leaves the server in SYN-RECEIVED).
        rcv_nxt = rev.highest_ack
        seg_len = length + (flags & FIN)
        acceptable = rcv_nxt is None or _seq_ge(
            seq if seg_len == 0 else (seq + seg_len - 1) & MASK, rcv_nxt)
        # The receiver processes the ACK field first …
        if acks_syn and acceptable:
            rev.state = _next(_RECV, rev.state, E.ACK_OF_SYN)
        if acks_fin and acceptable:
            rev.state = _next(_RECV, rev.state, E.ACK_OF_FIN)
        if flags & FIN:
            end = (seq + length + 1) & MASK
            if fwd.fin_end is None or _seq_gt(end, fwd.fin_end):
                fwd.fin_end = end
            # A FIN that newly acknowledges the peer's FIN merges the middle two
            # segments of the four-way close (RFC 9293 §3.6, figure 13's "FIN,ACK").
            label = L.FIN_ACK if acks_fin else L.FIN
            fwd.state = _next(_SEND, fwd.state, E.FIN)
            if rev.fin_end is not None and not rev.fin_acked and fwd.state is S.LAST_ACK:
                # Simultaneous close: this FIN does not acknowledge the peer's FIN, so it
                # left before that FIN arrived; the sender was in FIN-WAIT-1 and the
                # peer's FIN then takes it to CLOSING (RFC 9293 §3.6, figure 14).
                fwd.state = S.CLOSING
            if acceptable:
                rev.state = _next(_RECV, rev.state, E.FIN)
            phase = P.CLOSE
        elif length:
            label = L.PIGGYBACK if acks_new else L.DATA
        else:
            label = L.ACK
            if acks_syn and not conn.handshake_acked:
                phase = P.HANDSHAKE
            elif acks_fin or (rev.fin_end is not None and fwd.fin_end is not None):
                phase = P.CLOSE
        if acks_syn:
            conn.handshake_acked = True
        if fwd.fin_acked and rev.fin_acked:
            conn.closed = True
        return label, phase

    @staticmethod
    def _analyze(conn: _Conn, fwd: _Flow, rev: _Flow, p: Packet, window: int) -> int:
        """Wireshark's TCP sequence analysis (tcp_analyze_sequence_number), one segment.

        Returns analysis bits.  The checks run in Wireshark's order, since some of them
        end the checking early; each comment names the condition it tests.
        """
        flags, seq, ack, seglen, ts = p.flags, p.seq, p.ack, p.length, p.ts
        bits = 0
        nextseq = fwd.nextseq
        ctl = flags & (SYN | FIN | RST)
        skip_to_fwd_done = False
        # ZERO WINDOW PROBE: 1 byte at the next expected seq while the peer's window is 0.
        if seglen == 1 and seq == nextseq and rev.window == 0:
            bits |= _A_ZWP
            skip_to_fwd_done = True
        if not skip_to_fwd_done:
            # ZERO WINDOW: window 0 on a segment without SYN/FIN/RST.
            if window == 0 and not ctl:
                bits |= _A_ZWIN
            # LOST SEGMENT: starts beyond what we expected next (a gap in the capture).
            if nextseq and _seq_gt(seq, nextseq) and not flags & RST:
                bits |= _A_LOST
            # KEEP-ALIVE: 0 or 1 byte starting one before the next expected seq.
            if seglen <= 1 and seq == ((nextseq - 1) & MASK) and not ctl:
                bits |= _A_KA
            # WINDOW UPDATE: nothing new but the window changed.
            if (seglen == 0 and window and window != fwd.window and seq == nextseq
                    and ack == fwd.lastack and not ctl):
                bits |= _A_WUPD
            # WINDOW FULL: data fills the peer's advertised window exactly.
            if (seglen > 0 and rev.win_scale != -1 and rev.window is not None and not ctl
                    and (seq + seglen) & MASK == (rev.lastack + (rev.window)) & MASK):
                bits |= _A_WFULL
            same = (seglen == 0 and seq == nextseq and ack == fwd.lastack and not ctl)
            if same and window and window == fwd.window and rev.last_flags & _A_KA:
                bits |= _A_KA_ACK  # KEEP-ALIVE ACK
            elif same and window == 0 and window == fwd.window and rev.last_flags & _A_ZWP:
                bits |= _A_ZWP_ACK  # ZERO WINDOW PROBE ACK
            elif same and window and window == fwd.window:
                fwd.dupacks += 1  # DUPLICATE ACK: same seq, ack and window, no payload
                bits |= _A_DUPACK
        # (finished_fwd) a new ack value resets the duplicate count
        if ack != fwd.lastack:
            fwd.dupacks = 0
        # ACKED UNSEEN: acknowledges beyond anything the other side was seen to send.
        if rev.maxseqtobeacked and _seq_gt(ack, rev.maxseqtobeacked) and flags & ACK:
            bits |= _A_ACK_LOST
            rev.maxseqtobeacked = rev.nextseq
        # RETRANSMISSION / FAST RETRANSMISSION / OUT-OF-ORDER / SPURIOUS
        if (seglen > 0 or flags & (SYN | FIN)) and not bits & _A_KA:
            not_advanced = bool(nextseq) and _seq_lt(seq, nextseq)
            if seglen > 1 and ((nextseq - 1) & MASK) == seq:
                not_advanced = False  # new data after a zero-window probe
            if (not_advanced and rev.dupacks >= 2 and rev.lastack == seq
                    and ts - rev.lastack_time < 0.020):
                bits |= _A_FAST
            else:
                ooo_threshold = conn.first_rtt if conn.first_rtt else 0.003
                if (not_advanced and ts - fwd.nextseq_time < ooo_threshold
                        and nextseq != (seq + seglen) & MASK):
                    bits |= _A_OOO
                elif seglen > 0 and rev.lastack and _seq_ge(rev.lastack, (seq + seglen) & MASK):
                    bits |= _A_SPURIOUS  # already acknowledged: the data was not lost
                elif not_advanced:
                    bits |= _A_RETRANS
        # remember the highest sequence number and what this side acked
        end = (seq + seglen + (1 if flags & (SYN | FIN) else 0)) & MASK
        if (not nextseq or _seq_gt(end, nextseq)) and not bits & _A_ZWP:
            fwd.nextseq = end
            fwd.nextseq_time = ts
        if (not fwd.maxseqtobeacked or seq == fwd.maxseqtobeacked) and not bits & _A_ZWP:
            fwd.maxseqtobeacked = fwd.nextseq
        fwd.window = window
        fwd.lastack = ack
        fwd.lastack_time = ts
        fwd.last_flags = bits
        return bits


def track(packets: Iterable[Packet], tracker: Tracker[Segment] | None = None) -> Iterator[Segment]:
    """Label a stream of packets lazily: ``for seg in track(open_capture(path)): …``."""
    t = tracker if tracker is not None else Tracker()
    feed = t.feed
    for p in packets:
        yield feed(p)
