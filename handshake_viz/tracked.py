"""What the tracker remembers of one connection: a :class:`TrackedConn` and its two
:class:`TrackedFlow` (one per direction), plain records.

``track.Tracker`` decides what goes in them, ``spill`` packs a finished one into
bytes and back, and both make the connection's summary through here.  Nothing in
this module decides anything: the RFC 9293 states come from ``tcpstate``, the
sequence analysis fields are ``seqanalysis.SeqFlow``'s, the Zeek records
``zeek``'s.
"""

from __future__ import annotations

from handshake_viz.model import (
    ConnectionSummary, Direction, Endpoint, TcpState, ZeekConnection, fast_constructor,
)
from .seqanalysis import SeqFlow
from .seqnum import UNSET
from .zeek import ZeekEndpoint, ZeekView

__all__ = ["SummaryFields", "TrackedConn", "TrackedFlow", "summary_of"]


class TrackedFlow(SeqFlow):
    """What one direction of one connection has shown so far (besides the sequence
    analysis fields it inherits).

    A flow belongs to the endpoint that sends in its direction: ``state`` is that
    endpoint's RFC 9293 state and ``zeek`` its Zeek endpoint record.  ``peer`` is the
    other direction of the same connection, so the hot path reaches everything it
    needs from the flow it looked up, without enum-keyed dictionaries.
    """

    __slots__ = ("dir", "state", "conn", "peer", "zeek", "base", "syn_seq", "fin_end",
                 "fin_acked", "syn_acked", "highest_ack", "data_end", "ready")

    def __init__(self, dir: Direction, state: TcpState, conn: TrackedConn, zeek: ZeekEndpoint) -> None:
        SeqFlow.__init__(self)
        self.dir = dir
        self.state = state
        self.conn = conn
        self.peer: TrackedFlow = None  # type: ignore[assignment]  # (set by TrackedConn)
        self.zeek = zeek
        # (UNSET: none yet)
        self.base = UNSET  # ISN (seq of SYN) or first seq - 1
        self.syn_seq = UNSET  # raw seq of the SYN sent this way
        self.fin_end = UNSET  # raw seq just past the FIN sent this way
        self.fin_acked = False
        self.syn_acked = False
        self.highest_ack = UNSET  # highest ack number sent this way
        self.data_end = 0  # highest relative end of payload (sequence space, excl. SYN/FIN)
        # The conditions of Tracker._steady that only the general path can change, as of
        # the last segment it took either way (see track._ready).
        self.ready = False


class TrackedConn:
    """One connection: its number, its endpoints, its two flows and its Zeek view.

    ``last_*`` is the previous segment either way (``last_flow`` its direction, None
    before the first; its time is ``last_ts``): what a duplicate copy repeats (``track``).
    """

    __slots__ = (
        "index", "client", "server", "roles_guessed", "c2s", "s2c", "first_ts", "last_ts",
        "segments", "zeek", "syn_time", "first_rtt", "ip_version", "closed", "handshake_acked",
        "queued", "last_flow", "last_seq", "last_ack", "last_flags", "last_win", "last_length",
        "last_payload", "last_options", "last_ip_id",
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
        self.c2s = c2s = TrackedFlow(Direction.C2S, client_state, self, zeek.ends[True])
        self.s2c = s2c = TrackedFlow(Direction.S2C, server_state, self, zeek.ends[False])
        c2s.peer, s2c.peer = s2c, c2s
        self.syn_time: float | None = None
        self.first_rtt: float | None = None
        self.ip_version = ip_version
        self.closed = False  # a FIN was acked both ways, or a RST was seen
        self.handshake_acked = False
        self.queued = False  # in the tracker's queue of finished connections
        self.last_flow: TrackedFlow | None = None
        self.last_seq = self.last_ack = self.last_flags = self.last_win = self.last_length = 0
        self.last_payload = self.last_options = b""
        self.last_ip_id = 0

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
                c2s.data_end, s2c.data_end, first[2], first[3], c2s.state._value_,
                s2c.state._value_, self.roles_guessed, self.ip_version)

    def zeek_connections(self) -> list[ZeekConnection]:
        """The Zeek connections of this stream, in the order they started."""
        out = []
        client, server = Endpoint(*self.client), Endpoint(*self.server)
        for ts, orig_is_client, state, history, ob, rb, op, rp, missed in self.zeek.all_rows():
            orig, resp = (client, server) if orig_is_client else (server, client)
            out.append(ZeekConnection(self.index, ts, orig, resp, state, history, ob, rb, op, rp, missed))
        return out


SummaryFields = tuple[int, str, int, str, int, float, float, int, int, int, str, str, str, str,
                      bool, int]
"""conn, client ip, port, server ip, port, first_ts, last_ts, segments, bytes_c2s,
bytes_s2c, conn_state, history, client_state, server_state, roles_guessed, ip_version"""


# (model.fast_constructor: a frozen dataclass's own __init__ would cost more than the rest
# of a summary; hsviz analyze makes one per connection)
_summary = fast_constructor(ConnectionSummary, (
    1, Endpoint("10.0.0.1", 2), Endpoint("::1", 3), 4.5, 5.5, 6, 7, 8, "SF", "ShADadFf",
    TcpState.TIME_WAIT, TcpState.CLOSED, False, 4))
_endpoint = fast_constructor(Endpoint, ("10.0.0.1", 2))
_STATES = {s.value: s for s in TcpState}


def summary_of(f: SummaryFields) -> ConnectionSummary:
    """The ConnectionSummary of ``TrackedConn.summary_fields()``'s values."""
    return _summary(  # type: ignore[no-any-return]
        f[0], _endpoint(f[1], f[2]), _endpoint(f[3], f[4]), f[5], f[6], f[7], f[8], f[9], f[10],
        f[11], _STATES[f[12]], _STATES[f[13]], f[14], f[15],
    )
