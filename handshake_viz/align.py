"""Socket calls x segments: which call caused, or was released by, which segment.

Pure functions (sans-IO): ``align`` takes the Segment records of ``track``, their
ConnectionSummary records and the Call records of ``trace`` and returns new Call
records with ``conn`` and ``frames`` filled in; ``infer_calls`` rebuilds the calls
of one connection from its segments alone.  Nothing here reads a file or a clock.

Alignment rules
===============

The rules say which segments a call *caused* (the kernel sent them because the
call asked it to) or was *released by* (the call returned because they
arrived).  They match by structure -- 4-tuples, byte offsets in the stream,
flags -- never by time alone.  strace and the capture share the wall clock, but
strace's timestamps wobble by a millisecond or two under load (measured here: a
``connect()`` printed as returning 1.2 ms before its SYN-ACK was captured), so
time only breaks ties and sanity-checks, always with a tolerance of ``slack``
seconds (``SLACK``, 10 ms, by default).

**Frames list first transmissions only.**  A byte, a SYN or a FIN that is sent
again was resent by a TCP timer or by fast retransmit, not by the call; ``track``
marks those segments ``retransmission`` and the diagram shows them as such.
(If the first transmission was not captured, the first one that was counts.)

1. *Which connection (``conn``).*  A call on a TCP socket carries the socket's
   4-tuple (strace ``-yy``).  ``local``/``remote`` equal to the connection's
   ``client``/``server`` put the call on the client's side; swapped, on the
   server's.  Addresses are compared as addresses (``::ffff:10.0.0.1`` equals
   ``10.0.0.1``).  Calls on one fd of one process, from the call that created
   the fd (``socket()``, ``accept()``) to its ``close()``, form one *fd
   lifetime* and share what any of them knows: ``connect()`` is printed before
   the socket has a 4-tuple, and so is the ``close()`` of a refused socket.
   ``accept()`` runs on the listening socket; it belongs to the connection of
   the fd it *returns* (its own 4-tuple if the trace gave one, else that fd's
   lifetime).  Several connections on one 4-tuple (port reuse) are told apart
   by time.  A socket that never got a 4-tuple (a refused or timed-out
   ``connect()`` or ``sendto(MSG_FASTOPEN)``) is matched by its remote address to a connection whose SYN
   was sent within ``slack`` of the call, whose outcome fits the call's
   (ECONNREFUSED: the SYN was answered by a RST; success: by a SYN-ACK) and
   whose connect() no other traced fd already accounts for; when two such
   connections are about equally near in time (within ``slack``/10) the call
   gets ``conn=None`` rather than a guess.

2. *connect()* caused the SYN and was released by the SYN-ACK
   (``frames = (SYN, SYN-ACK)``); refused, by the RST that answered the SYN
   (``(SYN, RST)``).  A non-blocking ``connect()`` (EINPROGRESS) returns at once:
   ``(SYN,)`` only -- the poll/select that waits for it gets the SYN-ACK.
   A send with ``MSG_FASTOPEN`` (TCP Fast Open, RFC 7413) connects the socket
   as it sends: the first one is a connect() that also writes (rule 4), so it
   caused the SYN -- carrying its bytes, or with a Fast Open cookie request
   and no data if the client had no cookie -- and was released by the SYN-ACK
   (or the refusing RST), unless it returned more than ``slack`` before that
   answer arrived (non-blocking: it returns at once, with the bytes it queued
   in the SYN).

3. *accept()* takes no part in the handshake: the kernel answers the SYN and
   queues the connection; ``accept()`` returns once the client's final ACK has
   arrived, so ``frames = (handshake ACK,)`` (the client's first non-SYN
   segment acknowledging the SYN-ACK with a sequence number past its SYN,
   which may carry data).  If ``accept()``
   was called late it returns at once, long after that ACK: the frames stay the
   same and ``accept_queue_delay`` measures the gap the diagram draws.
   *Fast Open:* when the client's SYN carried data and the SYN-ACK acknowledged
   it, the server took the data with the SYN and queued the connection right
   away (RFC 7413 4.2.2; Linux returns it from ``accept()`` in SYN-RECEIVED,
   its data readable), so ``frames = (SYN,)``.  A SYN-ACK that acknowledges only
   the SYN dropped the data (no valid cookie): the client sends it again after
   the handshake, rule 3 applies as usual, and the server's read of those
   bytes was released by the segments that carried them again, not the SYN.

4. *write()/send()* of n bytes caused the segments carrying those bytes.
   Bytes written are counted per (connection, side) across every fd and process
   on that side, calls in start order: the write covering stream bytes [a, b)
   occupies relative sequence numbers [a+1, b+1) (the SYN takes 0), and every
   segment of that side whose *first-sent* bytes overlap that range is listed.
   One write split over two segments lists both; two writes coalesced into one
   segment both list it.  A failed or EAGAIN write moves no bytes and lists
   nothing; ECONNRESET/EPIPE list the peer's RST when there is one.

5. *read()/recv()* returning n > 0 was released by the peer's segments that
   carry its bytes, counted the same way in the peer's stream (a ``MSG_PEEK``
   read lists the same segments as the read that then takes the bytes: it
   consumes nothing).  ``read() -> 0`` was released by the peer's FIN;
   ECONNRESET by the peer's RST.

   When the trace or the capture started mid-stream (strace -p: no socket,
   connect or accept traced on that side; or no SYN captured in that
   direction), byte 0 of the trace is not relative seq 1 and the offset has to
   be pinned by time -- the one place time decides.  The candidates put one
   of the first calls' bytes at a nearby segment boundary; the winner is the
   one under which the first calls fit their segments best (a write starts
   just before its first segment leaves, a read returns just after its last
   one arrived).  Bytes that fall before the capture began or after it ended
   are allowed, at a small cost.

6. *shutdown(SHUT_WR or SHUT_RDWR)* caused its side's FIN (the earliest such
   shutdown that started before that FIN).  ``shutdown(SHUT_RD)`` sends nothing.
   *close()* caused its side's FIN when no shutdown did -- the *last* close on
   that side started before the FIN, since closing one of several descriptors
   of a socket (a forking server's parent) sends nothing -- or the RST it sent
   when it discarded unread data (a RST from its side while it ran, within
   ``slack``, that no FIN of a close preceded).  A close after the peer's FIN
   sends a FIN that takes its side from CLOSE-WAIT to LAST-ACK; it is the same
   rule.  A RST its side sent later, answering data that arrived at a closed
   socket, is the kernel's and belongs to no call.

7. *poll/select/epoll waits* on a known socket were released by the segment
   that made it ready -- data, FIN, RST, or the SYN-ACK of a pending connect --
   arriving at its side during the call (``slack`` either way), the one
   nearest the call's return.  (A wait names no byte range: this rule is by
   time, and only for waits whose fd or 4-tuple is known.)

Everything else (socket, bind, listen, setsockopt, ...) causes no segment:
``frames=()``, with ``conn`` set when the fd's lifetime belongs to one
connection.  ``align`` returns one Call per input Call, in the input order.

Inferred calls
==============

Without a trace, ``infer_calls`` applies the same rules backwards, marking every
call ``inferred=True`` (pid/tid 0, fd None): connect() from the SYN to the
SYN-ACK (or the refusing RST) -- or, when the client sent a FIN or RST while its
SYN was still unanswered, a connect() that did not wait (EINPROGRESS, the SYN
only); accept() returning at the handshake ACK; one
write() per burst of new data from one side (a burst ends at a PSH, at data
from the peer, at its side's FIN, or with a SYN that carried data) and the
matching read() on the receiver, returning at the burst's last segment; read() -> 0 at the FIN received (unless
that side had already closed); close() at the FIN sent -- shutdown(SHUT_WR)
when the peer still sends data after it and is not reset for it (a
half-close); a RST not answering a
SYN is a close() that discarded unread data on the sender's side (if that side
had not closed already) and an ECONNRESET read() on the peer's (if the peer had
not closed).

Data in the client's SYN (TCP Fast Open) makes the opening call a
``sendto(..., MSG_FASTOPEN)`` that connects and writes the SYN's bytes in one
call (args ``"MSG_FASTOPEN"``, ``ret``/``nbytes`` the SYN's bytes; frames and
times as the connect() above; one that did not wait returns those bytes, not
EINPROGRESS) -- no separate write() for them.  If the SYN-ACK acknowledged
the data (rule 3), accept() returns at the SYN, released by it, and the read()
of its data at the SYN right after; if it did not, accept() returns at the
handshake ACK and the read() at the client's segments that carry those bytes
again (none if they were not captured).  A capture cannot tell a connect()
followed by a write() from a cookie-requesting ``sendto(MSG_FASTOPEN)`` when
the SYN carried no data: that stays a connect().

Every inferred call is placed at a segment's time, so several often share an
instant; they are listed in time order, then by their first frame, then in the
rules' causal order: the call that opened the connection, accept(), the data
written and read, then the calls that end the stream (close, shutdown,
read -> 0, ECONNRESET).  A FIN carrying data was sent by a write() and then a
close() -- a process writes its last bytes before it closes; the write ends no
later than the close starts -- and the peer's read() of those bytes comes
before its read() -> 0.  Traced calls keep their real times and order.

Only a side that had a socket in the connection gets calls.  The server had
one once the client acknowledged its SYN-ACK with an acceptable segment
(sequence number past the SYN: RFC 9293 3.10.7.4 drops anything else unread in
SYN-RECEIVED), or once it sent data or a FIN, or at its SYN-ACK if that
acknowledged data carried in the SYN (Fast Open); with no SYN-ACK captured, once
any segment other than a SYN or RST carries an ACK (the capture began after the
handshake).  A refused SYN, an unanswered one, or one the client gave up on
(``syn-then-rst``: SYN then the client's RST) never reached a server socket, so
the server gets no read(), close() or ECONNRESET for it; a RST its kernel sent
for such a connection belongs to no call.  The client had one if it sent a SYN,
was answered by a SYN-ACK, or the connection was synchronized: a lone RST
(``single-rst``) implies no call on either side, since kernels send RSTs for
connections no socket owns.

``calls_for_connection`` hands out traced calls when a connection has any, else
inferred ones -- never a mixture.

``timeline`` merges a connection's segments and calls into one list for a text
ladder (``hsviz analyze``), and ``accept_queue_delay`` measures how long a
connection waited for a late ``accept()``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace

from handshake_viz.model import (
    Analysis,
    Call,
    CallKind,
    ConnectionSummary,
    Datagram,
    Direction,
    Endpoint,
    FlowSummary,
    Segment,
    normalize_ip,
)
from handshake_viz.seqnum import ACK, FIN, HALF, MASK, PSH, RST, SYN

__all__ = [
    "SLACK",
    "ConnectionView",
    "accept_queue_delay",
    "align",
    "align_datagrams",
    "calls_for_flow",
    "calls_for_connection",
    "connection_view",
    "infer_calls",
    "timeline",
]

#: Tolerance, in seconds, for every comparison between a strace timestamp and a
#: capture timestamp (they share the wall clock but strace's wobble by ~1-2 ms).
SLACK = 0.010

C2S, S2C = Direction.C2S, Direction.S2C

_SEND, _RECV, _WAIT, _ACCEPT = CallKind.SEND, CallKind.RECV, CallKind.WAIT, CallKind.ACCEPT
_CREATORS = frozenset({CallKind.SOCKET, CallKind.ACCEPT})  # calls that return a new socket fd

Side = str  # "client" | "server"
_EpKey = tuple[str, int]


# ======================================================================================
# Small helpers
# ======================================================================================


_KEY_CACHE: dict[tuple[str, int], _EpKey] = {}


def _key(ep: Endpoint | None) -> _EpKey | None:
    if ep is None:
        return None
    raw = (ep.ip, ep.port)
    got = _KEY_CACHE.get(raw)
    if got is None:
        got = _KEY_CACHE[raw] = (normalize_ip(ep.ip), ep.port)
    return got


def _nbytes(call: Call) -> int:
    if call.errno is not None:
        return 0
    if call.nbytes is not None:
        return max(call.nbytes, 0)
    return call.ret if call.ret is not None and call.ret > 0 else 0


def _unwrap(value: int, near: int) -> int:
    """The integer congruent to ``value`` mod 2**32 nearest to ``near``."""
    return near + ((value - near + HALF) & MASK) - HALF


def _peer(d: Direction) -> Direction:
    return S2C if d is C2S else C2S


def _own_dir(side: Side) -> Direction:
    return C2S if side == "client" else S2C


# ======================================================================================
# What one connection's segments show (computed once per connection)
# ======================================================================================


@dataclass(slots=True)
class _Stream:
    """One direction's first-sent data: parallel lists sorted by start (unwrapped)."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    segs: list[Segment] = field(default_factory=list)
    saw_syn: bool = False

    def overlapping(self, lo: int, hi: int) -> list[Segment]:
        """Segments whose first-sent bytes overlap relative seq [lo, hi)."""
        if hi <= lo:
            return []
        i = bisect.bisect_right(self.ends, lo)
        out = []
        while i < len(self.starts) and self.starts[i] < hi:
            out.append(self.segs[i])
            i += 1
        return out


@dataclass(slots=True)
class _ConnView:
    summary: ConnectionSummary
    segments: list[Segment]
    streams: dict[Direction, _Stream]
    first_syn: dict[Direction, Segment | None]  # a SYN without ACK (or the SYN-ACK) per direction
    syn_ack: dict[Direction, Segment | None]
    fin: dict[Direction, Segment | None]
    rst: dict[Direction, Segment | None]
    refusing_rst: Segment | None  # a s2c RST answering the SYN before any SYN-ACK
    handshake_ack: Segment | None
    new_bytes: dict[int, int]  # frame -> bytes it sent first
    times: list[float]

    @property
    def syn_ts(self) -> float:
        s = self.first_syn[C2S]
        return s.ts if s is not None else self.summary.first_ts

    def synchronized(self) -> bool:
        """Some segment other than a SYN or RST carries an ACK: a connection existed."""
        return any(s.flags & ACK and not s.flags & (SYN | RST) for s in self.segments)

    @property
    def fast_open(self) -> bool:
        """The client's SYN carried data and the SYN-ACK acknowledged it (RFC 7413 Fast
        Open): the server took the data with the SYN, so the connection was accept()able
        -- and the data readable -- from the SYN on, before the handshake completed."""
        syn, sa = self.first_syn[C2S], self.syn_ack[S2C]
        if syn is None or sa is None or syn.length <= 0 or sa.rel_ack is None:
            return False
        return _unwrap(sa.rel_ack, 1) > 1

    def server_accepted(self) -> bool:
        """Whether the server had a connected socket that ``accept()`` could return.

        With its SYN-ACK captured: once the client acknowledged it with an
        acceptable segment (the handshake ACK), or once the server sent data or a
        FIN (the ACK was not captured), or at once if the SYN-ACK acknowledged data
        carried in the SYN (Fast Open).  Without: when any segment shows a
        synchronized connection (the capture started after the handshake).  A SYN
        that was refused, answered by nothing, or abandoned by the client never
        reached a server socket.
        """
        if self.syn_ack[S2C] is not None:
            return (self.fast_open or (self.handshake_ack is not None and self.handshake_ack.dir is C2S)
                    or bool(self.streams[S2C].segs) or self.fin[S2C] is not None)
        return self.synchronized()

    def client_socket(self) -> bool:
        """Whether the client side is seen to have had a socket: it sent a SYN,
        was answered by a SYN-ACK, or the connection was synchronized.  (A lone
        RST shows neither side's socket: the kernel sends those for no socket too.)"""
        return self.first_syn[C2S] is not None or self.syn_ack[S2C] is not None or self.synchronized()


#: One connection's landmarks as these rules read them (first SYN, SYN-ACK, FIN and RST
#: each way, the refusing RST, the handshake ACK, first-sent bytes per segment).
ConnectionView = _ConnView


def connection_view(summary: ConnectionSummary, segments: Iterable[Segment]) -> ConnectionView:
    """The landmarks of one connection, found once, as the alignment rules see them (so
    that ``explain`` names the same handshake ACK or FIN that a call is joined to)."""
    return _view(summary, segments)


def _view(summary: ConnectionSummary, segments: Iterable[Segment]) -> _ConnView:
    segs = sorted((s for s in segments if s.conn == summary.conn), key=lambda s: s.frame)
    streams = {C2S: _Stream(), S2C: _Stream()}
    high: dict[Direction, int] = {C2S: 0, S2C: 0}  # unwrapped end of first-sent data
    first_syn: dict[Direction, Segment | None] = {C2S: None, S2C: None}
    syn_ack: dict[Direction, Segment | None] = {C2S: None, S2C: None}
    fin: dict[Direction, Segment | None] = {C2S: None, S2C: None}
    rst: dict[Direction, Segment | None] = {C2S: None, S2C: None}
    refusing: Segment | None = None
    hs_ack: Segment | None = None
    for s in segs:
        d, flags = s.dir, s.flags
        if flags & SYN:
            streams[d].saw_syn = True
            if flags & ACK:
                if syn_ack[d] is None:
                    syn_ack[d] = s
            elif first_syn[d] is None:
                first_syn[d] = s
        if flags & FIN and fin[d] is None:
            fin[d] = s
        if flags & RST and rst[d] is None:
            rst[d] = s
            if (refusing is None and d is S2C and first_syn[C2S] is not None
                    and syn_ack[S2C] is None):
                refusing = s
        if (hs_ack is None and not flags & (SYN | RST) and flags & ACK and syn_ack[_peer(d)] is not None
                and s.rel_ack is not None and s.rel_ack >= 1 and 1 <= (s.rel_seq & MASK) < HALF):
            hs_ack = s
        if s.length > 0:
            start = _unwrap(s.rel_seq + (1 if flags & SYN else 0), high[d])
            end = start + s.length
            if end > high[d] or not streams[d].segs:
                st = streams[d]
                new_start = max(start, high[d]) if st.segs else start
                st.starts.append(new_start)
                st.ends.append(end)
                st.segs.append(s)
                high[d] = end
    new_bytes = {st.segs[k].frame: st.ends[k] - st.starts[k]
                 for st in streams.values() for k in range(len(st.segs))}
    return _ConnView(summary, segs, streams, first_syn, syn_ack, fin, rst, refusing, hs_ack,
                     new_bytes, [s.ts for s in segs])


# ======================================================================================
# fd lifetimes and connection matching
# ======================================================================================


@dataclass(slots=True)
class _Lifetime:
    pid: int
    fd: int
    calls: list[int] = field(default_factory=list)  # indices into the call list
    tuple4: tuple[_EpKey, _EpKey] | None = None  # (local, remote)
    created: bool = False  # the creating socket()/accept() was traced
    connect: int | None = None  # index of a connect() call
    conn: int | None = None
    side: Side | None = None


def _full_tuple(call: Call) -> tuple[_EpKey, _EpKey] | None:
    lk, rk = _key(call.local), _key(call.remote)
    if lk is None or rk is None or lk[1] == 0 or rk[1] == 0:
        return None
    return (lk, rk)


def _lifetimes(calls: Sequence[Call]) -> tuple[list[_Lifetime], dict[int, int], dict[int, int]]:
    """Group calls into fd lifetimes.

    Returns the lifetimes, call index -> lifetime of the fd it operates on, and
    accept() call index -> lifetime of the fd it returned.
    """
    # (time, order, call index); at one instant a close frees an fd number before a
    # creating call can return it again, and a use follows the creation
    events: list[tuple[float, int, int]] = []
    for i, c in enumerate(calls):
        if c.fd is not None and c.kind is not CallKind.SOCKET:  # socket() takes no fd, it returns one
            events.append((c.start, 0 if c.kind is CallKind.CLOSE else 2, i))
        if c.kind in _CREATORS and c.errno is None and c.ret is not None and c.ret >= 0:
            events.append((c.end, 1, i))
    events.sort()
    current: dict[tuple[int, int], int] = {}
    lives: list[_Lifetime] = []
    of_call: dict[int, int] = {}
    created_by: dict[int, int] = {}
    for _t, order, i in events:
        c = calls[i]
        if order == 1:
            assert c.ret is not None
            lives.append(_Lifetime(c.pid, c.ret, created=True))
            current[(c.pid, c.ret)] = len(lives) - 1
            if c.kind is CallKind.SOCKET:
                lives[-1].calls.append(i)
                of_call[i] = len(lives) - 1
            else:
                created_by[i] = len(lives) - 1
            continue
        assert c.fd is not None
        k = (c.pid, c.fd)
        li = current.get(k)
        if li is None:  # traced from the middle of the fd's life (strace -p)
            lives.append(_Lifetime(c.pid, c.fd))
            li = current[k] = len(lives) - 1
        lives[li].calls.append(i)
        of_call[i] = li
        if c.kind is CallKind.CLOSE:
            del current[k]
    for lt in lives:
        for i in lt.calls:
            c = calls[i]
            if c.kind is _ACCEPT:
                continue  # its 4-tuple is the returned fd's, not the listening socket's
            if lt.tuple4 is None:
                lt.tuple4 = _full_tuple(c)
            if lt.connect is None and (c.kind is CallKind.CONNECT or c.fast_open):
                lt.connect = i
    return lives, of_call, created_by


class _Matcher:
    """Connections by 4-tuple, with time to tell reused 4-tuples apart."""

    def __init__(self, views: Sequence[_ConnView], slack: float) -> None:
        self.views = views
        self.slack = slack
        self.by_tuple: dict[tuple[_EpKey, _EpKey], list[_ConnView]] = defaultdict(list)
        self.by_server: dict[_EpKey, list[_ConnView]] = defaultdict(list)
        for v in views:
            ck = (normalize_ip(v.summary.client.ip), v.summary.client.port)
            sk = (normalize_ip(v.summary.server.ip), v.summary.server.port)
            self.by_tuple[(ck, sk)].append(v)
            self.by_server[sk].append(v)

    def _by_time(self, cands: list[_ConnView], t0: float, t1: float) -> _ConnView:
        def distance(v: _ConnView) -> tuple[float, float]:
            lo, hi = v.summary.first_ts - self.slack, v.summary.last_ts + self.slack
            gap = max(0.0, lo - t1, t0 - hi)
            return (gap, abs(v.syn_ts - t0))
        return min(cands, key=distance)

    def by_4tuple(self, local: _EpKey, remote: _EpKey, t0: float, t1: float) -> tuple[_ConnView, Side] | None:
        cands = self.by_tuple.get((local, remote))
        side = "client"
        if not cands:
            cands = self.by_tuple.get((remote, local))
            side = "server"
        if not cands:
            return None
        return (cands[0] if len(cands) == 1 else self._by_time(cands, t0, t1)), side

    def by_connect(self, call: Call, remote: _EpKey, taken: set[int]) -> _ConnView | None:
        """A connect() whose socket never showed a 4-tuple: remote address, outcome, time."""
        slack = self.slack
        cands = []
        for v in self.by_server.get(remote, ()):
            if v.summary.conn in taken:
                continue
            syn = v.first_syn[C2S]
            if syn is None or not (call.start - slack <= syn.ts <= call.end + slack):
                continue
            if call.errno == "ECONNREFUSED" and v.refusing_rst is None:
                continue
            if call.errno is None and v.syn_ack[S2C] is None:
                continue
            cands.append((abs(syn.ts - call.start), v))
        if not cands:
            return None
        cands.sort(key=lambda x: x[0])
        if len(cands) > 1 and cands[1][0] - cands[0][0] < slack / 10:
            return None  # two connections fit about equally well: no guess
        return cands[0][1]


# ======================================================================================
# align
# ======================================================================================


def align(segments: Sequence[Segment], summaries: Sequence[ConnectionSummary],
          calls: Sequence[Call], *, slack: float = SLACK) -> list[Call]:
    """Fill in ``conn`` and ``frames`` of every call by the alignment rules above.

    Returns one new Call per input Call, in the same order; calls that belong to no
    captured connection get ``conn=None`` and ``frames=()``.
    """
    by_conn: dict[int, list[Segment]] = defaultdict(list)
    for s in segments:
        by_conn[s.conn].append(s)
    views = [_view(summ, by_conn.get(summ.conn, ())) for summ in summaries]
    view_of = {v.summary.conn: v for v in views}
    matcher = _Matcher(views, slack)
    lives, of_call, created_by = _lifetimes(calls)

    # 1. connection and side of every fd lifetime with a 4-tuple, then of the rest
    taken: set[int] = set()  # connections whose connect() is already accounted for
    for lt in lives:
        if lt.tuple4 is None:
            continue
        t0 = min(calls[i].start for i in lt.calls)
        t1 = max(calls[i].end for i in lt.calls)
        got = matcher.by_4tuple(lt.tuple4[0], lt.tuple4[1], t0, t1)
        if got is not None:
            lt.conn, lt.side = got[0].summary.conn, got[1]
            if lt.connect is not None:
                taken.add(lt.conn)
    for lt in lives:
        if lt.tuple4 is not None or lt.connect is None:
            continue
        c = calls[lt.connect]
        remote = _key(c.remote) or _key(c.sockaddr)
        if remote is None:
            continue
        v = matcher.by_connect(c, remote, taken)
        if v is not None:
            lt.conn, lt.side = v.summary.conn, "client"
            taken.add(lt.conn)

    # 2. per call: (conn, side)
    place: list[tuple[int, Side] | None] = [None] * len(calls)
    for i, c in enumerate(calls):
        if c.inferred:
            continue
        own = _full_tuple(c)
        got = matcher.by_4tuple(own[0], own[1], c.start, c.end) if own is not None else None
        if got is not None:
            place[i] = (got[0].summary.conn, got[1])
            continue
        # else by its socket's lifetime: the one an accept() created, the one any other call ran on
        li = (created_by if c.kind is _ACCEPT else of_call).get(i)
        if li is not None and lives[li].conn is not None:
            place[i] = (lives[li].conn, lives[li].side)  # type: ignore[assignment]

    # 3. frames, per connection and side
    frames: list[tuple[int, ...]] = [()] * len(calls)
    groups: dict[tuple[int, Side], list[int]] = defaultdict(list)
    for i, p in enumerate(place):
        if p is not None:
            groups[p].append(i)
    for (conn, side), idx in groups.items():
        v = view_of[conn]
        lt_started = any(
            calls[i].kind in (CallKind.CONNECT, CallKind.SOCKET, _ACCEPT)
            or (of_call.get(i) is not None and lives[of_call[i]].created)
            for i in idx
        )
        for i, fr in _frames_for_side(v, side, [(i, calls[i]) for i in idx], lt_started, slack):
            frames[i] = fr

    out: list[Call] = []
    for i, c in enumerate(calls):
        if c.inferred:
            out.append(c)
            continue
        p = place[i]
        out.append(_with(c, p[0] if p else None, frames[i]))
    return out


_CALL_FIELDS = ("pid", "tid", "fd", "call", "start", "end", "ret", "errno", "args", "local", "remote",
                "nbytes", "conn", "frames", "inferred", "kind", "msg_flags", "how", "sockaddr")


def _with(c: Call, conn: int | None, frames: tuple[int, ...]) -> Call:
    """``dataclasses.replace(c, conn=conn, frames=frames)``, several times faster."""
    if _FAST_WITH:
        return Call(c.pid, c.tid, c.fd, c.call, c.start, c.end, c.ret, c.errno, c.args, c.local,
                    c.remote, c.nbytes, conn, frames, c.inferred, c.kind, c.msg_flags, c.how, c.sockaddr)
    return replace(c, conn=conn, frames=frames)


# the positional form is only right while Call has exactly these fields, in this order
_FAST_WITH = tuple(f.name for f in fields(Call)) == _CALL_FIELDS


def _frames_for_side(v: _ConnView, side: Side, items: list[tuple[int, Call]], traced_from_start: bool,
                     slack: float) -> list[tuple[int, tuple[int, ...]]]:
    """Frames of every call of one side of one connection."""
    own, peer = _own_dir(side), _peer(_own_dir(side))
    items = sorted(items, key=lambda x: (x[1].start, x[1].end, x[0]))
    result: dict[int, list[Segment]] = {i: [] for i, _ in items}

    # --- connect / accept / waits / errors --------------------------------------------------
    for i, c in items:
        kind = c.kind
        if kind is CallKind.CONNECT:
            syn = v.first_syn[own]
            if syn is not None:
                result[i].append(syn)
            if c.errno == "EINPROGRESS":
                continue
            if c.errno == "ECONNREFUSED":
                answer = v.refusing_rst if own is C2S else v.rst[peer]
            elif c.errno is None:
                answer = v.syn_ack[peer]
            else:
                answer = None
            if answer is not None:
                result[i].append(answer)
        elif kind is _ACCEPT:
            if c.errno is None:
                released = v.first_syn[C2S] if v.fast_open else v.handshake_ack
                if released is not None:
                    result[i].append(released)
        elif kind is _WAIT:
            ready = _first_ready(v, peer, c, slack)
            if ready is not None:
                result[i].append(ready)
        elif c.errno in ("ECONNRESET", "EPIPE") and kind in (_SEND, _RECV):
            r = v.rst[peer]
            if r is not None and r.ts <= c.end + slack:
                result[i].append(r)

    # a send with MSG_FASTOPEN connects the socket: the first one caused the SYN and, unless
    # it returned before the answer (non-blocking), was released by it, as a connect() is
    fast = next(((i, c) for i, c in items if c.fast_open), None)
    syn = v.first_syn[own]
    if fast is not None and syn is not None:
        i, c = fast
        result[i].append(syn)
        if c.errno == "ECONNREFUSED":
            answer = v.refusing_rst if own is C2S else v.rst[peer]
        else:
            answer = v.syn_ack[peer] if c.errno is None else None
        if answer is not None and answer.ts <= c.end + slack:
            result[i].append(answer)

    # --- bytes written and read --------------------------------------------------------------
    writes = [(i, c) for i, c in items if c.kind is _SEND and _nbytes(c) > 0]
    reads = [(i, c) for i, c in items if c.kind is _RECV and c.errno is None and c.ret is not None]
    _match_bytes(v.streams[own], writes, result, traced_from_start, slack, reading=False)
    data_reads = [(i, c) for i, c in reads if _nbytes(c) > 0]
    _match_bytes(v.streams[peer], data_reads, result, traced_from_start, slack, reading=True)
    peer_syn = v.first_syn[peer]
    if peer is C2S and peer_syn is not None and peer_syn.length > 0 and not v.fast_open:
        # the server dropped the SYN's data (rule 3): its read got the bytes sent again
        resent = _resent(v, peer_syn, v.new_bytes.get(peer_syn.frame, 0))
        for i, _c in data_reads:
            if peer_syn in result[i]:
                result[i] = [s for s in result[i] if s is not peer_syn] + resent
    peer_fin = v.fin[peer]
    for i, c in reads:
        if c.ret == 0 and peer_fin is not None:
            result[i].append(peer_fin)

    # --- shutdown / close ----------------------------------------------------------------------
    fin, rst = v.fin[own], v.rst[own]
    closes = [(i, c) for i, c in items if c.kind is CallKind.CLOSE and c.errno != "EBADF"]
    fin_closed = False  # the FIN was sent by a close(): a later RST answers data, not a call
    if fin is not None and (rst is None or rst.frame > fin.frame):
        owner = next((i for i, c in items if c.kind is CallKind.SHUTDOWN and c.errno is None
                      and c.sends_fin and c.start <= fin.ts + slack), None)
        if owner is None:
            before = [i for i, c in closes if c.start <= fin.ts + slack]
            if before:
                owner, fin_closed = before[-1], True  # the last close releases the socket
        if owner is not None:
            result[owner].append(fin)
    if rst is not None and not fin_closed:
        during = [i for i, c in closes if c.start - slack <= rst.ts <= c.end + slack]
        if during:
            result[during[-1]].append(rst)

    out = []
    for i, _c in items:
        segs = result[i]
        out.append((i, tuple(sorted({s.frame for s in segs}))))
    return out


def _first_ready(v: _ConnView, incoming: Direction, c: Call, slack: float) -> Segment | None:
    """The segment arriving at a side that made a socket ready, nearest the wait's return."""
    i = bisect.bisect_left(v.times, c.start - slack)  # capture order is (nearly) time order
    best: Segment | None = None
    for s in v.segments[i:]:
        if s.ts < c.start - slack:
            continue
        if s.ts > c.end + slack:
            break
        if s.dir is not incoming or Analysis.RETRANSMISSION in s.analysis:
            continue
        ready = s.length > 0 or s.flags & (FIN | RST) or (s.flags & SYN and s.flags & ACK)
        if ready and (best is None or abs(s.ts - c.end) < abs(best.ts - c.end)):
            best = s
    return best


def _match_bytes(stream: _Stream, calls: list[tuple[int, Call]], result: dict[int, list[Segment]],
                 traced_from_start: bool, slack: float, *, reading: bool) -> None:
    """Map each call's byte range in the stream to the segments that first carried it."""
    if not calls or not stream.segs:
        return
    offsets = _offsets(calls, reading)
    # from the start, byte 0 of the stream is relative seq 1; else pin it by time
    base = 1 if traced_from_start and stream.saw_syn else _calibrate(
        stream, calls, offsets, slack, reading=reading)
    if base is None:
        return
    for (i, c), off in zip(calls, offsets):
        lo = base + off
        result[i].extend(stream.overlapping(lo, lo + _nbytes(c)))


def _offsets(calls: list[tuple[int, Call]], reading: bool) -> list[int]:
    """Stream offset of each call's first byte (a peek leaves its bytes in the queue)."""
    out, offset = [], 0
    for _i, c in calls:
        out.append(offset)
        if not (reading and c.peeks):
            offset += _nbytes(c)
    return out


#: How many calls, and how many segments near each, the mid-stream calibration tries.
_CAL_CALLS = 16
_CAL_SEGMENTS = 8


def _calibrate(stream: _Stream, calls: list[tuple[int, Call]], offsets: list[int], slack: float,
               *, reading: bool) -> int | None:
    """Relative seq of byte 0 of the traced calls, when the trace or the capture began mid-stream.

    Candidates put one of the first calls' bytes at a nearby segment's start (or, for a
    read, its last byte at a segment's end: reads drain whole segments); each is scored
    by how well the first calls' times fit the segments they would then own -- a write
    starts just before its first segment leaves, a read returns just after its last
    segment arrived -- and the best fit wins.
    """
    times = [s.ts for s in stream.segs]
    head = list(zip(calls[:_CAL_CALLS], offsets[:_CAL_CALLS]))
    candidates: set[int] = set()
    for (_i, c), off in head:
        t = c.end if reading else c.start
        k = bisect.bisect_left(times, t)
        for j in range(max(0, k - _CAL_SEGMENTS // 2), min(len(times), k + _CAL_SEGMENTS // 2)):
            candidates.add(stream.starts[j] - off)
            if reading:
                candidates.add(stream.ends[j] - off - _nbytes(c))
    if not candidates:
        return None
    first_ts, last_ts = times[0], times[-1]

    def cost(base: int) -> float:
        total = 0.0
        for (_i, c), off in head:
            lo = base + off
            hi = lo + _nbytes(c)
            segs = stream.overlapping(lo, hi)
            if not segs:
                # bytes moved before the capture began or after it ended are no misfit
                before = hi <= stream.starts[0] and c.end < first_ts
                after = lo >= stream.ends[-1] and c.start > last_ts
                total += slack if before or after else 1.0
                continue
            r = c.end - segs[-1].ts if reading else segs[0].ts - c.start
            total += r if r >= 0 else (-10 * r if -r <= slack else 1.0)
        return total

    return min(sorted(candidates), key=cost)


# ======================================================================================
# UDP: each send is one datagram, each receive takes one
# ======================================================================================


def _same_socket(own: Endpoint | None, ep: Endpoint) -> bool:
    """A socket's own address matches a datagram's endpoint: same port, and the same
    address or the wildcard (an unbound UDP socket sends from 0.0.0.0:port as strace
    and getsockname show it, the packet from a real address)."""
    if own is None or own.port != ep.port:
        return False
    ip = normalize_ip(own.ip)
    return ip in ("0.0.0.0", "::") or ip == normalize_ip(ep.ip)


def align_datagrams(datagrams: Sequence[Datagram], flows: Sequence[FlowSummary], calls: Sequence[Call],
                    *, slack: float = SLACK) -> list[Call]:
    """Fill in ``frames`` of the calls on UDP sockets (``conn`` stays None: a flow is no
    connection).  UDP keeps message boundaries, so the rule is one to one: a send from
    an endpoint caused the next datagram that endpoint sent to the call's destination
    (the same length when the call says how many bytes), leaving no earlier than
    ``slack`` before the call started; a receive on an endpoint was released by the
    next datagram that arrived there from the call's peer, before the call returned
    (``slack`` either way).  Calls that already have frames (TCP) are left alone.
    Returns one Call per input Call, in the same order.
    """
    out = list(calls)
    for flow in flows:
        sides = ((flow.client, flow.server, Direction.C2S), (flow.server, flow.client, Direction.S2C))
        mine = [d for d in datagrams if d.flow == flow.flow]
        for local, peer, sent in sides:
            outgoing = [d for d in mine if d.dir is sent]
            incoming = [d for d in mine if d.dir is not sent]
            taken_out: set[int] = set()
            taken_in: set[int] = set()
            order = sorted(range(len(out)), key=lambda i: (out[i].start, i))
            for i in order:
                c = out[i]
                if c.frames or c.conn is not None or c.errno is not None or not _same_socket(c.local, local):
                    continue
                other = c.sockaddr or c.remote
                if other is not None and _key(other) != _key(peer):
                    continue
                if c.kind is _SEND:
                    d = next((d for d in outgoing if d.frame not in taken_out and d.ts >= c.start - slack
                              and (c.nbytes is None or c.nbytes == d.length)), None)
                    if d is not None and d.ts <= c.end + slack:
                        taken_out.add(d.frame)
                        out[i] = _with(c, None, (d.frame,))
                elif c.kind is _RECV and c.ret is not None and c.ret >= 0:
                    d = next((d for d in incoming if d.frame not in taken_in and d.ts <= c.end + slack),
                             None)
                    if d is not None and d.ts >= c.start - slack:
                        taken_in.add(d.frame)
                        out[i] = _with(c, None, (d.frame,))
    return out


def calls_for_flow(flow: FlowSummary, datagrams: Sequence[Datagram], calls: Sequence[Call]) -> list[Call]:
    """The calls to show with a UDP flow: those joined to its datagrams, and the other
    calls on its endpoints' sockets (socket, bind, close) that belong to no TCP
    connection."""
    frames = {d.frame for d in datagrams if d.flow == flow.flow}
    return [c for c in calls if c.conn is None and (
        frames.intersection(c.frames)
        or (not c.frames and (_same_socket(c.local, flow.client) or _same_socket(c.local, flow.server))))]


def accept_queue_delay(call: Call, segments: Sequence[Segment]) -> float | None:
    """Seconds the connection sat in the accept queue before ``accept()`` was called.

    Positive when ``accept()`` started after the handshake ACK (its first frame)
    had arrived; ``None`` when the call has no frames or is not an accept.
    """
    if call.kind is not _ACCEPT or not call.frames:
        return None
    for s in segments:
        if s.frame == call.frames[0] and (call.conn is None or s.conn == call.conn):
            return call.start - s.ts
    return None


# ======================================================================================
# Inferred calls
# ======================================================================================


def infer_calls(segments: Sequence[Segment], summary: ConnectionSummary) -> list[Call]:
    """The calls the segments of one connection imply, marked ``inferred=True``.

    See "Inferred calls" in the module docstring.  Segments of other connections
    are ignored.  The result is in time order.
    """
    v = _view(summary, segments)
    ends = {"client": (summary.client, summary.server), "server": (summary.server, summary.client)}
    out: list[tuple[float, int, int, float, Call]] = []
    # Only a side that had a socket in this connection made calls on it.
    has_socket = {"client": v.client_socket(), "server": v.server_accepted()}

    def add(side: Side, name: str, start: float, end: float, segs: Sequence[Segment], *,
            ret: int | None = 0, errno: str | None = None, nbytes: int | None = None,
            args: str = "") -> bool:
        if not has_socket[side]:
            return False
        local, remote = ends[side]
        call = Call(pid=0, tid=0, fd=None, call=name, start=start, end=end,
                    ret=ret, errno=errno, args=args, local=local, remote=remote, nbytes=nbytes,
                    conn=summary.conn, frames=tuple(sorted({s.frame for s in segs})), inferred=True,
                    msg_flags=("MSG_FASTOPEN",) if args == "MSG_FASTOPEN" else (),
                    how=args if name == "shutdown" else None)
        first = min(s.frame for s in segs) if segs else 0
        out.append((start, first, _infer_rank(call), end, call))
        return True

    # handshake (data in the SYN: the client's call was a sendto(MSG_FASTOPEN), which connects
    # the socket and sends the data in one call)
    syn = v.first_syn[C2S]
    answer = v.refusing_rst or v.syn_ack[S2C]
    quit_ = min((x for x in (v.fin[C2S], v.rst[C2S]) if x is not None), key=lambda x: x.frame, default=None)
    syn_data = v.new_bytes.get(syn.frame, 0) if syn is not None else 0
    opener = "sendto" if syn_data else "connect"
    opener_args = "MSG_FASTOPEN" if syn_data else ""
    opened = False  # the opening call was inferred (and so wrote the SYN's data)
    if syn is not None:
        if quit_ is not None and quit_.frame > syn.frame and (answer is None or quit_.frame < answer.frame):
            # the client closed while its SYN was unanswered: the call had not waited (a
            # non-blocking sendto(MSG_FASTOPEN) returns the bytes it queued in the SYN)
            opened = add("client", opener, syn.ts, syn.ts, [syn], ret=syn_data if syn_data else -1,
                         errno=None if syn_data else "EINPROGRESS", nbytes=syn_data or None,
                         args=opener_args)
        elif v.refusing_rst is not None:
            opened = add("client", opener, syn.ts, v.refusing_rst.ts, [syn, v.refusing_rst],
                         ret=-1, errno="ECONNREFUSED", args=opener_args)
        elif v.syn_ack[S2C] is not None:
            sa = v.syn_ack[S2C]
            assert sa is not None
            opened = add("client", opener, syn.ts, sa.ts, [syn, sa], ret=syn_data,
                         nbytes=syn_data or None, args=opener_args)
    if v.fast_open:
        assert syn is not None
        # Fast Open: the server queued the connection at the SYN, its data already readable
        add("server", "accept", syn.ts, syn.ts, [syn], ret=None)
    elif v.handshake_ack is not None and v.syn_ack[S2C] is not None and v.handshake_ack.dir is C2S:
        a = v.handshake_ack
        add("server", "accept", a.ts, a.ts, [a], ret=None)

    # FINs and RSTs first: whether a side closed decides what its later segments mean
    closed_at: dict[Side, float] = {}
    for side in ("client", "server"):
        own, peer = _own_dir(side), _peer(_own_dir(side))
        fin = v.fin[own]
        if fin is None:
            continue
        later_data = any(s.ts > fin.ts and s.length > 0 for s in v.streams[peer].segs)
        own_rst = v.rst[own]
        if later_data and not (own_rst is not None and own_rst.ts > fin.ts):
            add(side, "shutdown", fin.ts, fin.ts, [fin], args="SHUT_WR")
        else:
            add(side, "close", fin.ts, fin.ts, [fin])
            closed_at[side] = fin.ts
    for side in ("client", "server"):
        own, peer = _own_dir(side), _peer(_own_dir(side))
        rst = v.rst[own]
        if rst is None or rst is v.refusing_rst:
            continue
        other: Side = "server" if side == "client" else "client"
        if side not in closed_at:
            add(side, "close", rst.ts, rst.ts, [rst])
            closed_at[side] = rst.ts
        if other not in closed_at or closed_at[other] > rst.ts:
            add(other, "read", rst.ts, rst.ts, [rst], ret=-1, errno="ECONNRESET")
            closed_at.setdefault(other, rst.ts)
    for side in ("client", "server"):
        peer = _peer(_own_dir(side))
        pfin = v.fin[peer]
        if pfin is None:
            continue
        if side in closed_at and closed_at[side] <= pfin.ts:
            continue  # it had closed: nobody reads the end of the stream
        add(side, "read", pfin.ts, pfin.ts, [pfin], ret=0)

    # data bursts: one write on the sender, one read on the receiver
    for burst in _bursts(v):
        sender: Side = "client" if burst[0].dir is C2S else "server"
        receiver: Side = "server" if sender == "client" else "client"
        n = sum(v.new_bytes[s.frame] for s in burst)
        if burst[0] is syn:
            # the SYN's data: written by the sendto(MSG_FASTOPEN) above; read at the SYN if
            # the server took it (Fast Open), else where the client sent it again
            if not opened:
                add(sender, "write", burst[0].ts, burst[-1].ts, burst, ret=n, nbytes=n)
            if not v.fast_open:
                burst = _resent(v, syn, n)
                if not burst:
                    continue
        else:
            add(sender, "write", burst[0].ts, burst[-1].ts, burst, ret=n, nbytes=n)
        add(receiver, "read", burst[0].ts, burst[-1].ts, burst, ret=n, nbytes=n)

    # time order; at one instant on one segment, the rules' causal order (_infer_rank)
    out.sort(key=lambda x: x[:4])
    return [x[4] for x in out]


def _infer_rank(call: Call) -> int:
    """Order of inferred calls that start at one instant on one segment: the call that
    opened the connection, then accept(), then the data written and read, then the end
    of the stream.  A FIN carrying data was sent by a write() and then a close() -- a
    process writes its last bytes before it closes -- and the reader gets those bytes
    before read() returns 0; a Fast Open SYN's data is read after accept() returned it."""
    kind = call.kind
    if kind is CallKind.CONNECT or call.fast_open:
        return 0
    if kind is _ACCEPT:
        return 1
    if kind in (CallKind.CLOSE, CallKind.SHUTDOWN) or call.errno is not None or (kind is _RECV and call.ret == 0):
        return 3
    return 2


def _resent(v: _ConnView, syn: Segment, n: int) -> list[Segment]:
    """The client's later segments carrying again the ``n`` bytes of a SYN whose data the
    server did not take (the SYN-ACK acknowledged only the SYN), up to the first that
    ends at or past the last of them."""
    out: list[Segment] = []
    for s in v.segments:
        if s.frame <= syn.frame or s.dir is not C2S or s.flags & SYN or s.length <= 0:
            continue
        lo = _unwrap(s.rel_seq, 1)
        if lo < 1 + n and lo + s.length > 1:
            out.append(s)
            if lo + s.length >= 1 + n:
                break
    return out


def _bursts(v: _ConnView) -> list[list[Segment]]:
    """Runs of first-sent data from one side: a PSH, data from the peer, a FIN or a SYN
    (its data was sent by the call that connected) ends one."""
    first_sent = {id(s) for st in v.streams.values() for s in st.segs}
    bursts: list[list[Segment]] = []
    cur: list[Segment] = []
    for s in v.segments:
        if id(s) not in first_sent:
            continue
        if cur and cur[-1].dir is not s.dir:
            bursts.append(cur)
            cur = []
        cur.append(s)
        if s.flags & (PSH | FIN | RST | SYN):
            bursts.append(cur)
            cur = []
    if cur:
        bursts.append(cur)
    return bursts


def calls_for_connection(conn: int, segments: Sequence[Segment], summary: ConnectionSummary,
                         traced_calls: Sequence[Call]) -> list[Call]:
    """The calls to show for one connection: its traced calls if it has any, else inferred.

    ``traced_calls`` is ``align``'s output (calls with ``conn`` filled in); calls marked
    inferred in it are ignored.  The two kinds are never mixed.
    """
    own = [c for c in traced_calls if c.conn == conn and not c.inferred]
    if own:
        return own
    return infer_calls(segments, summary)


_CAUSING = frozenset({_SEND, CallKind.CONNECT, CallKind.CLOSE, CallKind.SHUTDOWN})


def timeline(segments: Sequence[Segment], calls: Sequence[Call]) -> list[Segment | Call]:
    """Segments and (aligned) calls merged into one list for a text ladder.

    In time order -- a call at its start -- except that a call that sends segments
    is never listed after the first segment it caused (strace's clock can print a
    ``connect()`` a little after its SYN was captured), and the calls of one thread
    keep their order (so the ``socket()`` before that ``connect()`` moves up too).
    At equal times calls come before segments.
    """
    ts_of = {s.frame: s.ts for s in segments}
    threads: dict[tuple[int, int, bool], list[int]] = defaultdict(list)
    for n in sorted(range(len(calls)), key=lambda n: (calls[n].start, n)):
        c = calls[n]
        threads[(c.pid, c.tid, c.inferred)].append(n)
    key = [c.start for c in calls]
    for n, c in enumerate(calls):
        if c.kind in _CAUSING and c.frames:
            key[n] = min([key[n]] + [ts_of[f] for f in c.frames if f in ts_of])
    rank = [0] * len(calls)
    for order in threads.values():
        for i in range(len(order) - 2, -1, -1):  # an earlier call never sorts after a later one
            key[order[i]] = min(key[order[i]], key[order[i + 1]])
        for r, n in enumerate(order):
            rank[n] = r
    keyed: list[tuple[float, int, int, int, Segment | Call]] = []
    for n, s in enumerate(segments):
        keyed.append((s.ts, 1, 0, n, s))
    for n, c in enumerate(calls):
        keyed.append((key[n], 0, rank[n], n, c))
    keyed.sort(key=lambda k: k[:4])
    return [k[4] for k in keyed]
