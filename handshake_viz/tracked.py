"""What the tracker remembers of one connection: a :class:`TrackedConn` and its two
:class:`TrackedFlow` (one per direction), plain records.

``track.Tracker`` decides what goes in them, ``spill`` packs a finished one into
bytes and back, and both make the connection's summary through here.  Nothing in
this module decides anything: the RFC 9293 states come from ``tcpstate``, the
sequence analysis fields are ``seqanalysis.SeqFlow``'s, the Zeek records
``zeek``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from handshake_viz.model import ConnectionSummary, Direction, Endpoint, TcpState, ZeekConnection
from handshake_viz.seqanalysis import SeqFlow
from handshake_viz.zeek import ZeekEndpoint, ZeekView

__all__ = ["SummaryFields", "TrackedConn", "TrackedFlow", "summary_of"]


@dataclass(slots=True, eq=False)
class TrackedFlow(SeqFlow):
    """What one direction of one connection has shown so far (besides the sequence
    analysis fields it inherits).

    A flow belongs to the endpoint that sends in its direction: ``state`` is that
    endpoint's RFC 9293 state and ``zeek`` its Zeek endpoint record.  ``peer`` is the
    other direction of the same connection, so the hot path reaches everything it
    needs from the flow it looked up, without enum-keyed dictionaries.
    """

    dir: Direction = Direction.C2S
    state: TcpState = TcpState.CLOSED
    conn: TrackedConn = field(default=None, repr=False)  # type: ignore[assignment]
    peer: TrackedFlow = field(default=None, repr=False)  # type: ignore[assignment]
    zeek: ZeekEndpoint = field(default=None, repr=False)  # type: ignore[assignment]
    base: int | None = None  # ISN (seq of SYN) or first seq - 1
    syn_seq: int | None = None  # raw seq of the SYN sent this way
    fin_end: int | None = None  # raw seq just past the FIN sent this way
    fin_acked: bool = False
    syn_acked: bool = False
    highest_ack: int | None = None  # highest ack number sent this way
    data_end: int = 0  # highest relative end of payload (sequence space, excl. SYN/FIN)
    # The conditions of Tracker._steady that only the general path can change, as of
    # the last segment it took either way (see track._ready).
    ready: bool = False


class TrackedConn:
    """One connection: its number, its endpoints, its two flows and its Zeek view."""

    __slots__ = (
        "index", "client", "server", "roles_guessed", "c2s", "s2c", "first_ts", "last_ts",
        "segments", "zeek", "syn_time", "first_rtt", "ip_version", "closed", "handshake_acked",
        "queued", "last",
    )

    def __init__(
        self, index: int, client: tuple[str, int], server: tuple[str, int], roles_guessed: bool,
        states: tuple[TcpState, TcpState], zeek: ZeekView, first_ts: float, ip_version: int,
    ) -> None:
        self.index = index
        self.client, self.server = client, server
        self.roles_guessed = roles_guessed
        self.first_ts = self.last_ts = first_ts
        self.segments = 0
        self.zeek = zeek
        client_state, server_state = states
        self.c2s = c2s = TrackedFlow(dir=Direction.C2S, state=client_state, conn=self,
                                     zeek=zeek.ends[True])
        self.s2c = TrackedFlow(dir=Direction.S2C, state=server_state, conn=self, peer=c2s,
                               zeek=zeek.ends[False])
        c2s.peer = self.s2c
        self.syn_time: float | None = None
        self.first_rtt: float | None = None
        self.ip_version = ip_version
        self.closed = False  # a FIN was acked both ways, or a RST was seen
        self.handshake_acked = False
        self.queued = False  # in the tracker's queue of finished connections
        # The previous segment either way, as (flow, seq, ack, flags, win, length,
        # payload, raw_options, ip_id, ts): what a duplicate copy repeats.
        self.last: LastSegment | None = None

    def summary(self) -> ConnectionSummary:
        return summary_of(self.summary_fields())

    def summary_fields(self) -> SummaryFields:
        """The summary as plain values (what ``spill.pack`` stores, and ``summary_of``
        makes a ConnectionSummary of)."""
        c2s, s2c = self.c2s, self.s2c
        zeek = self.zeek
        # Zeek's first connection of the stream (usually its only one)
        first = zeek.rows[0] if zeek.rows else zeek.row()
        (cip, cport), (sip, sport) = self.client, self.server
        return (self.index, cip, cport, sip, sport, self.first_ts, self.last_ts, self.segments,
                c2s.data_end, s2c.data_end, first[2], first[3], c2s.state.value, s2c.state.value,
                self.roles_guessed, self.ip_version)

    def zeek_connections(self) -> list[ZeekConnection]:
        """The Zeek connections of this stream, in the order they started."""
        out = []
        client, server = Endpoint(*self.client), Endpoint(*self.server)
        for ts, orig_is_client, state, history, ob, rb, op, rp, missed in self.zeek.all_rows():
            orig, resp = (client, server) if orig_is_client else (server, client)
            out.append(ZeekConnection(self.index, ts, orig, resp, state, history, ob, rb, op, rp, missed))
        return out


LastSegment = tuple["TrackedFlow", int, int, int, int, int, bytes, bytes, int, float]

SummaryFields = tuple[int, str, int, str, int, float, float, int, int, int, str, str, str, str,
                      bool, int]
"""conn, client ip, port, server ip, port, first_ts, last_ts, segments, bytes_c2s,
bytes_s2c, conn_state, history, client_state, server_state, roles_guessed, ip_version"""


def summary_of(f: SummaryFields) -> ConnectionSummary:
    """The ConnectionSummary of ``TrackedConn.summary_fields()``'s values."""
    return ConnectionSummary(
        f[0], Endpoint(f[1], f[2]), Endpoint(f[3], f[4]), f[5], f[6], f[7], f[8], f[9], f[10],
        f[11], TcpState(f[12]), TcpState(f[13]), f[14], f[15],
    )
