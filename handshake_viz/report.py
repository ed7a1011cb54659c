"""Text and JSON Lines renderings of segments, connections and calls.

Pure functions from records to strings: the CLI, live capture and replay all
print through here, so the ladder looks the same wherever it comes from.
"""

from __future__ import annotations

import json
import struct
from json.encoder import encode_basestring_ascii as _json_str  # what json.dumps does to a str
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

from handshake_viz.model import (
    Analysis,
    Call,
    ConnectionSummary,
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
    "format_call",
    "format_segment",
    "format_summary",
    "humanize_bytes",
    "options_json",
    "packet_fields",
    "payload_preview",
    "segment_jsonl",
    "segment_lines",
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

packet_fields: Callable[..., PacketFields] = field_picker(Packet, PACKET_FIELDS)
"""Shaped like Packet's constructor, returns :data:`PacketFields` (``reader.records(packet_fields)``)."""
track_fields: Callable[..., TrackFields] = field_picker(Segment, TRACK_FIELDS)
"""Shaped like Segment's constructor, returns :data:`TrackFields` (``Tracker(record=track_fields)``)."""
both_fields: Callable[..., tuple[PacketFields, TrackFields]] = field_picker(
    Segment, PACKET_FIELDS, TRACK_FIELDS)
"""Shaped like Segment's constructor, returns both halves (for one process)."""
_segment_halves = attrgetter(*PACKET_FIELDS), attrgetter(*TRACK_FIELDS)


def segment_lines(
    pairs: Iterable[tuple[PacketFields, TrackFields]], want: int | None = None
) -> list[str]:
    """One ``"type": "segment"`` line per pair (only connection ``want``'s, if given);
    each equal to ``json.dumps(seg.to_json())`` for the Segment with those fields."""
    lines: list[str] = []
    append = lines.append
    tails, ts_option, ts_values, dir_text, flag_text = _TAILS, _TS_OPTION, _TS_VALUES, _DIR_TEXT, _FLAG_TEXT
    line, line_ts = _SEGMENT_LINE, _SEGMENT_LINE_TS
    # PACKET_FIELDS, then TRACK_FIELDS, in their order
    for (frame, ts, src, sport, dst, dport, seq, ack, flags, win, length, raw), (
        conn, dir, rel_seq, rel_ack, label, phase, analysis, client_state, server_state
    ) in pairs:
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


def call_jsonl(call: Call) -> str:
    return json.dumps(call.to_json())


# ----------------------------------------------------------------------------------------
# Human-readable ladder
# ----------------------------------------------------------------------------------------


def humanize_bytes(n: int) -> str:
    """``humanize_bytes(90112) == '88 KiB'``."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024  # type: ignore[assignment]
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if n >= 10 else f"{n:.1f} {unit}"
    return f"{n} B"  # pragma: no cover


def payload_preview(payload: bytes, limit: int = 16) -> str:
    """A short, escaped, quoted preview: ``b"hello\\n"`` -> ``"hello\\n"``."""
    if not payload:
        return ""
    text = payload[:limit].decode("latin-1")
    esc = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{esc}{"…" if len(payload) > limit else ""}"'


def connection_header(summary: ConnectionSummary) -> str:
    guess = "  (roles guessed from ports: no SYN captured)" if summary.roles_guessed else ""
    return f"conn {summary.conn}: client {summary.client}  →  server {summary.server}{guess}"


def format_segment(seg: Segment, t0: float | None = None) -> str:
    """One ladder line: frame, time, direction, label, flags, rel seq/ack, len, analysis, states.

    ``t0`` is the time origin (the connection's first segment); default: the segment itself.
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
    return (
        f"{seg.frame:>7} {ms:>10.3f} ms  {arrow} {seg.label.value:<9} {flag_letters(seg.flags):<4} "
        f"{detail:<34} {seg.client_state.value:>12} | {seg.server_state.value:<12}{analysis}"
    )


def ladder_columns() -> str:
    return (
        f"{'frame':>7} {'time':>13}  {'':1} {'label':<9} {'flag':<4} {'seq/ack (relative)':<34} "
        f"{'client':>12} | {'server':<12}"
    )


def format_summary(s: ConnectionSummary) -> str:
    """One line per connection: endpoints, duration, bytes each way, Zeek conn_state/history."""
    guess = " (roles guessed)" if s.roles_guessed else ""
    return (
        f"conn {s.conn}: {s.client} → {s.server}{guess}  {s.segments} segments  "
        f"{s.duration * 1000:.3f} ms  {s.bytes_c2s} B →  {s.bytes_s2c} B ←  "
        f"{s.conn_state} {s.history or '-'}  (client {s.client_state.value}, server {s.server_state.value})"
    )


def format_call(call: Call, t0: float | None = None) -> str:
    ms = (call.start - (call.start if t0 is None else t0)) * 1000.0
    if call.errno is not None:
        result = f"= -1 {call.errno}"
    elif call.ret is not None:
        result = f"= {call.ret}"
    elif call.inferred:
        result = "= ?"  # reconstructed from the segments: the value is not known
    else:
        result = "= ? (unfinished: still blocked when tracing stopped)"
    tag = " (inferred)" if call.inferred else ""
    frames = f"  frames {','.join(map(str, call.frames))}" if call.frames else ""
    fd = "" if call.fd is None else str(call.fd)
    return f"{'':7} {ms:>10.3f} ms  pid {call.pid} {call.call}({fd}) {result}{tag}{frames}"
