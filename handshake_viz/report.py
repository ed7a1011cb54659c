"""Text and JSON Lines renderings of segments, connections and calls.

Pure functions from records to strings: the CLI, live capture and replay all
print through here, so the ladder looks the same wherever it comes from.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from handshake_viz.model import Call, ConnectionSummary, Direction, Segment, flag_letters

__all__ = [
    "call_jsonl",
    "connection_header",
    "connection_jsonl",
    "format_call",
    "format_segment",
    "format_summary",
    "humanize_bytes",
    "options_json",
    "payload_preview",
    "segment_jsonl",
]



def options_json(raw: bytes) -> str:
    """The ``options`` object of a segment line, as JSON text (fast for common cases)."""
    if not raw:
        return "{}"
    if len(raw) == 12 and raw[:4] == b"\x01\x01\x08\x0a":
        ts_val, ts_ecr = struct.unpack_from("!II", raw, 4)
        return f'{{"ts_val": {ts_val}, "ts_ecr": {ts_ecr}}}'
    from handshake_viz.model import parse_options

    return json.dumps(parse_options(raw).to_json())


_STATE_PAIR_CACHE: dict[tuple[str, str], str] = {}


def segment_jsonl(seg: Segment) -> str:
    """One ``"type": "segment"`` line; equal to ``json.dumps(seg.to_json())`` but faster."""
    cs, ss = seg.client_state.value, seg.server_state.value
    key = (cs, ss)
    state = _STATE_PAIR_CACHE.get(key)
    if state is None:
        state = _STATE_PAIR_CACHE[key] = f'{{"client": "{cs}", "server": "{ss}"}}'
    analysis = seg.analysis
    if analysis:
        alist = "[" + ", ".join(f'"{a.value}"' for a in analysis) + "]"
    else:
        alist = "[]"
    rel_ack = "null" if seg.rel_ack is None else seg.rel_ack
    return (
        f'{{"type": "segment", "frame": {seg.frame}, "ts": {seg.ts!r}, "conn": {seg.conn}, '
        f'"src": "{seg.src}", "sport": {seg.sport}, "dst": "{seg.dst}", "dport": {seg.dport}, '
        f'"dir": "{seg.dir.value}", "seq": {seg.seq}, "ack": {seg.ack}, "rel_seq": {seg.rel_seq}, '
        f'"rel_ack": {rel_ack}, "len": {seg.length}, "flags": "{flag_letters(seg.flags)}", '
        f'"win": {seg.win}, "options": {options_json(seg.raw_options)}, '
        f'"label": "{seg.label.value}", "phase": "{seg.phase.value}", "analysis": {alist}, '
        f'"state": {state}}}'
    )


def connection_jsonl(summary: ConnectionSummary) -> str:
    return json.dumps(summary.to_json())


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
    ret: Any = call.ret
    result = f"= {ret}" if call.errno is None else f"= -1 {call.errno}"
    tag = " (inferred)" if call.inferred else ""
    frames = f"  frames {','.join(map(str, call.frames))}" if call.frames else ""
    fd = "" if call.fd is None else str(call.fd)
    return f"{'':7} {ms:>10.3f} ms  pid {call.pid} {call.call}({fd}) {result}{tag}{frames}"
