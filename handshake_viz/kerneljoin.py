"""The kernel's events beside the Trace: each endpoint's states checked against the
inferred ones, the accept queue over time, the window variables and the drops of
each segment.  Sans-IO: records in, records out (:func:`join`).

Theory of operation
-------------------
Events are joined to connections by addresses and ports, never by pid (the
tracepoints fire in softirq context, in whatever process was running).  A socket
event whose ``local`` is a connection's client and ``remote`` its server is the
client's; the reverse is the server's (the listener's child socket); a state change
of ``local`` = the server with peer port 0 is the listening socket's.  A 4-tuple used
again later (a new SYN) belongs to the connection that had begun by then.

**States.**  Each endpoint's inferred states (those after each segment, RFC 9293)
are lined up with the kernel's state changes of its socket in order (a longest
common subsequence by RFC state), and each inferred step gets a verdict:

* ``agree``: the kernel entered the same state, between the neighbouring steps;
* ``linux``: the kernel reports it differently, as Linux always does
  (:class:`LinuxDifference`: TIME-WAIT reported as CLOSE while a time-wait
  mini-socket holds the pair; a listener's child created at the final ACK, in
  SYN_RECV, so the half-open time lives in a request mini-socket the tracepoint
  does not report);
* ``disagree``: the kernel was elsewhere (the note says where).

Kernel changes matched to no inferred step (the microsecond FIN_WAIT2 before
TIME-WAIT when the peer's FIN carries the ACK) are kept as ``kernel-only``.

**The accept queue** has no tracepoint of its own on this kernel (the listener
gets no ``tcp_probe``; nothing reports ``sk_ack_backlog``), so its depth is derived:
a child entering ESTABLISHED (a completed handshake, queued by the kernel) adds
one; the traced ``accept()`` that returned that connection takes one away.  The
backlog is ``listen()``'s argument (Linux queues up to backlog + 1).  A SYN that
got no SYN-ACK while the queue was full is the overflow drop Linux does not
report with a reason (it frees such a SYN with ``consume_skb``).

**Segments.**  A probe belongs to the segment that arrived at its socket just
before it with the same payload length, among those that arrived in ESTABLISHED
(``tcp_probe`` is called only there), in order.  A drop belongs to the last
segment sent to its receiver before it; a retransmission to the sender's segment
nearest in time (SYNs for a SYN_SENT socket); a RST event to the RST nearest in time.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from handshake_viz.kernel import (
    Drop,
    KernelLog,
    LinuxState,
    Probe,
    Reset,
    Retransmit,
    StateChange,
)
from handshake_viz.model import Call, CallKind, ConnectionSummary, Direction, Endpoint, Flag, Segment, TcpState, Word

__all__ = [
    "AcceptQueue",
    "DropSource",
    "KernelConnection",
    "KernelDrop",
    "KernelStep",
    "KernelView",
    "LinuxDifference",
    "QueueChange",
    "SegmentKernel",
    "Side",
    "StateCheck",
    "StatePeriod",
    "Verdict",
    "join",
]

#: Seconds a kernel event may stray from the frame it is joined to (the measured
#: clock residual is under a microsecond; processing on loopback takes tens of µs).
TOLERANCE = 0.001
#: Seconds a drop may follow the arrival of the segment it dropped.
_DROP_LAG = 0.1


class Side(Word):
    CLIENT = "client"
    SERVER = "server"


class Verdict(Word):
    """How the kernel's account of one inferred state step compares."""

    AGREE = "agree"
    LINUX = "linux"  # Linux reports it differently, as it always does (see LinuxDifference)
    DISAGREE = "disagree"
    KERNEL_ONLY = "kernel-only"  # a kernel change no inferred step stands for


class LinuxDifference(Word):
    """Where Linux's account differs from RFC 9293's state machine, always."""

    TIME_WAIT_MINISOCKET = "time-wait-minisocket"
    CHILD_AT_FINAL_ACK = "child-at-final-ack"
    REQUEST_SOCKET = "request-socket"

    @property
    def explanation(self) -> str:
        return _EXPLAIN[self]

    @property
    def short(self) -> str:
        """A few words for the agreement line."""
        return _SHORT[self]


_SHORT = {
    LinuxDifference.TIME_WAIT_MINISOCKET: "reported as CLOSE: a time-wait mini-socket holds the pair",
    LinuxDifference.CHILD_AT_FINAL_ACK: "the socket is made at the final ACK; the half-open time is unreported",
    LinuxDifference.REQUEST_SOCKET: "a request mini-socket, never reported: the handshake did not complete",
}


_EXPLAIN = {
    LinuxDifference.TIME_WAIT_MINISOCKET: (
        "Linux reports TIME-WAIT as a move to CLOSE: a time-wait mini-socket takes over the "
        "address pair (for 60 s) and is not reported"),
    LinuxDifference.CHILD_AT_FINAL_ACK: (
        "Linux keeps a half-open connection in a request mini-socket (TCP_NEW_SYN_RECV) the "
        "tracepoint does not report; the server's socket is created at the final ACK, in "
        "SYN_RECV, and becomes ESTABLISHED at once"),
    LinuxDifference.REQUEST_SOCKET: (
        "the handshake never completed: Linux held the half-open connection in a request "
        "mini-socket (TCP_NEW_SYN_RECV), which the tracepoint does not report"),
}


class DropSource(Word):
    """Where a drop is known from."""

    KFREE_SKB = "kfree_skb"  # the kernel said so, with its reason
    ACCEPT_QUEUE = "accept-queue"  # derived: a SYN unanswered while the accept queue was full


# ======================================================================================
# Records
# ======================================================================================


@dataclass(frozen=True, slots=True)
class KernelStep:
    """A state an endpoint's socket entered, as the kernel reported it.  ``rfc`` is the
    RFC 9293 state it stands for (TIME-WAIT for a FIN_WAIT2 -> CLOSE); ``ts`` is None
    for a state the socket was already in when recording began (a listener)."""

    ts: float | None
    side: Side
    old: LinuxState | None
    new: LinuxState
    rfc: TcpState
    difference: LinuxDifference | None = None

    @property
    def shown(self) -> str:
        """The kernel's name, marked where a mini-socket holds the real state."""
        return "CLOSE+tw" if self.difference is LinuxDifference.TIME_WAIT_MINISOCKET else self.new.value


@dataclass(frozen=True, slots=True)
class StateCheck:
    """One inferred state step (``frame``: the segment after which the endpoint is in
    ``inferred``) beside the kernel's (``kernel``: None when the kernel reported no such
    change), or a kernel-only change (``inferred`` None, ``frame`` the last segment
    before it).  ``difference`` names a Linux difference (verdict ``linux``); ``note``
    explains a disagreement or the difference."""

    side: Side
    frame: int | None
    inferred: TcpState | None
    kernel: KernelStep | None
    verdict: Verdict
    note: str = ""
    difference: LinuxDifference | None = None


@dataclass(frozen=True, slots=True)
class StatePeriod:
    """How long an endpoint's socket stayed in a state, by the kernel's clock (``end``
    None: still in it when recording stopped, or a state whose end Linux does not report)."""

    side: Side
    state: TcpState
    linux: LinuxState
    start: float
    end: float | None

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True, slots=True)
class KernelDrop:
    """A segment the kernel dropped: ``frame`` the captured frame (None: not captured or
    not found), ``receiver``/``sender`` its endpoints (sender None when unknown)."""

    ts: float
    reason: str
    source: DropSource
    frame: int | None = None
    conn: int | None = None
    receiver: Endpoint | None = None
    sender: Endpoint | None = None
    location: str = ""


@dataclass(frozen=True, slots=True)
class SegmentKernel:
    """What the kernel said about one segment.  ``client``/``server``: each socket's
    state after it (Linux names; None before the kernel reported the socket);
    ``probe``: the receiver's variables as it arrived; ``drop``: it was dropped;
    ``retransmit``: the kernel retransmitted it; ``reset_reason``: why the kernel sent
    this RST."""

    frame: int
    client: str | None = None
    server: str | None = None
    probe: Probe | None = None
    drop: KernelDrop | None = None
    retransmit: bool = False
    reset_reason: str | None = None


@dataclass(frozen=True, slots=True)
class KernelConnection:
    """The kernel's account of one connection.

    ``client_steps``/``server_steps``: each socket's state sequence with times (the
    server's is the listener's child; a leading LISTEN stands for the listener);
    ``checks``: the inferred steps and kernel-only changes compared, in frame order;
    ``periods``: time in each state; ``segments``: per-frame facts, in frame order."""

    conn: int
    client_steps: tuple[KernelStep, ...]
    server_steps: tuple[KernelStep, ...]
    checks: tuple[StateCheck, ...]
    periods: tuple[StatePeriod, ...]
    segments: tuple[SegmentKernel, ...]
    drops: tuple[KernelDrop, ...] = ()

    @property
    def compared(self) -> int:
        """Inferred steps the kernel could speak to (all but kernel-only changes)."""
        return sum(1 for c in self.checks if c.verdict is not Verdict.KERNEL_ONLY)

    @property
    def agree(self) -> int:
        return sum(1 for c in self.checks if c.verdict is Verdict.AGREE)

    def segment(self, frame: int) -> SegmentKernel | None:
        for s in self.segments:
            if s.frame == frame:
                return s
        return None

    def period(self, side: Side, state: TcpState) -> StatePeriod | None:
        """The first time ``side`` spent in ``state`` (None if it never was)."""
        return next((p for p in self.periods if p.side is side and p.state is state), None)


class QueueCause(Word):
    QUEUED = "queued"  # the handshake completed: the kernel queued the connection
    ACCEPTED = "accepted"  # accept() returned it


@dataclass(frozen=True, slots=True)
class QueueChange:
    """The accept queue's depth after a connection was queued or accepted."""

    ts: float
    depth: int
    conn: int | None
    cause: QueueCause


@dataclass(frozen=True, slots=True)
class AcceptQueue:
    """A listening socket's accept queue over time (derived: see the module notes).

    ``backlog`` is listen()'s argument when it was traced; Linux queues up to
    ``backlog + 1`` (``limit``).  ``dequeues_known`` is False without traced accept()
    calls: the depth then only ever grows.  ``overflows``: SYNs dropped because it was
    full."""

    listener: Endpoint
    backlog: int | None
    changes: tuple[QueueChange, ...]
    dequeues_known: bool
    overflows: tuple[KernelDrop, ...] = ()

    @property
    def limit(self) -> int | None:
        return None if self.backlog is None else self.backlog + 1

    @property
    def max_depth(self) -> int:
        return max((c.depth for c in self.changes), default=0)

    def depth_at(self, ts: float) -> int:
        depth = 0
        for c in self.changes:
            if c.ts > ts:
                break
            depth = c.depth
        return depth


@dataclass(frozen=True, slots=True)
class KernelView:
    """The kernel's account of a whole Trace (``Trace.kernel``)."""

    log: KernelLog
    connections: tuple[KernelConnection, ...]
    listeners: tuple[AcceptQueue, ...] = ()
    drops: tuple[KernelDrop, ...] = ()  # every drop, joined to a frame or not
    path: Path | None = field(default=None, compare=False)

    def connection(self, conn: int) -> KernelConnection | None:
        for k in self.connections:
            if k.conn == conn:
                return k
        return None


# ======================================================================================
# Joining
# ======================================================================================

_Tuple = tuple[Endpoint, Endpoint]


class _Index:
    """Which connection a (local, remote) pair at a time belongs to."""

    def __init__(self, summaries: Sequence[ConnectionSummary]) -> None:
        self.by_pair: dict[_Tuple, list[tuple[float, int, Side]]] = defaultdict(list)
        for s in summaries:
            self.by_pair[(s.client, s.server)].append((s.first_ts, s.conn, Side.CLIENT))
            self.by_pair[(s.server, s.client)].append((s.first_ts, s.conn, Side.SERVER))
        for v in self.by_pair.values():
            v.sort()

    def find(self, local: Endpoint | None, remote: Endpoint | None, ts: float) -> tuple[int, Side] | None:
        if local is None or remote is None:
            return None
        found = self.by_pair.get((local, remote))
        if not found:
            return None
        i = bisect_right([f[0] for f in found], ts + 10 * TOLERANCE) - 1
        first_ts, conn, side = found[max(i, 0)]
        return conn, side


def join(log: KernelLog, connections: Sequence[tuple[ConnectionSummary, Sequence[Segment]]],
         calls: Sequence[Call] = (), *, path: Path | None = None) -> KernelView:
    """The kernel's account of ``connections`` (summary and segments each) from the events
    of ``log`` (on the capture's clock), with the traced ``calls`` for accept() and
    listen().  Events on no connection are left out, except listeners' and drops."""
    summaries = [s for s, _ in connections]
    index = _Index(summaries)
    per_conn: dict[int, dict[Side, list[StateChange]]] = defaultdict(lambda: {Side.CLIENT: [], Side.SERVER: []})
    probes: dict[tuple[int, Side], list[Probe]] = defaultdict(list)
    retransmits: dict[int, list[Retransmit]] = defaultdict(list)
    resets: dict[int, list[Reset]] = defaultdict(list)
    listener_changes: dict[Endpoint, list[StateChange]] = defaultdict(list)
    drops: list[Drop] = []
    for e in log.events:
        if isinstance(e, Drop):
            drops.append(e)
            continue
        if not isinstance(e, (StateChange, Probe, Retransmit, Reset)):
            continue
        if isinstance(e, StateChange) and e.remote.port == 0:
            listener_changes[e.local].append(e)
            continue
        hit = index.find(e.local, e.remote, e.ts)
        if hit is None:
            continue
        conn, side = hit
        if isinstance(e, StateChange):
            per_conn[conn][side].append(e)
        elif isinstance(e, Probe):
            probes[(conn, side)].append(e)
        elif isinstance(e, Retransmit):
            retransmits[conn].append(e)
        else:
            resets[conn].append(e)
    segs_of = {s.conn: list(segs) for s, segs in connections}
    all_segments = sorted((g for segs in segs_of.values() for g in segs), key=lambda g: g.frame)
    joined_drops = [_join_drop(d, index, all_segments) for d in drops]
    listeners = _listeners(summaries, per_conn, listener_changes, calls, segs_of)
    overflow_drops = [d for q in listeners for d in q.overflows]
    every_drop = joined_drops + overflow_drops
    kconns = []
    for summary, segs in connections:
        changes = per_conn.get(summary.conn, {Side.CLIENT: [], Side.SERVER: []})
        kconns.append(_connection(summary, list(segs), changes, listener_changes.get(summary.server, []),
                                  probes, retransmits.get(summary.conn, []), resets.get(summary.conn, []),
                                  [d for d in every_drop if d.conn == summary.conn]))
    return KernelView(log, tuple(kconns), tuple(listeners), tuple(sorted(every_drop, key=lambda d: d.ts)),
                      path)


# -- states -----------------------------------------------------------------------------


def _kernel_steps(side: Side, changes: Sequence[StateChange], resets: Sequence[Reset],
                  listener: Sequence[StateChange], first_ts: float) -> list[KernelStep]:
    received_rst = [r.ts for r in resets if not r.sent]
    steps: list[KernelStep] = []
    if side is Side.SERVER:
        listening, since = _listening_at(listener, first_ts, changes)
        if listening:
            steps.append(KernelStep(since, side, None, LinuxState.LISTEN, TcpState.LISTEN))
    for ch in changes:
        rfc, diff = ch.new.rfc, None
        if ch.new is LinuxState.CLOSE and ch.old in (LinuxState.FIN_WAIT2, LinuxState.CLOSING) \
                and not any(abs(t - ch.ts) <= TOLERANCE for t in received_rst):
            rfc, diff = TcpState.TIME_WAIT, LinuxDifference.TIME_WAIT_MINISOCKET
        elif ch.old is LinuxState.LISTEN and ch.new is LinuxState.SYN_RECV:
            diff = LinuxDifference.CHILD_AT_FINAL_ACK
        steps.append(KernelStep(ch.ts, side, ch.old, ch.new, rfc, diff))
    return steps


def _listening_at(listener: Sequence[StateChange], ts: float,
                  child: Sequence[StateChange]) -> tuple[bool, float | None]:
    """Whether the listener was in LISTEN at ``ts``, and since when (None: since before
    the recording began).  The child's first change (from LISTEN) proves a listener."""
    if child and child[0].old is LinuxState.LISTEN:
        since = [c.ts for c in listener if c.new is LinuxState.LISTEN and c.ts <= child[0].ts]
        return True, since[-1] if since else None
    before = [c for c in listener if c.ts <= ts]
    if before:
        return before[-1].new is LinuxState.LISTEN, before[-1].ts
    return bool(listener) and listener[0].old is LinuxState.LISTEN, None


def _inferred_steps(side: Side, segs: Sequence[Segment]) -> list[tuple[int, float, TcpState]]:
    steps = []
    prev = TcpState.CLOSED
    for g in segs:
        st = g.client_state if side is Side.CLIENT else g.server_state
        if st is not prev:
            steps.append((g.frame, g.ts, st))
            prev = st
    return steps


def _lcs(a: Sequence[TcpState], b: Sequence[TcpState]) -> list[tuple[int, int]]:
    """Index pairs of a longest common subsequence (small inputs: states change rarely)."""
    n, m = len(a), len(b)
    if n * m > 250_000:  # a pathological connection: pair greedily in order
        pairs, j = [], 0
        for i, x in enumerate(a):
            k = next((k for k in range(j, m) if b[k] is x), None)
            if k is not None:
                pairs.append((i, k))
                j = k + 1
        return pairs
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if a[i] is b[j] else max(table[i + 1][j], table[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] is b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _check_side(side: Side, segs: Sequence[Segment], steps: Sequence[KernelStep], observed: bool,
                no_socket: bool) -> list[StateCheck]:
    inferred = _inferred_steps(side, segs)
    pairs = dict(_lcs([s[2] for s in inferred], [k.rfc for k in steps]))
    matched = set(pairs.values())
    checks: list[StateCheck] = []
    for i, (frame, ts, state) in enumerate(inferred):
        lo = inferred[i - 1][1] - TOLERANCE if i else float("-inf")
        hi = inferred[i + 1][1] + TOLERANCE if i + 1 < len(inferred) else float("inf")
        k = steps[pairs[i]] if i in pairs else None
        if k is not None:
            if k.ts is not None and not lo <= k.ts <= hi:
                checks.append(StateCheck(side, frame, state, k, Verdict.DISAGREE,
                                         f"the kernel entered {k.new} away from this segment"))
            elif k.difference is not None:
                checks.append(StateCheck(side, frame, state, k, Verdict.LINUX, k.difference.explanation,
                                         k.difference))
            else:
                checks.append(StateCheck(side, frame, state, k, Verdict.AGREE))
            continue
        if no_socket:
            if state is TcpState.CLOSED:
                checks.append(StateCheck(side, frame, state, None, Verdict.AGREE, "no socket"))
            else:
                checks.append(StateCheck(side, frame, state, None, Verdict.DISAGREE,
                                         "no socket had the port: the kernel dropped the segment "
                                         "(NO_SOCKET) and answered with a RST"))
        elif state is TcpState.SYN_RECEIVED and not any(k.new is LinuxState.SYN_RECV for k in steps):
            checks.append(StateCheck(side, frame, state, None, Verdict.LINUX,
                                     LinuxDifference.REQUEST_SOCKET.explanation, LinuxDifference.REQUEST_SOCKET))
        elif observed:
            now = [k for k in steps if k.ts is None or k.ts <= ts + TOLERANCE]
            where = now[-1].shown if now else "no socket yet"
            checks.append(StateCheck(side, frame, state, None, Verdict.DISAGREE, f"kernel: {where}"))
    for j, k in enumerate(steps):
        if j not in matched and k.ts is not None:
            checks.append(StateCheck(side, _nearest_frame(segs, k.ts), None, k, Verdict.KERNEL_ONLY))
    return checks


def _nearest_frame(segs: Sequence[Segment], ts: float) -> int | None:
    """The last segment at or before ``ts`` (the first one if none is)."""
    best = None
    for g in segs:
        if g.ts <= ts:
            best = g.frame
        else:
            break
    return best if best is not None else (segs[0].frame if segs else None)


def _periods(side: Side, steps: Sequence[KernelStep], stop: float | None) -> list[StatePeriod]:
    out = []
    timed = [k for k in steps if k.ts is not None]
    for a, b in zip(timed, timed[1:] + [None]):
        if a.new is LinuxState.CLOSE and a.difference is None:
            continue  # closed: not a state the socket stays in
        assert a.ts is not None
        end = b.ts if b is not None else None
        out.append(StatePeriod(side, a.rfc, a.new, a.ts, end))
    return out


def _connection(summary: ConnectionSummary, segs: list[Segment], changes: Mapping[Side, list[StateChange]],
                listener: Sequence[StateChange], probes: Mapping[tuple[int, Side], list[Probe]],
                retransmits: Sequence[Retransmit], resets: Sequence[Reset],
                drops: Sequence[KernelDrop]) -> KernelConnection:
    conn = summary.conn
    client_resets = [r for r in resets if r.local == summary.client]
    server_resets = [r for r in resets if r.local == summary.server]
    client_steps = _kernel_steps(Side.CLIENT, changes[Side.CLIENT], client_resets, (), summary.first_ts)
    server_steps = _kernel_steps(Side.SERVER, changes[Side.SERVER], server_resets, listener, summary.first_ts)
    no_socket = not server_steps and any(r.sent and r.state is None and r.reason == "NO_SOCKET"
                                          for r in server_resets)
    checks = (_check_side(Side.CLIENT, segs, client_steps, bool(client_steps), False)
              + _check_side(Side.SERVER, segs, server_steps, bool(server_steps), no_socket))
    order = {g.frame: n for n, g in enumerate(segs)}
    checks.sort(key=lambda c: (order.get(c.frame, -1) if c.frame is not None else -1,
                               c.kernel.ts if c.kernel is not None and c.kernel.ts is not None else 0.0))
    periods = _periods(Side.CLIENT, client_steps, None) + _periods(Side.SERVER, server_steps, None)
    facts = _segment_facts(summary, segs, checks, probes, retransmits, resets, drops)
    return KernelConnection(conn, tuple(client_steps), tuple(server_steps), tuple(checks),
                            tuple(sorted(periods, key=lambda p: p.start)), facts, tuple(drops))


def _segment_facts(summary: ConnectionSummary, segs: Sequence[Segment], checks: Sequence[StateCheck],
                   probes: Mapping[tuple[int, Side], list[Probe]], retransmits: Sequence[Retransmit],
                   resets: Sequence[Reset], drops: Sequence[KernelDrop]) -> tuple[SegmentKernel, ...]:
    conn = summary.conn
    # each socket's latest change (by the kernel's clock) among those joined to a frame so far
    state_at: dict[int, list[tuple[float, Side, str]]] = defaultdict(list)
    next_ts = {a.frame: b.ts for a, b in zip(segs, segs[1:])}
    for c in checks:
        if c.kernel is None or c.frame is None:
            continue
        t = c.kernel.ts if c.kernel.ts is not None else float("-inf")
        frame = c.frame
        if t > next_ts.get(frame, float("inf")):  # reported after the next segment: shown there
            frame = _nearest_frame(segs, t) or frame
        state_at[frame].append((t, c.side, c.kernel.shown))
    probe_of = {**_match_probes(segs, probes.get((conn, Side.SERVER), []), Direction.C2S),
                **_match_probes(segs, probes.get((conn, Side.CLIENT), []), Direction.S2C)}
    again = {f for r in retransmits if (f := _retransmitted_frame(r, summary, segs)) is not None}
    rst_reason = {}
    for r in resets:
        if r.sent:
            f = _nearest(segs, r.ts, lambda g: bool(g.flags & Flag.RST) and g.src == r.local.ip
                         and g.sport == r.local.port)
            if f is not None and r.reason:
                rst_reason[f] = r.reason
    dropped = {d.frame: d for d in drops if d.frame is not None}
    out = []
    now: dict[Side, tuple[float, str | None]] = {Side.CLIENT: (float("-inf"), None),
                                                  Side.SERVER: (float("-inf"), None)}
    for g in segs:
        for t, side, shown in state_at.get(g.frame, ()):
            if now[side][1] is None or t >= now[side][0]:
                now[side] = (t, shown)
        out.append(SegmentKernel(g.frame, now[Side.CLIENT][1], now[Side.SERVER][1], probe_of.get(g.frame),
                                 dropped.get(g.frame), g.frame in again, rst_reason.get(g.frame)))
    return tuple(out)


def _match_probes(segs: Sequence[Segment], probes: Sequence[Probe], direction: Direction) -> dict[int, Probe]:
    """Each probe to the segment it was taken for (see the module notes)."""
    receiver_state = [TcpState.CLOSED]
    for g in segs:
        receiver_state.append(g.server_state if direction is Direction.C2S else g.client_state)
    candidates = [g for n, g in enumerate(segs) if g.dir is direction and receiver_state[n] is TcpState.ESTABLISHED]
    out: dict[int, Probe] = {}
    i = 0
    for p in sorted(probes, key=lambda p: p.ts):
        j = i
        while j < len(candidates) and candidates[j].ts <= p.ts + TOLERANCE:
            if candidates[j].length == p.data_len:
                out[candidates[j].frame] = p
                i = j + 1
                break
            j += 1
    return out


def _nearest(segs: Sequence[Segment], ts: float, want: Callable[[Segment], bool]) -> int | None:
    """The segment ``want`` accepts nearest to ``ts`` (within 10 ms), if any."""
    best, gap = None, TOLERANCE * 10
    for g in segs:
        if want(g) and abs(g.ts - ts) <= gap:
            best, gap = g.frame, abs(g.ts - ts)
    return best


def _retransmitted_frame(r: Retransmit, summary: ConnectionSummary, segs: Sequence[Segment]) -> int | None:
    def sent_by(g: Segment) -> bool:
        if g.src != r.local.ip or g.sport != r.local.port:
            return False
        if r.synack:
            return bool(g.flags & Flag.SYN and g.flags & Flag.ACK)
        if r.state is LinuxState.SYN_SENT:
            return bool(g.flags & Flag.SYN)
        return True

    return _nearest(segs, r.ts, sent_by)


def _join_drop(d: Drop, index: _Index, segments: Sequence[Segment]) -> KernelDrop:
    """The frame a drop dropped: the last segment to its receiver (from its sender, when
    known) captured at most ``_DROP_LAG`` before it."""
    frame = conn = None
    for g in segments:
        if g.ts > d.ts + TOLERANCE:
            break
        if d.local is None or g.dst != d.local.ip or g.dport != d.local.port:
            continue
        if d.remote is not None and (g.src != d.remote.ip or g.sport != d.remote.port):
            continue
        if g.ts >= d.ts - _DROP_LAG:
            frame, conn = g.frame, g.conn
    if conn is None and d.local is not None and d.remote is not None:
        hit = index.find(d.local, d.remote, d.ts)
        conn = hit[0] if hit else None
    return KernelDrop(d.ts, d.reason, DropSource.KFREE_SKB, frame, conn, d.local, d.remote, d.location)


# -- the accept queue ---------------------------------------------------------------------

_LAST_INT = re.compile(r"(-?\d+)\s*$")


def listen_backlog(call: Call) -> int | None:
    """listen()'s backlog: its last argument (``3, 8`` from strace, ``8`` from the demo)."""
    m = _LAST_INT.search(call.args)
    return int(m.group(1)) if m else None


def _listeners(summaries: Sequence[ConnectionSummary], per_conn: Mapping[int, Mapping[Side, list[StateChange]]],
               listener_changes: Mapping[Endpoint, list[StateChange]], calls: Sequence[Call],
               segs_of: Mapping[int, list[Segment]]) -> list[AcceptQueue]:
    children: dict[Endpoint, list[tuple[float, int]]] = defaultdict(list)  # listener -> (queued at, conn)
    for s in summaries:
        changes = per_conn.get(s.conn, {}).get(Side.SERVER, [])
        if not any(c.old is LinuxState.LISTEN for c in changes):
            continue
        done = next((c.ts for c in changes if c.new is LinuxState.ESTABLISHED), None)
        if done is not None:
            children[s.server].append((done, s.conn))
    out = []
    for listener in sorted(set(children) | {e for e, ch in listener_changes.items()
                                           if any(c.new is LinuxState.LISTEN for c in ch)},
                           key=lambda e: (e.ip, e.port)):
        queued = sorted(children.get(listener, []))
        conns = {c for _, c in queued}
        accepts = [(c.end, c.conn) for c in calls if c.kind is CallKind.ACCEPT and not c.inferred
                   and c.ret is not None and c.ret >= 0 and c.conn in conns]
        listens = [c for c in calls if c.kind is CallKind.LISTEN and not c.inferred and c.errno is None
                   and c.local is not None and c.local.port == listener.port]
        first = queued[0][0] if queued else float("inf")
        backlog = next((listen_backlog(c) for c in reversed(listens) if c.start <= first), None)
        events = sorted([(t, 0, c, QueueCause.QUEUED) for t, c in queued]
                        + [(t, 1, c, QueueCause.ACCEPTED) for t, c in accepts])
        depth = 0
        moves: list[QueueChange] = []
        for t, _, c, cause in events:
            depth += 1 if cause is QueueCause.QUEUED else -1
            moves.append(QueueChange(t, max(depth, 0), c, cause))
        known = bool(accepts)
        q = AcceptQueue(listener, backlog, tuple(moves), known)
        overflows = _overflows(q, summaries, segs_of) if known and backlog is not None else []
        out.append(AcceptQueue(listener, backlog, tuple(moves), known, tuple(overflows)))
    return out


def _overflows(q: AcceptQueue, summaries: Sequence[ConnectionSummary],
               segs_of: Mapping[int, list[Segment]]) -> list[KernelDrop]:
    """SYNs to the listener that got no SYN-ACK while its queue was full."""
    assert q.limit is not None
    out = []
    for s in summaries:
        if s.server != q.listener:
            continue
        segs = segs_of.get(s.conn, [])
        for n, g in enumerate(segs):
            if not (g.dir is Direction.C2S and g.flags & Flag.SYN and not g.flags & Flag.ACK):
                continue
            answered = False
            for later in segs[n + 1:]:
                if later.dir is Direction.S2C and later.flags & Flag.SYN:
                    answered = True
                    break
                if later.dir is Direction.C2S and later.flags & Flag.SYN:
                    break  # the SYN was sent again first: this one went unanswered
            else:
                answered = True  # nothing after it: cannot tell
            if not answered and q.depth_at(g.ts) >= q.limit:
                out.append(KernelDrop(g.ts, "TCP_LISTEN_OVERFLOW", DropSource.ACCEPT_QUEUE, g.frame, s.conn,
                                      q.listener, s.client, "accept queue full (derived)"))
    return out


def agreement_line(k: KernelConnection) -> str:
    """``kernel states: 8 of 10 agree; 2 as Linux reports them: …; 0 disagree``."""
    linux = [c for c in k.checks if c.verdict is Verdict.LINUX]
    bad = [c for c in k.checks if c.verdict is Verdict.DISAGREE]
    text = f"kernel states: {k.agree} of {k.compared} agree"
    if linux:
        text += "; as Linux reports them: " + ", ".join(
            f"{c.side} {c.inferred.value if c.inferred else '?'} ({c.difference.short if c.difference else c.note})"
            for c in linux)
    if bad:
        text += "; disagree: " + "; ".join(
            f"{c.side} {c.inferred.value if c.inferred else '?'} after frame {c.frame} ({c.note})" for c in bad)
    return text
