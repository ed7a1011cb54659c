"""One way through the stages: a capture (file, live, replay) becomes a :class:`Trace`.

::

    frames --decode--> Packet / UdpPacket --track--> Segment / Datagram --+
    strace log, calls.jsonl --trace--> Call --align (else infer)----------+--> Trace

Every view reads a Trace: the text ladder and JSONL (``report``), the diagram
(``layout`` then ``draw``), the notebook.  No other module chains decode, track and
align.  (Skeleton: the builder lands with the rest of the redesign.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from handshake_viz.model import Call, ConnectionSummary, Datagram, FlowSummary, Segment

__all__ = ["Connection", "Flow", "Trace"]


@dataclass(frozen=True)
class Connection:
    """One TCP connection of a trace: its summary, labelled segments and socket calls
    (traced when a call log was given, else inferred and marked so; never a mixture)."""

    summary: ConnectionSummary
    segments: tuple[Segment, ...]
    calls: tuple[Call, ...] = ()

    @property
    def conn(self) -> int:
        return self.summary.conn

    @property
    def calls_inferred(self) -> bool:
        """True when the calls were reconstructed from the segments, not traced."""
        return bool(self.calls) and all(c.inferred for c in self.calls)


@dataclass(frozen=True)
class Flow:
    """One UDP flow of a trace: its summary, datagrams and socket calls."""

    summary: FlowSummary
    datagrams: tuple[Datagram, ...]
    calls: tuple[Call, ...] = ()

    @property
    def flow(self) -> int:
        return self.summary.flow

    @property
    def calls_inferred(self) -> bool:
        return bool(self.calls) and all(c.inferred for c in self.calls)


@dataclass(frozen=True)
class Trace:
    """A whole capture: TCP connections, UDP flows, every socket call, and what
    decoding noticed.  ``calls`` holds all calls, those on no connection too."""

    path: Path | None
    connections: tuple[Connection, ...]
    flows: tuple[Flow, ...] = ()
    calls: tuple[Call, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    calls_path: Path | None = None
