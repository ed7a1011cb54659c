"""The tracker: Packet records in, labelled Segment records out.

Theory of operation
===================

The tracker watches a capture from the outside, the way a person reading a
packet trace does.  It never sends anything and it never refuses a segment: a
segment the RFC would drop is still labelled, and the states only move when the
capture shows evidence for the move.  No files, sockets or clocks are touched
here (sans-IO): ``Tracker.feed(packet)`` returns a ``Segment`` and that is all.

Per segment it decides five things.  Three are this module's, two it asks of the
modules beside it:

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
   byte 1 (even when a RST came before the SYN-ACK); with no SYN seen the first
   segment's sequence number counts as 1; the
   reverse direction's base is taken from the first ACK (``ack - 1``).  All
   arithmetic is modulo 2**32 (RFC 9293 §3.4), so wraparound is harmless.

4. **Label and phase** (``Tracker._label``): what the segment is in the
   conversation (SYN, data, piggybacked ACK, FIN, …).  Working them out also tells
   what the segment acknowledges and whether its receiver can accept it, which is
   all ``tcpstate`` needs to move both endpoints' **RFC 9293 states**: its tables
   hold every rule that moves a state, and the tracker only stores what it returns.

5. **Analysis flags**, Wireshark's TCP sequence analysis (``seqanalysis``), so
   that ``hsviz`` and ``tshark`` agree on the same capture, and hsviz's own
   ``duplicate`` for a segment the capture holds twice (``seqanalysis.DUPLICATE_WINDOW``).
   When the decoder verified checksums (``feed_checked``; ``checksum``), also
   ``bad-checksum`` or ``checksum-offloaded``, on the general path only: a segment
   that fails never takes the fast path, and Zeek's view ignores it.

Zeek's view (conn_state and history, with its own originator/responder roles
that it may flip, marked ``^``) is kept alongside by ``zeek.ZeekView`` so the summary
can be compared with Zeek's conn.log letter for letter.  What the tracker keeps of a
connection is in ``tracked``; a finished one can go to a store (``spill``).

Speed: most segments of a capture are in-order data or ACKs of a connection in
full swing, for which all of the above flags nothing and moves no state.
``Tracker._steady`` recognises exactly those and makes the few updates they need;
everything else goes through ``Tracker._feed``, the general path, which is the
reference (tests/test_track_fastpath.py runs both ways and compares).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from handshake_viz.checksum import ANALYSIS_BITS, GOOD, ZEEK_IGNORES
from handshake_viz.model import Direction, Label, Phase, Segment, TcpState, fast_constructor
from handshake_viz.model import Analysis, ConnectionSummary, Packet, ZeekConnection

from .seqanalysis import DUPLICATE_WINDOW, analysis_names, analyze, scaled_window
from .seqnum import A_DUPLICATE, ACK, FIN, HALF, MASK, RST, SYN, UNSET
from .seqnum import members as _members
from .seqnum import seq_ge as _seq_ge
from .seqnum import seq_gt as _seq_gt
from .spill import ConnectionStore, pack, store_key, unpack, unpack_summary
from .tcpstate import after_segment, initial_states, is_acceptable
from .tracked import TrackedConn, TrackedFlow
from .zeek import INACTIVITY_TIMEOUT as ZEEK_INACTIVITY
from .zeek import Z, ZeekEndpoint, ZeekView

__all__ = ["LIKELY_SERVER_PORTS", "Sink", "Tracker", "discard", "track"]

C2S = Direction.C2S

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
# The members the fast path names on every segment, as plain globals (cheaper still).
_ACK, _DATA, _PIGGYBACK, _IN_DATA = Label.ACK, Label.DATA, Label.PIGGYBACK, Phase.DATA
_Z_INACTIVE, _Z_CLOSED, _Z_RESET = Z.INACTIVE, Z.CLOSED, Z.RESET
_NO_ANALYSIS: tuple[Analysis, ...] = ()


def _ready(fwd: TrackedFlow, rev: TrackedFlow) -> bool:
    """Whether ``fwd`` may take the fast path as far as the general path decides it:
    this side has acked before (so "acks new bytes" compares with its own last ACK),
    no FIN either way yet (no ACK of a FIN, phase stays "data"), the peer's SYN, if
    seen, is acknowledged (no handshake step), the first RTT is known (else this could
    be the handshake's ACK, which sets it), and both Zeek endpoints are initialised and
    neither is inactive, closed or reset (no Zeek timer but inactivity can end its
    connection).  Only ``Tracker._feed`` changes any of these (``_steady``
    moves ``highest_ack``, but never back to UNSET)."""
    conn = fwd.conn
    zfwd, zrev = fwd.zeek, rev.zeek
    return (
        fwd.highest_ack != UNSET
        and fwd.fin_end == UNSET
        and rev.fin_end == UNSET
        and (rev.syn_seq == UNSET or rev.syn_acked)
        and not (conn.first_rtt is None and conn.syn_time is not None)
        and _zeek_steady(zfwd)
        and _zeek_steady(zrev)
    )


def _zeek_steady(end: ZeekEndpoint) -> bool:
    """A Zeek endpoint that is initialised and neither inactive, closed nor reset: one
    on which a segment may end Zeek's connection (its attempt and close timers run, or
    a SYN would start the next one) only by inactivity."""
    state = end.state
    return (end.start_seq is not None and state is not _Z_INACTIVE and state is not _Z_CLOSED
            and state is not _Z_RESET)


def _looks_like_server(sport: int, dport: int, likely: frozenset[int]) -> bool:
    """True if ``sport`` looks like the server's port (mid-stream role guess)."""
    s_known = sport < 1024 or sport in likely
    d_known = dport < 1024 or dport in likely
    if s_known != d_known:
        return s_known
    return sport < dport


# Every Segment is built through model.fast_constructor (a frozen dataclass's own
# __init__ costs more than tracking a typical segment).
_make_segment = fast_constructor(Segment, (
    7, 1.5, 2, Direction.S2C, "10.0.0.1", 1, "::1", 2, 3, 4, 5, None, 6, 0x12, 8, L.SYN_ACK,
    P.HANDSHAKE, (Analysis.DUP_ACK,), TcpState.SYN_SENT, TcpState.LISTEN, b"x", b"\x01", 6))

def discard(*fields: object) -> bool:
    """A ``record`` that keeps nothing, for a tracker fed only for its summaries
    (``feed_all``, ``hsviz analyze --summary``): not None, which would mean "not
    taken" to ``_steady``'s caller."""
    return True


class Sink:
    """What a compiled front end (``handshake_viz._compiled``) gives a Tracker instead of
    a ``record``: :meth:`segment` gets what ``record`` would (the connection and the
    flow themselves instead of their number and direction, the analysis as bits), as
    C values, so that nothing is built for a segment the front end only counts, prints
    or skips.  A Tracker with a sink returns what ``segment`` returns.  The Python
    path never sets one."""

    def segment(self, conn: TrackedConn, fwd: TrackedFlow, frame: int, ts: float, src: str,
                sport: int, dst: str, dport: int, seq: int, ack: int, rel_seq: int,
                rel_ack: int | None, length: int, flags: int, win: int, label: Label,
                phase: Phase, bits: int, payload: bytes, raw_options: bytes,
                ip_version: int) -> Any:
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------


class Tracker:
    """Feed it Packets in capture order; it returns one Segment per Packet.

    >>> tracker = Tracker()
    >>> segments = [tracker.feed(p) for p in packets]      # doctest: +SKIP
    >>> tracker.summaries()[0].conn_state                  # doctest: +SKIP
    'SF'

    Memory grows with the number of connections, never with the number of segments.
    With a ``store``, only with the open ones: once more than ``keep_finished``
    connections have finished (both FINs acknowledged, or reset), the oldest go to the
    store, packed (``spill.pack``), and come back whole if a late segment of theirs
    turns up, so the labels and numbers stay those of a tracker that kept everything.
    ``likely_server_ports`` are the ports Zeek's role guess treats as a server's
    (besides every port below 1024); pass an empty set to mimic ``zeek -b``.

    ``record`` is the record type ``feed`` returns, constructed positionally with
    Segment's fields in Segment's order (default: Segment itself).  Any callable of
    that shape will do: ``hsviz analyze --jsonl`` passes ``report.both_fields`` or
    ``report.track_fields``, plain tuples of the fields it writes, picked from
    Segment's by name (cheaper to build and to pickle than a record it would only
    take apart again), and ``--summary`` passes :func:`discard`.
    """

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
        self._sink: Sink | None = None  # (compiled front ends only: see Sink)
        # (src, sport, dst, dport) as the packet has them -> the flow in that direction;
        # both directions of a connection are entered.
        self._flows: dict[tuple[str, int, str, int], TrackedFlow] = {}
        self._conns: dict[int, TrackedConn] = {}  # by number: all, or (with a store) those in memory
        self._count = 0
        self._store = store
        self._keep = max(1, keep_finished)
        self._finished: deque[TrackedConn] = deque()  # finished connections in memory, oldest first
        self._stored = False  # anything put in the store yet

    # -- public ---------------------------------------------------------------------

    def feed(self, p: Packet) -> Any:
        """Label one packet; the returned Segment's states are those *after* it."""
        return self.feed_fields(  # type: ignore[no-any-return]
            p.frame, p.ts, p.src, p.sport, p.dst, p.dport, p.seq, p.ack, p.flags, p.win,
            p.length, p.payload, p.raw_options, p.ip_version, p.ip_id,
        )  # fmt: skip

    def feed_fields(
        self, frame: int, ts: float, src: str, sport: int, dst: str, dport: int, seq: int,
        ack: int, flags: int, win: int, length: int, payload: bytes = b"",
        raw_options: bytes = b"", ip_version: int = 4, ip_id: int = 0,
    ) -> Any:
        """``feed`` for a packet given as Packet's fields, in order (the parameters are
        Packet's, name for name: tests/test_track.py holds them to it).

        ``reader.records(tracker.feed_fields)`` decodes and tracks with no Packet
        built: a Packet's construction and the reads of its fields would cost a sixth
        of tracking.
        """
        fwd = self._flows.get((src, sport, dst, dport))
        if fwd is None and self._stored:
            fwd = self._restore(src, sport, dst, dport)
        if fwd is not None and flags & (SYN | FIN | RST | ACK) == ACK:
            seg = self._steady(fwd, frame, ts, src, sport, dst, dport, seq, ack, flags, win,
                               length, payload, raw_options, ip_version, ip_id)
            if seg is not None:
                return seg  # type: ignore[no-any-return]
        if fwd is None or (flags & (SYN | ACK) == SYN and fwd.base != UNSET and seq != fwd.base):
            # a new 4-tuple, or port reuse (_reused, written out here on the hot path)
            fwd = self._open(frame, ts, src, sport, dst, dport, flags, ip_version)
        return self._feed(fwd, frame, ts, src, sport, dst, dport, seq, ack, flags, win,  # type: ignore[no-any-return]
                          length, payload, raw_options, ip_version, ip_id, GOOD)

    def feed_checked(
        self, frame: int, ts: float, src: str, sport: int, dst: str, dport: int, seq: int,
        ack: int, flags: int, win: int, length: int, payload: bytes, raw_options: bytes,
        ip_version: int, ip_id: int, checksum: int,
    ) -> Any:
        """``feed_fields`` for a packet whose TCP checksum was verified: Packet's fields,
        then its status (``checksum``'s ``GOOD``, ``BAD``, ...), as
        ``reader.records(tracker.feed_checked, verify_checksums=True)`` hands them over.

        A segment that verifies, or could not be verified, is fed as ``feed_fields``
        would.  Any other takes the general path, which adds ``bad-checksum`` or
        ``checksum-offloaded`` to its analysis and lets the Zeek view ignore it as Zeek
        does; everything else (labels, states, tshark's flags) is as if it verified:
        tshark's sequence analysis does not look at checksums either.
        """
        if not ANALYSIS_BITS[checksum]:
            return self.feed_fields(frame, ts, src, sport, dst, dport, seq, ack, flags, win,
                                    length, payload, raw_options, ip_version, ip_id)
        fwd = self._flows.get((src, sport, dst, dport))
        if fwd is None and self._stored:
            fwd = self._restore(src, sport, dst, dport)
        fwd = self._reused(fwd, frame, ts, src, sport, dst, dport, seq, flags, ip_version)
        return self._feed(fwd, frame, ts, src, sport, dst, dport, seq, ack, flags, win,  # type: ignore[no-any-return]
                          length, payload, raw_options, ip_version, ip_id, checksum)

    def feed_all(self, packets: Iterable[Packet]) -> int:
        """Feed every packet for the summaries' sake only; returns how many were fed.

        The same as calling ``feed`` on each, except that no Segment is built (the
        records ``hsviz analyze --summary`` would throw away cost a tenth of the time).
        """
        make, self._make = self._make, discard
        n = 0
        try:
            feed = self.feed
            for p in packets:
                feed(p)
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
        return unpack_summary(blob)

    def zeek_connections(self) -> list[ZeekConnection]:
        """Every connection as Zeek would log it, stream by stream (a stream may hold
        several, or one Zeek connection span no more than part of one)."""
        out: list[ZeekConnection] = []
        for i in range(self._count):
            c = self._conns.get(i)
            if c is None:
                c = unpack(self._store.get(i), self._likely)  # type: ignore[union-attr,arg-type]
            out.extend(c.zeek_connections())
        return out

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

    def _reused(self, fwd: TrackedFlow | None, frame: int, ts: float, src: str, sport: int,
                dst: str, dport: int, seq: int, flags: int, ip_version: int) -> TrackedFlow:
        """The packet's flow: ``fwd``, unless this is a new 4-tuple (``fwd`` None) or port
        reuse -- a SYN with a new ISN starts a new connection (tcp.stream)."""
        if fwd is None or (flags & (SYN | ACK) == SYN and fwd.base != UNSET and seq != fwd.base):
            return self._open(frame, ts, src, sport, dst, dport, flags, ip_version)
        return fwd

    def _open(self, frame: int, ts: float, src: str, sport: int, dst: str, dport: int,
              flags: int, ip_version: int) -> TrackedFlow:
        """Start the next connection number with the packet of these fields; return its flow."""
        # Who is the client: the SYN's sender, the SYN-ACK's receiver, else a guess.
        guessed = not flags & SYN
        if guessed:
            client_is_src = not _looks_like_server(sport, dport, self._likely)
        else:
            client_is_src = not flags & ACK
        a, b = (src, sport), (dst, dport)
        client, server = (a, b) if client_is_src else (b, a)
        conn = TrackedConn(self._count, client, server, guessed, initial_states(flags),
                           ZeekView(client_is_src, flags, sport, dport, ts, self._likely),
                           ts, ip_version)
        self._count += 1
        self._conns[conn.index] = conn
        self._enter(conn)
        return conn.c2s if a == client else conn.s2c

    def _enter(self, conn: TrackedConn) -> None:
        (cip, cport), (sip, sport) = conn.client, conn.server
        # s2c first: when both ends are the same address and port, the one key is c2s's.
        self._flows[(sip, sport, cip, cport)] = conn.s2c
        self._flows[(cip, cport, sip, sport)] = conn.c2s

    def _finished_now(self, conn: TrackedConn) -> None:
        """Queue a connection that just finished; store the oldest beyond ``keep_finished``."""
        conn.queued = True
        queue = self._finished
        queue.append(conn)
        store = self._store
        if store is None:
            return
        flows = self._flows
        while len(queue) > self._keep:
            old: TrackedConn = queue.popleft()
            (cip, cport), (sip, sport) = old.client, old.server
            for key, flow in (((cip, cport, sip, sport), old.c2s), ((sip, sport, cip, cport), old.s2c)):
                if flows.get(key) is flow:  # not if a newer connection took the 4-tuple over
                    del flows[key]
            store.put(old.index, store_key(old.client, old.server), pack(old))
            del self._conns[old.index]
            self._stored = True
            # A connection and its flows refer to each other: break the cycle, so that
            # they are freed now even with the cyclic collector off (as analyze runs).
            old.c2s.conn = old.s2c.conn = None  # type: ignore[assignment]
            old.c2s.peer = old.s2c.peer = old.last_flow = None  # type: ignore[assignment]

    def _restore(self, src: str, sport: int, dst: str, dport: int) -> TrackedFlow | None:
        """The packet's flow from the store (a late segment of a finished connection, or
        a SYN reusing its ports), or None for a 4-tuple never seen."""
        found = self._store.find(store_key((src, sport), (dst, dport)))  # type: ignore[union-attr]
        if found is None:
            return None
        index, blob = found
        conn = self._conns.get(index)
        if conn is None:
            conn = unpack(blob, self._likely)
            self._conns[index] = conn
            self._finished_now(conn)  # it is finished: queued again, as the newest
        self._enter(conn)
        return self._flows.get((src, sport, dst, dport))

    def _feed(
        self, fwd: TrackedFlow, frame: int, ts: float, src: str, sport: int, dst: str, dport: int,
        seq: int, ack: int, flags: int, win: int, length: int, payload: bytes,
        raw_options: bytes, ip_version: int, ip_id: int, checksum: int,
    ) -> Any:
        """The general path: every rule, for any segment (``checksum``: its status, when
        verified: see ``feed_checked``)."""
        conn, rev = fwd.conn, fwd.peer
        conn.segments += 1
        last_ts = conn.last_ts
        conn.last_ts = ts

        # ---- relative numbers (Wireshark's base_seq rules) --------------------------
        if fwd.base == UNSET:
            fwd.base = seq if flags & SYN else (seq - 1) & MASK
        elif flags & SYN and fwd.syn_seq == UNSET:
            # The first SYN this way sets the base even when a RST (or anything) came
            # first: tshark counts the responder's numbers from its SYN-ACK.
            fwd.base = seq
        if rev.base == UNSET and flags & ACK:
            rev.base = (ack - 1) & MASK
        rel_seq = (seq - fwd.base) & MASK
        rel_ack = (ack - rev.base) & MASK if flags & ACK and rev.base != UNSET else None

        # ---- first RTT (SYN to the handshake's ACK): seqanalysis's out-of-order bound
        if flags & SYN and not flags & ACK:
            conn.syn_time = ts
        elif flags & (SYN | ACK) == ACK and conn.first_rtt is None and conn.syn_time is not None:
            conn.first_rtt = ts - conn.syn_time

        # ---- Wireshark's sequence analysis ------------------------------------------
        window = scaled_window(fwd, rev, flags, win, raw_options)
        bits = analyze(fwd, rev, flags, seq, ack, length, ts, window, conn.first_rtt)
        if (conn.last_flow is fwd and ts - last_ts <= DUPLICATE_WINDOW
                and flags & (RST | ACK) != RST and conn.last_seq == seq and conn.last_ack == ack
                and conn.last_flags == flags and conn.last_win == win
                and conn.last_length == length and conn.last_ip_id == ip_id
                and conn.last_payload == payload and conn.last_options == raw_options):
            # The capture saw this segment twice.  Not said of a bare RST: a stack sends
            # one per segment it refuses, each the same (RFC 9293 §3.10.7.1).
            bits |= A_DUPLICATE
        conn.last_flow = fwd
        conn.last_seq, conn.last_ack, conn.last_flags, conn.last_win = seq, ack, flags, win
        conn.last_length, conn.last_payload, conn.last_options = length, payload, raw_options
        conn.last_ip_id = ip_id
        if checksum:
            bits |= ANALYSIS_BITS[checksum]

        # ---- label, phase and RFC 9293 states ---------------------------------------
        label, phase = self._label(conn, fwd, rev, flags, seq, ack, length)

        # ---- byte counts in sequence space (Zeek's orig_bytes) ----------------------
        if length:
            data_rel_end = (rel_seq + length + (1 if flags & SYN else 0) - 1) & MASK
            if data_rel_end < HALF and data_rel_end > fwd.data_end:
                fwd.data_end = data_rel_end

        conn.zeek.feed(fwd.dir is C2S, flags, seq, ack, length, len(payload), win, ts, sport, dport,
                       ZEEK_IGNORES[checksum])
        fwd.ready = _ready(fwd, rev)
        rev.ready = _ready(rev, fwd)
        if conn.closed and not conn.queued:
            self._finished_now(conn)

        sink = self._sink
        if sink is not None:
            return sink.segment(conn, fwd, frame, ts, src, sport, dst, dport, seq, ack, rel_seq,  # type: ignore[no-any-return]
                                rel_ack, length, flags, win, label, phase, bits, payload,
                                raw_options, ip_version)
        return self._make(  # type: ignore[no-any-return]
            frame, ts, conn.index, fwd.dir, src, sport, dst, dport, seq, ack, rel_seq,
            rel_ack, length, flags, win, label, phase, analysis_names(bits),
            conn.c2s.state, conn.s2c.state, payload, raw_options, ip_version,
        )

    def _steady(
        self, fwd: TrackedFlow, frame: int, ts: float, src: str, sport: int, dst: str, dport: int,
        seq: int, ack: int, flags: int, win: int, length: int, payload: bytes,
        raw_options: bytes, ip_version: int, ip_id: int = 0,
    ) -> Any:
        """The fast path: an in-order ACK or data segment of a connection in full swing.

        Most of a capture is such segments, and for them ``_feed`` would flag nothing,
        change no RFC 9293 state, write no Zeek history letter and only move a few
        counters.  This method tests exactly the conditions under which that is so
        (the caller has checked: ACK set; SYN, FIN and RST clear) and, if they hold,
        makes the same updates ``_feed`` would and returns the Segment.  Otherwise it
        returns None having changed nothing, and ``_feed`` takes the segment.

        Invariants it relies on: ``fwd.nextseq`` is non-zero only after ``_feed`` saw a
        segment this way (which set ``fwd.base``); ``fwd.highest_ack`` is set only by an
        ACK sent this way (which set ``rev.base``); a Zeek endpoint past INACTIVE has its
        ``start_seq``, ``last_seq`` and ``contig``.  So none of those is UNSET here (nor
        is the peer's window, once it is above 0).
        """
        nextseq = fwd.nextseq
        rev = fwd.peer
        # In order (not LOST, not a retransmission, out-of-order or keep-alive); neither
        # window zero (not ZERO WINDOW, not a ZERO WINDOW PROBE, no Zeek 'W'); and what
        # only the general path decides (_ready).
        if seq != nextseq or not nextseq or not win or rev.window <= 0 or not fwd.ready:
            return None
        conn = fwd.conn
        zeek = conn.zeek
        if ts - zeek.last_ts > ZEEK_INACTIVITY:
            return None  # Zeek would have dropped the connection by now
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
        # content gap ('G').  (_ready: neither endpoint is reset, so this one's last_seq
        # moves with the data.)
        zend, zpeer = fwd.zeek, rev.zeek
        last_seq: int = zend.last_seq  # type: ignore[assignment]
        zadvance = 0 < ((end - last_seq) & MASK) < HALF
        if length and (not zadvance or zend.blocks):
            return None  # a retransmission ('T'), or payload that may fill a hole
        captured = len(payload)
        zcontig: int = zend.contig  # type: ignore[assignment]
        if length and 0 < ((seq - zcontig) & MASK) < HALF and captured >= length:
            return None  # payload beyond a hole in what was captured: a block to keep
        peer_contig: int = zpeer.contig  # type: ignore[assignment]
        if 0 < ((ack - peer_contig) & MASK) < HALF:
            return None

        # ---- all clear: the updates _feed would make ----------------------------------
        conn.last_flow = fwd
        conn.last_seq, conn.last_ack, conn.last_flags, conn.last_win = seq, ack, flags, win
        conn.last_length, conn.last_payload, conn.last_options = length, payload, raw_options
        conn.last_ip_id = ip_id
        conn.segments += 1
        conn.last_ts = ts
        base: int = fwd.base  # type: ignore[assignment]
        rev_base: int = rev.base  # type: ignore[assignment]
        rel_seq = (seq - base) & MASK
        rel_ack = (ack - rev_base) & MASK
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
        highest_ack: int = fwd.highest_ack  # type: ignore[assignment]
        if 0 < ((ack - highest_ack) & MASK) < HALF:
            fwd.highest_ack = ack
            label = _PIGGYBACK if length else _ACK
        else:
            label = _DATA if length else _ACK
        if length:
            data_rel_end = (rel_seq + length - 1) & MASK
            if data_rel_end < HALF and data_rel_end > fwd.data_end:
                fwd.data_end = data_rel_end
        # Zeek: a packet counted, the history letter of the first data ('D') or ACK ('A')
        # this way, the highest sequence sent (and its wraps), contiguous captured payload
        zend.pkts += 1
        zeek.last_ts = ts  # (neither endpoint has closed: _ready)
        code = "D" if length else "A"
        if code not in zend.seen:
            zeek._check(fwd.dir is C2S, code)
        if zadvance:
            if end < last_seq:
                zend.wraps += 1
            if zend.ack_beyond:
                zend.ack_beyond = max(0, zend.ack_beyond - ((end - last_seq) & MASK))
            zend.last_seq = end
        if length and captured >= length and 0 < ((end - zcontig) & MASK) < HALF:
            zend.contig = end
        sink = self._sink
        if sink is not None:
            return sink.segment(conn, fwd, frame, ts, src, sport, dst, dport, seq, ack, rel_seq,
                                rel_ack, length, flags, win, label, _IN_DATA, 0, payload,
                                raw_options, ip_version)
        return self._make(  # type: ignore[no-any-return]
            frame, ts, conn.index, fwd.dir, src, sport, dst, dport, seq, ack, rel_seq,
            rel_ack, length, flags, win, label, _IN_DATA, _NO_ANALYSIS,
            conn.c2s.state, conn.s2c.state, payload, raw_options, ip_version,
        )

    def _label(self, conn: TrackedConn, fwd: TrackedFlow, rev: TrackedFlow, flags: int,
               seq: int, ack: int, length: int) -> tuple[Label, Phase]:
        """The segment's label and phase; on the way, both endpoints' RFC 9293 states
        (from ``tcpstate``) and whether the connection is over."""
        # What the ACK field newly acknowledges (RFC 9293 §3.10.7.4, fifth check).
        acks_new = False
        acks_syn = acks_fin = False
        if flags & ACK:
            # "New bytes": beyond what this side acknowledged before and beyond the
            # peer's SYN (acknowledging only a SYN acknowledges no data).
            before = fwd.highest_ack
            if before == UNSET and rev.syn_seq != UNSET:
                before = (rev.syn_seq + 1) & MASK
            if before == UNSET or _seq_gt(ack, before):
                acks_new = before != UNSET
            if fwd.highest_ack == UNSET or _seq_gt(ack, fwd.highest_ack):
                fwd.highest_ack = ack
            if rev.syn_seq != UNSET and not rev.syn_acked and _seq_gt(ack, rev.syn_seq):
                rev.syn_acked = acks_syn = True
            if rev.fin_end != UNSET and not rev.fin_acked and _seq_ge(ack, rev.fin_end):
                rev.fin_acked = acks_fin = True

        # Both endpoints' RFC 9293 states, from what the segment acknowledges and whether
        # its receiver can accept it: as far as the observer knows, the receiver's RCV.NXT
        # is the highest ACK it sent (fin_retransmission.pcap: a FIN+ACK reusing the SYN's
        # sequence number is wholly before it, and leaves the server in SYN-RECEIVED).
        fwd.state, rev.state = after_segment(
            fwd.state, rev.state, flags, acks_syn=acks_syn, syn_acked=rev.syn_acked,
            acks_fin=acks_fin, peer_fin_unacked=rev.fin_end != UNSET and not rev.fin_acked,
            acceptable=is_acceptable(seq, length + (flags & FIN), rev.highest_ack),
        )

        if flags & RST:
            conn.closed = True
            return L.RST, P.RESET

        if flags & SYN:
            fwd.syn_seq = seq  # a retransmission's is the same; port reuse brings a new one
            return (L.SYN_ACK if flags & ACK else L.SYN), P.HANDSHAKE

        phase = P.DATA
        if flags & FIN:
            end = (seq + length + 1) & MASK
            if fwd.fin_end == UNSET or _seq_gt(end, fwd.fin_end):
                fwd.fin_end = end
            # A FIN that newly acknowledges the peer's FIN merges the middle two
            # segments of the four-way close (RFC 9293 §3.6, figure 12's "FIN,ACK").
            label = L.FIN_ACK if acks_fin else L.FIN
            phase = P.CLOSE
        elif length:
            label = L.PIGGYBACK if acks_new else L.DATA
        else:
            label = L.ACK
            if acks_syn and not conn.handshake_acked:
                phase = P.HANDSHAKE
            elif acks_fin or (rev.fin_end != UNSET and fwd.fin_end != UNSET):
                phase = P.CLOSE
        if acks_syn:
            conn.handshake_acked = True
        if fwd.fin_acked and rev.fin_acked:
            conn.closed = True
        return label, phase


def track(packets: Iterable[Packet], tracker: Tracker | None = None) -> Iterator[Segment]:
    """Label a stream of packets lazily: ``for seg in track(open_capture(path)): …``."""
    t = tracker if tracker is not None else Tracker()
    feed = t.feed
    for p in packets:
        yield feed(p)
