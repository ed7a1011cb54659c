"""Zeek's view of a TCP connection, kept beside hsviz's own so that summaries can be
checked against Zeek's conn.log letter for letter: its endpoint states, its
``history`` letters (with its own originator/responder roles, which it may flip:
``^``) and its ``conn_state()``.  Sans-IO, like the tracker that feeds it.

Zeek's connections are not Wireshark's streams (what a ``Tracker`` numbers).  On one
4-tuple Zeek ends a connection and starts the next one on its own terms
(zeek/zeek ``src/packet_analysis/protocol/tcp/TCPSessionAdapter.cc``): a SYN after
either side closed or reset (``IsReuse``), a SYN-ACK whose sequence number is not the
responder's while the originator is silent, and three timers measured on packet time
-- ``tcp_attempt_delay`` (5 s: an originator whose SYN got no answer is dropped),
``tcp_close_delay`` (5 s after the last packet of a closed or reset connection) and
``tcp_inactivity_timeout`` (5 min without a packet).  A :class:`ZeekView` follows one
stream and keeps each Zeek connection that ended inside it as a :data:`ZeekRow`.

A segment whose TCP checksum is known to be bad (``feed(..., bad_checksum=True)``)
is what Zeek without ``-C`` sees and drops: a ``C`` in the history (scaled like
``T``), no packet counted, no state moved.
"""

from __future__ import annotations

import enum
import re
from .seqnum import ACK, FIN, HALF, MASK, RST, SYN, UNSET
from .seqnum import members as _members
from .seqnum import seq_gt as _seq_gt

__all__ = [
    "ATTEMPT_DELAY", "CLOSE_DELAY", "EndpointState", "INACTIVITY_TIMEOUT", "ZEEK_PORTS",
    "ZeekEndpoint", "ZeekRow", "ZeekView",
]

#: Zeek's timers (base/init-bare.zeek defaults), in seconds of packet time.
ATTEMPT_DELAY = 5.0  # tcp_attempt_delay
CLOSE_DELAY = 5.0  # tcp_close_delay
INACTIVITY_TIMEOUT = 300.0  # tcp_inactivity_timeout

#: The ports Zeek's analyzer scripts register (``Analyzer::register_for_ports``), by
#: the script's protocol name: with ``zeek -b`` only the loaded scripts' ports count
#: as "likely server ports" in Zeek's role guess (``TCPAnalyzer::WantConnection``).
ZEEK_PORTS: dict[str, frozenset[int]] = {
    "conn": frozenset(),
    "ftp": frozenset({21, 2811}),
    "http": frozenset({80, 81, 631, 1080, 3128, 8000, 8080, 8888}),
    "irc": frozenset({6666, 6667, 6668, 6669}),
    "modbus": frozenset({502}),
    "pop3": frozenset({110}),
    "redis": frozenset({6379}),
    "ssh": frozenset({22}),
    "ssl": frozenset({443, 563, 585, 614, 636, 989, 990, 992, 993, 995, 5223}),
}

ZeekRow = tuple[float, bool, str, str, int, int, int, int, int]
"""One Zeek connection as its conn.log row: ts (its first packet), whether the
stream's client is Zeek's originator, conn_state, history, orig_bytes, resp_bytes,
orig_pkts, resp_pkts, missed_bytes (the responder's and originator's added)."""


class _Z(enum.IntEnum):
    """Zeek's TCP endpoint states (analyzer::tcp::EndpointState)."""

    INACTIVE = 0
    SYN_SENT = 1
    SYN_ACK_SENT = 2
    PARTIAL = 3
    ESTABLISHED = 4
    CLOSED = 5
    RESET = 6


Z = _members(_Z)
# Each by itself too (the per-segment code below compares states a dozen times a segment;
# a plain global is cheaper than a class attribute, and a C pointer compiled).
Z_INACTIVE, Z_SYN_SENT, Z_SYN_ACK_SENT, Z_PARTIAL, Z_ESTABLISHED, Z_CLOSED, Z_RESET = _Z
_TOO_LARGE = 1048576  # Zeek's TOO_LARGE_SEQ_DELTA

_RSTOS0 = re.compile(r"\^?S[^HAFGIQ]*R.*")


class ZeekEndpoint:
    """One endpoint of Zeek's view (analyzer::tcp::TCP_Endpoint, what of it is used)."""

    __slots__ = ("state", "prev_state", "start_seq", "seen", "last_syn", "last_fin", "last_rst",
                 "last_seq", "rxmits", "gaps", "zero_windows", "contig", "blocks", "missed",
                 "wraps", "ack_beyond", "fins", "pkts", "bad_checksums", "did_close")

    def __init__(self) -> None:
        self.state = Z_INACTIVE
        self.prev_state = Z_INACTIVE
        self.start_seq: int | None = None
        self.seen = ""  # the history letters recorded for this endpoint (a str: smaller than a set)
        self.last_syn: int | None = None
        self.last_fin: int | None = None
        self.last_rst: int | None = None
        self.last_seq = UNSET  # one past the highest sequence sent
        self.rxmits = 0
        self.gaps = 0
        self.zero_windows = 0
        self.contig = UNSET  # captured payload is contiguous up to here (raw seq)
        self.blocks: tuple[tuple[int, int], ...] = ()  # captured payload beyond a hole: (seq, end)
        self.missed = 0
        self.wraps = 0  # times last_seq wrapped past 2**32 (Zeek's seq_wraps)
        self.ack_beyond = 0  # the peer's highest ACK beyond last_seq, as last_seq's offset
        self.fins = 0  # FINs sent (Zeek's FIN_cnt)
        self.pkts = 0  # packets counted (conn.log's orig_pkts / resp_pkts)
        self.bad_checksums = 0
        self.did_close = False

    def set_state(self, state: _Z) -> None:
        self.prev_state = self.state
        self.state = state

    def reset(self) -> None:
        """Forget everything: the endpoint of a new Zeek connection."""
        ZeekEndpoint.__init__(self)

    def size(self) -> int:
        """Zeek's ``TCP_Endpoint::Size()``: the sequence space sent (or acknowledged by
        the peer, if further), in 64 bits, less the SYN and any FIN."""
        if self.start_seq is None or self.last_seq == UNSET:
            return 0
        size = self.last_seq + (self.wraps << 32) + self.ack_beyond - self.start_seq
        if size:
            size -= 1
        if self.fins and size:
            size -= 1
        return size


_MAX_BLOCKS = 64  # out-of-order blocks kept per endpoint (more: treated as never captured)


def _merge(contig: int, blocks: tuple[tuple[int, int], ...]) -> tuple[int, tuple[tuple[int, int], ...]]:
    """``contig`` advanced over every block that now touches it; the blocks left."""
    moved = True
    while moved:
        moved = False
        rest = []
        for start, stop in blocks:
            if not _seq_gt(start, contig):
                if _seq_gt(stop, contig):
                    contig = stop
                moved = True
            else:
                rest.append((start, stop))
        blocks = tuple(rest)
    return contig, blocks


def _flip_by_ports(flags: int, sport: int, dport: int, likely: frozenset[int]) -> bool:
    """Zeek's role guess for a connection whose first packet is not a plain SYN
    (``TCPAnalyzer::WantConnection``): flip when only the source port is a likely
    server's, or both are and this is not a SYN-ACK and the source port is lower."""
    if flags & SYN and not flags & ACK:
        return False
    if sport not in likely:
        return False
    if dport in likely:
        return not flags & SYN and sport < dport
    return True


class ZeekView:
    """Zeek's conn.log view of one connection (its orig/resp may be flipped vs ours).

    Follows Zeek's TCPSessionAdapter: history letters are recorded once per kind and
    direction (upper case for the originator), retransmissions, gaps and zero windows
    on an exponential scale (1, 10, 100, …), and '^' whenever the roles flip.
    """

    __slots__ = ("orig_is_client", "history", "ends", "likely", "first_ts", "last_ts",
                 "syn_ts", "closed", "h_first", "rows")

    def __init__(self, first_is_client: bool, flags: int, sport: int, dport: int, ts: float,
                 likely: frozenset[int]) -> None:
        """Zeek's view of a stream whose first packet (header ``flags``, ports, time) was
        sent by the client or not."""
        self.likely = likely
        # indexed by "is client": ends[False] is the server's, ends[True] the client's
        self.ends = (ZeekEndpoint(), ZeekEndpoint())
        self.rows: list[ZeekRow] = []  # the Zeek connections of this stream that ended
        self._start(first_is_client, flags, sport, dport, ts)

    def _start(self, first_is_client: bool, flags: int, sport: int, dport: int, ts: float) -> None:
        """A new Zeek connection, with the packet of these fields its first.  Zeek makes
        the sender of the first packet the originator, unless the ports say otherwise."""
        flip = _flip_by_ports(flags, sport, dport, self.likely)
        self.orig_is_client = first_is_client != flip
        self.history = "^" if flip else ""
        self.first_ts = self.last_ts = ts
        self.syn_ts: float | None = None  # an originator's SYN or SYN-ACK: the attempt timer
        self.closed = False  # a close Zeek reports as complete: the close timer runs
        # The originator's first packet was a SYN-ACK (a stealth scan looks like that,
        # or a capture that missed the SYN): see _feed's flip.
        self.h_first = bool(flags & SYN and flags & ACK) and not flip

    def _end(self) -> None:
        """The current Zeek connection is over: keep its row, start afresh."""
        self.rows.append(self.row())
        for end in self.ends:
            end.reset()

    def row(self) -> ZeekRow:
        """The current Zeek connection's conn.log row."""
        o, r = self.ends[self.orig_is_client], self.ends[not self.orig_is_client]
        ob, rb = o.size(), r.size()
        return (self.first_ts, self.orig_is_client, self.conn_state(ob, rb), self.history, ob, rb,
                o.pkts, r.pkts, o.missed + r.missed)

    def all_rows(self) -> list[ZeekRow]:
        """Every Zeek connection of the stream so far, the current one last."""
        return [*self.rows, self.row()]

    def _gone(self, flags: int, seq: int, ts: float) -> bool:
        """Whether Zeek would have removed the current connection before the packet of
        these fields, or takes it as the start of a new one on the same 4-tuple."""
        o, r = self.ends[self.orig_is_client], self.ends[not self.orig_is_client]
        if o.state is Z_INACTIVE and r.state is Z_INACTIVE and not (o.bad_checksums or r.bad_checksums):
            return False  # nothing yet
        if ts - self.last_ts > INACTIVITY_TIMEOUT:
            return True
        if self.closed and ts - self.last_ts > CLOSE_DELAY:
            return True
        if (self.syn_ts is not None and ts - self.syn_ts > ATTEMPT_DELAY
                and (o.state is Z_SYN_SENT or o.state is Z_SYN_ACK_SENT) and r.state is Z_INACTIVE):
            return True
        if flags & SYN:  # IsReuse
            if not flags & ACK:
                return o.did_close or r.did_close
            if o.state is Z_INACTIVE:  # a SYN-ACK on a half connection
                return o.did_close or r.did_close or seq != r.start_seq
        return False

    def _letter(self, is_client: bool, code: str) -> None:
        self.history += code if is_client == self.orig_is_client else code.lower()

    def _check(self, is_client: bool, code: str) -> bool:
        """Record ``code`` the first time; True if it had been seen before."""
        end = self.ends[is_client]
        if code in end.seen:
            return True
        end.seen += code
        self._letter(is_client, code)
        return False

    def _scaled(self, is_client: bool, code: str, count: int) -> None:
        if count in (1, 10, 100, 1000, 10000, 100000, 1000000):
            self._letter(is_client, code)

    def _flip(self) -> None:
        self.orig_is_client = not self.orig_is_client
        self.history += "^"

    def feed(self, from_client: bool, flags: int, seq: int, ack: int, length: int, captured: int,
             win: int, ts: float, sport: int, dport: int, bad_checksum: bool = False) -> None:
        """One packet, by its fields (``captured``: how many payload bytes the capture
        holds of ``length``); ``bad_checksum``: one Zeek without -C drops."""
        if self._gone(flags, seq, ts):
            self._end()
            self._start(from_client, flags, sport, dport, ts)
        end, peer = self.ends[from_client], self.ends[not from_client]
        if bad_checksum:  # dropped before TCP sees it (TCPAnalyzer: "bad checksum")
            end.bad_checksums += 1
            self._scaled(from_client, "C", end.bad_checksums)
            return
        end.pkts += 1
        o, r = self.ends[self.orig_is_client], self.ends[not self.orig_is_client]
        if not (o.did_close and r.did_close):
            self.last_ts = ts
        if self.h_first and (from_client != self.orig_is_client or flags & (SYN | ACK) != SYN | ACK):
            self.h_first = False  # the SYN-ACK (and its copies) had the connection to itself
            if (from_client != self.orig_is_client and not flags & (SYN | RST)
                    and o.state is Z_SYN_ACK_SENT and r.state is Z_INACTIVE):
                # The responder answers the SYN-ACK with an ACK or data: its sender was
                # the server after all.  Zeek flips, and its history reads as if it had
                # from the start ("^h", not "H^").
                self.orig_is_client = not self.orig_is_client
                self.history = "^" + self.history.swapcase()
        seg_len = length + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if flags & RST:
            seg_len -= length  # an RST's payload is no part of the stream
        # init_endpoint: the first segment of an endpoint fixes its sequence start; with
        # no SYN, as though one had come just before (and the segment is no retransmission).
        if end.start_seq is None or (end.state is Z_RESET and flags & SYN and end.prev_state is Z_INACTIVE):
            if flags & SYN:
                end.start_seq = seq
                end.last_seq = (seq + seg_len) & MASK
            else:  # (Zeek's start is 64 bits: one before a seq of 0 is -1, not 2**32 - 1)
                end.start_seq = seq - 1
                end.last_seq = seq
            end.wraps = end.ack_beyond = 0
            if end.contig == UNSET:
                end.contig = (seq + (1 if flags & SYN else 0)) & MASK
        start: int = end.start_seq
        rel = (seq - start) & MASK
        # update_history
        bits = (flags & SYN and 1) + (flags & FIN and 1) + (flags & RST and 1)
        if bits > 1:
            self._check(from_client, "I" if (flags & FIN and flags & RST) else "Q")
        elif bits == 1:
            if flags & SYN:
                code = "H" if flags & ACK else "S"
                if self._check(from_client, code) and rel != end.last_syn:
                    self._letter(from_client, code)
                end.last_syn = rel
            if flags & FIN:
                end.fins += 1
                if self._check(from_client, "F") and (rel + length) & MASK != end.last_fin:
                    self._letter(from_client, "F")
                end.last_fin = (rel + length) & MASK
            if flags & RST:
                if self._check(from_client, "R") and rel != end.last_rst:
                    self._letter(from_client, "R")
                end.last_rst = rel
        elif length:
            self._check(from_client, "D")
        elif flags & ACK:
            self._check(from_client, "A")
        # update_window: zero windows (not with/after RST, not after the peer's FIN)
        if win == 0 and not flags & RST and peer.state is not Z_CLOSED and end.state is not Z_RESET:
            end.zero_windows += 1
            self._scaled(from_client, "W", end.zero_windows)
        # ACK handling: initialise a silent peer's sequence space from our ACK; an ACK
        # beyond what the peer was seen to send counts in its size (update_ack_seq).
        if flags & ACK and peer.state is Z_INACTIVE and peer.start_seq is None:
            peer.start_seq = ack - 1
            peer.last_seq = (ack - 1) & MASK
            peer.contig = ack
        elif flags & ACK and not flags & RST and peer.state is not Z_INACTIVE and peer.last_seq != UNSET:
            beyond = (ack - peer.last_seq) & MASK
            if beyond < HALF and beyond > peer.ack_beyond and not (ack == 0 and beyond > _TOO_LARGE):
                peer.ack_beyond = beyond
        # update_last_seq: retransmissions
        end_seq = (seq + seg_len) & MASK
        delta = (end_seq - end.last_seq) & MASK
        delta_signed = delta - (1 << 32) if delta >= HALF else delta
        if flags & (SYN | RST) and abs(delta_signed) > _TOO_LARGE:
            pass
        elif flags & FIN and end.last_seq == (start + 1) & MASK:
            # a FIN after only the SYN: trusted even if behind.  Size() is the larger of
            # last_seq and the peer's ACK: an ACK of data Zeek never saw (ignored for its
            # checksum, or not captured) counts once, not on top of the FIN's advance.
            if delta_signed > 0:
                end.ack_beyond = max(0, end.ack_beyond - delta)
            end.last_seq = end_seq
        elif end.state is Z_RESET:
            pass
        elif delta_signed > 0:
            if end_seq < end.last_seq:
                end.wraps += 1
            end.ack_beyond = max(0, end.ack_beyond - delta)
            end.last_seq = end_seq
        elif length > 0:
            end.rxmits += 1
            self._scaled(from_client, "T", end.rxmits)
        # captured payload: contiguous data advances (and takes in the blocks that came
        # ahead of it, as Zeek's reassembler does); data beyond a hole waits in ``blocks``
        if length and not flags & RST and end.contig != UNSET and captured >= length:
            data_seq = (seq + (1 if flags & SYN else 0)) & MASK
            stop = (data_seq + length) & MASK
            if not _seq_gt(data_seq, end.contig):
                if _seq_gt(stop, end.contig):
                    end.contig = stop
                if end.blocks:
                    end.contig, end.blocks = _merge(end.contig, end.blocks)
            elif len(end.blocks) < _MAX_BLOCKS:
                end.blocks += ((data_seq, stop),)
        self._state_machine(from_client, flags, seq, length, ts, end, peer)
        # AckReceived: the peer acknowledges bytes we never saw delivered -> content gap
        if flags & ACK and peer.contig != UNSET and _seq_gt(ack, peer.contig):
            hole = (ack - peer.contig) & MASK
            peer_fin = 1 if (peer.last_fin is not None and ack == ((peer.start_seq or 0) + peer.last_fin + 1) & MASK) else 0
            hole -= peer_fin
            if hole > 0 and not flags & (FIN | RST) and peer.state is not Z_INACTIVE:
                peer.gaps += 1
                peer.missed += hole
                self._scaled(not from_client, "G", peer.gaps)
            elif hole > 0:
                peer.missed += hole
            peer.contig = ack
            if peer.blocks:
                peer.contig, peer.blocks = _merge(peer.contig, peer.blocks)

    def _state_machine(self, from_client: bool, flags: int, seq: int, length: int, ts: float,
                       end: ZeekEndpoint, peer: ZeekEndpoint) -> None:
        is_orig = from_client == self.orig_is_client
        st = end.state
        # do_close: the segment closes this endpoint (ConnectionClosed)
        if st is Z_CLOSED:
            do_close = bool(flags & RST) and peer.state is not Z_CLOSED and not end.did_close
        else:
            do_close = st is not Z_RESET and bool(flags & (FIN | RST))
        if st is Z_INACTIVE:
            if flags & SYN:
                if is_orig:
                    end.set_state(Z_SYN_ACK_SENT if flags & ACK else Z_SYN_SENT)
                    self.syn_ts = ts  # the attempt timer starts
                else:
                    if not flags & ACK and peer.state is Z_SYN_ACK_SENT and seq == end.start_seq:
                        # SYN/SYN-ACK reversal: Zeek flips the roles and establishes.
                        self._flip()
                        peer.set_state(Z_ESTABLISHED)
                    if peer.state is Z_SYN_SENT:
                        peer.set_state(Z_ESTABLISHED)
                    end.set_state(Z_ESTABLISHED)
            if flags & FIN:
                end.set_state(Z_CLOSED)
            if flags & RST:
                end.set_state(Z_RESET)
            if end.state is Z_INACTIVE:
                orig_end = self.ends[self.orig_is_client]
                if not is_orig and length == 0 and orig_end.state is Z_SYN_SENT:
                    pass
                elif flags & ACK and peer.state is Z_ESTABLISHED:
                    end.set_state(Z_ESTABLISHED)
                else:
                    end.set_state(Z_PARTIAL)
        elif st is Z_SYN_SENT or st is Z_SYN_ACK_SENT:
            if flags & FIN:
                end.set_state(Z_CLOSED)
            if flags & RST:
                end.set_state(Z_RESET)
        elif st is Z_ESTABLISHED or st is Z_PARTIAL:
            if flags & SYN and st is Z_PARTIAL and peer.state is Z_INACTIVE and not flags & ACK:
                end.set_state(Z_SYN_SENT)
            if flags & FIN and not flags & RST:
                end.set_state(Z_CLOSED)
                if peer.state is Z_RESET and peer.prev_state is Z_CLOSED:
                    peer.set_state(Z_CLOSED)
            if flags & RST:
                end.set_state(Z_RESET)
        elif st is Z_CLOSED:
            if flags & RST and peer.state is not Z_CLOSED:
                end.set_state(Z_RESET)
        if do_close and not end.did_close:
            end.did_close = True
            if end.state is Z_RESET or peer.did_close or peer.state is Z_INACTIVE:
                self.closed = True  # the close is complete: removed tcp_close_delay later

    def conn_state(self, orig_bytes: int, resp_bytes: int) -> str:
        """Zeek's ``conn_state()`` (base/protocols/conn/main.zeek), on the final states."""
        os_, rs = self.ends[self.orig_is_client].state, self.ends[not self.orig_is_client].state
        o_inactive = os_ is Z_INACTIVE or os_ is Z_PARTIAL
        r_inactive = rs is Z_INACTIVE or rs is Z_PARTIAL
        if rs is Z_RESET:
            if os_ is Z_SYN_SENT or os_ is Z_SYN_ACK_SENT or (os_ is Z_RESET and orig_bytes == 0 and resp_bytes == 0):
                return "REJ"
            return "RSTRH" if o_inactive else "RSTR"
        if os_ is Z_RESET:
            if r_inactive:
                return "RSTOS0" if _RSTOS0.fullmatch(self.history) else "OTH"
            return "RSTO"
        if rs is Z_CLOSED and os_ is Z_CLOSED:
            return "SF"
        if os_ is Z_CLOSED:
            return "SH" if r_inactive else "S2"
        if rs is Z_CLOSED:
            return "SHR" if o_inactive else "S3"
        if os_ is Z_SYN_SENT and rs is Z_INACTIVE:
            return "S0"
        if os_ is Z_ESTABLISHED and rs is Z_ESTABLISHED:
            return "S1"
        return "OTH"


EndpointState = _Z
