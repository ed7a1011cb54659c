"""States only hindsight knows: rules applied once a connection's answer is seen.

The tracker (``track``, its state moves in ``tcpstate``) labels each segment with both
sides' RFC 9293 states *as known after that segment*: it must answer before the next
one arrives.  At a client's first SYN it cannot know whether anybody listens, and
assumes the server does (``LISTEN``, ``tcpstate.initial_states``).  The answer
settles it:

* RFC 9293 §3.10.7.1 (SEGMENT ARRIVES, state CLOSED): "An incoming segment not
  containing a RST causes a RST to be sent in response."  A SYN answered by a RST
  before any SYN-ACK found the port CLOSED: nobody listened, so the responder was
  ``CLOSED`` all along, not ``LISTEN``.

These rules run where whole connections are known, so that every view that reads
them tells the same story: the pipeline's Trace (the diagram, explain, the
notebook, ``analyze`` with a call log) and the text ladder (which ``analyze``
keeps per connection anyway; :class:`Settler` holds only the unanswered SYNs).
The streaming JSON Lines (``analyze --jsonl`` without a call log) keep the
states as known after each segment, and say so in the README's schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from handshake_viz.model import Direction, Flag, Segment, TcpState

__all__ = ["Settler", "refusing_rst", "settle"]


def _opening_syn(seg: Segment) -> bool:
    return seg.dir is Direction.C2S and bool(seg.flags & Flag.SYN) and not seg.flags & Flag.ACK


def _refusal(seg: Segment) -> bool:
    return seg.dir is Direction.S2C and bool(seg.flags & Flag.RST)


def refusing_rst(segments: Iterable[Segment]) -> Segment | None:
    """The server's RST that answered the client's SYN before any SYN-ACK (Zeek's
    ``REJ``: nobody listened), or None."""
    syn = False
    for s in segments:
        if s.dir is Direction.S2C and s.flags & Flag.SYN:
            return None  # answered by a SYN-ACK: somebody listened
        if _opening_syn(s):
            syn = True
        elif _refusal(s):
            return s if syn else None
    return None


def settle(segments: Sequence[Segment]) -> Sequence[Segment]:
    """One connection's segments (capture order) with what hindsight knows applied:
    a refused SYN's responder was CLOSED, not LISTEN (RFC 9293 §3.10.7.1).  Returns
    ``segments`` itself when nothing changes (every connection but a refused one)."""
    rst = refusing_rst(segments)
    if rst is None:
        return segments
    out = list(segments)
    for i, s in enumerate(out):
        if s is rst:
            break
        if s.server_state is TcpState.LISTEN:
            out[i] = dataclasses.replace(s, server_state=TcpState.CLOSED)
    return out


class Settler:
    """:func:`settle` for segments that arrive one at a time (the text ladder).

    A connection whose segments so far are only the client's SYNs is held back
    until its answer: a RST releases them settled, anything else as they were.
    Every other segment passes at once, so memory holds only unanswered SYNs.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._held: dict[int, list[Segment]] = {}

    def feed(self, seg: Segment) -> Sequence[Segment]:
        """The segments that are final now, in order (``[]`` while ``seg`` is held)."""
        held = self._held.get(seg.conn)
        if held is None:
            if seg.conn not in self._seen and _opening_syn(seg):
                self._seen.add(seg.conn)
                self._held[seg.conn] = [seg]
                return ()
            self._seen.add(seg.conn)
            return (seg,)
        held.append(seg)
        if _opening_syn(seg):
            return ()  # a retransmitted SYN: still unanswered
        del self._held[seg.conn]
        return settle(held)

    def release(self, conn: int) -> Sequence[Segment]:
        """What is still held of ``conn`` (SYNs never answered), as it is."""
        return self._held.pop(conn, [])
