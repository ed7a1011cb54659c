"""UDP datagrams grouped into flows: UdpPacket records in, Datagram records out.

UDP has no connection to track: no handshake, no acknowledgement, no close, no
state.  What a reader of a capture still wants is which datagrams belong together
and which way each went, so a *flow* is an address pair (both directions, like a
TCP connection's 4-tuple), numbered in order of first appearance.  Its client is
whoever sent first, unless only the sender's port looks like a server's (a capture
that begins with a reply: a DNS answer, say), as the TCP tracker guesses roles when
it saw no SYN.  Sans-IO, like the TCP tracker.
"""

from __future__ import annotations

from dataclasses import dataclass

from handshake_viz.model import Datagram, Direction, Endpoint, FlowSummary, UdpPacket
from handshake_viz.track import LIKELY_SERVER_PORTS

__all__ = ["FlowTracker"]

C2S, S2C = Direction.C2S, Direction.S2C


@dataclass(slots=True)
class _Flow:
    index: int
    client: tuple[str, int]
    server: tuple[str, int]
    first_ts: float
    last_ts: float
    ip_version: int
    datagrams: int = 0
    datagrams_c2s: int = 0
    bytes_c2s: int = 0
    bytes_s2c: int = 0

    def summary(self) -> FlowSummary:
        return FlowSummary(self.index, Endpoint(*self.client), Endpoint(*self.server), self.first_ts,
                           self.last_ts, self.datagrams, self.datagrams_c2s, self.bytes_c2s,
                           self.bytes_s2c, self.ip_version)


def _server_port(port: int) -> bool:
    return port < 1024 or port in LIKELY_SERVER_PORTS


class FlowTracker:
    """Feed it UDP packets in capture order; it returns one Datagram per packet.

    >>> flows = FlowTracker()
    >>> datagrams = [flows.feed(p) for p in udp_packets]     # doctest: +SKIP
    >>> flows.summaries()[0].datagrams                        # doctest: +SKIP
    6
    """

    def __init__(self) -> None:
        self._by_pair: dict[tuple[str, int, str, int], _Flow] = {}
        self._flows: list[_Flow] = []

    def feed(self, p: UdpPacket) -> Datagram:
        return self.feed_fields(p.frame, p.ts, p.src, p.sport, p.dst, p.dport, p.length, p.payload,
                                p.ip_version)

    def feed_fields(self, frame: int, ts: float, src: str, sport: int, dst: str, dport: int,
                    length: int, payload: bytes = b"", ip_version: int = 4) -> Datagram:
        """``feed`` for a datagram given as UdpPacket's fields, in order (what
        ``CaptureReader.records(..., make_udp=...)`` calls)."""
        flow = self._by_pair.get((src, sport, dst, dport))
        if flow is None:
            a, b = (src, sport), (dst, dport)
            reply_first = _server_port(sport) and not _server_port(dport)
            client, server = (b, a) if reply_first else (a, b)
            flow = _Flow(len(self._flows), client, server, ts, ts, ip_version)
            self._flows.append(flow)
            self._by_pair[(src, sport, dst, dport)] = self._by_pair[(dst, dport, src, sport)] = flow
        c2s = (src, sport) == flow.client
        flow.datagrams += 1
        flow.last_ts = ts
        if c2s:
            flow.datagrams_c2s += 1
            flow.bytes_c2s += length
        else:
            flow.bytes_s2c += length
        return Datagram(frame, ts, src, sport, dst, dport, length, payload, ip_version,
                        flow=flow.index, dir=C2S if c2s else S2C)

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    def summary(self, flow: int) -> FlowSummary:
        return self._flows[flow].summary()

    def summaries(self) -> list[FlowSummary]:
        """One summary per flow so far, in flow-number order."""
        return [f.summary() for f in self._flows]
