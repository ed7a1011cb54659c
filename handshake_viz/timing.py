"""How long each socket call took, and what it was waiting for.

Pure functions (sans-IO): a connection's segments and its aligned (or inferred)
calls in, one :class:`CallTiming` per call out.  The text ladder, the JSONL call
lines (``"waited_for"``, ``"blocked_ms"``), ``hsviz explain`` and the diagram's
call labels all read these records.

What a call waits for follows from what it is, and the alignment rules
(``align``) say which segment released it:

==============  ==============================================================
call            waits for
==============  ==============================================================
connect()       the SYN-ACK: one round trip (``rst`` when refused; ``nothing``
                when non-blocking, EINPROGRESS)
accept()        a completed connection in the listener's queue; ``queued_ms``
                is how long that connection had been waiting for the call
read()/recv()   the peer's data (``data``), its FIN (``fin``: returns 0) or
                its RST (``rst``: ECONNRESET); ``queued_ms`` is how long the
                bytes had waited in the receive buffer when it was called
write()/send()  room in the socket's send buffer (``buffer-space``): it returns
                once its bytes are copied there, which says nothing about the
                peer having received them
poll/select     the segment that made the socket ready (``ready``)
close() etc.    ``nothing``: close() returns at once, the FIN goes later
==============  ==============================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from handshake_viz.model import Call, CallKind, Segment, Word

__all__ = ["CallTiming", "Wait", "call_timing", "call_timings"]


class Wait(Word):
    """What a call was blocked on (the JSONL ``"waited_for"`` values)."""

    SYN_ACK = "syn-ack"
    RST = "rst"
    CONNECTION = "connection"  # accept(): a connection whose handshake completed
    DATA = "data"
    FIN = "fin"
    BUFFER_SPACE = "buffer-space"
    READY = "ready"
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class CallTiming:
    """One call's timing.

    ``blocked_ms``: from the call to its return (None while it was still blocked when
    tracing stopped).  ``released_by``: the frame whose arrival let it return (connect's
    SYN-ACK or RST, accept's handshake ACK, a read's last data segment or the FIN/RST),
    None when nothing from the network released it.  ``queued_ms``: how long that frame
    had already been waiting when the call was made (a late accept(), or a read of
    bytes that had arrived earlier); None when it arrived during the call.
    """

    call: Call
    waited_for: Wait
    blocked_ms: float | None
    released_by: int | None = None
    queued_ms: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "waited_for": self.waited_for.value,
            "blocked_ms": None if self.blocked_ms is None else round(self.blocked_ms, 3),
            "released_by": self.released_by,
            "queued_ms": None if self.queued_ms is None else round(self.queued_ms, 3),
        }


# A frame that arrived less than this before the call started still counts as having
# arrived during it (strace's clock and the capture's disagree by about a millisecond).
_SLACK_MS = 1.0


def _waits_for(call: Call) -> Wait:
    kind = call.kind
    if kind is CallKind.CONNECT or call.fast_open:
        if call.errno == "EINPROGRESS":
            return Wait.NOTHING
        return Wait.RST if call.errno == "ECONNREFUSED" else Wait.SYN_ACK
    if kind is CallKind.ACCEPT:
        return Wait.CONNECTION
    if kind is CallKind.RECV:
        if call.errno in ("ECONNRESET", "EPIPE"):
            return Wait.RST
        if call.errno in ("EAGAIN", "EWOULDBLOCK"):
            return Wait.NOTHING
        return Wait.FIN if call.ret == 0 and call.errno is None else Wait.DATA
    if kind is CallKind.SEND:
        return Wait.BUFFER_SPACE
    if kind is CallKind.WAIT:
        return Wait.READY
    return Wait.NOTHING


def call_timing(call: Call, by_frame: dict[int, Segment]) -> CallTiming:
    """The timing of one call; ``by_frame`` maps frame numbers to the segments of the
    call's connection."""
    wait = _waits_for(call)
    finished = call.ret is not None or call.errno is not None or call.inferred
    blocked = (call.end - call.start) * 1000.0 if finished else None
    released: int | None = None
    if wait in (Wait.SYN_ACK, Wait.RST, Wait.CONNECTION, Wait.DATA, Wait.FIN, Wait.READY) and call.frames:
        if call.kind is CallKind.ACCEPT:
            released = call.frames[0]
        elif call.kind is CallKind.CONNECT or call.fast_open:
            released = call.frames[-1] if len(call.frames) > 1 else None
        else:
            released = call.frames[-1]
    queued: float | None = None
    if released is not None and released in by_frame and not call.inferred:
        ahead = (call.start - by_frame[released].ts) * 1000.0
        if ahead > _SLACK_MS:
            queued = ahead
    return CallTiming(call, wait, blocked, released, queued)


def call_timings(calls: Iterable[Call], segments: Sequence[Segment]) -> tuple[CallTiming, ...]:
    """One timing per call, in the calls' order."""
    by_frame = {s.frame: s for s in segments}
    return tuple(call_timing(c, by_frame) for c in calls)
