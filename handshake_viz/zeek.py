"""Zeek's view of a TCP connection, kept beside hsviz's own so that summaries can be
checked against Zeek's conn.log letter for letter: its endpoint states, its
``history`` letters (with its own originator/responder roles, which it may flip:
``^``) and its ``conn_state()``.  Sans-IO, like the tracker that feeds it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from handshake_viz.model import Packet
from handshake_viz.seqnum import ACK, FIN, HALF, MASK, RST, SYN
from handshake_viz.seqnum import members as _members
from handshake_viz.seqnum import seq_gt as _seq_gt

__all__ = ["EndpointState", "ZeekEndpoint", "ZeekView"]


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

_RSTOS0 = re.compile(r"\^?S[^HAFGIQ]*R.*")


@dataclass(slots=True)
class _ZEnd:
    state: _Z = Z.INACTIVE
    prev_state: _Z = Z.INACTIVE
    start_seq: int | None = None
    seen: str = ""  # the history letters recorded for this endpoint (a str: smaller than a set)
    last_syn: int | None = None
    last_fin: int | None = None
    last_rst: int | None = None
    last_seq: int | None = None  # one past the highest sequence sent
    rxmits: int = 0
    gaps: int = 0
    zero_windows: int = 0
    contig: int | None = None  # captured payload is contiguous up to here (raw seq)
    missed: int = 0

    def set_state(self, state: _Z) -> None:
        self.prev_state = self.state
        self.state = state


class _ZeekView:
    """Zeek's conn.log view of one connection (its orig/resp may be flipped vs ours).

    Follows Zeek's TCPSessionAdapter: history letters are recorded once per kind and
    direction (upper case for the originator), retransmissions, gaps and zero windows
    on an exponential scale (1, 10, 100, …), and '^' whenever the roles flip.
    """

    __slots__ = ("orig_is_client", "history", "ends")

    def __init__(self, first: Packet, first_is_client: bool, likely: frozenset[int]) -> None:
        # Zeek makes the sender of the first packet the originator, unless that packet is
        # not a plain SYN and the ports suggest the roles are the other way round
        # (TCPAnalyzer::WantConnection).
        flip = False
        if not (first.flags & SYN) or (first.flags & ACK):
            src_likely = first.sport in likely
            dst_likely = first.dport in likely
            if src_likely:
                flip = (first.sport < first.dport) if dst_likely else True
        self.orig_is_client = first_is_client != flip
        self.history = "^" if flip else ""
        # indexed by "is client": ends[False] is the server's, ends[True] the client's
        self.ends = (_ZEnd(), _ZEnd())

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

    def feed(self, p: Packet, from_client: bool) -> None:
        end, peer = self.ends[from_client], self.ends[not from_client]
        flags, length, seq = p.flags, p.length, p.seq
        seg_len = length + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        # init_endpoint: the first segment of an endpoint fixes its sequence start.
        if end.start_seq is None or (end.state is Z.RESET and flags & SYN and end.prev_state is Z.INACTIVE):
            end.start_seq = seq
            end.last_seq = (seq + seg_len) & MASK
            if end.contig is None:
                end.contig = (seq + (1 if flags & SYN else 0)) & MASK
        rel = (seq - end.start_seq) & MASK
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
        if p.win == 0 and not flags & RST and peer.state is not Z.CLOSED and end.state is not Z.RESET:
            end.zero_windows += 1
            self._scaled(from_client, "W", end.zero_windows)
        # ACK handling: initialise a silent peer's sequence space from our ACK.
        if flags & ACK and peer.state is Z.INACTIVE and peer.start_seq is None:
            peer.start_seq = (p.ack - 1) & MASK
            peer.last_seq = peer.start_seq
            peer.contig = p.ack
        # update_last_seq: retransmissions
        end_seq = (seq + seg_len) & MASK
        assert end.last_seq is not None
        delta = (end_seq - end.last_seq) & MASK
        delta_signed = delta - (1 << 32) if delta >= HALF else delta
        if flags & (SYN | RST) and abs(delta_signed) > 0x7FFFFFFF // 2:
            pass
        elif end.state is Z.RESET:
            pass
        elif delta_signed > 0:
            end.last_seq = end_seq
        elif length > 0:
            end.rxmits += 1
            self._scaled(from_client, "T", end.rxmits)
        # captured payload: contiguous data advances, uncaptured bytes leave a hole
        if length and not flags & RST and end.contig is not None:
            data_seq = (seq + (1 if flags & SYN else 0)) & MASK
            if not _seq_gt(data_seq, end.contig) and len(p.payload) >= length:
                stop = (data_seq + length) & MASK
                if _seq_gt(stop, end.contig):
                    end.contig = stop
        self._state_machine(p, from_client, end, peer)
        # AckReceived: the peer acknowledges bytes we never saw delivered -> content gap
        if flags & ACK and peer.contig is not None and _seq_gt(p.ack, peer.contig):
            hole = (p.ack - peer.contig) & MASK
            peer_fin = 1 if (peer.last_fin is not None and p.ack == ((peer.start_seq or 0) + peer.last_fin + 1) & MASK) else 0
            hole -= peer_fin
            if hole > 0 and not flags & (FIN | RST) and peer.state not in (Z.INACTIVE,):
                peer.gaps += 1
                peer.missed += hole
                self._scaled(not from_client, "G", peer.gaps)
            elif hole > 0:
                peer.missed += hole
            peer.contig = p.ack

    def _state_machine(self, p: Packet, from_client: bool, end: _ZEnd, peer: _ZEnd) -> None:
        flags = p.flags
        is_orig = from_client == self.orig_is_client
        st = end.state
        if st is Z.INACTIVE:
            if flags & SYN:
                if is_orig:
                    end.set_state(Z.SYN_ACK_SENT if flags & ACK else Z.SYN_SENT)
                else:
                    if not flags & ACK and peer.state is Z.SYN_ACK_SENT and p.seq == end.start_seq:
                        # SYN/SYN-ACK reversal: Zeek flips the roles and establishes.
                        self._flip()
                        peer.set_state(Z.ESTABLISHED)
                    if peer.state is Z.SYN_SENT:
                        peer.set_state(Z.ESTABLISHED)
                    end.set_state(Z.ESTABLISHED)
            if flags & FIN:
                end.set_state(Z.CLOSED)
            if flags & RST:
                end.set_state(Z.RESET)
            if end.state is Z.INACTIVE:
                orig_end = self.ends[self.orig_is_client]
                if not is_orig and p.length == 0 and orig_end.state is Z.SYN_SENT:
                    pass
                elif flags & ACK and peer.state is Z.ESTABLISHED:
                    end.set_state(Z.ESTABLISHED)
                else:
                    end.set_state(Z.PARTIAL)
        elif st in (Z.SYN_SENT, Z.SYN_ACK_SENT):
            if flags & FIN:
                end.set_state(Z.CLOSED)
            if flags & RST:
                end.set_state(Z.RESET)
        elif st in (Z.ESTABLISHED, Z.PARTIAL):
            if flags & SYN and st is Z.PARTIAL and peer.state is Z.INACTIVE and not flags & ACK:
                end.set_state(Z.SYN_SENT)
            if flags & FIN and not flags & RST:
                end.set_state(Z.CLOSED)
                if peer.state is Z.RESET and peer.prev_state is Z.CLOSED:
                    peer.set_state(Z.CLOSED)
            if flags & RST:
                end.set_state(Z.RESET)
        elif st is Z.CLOSED:
            if flags & RST and peer.state is not Z.CLOSED:
                end.set_state(Z.RESET)

    def conn_state(self, orig_bytes: int, resp_bytes: int) -> str:
        """Zeek's ``conn_state()`` (base/protocols/conn/main.zeek), on the final states."""
        os_, rs = self.ends[self.orig_is_client].state, self.ends[not self.orig_is_client].state
        o_inactive = os_ in (Z.INACTIVE, Z.PARTIAL)
        r_inactive = rs in (Z.INACTIVE, Z.PARTIAL)
        if rs is Z.RESET:
            if os_ in (Z.SYN_SENT, Z.SYN_ACK_SENT) or (os_ is Z.RESET and orig_bytes == 0 and resp_bytes == 0):
                return "REJ"
            return "RSTRH" if o_inactive else "RSTR"
        if os_ is Z.RESET:
            if r_inactive:
                return "RSTOS0" if _RSTOS0.fullmatch(self.history) else "OTH"
            return "RSTO"
        if rs is Z.CLOSED and os_ is Z.CLOSED:
            return "SF"
        if os_ is Z.CLOSED:
            return "SH" if r_inactive else "S2"
        if rs is Z.CLOSED:
            return "SHR" if o_inactive else "S3"
        if os_ is Z.SYN_SENT and rs is Z.INACTIVE:
            return "S0"
        if os_ is Z.ESTABLISHED and rs is Z.ESTABLISHED:
            return "S1"
        return "OTH"


# Public names for the tracker (the underscored ones are this module's own spelling).
EndpointState = _Z
ZeekEndpoint = _ZEnd
ZeekView = _ZeekView
