"""Text and JSON Lines renderings of segments, connections and calls.

Pure functions from records to strings: the CLI, live capture and replay all
print through here, so the ladder looks the same wherever it comes from.
"""

from __future__ import annotations

import json
import struct
from json.encoder import encode_basestring_ascii as _json_str  # what json.dumps does to a str
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from handshake_viz.text import clock_text, escape_preview, safe_text
from handshake_viz.timing import CallTiming, Wait, call_timing, call_timings

if TYPE_CHECKING:  # pragma: no cover
    from handshake_viz.kerneljoin import AcceptQueue, KernelConnection, KernelView, SegmentKernel
    from handshake_viz.pipeline import Connection, Trace
from handshake_viz.model import (
    Analysis,
    Call,
    ConnectionSummary,
    Datagram,
    FlowSummary,
    Direction,
    Label,
    Packet,
    Phase,
    Segment,
    TcpState,
    field_picker,
    flag_letters,
)

__all__ = [
    "PACKET_FIELDS",
    "TRACK_FIELDS",
    "PacketFields",
    "TrackFields",
    "both_fields",
    "call_jsonl",
    "connection_header",
    "connection_jsonl",
    "datagram_jsonl",
    "flow_columns",
    "flow_header",
    "format_call",
    "format_datagram",
    "format_flow_summary",
    "format_segment",
    "format_summary",
    "kernel_lines",
    "options_json",
    "packet_fields",
    "segment_jsonl",
    "segment_lines",
    "trace_lines",
    "track_fields",
]

_TS_OPTION = b"\x01\x01\x08\x0a"  # NOP, NOP, timestamps: what Linux puts on every segment
_TS_VALUES = struct.Struct("!4xII").unpack  # ts_val, ts_ecr of those 12 bytes


def options_json(raw: bytes) -> str:
    """The ``options`` object of a segment line, as JSON text (fast for common cases)."""
    if not raw:
        return "{}"
    if len(raw) == 12 and raw.startswith(_TS_OPTION):
        return '{"ts_val": %s, "ts_ecr": %s}' % _TS_VALUES(raw)
    from handshake_viz.model import parse_options

    return json.dumps(parse_options(raw).to_json())


# segment_jsonl builds each line with one %-format (one C call, faster than an f-string
# with as many fields).  The fields that come from a few enum members and a cached
# analysis tuple are pre-rendered once per combination in _TAILS.  %s of an int or str
# and %r of a float give exactly what json.dumps writes for them.
_SEGMENT_LINE = (
    '{"type": "segment", "frame": %s, "ts": %r, "conn": %s, "src": "%s", "sport": %s, '
    '"dst": "%s", "dport": %s, "dir": "%s", "seq": %s, "ack": %s, "rel_seq": %s, '
    '"rel_ack": %s, "len": %s, "flags": "%s", "win": %s, "options": %s, %s'
)
# The same with the common options object (NOP, NOP, timestamps) written in place.
_SEGMENT_LINE_TS = _SEGMENT_LINE.replace(
    '"options": %s, ', '"options": {"ts_val": %s, "ts_ecr": %s}, '
)
_FLAG_TEXT = tuple(flag_letters(bits) for bits in range(256))
_DIR_TEXT = {d: d.value for d in Direction}
_TAILS: dict[tuple[Any, ...], str] = {}


def _segment_tail(key: tuple[Any, ...]) -> str:
    label, phase, analysis, client_state, server_state = key
    text = (
        f'"label": {json.dumps(label.value)}, "phase": {json.dumps(phase.value)}, '
        f'"analysis": {json.dumps([a.value for a in analysis])}, '
        f'"state": {json.dumps({"client": client_state.value, "server": server_state.value})}}}'
    )
    _TAILS[key] = text
    return text


# The JSON Lines writer works on plain tuples, split in what the decoder knows and
# what the tracker adds, so that with two processes (analyze.py) each side can make
# its own half: the parent decodes the file for the first, the child tracks it for
# the second, and only the second crosses the pipe.  Each half is named once, here,
# and picked from Packet's or Segment's own fields by those names.
PACKET_FIELDS: tuple[str, ...] = (
    "frame", "ts", "src", "sport", "dst", "dport", "seq", "ack", "flags", "win", "length",
    "raw_options",
)
"""The decoder's half of a row: the fields of Packet (and Segment) a line writes."""
TRACK_FIELDS: tuple[str, ...] = (
    "conn", "dir", "rel_seq", "rel_ack", "label", "phase", "analysis", "client_state",
    "server_state",
)
"""The tracker's half of a row: what Segment adds to Packet."""
PacketFields = tuple[int, float, str, int, str, int, int, int, int, int, int, bytes]
"""The values of :data:`PACKET_FIELDS`, in that order."""
TrackFields = tuple[
    int, Direction, int, int | None, Label, Phase, tuple[Analysis, ...], TcpState, TcpState
]
"""The values of :data:`TRACK_FIELDS`, in that order."""


UdpFields = tuple[int, float, str, int, str, int, int]
"""A UDP datagram as decoded: frame, ts, src, sport, dst, dport, length"""
FlowFields = tuple[int, Direction]
"""What the flow tracker adds to a datagram: flow, dir"""


def udp_fields(frame: int, ts: float, src: str, sport: int, dst: str, dport: int, length: int,
               payload: bytes = b"", ip_version: int = 4) -> tuple[UdpFields, tuple[()]]:
    """UdpPacket's constructor, returning :data:`UdpFields` (the parent's half, with
    ``reader.records(packet_fields, udp_fields)``)."""
    return (frame, ts, src, sport, dst, dport, length)  # type: ignore[return-value]


def datagram_pair(d: Datagram) -> tuple[UdpFields, FlowFields]:
    """A Datagram as the row :func:`segment_lines` writes."""
    return (d.frame, d.ts, d.src, d.sport, d.dst, d.dport, d.length), (d.flow, d.dir)


def flow_fields(d: Datagram) -> FlowFields:
    """The flow tracker's half of a datagram's row (what the child process sends)."""
    return (d.flow, d.dir)


packet_fields: Callable[..., PacketFields] = field_picker(Packet, PACKET_FIELDS)
"""Shaped like Packet's constructor, returns :data:`PacketFields` (``reader.records(packet_fields)``)."""
track_fields: Callable[..., TrackFields] = field_picker(Segment, TRACK_FIELDS)
"""Shaped like Segment's constructor, returns :data:`TrackFields` (``Tracker(record=track_fields)``)."""
both_fields: Callable[..., tuple[PacketFields, TrackFields]] = field_picker(
    Segment, PACKET_FIELDS, TRACK_FIELDS)
"""Shaped like Segment's constructor, returns both halves (for one process)."""
_segment_halves = attrgetter(*PACKET_FIELDS), attrgetter(*TRACK_FIELDS)


def segment_lines(
    pairs: Iterable[tuple[PacketFields, TrackFields] | tuple[UdpFields, FlowFields]],
    want: int | None = None,
) -> list[str]:
    """One ``"type": "segment"`` line per pair (only connection ``want``'s, if given);
    each equal to ``json.dumps(seg.to_json())`` for the Segment with those fields.  A
    UDP datagram's pair (:data:`UdpFields`, :data:`FlowFields`) gives its
    ``"type": "datagram"`` line (none when ``want`` is given)."""
    lines: list[str] = []
    append = lines.append
    tails, ts_option, ts_values, dir_text, flag_text = _TAILS, _TS_OPTION, _TS_VALUES, _DIR_TEXT, _FLAG_TEXT
    line, line_ts = _SEGMENT_LINE, _SEGMENT_LINE_TS
    # PACKET_FIELDS, then TRACK_FIELDS, in their order (a UDP datagram's row: UdpFields, FlowFields)
    for packet, track in pairs:
        if len(track) == 2:  # a UDP datagram
            if want is None:
                append(_datagram_line(packet, track))  # type: ignore[arg-type]
            continue
        (frame, ts, src, sport, dst, dport, seq, ack, flags, win, length, raw) = packet  # type: ignore[misc]
        (conn, dir, rel_seq, rel_ack, label, phase, analysis, client_state, server_state) = track  # type: ignore[misc]
        if want is not None and conn != want:
            continue
        key = (label, phase, analysis, client_state, server_state)
        tail = tails.get(key) or _segment_tail(key)
        ack_text: int | str = "null" if rel_ack is None else rel_ack
        flag = flag_text[flags] if flags < 256 else flag_letters(flags)
        if len(raw) == 12 and raw.startswith(ts_option):  # options_json's common case, inlined
            val, ecr = ts_values(raw)
            append(line_ts % (frame, ts, conn, src, sport, dst, dport, dir_text[dir], seq, ack,
                              rel_seq, ack_text, length, flag, win, val, ecr, tail))
        else:
            append(line % (frame, ts, conn, src, sport, dst, dport, dir_text[dir], seq, ack,
                           rel_seq, ack_text, length, flag, win, options_json(raw), tail))
    return lines


def segment_jsonl(seg: Segment) -> str:
    """One ``"type": "segment"`` line; equal to ``json.dumps(seg.to_json())`` but faster."""
    packet_half, track_half = _segment_halves
    return segment_lines([(packet_half(seg), track_half(seg))])[0]


_CONNECTION_LINE = (
    '{"type": "connection", "conn": %s, "client": {"ip": %s, "port": %s}, '
    '"server": {"ip": %s, "port": %s}, "first_ts": %r, "last_ts": %r, "segments": %s, '
    '"bytes_c2s": %s, "bytes_s2c": %s, "conn_state": %s, "history": %s, "roles_guessed": %s, '
    '"state": {"client": %s, "server": %s}}'
)


def connection_jsonl(s: ConnectionSummary) -> str:
    """One ``"type": "connection"`` line; equal to ``json.dumps(s.to_json())`` but faster
    (strings go through json's own encoder)."""
    return _CONNECTION_LINE % (
        s.conn, _json_str(s.client.ip), s.client.port, _json_str(s.server.ip), s.server.port,
        s.first_ts, s.last_ts, s.segments, s.bytes_c2s, s.bytes_s2c, _json_str(s.conn_state),
        _json_str(s.history), "true" if s.roles_guessed else "false",
        _json_str(s.client_state.value), _json_str(s.server_state.value),
    )


def call_jsonl(call: Call, timing: CallTiming | None = None) -> str:
    """One ``"type": "call"`` line: ``Call.to_json()``, its one definition, and with a
    ``timing`` how long the call was blocked and on what (``"blocked_ms"``,
    ``"waited_for"``: :mod:`handshake_viz.timing`)."""
    record = call.to_json()
    if timing is not None:
        t = timing.to_json()
        record["waited_for"] = t["waited_for"]
        record["blocked_ms"] = t["blocked_ms"]
    return json.dumps(record)


_DATAGRAM_LINE = (
    '{"type": "datagram", "frame": %s, "ts": %r, "flow": %s, "src": %s, "sport": %s, '
    '"dst": %s, "dport": %s, "dir": "%s", "len": %s}'
)


def _datagram_line(u: UdpFields, f: FlowFields) -> str:
    frame, ts, src, sport, dst, dport, length = u
    return _DATAGRAM_LINE % (frame, ts, f[0], _json_str(src), sport, _json_str(dst), dport, f[1].value,
                             length)


def datagram_jsonl(d: Datagram) -> str:
    """One ``"type": "datagram"`` line: a UDP datagram in its flow (the schema's one
    definition of it)."""
    return _datagram_line(*datagram_pair(d))


# ----------------------------------------------------------------------------------------
# Human-readable ladder
# ----------------------------------------------------------------------------------------


def connection_header(summary: ConnectionSummary) -> str:
    guess = "  (roles guessed from ports: no SYN captured)" if summary.roles_guessed else ""
    return f"conn {summary.conn}: client {summary.client}  →  server {summary.server}{guess}"


def format_segment(seg: Segment, t0: float | None = None, kernel: SegmentKernel | None = None) -> str:
    """One ladder line: frame, time, direction, label, flags, rel seq/ack, len, analysis, states.

    ``t0`` is the time origin (the connection's first segment); default: the segment itself.
    ``kernel`` (with kernel events) adds each socket's state as the kernel reported it
    after this segment, in Linux's names, and what the kernel dropped or retransmitted.
    """
    ms = (seg.ts - (seg.ts if t0 is None else t0)) * 1000.0
    arrow = "→" if seg.dir is Direction.C2S else "←"
    ack = "" if seg.rel_ack is None else f" ack={seg.rel_ack}"
    if seg.length:
        seq = f"seq={seg.rel_seq}:{(seg.rel_seq + seg.length) & 0xFFFFFFFF}"
    else:
        seq = f"seq={seg.rel_seq}"
    detail = f"{seq}{ack} len={seg.length}"
    analysis = f"  [{', '.join(a.value for a in seg.analysis)}]" if seg.analysis else ""
    states = f"{seg.client_state.value:>12} | {seg.server_state.value:<12}"
    if kernel is not None:
        states += f"  {kernel.client or '-':>12} | {kernel.server or '-':<12}"
        analysis += _kernel_marks(kernel)
    return (
        f"{seg.frame:>7} {ms:>10.3f} ms  {arrow} {seg.label.value:<9} {flag_letters(seg.flags):<4} "
        f"{detail:<34} {states}{analysis}"
    )


def _kernel_marks(k: SegmentKernel) -> str:
    marks = []
    if k.drop is not None:
        derived = " (derived: accept queue full)" if k.drop.source.value == "accept-queue" else ""
        marks.append(f"kernel dropped it: {k.drop.reason}{derived}")
    if k.retransmit:
        marks.append("kernel retransmitted")
    if k.reset_reason:
        marks.append(f"RST because {k.reset_reason}")
    return f"  <{'; '.join(marks)}>" if marks else ""


def ladder_columns(kernel: bool = False) -> str:
    text = (
        f"{'frame':>7} {'time':>13}  {'':1} {'label':<9} {'flag':<4} {'seq/ack (relative)':<34} "
        f"{'client':>12} | {'server':<12}"
    )
    return text + f"  {'kernel client':>12} | {'server':<12}" if kernel else text


def format_summary(s: ConnectionSummary) -> str:
    """One line per connection: endpoints, duration, bytes each way, Zeek conn_state/history."""
    guess = " (roles guessed)" if s.roles_guessed else ""
    return (
        f"conn {s.conn}: {s.client} → {s.server}{guess}  {s.segments} segment{'' if s.segments == 1 else 's'}  "
        f"{s.duration * 1000:.3f} ms  {s.bytes_c2s} B →  {s.bytes_s2c} B ←  "
        f"{s.conn_state} {s.history or '-'}  (client {s.client_state.value}, server {s.server_state.value})"
    )


def flow_header(s: FlowSummary) -> str:
    return f"flow {s.flow} (UDP): client {s.client}  →  server {s.server}"


def flow_columns() -> str:
    return f"{'frame':>7} {'time':>13}  {'':1} {'label':<9} {'':<4} {'length':<34} payload"


def format_datagram(d: Datagram, t0: float | None = None) -> str:
    """One ladder line of a UDP datagram: frame, time, direction, length, a preview."""
    ms = (d.ts - (d.ts if t0 is None else t0)) * 1000.0
    arrow = "→" if d.dir is Direction.C2S else "←"
    preview = escape_preview(d.payload, d.length)
    return f"{d.frame:>7} {ms:>10.3f} ms  {arrow} {'UDP':<9} {'':<4} {f'len={d.length}':<34} {preview}".rstrip()


def format_flow_summary(s: FlowSummary) -> str:
    """One line per UDP flow: endpoints, duration, datagrams and bytes each way."""
    back = s.datagrams - s.datagrams_c2s
    return (f"flow {s.flow} (UDP): {s.client} → {s.server}  {s.datagrams} datagram{'' if s.datagrams == 1 else 's'} "
            f"({s.datagrams_c2s} →, {back} ←)  {s.duration * 1000:.3f} ms  {s.bytes_c2s} B →  "
            f"{s.bytes_s2c} B ←  (no handshake, no acknowledgements, no close)")


# How the ladder says what a call waited for (after its duration).
_WAIT_WORDS = {
    Wait.SYN_ACK: "waiting for the SYN-ACK",
    Wait.RST: "until the RST",
    Wait.CONNECTION: "waiting for a connection",
    Wait.DATA: "waiting for data",
    Wait.FIN: "until the FIN",
    Wait.BUFFER_SPACE: "copying into the send buffer",
    Wait.READY: "until ready",
    Wait.NOTHING: "",
}


def timing_note(t: CallTiming) -> str:
    """``[0.080 ms waiting for the SYN-ACK]``, ``[0.002 ms; queued 314.4 ms]``: a call's
    timing in the ladder (empty while it was still blocked)."""
    if t.blocked_ms is None:
        return ""
    words = _WAIT_WORDS[t.waited_for]
    text = clock_text(t.blocked_ms) + (f" {words}" if words else "")
    if t.queued_ms is not None:
        text += f"; queued {clock_text(t.queued_ms)}"
    return f"  [{text}]"


def format_call(call: Call, t0: float | None = None, timing: CallTiming | None = None) -> str:
    ms = (call.start - (call.start if t0 is None else t0)) * 1000.0
    if call.errno is not None:
        result = f"= -1 {safe_text(call.errno)}"
    elif call.ret is not None:
        result = f"= {call.ret}"
    elif call.inferred:
        result = "= ?"  # reconstructed from the segments: the value is not known
    else:
        result = "= ? (unfinished: still blocked when tracing stopped)"
    tag = " (inferred)" if call.inferred else ""
    frames = f"  frames {','.join(map(str, call.frames))}" if call.frames else ""
    fd = "" if call.fd is None else str(call.fd)
    note = timing_note(timing) if timing is not None else ""
    return f"{'':7} {ms:>10.3f} ms  pid {call.pid} {safe_text(call.call)}({fd}) {result}{tag}{frames}{note}"


# ----------------------------------------------------------------------------------------
# A whole Trace
# ----------------------------------------------------------------------------------------


def trace_lines(trace: Trace, mode: str = "ladder", *, conn: int | None = None,
                explain: Callable[[Connection], Iterable[str]] | None = None) -> Iterator[str]:
    """Every line of a Trace's text (``mode`` "ladder" or "summary") or JSON Lines
    ("jsonl") view: each connection's segments and calls in one time-ordered ladder
    (:func:`~handshake_viz.align.timeline`), then each UDP flow's datagrams and calls,
    then the calls on no captured connection; JSONL ends with the connection lines.
    Every call carries its timing (:mod:`handshake_viz.timing`).  ``conn`` shows that
    connection only (no flows, no loose calls); ``explain`` gives lines to print after
    each connection's ladder (``hsviz analyze --explain``)."""
    from handshake_viz.align import timeline

    for c in trace.connections:
        if conn is not None and c.conn != conn:
            continue
        s = c.summary
        events = timeline(c.segments, c.calls)
        timed = {id(t.call): t for t in call_timings(c.calls, c.segments)}
        k = c.kernel
        facts = {f.frame: f for f in k.segments} if k is not None else {}
        if mode == "jsonl":
            for e in events:
                if isinstance(e, Call):
                    yield call_jsonl(e, timed[id(e)])
                elif k is None:
                    yield segment_jsonl(e)
                else:
                    yield _with_kernel(segment_jsonl(e), facts.get(e.frame))
        elif mode == "ladder":
            t0 = c.segments[0].ts if c.segments else s.first_ts
            yield connection_header(s)
            yield ladder_columns(trace.kernel is not None)
            for e in events:
                if isinstance(e, Call):
                    yield format_call(e, t0, timed[id(e)])
                else:
                    yield format_segment(e, t0, facts.get(e.frame) if trace.kernel is not None else None)
            yield format_summary(s)
            if k is not None:
                yield from connection_kernel_lines(k)
            if explain is not None:
                yield ""
                yield from explain(c)
            yield ""

    flows = trace.flows if conn is None else ()
    on_flows: set[int] = set()
    for f in flows:
        on_flows.update(id(c) for c in f.calls)
        events = timeline(f.datagrams, f.calls)  # type: ignore[arg-type]
        untimed: dict[int, Any] = {}  # UDP: no segments release a call
        if mode == "jsonl":
            for e in events:
                yield call_jsonl(e, call_timing(e, untimed)) if isinstance(e, Call) else datagram_jsonl(e)  # type: ignore[arg-type]
        elif mode == "ladder":
            t0 = f.datagrams[0].ts
            yield flow_header(f.summary)
            yield flow_columns()
            for e in events:
                yield format_call(e, t0, call_timing(e, untimed)) if isinstance(e, Call) else format_datagram(e, t0)  # type: ignore[arg-type]
            yield format_flow_summary(f.summary)
            yield ""
    loose = [c for c in trace.calls if c.conn is None and id(c) not in on_flows] if conn is None else []
    if mode == "jsonl":
        yield from (call_jsonl(call, call_timing(call, {})) for call in loose)
        for c in trace.connections:
            if conn is None or c.conn == conn:
                line = connection_jsonl(c.summary)
                yield line if c.kernel is None else _with_kernel_json(line, connection_kernel_json(c.kernel))
        if trace.kernel is not None:
            yield from kernel_jsonl(trace.kernel)
    elif mode == "summary":
        for c in trace.connections:
            if conn is None or c.conn == conn:
                yield format_summary(c.summary)
                if c.kernel is not None:
                    yield from connection_kernel_lines(c.kernel)
        yield from (format_flow_summary(f.summary) for f in flows)
        if trace.kernel is not None:
            yield from kernel_lines(trace.kernel)
    elif loose:
        first = [c.summary.first_ts for c in trace.connections] + [f.summary.first_ts for f in trace.flows]
        t0 = min(first) if first else loose[0].start
        yield "calls on no captured connection:"
        for call in loose:
            yield format_call(call, t0, call_timing(call, {}))
    if mode == "ladder" and trace.kernel is not None:
        if loose:
            yield ""
        yield from kernel_lines(trace.kernel)


# ----------------------------------------------------------------------------------------
# The kernel's account (only with kernel events: X.kernel.jsonl)
# ----------------------------------------------------------------------------------------


def connection_kernel_lines(k: KernelConnection) -> Iterator[str]:
    """After a connection's summary: the agreement line, the time spent in the states
    a lesson is about, drops and retransmissions the kernel reported."""
    from handshake_viz.kerneljoin import agreement_line

    yield agreement_line(k)
    shown = [p for p in k.periods if p.state in _TIMED and p.duration is not None]
    if shown:
        yield "kernel: " + ", ".join(f"{p.side} {p.state.value} {p.duration * 1000:.3f} ms" for p in shown)  # type: ignore[operator]
    for d in k.drops:
        where = f"frame {d.frame}" if d.frame is not None else "a segment not captured"
        how = "derived: the accept queue was full" if d.source.value == "accept-queue" else "kfree_skb"
        yield f"kernel dropped {where}: {d.reason} ({how})"


_TIMED = {TcpState.SYN_SENT, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_2, TcpState.LAST_ACK, TcpState.FIN_WAIT_1}


def _queue_text(q: AcceptQueue) -> str:
    backlog = f"backlog {q.backlog}, Linux queues up to {q.limit}" if q.backlog is not None else "backlog not traced"
    depth = f"up to {q.max_depth} waiting for accept()" if q.dequeues_known else \
        f"{q.max_depth} queued (accept() not traced: the depth only grows)"
    text = f"accept queue of {q.listener}: {depth} ({backlog})"
    if q.overflows:
        frames = ", ".join(str(d.frame) for d in q.overflows)
        text += f"; SYN dropped because it was full: frame {frames}"
    return text


def kernel_lines(view: KernelView) -> Iterator[str]:
    """After the whole ladder: the accept queues, the log's loss and clock."""
    for q in view.listeners:
        yield _queue_text(q)
    log = view.log
    clock = (f"clock offset known to ±{log.sync.uncertainty * 1e6:.1f} µs" if log.sync is not None
             else "clock not calibrated")
    other = f", {log.unattributed_drops} drops elsewhere" if log.unattributed_drops else ""
    yield (f"kernel events: {len(log.events)} from {len(log.recorded)} tracepoints, {log.lost} lost, "
           f"{clock}{other}")
    if log.missing:
        yield f"kernel events not recorded (this kernel lacks them): {', '.join(log.missing)}"


def _with_kernel_json(line: str, obj: dict[str, Any]) -> str:
    """A JSONL object line with ``"kernel": obj`` added at its end."""
    return f'{line[:-1]}, "kernel": {json.dumps(obj)}}}'


def _with_kernel(line: str, facts: SegmentKernel | None) -> str:
    return line if facts is None else _with_kernel_json(line, segment_kernel_json(facts))


def segment_kernel_json(k: SegmentKernel) -> dict[str, Any]:
    """A segment line's ``"kernel"`` object: each socket's state after it (Linux names),
    the receiver's probe values where one matched, a drop, a retransmission."""
    out: dict[str, Any] = {"state": {"client": k.client, "server": k.server}}
    if k.probe is not None:
        out.update(k.probe.values())
    if k.drop is not None:
        out["drop"] = {"reason": k.drop.reason, "source": k.drop.source.value}
    if k.retransmit:
        out["retransmit"] = True
    if k.reset_reason:
        out["reset_reason"] = k.reset_reason
    return out


def connection_kernel_json(k: KernelConnection) -> dict[str, Any]:
    """A connection line's ``"kernel"`` object."""
    def steps(seq: Any) -> list[Any]:
        return [[s.new.value, s.ts] for s in seq]

    return {
        "agree": k.agree,
        "compared": k.compared,
        "states": {"client": steps(k.client_steps), "server": steps(k.server_steps)},
        "checks": [{"side": c.side.value, "frame": c.frame,
                    "inferred": c.inferred.value if c.inferred else None,
                    "kernel": c.kernel.new.value if c.kernel else None,
                    "kernel_ts": c.kernel.ts if c.kernel else None,
                    "verdict": c.verdict.value, "note": c.note} for c in k.checks],
        "periods": [{"side": p.side.value, "state": p.state.value, "start": p.start, "end": p.end}
                    for p in k.periods],
    }


def kernel_jsonl(view: KernelView) -> Iterator[str]:
    """The ``"listener"`` lines (accept queues) and the ``"kernel"`` line (the log)."""
    for q in view.listeners:
        yield json.dumps({
            "type": "listener", "ip": q.listener.ip, "port": q.listener.port, "backlog": q.backlog,
            "max_depth": q.max_depth, "dequeues_known": q.dequeues_known,
            "queue": [[c.ts, c.depth, c.conn, c.cause.value] for c in q.changes],
            "overflows": [d.frame for d in q.overflows],
        })
    log = view.log
    yield json.dumps({
        "type": "kernel", "events": len(log.events), "lost": log.lost,
        "sync": log.sync.to_json() if log.sync else None, "recorded": list(log.recorded),
        "missing": list(log.missing), "unattributed_drops": log.unattributed_drops,
        "drops": [{"ts": d.ts, "reason": d.reason, "source": d.source.value, "frame": d.frame, "conn": d.conn}
                  for d in view.drops],
    })
