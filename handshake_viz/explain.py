"""What happened on a connection, in words: a numbered story and findings.

Sans-IO: a :class:`~handshake_viz.pipeline.Connection` (segments, aligned or
inferred calls) and the trace's calls on no connection go in; frozen records come
out.  Nothing here is written per scenario: every sentence is chosen by what the
segments and calls show (a SYN with data, an accept() that started after the
handshake ACK, a FIN followed by the peer's data), so the story is right for
captures hsviz never made.

The records, for every view (``hsviz explain``, ``hsviz analyze --explain``, the
notebook, and the diagram's numbered markers):

* :class:`Sentence` -- one sentence: a message key, and its arguments as data.
  Frames are :class:`Frames`, calls :class:`CallRef`; ``sentence.frames`` and
  ``sentence.calls`` list what it cites.  ``sentence.text(lang)`` renders it
  through the gettext catalog (:mod:`handshake_viz.i18n`).
* :class:`Finding` -- something unusual: a :class:`FindingKind`, the evidence
  (``what``), the usual cause (``why``), ``numbers`` (durations, counts, ports)
  and the :class:`Basis` it rests on (segments only, traced calls, kernel events).
* :class:`Explanation` -- one connection: ``story``, ``findings``, ``timings``
  (:class:`~handshake_viz.timing.CallTiming` per call).  ``text()``, ``to_json()``
  and ``_repr_html_()`` render it.

Findings are small rules (``_RULES``), each a function of one :class:`Context`
that yields findings.  A rule that could be confirmed by the kernel's own events
(drop reasons, real socket states) reads ``ctx.kernel``: empty today, so those
rules say that they inferred what they say from the segments (``Basis.SEGMENTS``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from handshake_viz.align import ConnectionView, accept_queue_delay, connection_view
from handshake_viz.i18n import english_messages, translate
from handshake_viz.model import (
    Analysis,
    Call,
    CallKind,
    ConnectionSummary,
    Direction,
    Endpoint,
    Label,
    Segment,
    TcpState,
    Word,
    normalize_ip,
)
from handshake_viz.seqnum import ACK, FIN, MASK, PSH, RST, SYN, seq_ge
from handshake_viz.text import clock_text
from handshake_viz.timing import CallTiming, Wait, call_timings

if TYPE_CHECKING:  # pragma: no cover
    from handshake_viz.pipeline import Connection, Trace

__all__ = [
    "MESSAGES",
    "Basis",
    "CallRef",
    "Context",
    "Explanation",
    "Finding",
    "FindingKind",
    "Frames",
    "Sentence",
    "Term",
    "explain_connection",
    "explain_trace",
]

C2S, S2C = Direction.C2S, Direction.S2C

#: Linux's TIME-WAIT length (2MSL): ``TCP_TIMEWAIT_LEN`` is 60 s, fixed.
TIME_WAIT_S = 60.0
#: accept() starting this long after the handshake ACK is "late" (the connection queued).
ACCEPT_LATE_MS = 20.0
#: A pure ACK this long after the data it acknowledges was delayed (Linux: 40 ms at
#: least, up to 200 ms; other systems up to 500 ms).
DELAYED_ACK_MS = (30.0, 600.0)
#: No segment for this long is an idle stretch worth naming.
IDLE_S = 1.0
#: Calls whose timing the text lists (``to_json`` has them all).
CALLS_SHOWN = 20
#: Data exchanges told one by one before the rest is summed up.
DETAILED_BURSTS = 3

# ======================================================================================
# Messages: every sentence's English text is in locale/hsviz.pot, keyed by its msgctxt
# ======================================================================================

#: key -> English message with ``{name}`` placeholders (the gettext msgid; the key is
#: its msgctxt), read from ``locale/hsviz.pot``, the template the .po catalogs translate.
#: Placeholders holding frames or calls must appear in every translation.
MESSAGES: dict[str, str] = english_messages()


# ======================================================================================
# Records
# ======================================================================================


@dataclass(frozen=True, slots=True)
class Frames:
    """Frames a sentence cites: rendered ``#3`` or ``#3, #5, #7`` (long lists cut)."""

    frames: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CallRef:
    """A call a sentence cites, rendered ``connect() @0.000 ms`` (time from ``t0``, the
    connection's first segment, as in the ladder)."""

    call: Call
    t0: float


@dataclass(frozen=True, slots=True)
class Term:
    """A word the catalog translates (``term.client`` ...)."""

    key: str


@dataclass(frozen=True, slots=True)
class Ms:
    """A duration in milliseconds, rendered with a unit (``0.080 ms``, ``1.2 s``)."""

    ms: float


@dataclass(frozen=True, slots=True)
class Nested:
    """A whole message as an argument of another (an optional clause)."""

    sentence: Sentence


Arg = Union[Frames, CallRef, Term, Ms, Nested, int, str]


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence: the message ``key`` (see :data:`MESSAGES`) and its arguments."""

    key: str
    args: tuple[tuple[str, Arg], ...] = ()

    @property
    def frames(self) -> tuple[int, ...]:
        """Every frame the sentence cites, in ascending order."""
        out: set[int] = set()
        for _, a in self.args:
            if isinstance(a, Frames):
                out.update(a.frames)
            elif isinstance(a, Nested):
                out.update(a.sentence.frames)
        return tuple(sorted(out))

    @property
    def calls(self) -> tuple[Call, ...]:
        """Every call the sentence cites, in the order it names them."""
        out: list[Call] = []
        for _, a in self.args:
            if isinstance(a, CallRef):
                out.append(a.call)
            elif isinstance(a, Nested):
                out.extend(a.sentence.calls)
        return tuple(out)

    def text(self, lang: str = "en") -> str:
        tr = translate(lang)
        values = {name: _render(a, lang) for name, a in self.args}
        return tr(self.key, MESSAGES[self.key]).format(**values)

    def to_json(self, lang: str = "en") -> dict[str, Any]:
        return {"key": self.key, "text": self.text(lang), "frames": list(self.frames),
                "calls": [_call_json(a.call, a.t0) for _, a in self.args if isinstance(a, CallRef)]}


def _say(key: str, **args: Arg) -> Sentence:
    assert key in MESSAGES, key
    return Sentence(key, tuple(args.items()))


def _render(a: Arg, lang: str) -> str:
    if isinstance(a, Frames):
        shown = [f"#{f}" for f in a.frames[:8]]
        if len(a.frames) > 8:
            shown.append(f"… #{a.frames[-1]}")
        return ", ".join(shown)
    if isinstance(a, CallRef):
        return _call_label(a.call, a.t0)
    if isinstance(a, Term):
        return translate(lang)(a.key, MESSAGES[a.key])
    if isinstance(a, Ms):
        return clock_text(a.ms) if abs(a.ms) < 1000 else f"{a.ms / 1000:,.2f} s"
    if isinstance(a, Nested):
        return a.sentence.text(lang) if a.sentence.key else ""
    if isinstance(a, int) and not isinstance(a, bool):
        return str(a)
    return str(a)


def _call_label(call: Call, t0: float) -> str:
    return f"{call.call}() @{clock_text((call.start - t0) * 1000.0)}"


def _call_json(call: Call, t0: float) -> dict[str, Any]:
    return {"call": call.call, "pid": call.pid, "fd": call.fd, "start": call.start,
            "ref": _call_label(call, t0), "inferred": call.inferred}


class FindingKind(Word):
    """What a finding is about (the ``"kind"`` of ``hsviz explain --json``)."""

    REFUSED = "refused"
    RESET = "reset"
    ADDRESS_IN_USE = "address-in-use"
    HALF_CLOSE = "half-close"
    ACCEPT_LATE = "accept-late"
    SYN_RETRANSMITTED = "syn-retransmitted"
    NO_ANSWER = "no-answer"
    NAGLE_DELAYED_ACK = "nagle-delayed-ack"
    ZERO_WINDOW = "zero-window"
    WINDOW_FULL = "window-full"
    RETRANSMISSION = "retransmission"
    DUP_ACK = "dup-ack"
    MISSED_SEGMENTS = "missed-segments"
    MID_STREAM = "mid-stream"
    CHECKSUM = "checksum"
    FAST_OPEN = "fast-open"
    KEEP_ALIVE = "keep-alive"
    IDLE = "idle"


class Basis(Word):
    """What a finding rests on: the segments alone (its cause inferred), the traced
    calls too, or the kernel's own events (drop reasons, socket states)."""

    SEGMENTS = "segments"
    TRACE = "trace"
    KERNEL = "kernel"


@dataclass(frozen=True)
class Finding:
    """Something worth knowing: the evidence (``what``, and optional further
    sentences ``more``), the usual cause (``why``) and the numbers behind them."""

    kind: FindingKind
    what: Sentence
    why: Sentence
    basis: Basis = Basis.SEGMENTS
    more: tuple[Sentence, ...] = ()
    numbers: Mapping[str, float | int | str | None] = field(default_factory=dict, hash=False)

    @property
    def sentences(self) -> tuple[Sentence, ...]:
        return (self.what, *self.more, self.why)

    @property
    def frames(self) -> tuple[int, ...]:
        return tuple(sorted({f for s in self.sentences for f in s.frames}))

    @property
    def calls(self) -> tuple[Call, ...]:
        seen: dict[int, Call] = {}
        for s in self.sentences:
            for c in s.calls:
                seen.setdefault(id(c), c)
        return tuple(seen.values())

    def text(self, lang: str = "en") -> str:
        basis = Sentence(f"basis.{self.basis.value}").text(lang)
        evidence = " ".join(s.text(lang) for s in (self.what, *self.more))
        return f"[{self.kind.value}] {evidence} {basis}\n    {self.why.text(lang)}"

    def to_json(self, lang: str = "en") -> dict[str, Any]:
        return {"kind": self.kind.value, "basis": self.basis.value, "frames": list(self.frames),
                "numbers": dict(self.numbers),
                "what": [s.to_json(lang) for s in (self.what, *self.more)], "why": self.why.to_json(lang)}


@dataclass(frozen=True)
class Explanation:
    """One connection, explained: the numbered ``story``, the ``findings`` and every
    call's timing.  ``str(e)`` / ``e.text("zh")`` is the text; ``e.to_json()`` the data."""

    summary: ConnectionSummary
    story: tuple[Sentence, ...]
    findings: tuple[Finding, ...]
    timings: tuple[CallTiming, ...]
    t0: float

    @property
    def conn(self) -> int:
        return self.summary.conn

    def lines(self, lang: str = "en") -> list[str]:
        s = self.summary
        out = [_say("head.conn", conn=s.conn, client=str(s.client), server=str(s.server)).text(lang)]
        out += [f"  {n}. {sentence.text(lang)}" for n, sentence in enumerate(self.story, 1)]
        if self.timings:
            out.append(Sentence("head.calls").text(lang))
            out += [f"  - {_timing_sentence(t, self.t0).text(lang)}" for t in self.timings[:CALLS_SHOWN]]
            if len(self.timings) > CALLS_SHOWN:
                out.append("  - " + _say("head.calls.more", n=len(self.timings) - CALLS_SHOWN).text(lang))
        out.append(Sentence("head.findings" if self.findings else "head.none").text(lang))
        for f in self.findings:
            out.append("  " + f.text(lang).replace("\n", "\n  "))
        return out

    def text(self, lang: str = "en") -> str:
        return "\n".join(self.lines(lang))

    def __str__(self) -> str:
        return self.text()

    def to_json(self, lang: str = "en") -> dict[str, Any]:
        return {
            "type": "explanation", "conn": self.conn, "lang": lang,
            "calls_traced": any(not t.call.inferred for t in self.timings),
            "story": [dict(n=n, **s.to_json(lang)) for n, s in enumerate(self.story, 1)],
            "findings": [f.to_json(lang) for f in self.findings],
            "calls": [dict(_call_json(t.call, self.t0), frames=list(t.call.frames), **t.to_json(),
                           text=_timing_sentence(t, self.t0).text(lang)) for t in self.timings],
        }

    def _repr_html_(self) -> str:
        s = self.summary
        story = "".join(f"<li>{html.escape(x.text())}</li>" for x in self.story)
        finds = "".join(
            f"<li><b>{html.escape(f.kind.value)}</b>: {html.escape(' '.join(x.text() for x in (f.what, *f.more)))}"
            f"<br><i>{html.escape(f.why.text())}</i></li>" for f in self.findings)
        return (f"<p><b>conn {s.conn}</b>: {html.escape(str(s.client))} → {html.escape(str(s.server))}</p>"
                f"<ol>{story}</ol>" + (f"<p>Findings:</p><ul>{finds}</ul>" if finds else "<p>Nothing unusual found.</p>"))

    def __repr__(self) -> str:
        kinds = ", ".join(f.kind.value for f in self.findings) or "none"
        return f"<Explanation conn {self.conn}: {len(self.story)} sentences, findings: {kinds}>"


def _timing_sentence(t: CallTiming, t0: float) -> Sentence:
    call = CallRef(t.call, t0)
    frame = Frames(() if t.released_by is None else (t.released_by,))
    if t.blocked_ms is None:
        return _say("wait.unfinished", call=call)
    ms = Ms(t.blocked_ms)
    w = t.waited_for
    if t.queued_ms is not None and w in (Wait.CONNECTION, Wait.DATA):
        return _say(f"wait.{w.value}.queued", call=call, frame=frame, queued=Ms(t.queued_ms))
    if w in (Wait.SYN_ACK, Wait.CONNECTION, Wait.DATA, Wait.FIN, Wait.READY) and t.released_by is not None:
        return _say(f"wait.{w.value}", call=call, ms=ms, frame=frame)
    if w is Wait.RST and t.released_by is not None:
        return _say("wait.rst", call=call, ms=ms, frame=frame, errno=t.call.errno or "")
    if w is Wait.BUFFER_SPACE:
        return _say("wait.buffer-space", call=call, ms=ms)
    if t.call.kind in (CallKind.CLOSE, CallKind.SHUTDOWN) and t.call.frames:
        return _say("wait.close", call=call, ms=ms)
    return _say("wait.nothing", call=call, ms=ms)


# ======================================================================================
# What the rules read
# ======================================================================================


@dataclass(frozen=True)
class Context:
    """Everything the story and the rules read about one connection.

    ``others`` are the trace's calls on no connection (a listener's bind, a failed
    bind); ``kernel`` the kernel's events for this connection when they were recorded
    (``X.kernel.jsonl``): empty until then, and every rule works without them.
    """

    summary: ConnectionSummary
    segments: tuple[Segment, ...]
    calls: tuple[Call, ...]
    view: ConnectionView
    timings: tuple[CallTiming, ...]
    sides: Mapping[int, str]  # id(call) -> "client" | "server"
    others: tuple[Call, ...] = ()
    kernel: tuple[Any, ...] = ()

    @property
    def t0(self) -> float:
        return self.segments[0].ts if self.segments else self.summary.first_ts

    @property
    def traced(self) -> bool:
        return any(not c.inferred for c in self.calls)

    @property
    def basis(self) -> Basis:
        return Basis.KERNEL if self.kernel else Basis.TRACE if self.traced else Basis.SEGMENTS

    def side_calls(self, side: str, kind: CallKind | None = None) -> list[Call]:
        return [c for c in self.calls if self.sides.get(id(c)) == side and (kind is None or c.kind is kind)]

    def call_with(self, frame: int, kind: CallKind | None = None, side: str | None = None,
                  pred: Callable[[Call], bool] | None = None) -> Call | None:
        """The first call joined to ``frame`` (of that kind, on that side)."""
        for c in self.calls:
            if frame in c.frames and (kind is None or c.kind is kind) \
                    and (side is None or self.sides.get(id(c)) == side) and (pred is None or pred(c)):
                return c
        return None

    def timing(self, call: Call) -> CallTiming | None:
        for t in self.timings:
            if t.call is call:
                return t
        return None


def _dir_side(d: Direction) -> str:
    return "client" if d is C2S else "server"


def _other(side: str) -> str:
    return "server" if side == "client" else "client"


def _same(a: Endpoint | None, b: Endpoint) -> bool:
    return a is not None and a.port == b.port and normalize_ip(a.ip) == normalize_ip(b.ip)


def _sides(calls: Sequence[Call], summary: ConnectionSummary, by_frame: Mapping[int, Segment]) -> dict[int, str]:
    """Which side made each call: by its socket's address, else by what it is (connect
    is the client's, accept the server's) or by the segments it is joined to; other
    calls on the same fd of the same process share the side."""
    sides: dict[int, str] = {}
    for c in calls:
        side: str | None = None
        if _same(c.local, summary.client) or _same(c.remote, summary.server) and not _same(c.local, summary.server):
            side = "client"
        elif _same(c.local, summary.server) or _same(c.remote, summary.client):
            side = "server"
        elif c.kind is CallKind.CONNECT or c.fast_open:
            side = "client"
        elif c.kind is CallKind.ACCEPT:
            side = "server"
        elif c.frames and c.frames[0] in by_frame:
            d = _dir_side(by_frame[c.frames[0]].dir)
            side = d if c.kind in (CallKind.SEND, CallKind.CLOSE, CallKind.SHUTDOWN) else _other(d)
        if side is not None:
            sides[id(c)] = side
    by_fd: dict[tuple[int, int | None], str] = {}
    for c in calls:
        if id(c) in sides and c.kind is not CallKind.ACCEPT and c.fd is not None:
            by_fd.setdefault((c.pid, c.fd), sides[id(c)])
    for c in calls:
        if id(c) not in sides and (c.pid, c.fd) in by_fd:
            sides[id(c)] = by_fd[(c.pid, c.fd)]
    return sides


def _context(conn: Connection, others: Sequence[Call] = (), kernel: Sequence[Any] = ()) -> Context:
    segs = tuple(conn.segments)
    by_frame = {s.frame: s for s in segs}
    calls = tuple(conn.calls)
    return Context(conn.summary, segs, calls, connection_view(conn.summary, segs), call_timings(calls, segs),
                   _sides(calls, conn.summary, by_frame), tuple(others), tuple(kernel))


def _side_term(side: str, capital: bool = False) -> Term:
    return Term(f"term.{side.capitalize() if capital else side}")


def _sides_args(side: str) -> dict[str, Arg]:
    peer = _other(side)
    return {"side": _side_term(side), "Side": _side_term(side, True),
            "peer": _side_term(peer), "Peer": _side_term(peer, True)}


def _first_sent(v: ConnectionView) -> list[Segment]:
    firsts = {id(s) for st in v.streams.values() for s in st.segs}
    return [s for s in v.segments if id(s) in firsts and not s.flags & SYN]


def _acker(v: ConnectionView, after: Segment, end: int) -> Segment | None:
    """The first segment from the other side, after ``after``, acknowledging relative
    sequence number ``end``."""
    for s in v.segments:
        if s.frame > after.frame and s.dir is not after.dir and s.rel_ack is not None \
                and seq_ge(s.rel_ack, end & MASK) and not s.flags & (RST | SYN):
            return s
    return None


# ======================================================================================
# The story
# ======================================================================================


class _Story:
    """Sentences, each anchored at the frame it is about; told in frame order (sentences
    about one frame in the order they were added)."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, Sentence]] = []

    def add(self, anchor: int, sentence: Sentence) -> None:
        self._items.append((anchor, len(self._items), sentence))

    def told(self) -> tuple[Sentence, ...]:
        return tuple(x[2] for x in sorted(self._items, key=lambda x: x[:2]))


def _story(ctx: Context) -> tuple[Sentence, ...]:
    story = _Story()
    if ctx.calls and not ctx.traced:
        story.add(0, _say("calls.inferred"))
    _story_open(ctx, story)
    if ctx.view.refusing_rst is None:
        _story_data(ctx, story)
        _story_end(ctx, story)
    return story.told()


def _story_open(ctx: Context, story: _Story) -> None:
    v, s = ctx.view, ctx.summary
    syn, sa = v.first_syn[C2S], v.syn_ack[S2C]
    if syn is None and sa is None:
        if ctx.segments:
            first = ctx.segments[0].frame
            story.add(first, _say("mid-stream.guess", first=Frames((first,)), client=str(s.client),
                                  server=str(s.server)) if s.roles_guessed else _say("mid-stream", first=Frames((first,))))
        return
    if syn is not None:
        opener = ctx.call_with(syn.frame, side="client", pred=lambda c: c.kind is CallKind.CONNECT or c.fast_open)
        base: dict[str, Arg] = {"Side": _side_term("client", True), "addr": str(s.client),
                                "syn": Frames((syn.frame,)), "isn": syn.seq}
        if syn.length > 0 and opener is not None:
            story.add(syn.frame, _say("open.fastopen", call=CallRef(opener, ctx.t0), n=syn.length, **base))
        elif opener is not None:
            story.add(syn.frame, _say("open.call", call=CallRef(opener, ctx.t0), **base))
        else:
            story.add(syn.frame, _say("open", **base))
        again = [x for x in _syns(ctx) if x.frame != syn.frame and (sa is None or x.frame < sa.frame)]
        if again:
            story.add(again[0].frame, _say("syn.again", again=Frames(tuple(x.frame for x in again))))
        rst = v.refusing_rst
        if rst is not None:
            story.add(rst.frame, _say("refused", port=s.server.port, rst=Frames((rst.frame,)), ack=rst.ack))
            failed = ctx.call_with(rst.frame, side="client", pred=lambda c: c.errno == "ECONNREFUSED")
            if failed is not None:
                story.add(rst.frame, _say("refused.call", call=CallRef(failed, ctx.t0), ms=Ms((rst.ts - syn.ts) * 1000)))
            return
        if sa is None:
            story.add(syn.frame, _say("no-answer"))
            return
        isn_args: dict[str, Arg] = {"synack": Frames((sa.frame,)), "isn": sa.seq, "ack": sa.ack, "peer_isn": syn.seq}
        if sa.frame < syn.frame:  # recorded out of order: tell the answer after the question
            story.add(syn.frame, _say("syn-ack.reordered", synack=Frames((sa.frame,)), syn=Frames((syn.frame,))))
        story.add(max(sa.frame, syn.frame), _say("syn-ack.fastopen", n=syn.length, **isn_args) if v.fast_open else _say("syn-ack", **isn_args))
        if opener is not None:
            t = ctx.timing(opener)
            if t is not None and t.released_by == sa.frame and t.blocked_ms is not None:
                story.add(max(sa.frame, syn.frame), _say("connect.rtt", call=CallRef(opener, ctx.t0), ms=Ms(t.blocked_ms)))
    else:
        assert sa is not None
        story.add(sa.frame, _say("missing-syn", synack=Frames((sa.frame,)), isn=sa.seq, ack=sa.ack,
                                 peer_isn=(sa.ack - 1) & MASK))
    hs = v.handshake_ack
    if hs is not None and hs.dir is C2S:
        story.add(hs.frame, _say("handshake-ack.data" if hs.length else "handshake-ack", ack=Frames((hs.frame,)),
                                 ackno=hs.ack, peer_isn=sa.seq))
    accept = next((c for c in ctx.side_calls("server", CallKind.ACCEPT) if c.frames), None)
    if accept is None:
        return
    ref = CallRef(accept, ctx.t0)
    if v.fast_open and syn is not None and accept.frames[0] == syn.frame:
        story.add(syn.frame, _say("accept.fastopen", call=ref, syn=Frames((syn.frame,))))
    elif hs is not None and accept.frames[0] == hs.frame:
        late = accept_queue_delay(accept, ctx.segments)
        ack = Frames((hs.frame,))
        if accept.inferred:
            story.add(hs.frame, _say("accept.ready", call=ref, ack=ack))
        elif late is not None and late * 1000 > 1.0:
            story.add(hs.frame, _say("accept.late", call=ref, ms=Ms(late * 1000), ack=ack))
        else:
            story.add(hs.frame, _say("accept.waited", call=ref, ms=Ms((accept.end - accept.start) * 1000), ack=ack))


def _bursts(ctx: Context, data: Sequence[Segment]) -> list[list[Segment]]:
    """Runs of first-sent data from one side, each ended by a PSH or a FIN (where a
    write usually ends) unless one traced write covers the next segment too."""
    writer = {f: c for c in ctx.calls if c.kind is CallKind.SEND and not c.inferred for f in c.frames}
    out: list[list[Segment]] = []
    for s in data:
        if out and out[-1][-1].dir is s.dir:
            last = out[-1][-1]
            same_write = last.frame in writer and writer.get(s.frame) is writer[last.frame]
            if same_write or not last.flags & (PSH | FIN):
                out[-1].append(s)
                continue
        out.append([s])
    return out


def _story_data(ctx: Context, story: _Story) -> None:
    v = ctx.view
    data = [s for s in _first_sent(v) if s.length > 0]
    bursts = _bursts(ctx, data)
    told: set[int] = set()  # piggybacked ACKs already told
    for burst in bursts[:DETAILED_BURSTS]:
        anchor = burst[0].frame
        side = _dir_side(burst[0].dir)
        peer = _other(side)
        frames = tuple(s.frame for s in burst)
        n = sum(v.new_bytes.get(s.frame, s.length) for s in burst)
        lo, hi = burst[0].rel_seq, (burst[-1].rel_end - 1) & MASK
        write = next((c for c in ctx.side_calls(side, CallKind.SEND) if set(c.frames) & set(frames)), None)
        base: dict[str, Arg] = {**_sides_args(side), "n": n, "segs": Frames(frames), "lo": lo, "hi": hi}
        if write is not None and not write.inferred:
            story.add(anchor, _say("data.call", call=CallRef(write, ctx.t0), **base))
        else:
            story.add(anchor, _say("data", **base))
        acker = _acker(v, burst[-1], burst[-1].rel_end)
        if acker is not None:
            a_args: dict[str, Arg] = {**_sides_args(side), "ack": Frames((acker.frame,)), "ackno": acker.rel_ack or 0}
            if acker.flags & FIN and not acker.length:
                story.add(anchor, _say("ack.fin", **a_args))
            elif acker.length > 0:
                story.add(anchor, _say("ack.piggyback", **a_args))
                told.add(acker.frame)
            else:
                story.add(anchor, _say("ack.pure", **a_args))
        read = next((c for c in ctx.side_calls(peer, CallKind.RECV)
                     if c.frames and c.frames[-1] == burst[-1].frame and not c.inferred and (c.ret or 0) > 0), None)
        t = ctx.timing(read) if read is not None else None
        if read is not None and t is not None and t.blocked_ms is not None:
            if t.queued_ms is not None and t.queued_ms > 1.0:
                story.add(anchor, _say("read.queued", call=CallRef(read, ctx.t0), ms=Ms(t.queued_ms), **_sides_args(side)))
            elif t.blocked_ms > 1.0:
                story.add(anchor, _say("read.waited", call=CallRef(read, ctx.t0), ms=Ms(t.blocked_ms), **_sides_args(side)))
    rest = [s for b in bursts[DETAILED_BURSTS:] for s in b]
    if rest:
        c2s = sum(v.new_bytes.get(s.frame, 0) for s in data if s.dir is C2S)
        s2c = sum(v.new_bytes.get(s.frame, 0) for s in data if s.dir is S2C)
        story.add(rest[0].frame, _say("data.more", n=len(rest), segs=Frames(tuple(s.frame for s in rest)), c2s=c2s,
                                      s2c=s2c))
        piggy = [s for s in rest if s.label is Label.PIGGYBACK and s.frame not in told]
        if piggy:
            story.add(rest[0].frame, _say("piggyback.later", segs=Frames(tuple(s.frame for s in piggy))))


def _closer(ctx: Context, fin: Segment, side: str) -> Call | None:
    return ctx.call_with(fin.frame, side=side, pred=lambda c: c.kind in (CallKind.CLOSE, CallKind.SHUTDOWN))


def _story_end(ctx: Context, story: _Story) -> None:
    v, s = ctx.view, ctx.summary
    fins = sorted((f for f in (v.fin[C2S], v.fin[S2C]) if f is not None), key=lambda f: f.frame)
    rsts = sorted((r for r in (v.rst[C2S], v.rst[S2C]) if r is not None and r is not v.refusing_rst),
                  key=lambda r: r.frame)
    if fins:
        _story_fins(ctx, story, fins)
    if rsts:
        rst = rsts[0]
        side = _dir_side(rst.dir)
        own_fin = v.fin[rst.dir]
        key = "rst.after-fin" if own_fin is not None and own_fin.frame < rst.frame else "rst.end"
        story.add(rst.frame, _say(key, rst=Frames((rst.frame,)), **_sides_args(side)))
        err = ctx.call_with(rst.frame, side=_other(side), pred=lambda c: c.errno in ("ECONNRESET", "EPIPE"))
        if err is not None:
            story.add(rst.frame, _say("rst.error", call=CallRef(err, ctx.t0), errno=err.errno or "", **_sides_args(side)))
    elif ctx.segments and len(fins) < 2 and TcpState.TIME_WAIT not in (s.client_state, s.server_state) \
            and (s.client_state, s.server_state) != (TcpState.CLOSED, TcpState.CLOSED) \
            and s.client_state is not TcpState.SYN_SENT and s.server_state is not TcpState.SYN_RECEIVED:
        last = ctx.segments[-1].frame
        story.add(last, _say("still-open", last=Frames((last,)), cstate=s.client_state.value, sstate=s.server_state.value))


def _story_fins(ctx: Context, story: _Story, fins: list[Segment]) -> None:
    v, s = ctx.view, ctx.summary
    first = fins[0]
    side, peer = _dir_side(first.dir), _other(_dir_side(first.dir))
    sides = _sides_args(side)
    fin_end = first.rel_end + 1
    closer = _closer(ctx, first, side)
    args: dict[str, Arg] = {**sides, "fin": Frames((first.frame,))}
    if closer is not None and closer.kind is CallKind.SHUTDOWN:
        story.add(first.frame, _say("shutdown.first", call=CallRef(closer, ctx.t0), **args))
    elif closer is not None and not closer.inferred:
        story.add(first.frame, _say("close.first.call", call=CallRef(closer, ctx.t0), **args))
    else:
        story.add(first.frame, _say("close.first", **args))
    zero = ctx.call_with(first.frame, CallKind.RECV, side=peer, pred=lambda c: c.ret == 0 and c.errno is None)
    if zero is not None:
        story.add(first.frame, _say("read.zero", call=CallRef(zero, ctx.t0), **args))
    later = [x for x in _first_sent(v) if x.dir is not first.dir and x.length > 0 and x.frame > first.frame]
    if later:
        story.add(later[-1].frame, _say("half-close", n=sum(v.new_bytes.get(x.frame, 0) for x in later),
                                        segs=Frames(tuple(x.frame for x in later)), **sides))
    second = fins[1] if len(fins) > 1 else None
    if second is not None and (second.rel_ack is None or not seq_ge(second.rel_ack, fin_end & MASK)) \
            and s.client_state is TcpState.TIME_WAIT and s.server_state is TcpState.TIME_WAIT:
        story.add(second.frame, _say("close.simultaneous", fins=Frames((first.frame, second.frame))))
        return
    acker = _acker(v, first, fin_end)
    if acker is not None and acker is second:
        closer2 = _closer(ctx, second, peer)
        a2: dict[str, Arg] = {**sides, "fin": Frames((second.frame,)), "ackno": second.rel_ack or 0}
        story.add(second.frame, _say("fin-ack.call", call=CallRef(closer2, ctx.t0), **a2)
                  if closer2 is not None and not closer2.inferred else _say("fin-ack", **a2))
    else:
        if acker is not None and not acker.flags & RST:
            key = "fin.acked.data" if acker.length else "fin.acked"
            story.add(acker.frame, _say(key, ack=Frames((acker.frame,)), ackno=acker.rel_ack or 0, **sides))
        rst = min((r for r in (v.rst[C2S], v.rst[S2C]) if r is not None), key=lambda r: r.frame, default=None)
        if second is not None and rst is not None and rst.frame < second.frame:
            story.add(second.frame, _say("fin.after-rst", fin=Frames((second.frame,)), **sides))
            return
        if second is not None:
            closer2 = _closer(ctx, second, peer)
            a3: dict[str, Arg] = {**sides, "fin": Frames((second.frame,)), "ms": Ms((second.ts - first.ts) * 1000)}
            if rst is not None:  # a RST follows: this is no orderly four-way close
                story.add(second.frame, _say("fin.second.plain", **a3))
            else:
                story.add(second.frame, _say("fin.second.call", call=CallRef(closer2, ctx.t0), **a3)
                          if closer2 is not None and not closer2.inferred else _say("fin.second", **a3))
    if second is not None:
        last = _acker(v, second, second.rel_end + 1)
        if last is not None and not last.flags & RST:
            story.add(last.frame, _say("last-ack", ack=Frames((last.frame,)), ackno=last.rel_ack or 0, **sides))
    if (s.client_state if side == "client" else s.server_state) is TcpState.TIME_WAIT:
        story.add(ctx.segments[-1].frame, _say("time-wait", **sides))


# ======================================================================================
# The findings: one small rule each
# ======================================================================================

Rule = Callable[[Context], Iterator[Finding]]
_RULES: list[Rule] = []


def _rule(fn: Rule) -> Rule:
    _RULES.append(fn)
    return fn


@_rule
def _refused(ctx: Context) -> Iterator[Finding]:
    v = ctx.view
    rst, syn = v.refusing_rst, v.first_syn[C2S]
    if rst is None or syn is None:
        return
    call = ctx.call_with(rst.frame, pred=lambda c: c.errno == "ECONNREFUSED")
    args: dict[str, Arg] = {"syn": Frames((syn.frame,)), "rst": Frames((rst.frame,))}
    what = _say("f.refused.call", call=CallRef(call, ctx.t0), **args) if call else _say("f.refused", **args)
    yield Finding(FindingKind.REFUSED, what, _say("f.refused.why", server=str(ctx.summary.server)),
                  Basis.TRACE if call is not None and not call.inferred else Basis.SEGMENTS,
                  numbers={"port": ctx.summary.server.port, "ms": round((rst.ts - syn.ts) * 1000, 3)})


def _received_and_read(ctx: Context, side: str, before: float) -> tuple[int, int]:
    """Bytes ``side`` received (first-sent by the peer, before ``before``) and bytes its
    traced reads took."""
    peer_dir = S2C if side == "client" else C2S
    got = sum(n for s in ctx.view.streams[peer_dir].segs if s.ts <= before
              for n in (ctx.view.new_bytes.get(s.frame, 0),))
    read = sum(max(c.ret or 0, 0) for c in ctx.side_calls(side, CallKind.RECV)
               if not c.inferred and c.errno is None and not c.peeks and c.end <= before + 0.01)
    return got, read


@_rule
def _reset(ctx: Context) -> Iterator[Finding]:
    v = ctx.view
    for d in (C2S, S2C):
        rst = v.rst[d]
        if rst is None or rst is v.refusing_rst or (v.first_syn[C2S] is not None and v.syn_ack[S2C] is None):
            continue
        side, peer = _dir_side(d), _other(_dir_side(d))
        own_fin = v.fin[d]
        errors = [c for c in ctx.side_calls(peer) if c.errno in ("ECONNRESET", "EPIPE") and c.end >= rst.ts - 0.01]
        more: list[Sentence] = []
        if errors:
            more.append(_say("f.reset.peer-error", errors=", ".join(f"{_call_label(c, ctx.t0)} → {c.errno}"
                                                                   for c in errors), **_sides_args(side)))
        numbers: dict[str, float | int | str | None] = {"side": side, "errors": len(errors)}
        peer_data = [s for s in v.streams[_peer_dir(d)].segs if s.ts <= rst.ts]
        if own_fin is not None and own_fin.frame < rst.frame:
            late = [s for s in ctx.segments if s.dir is not d and s.length > 0 and own_fin.frame < s.frame < rst.frame]
            if late:
                what = _say("f.reset.after-close", fin=Frames((own_fin.frame,)), late=Frames(tuple(s.frame for s in late)),
                            rst=Frames((rst.frame,)), **_sides_args(side))
                yield Finding(FindingKind.RESET, what, _say("f.reset.after-close.why"), ctx.basis, tuple(more),
                              {**numbers, "cause": "data-after-close"})
                continue
        closer = next((c for c in ctx.side_calls(side, CallKind.CLOSE)
                       if not c.inferred and abs(c.start - rst.ts) < 0.05 or rst.frame in c.frames), None)
        if closer is not None and not closer.inferred and peer_data:
            got, read = _received_and_read(ctx, side, rst.ts)
            if got > read:
                what = _say("f.reset.unread", n=got - read, unread=Frames(tuple(s.frame for s in peer_data)),
                            rst=Frames((rst.frame,)), **_sides_args(side))
                yield Finding(FindingKind.RESET, what, _say("f.reset.unread.why"), Basis.TRACE, tuple(more),
                              {**numbers, "cause": "unread-data", "unread": got - read})
                continue
        if own_fin is None and peer_data and closer is None or (closer is not None and closer.inferred and peer_data):
            what = _say("f.reset.unread.guess", unread=Frames(tuple(s.frame for s in peer_data[-3:])),
                        rst=Frames((rst.frame,)), **_sides_args(side))
            yield Finding(FindingKind.RESET, what, _say("f.reset.unread.why"), ctx.basis, tuple(more),
                          {**numbers, "cause": "unread-data?"})
            continue
        yield Finding(FindingKind.RESET, _say("f.reset.abort", rst=Frames((rst.frame,)), **_sides_args(side)),
                      _say("f.reset.abort.why"), ctx.basis, tuple(more), {**numbers, "cause": "abort"})


def _peer_dir(d: Direction) -> Direction:
    return S2C if d is C2S else C2S


def _time_wait_since(ctx: Context, side: str) -> Segment | None:
    """The segment after which ``side`` was in TIME-WAIT (it stays there to the end)."""
    since = None
    for s in ctx.segments:
        state = s.client_state if side == "client" else s.server_state
        if state is TcpState.TIME_WAIT:
            since = since or s
        else:
            since = None
    return since


def _address_in_use(ctx: Context) -> Iterator[Finding]:
    for side in ("client", "server"):
        ep = ctx.summary.client if side == "client" else ctx.summary.server
        since = _time_wait_since(ctx, side)
        if since is None:
            continue
        for b in ctx.others:
            if b.kind is CallKind.BIND and b.errno == "EADDRINUSE" and b.start >= since.ts:
                addr = b.sockaddr or b.local
                if addr is None or addr.port != ep.port:
                    continue
                ago = b.start - since.ts
                more: list[Sentence] = []
                retry = next((c for c in ctx.others if c.kind is CallKind.BIND and c.errno is None
                              and c.start > b.start and (c.sockaddr or c.local) is not None
                              and (c.sockaddr or c.local).port == ep.port), None)  # type: ignore[union-attr]
                option = None
                if retry is not None:
                    option = next((c for c in ctx.others if c.kind is CallKind.OPTION and c.pid == retry.pid
                                   and c.fd == retry.fd and b.start < c.start < retry.start
                                   and "SO_REUSEADDR" in c.args), None)
                if retry is not None and option is not None:
                    more.append(_say("f.address-in-use.retry", retry=CallRef(retry, ctx.t0),
                                     option=CallRef(option, ctx.t0)))
                what = _say("f.address-in-use", call=CallRef(b, ctx.t0), port=ep.port, since=Frames((since.frame,)),
                            ago=Ms(ago * 1000), left=Ms(max(TIME_WAIT_S - ago, 0) * 1000), **_sides_args(side))
                yield Finding(FindingKind.ADDRESS_IN_USE, what, _say("f.address-in-use.why"), Basis.TRACE,
                              tuple(more), {"port": ep.port, "side": side, "time_wait_ms": round(ago * 1000, 3),
                                            "left_s": round(max(TIME_WAIT_S - ago, 0), 3),
                                            "reuseaddr_retry": retry is not None and option is not None})


_RULES.append(_address_in_use)


@_rule
def _half_close(ctx: Context) -> Iterator[Finding]:
    v = ctx.view
    fins = sorted((f for f in (v.fin[C2S], v.fin[S2C]) if f is not None), key=lambda f: f.frame)
    if not fins:
        return
    first = fins[0]
    later = [x for x in _first_sent(v) if x.dir is not first.dir and x.length > 0 and x.frame > first.frame]
    if not later:
        return
    side = _dir_side(first.dir)
    n = sum(v.new_bytes.get(x.frame, 0) for x in later)
    what = _say("f.half-close", fin=Frames((first.frame,)), n=n, segs=Frames(tuple(x.frame for x in later)),
                **_sides_args(side))
    yield Finding(FindingKind.HALF_CLOSE, what, _say("f.half-close.why"), ctx.basis,
                  numbers={"side": side, "bytes_after_fin": n})


@_rule
def _accept_late(ctx: Context) -> Iterator[Finding]:
    v = ctx.view
    hs = v.handshake_ack
    for acc in ctx.side_calls("server", CallKind.ACCEPT):
        if acc.inferred or hs is None or not acc.frames or acc.frames[0] != hs.frame:
            continue
        late = accept_queue_delay(acc, ctx.segments)
        if late is None or late * 1000 <= ACCEPT_LATE_MS:
            continue
        acked = [s for s in ctx.segments if s.dir is S2C and s.length == 0 and not s.flags & (SYN | FIN | RST)
                 and s.rel_ack is not None and s.rel_ack > 1 and hs.ts <= s.ts <= acc.start]
        n = max((s.rel_ack or 1) - 1 for s in acked) if acked else 0
        args: dict[str, Arg] = {"ack": Frames((hs.frame,)), "call": CallRef(acc, ctx.t0), "ms": Ms(late * 1000)}
        what = _say("f.accept-late", n=n, acked=Frames(tuple(s.frame for s in acked)), **args) if acked \
            else _say("f.accept-late.noack", **args)
        yield Finding(FindingKind.ACCEPT_LATE, what, _say("f.accept-late.why"), Basis.TRACE,
                      numbers={"queued_ms": round(late * 1000, 3), "acked_bytes": n})


def _syns(ctx: Context) -> list[Segment]:
    """The client's SYNs, copies recorded within 1 ms of the previous one left out."""
    out: list[Segment] = []
    for s in ctx.segments:
        if s.dir is C2S and s.flags & SYN and not s.flags & ACK and (not out or s.ts - out[-1].ts >= 0.001):
            out.append(s)
    return out


@_rule
def _syn_retransmitted(ctx: Context) -> Iterator[Finding]:
    v = ctx.view
    syns = _syns(ctx)
    sa = v.syn_ack[S2C]
    if len(syns) < 2 and (syns or sa is not None):
        if not syns or sa is not None or v.refusing_rst is not None:
            return
    if not syns:
        return
    if sa is None and v.refusing_rst is None:
        if any(s.dir is S2C for s in ctx.segments) or _one_way(ctx) is not None:
            return
        yield Finding(FindingKind.NO_ANSWER, _say("f.no-answer", syns=Frames(tuple(s.frame for s in syns))),
                      _say("f.no-answer.why"), ctx.basis, numbers={"syns": len(syns)})
        return
    before = [s for s in syns if sa is None or s.frame < sa.frame]
    if sa is None or len(before) < 2:
        return
    yield Finding(FindingKind.SYN_RETRANSMITTED,
                  _say("f.syn-retransmitted", count=len(before), syns=Frames(tuple(s.frame for s in before)),
                       synack=Frames((sa.frame,)), ms=Ms((sa.ts - before[0].ts) * 1000)),
                  _say("f.syn-retransmitted.why"), ctx.basis,
                  numbers={"syns": len(before), "ms": round((sa.ts - before[0].ts) * 1000, 3)})


@_rule
def _nagle(ctx: Context) -> Iterator[Finding]:
    """A small segment that left right after the peer's delayed ACK of the previous one."""
    v = ctx.view
    segs = ctx.segments
    data = {id(s) for s in _first_sent(v) if s.length > 0}
    mss = {C2S: _mss(v.first_syn[C2S]), S2C: _mss(v.syn_ack[S2C])}
    stalls: list[tuple[Segment, Segment, Segment, float]] = []  # prev, ack, held, gap
    last_data: dict[Direction, Segment] = {}
    for i, s in enumerate(segs):
        if id(s) not in data:
            continue
        prev = last_data.get(s.dir)
        last_data[s.dir] = s
        if prev is None or prev.length >= mss[s.dir] or i == 0:
            continue
        before = segs[i - 1]
        if before.dir is s.dir or before.length or before.flags & (SYN | FIN | RST) or before.rel_ack is None:
            continue
        if not seq_ge(before.rel_ack, prev.rel_end & MASK):
            continue
        # nothing from the peer acknowledged ``prev`` earlier, and nothing else was sent meanwhile
        if any(x.dir is before.dir and x.rel_ack is not None and seq_ge(x.rel_ack, prev.rel_end & MASK)
               for x in segs if prev.frame < x.frame < before.frame):
            continue
        if any(x.dir is s.dir and x.length for x in segs if prev.frame < x.frame < s.frame):
            continue
        delay = (before.ts - prev.ts) * 1000
        if not DELAYED_ACK_MS[0] <= delay <= DELAYED_ACK_MS[1] or (s.ts - before.ts) * 1000 > 2.0:
            continue
        write = next((c for c in ctx.calls if s.frame in c.frames and c.kind is CallKind.SEND), None)
        if write is not None and not write.inferred and write.start > before.ts:
            continue  # the bytes were written after the ACK came: nothing waited
        stalls.append((prev, before, s, delay))
    if not stalls:
        return
    prev, ack, held, delay = stalls[0]
    side = _dir_side(held.dir)
    write = next((c for c in ctx.calls if held.frame in c.frames and c.kind is CallKind.SEND and not c.inferred), None)
    args: dict[str, Arg] = {"held": Frames((held.frame,)), "ack": Frames((ack.frame,)), "prev": Frames((prev.frame,)),
                            "ms": Ms(delay), "count": len(stalls),
                            "held_all": Frames(tuple(x[2].frame for x in stalls)), **_sides_args(side)}
    what = _say("f.nagle.call", call=CallRef(write, ctx.t0), **args) if write is not None else _say("f.nagle", **args)
    yield Finding(FindingKind.NAGLE_DELAYED_ACK, what, _say("f.nagle.why"),
                  Basis.TRACE if write is not None else Basis.SEGMENTS,
                  numbers={"stalls": len(stalls), "first_ms": round(delay, 3),
                           "total_ms": round(sum(x[3] for x in stalls), 3), "side": side})


def _mss(syn: Segment | None) -> int:
    if syn is None:
        return 536
    mss = syn.options.mss
    return mss if mss else 536


def _flagged(ctx: Context, *names: str) -> list[Segment]:
    """Segments carrying any of these analysis flags (by value: a Segment made by hand
    may carry the plain string)."""
    return [s for s in ctx.segments if any(getattr(a, "value", a) in names for a in s.analysis)]


def _zero_windows(ctx: Context) -> list[tuple[Segment, Segment | None, list[Segment]]]:
    """Each zero-window stretch: the first zero-window segment, the segment from the same
    side that reopened the window (None if the capture ends first), and the peer's probes
    meanwhile -- Linux probes with a segment one byte behind, which Wireshark's rules
    call a keep-alive, so those count as probes here."""
    out: list[tuple[Segment, Segment | None, list[Segment]]] = []
    zeros = _flagged(ctx, Analysis.ZERO_WINDOW.value)
    probing = (Analysis.ZERO_WINDOW_PROBE.value, Analysis.KEEP_ALIVE.value)
    for d in (C2S, S2C):
        zs = [s for s in zeros if s.dir is d]
        while zs:
            first = zs[0]
            update = next((s for s in ctx.segments if s.dir is d and s.frame > first.frame and s.win > 0
                           and not s.flags & RST), None)
            end = update.frame if update is not None else ctx.segments[-1].frame + 1
            probes = [s for s in ctx.segments if s.dir is not d and first.frame < s.frame < end
                      and any(getattr(a, "value", a) in probing for a in s.analysis)]
            out.append((first, update, probes))
            zs = [s for s in zs if s.frame > end]
    return out


@_rule
def _zero_window(ctx: Context) -> Iterator[Finding]:
    for first, update, probes in _zero_windows(ctx):
        side = _dir_side(first.dir)
        base: dict[str, Arg] = {"zero": Frames((first.frame,)), "probes": len(probes),
                                "probe_frames": Frames(tuple(s.frame for s in probes)) if probes else "-",
                                **_sides_args(side)}
        more: list[Sentence] = []
        numbers: dict[str, float | int | str | None] = {"side": side, "probes": len(probes)}
        if update is not None:
            what = _say("f.zero-window", update=Frames((update.frame,)), ms=Ms((update.ts - first.ts) * 1000), **base)
            numbers["ms"] = round((update.ts - first.ts) * 1000, 3)
            reader = next((c for c in reversed(ctx.side_calls(side, CallKind.RECV))
                           if not c.inferred and first.ts <= c.end <= update.ts + 0.002), None)
            if reader is not None:
                more.append(_say("f.zero-window.reader", call=CallRef(reader, ctx.t0), **_sides_args(side)))
        else:
            what = _say("f.zero-window.open", **base)
        yield Finding(FindingKind.ZERO_WINDOW, what, _say("f.zero-window.why"), ctx.basis, tuple(more), numbers)


@_rule
def _window_full(ctx: Context) -> Iterator[Finding]:
    if _flagged(ctx, Analysis.ZERO_WINDOW.value):
        return  # the zero window says more
    full = _flagged(ctx, Analysis.WINDOW_FULL.value)
    if not full:
        return
    side = _dir_side(full[0].dir)
    yield Finding(FindingKind.WINDOW_FULL, _say("f.window-full", full=Frames(tuple(s.frame for s in full)),
                                                **_sides_args(side)),
                  _say("f.window-full.why"), ctx.basis, numbers={"segments": len(full), "side": side})


def _original(ctx: Context, r: Segment) -> Segment | None:
    """The earlier segment that ``r`` sends again: same direction, same sequence number,
    the same kind (data, SYN or FIN)."""
    kind = r.flags & (SYN | FIN)
    return next((s for s in ctx.segments if s.dir is r.dir and s.frame < r.frame and s.rel_seq == r.rel_seq
                 and s.flags & (SYN | FIN) == kind and (s.length > 0) == (r.length > 0)), None)


@_rule
def _retransmissions(ctx: Context) -> Iterator[Finding]:
    # a SYN sent again is the syn-retransmitted rule's; a side's first FIN is never a
    # retransmission, even when Wireshark calls it one (it reused the SYN's number)
    retx = [s for s in _flagged(ctx, Analysis.RETRANSMISSION.value)
            if not (s.flags & SYN and not s.flags & ACK)
            and not (s.flags & FIN and not s.length and _original(ctx, s) is None)]
    dups = _flagged(ctx, Analysis.DUP_ACK.value)
    if not retx:
        if dups:
            yield Finding(FindingKind.DUP_ACK, _say("f.dup-ack", count=len(dups), segs=Frames(tuple(s.frame for s in dups))),
                          _say("f.dup-ack.why"), ctx.basis, numbers={"dup_acks": len(dups)})
        return
    segs = Frames(tuple(s.frame for s in retx))
    originals = {r.frame: _original(ctx, r) for r in retx}
    copies = sum(1 for r in retx if (o := originals[r.frame]) is not None and r.ts - o.ts < 0.001)
    numbers: dict[str, float | int | str | None] = {
        "retransmissions": len(retx), "dup_acks": len(dups), "copies": copies,
        "fast": len(_flagged(ctx, Analysis.FAST_RETRANSMISSION.value))}
    if copies == len(retx):  # not TCP resending: the capture recorded packets twice
        yield Finding(FindingKind.RETRANSMISSION, _say("f.retransmission.copies-only", count=len(retx), segs=segs),
                      _say("f.retransmission.copies.why"), Basis.SEGMENTS, numbers=numbers)
        return
    real = [r for r in retx if (o := originals[r.frame]) is None or r.ts - o.ts >= 0.001]
    first, orig = real[0], originals[real[0].frame]
    more: list[Sentence] = []
    gap = (first.ts - orig.ts) * 1000 if orig is not None else None
    numbers["first_gap_ms"] = None if gap is None else round(gap, 3)
    if Analysis.FAST_RETRANSMISSION in first.analysis:
        before = _dup_run(ctx, first)
        more.append(_say("f.retransmission.fast", dups=len(before), dup_frames=Frames(tuple(d.frame for d in before)),
                         first=Frames((first.frame,))))
    elif orig is not None and gap is not None and gap >= 1.0:
        more.append(_say("f.retransmission.rto", orig=Frames((orig.frame,)), ms=Ms(gap), first=Frames((first.frame,))))
    if copies:
        more.append(_say("f.retransmission.copies", copies=copies))
    what = _say("f.retransmission", count=len(retx), segs=segs, first=Frames((first.frame,)),
                orig=Frames((orig.frame,)), ms=Ms(gap or 0.0)) if orig is not None \
        else _say("f.retransmission.unmatched", count=len(retx), segs=segs, first=Frames((first.frame,)))
    yield Finding(FindingKind.RETRANSMISSION, what, _say("f.retransmission.why"), ctx.basis, tuple(more), numbers)


def _dup_run(ctx: Context, r: Segment) -> list[Segment]:
    """The duplicate ACKs from the peer that came just before ``r`` (back to the peer's
    last segment that was not one)."""
    run: list[Segment] = []
    for s in reversed([s for s in ctx.segments if s.frame < r.frame and s.dir is not r.dir]):
        if Analysis.DUP_ACK not in s.analysis:
            break
        run.append(s)
    return run[::-1]


def _one_way(ctx: Context) -> str | None:
    """The side whose segments alone were captured, when the other side's must have
    been sent (this side acknowledges data from it)."""
    dirs = {s.dir for s in ctx.segments}
    if len(dirs) != 1:
        return None
    d = dirs.pop()
    if any(s.flags & ACK and not s.flags & (SYN | RST) and s.rel_ack is not None and s.rel_ack > 1 for s in ctx.segments):
        return _dir_side(d)
    return None


@_rule
def _missed(ctx: Context) -> Iterator[Finding]:
    one_way = _one_way(ctx)
    if one_way is not None:
        yield Finding(FindingKind.MISSED_SEGMENTS, _say("f.one-way", count=len(ctx.segments), **_sides_args(one_way)),
                      _say("f.one-way.why", **_sides_args(one_way)), Basis.SEGMENTS, numbers={"one_way": one_way})
        return
    lost = _flagged(ctx, Analysis.LOST_SEGMENT.value)
    unseen = _flagged(ctx, Analysis.ACK_UNSEEN.value)
    if not lost and not unseen:
        return
    yield Finding(FindingKind.MISSED_SEGMENTS,
                  _say("f.missed", lost=Frames(tuple(s.frame for s in lost)) if lost else "0",
                       unseen=Frames(tuple(s.frame for s in unseen)) if unseen else "0"),
                  _say("f.missed.why"), Basis.SEGMENTS,
                  numbers={"lost_segment": len(lost), "ack_unseen": len(unseen)})


@_rule
def _mid_stream(ctx: Context) -> Iterator[Finding]:
    v = ctx.view
    if v.first_syn[C2S] is not None or v.syn_ack[S2C] is not None or not ctx.segments:
        return
    if all(s.flags & RST for s in ctx.segments):
        return  # a lone RST: no connection to speak of
    guess = Nested(_say("f.mid-stream.guess")) if ctx.summary.roles_guessed else ""
    yield Finding(FindingKind.MID_STREAM, _say("f.mid-stream", guess=guess), _say("f.mid-stream.why"),
                  Basis.SEGMENTS, numbers={"roles_guessed": ctx.summary.roles_guessed})


#: The analysis flags checksum verification adds (``--verify-checksums``), and the
#: message of each: a checksum that fails, and one the sending host offloaded.
CHECKSUM_FLAGS = {Analysis.BAD_CHECKSUM.value: "f.checksum",
                  Analysis.CHECKSUM_OFFLOADED.value: "f.checksum.offloaded"}


@_rule
def _checksum(ctx: Context) -> Iterator[Finding]:
    for flag, key in CHECKSUM_FLAGS.items():
        segs = _flagged(ctx, flag)
        if segs:
            yield Finding(FindingKind.CHECKSUM,
                          _say(key, count=len(segs), segs=Frames(tuple(s.frame for s in segs))),
                          _say(key + ".why"), Basis.SEGMENTS, numbers={"segments": len(segs), "flag": flag})


@_rule
def _fast_open(ctx: Context) -> Iterator[Finding]:
    v = ctx.view
    syn, sa = v.first_syn[C2S], v.syn_ack[S2C]
    if syn is None:
        return
    if syn.length > 0 and sa is not None:
        if v.fast_open:
            accept = ctx.call_with(syn.frame, CallKind.ACCEPT)
            what = _say("f.fast-open", syn=Frames((syn.frame,)), synack=Frames((sa.frame,)), n=syn.length,
                        ack=sa.ack, call=CallRef(accept, ctx.t0) if accept else "accept()")
        else:
            what = _say("f.fast-open.rejected", syn=Frames((syn.frame,)), synack=Frames((sa.frame,)), n=syn.length)
        yield Finding(FindingKind.FAST_OPEN, what, _say("f.fast-open.why"), ctx.basis,
                      numbers={"syn_bytes": syn.length, "accepted": v.fast_open})
    elif syn.options.tfo_cookie == b"":
        yield Finding(FindingKind.FAST_OPEN, _say("f.fast-open.request", syn=Frames((syn.frame,))),
                      _say("f.fast-open.why"), ctx.basis, numbers={"syn_bytes": 0, "accepted": False})


@_rule
def _keep_alive(ctx: Context) -> Iterator[Finding]:
    probes = {s.frame for _, _, ps in _zero_windows(ctx) for s in ps}
    ka = [s for s in _flagged(ctx, Analysis.KEEP_ALIVE.value) if s.frame not in probes]
    if not ka:
        return
    gaps = [(b.ts - a.ts) for a, b in zip(ka, ka[1:]) if a.dir is b.dir]
    interval = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
    yield Finding(FindingKind.KEEP_ALIVE, _say("f.keep-alive", count=len(ka), segs=Frames(tuple(s.frame for s in ka)),
                                               interval=Ms(interval * 1000)),
                  _say("f.keep-alive.why"), ctx.basis,
                  numbers={"keep_alives": len(ka), "interval_ms": round(interval * 1000, 3)})


@_rule
def _idle(ctx: Context) -> Iterator[Finding]:
    segs = ctx.segments
    waiting = {s.frame for _, _, ps in _zero_windows(ctx) for s in ps}
    # a gap before a retransmission or a window probe is TCP waiting, not the applications idle
    gaps = [(b.ts - a.ts, a, b) for a, b in zip(segs, segs[1:]) if b.ts - a.ts >= IDLE_S
            and not (a.flags | b.flags) & SYN and Analysis.RETRANSMISSION not in b.analysis
            and b.frame not in waiting]
    if not gaps:
        return
    longest = max(gaps, key=lambda g: g[0])
    more = Nested(_say("f.idle.more", count=len(gaps))) if len(gaps) > 1 else ""
    yield Finding(FindingKind.IDLE, _say("f.idle", ms=Ms(longest[0] * 1000), before=Frames((longest[1].frame,)),
                                         after=Frames((longest[2].frame,)), more=more),
                  _say("f.idle.why"), Basis.SEGMENTS,
                  numbers={"longest_ms": round(longest[0] * 1000, 3), "stretches": len(gaps)})


# ======================================================================================
# Entry points
# ======================================================================================


def explain_connection(conn: Connection, *, others: Sequence[Call] = (), kernel: Sequence[Any] = ()) -> Explanation:
    """The story, findings and call timings of one connection.  ``others``: the trace's
    calls on no connection (for a failed bind on this connection's port)."""
    ctx = _context(conn, others, kernel)
    findings = [f for rule in _RULES for f in rule(ctx)]
    return Explanation(ctx.summary, _story(ctx), tuple(findings), ctx.timings, ctx.t0)


@dataclass(frozen=True)
class TraceExplanation:
    """Every connection's explanation, and findings that belong to none of them (a
    bind that failed on a port no captured connection holds)."""

    connections: tuple[Explanation, ...]
    findings: tuple[Finding, ...] = ()

    def lines(self, lang: str = "en") -> list[str]:
        out: list[str] = []
        for e in self.connections:
            out += e.lines(lang) + [""]
        if self.findings:
            out.append(Sentence("head.trace-findings").text(lang))
            out += ["  " + f.text(lang).replace("\n", "\n  ") for f in self.findings]
        return out

    def to_json(self, lang: str = "en") -> list[dict[str, Any]]:
        out = [e.to_json(lang) for e in self.connections]
        out += [dict(type="finding", conn=None, **f.to_json(lang)) for f in self.findings]
        return out


def explain_trace(trace: Trace, *, conn: int | None = None, kernel: Sequence[Any] = ()) -> TraceExplanation:
    """Explain every connection of ``trace`` (or connection ``conn`` only)."""
    others = trace.loose_calls
    chosen = [c for c in trace.connections if conn is None or c.conn == conn]
    if conn is not None and not chosen:
        trace.connection(conn)  # raises NoSuchConnection
    explained = tuple(explain_connection(c, others=others, kernel=kernel) for c in chosen)
    claimed = {id(call) for e in explained for f in e.findings for call in f.calls}
    loose: list[Finding] = []
    if conn is None:
        t0 = min((c.summary.first_ts for c in trace.connections), default=others[0].start if others else 0.0)
        for b in others:
            if b.kind is CallKind.BIND and b.errno == "EADDRINUSE" and id(b) not in claimed:
                port = (b.sockaddr or b.local).port if (b.sockaddr or b.local) else 0  # type: ignore[union-attr]
                loose.append(Finding(FindingKind.ADDRESS_IN_USE,
                                     _say("f.address-in-use.loose", call=CallRef(b, t0), port=port),
                                     _say("f.address-in-use.loose.why"), Basis.TRACE, numbers={"port": port}))
    return TraceExplanation(explained, tuple(loose))

