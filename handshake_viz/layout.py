"""A sequence diagram of one or more conversations, as plain data.

``plan_trace(connections, flows)`` decides everything about the picture that can
be decided without pixels: which lifelines exist and where, which rows exist and
where, what each label says, which states are written where, where the
socket-call bars go, what gets folded.  ``plan(segments, summary, calls)`` is the
same for one TCP connection.  ``handshake_viz.draw`` only paints a
:class:`Layout`; tests inspect it directly.  Nothing here imports matplotlib.

Lifelines
=========
One lifeline per socket address: ``(transport, normalized ip, port)``.  A
server that accepted three clients is ONE lifeline (its listening port), with
ONE lane of calls beside it; each client is a lifeline of its own.  Clients are
on the left in order of first appearance, servers on the right; an address that
is a server in any conversation counts as a server.  A UDP flow's lifelines are
its two addresses (the flow's client is whoever sent first).

Coordinates
===========
``x`` is in *lifeline units*: the innermost client's lifeline is at ``x = 0``,
the first server's at ``x = 1``.  The gap between them is the *text gap*: every
arrow crosses it, and every row's label and seq/ack line is written there.
Further clients sit to the left of ``x = 0``, further servers to the right of
``x = 1``, each far enough from its neighbour for its lane (the socket calls,
``LANE_OFFSET`` outside its lifeline) and its state marks.  With one client and
one server this is the classic picture: lifelines at 0 and 1, lanes outside.

``y`` is in *row units* and grows *downwards* (time runs down the page): in
``time="ordered"`` mode the k-th row's arrow leaves its sender at ``y = k`` and
reaches the receiver at ``y + SLANT`` (plus ``SECOND_LINE`` for every earlier
row whose seq/ack line and options are too long for one line, e.g. a TCP Fast
Open SYN).

Rows
====
One row per TCP segment or UDP datagram, all conversations interleaved in
capture order (frame numbers; the conversations come from one capture).  A
row's arrow leaves the sender's lifeline at ``Row.y`` and arrives at
``Row.y_end`` (the slant only shows the direction of travel; on loopback both
instants are the capture time).

* ``time="ordered"`` (default): rows are evenly spaced in capture order and the
  real time is written beside each row.  Loopback segments are microseconds
  apart; spacing them by time would stack every label on top of the next.
* ``time="real"``: ``y`` follows real time (``k`` row units per second, ``k``
  chosen so the whole trace spans ~1.5 rows per row drawn), **but two rows
  are never closer than one row unit**: a burst is pushed down until it fits
  and the rows after it are placed at their real time again as soon as there is
  room.  So vertical gaps larger than a row are true idle times (a server that
  thought for 200 ms, an accept() called late), while bursts stay legible.
  Row labels still print the exact time.

Time margin
===========
Each row's time since time 0 is written in the left margin once: a row at the
same printed time as the row above (``13.58 ms`` twice) leaves its margin empty.
A wait before a row that stands out from the capture's rhythm (at least
``GAP_MIN`` seconds and ``GAP_FACTOR`` times the median gap between rows, e.g.
the 43 ms a Nagle-delayed write waits for a delayed ACK) is written between the
two rows, ``+43 ms``: in ``time="ordered"`` mode nothing else shows it.  In
``time="real"`` mode an idle note says it instead where the stretch is tall.

A datagram's row says ``UDP len=6 "hello\\n"``: no states, no flags, nothing is
a retransmission, and a note under the diagram says what UDP does not do.

Folding
=======
With more than ``max_rows`` rows (``max_rows=0``: never fold) the first and
the last rows are kept (the leading handshake rows and the trailing close rows
whole when they fit, the rest of the budget split evenly) and the run between
them becomes one :class:`Fold` row whose text counts what it hides:
``… 1,204 segments, 88 KiB each way, 0.4 s …`` plus analysis events and hidden
socket calls.  Nothing is dropped silently: the fold counts plus the drawn rows
always add up to the packets given, and a state change inside a fold is written
at the fold.

Calls
=====
Socket calls become bars in their lifeline's lane from their start to their
return.  A call goes to the lifeline whose address is its socket's ``local``
address (an unbound UDP socket's ``0.0.0.0:port`` matches by port), else to the
one its ``conn``, ``remote`` address, frames or name point to (a ``recv`` is on
the receiver's side of the segment that released it), else to the one the other
calls on its socket went to (same pid and fd, between socket() and close()), else
to the one its pid's other calls went to.  Times map to ``y`` through the rows: a time between two
rows is interpolated between the first one's arrival and the second one's
departure, so a call that started before a segment is drawn above its arrow and
a ``recv`` that returned after a segment arrived ends below it.  The frames a
call caused (sent by its lifeline) or was released by (received by it) are
joined to the bar by connector lines; where the clocks disagree by a hair (up
to ``MAX_BEND`` rows) the bar is stretched so the picture never shows an effect
before its cause.  Farther than that the call stays where its clock puts it: a
bar stretched over rows would push its thread's next calls below the segments
they caused (strace's clock can lag the capture's by milliseconds on a busy
machine).  Inferred calls are marked so the painter draws them hollow and dashed.

Calls that repeat close together on one thread (five ``setsockopt``, a burst of
``poll``/``recvfrom``) share one bar labelled with the count, ``5 ×
setsockopt(7)``, ``40 × sendto(4) → 65536, 2.5 MiB``; :class:`CallBar` keeps
each call (``calls``, ``members``) for a view that unfolds them.  A label sits
beside its bar's outer edge; texts of a lane that would collide are moved apart
as little as possible, and a label that no longer touches its bar (or had to
move out past a bar of an outer column) gets a leader line to it.  A fold is
joined once per lane, by the first call that reads or writes what it hides, and
a call that read data which had arrived before it started (from the receive
buffer) is joined to the first and the last of those segments: the span it
read, not a fan of lines.  ``CallMember.frames`` still lists every frame.

States
======
A TCP endpoint's RFC 9293 state is written on its lifeline where it changes: at
the departure of a segment it sent, at the arrival of one it received.  A server
found in LISTEN is marked above its first row.  On a lifeline shared by several
connections (a server's listening port) each state names the connection's peer,
``ESTABLISHED (client 2)``: the kernel keeps one socket per connection, and the
listening socket stays in LISTEN all along.

Layers
======
Given the kernel's account (``kernel=``, ``Trace.kernel``) each state mark carries the
kernel's verdict, its name for the state and, where it matters, how long the side
stayed in it (:class:`StateMark` ``verdict``/``kernel``/``footnote``/``duration``); a
listener's accept queue becomes a :class:`QueueGauge` between its lifeline and its
lane (the lane moves out to make room, and past the longer state texts); a dropped
segment's row gets a ``kernel_tag``; differences, disagreements and drops are
explained in numbered :class:`Footnote` records; ``windows=True`` adds a
:class:`WindowStrip` right of everything.  Given explanations (``explain=``) the
story's :class:`StoryMarker` records go in the margin left of the times and its
:class:`StoryLine` records under the diagram.  What they say is decided in
:mod:`handshake_viz.layers`; where they go, here.  Without them the layout is the same
as before they existed.
"""

from __future__ import annotations

import bisect
import heapq
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Union

from handshake_viz.errors import UsageError
from handshake_viz.hindsight import refusing_rst, settle
from handshake_viz.layers import (
    BADGES,
    INFINITE_SSTHRESH,
    WINDOW_COLUMNS,
    WINDOW_TITLE,
    Footnote,
    QueueGauge,
    QueueStep,
    StoryLine,
    StoryMarker,
    WindowRow,
    WindowStrip,
    check_of,
    drop_note,
    drop_words,
    duration_text,
    kernel_key,
    queue_text,
    resent_as,
    story_lines,
    timings_by_call,
    usable_window,
    wait_text,
    window_cells,
)
from handshake_viz.model import (
    Analysis,
    Call,
    CallKind,
    ConnectionSummary,
    Datagram,
    Direction,
    Endpoint,
    Flag,
    FlowSummary,
    Label,
    Phase,
    Segment,
    TcpState,
    normalize_ip,
)
from handshake_viz.text import (
    clock_text,
    escape_preview,
    human_duration,
    humanize_bytes,
    plural,
    safe_text,
    title_duration,
)

if TYPE_CHECKING:  # the pipeline's records, read by attribute only
    from handshake_viz.explain import Explanation
    from handshake_viz.kerneljoin import AcceptQueue, KernelConnection, KernelDrop, KernelView, SegmentKernel
    from handshake_viz.pipeline import Connection, Flow
    from handshake_viz.timing import CallTiming

__all__ = [
    "CallBar",
    "CallMember",
    "Connector",
    "Fold",
    "Footnote",
    "LANE_OFFSET",
    "Lane",
    "Layout",
    "Lifeline",
    "Note",
    "QueueGauge",
    "QueueStep",
    "Row",
    "SLANT",
    "StateMark",
    "StoryLine",
    "StoryMarker",
    "TimeMode",
    "UDP_NOTE",
    "WindowRow",
    "WindowStrip",
    "datagram_text",
    "plain",
    "plan",
    "plan_trace",
    "segment_text",
]

TimeMode = Literal["ordered", "real"]
Side = Literal["client", "server"]
Transport = Literal["tcp", "udp"]
Packet = Union[Segment, Datagram]

#: What a figure with UDP says under the diagram.
UDP_NOTE = ("UDP: no handshake, no acknowledgements, no close; each sendto() is one datagram, "
            "and nothing tells the sender whether it arrived")

# --- geometry (see "Coordinates" above) ---------------------------------------------------
X_CLIENT = 0.0  # the innermost client
X_SERVER = 1.0  # the first server
SLANT = 0.42  # how far (rows) an arrow drops from departure to arrival
LANE_OFFSET = 0.62  # lane centre distance from its lifeline
LANE_COLUMN_STEP = 0.13  # extra columns (overlapping calls of other threads) go outwards
MAX_COLUMNS = 4
BAR_HALF_WIDTH = 0.045
CALL_LABEL_GAP = 0.025  # between a bar and its label
CALL_TEXT_PITCH = 0.30  # min vertical distance between two texts in a lane (rows)
TEXT_HALF = 0.13  # half a lane text's height (rows, at the painter's default style)
MIN_BAR = 0.14  # a call that took no time still gets a visible bar (rows)
MAX_BEND = 1.0  # a bar is stretched this far at most to reach a frame it caused or waited for
PRE_STEP = 0.4  # rows between call starts before the first segment
POST_STEP = 0.4  # … and after the last one
REAL_STRETCH = 1.5  # time="real": row units per drawn row spread over the duration
IDLE_ROWS = 3.0  # time="real": an empty stretch this tall gets a note saying how long it is
GAP_MIN = 0.001  # seconds: a wait before a row is written in the margin from this long …
GAP_FACTOR = 10.0  # … and this many times the median wait between rows
DETAIL_CHARS = 49  # detail + extra longer than this: extra gets a line of its own …
SECOND_LINE = 0.3  # … and the next row moves down this much
LISTEN_ABOVE = 0.55  # a server found listening: its LISTEN mark this far above its first row
# The kernel and explanation layers (handshake_viz.layers)
QUEUE_CELL = 0.032  # one slot of an accept-queue gauge
QUEUE_SLOTS = 8  # a queue that holds more is drawn with as many slots as were ever filled
QUEUE_GAP = 0.035  # between a gauge and its lane's bars, and between the states and a gauge
BADGE_GAP = 0.02  # between a state's box and its verdict
MARKER_CHAR = 0.019  # one character of a story marker (7.5 pt bold)
MARKER_PAD = 0.025  # a marker's box around its text
STRIP_GAP = 0.25  # between the diagram's right edge and the window strip
# Room between two neighbouring lifelines on the same side (lifeline units).  Widths of
# texts are estimated from their length at the painter's default style (3.6 in per
# lifeline unit; call labels 8.5 pt monospace, notes and states 7.5 pt italic); the
# painter never moves anything, so a generous estimate only costs a little width.
CALL_CHAR = 0.0210  # one character of a call label
NOTE_CHAR = 0.0160  # … of a call's note
STATE_CHAR = 0.0185  # … of a state mark (plus STATE_PAD for its box)
STATE_PAD = 0.07
TIME_CHAR = 0.0195  # … of a time in the margin (8 pt monospace)
NEIGHBOUR_GAP = 0.08  # air between one lifeline's texts and the next lifeline
MIN_PITCH = 0.8  # two lifelines on the same side are never closer than this


# ==========================================================================================
# Records
# ==========================================================================================


@dataclass(frozen=True, slots=True)
class Lifeline:
    """One socket address's kernel side, drawn as a vertical line headed
    ``client 127.0.0.1:49736`` (``client 2 127.0.0.1:51382`` when there are several)."""

    side: Side  # its role: a server in any conversation is a server
    x: float
    endpoint: str  # "127.0.0.1:49736"
    header: str  # "client 127.0.0.1:49736"
    subtitle: str  # "TCP (kernel)" / "UDP (kernel)"
    name: str  # "client", "client 2", "server"
    transport: Transport
    conns: tuple[int, ...]  # TCP connections it takes part in
    flows: tuple[int, ...]  # UDP flows it takes part in


@dataclass(frozen=True, slots=True)
class Lane:
    """One lifeline's application lane: the process(es) whose socket calls are drawn."""

    side: Side
    x: float  # centre of the innermost column
    title: str  # "client process (pid 2943)"
    pids: tuple[int, ...]  # traced pids, in order of appearance
    columns: int  # bar columns used (>1 when calls of several threads overlap)
    direction: int  # -1: columns grow to the left (client), +1: to the right (server)
    lifeline: int  # index into Layout.lifelines


@dataclass(frozen=True, slots=True)
class Fold:
    """What a folded run of rows contained (the counts are exact)."""

    first_frame: int
    last_frame: int
    segments: int  # TCP segments
    segments_c2s: int
    segments_s2c: int
    bytes_c2s: int  # payload length (sequence space) client -> server, datagrams included
    bytes_s2c: int
    duration: float  # seconds from the first to the last folded packet
    analysis: tuple[tuple[Analysis, int], ...]  # analysis flag counts, most frequent first
    calls: int  # socket calls that started and ended inside the run (not drawn)
    datagrams: int  # UDP datagrams
    text: str  # "… 1,204 segments, 88 KiB each way, 0.4 s …"


@dataclass(frozen=True, slots=True)
class Row:
    """One segment or datagram arrow, or one fold band (``kind == "fold"``)."""

    index: int
    kind: Literal["segment", "datagram", "fold"]
    y: float  # departure (fold: top of the band)
    y_end: float  # arrival (fold: bottom of the band)
    t_ms: float  # ms since the layout's t0 (fold: its first packet)
    time_text: str  # "0.054 ms"
    x_from: float
    x_to: float
    dir: Direction | None  # None for a fold
    frame: int | None  # None for a fold
    label: str  # "SYN-ACK", "UDP"  (fold: "…")
    detail: str  # "seq=0 ack=1", 'len=6 "hello\n"'
    extra: str  # "win=65495 mss=65495 wscale=7 sackOK" (SYN/SYN-ACK, window events)
    text: str  # label and detail on one line: "SYN-ACK seq=0 ack=1"
    phase: Phase | None  # None for a datagram or a fold
    analysis: tuple[Analysis, ...]
    markers: tuple[str, ...]  # short tags for the analysis flags: ("retransmission",)
    flagged: bool  # a problem flag is set (the painter dashes the arrow)
    conn: int | None  # the TCP connection of a segment row
    flow: int | None  # the UDP flow of a datagram row
    lifeline_from: int | None  # indexes into Layout.lifelines (None for a fold)
    lifeline_to: int | None
    text_x: float  # centre of the row's texts: the text gap's middle (a fold: the band's)
    text_room: float  # width of the room for them (lifeline units)
    fold: Fold | None = None
    lines: int = 1  # 2: ``extra`` goes on its own line under ``detail`` (the row is taller)
    margin_text: str = ""  # what the time margin shows (at time_y): "" when the row above showed the same
    gap_text: str = ""  # "+43 ms": a wait before this row that stands out (see "Time margin")
    gap_y: float | None = None  # where gap_text goes: between the row above's time and this one's
    kernel_tag: str = ""  # the kernel layer: "✗3 dropped: accept queue full" (see Layout.footnotes)
    dropped: bool = False  # the kernel dropped this segment on arrival

    @property
    def time_y(self) -> float:
        """Where the row's time is written in the margin: level with the arrow's tail
        (a fold's: its middle)."""
        return self.y_mid if self.kind == "fold" else self.y

    @property
    def y_mid(self) -> float:
        return (self.y + self.y_end) / 2


@dataclass(frozen=True, slots=True)
class StateMark:
    """An endpoint's TCP state written on its lifeline where it changed."""

    side: Side
    state: TcpState
    x: float  # the lifeline
    y: float
    frame: int | None  # the segment after which the endpoint is in this state (None: initial)
    text: str  # "ESTABLISHED", on a shared lifeline "ESTABLISHED (client 2)"
    lifeline: int  # index into Layout.lifelines
    conn: int | None  # None: the listening socket's LISTEN (a fold's mark naming several: the first)
    # the kernel layer (all empty without the kernel's account):
    verdict: str | None = None  # "agree", "linux" (Linux reports it differently), "disagree"
    kernel: str = ""  # the kernel's name for the step: "SYN_RECV", "CLOSE+tw"
    footnote: int | None = None  # the Footnote explaining a difference or a disagreement
    duration: str = ""  # how long the side stayed in the state, where that matters: "16 ms"

    @property
    def shown(self) -> str:
        """The box's text: the state, and its duration when there is one."""
        return f"{self.text} · {self.duration}" if self.duration else self.text

    @property
    def badge(self) -> str:
        """The verdict's glyph beside the box: ``✓``, ``≈1``, ``✗2`` (``""``: none)."""
        if self.verdict is None:
            return ""
        return BADGES[self.verdict] + (str(self.footnote) if self.footnote is not None else "")


@dataclass(frozen=True, slots=True)
class CallMember:
    """One call of a :class:`CallBar`, as it would be drawn alone: what an interactive
    view shows when it unfolds a group (``5 × setsockopt(7)``) into its calls."""

    call: Call
    label: str  # "setsockopt(7)"
    y0: float  # its own extent, inside the group's bar
    y1: float
    t_start_ms: float
    t_end_ms: float
    frames: tuple[int, ...]  # the drawn frames it caused or was released by


@dataclass(frozen=True, slots=True)
class CallBar:
    """A socket call, or a group of calls that repeat (``40 × sendto(4) → 65536,
    2.5 MiB``): a bar in its lifeline's lane from start (y0) to return (y1).

    The label is beside the bar's outer edge; where it could not stay there (pushed
    up or down by the lane's other texts, or moved out past a bar of an outer
    column) ``leader`` is a line from the bar to it."""

    call: Call  # the (first) call
    side: Side
    column: int
    x: float  # bar centre
    x_inner: float  # bar edge facing the lifeline (connectors start here)
    y0: float
    y1: float
    label: str  # "recv(4) → 6", "5 × setsockopt(7)"
    label_x: float  # where the label starts (client: ends), on the lane's outer side
    label_y: float  # moved where texts of the lane would collide
    note: str  # "FIN read as end of stream" (may be "")
    note_y: float
    inferred: bool
    failed: bool
    t_start_ms: float
    t_end_ms: float
    lifeline: int  # index into Layout.lifelines
    calls: tuple[Call, ...] = ()  # every call the bar stands for, in order (``(call,)`` alone)
    members: tuple[CallMember, ...] = ()  # the same, each with its own label and extent
    leader: tuple[float, float, float, float] | None = None  # (x0, y0) on the bar -> (x1, y1) at the label

    @property
    def count(self) -> int:
        """How many calls the bar stands for (1, or a group's size)."""
        return len(self.calls)


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
    x: float  # centre


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything the painter draws, in diagram coordinates (see module docstring)."""

    title: str
    time_mode: TimeMode
    t0: float  # epoch seconds of time 0 (the first SYN, or the first packet)
    segments: int  # TCP segments represented (drawn rows + folded)
    datagrams: int  # UDP datagrams represented (drawn rows + folded)
    conns: tuple[int, ...]  # the TCP connections drawn
    flows: tuple[int, ...]  # the UDP flows drawn
    lifelines: tuple[Lifeline, ...]  # clients left to right, then servers
    lanes: tuple[Lane, ...]
    rows: tuple[Row, ...]
    states: tuple[StateMark, ...]
    calls: tuple[CallBar, ...]
    connectors: tuple[Connector, ...]
    notes: tuple[Note, ...]
    idle: tuple[Note, ...]  # time="real": "60 s without segments" in long empty stretches
    legend: tuple[str, ...]  # keys: phase values, "udp", "flagged", "fold", "call-traced", …
    xlim: tuple[float, float]
    ylim: tuple[float, float]  # (top, bottom), top < bottom
    lifeline_top: float
    lifeline_bottom: float
    time_x: float  # right edge of the time margin texts
    # the kernel layer (see handshake_viz.layers; empty without the kernel's account)
    kernel_key: str = ""  # what the marks mean, one line under the diagram
    footnotes: tuple[Footnote, ...] = ()
    queues: tuple[QueueGauge, ...] = ()
    windows: WindowStrip | None = None  # --windows
    # the explanation layer (explain=…)
    markers: tuple[StoryMarker, ...] = ()
    story: tuple[StoryLine, ...] = ()
    lang: str = "en"  # the language of the story

    @property
    def segment_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "segment")

    @property
    def datagram_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "datagram")

    @property
    def arrow_rows(self) -> tuple[Row, ...]:
        """Every row drawn as an arrow: segments and datagrams, in order."""
        return tuple(r for r in self.rows if r.kind != "fold")

    @property
    def fold_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "fold")

    @property
    def labels(self) -> tuple[str, ...]:
        """The row texts in order, e.g. ``("SYN seq=0", "SYN-ACK seq=0 ack=1", …)``."""
        return tuple(r.text for r in self.rows)


# ==========================================================================================
# Text from outside
# ==========================================================================================

NAME_CHARS = 32  # a call's name or errno from a call log: longer is cut (with "…")
TITLE_CHARS = 200  # a title given by the caller (a file name, say)


def plain(text: object, limit: int = NAME_CHARS) -> str:
    """Text that came from the wire or a traced program (a call log's call name or
    errno, an address, a title made of a file name) as the diagram writes it: every
    control, separator, bidi, surrogate (invalid UTF-8 decoded with surrogateescape)
    and other invisible format character (``U+200F`` right-to-left mark, zero-width
    spaces, ``U+FEFF``) escaped as ``text.safe_text`` writes them (``\\x1b``,
    ``\\u200f``), and cut to ``limit`` characters with ``…``.  ``$``, ``\\`` and braces
    stay as they are: the painter hands every string to matplotlib as plain text."""
    s = safe_text(text)
    if not s.isascii():
        s = "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch) == "Cf" else ch for ch in s)
    if len(s) > limit:
        head = s[:limit - 1]
        cut = head.rfind("\\", len(head) - 5)  # never half an escape
        s = (head[:cut] if cut >= 0 else head) + "…"
    return s


# ==========================================================================================
# Row texts
# ==========================================================================================

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
    Analysis.BAD_CHECKSUM: "bad checksum",
    Analysis.CHECKSUM_OFFLOADED: "checksum offloaded",
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
        Analysis.BAD_CHECKSUM,  # (not an offloaded one: the card filled that in)
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
# A count of a flag in a fold's summary is its marker plus "s" ("3 dup ACKs"), save
# where English wants other words.
_COUNTED: dict[Analysis, tuple[str, str]] = {
    Analysis.OUT_OF_ORDER: ("out-of-order segment", "out-of-order segments"),
    Analysis.LOST_SEGMENT: ("capture gap", "capture gaps"),
    Analysis.ACK_UNSEEN: ("ACK of an unseen segment", "ACKs of unseen segments"),
    Analysis.WINDOW_FULL: ("window full", "window-full segments"),
}


def _counted(flag: Analysis) -> tuple[str, str]:
    """How one and several segments with ``flag`` are named in a fold's summary."""
    if flag in _COUNTED:
        return _COUNTED[flag]
    marker = _MARKERS.get(flag)
    return (marker, marker + "s") if marker is not None else (flag.value, flag.value)


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


def datagram_text(d: Datagram) -> tuple[str, str]:
    """``("UDP", 'len=6 "hello\\\\n"')`` for one datagram's arrow: its length and the
    start of its payload, nothing else (UDP has no sequence numbers to show)."""
    preview = escape_preview(d.payload, d.length)
    return "UDP", f"len={d.length} {preview}".rstrip()


# ==========================================================================================
# Calls: labels, kinds
# ==========================================================================================

# Kinds whose label shows the return value (bytes moved, the accepted fd, ready count) …
_SHOWS_RESULT = frozenset({CallKind.SEND, CallKind.RECV, CallKind.ACCEPT, CallKind.WAIT})
# … and kinds that return 0 or an fd nobody needs to read (only failures are shown).
_QUIET_RESULT = frozenset({CallKind.CONNECT, CallKind.CLOSE, CallKind.SHUTDOWN, CallKind.SOCKET,
                           CallKind.BIND, CallKind.LISTEN, CallKind.OPTION, CallKind.QUERY})
# Which end of a packet a call sits at: these sent it (or, a connect, began the handshake) …
_SENDING = frozenset({CallKind.SEND, CallKind.CLOSE, CallKind.SHUTDOWN})
# … these waited for it to arrive.
_WAITING = frozenset({CallKind.RECV, CallKind.ACCEPT, CallKind.WAIT})


# Kinds that may share a bar when they repeat: options and queries (a socket being set
# up), or one kind of moving data with the waits between (poll, recvfrom, poll, …).
_FAMILIES = (
    frozenset({CallKind.OPTION, CallKind.QUERY}),
    frozenset({CallKind.SEND, CallKind.WAIT}),
    frozenset({CallKind.RECV, CallKind.WAIT}),
    frozenset({CallKind.OTHER, CallKind.WAIT}),
)


def _group_label(calls: Sequence[Call], transport: Transport) -> str:
    """The label of a group of calls that repeat: ``5 × setsockopt(7)``, ``40 ×
    sendto(4) → 65536, 2.5 MiB`` (the result when every call returned the same),
    ``12 × poll/recvfrom(5), 1.1 MiB`` (bytes moved, when any)."""
    names = list(dict.fromkeys(plain(c.call) for c in calls))
    fds = {c.fd for c in calls if c.fd is not None}
    fd = str(next(iter(fds))) if len(fds) == 1 else ""
    head = f"{len(calls)} × {'/'.join(names[:3])}{'/…' if len(names) > 3 else ''}({fd})"
    first = calls[0]
    if first.errno is not None:
        return f"{head} → {plain(first.errno)}"
    if (len(names) == 1 and first.kind in _SHOWS_RESULT and first.ret is not None
            and all(c.ret == first.ret for c in calls)
            and not (first.kind is CallKind.RECV and first.ret == 0 and transport == "tcp")):
        head += f" → {first.ret}"
    moved = sum(c.nbytes or 0 for c in calls if c.kind in (CallKind.SEND, CallKind.RECV))
    return f"{head}, {humanize_bytes(moved)}" if moved else head


def _stack(want: Sequence[float], pitch: float) -> list[float]:
    """Positions for texts that would sit at ``want`` (ascending), in the same order,
    at least ``pitch`` apart, moved as little as possible (least squares): the
    pool-adjacent-violators algorithm on ``want[i] - i * pitch``.  A crowd of labels
    spreads around its bars, up as well as down, instead of drifting ever lower."""
    blocks: list[list[float]] = []  # [sum, count] of pooled positions
    for i, w in enumerate(want):
        blocks.append([w - i * pitch, 1.0])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
    out: list[float] = []
    for total, n in blocks:
        out.extend([total / n] * int(n))
    return [z + i * pitch for i, z in enumerate(out)]


def _call_label(call: Call, transport: Transport) -> str:
    fd = "" if call.fd is None else str(call.fd)
    head = f"{plain(call.call)}({fd})"
    if call.errno is not None:
        return f"{head} → {plain(call.errno)}"
    if call.kind is CallKind.RECV and call.ret == 0 and transport == "tcp":
        return f"{head} → 0 (EOF)"  # on UDP, 0 is an empty datagram
    if call.kind in _SHOWS_RESULT and call.ret is not None:
        return f"{head} → {call.ret}"
    if call.kind not in _QUIET_RESULT and call.ret not in (None, 0):
        return f"{head} → {call.ret}"
    return head


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
# Planning: conversations, folding, notes
# ==========================================================================================


@dataclass(frozen=True, slots=True)
class _Conv:
    """One conversation to draw: a TCP connection or a UDP flow."""

    transport: Transport
    number: int  # conn or flow number
    client: Endpoint
    server: Endpoint
    segments: tuple[Segment, ...]  # in capture order (a TCP connection's) …
    datagrams: tuple[Datagram, ...]  # … or a UDP flow's
    calls: tuple[Call, ...]
    summary: ConnectionSummary | FlowSummary

    @property
    def packets(self) -> tuple[Packet, ...]:
        return self.segments or self.datagrams

    @property
    def t0(self) -> float:
        """Time 0 of the conversation: its first SYN, else its first packet."""
        first_syn = next((s.ts for s in self.segments if s.label is Label.SYN), None)
        return self.packets[0].ts if first_syn is None else first_syn


@dataclass(slots=True)
class _Item:
    """A row in the making: a packet index or a folded run [a, b)."""

    a: int
    b: int
    fold: bool


def _phase(p: Packet) -> Phase | None:
    return p.phase if isinstance(p, Segment) else None


def _fold_items(packets: Sequence[Packet], max_rows: int) -> list[_Item]:
    n = len(packets)
    if max_rows == 0 or n <= max_rows:
        return [_Item(i, i + 1, False) for i in range(n)]
    keep = max_rows - 1  # one row goes to the fold itself
    lead = 0
    while lead < n and _phase(packets[lead]) is Phase.HANDSHAKE:
        lead += 1
    trail = 0
    while trail < n - lead and _phase(packets[n - 1 - trail]) in (Phase.CLOSE, Phase.RESET):
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


def _fold_text(segments: int, datagrams: int, b_c2s: int, b_s2c: int, duration: float,
               analysis: Counter[Analysis], calls: int) -> str:
    parts = []
    if segments or not datagrams:
        parts.append(plural(segments, "segment", "segments"))
    if datagrams:
        parts.append(plural(datagrams, "datagram", "datagrams"))
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
        one, many = _counted(flag)
        parts.append(plural(count, one, many))
    if calls:
        parts.append(plural(calls, "socket call", "socket calls"))
    return "… " + ", ".join(parts) + " …"


def _packets_word(segments: int, datagrams: int) -> str:
    """What the rows are: ``segments``, ``datagrams``, or ``packets`` when both."""
    if segments and datagrams:
        return "packets"
    return "datagrams" if datagrams else "segments"


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
    if rst is not None and rst is refusing_rst(segments):
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


def _socket_lives(calls: Iterable[Call]) -> dict[Call, int]:
    """Which calls were made on one socket: those on one (pid, fd) from the socket()
    or accept() that returned the fd to the close() of it (fd numbers are reused)."""
    life_of: dict[Call, int] = {}
    current: dict[tuple[int, int], int] = {}
    lives = 0
    for c in sorted(calls, key=lambda c: (c.start, c.end)):
        if c.kind is CallKind.ACCEPT and c.ret is not None and c.ret >= 0:
            lives += 1
            current[(c.pid, c.ret)] = lives  # the accepted socket's life begins
        fd = c.ret if c.kind is CallKind.SOCKET else c.fd
        if fd is None or fd < 0:
            continue
        key = (c.pid, fd)
        if c.kind is CallKind.SOCKET or key not in current:
            lives += 1
            current[key] = lives
        life_of[c] = current[key]
        if c.kind is CallKind.CLOSE:
            del current[key]
    return life_of


def _side_states(seg: Segment) -> tuple[tuple[Side, TcpState], tuple[Side, TcpState]]:
    """Both endpoints' states after ``seg``."""
    return ("client", seg.client_state), ("server", seg.server_state)


def _merge_notes(notes: list[tuple[int, str]]) -> list[str]:
    """``[(0, "client closed first …"), (1, "client closed first …")]`` ->
    ``["conns 0, 1: client closed first …"]``: one line per distinct text."""
    by_text: dict[str, list[int]] = {}
    for conn, text in notes:
        by_text.setdefault(text, []).append(conn)
    out = []
    for text, conns in by_text.items():
        who = f"conn {conns[0]}" if len(conns) == 1 else "conns " + ", ".join(map(str, conns))
        out.append(f"{who}: {text}")
    return out


# ==========================================================================================
# Entry points
# ==========================================================================================


def _check_options(time: str, max_rows: object) -> None:
    if time not in ("ordered", "real"):
        raise UsageError(f"--time {time}: use 'ordered' or 'real'")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
        raise UsageError(f"--max-rows {max_rows}: must be a whole number >= 0 (0 draws every segment)")


def plan(
    segments: Sequence[Segment],
    summary: ConnectionSummary | None = None,
    calls: Iterable[Call] = (),
    *,
    time: TimeMode = "ordered",
    max_rows: int = 60,
) -> Layout:
    """Lay out one connection's sequence diagram (:func:`plan_trace` of one connection).

    ``segments`` are one connection's, in capture order; ``summary`` its
    ConnectionSummary (endpoints, conn_state, history; derived from the
    segments when None); ``calls`` the socket calls to draw in the lanes (calls
    of other connections are ignored when ``Call.conn`` says so).
    """
    _check_options(time, max_rows)
    segments = list(segments)
    if not segments:
        raise UsageError("no segments to draw: the connection is empty")
    conns = sorted({s.conn for s in segments})
    if len(conns) > 1:
        raise UsageError(f"segments of {len(conns)} connections ({', '.join(map(str, conns[:5]))}) "
                         "given: draw one connection at a time")
    if summary is None:
        summary = _fallback_summary(segments)
    conv = _Conv("tcp", summary.conn, summary.client, summary.server, tuple(settle(segments)), (),
                 tuple(calls), summary)
    return _Planner([conv], (), time, max_rows, None, _Layers()).layout()


def plan_trace(
    connections: Iterable[Connection] = (),
    flows: Iterable[Flow] = (),
    *,
    calls: Iterable[Call] = (),
    time: TimeMode = "ordered",
    max_rows: int = 60,
    title: str | None = None,
    kernel: KernelView | None = None,
    windows: bool = False,
    explain: bool | Sequence[Explanation] = False,
    lang: str = "en",
) -> Layout:
    """Lay out several conversations of one capture on one time axis.

    ``connections`` are TCP connections (anything with ``summary``, ``segments``
    and optionally ``calls``, e.g. :class:`handshake_viz.pipeline.Connection`),
    ``flows`` UDP flows (``summary``, ``datagrams``, ``calls``).  ``calls`` adds
    socket calls that belong to no conversation yet (a trace's ``listen()`` and
    the listening socket's ``close()``): each is drawn on the lane of the lifeline
    whose address is its socket's, and dropped when that socket is not drawn.
    Calls given twice (in a connection and in ``calls``) are drawn once.

    Rows interleave in capture order; ``time``, ``max_rows`` as in :func:`plan`
    (``max_rows`` counts the rows of all conversations together).  ``title``
    replaces the generated one.

    The layers (:mod:`handshake_viz.layers`): ``kernel``, the kernel's account of the
    trace (``Trace.kernel``), adds the verdicts on the states, their durations, the
    accept queues and the drops; with ``windows`` also the strip of window variables.
    ``explain`` (True: each connection's ``explain()``; or the explanations themselves)
    adds the numbered markers and the story, in ``lang``.  Without them the diagram is
    the same as before they existed.
    """
    _check_options(time, max_rows)
    if lang not in ("en", "zh"):
        raise UsageError(f"--lang {lang}: use 'en' or 'zh'")
    connections = list(connections)
    convs: list[_Conv] = []
    for c in connections:
        segs = tuple(settle(tuple(c.segments)))  # a Trace's are settled already: a no-op
        if segs:
            s = c.summary if c.summary is not None else _fallback_summary(segs)
            convs.append(_Conv("tcp", s.conn, s.client, s.server, segs, (),
                               tuple(getattr(c, "calls", ()) or ()), s))
    for f in flows:
        grams = tuple(f.datagrams)
        if grams:
            fs = f.summary
            convs.append(_Conv("udp", fs.flow, fs.client, fs.server, (), grams,
                               tuple(getattr(f, "calls", ()) or ()), fs))
    if not convs:
        raise UsageError("nothing to draw: no segments or datagrams given")
    if explain is True:  # each drawn connection's own explanation
        drawn = {cv.number for cv in convs if cv.transport == "tcp"}
        explain = [c.explain() for c in connections
                   if hasattr(c, "explain") and c.summary is not None and c.summary.conn in drawn]
    layers = _Layers(kernel, windows and kernel is not None, tuple(explain or ()), lang)
    return _Planner(convs, tuple(calls), time, max_rows, title, layers).layout()


@dataclass(frozen=True, slots=True)
class _Layers:
    """What the planner adds beside the ladder (see handshake_viz.layers)."""

    kernel: KernelView | None = None
    windows: bool = False
    explain: tuple[Explanation, ...] = ()
    lang: str = "en"


# ==========================================================================================
# The planner
# ==========================================================================================

_Key = tuple[Transport, str, int, str]  # (transport, normalized ip, port, "" or "peer")
_ELSEWHERE = -1  # a call on a socket that is not drawn


@dataclass(slots=True)
class _Draft:
    """A call bar in the making (mutable while the lane is packed): one call, or a
    group of calls that repeat (``calls``, each call's own extent in ``parts``)."""

    calls: tuple[Call, ...]
    lifeline: int
    y0: float
    y1: float
    caused: list[tuple[int, float, Packet]]  # (item, y, packet) the call sent
    released: list[tuple[int, float, Packet]]  # packets whose arrival the call waited for
    parts: list[_Draft] = field(default_factory=list)  # a group's calls, each as a draft of its own
    col: int = 0
    label: str = ""
    note: str = ""
    outer: bool = False  # label out past the lane's outermost column (a bar is beside its own)

    @property
    def call(self) -> Call:
        return self.calls[0]


@dataclass(frozen=True, slots=True)
class _Mark:
    """A state mark before the lifelines have an x."""

    lifeline: int
    state: TcpState
    y: float
    frame: int | None
    text: str
    conn: int | None
    who: tuple[tuple[int, Side, int], ...] = ()  # (conversation, side, frame) it stands for
    # the kernel layer
    verdict: str | None = None
    kernel: str = ""
    cite: tuple[str, str, str] | None = None  # (kind, key, text) of its footnote
    footnote: int | None = None
    duration: str = ""

    @property
    def chars(self) -> int:
        """Characters written beside the lifeline: the box's text and the badge."""
        shown = len(self.text) + (3 + len(self.duration) if self.duration else 0)
        badge = 0 if self.verdict is None else 2 + (len(str(self.footnote)) if self.footnote else 0)
        return shown + badge


@dataclass(frozen=True, slots=True)
class _QueuePlan:
    """A listener's accept queue before x is known: its steps of constant depth, and the
    slots its gauge draws; the rest follows from them."""

    lifeline: int
    queue: AcceptQueue
    steps: tuple[QueueStep, ...]
    slots: int

    @property
    def y0(self) -> float:
        return self.steps[0].y0

    @property
    def y1(self) -> float:
        return self.steps[-1].y1

    @property
    def text(self) -> str:
        return queue_text(self.queue)

    @property
    def want_y(self) -> float:
        """Where its note would sit, beside the deepest step (the lane's texts are then
        moved apart)."""
        return max(self.steps, key=lambda st: st.depth).y0


class _Planner:
    """Plans one Layout.  The steps run in the order of :meth:`layout`; each
    reads what the earlier ones left on ``self``.  Everything vertical (rows,
    bars, states) is planned first; the lifelines get their x last, spaced by
    what turned out to be written beside them."""

    def __init__(self, convs: list[_Conv], extra_calls: tuple[Call, ...], time: TimeMode,
                 max_rows: int, title: str | None, layers: _Layers) -> None:
        self.convs = convs
        self.layers = layers
        # the kernel's account of each drawn connection (by conversation), of each frame
        self.kconn: dict[int, KernelConnection] = {}
        self.kseg: dict[int, SegmentKernel] = {}
        if layers.kernel is not None:
            for ci, cv in enumerate(convs):
                k = layers.kernel.connection(cv.number) if cv.transport == "tcp" else None
                if k is not None:
                    self.kconn[ci] = k
                    self.kseg.update((g.frame, g) for g in k.segments)
        self.timings: Mapping[Call, CallTiming] = timings_by_call(layers.explain)
        self.story = story_lines(layers.explain, layers.lang)
        self.time = time
        self.max_rows = max_rows
        self.title = title
        # every call once, in order of first mention
        self.all_calls: list[Call] = list(dict.fromkeys(
            [c for conv in convs for c in conv.calls] + list(extra_calls)))
        # all packets in capture order; each conversation's own order is kept
        self.packets: list[Packet]
        self.conv_of: list[int]
        if len(convs) == 1:
            self.packets, self.conv_of = list(convs[0].packets), [0] * len(convs[0].packets)
        else:
            streams = [[(p.frame, ci, p) for p in conv.packets] for ci, conv in enumerate(convs)]
            merged = list(heapq.merge(*streams, key=lambda e: e[0]))
            self.packets, self.conv_of = [e[2] for e in merged], [e[1] for e in merged]
        self.index_of_frame: dict[int, int] = {p.frame: i for i, p in enumerate(self.packets)}
        self.conv_of_conn = {cv.number: i for i, cv in enumerate(convs) if cv.transport == "tcp"}
        self.mono: list[float] = []
        last = float("-inf")
        for p in self.packets:  # captures can step backwards in time
            last = max(last, p.ts)
            self.mono.append(last)
        self.t0 = min(cv.t0 for cv in convs)
        self.n_segments = sum(len(cv.segments) for cv in convs)
        self.n_datagrams = sum(len(cv.datagrams) for cv in convs)

    # --- the whole plan ---------------------------------------------------------------------

    def layout(self) -> Layout:
        self._lifelines()
        self._rows()
        self._assign_calls()
        self._group_calls()
        self._rows_y(self._crowded_gaps())
        self._time_map()
        self._queue_plans()
        drafts = self._drafts()
        marks = self._judge(self._states())
        xs = self._positions(drafts, marks)
        return self._records(drafts, marks, xs)

    # --- lifelines: one per socket address ----------------------------------------------------

    def _lifelines(self) -> None:
        keys_of: list[tuple[_Key, _Key]] = []
        for cv in self.convs:
            sk: _Key = (cv.transport, normalize_ip(cv.server.ip), cv.server.port, "")
            ck: _Key = (cv.transport, normalize_ip(cv.client.ip), cv.client.port, "")
            if ck == sk:  # a socket talking to itself still gets two lifelines
                ck = (ck[0], ck[1], ck[2], "peer")
            keys_of.append((ck, sk))
        servers = {sk for _ck, sk in keys_of}
        client_keys: list[_Key] = []
        server_keys: list[_Key] = []
        for ci in dict.fromkeys(self.conv_of):  # conversations in order of first appearance
            ck, sk = keys_of[ci]
            if ck not in servers and ck not in client_keys:
                client_keys.append(ck)
            for key in (ck, sk):
                if key in servers and key not in server_keys:
                    server_keys.append(key)
        self.keys: list[_Key] = client_keys + server_keys
        self.n_clients = len(client_keys)
        index = {k: i for i, k in enumerate(self.keys)}
        self.ends: list[tuple[int, int]] = [(index[ck], index[sk]) for ck, sk in keys_of]
        self.endpoint: list[Endpoint] = [Endpoint("", 0)] * len(self.keys)
        for cv, (cl, sl) in zip(self.convs, self.ends):
            self.endpoint[cl], self.endpoint[sl] = cv.client, cv.server
        self.names: list[str] = []
        for i in range(len(self.keys)):
            side, k, n = (("client", i + 1, len(client_keys)) if i < self.n_clients
                          else ("server", i - self.n_clients + 1, len(server_keys)))
            self.names.append(side if n == 1 else f"{side} {k}")

    def side_of(self, lifeline: int) -> Side:
        return "client" if lifeline < self.n_clients else "server"

    def ends_of(self, i: int) -> tuple[int, int]:
        """(sender, receiver) lifelines of packet ``i``."""
        cl, sl = self.ends[self.conv_of[i]]
        return (cl, sl) if self.packets[i].dir is Direction.C2S else (sl, cl)

    # --- rows: which, and their y -------------------------------------------------------------

    def _rows(self) -> None:
        self.items = _fold_items(self.packets, self.max_rows)
        self.item_of: list[int] = [0] * len(self.packets)
        for k, it in enumerate(self.items):
            for i in range(it.a, it.b):
                self.item_of[i] = k
        self.texts: list[tuple[str, str, str]] = []
        for it in self.items:
            p = self.packets[it.a]
            if it.fold:
                self.texts.append(("…", "", ""))
            elif isinstance(p, Segment):
                self.texts.append(segment_text(p))
            else:
                self.texts.append((*datagram_text(p), ""))
        self.lines = [2 if e and len(d) + 2 + len(e) > DETAIL_CHARS else 1 for _l, d, e in self.texts]

    def _crowded_gaps(self) -> dict[int, list[float]]:
        """time="ordered": the gaps between two rows (by the index of the row above)
        in which more calls start on one lane than their labels fit in one row (a
        server restarting between two connections), and the call starts in them.
        Such a gap is stretched and, as before the first row, only the order of the
        calls in it is drawn: one step per start."""
        if self.time != "ordered":
            return {}
        ends = [self.mono[it.b - 1] for it in self.items]
        starts = [self.mono[it.a] for it in self.items]
        per_lane: Counter[tuple[int, int]] = Counter()
        in_gap: dict[int, set[float]] = {}
        for calls, ll in self.units:  # a group's label is one label
            c = calls[0]
            k = bisect.bisect_left(ends, c.start) - 1  # the last row that ended before it
            if 0 <= k < len(self.items) - 1 and ends[k] < c.start < starts[k + 1]:
                per_lane[(k, ll)] += 1
                in_gap.setdefault(k, set()).add(c.start)
        crowded = {k for (k, _ll), n in per_lane.items() if n * CALL_TEXT_PITCH > 1.0}
        return {k: sorted(in_gap[k]) for k in sorted(crowded)}

    def _rows_y(self, gaps: dict[int, list[float]]) -> None:
        self.gaps = gaps
        mono = self.mono
        ys: list[tuple[float, float]] = []
        real = self.time == "real"
        floor = float("-inf") if real else 0.0
        duration = mono[-1] - mono[0]
        scale = REAL_STRETCH * len(self.items) / duration if duration > 0 and real else 0.0
        for k, it in enumerate(self.items):
            ya = max(scale * (mono[it.a] - mono[0]), floor) if real else floor
            yb = ya + SLANT
            if it.fold and real:
                yb = max(yb, scale * (mono[it.b - 1] - mono[0]))
            ys.append((ya, yb))
            floor = yb + (1.0 - SLANT) + (SECOND_LINE if self.lines[k] == 2 else 0.0)
            if k in self.gaps:
                floor += max(0.0, (len(self.gaps[k]) + 1) * CALL_TEXT_PITCH - (1.0 - SLANT))
        self.ys = ys

    # --- calls: which lifeline ----------------------------------------------------------------

    def _find(self, ep: Endpoint, transport: str | None) -> list[int]:
        """Lifelines at ``ep``; an unspecified address (an unbound socket's
        ``0.0.0.0:port``) matches any address with that port."""
        ip = normalize_ip(ep.ip)
        ok = [i for i, k in enumerate(self.keys) if transport is None or k[0] == transport]
        exact = [i for i in ok if self.keys[i][1:3] == (ip, ep.port)]
        if exact or ip not in ("0.0.0.0", "::"):
            return exact
        return [i for i in ok if self.keys[i][2] == ep.port]

    def _lifeline_of_call(self, c: Call) -> int | None:
        """The lifeline a call runs on (see "Calls" in the module docstring);
        ``_ELSEWHERE`` for a call on a socket that is not drawn, None when unknown."""
        if c.conn is not None:
            ci = self.conv_of_conn.get(c.conn)
            if ci is None:
                return _ELSEWHERE  # another connection's
            cands: Sequence[int] = (ci,)
        else:
            cands = range(len(self.convs))
        frames = [self.index_of_frame[f] for f in c.frames if f in self.index_of_frame]
        frames = [i for i in frames if self.conv_of[i] in cands]
        transport = ("tcp" if c.conn is not None
                     else self.convs[self.conv_of[frames[0]]].transport if frames else None)
        if c.local is not None:
            hits = self._find(c.local, transport)
            if len(hits) == 1:
                return hits[0]
            if not hits and c.conn is None and c.local.port != 0:
                return _ELSEWHERE  # a socket of its own, not drawn
        if c.remote is not None:
            peer = {(normalize_ip(c.remote.ip), c.remote.port)}
            across = set()
            for ci in cands:
                cl, sl = self.ends[ci]
                if transport is None or self.convs[ci].transport == transport:
                    if {self.keys[sl][1:3]} == peer:
                        across.add(cl)
                    if {self.keys[cl][1:3]} == peer:
                        across.add(sl)
            if len(across) == 1:
                return across.pop()
        for i in frames:
            sender, receiver = self.ends_of(i)
            if c.kind is CallKind.CONNECT:
                return self.ends[self.conv_of[i]][0]
            return receiver if c.kind in _WAITING else sender
        tcp = [ci for ci in cands if self.convs[ci].transport == "tcp"]
        if c.kind is CallKind.CONNECT:
            ones = {self.ends[ci][0] for ci in tcp}
        elif c.kind in (CallKind.ACCEPT, CallKind.LISTEN):
            ones = {self.ends[ci][1] for ci in tcp}
        else:
            ones = set()
        return ones.pop() if len(ones) == 1 else None

    def _assign_calls(self) -> None:
        placed: list[tuple[Call, int]] = []
        pending: list[Call] = []
        by_pid: dict[int, set[int]] = {}
        for c in sorted(self.all_calls, key=lambda c: (c.start, c.end)):
            ll = self._lifeline_of_call(c)
            if ll == _ELSEWHERE:
                continue
            if ll is None:
                pending.append(c)
                continue
            if not c.inferred:
                by_pid.setdefault(c.pid, set()).add(ll)
            placed.append((c, ll))
        # nothing ties it to a lifeline: the other calls on its socket may (a socket()
        # or setsockopt() before bind() gave it an address), else its process's
        life_of = _socket_lives(self.all_calls)
        by_life: dict[int, set[int]] = {}
        for c, ll in placed:
            if c in life_of:
                by_life.setdefault(life_of[c], set()).add(ll)
        self.unplaced = 0
        for c in pending:
            lls = by_life.get(life_of[c], set()) if c in life_of else set()
            if len(lls) != 1:
                lls = by_pid.get(c.pid, set())
            if len(lls) == 1:
                placed.append((c, next(iter(lls))))
            else:
                self.unplaced += 1
        placed.sort(key=lambda cl: (cl[0].start, cl[0].end))
        # calls inside a fold are counted there, not drawn
        spans = [(k, self.mono[it.a], self.mono[it.b - 1]) for k, it in enumerate(self.items) if it.fold]
        self.hidden_calls: Counter[int] = Counter()
        self.visible: list[tuple[Call, int]] = []
        for c, ll in placed:
            inside = next((k for k, ta, tb in spans if ta < c.start and c.end < tb), None)
            if inside is not None:
                self.hidden_calls[inside] += 1
            else:
                self.visible.append((c, ll))

    def _group_calls(self) -> None:
        """``self.units``: the visible calls as the bars to draw, in order of start:
        alone, or grouped with the calls that repeat right after them on their thread.

        A call joins its thread's previous bar when their kinds repeat (options and
        queries; sends, receives or others, with waits between them), neither needs a
        note, they share errno and socket, and their labels would collide: both lie
        before the first row (or after the last), where only the order of calls is
        drawn, or both are quick (a bar shorter than a text pitch) and start less than
        a text pitch apart on the diagram as it would be without groups."""
        self._rows_y({})
        self.units: list[tuple[tuple[Call, ...], int]] = [((c,), ll) for c, ll in self.visible]
        self._time_map()
        groups: list[tuple[list[Call], int]] = []
        last_of: dict[tuple[int, int, int, bool], int] = {}
        for c, ll in self.visible:
            key = (ll, c.pid, c.tid, c.inferred)
            j = last_of.get(key)
            if j is not None and self._repeats(groups[j][0], c, ll):
                groups[j][0].append(c)
                continue
            last_of[key] = len(groups)
            groups.append(([c], ll))
        self.units = [(tuple(cs), ll) for cs, ll in groups]

    def _repeats(self, calls: list[Call], c: Call, ll: int) -> bool:
        """Whether ``c`` repeats the group ``calls`` (see :meth:`_group_calls`)."""
        prev = calls[-1]
        kinds = {x.kind for x in calls} | {c.kind}
        if not any(kinds <= family for family in _FAMILIES) or c.errno != prev.errno:
            return False
        fds = {x.fd for x in calls if x.fd is not None} | ({c.fd} if c.fd is not None else set())
        if len(fds) > 1 or any(self._call_note(self._member(x, ll)) for x in (prev, c)):
            return False
        first_t, last_t = self.mono[0], self.mono[-1]
        if prev.end < first_t and c.end < first_t or prev.start > last_t and c.start > last_t:
            return True  # only their order is drawn there, one step per bar
        return (self._quick(prev, ll) and self._quick(c, ll)
                and self.tmap(c.start) - self.tmap(prev.start) < CALL_TEXT_PITCH)

    def _quick(self, c: Call, ll: int) -> bool:
        """A call that would be drawn as a short bar: one that may join a group."""
        d = self._member(c, ll)
        return d.y1 - d.y0 < CALL_TEXT_PITCH

    def _time_map(self) -> None:
        # Before the first and after the last packet only the order of calls matters:
        # each bar's start gets a step of its own, the returns fall in between.
        knots: list[tuple[float, float]] = []
        first_t, last_t = self.mono[0], self.mono[-1]
        pre = sorted({calls[0].start for calls, _ in self.units if calls[0].start < first_t})
        post = sorted({calls[0].start for calls, _ in self.units if calls[0].start > last_t})
        y_first = self.ys[0][0]
        for j, t in enumerate(pre):
            knots.append((t, y_first - PRE_STEP * (len(pre) - j)))
        for k, it in enumerate(self.items):
            knots.append((self.mono[it.a], self.ys[k][0]))
            knots.append((self.mono[it.b - 1], self.ys[k][1]))
            crowd = self.gaps.get(k, [])
            for j, t in enumerate(crowd):  # a stretched gap: one step per call start
                top, bottom = self.ys[k][1], self.ys[k + 1][0]
                knots.append((t, top + (bottom - top) * (j + 1) / (len(crowd) + 1)))
        y_last = self.ys[-1][1]
        for j, t in enumerate(post):
            knots.append((t, y_last + POST_STEP * (j + 1)))
        self.tmap = _TimeMap(knots)

    # --- call bars: extents, columns, texts (all but x) ---------------------------------------

    def _member(self, c: Call, ll: int) -> _Draft:
        """One call's extent from the time map, bent to respect causality with its frames."""
        d = _Draft((c,), ll, self.tmap(c.start), self.tmap(c.end, end=True), [], [])
        for f in c.frames:
            i = self.index_of_frame.get(f)
            if i is None:
                continue
            sender, receiver = self.ends_of(i)
            if ll not in (sender, receiver):
                continue
            k = self.item_of[i]
            ya, yb = self.ys[k]
            y = (ya + yb) / 2 if self.items[k].fold else (ya if sender == ll else yb)
            (d.caused if sender == ll else d.released).append((k, y, self.packets[i]))
        kind = c.kind
        if d.caused and (kind in _SENDING or kind is CallKind.CONNECT):
            y0 = min(y for _, y, _ in d.caused) - 0.04
            if d.y0 - MAX_BEND <= y0 < d.y0:
                d.y0 = y0
        if d.released and (kind in _WAITING or kind is CallKind.CONNECT):
            y1 = max(y for _, y, _ in d.released) + 0.04
            if d.y1 < y1 <= d.y1 + MAX_BEND:
                d.y1 = y1
        d.y1 = max(d.y1, d.y0)
        return d

    def _drafts(self) -> list[_Draft]:
        # 1. extents from the time map, bent to respect causality with the calls' frames
        drafts: list[_Draft] = []
        for calls, ll in self.units:
            parts = [self._member(c, ll) for c in calls]
            if len(parts) == 1:
                drafts.append(parts[0])
                continue
            drafts.append(_Draft(calls, ll, min(p.y0 for p in parts), max(p.y1 for p in parts),
                                 [j for p in parts for j in p.caused],
                                 [j for p in parts for j in p.released], parts))

        # 2. per thread: a call starts after the previous one returned; minimum bar height
        last_end: dict[tuple[int, int, int, bool], float] = {}
        for d in drafts:
            key = (d.lifeline, d.call.pid, d.call.tid, d.call.inferred)
            prev_end = last_end.get(key)
            if prev_end is not None and d.y0 < prev_end + 0.03:
                for part in d.parts:  # a group's calls move down with it
                    shift = prev_end + 0.03 - d.y0
                    part.y0, part.y1 = part.y0 + shift, part.y1 + shift
                d.y0 = prev_end + 0.03
                d.y1 = max(d.y1, d.y0)
            d.y1 = max(d.y1, d.y0 + MIN_BAR)
            last_end[key] = d.y1

        # 3. columns: interval partitioning per lane (overlapping threads get their own column)
        col_ends: dict[int, list[float]] = {}
        for d in drafts:
            ends = col_ends.setdefault(d.lifeline, [])
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
        self.columns: dict[int, int] = {ll: len(ends) for ll, ends in col_ends.items()}

        # 4. texts: label at the bar's top, note at its bottom, moved (as little as
        # possible, in order) so that none collide
        texts: dict[int, list[tuple[float, int, str]]] = {}
        for idx, d in enumerate(drafts):
            lane = texts.setdefault(d.lifeline, [])
            lane.append((d.y0 + 0.1, idx, "label"))
            transport = self.keys[d.lifeline][0]
            if d.parts:
                d.label = _group_label(d.calls, transport)
                continue  # a group's calls need no note (or they would not be grouped)
            d.label = self._label(d.call, transport)
            d.note = self._call_note(d)
            if d.note:
                # at the return of a long call; right under the label of a short one, so that
                # no other call's label comes between a call and its note
                tall = d.y1 - d.y0 >= 2 * CALL_TEXT_PITCH + 0.1
                anchor = d.y1 - 0.05 if tall else d.y0 + 0.1 + 1e-6
                lane.append((anchor, idx, "note"))
        for qi, qp in enumerate(self.queues):  # a queue's note is one of its lane's texts
            if qp.text:
                texts.setdefault(qp.lifeline, []).append((qp.want_y, -1 - qi, "queue"))
        self.text_y: dict[tuple[int, str], float] = {}
        for lst in texts.values():
            lst.sort()
            for (_want, idx, what), y in zip(lst, _stack([t[0] for t in lst], CALL_TEXT_PITCH)):
                self.text_y[(idx, what)] = y

        # 5. a label beside its own bar, unless a bar of an outer column is beside that:
        # then out past the lane's outermost column (and a leader line points at its bar)
        outer_bars = [d for d in drafts if d.col > 0]
        for idx, d in enumerate(drafts):
            if d.col + 1 >= self.columns[d.lifeline]:
                continue
            bands = [(self.text_y[(idx, "label")] - TEXT_HALF, self.text_y[(idx, "label")] + TEXT_HALF)]
            if d.note:
                ny = self.text_y[(idx, "note")]
                bands.append((ny - TEXT_HALF, ny + TEXT_HALF))
            d.outer = any(o.lifeline == d.lifeline and o.col > d.col and o.y0 < hi and lo < o.y1
                          for o in outer_bars for lo, hi in bands)
        return drafts

    def _label(self, c: Call, transport: Transport) -> str:
        """A call's label, with what it waited for when the explanation layer is on and
        the wait was long enough to matter: ``recvfrom(12) → 6  [blocked 5.4 ms: data]``."""
        label = _call_label(c, transport)
        wait = wait_text(self.timings.get(c)) if self.timings else ""
        return f"{label}  {wait}" if wait else label

    def _call_note(self, d: _Draft) -> str:
        """A short why-note for the calls whose meaning is not obvious from the label."""
        c, kind = d.call, d.call.kind
        if self.keys[d.lifeline][0] == "udp":
            # no connection: a refusal is the peer kernel's ICMP port unreachable
            return "refused: ICMP port unreachable" if c.errno == "ECONNREFUSED" else ""
        if kind is CallKind.RECV and c.ret == 0 and c.errno is None:
            return "FIN read as end of stream"
        if c.errno == "ECONNRESET":
            return "RST read as ECONNRESET"
        if c.errno == "ECONNREFUSED":
            return "refused: a RST answered the SYN"
        rst = next((p for _, _, p in d.caused if isinstance(p, Segment) and p.flags & Flag.RST), None)
        if kind is CallKind.CLOSE and rst is not None:
            conv = self.convs[self.conv_of[self.index_of_frame[rst.frame]]]
            peer_data = any(s.length and s.dir is not rst.dir and s.frame < rst.frame
                            for s in conv.segments)
            return "unread data: close() sent RST, not FIN" if peer_data else "close() sent RST"
        if kind is CallKind.ACCEPT and d.released and not c.inferred:  # inferred: no real start
            done = min(p.ts for _, _, p in d.released)
            if c.start > done:
                return f"connection queued {human_duration(c.start - done)} before accept()"
            if any(isinstance(p, Segment) and p.flags & Flag.SYN and not p.flags & Flag.ACK
                   for _, _, p in d.released):
                # TCP Fast Open (RFC 7413): the SYN's data was accepted, accept() returns at the SYN
                return "returns at the SYN (Fast Open: data in the SYN)"
            return "blocks until the handshake is done"
        return ""

    # --- states -------------------------------------------------------------------------------

    def _state_text(self, lifeline: int, state: TcpState, cis: Sequence[int]) -> str:
        """``ESTABLISHED``, or on a lifeline several connections share, which ones:
        ``ESTABLISHED (client 2)``, ``CLOSED (client 1, client 3)`` (``conn 4`` when
        they share the peer too)."""
        if state is TcpState.LISTEN:
            return state.value  # the listening socket's, whichever connection showed it
        mine = [i for i, ends in enumerate(self.ends) if lifeline in ends
                and self.convs[i].transport == "tcp"]
        if len(mine) < 2:
            return state.value
        peers = [self.ends[i][0] if self.ends[i][1] == lifeline else self.ends[i][1] for i in mine]
        tags = []
        for ci in cis:
            cl, sl = self.ends[ci]
            peer = cl if sl == lifeline else sl
            tags.append(self.names[peer] if peers.count(peer) == 1 else f"conn {self.convs[ci].number}")
        return f"{state.value} ({', '.join(tags)})"

    def _fold_changes(self, it: _Item, prev: dict[tuple[int, Side], TcpState | None]
                      ) -> dict[tuple[int, Side], tuple[TcpState, int]]:
        """The last state change of each (conversation, side) inside a folded run, and
        its frame; ``prev`` is brought up to date.  (A hot loop: a fold can hide
        hundreds of thousands of segments.)"""
        changed: dict[tuple[int, Side], tuple[TcpState, int]] = {}
        client: dict[int, TcpState | None] = {}
        server: dict[int, TcpState | None] = {}
        packets, conv_of = self.packets, self.conv_of
        for i in range(it.a, it.b):
            p = packets[i]
            if not isinstance(p, Segment):
                continue
            ci = conv_of[i]
            if ci not in client:
                client[ci], server[ci] = prev.get((ci, "client")), prev.get((ci, "server"))
            if p.client_state is not client[ci]:
                client[ci] = p.client_state
                changed[(ci, "client")] = (p.client_state, p.frame)
            if p.server_state is not server[ci]:
                server[ci] = p.server_state
                changed[(ci, "server")] = (p.server_state, p.frame)
        for ci in client:
            prev[(ci, "client")], prev[(ci, "server")] = client[ci], server[ci]
        return changed

    def _states(self) -> list[_Mark]:
        marks: list[_Mark] = []
        prev: dict[tuple[int, Side], TcpState | None] = {}
        listening: set[int] = set()
        for k, it in enumerate(self.items):
            ya, yb = self.ys[k]
            if it.fold:
                changed = self._fold_changes(it, prev)
                # per lifeline, one mark per state naming its connections
                per_line: dict[int, dict[TcpState, list[tuple[int, int]]]] = {}
                for (ci, side), (st, frame) in sorted(changed.items(), key=lambda kv: kv[1][1]):
                    ll = self.ends[ci][0 if side == "client" else 1]
                    if st is TcpState.LISTEN and ll in listening:
                        continue
                    listening.update([ll] if st is TcpState.LISTEN else [])
                    per_line.setdefault(ll, {}).setdefault(st, []).append((frame, ci))
                for ll, by_state in per_line.items():
                    # one at the band's end; several one under the other around its middle
                    n = len(by_state)
                    y0 = yb if n == 1 else (ya + yb) / 2 - (n - 1) / 2 * CALL_TEXT_PITCH
                    for j, (st, runs) in enumerate(by_state.items()):
                        cis = [ci for _f, ci in runs]
                        who = tuple((ci, self._side_at(ci, ll), f) for f, ci in runs)
                        marks.append(_Mark(ll, st, y0 + j * CALL_TEXT_PITCH, runs[-1][0],
                                           self._state_text(ll, st, cis), self.convs[cis[0]].number, who))
                continue
            p = self.packets[it.a]
            if not isinstance(p, Segment):
                continue  # UDP keeps no state
            ci = self.conv_of[it.a]
            sender: Side = "client" if p.dir is Direction.C2S else "server"
            for side, st in _side_states(p):
                key = (ci, side)
                if key in prev and st is prev[key]:
                    continue
                first = key not in prev
                prev[key] = st
                ll = self.ends[ci][0 if side == "client" else 1]
                if side == sender:
                    y = ya
                elif first and st is TcpState.LISTEN:
                    if ll in listening:  # said already
                        continue
                    y = ya - LISTEN_ABOVE  # found listening before the first SYN arrived
                else:
                    y = yb
                if st is TcpState.LISTEN:
                    listening.add(ll)
                conn = None if st is TcpState.LISTEN else self.convs[ci].number
                marks.append(_Mark(ll, st, y, p.frame, self._state_text(ll, st, [ci]), conn,
                                   ((ci, side, p.frame),)))
        return marks

    def _side_at(self, ci: int, ll: int) -> Side:
        """Which end of conversation ``ci`` lifeline ``ll`` is."""
        return "client" if self.ends[ci][0] == ll else "server"

    # --- the kernel layer: verdicts, durations, drops, footnotes --------------------------------

    def _judge(self, marks: list[_Mark]) -> list[_Mark]:
        """The kernel's word on every state mark (verdict, its own name for the state, how
        long the side stayed in it) and the segments it dropped; the footnotes they cite,
        numbered in the order they appear down the page (see handshake_viz.layers)."""
        self.footnotes: list[Footnote] = []
        self.drops: dict[int, tuple[int, str]] = {}  # item -> (footnote, reason in words)
        if self.layers.kernel is None:
            return marks
        cites: list[tuple[float, tuple[str, str, str]]] = []
        judged: list[_Mark] = []
        for m in marks:
            m = self._judge_mark(m)
            if m.cite is not None:
                cites.append((m.y, m.cite))
            judged.append(m)
        dropped: dict[int, tuple[KernelDrop, str]] = {}
        for k, it in enumerate(self.items):
            p = self.packets[it.a]
            if it.fold or not isinstance(p, Segment):
                continue
            facts = self.kseg.get(p.frame)
            if facts is None or facts.drop is None:
                continue
            conv = self.convs[self.conv_of[it.a]]
            text = drop_note(facts.drop, p, resent_as(p, conv.segments))
            dropped[k] = (facts.drop, text)
            cites.append((self.ys[k][0], ("drop", text, text)))
        number: dict[tuple[str, str], int] = {}
        for _y, (kind, key, text) in sorted(cites, key=lambda c: c[0]):
            if (kind, key) not in number:
                number[(kind, key)] = len(number) + 1
                self.footnotes.append(Footnote(number[(kind, key)], kind, text))  # type: ignore[arg-type]
        self.drops = {k: (number[("drop", text)], drop_words(d.reason)) for k, (d, text) in dropped.items()}
        return [replace(m, footnote=number[m.cite[:2]]) if m.cite is not None else m for m in judged]

    def _judge_mark(self, m: _Mark) -> _Mark:
        found = []
        for ci, side, frame in m.who:
            k = self.kconn.get(ci)
            check = None if k is None else check_of(k, side, frame, m.state)
            if check is not None:
                found.append(check)
        if not found:
            return m
        worst = next((c for v in ("disagree", "linux", "agree") for c in found if c.verdict.value == v), found[0])
        verdict = worst.verdict.value
        cite = None
        if verdict == "linux" and worst.difference is not None:
            cite = ("linux", worst.difference.value, worst.difference.explanation)
        elif verdict == "linux" or verdict == "disagree":
            after = f" after #{worst.frame}" if worst.frame is not None else ""
            text = f"{worst.side.value} {m.state.value}{after}: {worst.note or 'the kernel reported no such change'}"
            cite = (verdict, text, text)
        duration = ""
        if len(m.who) == 1:
            ci, side, _frame = m.who[0]
            k = self.kconn[ci]
            duration = duration_text(next((p for p in k.periods if p.side.value == side and p.state is m.state),
                                          None), m.state)
        kernel = worst.kernel.shown if worst.kernel is not None else ""
        return replace(m, verdict=verdict if verdict != "kernel-only" else None, kernel=kernel, cite=cite,
                       duration=duration)

    # --- the kernel layer: accept queues --------------------------------------------------------

    def _queue_plans(self) -> None:
        """Each drawn listener's accept queue as steps of constant depth (y from the time map)."""
        self.queues: list[_QueuePlan] = []
        kernel = self.layers.kernel
        if kernel is None:
            return
        for q in kernel.listeners:
            hits = self._find(q.listener, "tcp")
            if len(hits) != 1 or not q.changes:
                continue
            changes = sorted(q.changes, key=lambda c: c.ts)
            ys = [self.tmap(c.ts, end=True) for c in changes]
            last_y = self.ys[-1][1] + POST_STEP
            steps = []
            for i, c in enumerate(changes):
                y1 = ys[i + 1] if i + 1 < len(changes) else last_y
                if c.depth > 0 and y1 > ys[i]:
                    steps.append(QueueStep(ys[i], y1, c.depth, q.limit is not None and c.depth >= q.limit))
            if not steps or not queue_text(q):  # a queue where nothing stood out is not drawn
                continue
            slots = q.limit if q.limit is not None and q.limit <= QUEUE_SLOTS else max(q.max_depth, 1)
            self.queues.append(_QueuePlan(hits[0], q, tuple(steps), slots))

    # --- x: lifelines spaced by what is written beside them ------------------------------------

    def _positions(self, drafts: list[_Draft], marks: list[_Mark]) -> list[float]:
        """x of every lifeline.  The innermost client is at 0 and the first server at 1
        (the text gap between them holds every row's texts); a further client stands
        left of its neighbour by what that neighbour writes on its left (lane, states),
        a further server right of its neighbour by what that one writes on its right."""
        n = len(self.keys)
        reach = [0.0] * n  # how far a lifeline's own texts reach from it, outwards
        for m in marks:
            reach[m.lifeline] = max(reach[m.lifeline], 0.03 + STATE_PAD + m.chars * STATE_CHAR)
        # the kernel layer moves a lane out past its lifeline's states and accept queue
        self.lane_offset = [LANE_OFFSET] * n
        if self.layers.kernel is not None:
            gauges = {qp.lifeline: qp.slots * QUEUE_CELL + QUEUE_GAP for qp in self.queues}
            for ll in range(n):
                need = reach[ll] + gauges.get(ll, 0.0) + QUEUE_GAP + BAR_HALF_WIDTH
                self.lane_offset[ll] = max(LANE_OFFSET, need)
        for d in drafts:
            text = max(len(d.label) * CALL_CHAR, len(d.note) * NOTE_CHAR)
            reach[d.lifeline] = max(reach[d.lifeline], self._label_x(d.lifeline) + text)
        for qp in self.queues:
            reach[qp.lifeline] = max(reach[qp.lifeline], self._label_x(qp.lifeline) + len(qp.text) * NOTE_CHAR)
        self.reach = reach
        nc = self.n_clients
        xs = [0.0] * n
        for j in range(nc - 2, -1, -1):
            xs[j] = xs[j + 1] - max(MIN_PITCH, reach[j + 1] + NEIGHBOUR_GAP)
        for j in range(nc, n):
            xs[j] = X_SERVER if j == nc else xs[j - 1] + max(MIN_PITCH, reach[j - 1] + NEIGHBOUR_GAP)
        return xs

    def _label_x(self, ll: int) -> float:
        """How far from lifeline ``ll`` its lane's outermost labels start."""
        columns = self.columns.get(ll, 1)
        return self.lane_offset[ll] + LANE_COLUMN_STEP * (columns - 1) + BAR_HALF_WIDTH + CALL_LABEL_GAP

    def _text_gap(self, a: int, b: int, xs: list[float]) -> tuple[float, float]:
        """(centre, width) of the room for the texts of an arrow between lifelines a and
        b: the gap between the innermost client and the first server when it crosses
        it (every TCP arrow does), else the widest gap it crosses."""
        lo, hi = min(a, b), max(a, b)
        nc = self.n_clients
        if 0 < nc and lo < nc <= hi:
            g = nc - 1
        else:
            g = max(range(lo, max(hi, lo + 1)), key=lambda j: xs[j + 1] - xs[j])
        return (xs[g] + xs[g + 1]) / 2, xs[g + 1] - xs[g]

    # --- records ------------------------------------------------------------------------------

    def _records(self, drafts: list[_Draft], marks: list[_Mark], xs: list[float]) -> Layout:
        lifelines = self._lifeline_records(xs)
        main = self._text_gap(max(self.n_clients - 1, 0), min(self.n_clients, len(xs) - 1), xs)
        rows = self._margin(self._row_records(xs, main))
        for k, (number, words) in self.drops.items():
            rows[k] = replace(rows[k], kernel_tag=f"✗{number} dropped: {words}", dropped=True)
        states = [StateMark(self.side_of(m.lifeline), m.state, xs[m.lifeline], m.y, m.frame, m.text,
                            m.lifeline, m.conn, m.verdict, m.kernel, m.footnote, m.duration) for m in marks]
        bars, connectors, lanes = self._call_records(drafts, xs)
        queues = self._queue_records(xs)

        note_texts = self._notes()
        ys = self.ys
        ymax = max([ys[-1][1]] + [b.y1 for b in bars] + [b.note_y for b in bars if b.note]
                   + [b.label_y for b in bars] + [m.y for m in states] + [q.y1 for q in queues]
                   + [q.text_y for q in queues if q.text])
        ymin = min([ys[0][0] - LISTEN_ABOVE] + [b.y0 for b in bars] + [b.label_y for b in bars]
                   + [m.y for m in states])
        lifeline_top = ymin - 0.35
        lifeline_bottom = ymax + 0.55
        centre = (xs[0] + xs[-1]) / 2
        notes = tuple(Note(t, lifeline_bottom + 0.45 + 0.38 * i, centre) for i, t in enumerate(note_texts))
        bottom = (notes[-1].y if notes else lifeline_bottom) + 0.45

        legend = [p.value for p in Phase] if self.n_segments else []
        if self.n_datagrams:
            legend.append("udp")
        if any(r.flagged for r in rows):
            legend.append("flagged")
        if any(r.kind == "fold" for r in rows):
            legend.append("fold")
        if any(not b.inferred for b in bars):
            legend.append("call-traced")
        if any(b.inferred for b in bars):
            legend.append("call-inferred")
        if queues:
            legend.append("queue")
        if self.drops:
            legend.append("dropped")

        # margins: the time column left of everything, room for the outermost texts
        step = LANE_COLUMN_STEP
        if lanes:
            left = min([xs[0] - LANE_OFFSET] + [ln.x - step * (ln.columns - 1) for ln in lanes
                                                if ln.direction < 0])
            right = max([xs[-1] + LANE_OFFSET] + [ln.x + step * (ln.columns - 1) for ln in lanes
                                                  if ln.direction > 0])
            time_x, right_edge = left - 0.68, right + 0.78
        else:
            time_x, right_edge = xs[0] - 0.4, xs[-1] + 0.45
        time_x = min(time_x, xs[0] - self.reach[0] - 0.06)
        right_edge = max(right_edge, xs[-1] + self.reach[-1] + 0.1)
        times = max([0] + [len(t) for r in rows for t in (r.margin_text, r.gap_text)]) * TIME_CHAR
        left_edge = time_x - max(0.3, times + TIME_CHAR)
        markers = self._markers(rows, time_x - times - 0.06)
        if markers:
            left_edge = min(m.x - (len(m.number) * MARKER_CHAR + MARKER_PAD) / 2 for m in markers) - 0.04
        top = lifeline_top - 0.25
        strip = self._window_strip(rows, right_edge + STRIP_GAP, lifeline_top) if self.layers.windows else None
        if strip is not None:
            right_edge = strip.col_right[-1] + 0.1
            top = min(top, strip.title_y - 0.3)
        return Layout(
            title=self._title(), time_mode=self.time, t0=self.t0, segments=self.n_segments,
            datagrams=self.n_datagrams,
            conns=tuple(cv.number for cv in self.convs if cv.transport == "tcp"),
            flows=tuple(cv.number for cv in self.convs if cv.transport == "udp"),
            lifelines=lifelines, lanes=tuple(lanes), rows=tuple(rows), states=tuple(states),
            calls=tuple(bars), connectors=tuple(connectors), notes=notes,
            idle=tuple(self._idle(main[0])), legend=tuple(legend),
            xlim=(left_edge, right_edge), ylim=(top, bottom), lifeline_top=lifeline_top,
            lifeline_bottom=lifeline_bottom, time_x=time_x,
            kernel_key=kernel_key(states=any(m.verdict for m in marks), drops=bool(self.drops),
                                  queues=bool(queues)),
            footnotes=tuple(self.footnotes), queues=queues, windows=strip, markers=markers,
            story=self.story, lang=self.layers.lang,
        )

    def _queue_records(self, xs: list[float]) -> tuple[QueueGauge, ...]:
        out = []
        for qi, qp in enumerate(self.queues):
            ll = qp.lifeline
            direction = -1 if self.side_of(ll) == "client" else 1
            outer = xs[ll] + direction * (self.lane_offset[ll] - BAR_HALF_WIDTH - QUEUE_GAP)
            q = qp.queue
            out.append(QueueGauge(
                lifeline=ll, listener=plain(q.listener, TITLE_CHARS), backlog=q.backlog, limit=q.limit,
                max_depth=q.max_depth, x_inner=outer - direction * qp.slots * QUEUE_CELL,
                direction=direction, cell=QUEUE_CELL, slots=qp.slots, y0=qp.y0, y1=qp.y1, steps=qp.steps,
                text=qp.text, text_x=xs[ll] + direction * self._label_x(ll),
                text_y=self.text_y.get((-1 - qi, "queue"), qp.want_y),
            ))
        return tuple(out)

    def _window_strip(self, rows: list[Row], x0: float, top: float) -> WindowStrip | None:
        """--windows: the receiving socket's tcp_probe variables beside each drawn
        segment that one was matched to."""
        lines = []
        for r in rows:
            if r.kind != "segment" or r.frame is None or r.lifeline_to is None:
                continue
            facts = self.kseg.get(r.frame)
            if facts is None or facts.probe is None:
                continue
            p = facts.probe
            who = self.names[r.lifeline_to]
            ssthresh = None if p.ssthresh >= INFINITE_SSTHRESH else p.ssthresh
            lines.append(WindowRow(r.frame, r.y_end, who, p.cwnd, ssthresh, p.srtt_us, p.snd_wnd,
                                   usable_window(p), p.rcv_wnd, window_cells(r.frame, who, p)))
        if not lines:
            return None
        widths = [max([len(h)] + [len(ln.cells[i]) for ln in lines]) for i, h in enumerate(WINDOW_COLUMNS)]
        right, edges = x0, []
        for w in widths:
            right += (w + 2) * TIME_CHAR
            edges.append(right)
        header_y = min(top + 0.1, lines[0].y - 0.7)
        right = max(right, x0 + len(WINDOW_TITLE) * TIME_CHAR * 0.85)  # (the title is smaller)
        edges[-1] = max(edges[-1], right)
        return WindowStrip(WINDOW_TITLE, WINDOW_COLUMNS, tuple(edges), x0, header_y - 0.4, header_y,
                           tuple(lines))

    def _markers(self, rows: list[Row], right: float) -> tuple[StoryMarker, ...]:
        """The explanation layer: each story sentence's number (each finding's letter) on
        the row of the first frame it cites, in the margin left of the times."""
        row_of = {r.frame: r for r in rows if r.frame is not None}
        fold_of = {}
        for k, it in enumerate(self.items):
            if it.fold:
                for i in range(it.a, it.b):
                    fold_of[self.packets[i].frame] = rows[k]
        at: dict[int, list[tuple[str, str, int, int]]] = {}  # row index -> markers
        for line in self.story:
            # a sentence citing only calls is marked on the first frame those calls sent or waited for
            frames = line.frames or tuple(f for c in line.calls for f in c.frames)
            if line.kind == "heading" or not frames:
                continue
            first = min(frames)
            r = row_of.get(first) or fold_of.get(first)
            if r is not None:
                at.setdefault(r.index, []).append((line.number, line.kind, first, line.conn))
        out = []
        for index, items in sorted(at.items()):
            r = rows[index]
            x = right
            for number, kind, frame, conn in reversed(items):  # placed right to left: read left to right
                width = len(number) * MARKER_CHAR + MARKER_PAD
                out.append(StoryMarker(number, kind, x - width / 2, r.time_y, frame, conn))  # type: ignore[arg-type]
                x -= width + 0.012
        return tuple(sorted(out, key=lambda m: (m.y, -m.x)))

    def _lifeline_records(self, xs: list[float]) -> tuple[Lifeline, ...]:
        out = []
        for i, (transport, _ip, _port, _tag) in enumerate(self.keys):
            mine = [cv for cv, ends in zip(self.convs, self.ends) if i in ends]
            ep = plain(self.endpoint[i], TITLE_CHARS)
            out.append(Lifeline(
                side=self.side_of(i), x=xs[i], endpoint=ep, header=f"{self.names[i]} {ep}",
                subtitle=f"{transport.upper()} (kernel)", name=self.names[i],
                transport=transport,
                conns=tuple(cv.number for cv in mine if cv.transport == "tcp"),
                flows=tuple(cv.number for cv in mine if cv.transport == "udp"),
            ))
        return tuple(out)

    def _row_records(self, xs: list[float], main: tuple[float, float]) -> list[Row]:
        rows: list[Row] = []
        t0, mono = self.t0, self.mono
        for k, it in enumerate(self.items):
            ya, yb = self.ys[k]
            if not it.fold:
                p = self.packets[it.a]
                label, detail, extra = self.texts[k]
                sender, receiver = self.ends_of(it.a)
                text_x, room = self._text_gap(sender, receiver, xs)
                ms = (p.ts - t0) * 1e3
                seg = p if isinstance(p, Segment) else None
                analysis = seg.analysis if seg is not None else ()
                rows.append(Row(
                    index=k, kind="segment" if seg is not None else "datagram", y=ya, y_end=yb,
                    t_ms=ms, time_text=clock_text(ms), x_from=xs[sender], x_to=xs[receiver],
                    dir=p.dir, frame=p.frame, label=label, detail=detail, extra=extra,
                    text=f"{label} {detail}".rstrip(), phase=seg.phase if seg is not None else None,
                    analysis=analysis, markers=_markers(analysis),
                    flagged=any(a in _PROBLEMS for a in analysis),
                    conn=seg.conn if seg is not None else None,
                    flow=p.flow if isinstance(p, Datagram) else None,
                    lifeline_from=sender, lifeline_to=receiver, text_x=text_x, text_room=room,
                    lines=self.lines[k],
                ))
                continue
            run = range(it.a, it.b)
            segs = [p for p in (self.packets[i] for i in run) if isinstance(p, Segment)]
            c2s = [self.packets[i] for i in run if self.packets[i].dir is Direction.C2S]
            counts: Counter[Analysis] = Counter(a for s in segs for a in s.analysis)
            b_c2s = sum(p.length for p in c2s)
            b_s2c = sum(self.packets[i].length for i in run) - b_c2s
            duration = mono[it.b - 1] - mono[it.a]
            n_segs = len(segs)
            n_grams = (it.b - it.a) - n_segs
            seg_c2s = sum(isinstance(p, Segment) for p in c2s)
            text = _fold_text(n_segs, n_grams, b_c2s, b_s2c, duration, counts, self.hidden_calls[k])
            fold = Fold(
                first_frame=self.packets[it.a].frame, last_frame=self.packets[it.b - 1].frame,
                segments=n_segs, segments_c2s=seg_c2s, segments_s2c=n_segs - seg_c2s,
                bytes_c2s=b_c2s, bytes_s2c=b_s2c, duration=duration,
                analysis=tuple(counts.most_common()), calls=self.hidden_calls[k], datagrams=n_grams,
                text=text,
            )
            ms = (self.packets[it.a].ts - t0) * 1e3
            rows.append(Row(
                index=k, kind="fold", y=ya, y_end=yb, t_ms=ms, time_text=clock_text(ms),
                x_from=xs[0], x_to=xs[-1], dir=None, frame=None, label="…", detail="", extra="",
                text=text, phase=None, analysis=tuple(counts), markers=(), flagged=False,
                conn=None, flow=None, lifeline_from=None, lifeline_to=None, text_x=main[0],
                text_room=main[1], fold=fold,
            ))
        return rows

    def _margin(self, rows: list[Row]) -> list[Row]:
        """Rows with what the time margin says (see "Time margin" above)."""
        mono, items = self.mono, self.items
        waits = [mono[items[k].a] - mono[items[k - 1].b - 1] for k in range(1, len(items))]
        typical = sorted(waits)[len(waits) // 2] if waits else 0.0
        threshold = max(GAP_MIN, GAP_FACTOR * typical)
        out: list[Row] = []
        shown = ""
        for k, r in enumerate(rows):
            margin = "" if r.time_text == shown else r.time_text
            shown = r.time_text
            gap_text, gap_y = "", None
            if k and waits[k - 1] >= threshold and not self._is_idle(k):  # (an idle note says it)
                gap_text, gap_y = "+" + human_duration(waits[k - 1]), (rows[k - 1].time_y + r.time_y) / 2
            out.append(replace(r, margin_text=margin, gap_text=gap_text, gap_y=gap_y))
        return out

    def _call_records(self, drafts: list[_Draft], xs: list[float]
                      ) -> tuple[list[CallBar], list[Connector], list[Lane]]:
        lanes: list[Lane] = []
        lane_x: dict[int, float] = {}
        for ll in sorted({d.lifeline for d in drafts}):
            mine = [d for d in drafts if d.lifeline == ll]
            side = self.side_of(ll)
            direction = -1 if side == "client" else 1
            lane_x[ll] = xs[ll] + direction * self.lane_offset[ll]
            pids: list[int] = []
            for d in mine:
                if not d.call.inferred and d.call.pid not in pids:
                    pids.append(d.call.pid)
            if pids:
                who = (f"pid {pids[0]}" if len(pids) == 1 else
                       "pids " + ", ".join(map(str, pids[:4])) + (", …" if len(pids) > 4 else ""))
                title = f"{self.names[ll]} process ({who})"
            else:
                title = f"{self.names[ll]} process (calls inferred)"
            lanes.append(Lane(side, lane_x[ll], title, tuple(pids), self.columns[ll], direction, ll))

        bars: list[CallBar] = []
        connectors: list[Connector] = []
        t0 = self.t0
        joined_folds: set[tuple[int, int]] = set()  # (lifeline, fold item) joined already
        for idx, d in enumerate(drafts):
            c = d.call
            direction = -1 if self.side_of(d.lifeline) == "client" else 1
            x = lane_x[d.lifeline] + direction * LANE_COLUMN_STEP * d.col
            x_inner = x - direction * BAR_HALF_WIDTH
            x_outer = x + direction * BAR_HALF_WIDTH
            bar_index = len(bars)
            # the label beside its bar; past the outermost column when a bar of an outer
            # column is beside it (it would run across that bar), with a leader line
            outermost = lane_x[d.lifeline] + direction * LANE_COLUMN_STEP * (self.columns[d.lifeline] - 1)
            label_x = (outermost if d.outer else x) + direction * (BAR_HALF_WIDTH + CALL_LABEL_GAP)
            label_y = self.text_y[(idx, "label")]
            # beside the bar when at least half the label's height is level with it
            touches = not d.outer and d.y0 - TEXT_HALF / 2 < label_y < d.y1 + TEXT_HALF / 2
            leader = None if touches else (x_outer, min(max(label_y, d.y0), d.y1),
                                           label_x - direction * CALL_LABEL_GAP / 2, label_y)
            transport = self.keys[d.lifeline][0]
            members = tuple(
                CallMember(call=m.call, label=_call_label(m.call, transport),
                           y0=min(max(m.y0, d.y0), d.y1), y1=min(max(m.y1, d.y0), d.y1),
                           t_start_ms=(m.call.start - t0) * 1e3, t_end_ms=(m.call.end - t0) * 1e3,
                           frames=tuple(sorted({p.frame for _k, _y, p in m.caused + m.released})))
                for m in (d.parts or [d]))
            end = max(m.end for m in d.calls)
            bars.append(CallBar(
                call=c, side=self.side_of(d.lifeline), column=d.col, x=x, x_inner=x_inner,
                y0=d.y0, y1=d.y1, label=d.label, label_x=label_x, label_y=label_y, note=d.note,
                note_y=self.text_y.get((idx, "note"), d.y1), inferred=c.inferred, failed=c.failed,
                t_start_ms=(c.start - t0) * 1e3, t_end_ms=(end - t0) * 1e3, lifeline=d.lifeline,
                calls=d.calls, members=members, leader=leader,
            ))
            x_line = xs[d.lifeline]
            # data that had arrived before the call started (read from the buffer): joined
            # to the first and the last of those segments, the span it read, not a fan
            early = sorted(y for _k, y, _p in d.released if y < d.y0)
            seen: set[float] = set(early[1:-1])
            for k, y, p in d.caused + d.released:
                if y in seen:
                    continue
                seen.add(y)
                fold = self.items[k].fold
                if fold:
                    # a fold is joined once per lane: later calls that read (or wrote)
                    # what it hides would only add a fan of lines converging on it
                    if (d.lifeline, k) in joined_folds:
                        continue
                    joined_folds.add((d.lifeline, k))
                connectors.append(Connector(x_inner, min(max(y, d.y0), d.y1), x_line, y,
                                            None if fold else p.frame, bar_index, c.inferred))
            # accept() called after the handshake: show how long the connection sat queued
            if c.kind is CallKind.ACCEPT and d.released:
                arrived = min(y for _, y, _ in d.released)
                if d.y0 > arrived + 0.05:
                    first = min((p for _, _, p in d.released), key=lambda p: p.ts)
                    connectors.append(Connector(x, arrived, x, d.y0, first.frame, bar_index,
                                                c.inferred, kind="queue"))
        return bars, connectors, lanes

    # --- texts around the diagram ---------------------------------------------------------------

    def _notes(self) -> list[str]:
        tcp = [cv for cv in self.convs if cv.transport == "tcp"]
        closing: list[tuple[int, str]] = []
        guessed: list[tuple[int, str]] = []
        for cv in tcp:
            if not isinstance(cv.summary, ConnectionSummary):  # pragma: no cover - by construction
                continue
            closing.extend((cv.number, t) for t in _closing_notes(cv.segments, cv.summary))
            if cv.summary.roles_guessed:
                guessed.append((cv.number, "no SYN captured: client and server guessed from the "
                                "port numbers"))
        if len(tcp) == 1:
            texts = [t for _, t in closing + guessed]
        else:
            texts = _merge_notes(closing) + _merge_notes(guessed)
        if self.n_datagrams:
            texts.append(UDP_NOTE)
        n_folded = sum(it.b - it.a for it in self.items if it.fold)
        if n_folded:
            word = _packets_word(self.n_segments, self.n_datagrams)
            texts.append(f"{n_folded:,} {word if n_folded != 1 else word[:-1]} folded to keep "
                         f"{self.max_rows} rows (max_rows=0 draws every {word[:-1]})")
        if self.unplaced:
            texts.append(f"{plural(self.unplaced, 'socket call', 'socket calls')} not drawn: "
                         "neither endpoints, frames nor pid tie them to a lifeline")
        return texts

    def _is_idle(self, k: int) -> bool:
        """time="real": the stretch before row ``k`` is tall enough for an idle note."""
        return self.time == "real" and self.ys[k][0] - self.ys[k - 1][1] >= IDLE_ROWS

    def _idle(self, x: float) -> list[Note]:
        """time="real": say how long a long empty stretch is."""
        if self.time != "real":
            return []
        word = _packets_word(self.n_segments, self.n_datagrams)
        idle: list[Note] = []
        for k in range(1, len(self.items)):
            top, bottom = self.ys[k - 1][1], self.ys[k][0]
            if self._is_idle(k):
                quiet = self.mono[self.items[k].a] - self.mono[self.items[k - 1].b - 1]
                idle.append(Note(f"{human_duration(quiet)} without {word}", (top + bottom) / 2, x))
        return idle

    def _title(self) -> str:
        if self.title is not None:
            return plain(self.title, TITLE_CHARS)
        dur = title_duration(max(p.ts for p in self.packets) - min(p.ts for p in self.packets))
        if len(self.convs) == 1:
            cv = self.convs[0]
            s = cv.summary
            if not isinstance(s, ConnectionSummary):
                return (f"UDP flow {cv.number}: {cv.client} → {cv.server}   "
                        f"{plural(self.n_datagrams, 'datagram', 'datagrams')}, {dur}")
            state_part = " ".join(p for p in (s.conn_state, s.history) if p)
            return (f"conn {s.conn}: {cv.client} → {cv.server}   "
                    f"{plural(self.n_segments, 'segment', 'segments')}, {dur}"
                    + (f", {state_part}" if state_part else "")
                    + ("  (roles guessed)" if s.roles_guessed else ""))
        heads: list[str] = []
        counts: list[str] = []
        for transport, one, many, unit in (("udp", "UDP flow", "UDP flows", "datagram"),
                                           ("tcp", "TCP connection", "TCP connections", "segment")):
            mine = [cv for cv in self.convs if cv.transport == transport]
            if not mine:
                continue
            servers = list(dict.fromkeys(str(cv.server) for cv in mine))
            heads.append(plural(len(mine), one, many) + (f" to {servers[0]}" if len(servers) == 1 else ""))
            n = self.n_datagrams if transport == "udp" else self.n_segments
            counts.append(plural(n, unit, unit + "s"))
        return f"{', '.join(heads)}   {', '.join(counts)}, {dur}"
