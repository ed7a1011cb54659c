"""The diagram's optional layers, as plain data: the kernel's account and the explanation.

:mod:`handshake_viz.layout` plans the sequence diagram; when it is given the kernel's
account (``Trace.kernel``, a :class:`~handshake_viz.kerneljoin.KernelView`) or the
connections' explanations (:mod:`handshake_viz.explain`), it adds what this module
decides, and places it.  Nothing here imports matplotlib, and nothing here knows a
coordinate but ``y`` (rows, as the layout's time map gives them).

The kernel layer
================
* **States.**  Every inferred state mark gets the kernel's word on it
  (:class:`~handshake_viz.kerneljoin.StateCheck`): ``agree`` (the kernel's own state
  log entered the same state), ``linux`` (Linux reports this step differently, always:
  a time-wait mini-socket, a child socket made at the final ACK) or ``disagree``.  A
  difference or a disagreement is explained once, in a numbered :class:`Footnote`
  the mark cites (``≈1``, ``✗2``).
* **Durations** where they matter (:func:`duration_text`): how long a side sat in
  CLOSE-WAIT or FIN-WAIT-2 (the half-close states: the application decides), that
  TIME-WAIT lasts Linux's fixed 60 s, and any other passing state that lasted a
  millisecond or more (a SYN-SENT held by a dropped SYN).
* **The accept queue** of a listening socket: its depth over time against the
  backlog given to ``listen()`` (Linux queues up to backlog + 1), as steps of
  constant depth (:class:`QueueStep`).
* **Drops**: a segment the kernel dropped is tagged with the reason in words, and a
  footnote names the kernel's reason and the segment that carried the same bytes again.
* **Windows** (``--windows``): the receiving socket's ``tcp_probe`` variables at each
  drawn segment a probe was matched to: cwnd, ssthresh, srtt, snd_wnd (the window the
  peer advertised), the usable window (RFC 9293: SND.UNA + SND.WND - SND.NXT) and
  rcv_wnd (the window this socket advertises).

The explanation layer
=====================
Each story sentence of :meth:`Connection.explain` is numbered across the figure (one
number, one sentence, however many connections are drawn) and marked on the row of
the first frame it cites; findings are lettered (A, B, …) and marked the same way.
The sentences themselves are :class:`StoryLine` records, rendered in the figure's
language; the painter wraps them under the diagram.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from handshake_viz.model import Call, Flag, Segment, TcpState
from handshake_viz.text import human_duration

if TYPE_CHECKING:  # the records read, by attribute only
    from handshake_viz.explain import Explanation
    from handshake_viz.kernel import Probe
    from handshake_viz.kerneljoin import AcceptQueue, KernelConnection, KernelDrop, StateCheck, StatePeriod
    from handshake_viz.timing import CallTiming

__all__ = [
    "BADGES",
    "Footnote",
    "QueueGauge",
    "QueueStep",
    "StoryLine",
    "StoryMarker",
    "Verdict",
    "WindowRow",
    "WindowStrip",
    "check_of",
    "drop_words",
    "duration_text",
    "kernel_key",
    "queue_text",
    "story_lines",
    "wait_text",
    "window_cells",
]

Verdict = Literal["agree", "linux", "disagree"]

#: The glyph a state mark carries for each verdict (a footnote number follows ≈ and ✗).
BADGES: dict[str, str] = {"agree": "✓", "linux": "≈", "disagree": "✗"}


def kernel_key(*, states: bool, drops: bool, queues: bool) -> str:
    """What the kernel layer's marks mean, one line under the diagram (only the marks it has)."""
    parts = []
    if states:
        parts.append("on each state, ✓ the kernel entered the same state, ≈N Linux reports this step "
                     "differently, ✗N the kernel disagrees (note N)")
    if drops:
        parts.append("✗ on an arrow: the kernel dropped that segment")
    if queues:
        parts.append("blue slots: connections waiting in the accept queue (red: the queue was full)")
    return "The kernel's own account (tracepoints): " + "; ".join(parts) if parts else ""

# Passing states whose length is worth a look when it is long (CLOSE-WAIT and FIN-WAIT-2
# are shown always: how long they last is the application's doing; TIME-WAIT is fixed).
_ALWAYS = frozenset({TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_2})
_NEVER = frozenset({TcpState.ESTABLISHED, TcpState.LISTEN, TcpState.CLOSED})
#: Seconds a passing state (SYN-SENT, LAST-ACK, …) must last before its length is written.
LONG_STATE = 0.001
#: Linux's TIME-WAIT length (TCP_TIMEWAIT_LEN), whose end the tracepoints never report.
TIME_WAIT_S = 60.0
#: ssthresh before the first loss (TCP_INFINITE_SSTHRESH): shown as ∞.
INFINITE_SSTHRESH = 0x7FFFFFFF
#: A call's wait is written into its label from this long (shorter is noise on loopback).
WAIT_SHOWN_MS = 1.0


# ======================================================================================
# Records
# ======================================================================================


@dataclass(frozen=True, slots=True)
class Footnote:
    """A numbered note under the diagram: why a state mark is marked ``≈`` (a Linux
    difference) or ``✗`` (a disagreement), or what a dropped segment's tag means."""

    number: int
    kind: Literal["linux", "disagree", "drop"]
    text: str

    @property
    def ref(self) -> str:
        """How marks cite it: ``≈1``, ``✗2``."""
        return f"{'≈' if self.kind == 'linux' else '✗'}{self.number}"


@dataclass(frozen=True, slots=True)
class QueueStep:
    """A stretch of time (rows ``y0``-``y1``) in which ``depth`` completed connections
    waited in a listening socket's accept queue; ``full`` when that is Linux's limit."""

    y0: float
    y1: float
    depth: int
    full: bool


@dataclass(frozen=True, slots=True)
class QueueGauge:
    """A listening socket's accept queue, drawn between its lifeline and its lane: one
    slot per connection the queue can hold (``slots``; the limit when it is small enough
    to draw), filled while a connection waits in it.  ``x_inner`` is the gauge's edge
    facing the lifeline; slots grow away from it (``direction``) ``cell`` wide."""

    lifeline: int
    listener: str  # "127.0.0.1:37113"
    backlog: int | None  # listen()'s argument, when traced
    limit: int | None  # what Linux queues: backlog + 1
    max_depth: int
    x_inner: float
    direction: int
    cell: float
    slots: int
    y0: float  # the outline: from the first connection queued to the last one accepted
    y1: float
    steps: tuple[QueueStep, ...]
    text: str  # "accept queue: 2 queued, backlog 1 (full)"; "" when nothing stands out
    text_x: float
    text_y: float


@dataclass(frozen=True, slots=True)
class WindowRow:
    """The receiving socket's variables as one drawn segment arrived (``tcp_probe``)."""

    frame: int
    y: float  # the arrow's arrival
    who: str  # the receiving lifeline's name: "server", "client 2"
    cwnd: int  # segments
    ssthresh: int | None  # segments; None before the first loss (∞)
    srtt_us: int
    snd_wnd: int  # bytes: the window the peer advertised
    usable: int  # bytes: SND.UNA + SND.WND - SND.NXT (what it may still send)
    rcv_wnd: int  # bytes: the window this socket advertises
    cells: tuple[str, ...]  # the texts of the strip's columns


@dataclass(frozen=True, slots=True)
class WindowStrip:
    """``--windows``: a table beside the ladder, one line per probed segment, level with
    its arrival.  Numbers are right-aligned at ``col_right`` (column ``i`` ends there)."""

    title: str
    columns: tuple[str, ...]
    col_right: tuple[float, ...]
    x0: float  # left edge
    title_y: float
    header_y: float
    rows: tuple[WindowRow, ...]


@dataclass(frozen=True, slots=True)
class StoryMarker:
    """A numbered marker in the time margin on the row a story sentence (``kind``
    "story": ``1``, ``2`` …) or a finding ("finding": ``A``, ``B`` …) cites first."""

    number: str
    kind: Literal["story", "finding"]
    x: float  # centre
    y: float
    frame: int
    conn: int


@dataclass(frozen=True, slots=True)
class StoryLine:
    """One paragraph of the story block under the figure: a connection's heading, a
    numbered sentence, a lettered finding (``text``: the evidence; ``why``: the usual
    cause), in the figure's language."""

    kind: Literal["heading", "story", "finding"]
    number: str  # "3", "A", "" for a heading
    text: str
    conn: int
    frames: tuple[int, ...] = ()
    why: str = ""
    calls: tuple[Call, ...] = ()  # the calls it cites


# ======================================================================================
# The kernel layer
# ======================================================================================


def check_of(k: KernelConnection, side: str, frame: int | None, state: TcpState) -> StateCheck | None:
    """The kernel's check of the inferred step "``side`` in ``state`` after ``frame``"."""
    for c in k.checks:
        if c.side.value == side and c.frame == frame and c.inferred is state:
            return c
    return None


def duration_text(period: StatePeriod | None, state: TcpState) -> str:
    """How long a side stayed in ``state``, where that matters (see the module notes):
    ``"16 ms"``, ``"60 s (fixed)"`` (Linux's 2MSL), or ``""``."""
    if state is TcpState.TIME_WAIT:
        return f"{TIME_WAIT_S:.0f} s (fixed)"
    if period is None or state in _NEVER:
        return ""
    length = period.duration
    if length is None:
        return "until the end" if state in _ALWAYS else ""
    if state in _ALWAYS or length >= LONG_STATE:
        return human_duration(length)
    return ""


#: Drop reasons (``skb:kfree_skb``, include/net/dropreason-core.h) in a few words.
_REASONS = {
    "TCP_LISTEN_OVERFLOW": "accept queue full",
    "NO_SOCKET": "no socket on that port",
    "TCP_ZEROWINDOW": "receive window full",
    "TCP_OLD_DATA": "old data (already received)",
    "TCP_OVERWINDOW": "beyond the receive window",
    "TCP_OFOMERGE": "duplicate of queued data",
    "TCP_INVALID_SEQUENCE": "sequence number out of window",
    "TCP_RESET": "reset",
    "TCP_CLOSE": "socket closed",
    "TCP_FLAGS": "flags not expected here",
    "SOCKET_RCVBUFF": "receive buffer full",
    "PROTO_MEM": "out of TCP memory",
    "TCP_CSUM": "bad checksum",
    "SOCKET_FILTER": "socket filter",
}


def drop_words(reason: str) -> str:
    """``"accept queue full"`` for ``TCP_LISTEN_OVERFLOW``; an unknown reason in lower case."""
    return _REASONS.get(reason, reason.replace("_", " ").lower())


def resent_as(dropped: Segment, later: Iterable[Segment]) -> Segment | None:
    """The segment that carried the dropped one's bytes (or its SYN) again, if any."""
    syn = bool(dropped.flags & Flag.SYN)
    for g in later:
        if g.frame > dropped.frame and g.dir is dropped.dir and bool(g.flags & Flag.SYN) == syn \
                and g.seq == dropped.seq and (g.length or syn) and g.length >= dropped.length:
            return g
    return None


def drop_note(drop: KernelDrop, seg: Segment, again: Segment | None) -> str:
    """The footnote of a dropped segment: the kernel's reason, how it is known, and the
    segment that carried it again."""
    what = "SYN" if seg.flags & Flag.SYN and not seg.flags & Flag.ACK else seg.label.value
    derived = drop.source.value == "accept-queue"
    how = ("derived from the queue: Linux frees a SYN that finds the accept queue full without "
           "naming a reason" if derived else f"skb:kfree_skb reason {drop.reason}")
    text = f"#{seg.frame}: the kernel dropped this {what}: {drop_words(drop.reason)} ({how})"
    if again is not None:
        text += f"; it was sent again as #{again.frame}, {human_duration(again.ts - seg.ts)} later"
    return text


def queue_text(q: AcceptQueue) -> str:
    """What a listener's queue note says, when something stands out (two or more
    waiting, the limit reached, a SYN dropped): ``accept queue: 2 queued, backlog 1
    (full)``; else ``""``."""
    full = q.limit is not None and q.max_depth >= q.limit
    if q.max_depth < 2 and not full and not q.overflows:
        return ""
    text = f"accept queue: {q.max_depth} queued"
    if q.backlog is not None:
        text += f", backlog {q.backlog}"
    if full:
        text += " (full)"
    return text


def window_cells(frame: int, who: str, p: Probe) -> tuple[str, ...]:
    """The strip's texts for one probe: the frame and its receiver, cwnd, ssthresh, srtt,
    snd_wnd, usable, rcv_wnd."""
    ssthresh = "∞" if p.ssthresh >= INFINITE_SSTHRESH else str(p.ssthresh)
    srtt = human_duration(p.srtt_us / 1e6)
    return (f"#{frame} {who}", str(p.cwnd), ssthresh, srtt, str(p.snd_wnd), str(usable_window(p)),
            str(p.rcv_wnd))


def usable_window(p: Probe) -> int:
    """RFC 9293's usable window, SND.UNA + SND.WND - SND.NXT (never below 0)."""
    in_flight = (p.snd_nxt - p.snd_una) & 0xFFFFFFFF
    return max(0, p.snd_wnd - in_flight)


#: The strip's column headings (the probe's names; README says what each is).
WINDOW_COLUMNS = ("arrived", "cwnd", "ssthresh", "srtt", "snd_wnd", "usable", "rcv_wnd")
WINDOW_TITLE = "kernel (tcp_probe): the receiving socket as each segment arrived"


# ======================================================================================
# The explanation layer
# ======================================================================================


def _letters(n: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA."""
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(65 + r) + out
    return out


def story_lines(explanations: Sequence[Explanation], lang: str) -> tuple[StoryLine, ...]:
    """Every connection's heading, numbered story sentences (numbered across the
    figure) and lettered findings, rendered in ``lang``."""
    from handshake_viz.explain import Sentence

    out: list[StoryLine] = []
    n = 0
    letter = 0
    for e in explanations:
        s = e.summary
        head = Sentence("head.conn", (("conn", s.conn), ("client", str(s.client)),
                                      ("server", str(s.server)))).text(lang)
        out.append(StoryLine("heading", "", head, e.conn))
        for sentence in e.story:
            n += 1
            out.append(StoryLine("story", str(n), sentence.text(lang), e.conn, sentence.frames,
                                 calls=sentence.calls))
        for f in e.findings:
            evidence = " ".join(x.text(lang) for x in (f.what, *f.more))
            out.append(StoryLine("finding", _letters(letter), evidence, e.conn, f.frames, f.why.text(lang),
                                 f.calls))
            letter += 1
    return tuple(out)


#: What a call waited for, in a few words (the label's ``[blocked 43 ms: data]``).
_WAIT_WORDS = {
    "syn-ack": "SYN-ACK",
    "rst": "RST",
    "connection": "a connection",
    "data": "data",
    "fin": "FIN",
    "buffer-space": "buffer space",
    "ready": "ready",
}


def wait_text(t: CallTiming | None) -> str:
    """``"[blocked 43 ms: data]"`` for a traced call that waited long enough to matter
    (see :data:`WAIT_SHOWN_MS`), else ``""`` (an inferred call's extent is the segments',
    not a measured wait)."""
    if t is None or t.call.inferred or t.blocked_ms is None or t.blocked_ms < WAIT_SHOWN_MS:
        return ""
    words = _WAIT_WORDS.get(t.waited_for.value)
    if words is None:
        return ""
    return f"[blocked {human_duration(t.blocked_ms / 1000)}: {words}]"


def timings_by_call(explanations: Iterable[Explanation]) -> Mapping[Call, CallTiming]:
    """Every explained call's timing."""
    return {t.call: t for e in explanations for t in e.timings}
