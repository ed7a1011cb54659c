"""A sequence diagram of one TCP connection, as plain data.

``plan(segments, summary, calls)`` decides everything about the picture that can
be decided without pixels: which rows exist and where, what each label says,
which states are written where, where the socket-call bars go, what gets folded.
``handshake_viz.draw`` only paints a :class:`Layout`; tests inspect it directly.
Nothing here imports matplotlib.

Coordinates
===========
``x`` is in *lifeline units*: the client's TCP lifeline is at ``x = 0``, the
server's at ``x = 1``; the application lanes (socket calls) sit outside them at
``-LANE_OFFSET`` and ``1 + LANE_OFFSET``.  ``y`` is in *row units* and grows
*downwards* (time runs down the page): in ``time="ordered"`` mode the k-th row's
arrow leaves its sender at ``y = k`` and reaches the receiver at ``y + SLANT``
(plus ``SECOND_LINE`` for every earlier row whose seq/ack line and options are
too long for one line, e.g. a TCP Fast Open SYN).

Rows
====
One row per segment, in capture order.  A segment's arrow leaves the sender's
lifeline at ``Row.y`` and arrives at ``Row.y_end`` (the slant only shows the
direction of travel; on loopback both instants are the capture time).

* ``time="ordered"`` (default): rows are evenly spaced in capture order and the
  real time is written beside each row.  Loopback segments are microseconds
  apart; spacing them by time would stack every label on top of the next.
* ``time="real"``: ``y`` follows real time (``k`` row units per second, ``k``
  chosen so the whole connection spans ~1.5 rows per row drawn), **but two rows
  are never closer than one row unit**: a burst is pushed down until it fits
  and the rows after it are placed at their real time again as soon as there is
  room.  So vertical gaps larger than a row are true idle times (a server that
  thought for 200 ms, an accept() called late), while bursts stay legible.
  Row labels still print the exact time.

Folding
=======
With more than ``max_rows`` segments (``max_rows=0``: never fold) the first and
the last rows are kept (the handshake and close whole when they fit, the rest of
the budget split evenly) and the run between them becomes one :class:`Fold` row
whose text counts what it hides: ``… 1,204 segments, 88 KiB each way, 0.4 s …``
plus analysis events and hidden socket calls.  Nothing is dropped silently: the
fold counts plus the drawn rows always add up to the segments given, and a state
change inside a fold is written at the fold.

Calls
=====
Socket calls become bars in their side's lane from their start to their return.
Times map to ``y`` through the rows: a time between two rows is interpolated
between the first one's arrival and the second one's departure, so a call that
started before a segment is drawn above its arrow and a ``recv`` that returned
after a segment arrived ends below it.  The frames a call caused (sent by its
side) or was released by (received by its side) are joined to the bar by
connector lines; where the clocks disagree by a hair the bar is stretched so the
picture never shows an effect before its cause.  Inferred calls are marked so
the painter draws them hollow and dashed.

States
======
A side's RFC 9293 state is written on its lifeline where it changes: at the
departure of a segment the side sent, at the arrival of one it received.  A
server found in LISTEN is marked above the first row.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from handshake_viz.errors import UsageError
from handshake_viz.model import (
    Analysis,
    Call,
    ConnectionSummary,
    Direction,
    Endpoint,
    Flag,
    Label,
    Phase,
    Segment,
    TcpState,
)
from handshake_viz.text import humanize_bytes

__all__ = [
    "CallBar",
    "Connector",
    "Fold",
    "LANE_OFFSET",
    "Lane",
    "Layout",
    "Lifeline",
    "Note",
    "Row",
    "SLANT",
    "StateMark",
    "TimeMode",
    "call_kind",
    "escape_preview",
    "human_duration",
    "plan",
    "segment_text",
]

TimeMode = Literal["ordered", "real"]
Side = Literal["client", "server"]

# --- geometry (see "Coordinates" above) ---------------------------------------------------
X_CLIENT = 0.0
X_SERVER = 1.0
SLANT = 0.42  # how far (rows) an arrow drops from departure to arrival
LANE_OFFSET = 0.62  # lane centre distance from its lifeline
LANE_COLUMN_STEP = 0.13  # extra columns (overlapping calls of other threads) go outwards
MAX_COLUMNS = 4
BAR_HALF_WIDTH = 0.045
CALL_LABEL_GAP = 0.025  # between a bar and its label
CALL_TEXT_PITCH = 0.30  # min vertical distance between two texts in a lane (rows)
MIN_BAR = 0.14  # a call that took no time still gets a visible bar (rows)
PRE_STEP = 0.4  # rows between call starts before the first segment
POST_STEP = 0.4  # … and after the last one
REAL_STRETCH = 1.5  # time="real": row units per drawn row spread over the duration
IDLE_ROWS = 3.0  # time="real": an empty stretch this tall gets a note saying how long it is
PREVIEW_CHARS = 16
DETAIL_CHARS = 49  # detail + extra longer than this: extra gets a line of its own …
SECOND_LINE = 0.3  # … and the next row moves down this much


# ==========================================================================================
# Records
# ==========================================================================================


@dataclass(frozen=True, slots=True)
class Lifeline:
    """One side's kernel TCP, drawn as a vertical line headed ``client 127.0.0.1:49736``."""

    side: Side
    x: float
    endpoint: str  # "127.0.0.1:49736"
    header: str  # "client 127.0.0.1:49736"
    subtitle: str  # "TCP (kernel)"


@dataclass(frozen=True, slots=True)
class Lane:
    """One side's application lane: the process(es) whose socket calls are drawn."""

    side: Side
    x: float  # centre of the innermost column
    title: str  # "client process (pid 2943)"
    pids: tuple[int, ...]  # traced pids, in order of appearance
    columns: int  # bar columns used (>1 when calls of several threads overlap)
    direction: int  # -1: columns grow to the left (client), +1: to the right (server)


@dataclass(frozen=True, slots=True)
class Fold:
    """What a folded run of segments contained (the counts are exact)."""

    first_frame: int
    last_frame: int
    segments: int
    segments_c2s: int
    segments_s2c: int
    bytes_c2s: int  # payload length (sequence space) client -> server
    bytes_s2c: int
    duration: float  # seconds from the first to the last folded segment
    analysis: tuple[tuple[Analysis, int], ...]  # analysis flag counts, most frequent first
    calls: int  # socket calls that started and ended inside the run (not drawn)
    text: str  # "… 1,204 segments, 88 KiB each way, 0.4 s …"


@dataclass(frozen=True, slots=True)
class Row:
    """One segment arrow, or one fold band (``kind == "fold"``)."""

    index: int
    kind: Literal["segment", "fold"]
    y: float  # departure (fold: top of the band)
    y_end: float  # arrival (fold: bottom of the band)
    t_ms: float  # ms since the layout's t0 (fold: its first segment)
    time_text: str  # "0.054 ms"
    x_from: float
    x_to: float
    dir: Direction | None  # None for a fold
    frame: int | None  # None for a fold
    label: str  # "SYN-ACK"  (fold: "…")
    detail: str  # "seq=0 ack=1"
    extra: str  # "win=65495 mss=65495 wscale=7 sackOK" (SYN/SYN-ACK, window events)
    text: str  # label and detail on one line: "SYN-ACK seq=0 ack=1"
    phase: Phase | None  # None for a fold
    analysis: tuple[Analysis, ...]
    markers: tuple[str, ...]  # short tags for the analysis flags: ("retransmission",)
    flagged: bool  # a problem flag is set (the painter dashes the arrow)
    fold: Fold | None = None
    lines: int = 1  # 2: ``extra`` goes on its own line under ``detail`` (the row is taller)

    @property
    def y_mid(self) -> float:
        return (self.y + self.y_end) / 2


@dataclass(frozen=True, slots=True)
class StateMark:
    """A side's state written on its lifeline where it changed."""

    side: Side
    state: TcpState
    x: float  # the lifeline
    y: float
    frame: int | None  # the segment after which the side is in this state (None: initial)
    text: str


@dataclass(frozen=True, slots=True)
class CallBar:
    """A socket call: a bar in its side's lane from start (y0) to return (y1)."""

    call: Call
    side: Side
    column: int
    x: float  # bar centre
    x_inner: float  # bar edge facing the lifeline (connectors start here)
    y0: float
    y1: float
    label: str  # "recv(4) → 6"
    label_x: float
    label_y: float  # pushed down where texts of the lane would collide
    note: str  # "FIN read as end of stream" (may be "")
    note_y: float
    inferred: bool
    failed: bool
    t_start_ms: float
    t_end_ms: float


@dataclass(frozen=True, slots=True)
class Connector:
    """A line joining a call bar to a segment's arrow (or, ``kind="queue"``, the
    wait of an accepted connection in the kernel's queue before ``accept()``)."""

    x0: float
    y0: float
    x1: float
    y1: float
    frame: int | None
    call_index: int  # into Layout.calls
    inferred: bool
    kind: Literal["call", "queue"] = "call"


@dataclass(frozen=True, slots=True)
class Note:
    text: str
    y: float


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything the painter draws, in diagram coordinates (see module docstring)."""

    title: str
    time_mode: TimeMode
    t0: float  # epoch seconds of time 0 (the first SYN, or the first segment)
    segments: int  # segments represented (drawn rows + folded), == len(input)
    lifelines: tuple[Lifeline, Lifeline]
    lanes: tuple[Lane, ...]
    rows: tuple[Row, ...]
    states: tuple[StateMark, ...]
    calls: tuple[CallBar, ...]
    connectors: tuple[Connector, ...]
    notes: tuple[Note, ...]
    idle: tuple[Note, ...]  # time="real": "60 s without segments" in long empty stretches
    legend: tuple[str, ...]  # keys: phase values, "flagged", "fold", "call-traced", "call-inferred"
    xlim: tuple[float, float]
    ylim: tuple[float, float]  # (top, bottom), top < bottom
    lifeline_top: float
    lifeline_bottom: float
    time_x: float  # right edge of the time margin texts

    @property
    def segment_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "segment")

    @property
    def fold_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "fold")

    @property
    def labels(self) -> tuple[str, ...]:
        """The row texts in order, e.g. ``("SYN seq=0", "SYN-ACK seq=0 ack=1", …)``."""
        return tuple(r.text for r in self.rows)


# ==========================================================================================
# Text helpers
# ==========================================================================================

_ESCAPES = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}


def escape_preview(payload: bytes, length: int | None = None, limit: int = PREVIEW_CHARS) -> str:
    """Quoted, escaped start of a payload, at most ``limit`` characters inside the quotes.

    ``escape_preview(b"HELLO\\n") == '"HELLO\\\\n"'``.  Escapes are Python-like
    (``\\n``, ``\\x00``) and never cut in half; ``…`` marks a cut, also when the
    capture holds fewer bytes than the segment carried (``length``).  Empty
    payload (nothing captured) gives ``""``.
    """
    if not payload:
        return ""
    out: list[str] = []
    used = 0
    cut = False
    for i, b in enumerate(payload):
        piece = _ESCAPES.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")
        if used + len(piece) > limit or (used + len(piece) == limit and i < len(payload) - 1):
            cut = True
            break
        out.append(piece)
        used += len(piece)
    if length is not None and length > len(payload):
        cut = True
    return '"' + "".join(out) + ("…" if cut else "") + '"'


def human_duration(seconds: float) -> str:
    """``0.4 s``, ``12 ms``, ``1.5 ms``, ``350 µs`` (always a unit, never scientific)."""
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s >= 100:
        return f"{sign}{s:,.0f} s"
    if s >= 0.1:
        return f"{sign}{s:.1f} s"
    if s >= 0.01:
        return f"{sign}{s * 1e3:.0f} ms"
    if s >= 0.001:
        return f"{sign}{s * 1e3:.1f} ms"
    return f"{sign}{s * 1e6:.0f} µs"


def _title_duration(seconds: float) -> str:
    """The title's duration keeps more digits: ``1.70 ms``, ``2.35 s``."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:,.2f} s"


def _time_text(ms: float) -> str:
    """Microsecond precision where it matters (loopback), less for long times."""
    a = abs(ms)
    if a < 10:
        return f"{ms:.3f} ms"
    if a < 100:
        return f"{ms:.2f} ms"
    if a < 100_000:
        return f"{ms:,.1f} ms"
    return f"{ms:,.0f} ms"


_MARKERS: dict[Analysis, str] = {
    Analysis.RETRANSMISSION: "retransmission",
    Analysis.FAST_RETRANSMISSION: "fast retransmission",
    Analysis.SPURIOUS_RETRANSMISSION: "spurious retransmission",
    Analysis.OUT_OF_ORDER: "out of order",
    Analysis.DUP_ACK: "dup ACK",
    Analysis.LOST_SEGMENT: "gap: segment not captured",
    Analysis.ACK_UNSEEN: "ACKs unseen segment",
    Analysis.ZERO_WINDOW: "zero window",
    Analysis.ZERO_WINDOW_PROBE: "zero-window probe",
    Analysis.WINDOW_UPDATE: "window update",
    Analysis.WINDOW_FULL: "window full",
    Analysis.KEEP_ALIVE: "keep-alive",
    Analysis.KEEP_ALIVE_ACK: "keep-alive ACK",
}
# Flags that mean something went wrong: the painter dashes these arrows.
_PROBLEMS = frozenset(
    {
        Analysis.RETRANSMISSION,
        Analysis.FAST_RETRANSMISSION,
        Analysis.SPURIOUS_RETRANSMISSION,
        Analysis.OUT_OF_ORDER,
        Analysis.DUP_ACK,
        Analysis.LOST_SEGMENT,
        Analysis.ACK_UNSEEN,
        Analysis.ZERO_WINDOW,
        Analysis.ZERO_WINDOW_PROBE,
        Analysis.WINDOW_FULL,
    }
)
_WINDOW_FLAGS = frozenset(
    {Analysis.ZERO_WINDOW, Analysis.ZERO_WINDOW_PROBE, Analysis.WINDOW_UPDATE, Analysis.WINDOW_FULL}
)
# A more specific flag makes the generic one redundant on the picture.
_SUBSUMES = {
    Analysis.FAST_RETRANSMISSION: Analysis.RETRANSMISSION,
    Analysis.SPURIOUS_RETRANSMISSION: Analysis.RETRANSMISSION,
}
_PLURALS: dict[Analysis, tuple[str, str]] = {
    Analysis.RETRANSMISSION: ("retransmission", "retransmissions"),
    Analysis.FAST_RETRANSMISSION: ("fast retransmission", "fast retransmissions"),
    Analysis.SPURIOUS_RETRANSMISSION: ("spurious retransmission", "spurious retransmissions"),
    Analysis.OUT_OF_ORDER: ("out-of-order segment", "out-of-order segments"),
    Analysis.DUP_ACK: ("dup ACK", "dup ACKs"),
    Analysis.LOST_SEGMENT: ("capture gap", "capture gaps"),
    Analysis.ACK_UNSEEN: ("ACK of an unseen segment", "ACKs of unseen segments"),
    Analysis.ZERO_WINDOW: ("zero window", "zero windows"),
    Analysis.ZERO_WINDOW_PROBE: ("zero-window probe", "zero-window probes"),
    Analysis.WINDOW_UPDATE: ("window update", "window updates"),
    Analysis.WINDOW_FULL: ("window full", "window-full segments"),
    Analysis.KEEP_ALIVE: ("keep-alive", "keep-alives"),
    Analysis.KEEP_ALIVE_ACK: ("keep-alive ACK", "keep-alive ACKs"),
}


def _markers(analysis: tuple[Analysis, ...]) -> tuple[str, ...]:
    hidden = {_SUBSUMES[a] for a in analysis if a in _SUBSUMES}
    return tuple(_MARKERS.get(a, a.value) for a in analysis if a not in hidden)


def _options_text(seg: Segment) -> str:
    opts = seg.options
    parts = [f"win={seg.win}"]
    if opts.mss is not None:
        parts.append(f"mss={opts.mss}")
    if opts.wscale is not None:
        parts.append(f"wscale={opts.wscale}")
    if opts.sack_perm:
        parts.append("sackOK")
    if opts.tfo_cookie is not None:
        parts.append("TFO cookie" if opts.tfo_cookie else "TFO cookie request")
    if opts.truncated:
        parts.append("options cut")
    return " ".join(parts)


def segment_text(seg: Segment) -> tuple[str, str, str]:
    """``(label, detail, extra)`` for one segment's arrow.

    * label: the role, ``SYN`` … ``RST``
    * detail: relative numbers, ``seq=1:7 ack=7 len=6 "HELLO\\n"``.  A pure ACK
      shows only ``ack=N``; a segment with payload shows its byte range ``a:b``
      (a SYN's payload starts after its own sequence number, so ``seq=0 len=86``).
    * extra: window and options for SYN and SYN-ACK (``win=65495 mss=65495
      wscale=7 sackOK``) and for window events (``win=0``), else ``""``.
    """
    label = seg.label.value
    parts: list[str] = []
    syn = bool(seg.flags & Flag.SYN)
    if not (seg.label is Label.ACK and seg.length == 0 and seg.rel_ack is not None):
        if seg.length and not syn:
            parts.append(f"seq={seg.rel_seq}:{(seg.rel_seq + seg.length) & 0xFFFFFFFF}")
        else:
            parts.append(f"seq={seg.rel_seq}")
    if seg.rel_ack is not None and not (seg.label is Label.RST and not seg.flags & Flag.ACK):
        parts.append(f"ack={seg.rel_ack}")
    if seg.length:
        parts.append(f"len={seg.length}")
        preview = escape_preview(seg.payload, seg.length)
        if preview:
            parts.append(preview)
    detail = " ".join(parts)
    if syn or any(a in _WINDOW_FLAGS for a in seg.analysis):
        extra = _options_text(seg) if syn else f"win={seg.win}"
    else:
        extra = ""
    return label, detail, extra


# ==========================================================================================
# Calls: kinds, sides, labels
# ==========================================================================================

_SEND_CALLS = frozenset(
    {"write", "writev", "pwrite64", "send", "sendto", "sendmsg", "sendmmsg", "sendfile", "sendfile64",
     "splice"}
)
_RECV_CALLS = frozenset({"read", "readv", "pread64", "recv", "recvfrom", "recvmsg", "recvmmsg"})
_WAIT_CALLS = frozenset(
    {"poll", "ppoll", "select", "pselect6", "_newselect", "epoll_wait", "epoll_pwait", "epoll_pwait2"}
)


def call_kind(name: str) -> str:
    """``send``, ``recv``, ``connect``, ``accept``, ``close``, ``wait``, ``setup`` or ``other``."""
    if name in _SEND_CALLS:
        return "send"
    if name in _RECV_CALLS:
        return "recv"
    if name == "connect":
        return "connect"
    if name in ("accept", "accept4"):
        return "accept"
    if name in ("close", "shutdown"):
        return "close"
    if name in _WAIT_CALLS:
        return "wait"
    if name in ("socket", "bind", "listen", "setsockopt", "getsockopt", "getsockname", "getpeername"):
        return "setup"
    return "other"


def _call_label(call: Call) -> str:
    kind = call_kind(call.call)
    fd = "" if call.fd is None else str(call.fd)
    head = f"{call.call}({fd})"
    if call.errno is not None:
        return f"{head} → {call.errno}"
    if kind == "recv" and call.ret == 0:
        return f"{head} → 0 (EOF)"
    if kind in ("send", "recv", "accept", "wait") and call.ret is not None:
        return f"{head} → {call.ret}"
    if kind not in ("connect", "close", "setup") and call.ret not in (None, 0):
        return f"{head} → {call.ret}"
    return head


def _ep_key(ep: Endpoint | None) -> tuple[object, int] | None:
    if ep is None:
        return None
    try:
        return (ipaddress.ip_address(ep.ip), ep.port)
    except ValueError:
        return (ep.ip, ep.port)


# ==========================================================================================
# The time map: real time -> y, through the rows
# ==========================================================================================


class _TimeMap:
    """Piecewise-linear, monotone map from epoch seconds to y.

    Knots are each row's (departure time, y) and (arrival time, y_end), the
    extra knots for call events before the first and after the last row, in
    time order.  A time equal to a row's instant maps to its departure for a
    call's start and to its arrival for a call's end (``end=True``).
    """

    def __init__(self, knots: list[tuple[float, float]]) -> None:
        self.t = [k[0] for k in knots]
        self.y = [k[1] for k in knots]

    def __call__(self, t: float, *, end: bool = False) -> float:
        ts, ys = self.t, self.y
        if t <= ts[0]:
            return ys[0] - (PRE_STEP if t < ts[0] else 0.0)
        if t >= ts[-1]:
            return ys[-1] + (POST_STEP if t > ts[-1] else 0.0)
        if end:
            j = bisect.bisect_right(ts, t) - 1
            if ts[j] == t:
                return ys[j]
        else:
            i = bisect.bisect_left(ts, t)
            if ts[i] == t:
                return ys[i]
        hi = bisect.bisect_right(ts, t)
        lo = hi - 1
        span = ts[hi] - ts[lo]
        frac = (t - ts[lo]) / span if span > 0 else 0.0
        return ys[lo] + frac * (ys[hi] - ys[lo])


# ==========================================================================================
# Planning
# ==========================================================================================


@dataclass(slots=True)
class _Item:
    """A row in the making: a segment index or a folded run [a, b)."""

    a: int
    b: int
    fold: bool


def _fold_items(segments: Sequence[Segment], max_rows: int) -> list[_Item]:
    n = len(segments)
    if max_rows == 0 or n <= max_rows:
        return [_Item(i, i + 1, False) for i in range(n)]
    keep = max_rows - 1  # one row goes to the fold itself
    lead = 0
    while lead < n and segments[lead].phase is Phase.HANDSHAKE:
        lead += 1
    trail = 0
    while trail < n - lead and segments[n - 1 - trail].phase in (Phase.CLOSE, Phase.RESET):
        trail += 1
    if lead + trail <= keep:
        extra = keep - lead - trail
        head, tail = lead + (extra + 1) // 2, trail + extra // 2
    else:
        head, tail = (keep + 1) // 2, keep // 2
    items = [_Item(i, i + 1, False) for i in range(head)]
    items.append(_Item(head, n - tail, True))
    items.extend(_Item(i, i + 1, False) for i in range(n - tail, n))
    return items


def _fallback_summary(segments: Sequence[Segment]) -> ConnectionSummary:
    first = segments[0]
    if first.dir is Direction.C2S:
        client, server = Endpoint(first.src, first.sport), Endpoint(first.dst, first.dport)
    else:
        client, server = Endpoint(first.dst, first.dport), Endpoint(first.src, first.sport)
    last = segments[-1]
    return ConnectionSummary(
        conn=first.conn,
        client=client,
        server=server,
        first_ts=min(s.ts for s in segments),
        last_ts=max(s.ts for s in segments),
        segments=len(segments),
        bytes_c2s=sum(s.length for s in segments if s.dir is Direction.C2S),
        bytes_s2c=sum(s.length for s in segments if s.dir is Direction.S2C),
        conn_state="",
        history="",
        client_state=last.client_state,
        server_state=last.server_state,
        ip_version=first.ip_version,
    )


def _plural(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _fold_text(f_segments: int, b_c2s: int, b_s2c: int, duration: float,
               analysis: Counter[Analysis], calls: int) -> str:
    parts = [_plural(f_segments, "segment", "segments")]
    if b_c2s == 0 and b_s2c == 0:
        parts.append("no payload")
    elif humanize_bytes(b_c2s) == humanize_bytes(b_s2c):
        parts.append(f"{humanize_bytes(b_c2s)} each way")
    else:
        if b_c2s:
            parts.append(f"{humanize_bytes(b_c2s)} client→server")
        if b_s2c:
            parts.append(f"{humanize_bytes(b_s2c)} server→client")
    parts.append(human_duration(duration))
    for flag, count in analysis.most_common():
        one, many = _PLURALS.get(flag, (flag.value, flag.value))
        parts.append(_plural(count, one, many))
    if calls:
        parts.append(_plural(calls, "socket call", "socket calls"))
    return "… " + ", ".join(parts) + " …"


def _refused(segments: Sequence[Segment]) -> bool:
    """A SYN answered by a RST, with no SYN-ACK ever sent (Zeek's REJ)."""
    saw_syn = False
    for s in segments:
        if s.label is Label.SYN_ACK:
            return False
        if s.label is Label.SYN:
            saw_syn = True
        elif s.flags & Flag.RST:
            return saw_syn
    return False


def _closing_notes(segments: Sequence[Segment], summary: ConnectionSummary) -> list[str]:
    """One line on how the connection ended: who closed first and what that costs
    (TIME-WAIT), or who reset it, or that the capture ends with it still open."""
    side_of = {Direction.C2S: "client", Direction.S2C: "server"}
    final = {"client": summary.client_state, "server": summary.server_state}
    rst = next((s for s in segments if s.flags & Flag.RST), None)
    fin = next((s for s in segments if s.flags & Flag.FIN), None)
    if fin is not None:
        closer = side_of[fin.dir]
        other = "server" if closer == "client" else "client"
        peer_fin = next((s for s in segments if s.flags & Flag.FIN and s.dir is not fin.dir), None)
        # simultaneous close: the peer's FIN did not acknowledge ours (RFC 9293 §3.6 case 2)
        both = peer_fin is not None and (peer_fin.rel_ack is None
                                         or peer_fin.rel_ack <= fin.rel_seq + fin.length)
        if final[closer] is TcpState.TIME_WAIT or (both and final[other] is TcpState.TIME_WAIT):
            if both:
                return ["both sides closed at once → both go through CLOSING to TIME-WAIT (2·MSL)"]
            if closer == "client":
                return ["client closed first → TIME-WAIT (2·MSL)"]
            return ["server closed first → TIME-WAIT (2·MSL): the server holds "
                    "this address pair until it ends"]
    if rst is not None and _refused(segments):
        return [f"{side_of[rst.dir]} refused the connection: a RST answered the SYN "
                f"(nothing listening on port {summary.server.port})"]
    if rst is not None:
        after = f" after the {side_of[fin.dir]}'s FIN" if fin is not None and fin.frame < rst.frame else ""
        return [f"{side_of[rst.dir]} reset the connection{after} (RST, frame {rst.frame}): "
                "no TIME-WAIT, unread data is lost"]
    if fin is not None:
        closer = side_of[fin.dir]
        other = "server" if closer == "client" else "client"
        return [f"{closer} closed first (FIN, frame {fin.frame}); the capture ends with the "
                f"{closer} in {final[closer].value}, the {other} in {final[other].value}"]
    return [f"the capture ends with the connection open (client {final['client'].value}, "
            f"server {final['server'].value})"]


def plan(
    segments: Sequence[Segment],
    summary: ConnectionSummary | None = None,
    calls: Iterable[Call] = (),
    *,
    time: TimeMode = "ordered",
    max_rows: int = 60,
) -> Layout:
    """Lay out one connection's sequence diagram.

    ``segments`` are one connection's, in capture order; ``summary`` its
    ConnectionSummary (endpoints, conn_state, history; derived from the
    segments when None); ``calls`` the socket calls to draw in the lanes (calls
    of other connections are ignored when ``Call.conn`` says so).
    """
    if time not in ("ordered", "real"):
        raise UsageError(f"--time {time}: use 'ordered' or 'real'")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
        raise UsageError(f"--max-rows {max_rows}: must be a whole number >= 0 (0 draws every segment)")
    segments = list(segments)
    if not segments:
        raise UsageError("no segments to draw: the connection is empty")
    conns = sorted({s.conn for s in segments})
    if len(conns) > 1:
        raise UsageError(f"segments of {len(conns)} connections ({', '.join(map(str, conns[:5]))}) "
                         "given: draw one connection at a time")
    if summary is None:
        summary = _fallback_summary(segments)
    calls = [c for c in calls if c.conn is None or c.conn == summary.conn]

    n = len(segments)
    t0 = next((s.ts for s in segments if s.label is Label.SYN), segments[0].ts)

    # --- monotone times (captures can step backwards) ------------------------------------
    mono: list[float] = []
    last = float("-inf")
    for s in segments:
        last = max(last, s.ts)
        mono.append(last)

    items = _fold_items(segments, max_rows)

    # --- texts, and which rows need a second detail line --------------------------------------
    texts: list[tuple[str, str, str]] = [
        ("…", "", "") if it.fold else segment_text(segments[it.a]) for it in items]
    lines = [2 if e and len(d) + 2 + len(e) > DETAIL_CHARS else 1 for _l, d, e in texts]

    # --- y of every item --------------------------------------------------------------------
    ys: list[tuple[float, float]] = []
    floor = float("-inf") if time == "real" else 0.0
    duration = mono[-1] - mono[0]
    scale = REAL_STRETCH * len(items) / duration if duration > 0 and time == "real" else 0.0
    for k, it in enumerate(items):
        ya = max(scale * (mono[it.a] - mono[0]), floor) if time == "real" else floor
        yb = ya + SLANT
        if it.fold and time == "real":
            yb = max(yb, scale * (mono[it.b - 1] - mono[0]))
        ys.append((ya, yb))
        floor = yb + (1.0 - SLANT) + (SECOND_LINE if lines[k] == 2 else 0.0)

    client_ep, server_ep = summary.client, summary.server
    x_of = {Direction.C2S: (X_CLIENT, X_SERVER), Direction.S2C: (X_SERVER, X_CLIENT)}

    # --- calls: which ones, which side ---------------------------------------------------------
    frame_index: dict[int, int] = {s.frame: i for i, s in enumerate(segments)}
    item_of_seg: list[int] = [0] * n
    for k, it in enumerate(items):
        for i in range(it.a, it.b):
            item_of_seg[i] = k
    placed: list[tuple[Call, Side]] = []
    unplaced = 0
    pid_side: dict[int, Side] = {}
    pending: list[Call] = []
    ckey, skey = _ep_key(client_ep), _ep_key(server_ep)
    for c in sorted(calls, key=lambda c: (c.start, c.end)):
        side = _side_of_call(c, ckey, skey, segments, frame_index)
        if side is None:
            pending.append(c)
            continue
        if not c.inferred:
            pid_side.setdefault(c.pid, side)
        placed.append((c, side))
    for c in pending:
        side = pid_side.get(c.pid)
        if side is None:
            unplaced += 1
        else:
            placed.append((c, side))
    placed.sort(key=lambda cs: (cs[0].start, cs[0].end))

    # --- calls hidden inside folds --------------------------------------------------------------
    fold_spans = [(k, mono[it.a], mono[it.b - 1]) for k, it in enumerate(items) if it.fold]
    hidden_calls: Counter[int] = Counter()
    visible: list[tuple[Call, Side]] = []
    for c, side in placed:
        inside = next((k for k, ta, tb in fold_spans if ta < c.start and c.end < tb), None)
        if inside is not None:
            hidden_calls[inside] += 1
        else:
            visible.append((c, side))

    # --- the time map ---------------------------------------------------------------------------
    knots: list[tuple[float, float]] = []
    first_t, last_t = mono[0], mono[-1]
    # Before the first and after the last segment only the order of calls matters: each
    # call start gets a step of its own, the returns fall in between.
    pre = sorted({c.start for c, _ in visible if c.start < first_t})
    post = sorted({c.start for c, _ in visible if c.start > last_t})
    y_first = ys[0][0]
    for j, t in enumerate(pre):
        knots.append((t, y_first - PRE_STEP * (len(pre) - j)))
    for k, it in enumerate(items):
        knots.append((mono[it.a], ys[k][0]))
        knots.append((mono[it.b - 1], ys[k][1]))
    y_last = ys[-1][1]
    for j, t in enumerate(post):
        knots.append((t, y_last + POST_STEP * (j + 1)))
    tmap = _TimeMap(knots)

    # --- rows -----------------------------------------------------------------------------------
    rows: list[Row] = []
    for k, it in enumerate(items):
        ya, yb = ys[k]
        if not it.fold:
            seg = segments[it.a]
            label, detail, extra = texts[k]
            x0, x1 = x_of[seg.dir]
            ms = (seg.ts - t0) * 1e3
            markers = _markers(seg.analysis)
            rows.append(Row(
                index=k, kind="segment", y=ya, y_end=yb, t_ms=ms, time_text=_time_text(ms),
                x_from=x0, x_to=x1, dir=seg.dir, frame=seg.frame, label=label, detail=detail,
                extra=extra, text=f"{label} {detail}".rstrip(), phase=seg.phase, lines=lines[k],
                analysis=seg.analysis, markers=markers,
                flagged=any(a in _PROBLEMS for a in seg.analysis),
            ))
        else:
            run = segments[it.a:it.b]
            c2s = [s for s in run if s.dir is Direction.C2S]
            counts: Counter[Analysis] = Counter(a for s in run for a in s.analysis)
            b_c2s = sum(s.length for s in c2s)
            b_s2c = sum(s.length for s in run) - b_c2s
            duration = mono[it.b - 1] - mono[it.a]
            text = _fold_text(len(run), b_c2s, b_s2c, duration, counts, hidden_calls[k])
            fold = Fold(
                first_frame=run[0].frame, last_frame=run[-1].frame, segments=len(run),
                segments_c2s=len(c2s), segments_s2c=len(run) - len(c2s), bytes_c2s=b_c2s,
                bytes_s2c=b_s2c, duration=duration, analysis=tuple(counts.most_common()),
                calls=hidden_calls[k], text=text,
            )
            ms = (run[0].ts - t0) * 1e3
            rows.append(Row(
                index=k, kind="fold", y=ya, y_end=yb, t_ms=ms, time_text=_time_text(ms),
                x_from=X_CLIENT, x_to=X_SERVER, dir=None, frame=None, label="…", detail="",
                extra="", text=text, phase=None, analysis=tuple(counts),
                markers=(), flagged=False, fold=fold,
            ))

    # --- states -----------------------------------------------------------------------------------
    states: list[StateMark] = []
    x_side = {"client": X_CLIENT, "server": X_SERVER}
    prev: dict[str, TcpState | None] = {"client": None, "server": None}
    first = segments[0]
    refused = _refused(segments)
    for k, it in enumerate(items):
        ya, yb = ys[k]
        if it.fold:
            for side in ("client", "server"):
                changed_at = None
                for s in segments[it.a:it.b]:
                    st = s.client_state if side == "client" else s.server_state
                    if st is not prev[side]:
                        changed_at = (st, s.frame)
                        prev[side] = st
                if changed_at is not None:
                    states.append(StateMark(side, changed_at[0], x_side[side], yb, changed_at[1],
                                            changed_at[0].value))
            continue
        seg = segments[it.a]
        sender: Side = "client" if seg.dir is Direction.C2S else "server"
        for side in ("client", "server"):
            st = seg.client_state if side == "client" else seg.server_state
            if st is prev[side]:
                continue
            if side == sender:
                y = ya
            elif k == 0 and seg is first and st is TcpState.LISTEN:
                if refused:  # nobody was listening: the RST says so, not the tracker's guess
                    prev[side] = st
                    continue
                y = ya - 0.55  # found listening before the first SYN arrived
            else:
                y = yb
            states.append(StateMark(side, st, x_side[side], y, seg.frame, st.value))
            prev[side] = st

    # --- call bars ------------------------------------------------------------------------------
    bars, connectors, lanes = _place_calls(visible, segments, frame_index, item_of_seg, items, ys,
                                           tmap, t0)

    # --- notes ----------------------------------------------------------------------------------
    note_texts = _closing_notes(segments, summary)
    if summary.roles_guessed:
        note_texts.append("no SYN captured: client and server guessed from the port numbers")
    n_folded = sum(it.b - it.a for it in items if it.fold)
    if n_folded:
        note_texts.append(
            f"{_plural(n_folded, 'segment', 'segments')} folded to keep {max_rows} rows "
            "(max_rows=0 draws every segment)")
    if unplaced:
        note_texts.append(f"{_plural(unplaced, 'socket call', 'socket calls')} not drawn: "
                          "neither endpoints, frames nor pid tie them to a side")

    ymax = max([ys[-1][1]] + [b.y1 for b in bars] + [b.note_y for b in bars if b.note]
               + [b.label_y for b in bars] + [m.y for m in states])
    ymin = min([ys[0][0] - 0.55] + [b.y0 for b in bars] + [b.label_y for b in bars]
               + [m.y for m in states])
    lifeline_top = ymin - 0.35
    lifeline_bottom = ymax + 0.55
    notes = tuple(Note(t, lifeline_bottom + 0.45 + 0.38 * i) for i, t in enumerate(note_texts))
    bottom = (notes[-1].y if notes else lifeline_bottom) + 0.45

    # --- time="real": say what a long empty stretch is -------------------------------------------
    idle: list[Note] = []
    if time == "real":
        for k in range(1, len(items)):
            top, bottom = ys[k - 1][1], ys[k][0]
            if bottom - top >= IDLE_ROWS:
                quiet = mono[items[k].a] - mono[items[k - 1].b - 1]
                idle.append(Note(f"{human_duration(quiet)} without segments", (top + bottom) / 2))

    # --- headers, title, legend, extents -------------------------------------------------------
    lifelines = (
        Lifeline("client", X_CLIENT, str(client_ep), f"client {client_ep}", "TCP (kernel)"),
        Lifeline("server", X_SERVER, str(server_ep), f"server {server_ep}", "TCP (kernel)"),
    )
    dur = _title_duration(max(s.ts for s in segments) - min(s.ts for s in segments))
    state_part = " ".join(p for p in (summary.conn_state, summary.history) if p)
    title = (f"conn {summary.conn}: {client_ep} → {server_ep}   "
             f"{_plural(n, 'segment', 'segments')}, {dur}" + (f", {state_part}" if state_part else "")
             + ("  (roles guessed)" if summary.roles_guessed else ""))
    legend = [p.value for p in Phase]
    if any(r.flagged for r in rows):
        legend.append("flagged")
    if any(r.kind == "fold" for r in rows):
        legend.append("fold")
    if any(not b.inferred for b in bars):
        legend.append("call-traced")
    if any(b.inferred for b in bars):
        legend.append("call-inferred")

    if lanes:
        left = min([X_CLIENT - LANE_OFFSET] + [ln.x - LANE_COLUMN_STEP * (ln.columns - 1)
                                              for ln in lanes if ln.side == "client"])
        right = max([X_SERVER + LANE_OFFSET] + [ln.x + LANE_COLUMN_STEP * (ln.columns - 1)
                                               for ln in lanes if ln.side == "server"])
        time_x = left - 0.68
        xlim = (time_x - 0.3, right + 0.78)
    else:
        time_x = X_CLIENT - 0.4
        xlim = (time_x - 0.3, X_SERVER + 0.45)
    return Layout(
        title=title, time_mode=time, t0=t0, segments=n, lifelines=lifelines, lanes=tuple(lanes),
        rows=tuple(rows), states=tuple(states), calls=tuple(bars), connectors=tuple(connectors),
        notes=notes, idle=tuple(idle), legend=tuple(legend), xlim=xlim, ylim=(lifeline_top - 0.25, bottom),
        lifeline_top=lifeline_top, lifeline_bottom=lifeline_bottom, time_x=time_x,
    )


def _side_of_call(call: Call, ckey: object, skey: object, segments: Sequence[Segment],
                  frame_index: dict[int, int]) -> Side | None:
    """The side a call runs on: by its socket's endpoints (strace -yy), else by the
    segments it is tied to (a send is on the sender's side, a recv on the receiver's),
    else by its name (connect is a client's, accept a server's)."""
    local, remote = _ep_key(call.local), _ep_key(call.remote)
    if local is not None and local == ckey:
        return "client"
    if local is not None and local == skey:
        return "server"
    if remote is not None and remote == skey:
        return "client"
    if remote is not None and remote == ckey:
        return "server"
    kind = call_kind(call.call)
    for f in call.frames:
        i = frame_index.get(f)
        if i is None:
            continue
        sender: Side = "client" if segments[i].dir is Direction.C2S else "server"
        receiver: Side = "server" if sender == "client" else "client"
        if kind in ("send", "close"):
            return sender
        if kind in ("recv", "accept", "wait"):
            return receiver
        if kind == "connect":
            return "client"
        return sender
    if kind == "connect":
        return "client"
    if kind == "accept" or call.call == "listen":
        return "server"
    return None


@dataclass(slots=True)
class _Draft:
    """A call bar in the making (mutable while the lane is packed)."""

    call: Call
    side: Side
    kind: str
    y0: float
    y1: float
    caused: list[tuple[int, float, Segment]]  # (item, y, segment) the call sent
    released: list[tuple[int, float, Segment]]  # segments whose arrival the call waited for
    col: int = 0
    note: str = ""


def _call_note(d: _Draft, segments: Sequence[Segment]) -> str:
    """A short why-note for the calls whose meaning is not obvious from the label."""
    c, kind = d.call, d.kind
    if kind == "recv" and c.ret == 0 and c.errno is None:
        return "FIN read as end of stream"
    if c.errno == "ECONNRESET":
        return "RST read as ECONNRESET"
    if c.errno == "ECONNREFUSED":
        return "refused: a RST answered the SYN"
    rst = next((s for _, _, s in d.caused if s.flags & Flag.RST), None)
    if kind == "close" and rst is not None:
        peer_data = any(s.length and s.dir is not rst.dir and s.frame < rst.frame for s in segments)
        return "unread data: close() sent RST, not FIN" if peer_data else "close() sent RST"
    if kind == "accept" and d.released and not c.inferred:  # an inferred accept has no real start
        done = min(s.ts for _, _, s in d.released)
        if c.start > done:
            return f"connection queued {human_duration(c.start - done)} before accept()"
        if any(s.flags & Flag.SYN and not s.flags & Flag.ACK for _, _, s in d.released):
            # TCP Fast Open (RFC 7413): the SYN's data was accepted, accept() returns at the SYN
            return "returns at the SYN (Fast Open: data in the SYN)"
        return "blocks until the handshake is done"
    return ""


def _place_calls(
    visible: list[tuple[Call, Side]],
    segments: Sequence[Segment],
    frame_index: dict[int, int],
    item_of_seg: list[int],
    items: list[_Item],
    ys: list[tuple[float, float]],
    tmap: _TimeMap,
    t0: float,
) -> tuple[list[CallBar], list[Connector], list[Lane]]:
    # 1. extents from the time map, bent to respect causality with the call's frames
    drafts: list[_Draft] = []
    for c, side in visible:
        kind = call_kind(c.call)
        d = _Draft(c, side, kind, tmap(c.start), tmap(c.end, end=True), [], [])
        for f in c.frames:
            i = frame_index.get(f)
            if i is None:
                continue
            seg = segments[i]
            k = item_of_seg[i]
            sent_by: Side = "client" if seg.dir is Direction.C2S else "server"
            if items[k].fold:
                y = (ys[k][0] + ys[k][1]) / 2
            else:
                y = ys[k][0] if sent_by == side else ys[k][1]
            (d.caused if sent_by == side else d.released).append((k, y, seg))
        if d.caused and kind in ("send", "connect", "close"):
            d.y0 = min(d.y0, min(y for _, y, _ in d.caused) - 0.04)
        if d.released and kind in ("recv", "accept", "connect", "wait"):
            d.y1 = max(d.y1, max(y for _, y, _ in d.released) + 0.04)
        d.y1 = max(d.y1, d.y0)
        drafts.append(d)

    # 2. per thread: a call starts after the previous one returned; minimum bar height
    last_end: dict[tuple[str, int, int, bool], float] = {}
    for d in drafts:
        key = (d.side, d.call.pid, d.call.tid, d.call.inferred)
        prev_end = last_end.get(key)
        if prev_end is not None and d.y0 < prev_end + 0.03:
            d.y0 = prev_end + 0.03
            d.y1 = max(d.y1, d.y0)
        d.y1 = max(d.y1, d.y0 + MIN_BAR)
        last_end[key] = d.y1

    # 3. columns: interval partitioning per side (overlapping threads get their own column)
    col_ends: dict[str, list[float]] = {"client": [], "server": []}
    for d in drafts:
        ends = col_ends[d.side]
        for col, e in enumerate(ends):
            if d.y0 >= e + 0.02:
                ends[col] = d.y1
                d.col = col
                break
        else:
            if len(ends) < MAX_COLUMNS:
                ends.append(d.y1)
                d.col = len(ends) - 1
            else:
                d.col = min(range(len(ends)), key=ends.__getitem__)
                ends[d.col] = max(ends[d.col], d.y1)

    # 4. texts: label at the bar's top, note at its bottom, pushed down so none collide
    texts: dict[str, list[tuple[float, int, str]]] = {"client": [], "server": []}
    for idx, d in enumerate(drafts):
        texts[d.side].append((d.y0 + 0.1, idx, "label"))
        d.note = _call_note(d, segments)
        if d.note:
            # at the return of a long call; right under the label of a short one, so that
            # no other call's label comes between a call and its note
            tall = d.y1 - d.y0 >= 2 * CALL_TEXT_PITCH + 0.1
            anchor = d.y1 - 0.05 if tall else d.y0 + 0.1 + 1e-6
            texts[d.side].append((anchor, idx, "note"))
    text_y: dict[tuple[int, str], float] = {}
    for lst in texts.values():
        lst.sort()
        floor = float("-inf")
        for y, idx, what in lst:
            y = max(y, floor)
            text_y[(idx, what)] = y
            floor = y + CALL_TEXT_PITCH

    # 5. records
    lanes: list[Lane] = []
    lane_x_of: dict[str, float] = {}
    for side in ("client", "server"):
        mine = [d for d in drafts if d.side == side]
        if not mine:
            continue
        direction = -1 if side == "client" else 1
        lane_x = (X_CLIENT - LANE_OFFSET) if side == "client" else (X_SERVER + LANE_OFFSET)
        lane_x_of[side] = lane_x
        pids: list[int] = []
        for d in mine:
            if not d.call.inferred and d.call.pid not in pids:
                pids.append(d.call.pid)
        if pids:
            who = (f"pid {pids[0]}" if len(pids) == 1 else
                   "pids " + ", ".join(map(str, pids[:4])) + (", …" if len(pids) > 4 else ""))
            title = f"{side} process ({who})"
        else:
            title = f"{side} process (calls inferred)"
        columns = 1 + max(d.col for d in mine)
        lanes.append(Lane(side, lane_x, title, tuple(pids), columns, direction))  # type: ignore[arg-type]

    bars: list[CallBar] = []
    connectors: list[Connector] = []
    for idx, d in enumerate(drafts):
        c = d.call
        direction = -1 if d.side == "client" else 1
        x = lane_x_of[d.side] + direction * LANE_COLUMN_STEP * d.col
        x_inner = x - direction * BAR_HALF_WIDTH
        label_x = x + direction * (BAR_HALF_WIDTH + CALL_LABEL_GAP)
        bar_index = len(bars)
        bars.append(CallBar(
            call=c, side=d.side, column=d.col, x=x, x_inner=x_inner, y0=d.y0, y1=d.y1,
            label=_call_label(c), label_x=label_x, label_y=text_y[(idx, "label")], note=d.note,
            note_y=text_y.get((idx, "note"), d.y1), inferred=c.inferred, failed=c.failed,
            t_start_ms=(c.start - t0) * 1e3, t_end_ms=(c.end - t0) * 1e3,
        ))
        x_line = X_CLIENT if d.side == "client" else X_SERVER
        seen: set[float] = set()
        for k, y, seg in d.caused + d.released:
            if y in seen:
                continue
            seen.add(y)
            connectors.append(Connector(x_inner, min(max(y, d.y0), d.y1), x_line, y,
                                        None if items[k].fold else seg.frame, bar_index, c.inferred))
        # accept() called after the handshake: show how long the connection sat queued
        if d.kind == "accept" and d.released:
            arrived = min(y for _, y, _ in d.released)
            if d.y0 > arrived + 0.05:
                first = min((s for _, _, s in d.released), key=lambda s: s.ts)
                connectors.append(Connector(x, arrived, x, d.y0, first.frame, bar_index,
                                            c.inferred, kind="queue"))
    return bars, connectors, lanes
