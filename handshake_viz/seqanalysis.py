"""Wireshark's TCP sequence analysis, so that ``hsviz`` and ``tshark`` flag the same
segments of the same capture.

This follows ``tcp_analyze_sequence_number`` in Wireshark's ``epan/dissectors/
packet-tcp.c``: per direction it remembers the next expected sequence number, the
highest one to be acknowledged, the last ACK and window and the duplicate ACK count
(:class:`SeqFlow`, a pared-down ``tcp_flow_t``), and per segment it runs the same
checks in the same order (:func:`analyze`), since some of them end the checking
early.  The result is a set of bits; :func:`analysis_names` turns it into the
``Analysis`` members a Segment carries, in the order of Wireshark's expert info.

Sans-IO like the tracker that calls it: numbers in, bits out.  The tracker's fast
path (``track.Tracker._steady``) repeats the updates for the segments that flag
nothing; tests/test_track_fastpath.py holds the two to the same results.
"""

from __future__ import annotations

from handshake_viz.model import Analysis
from .seqnum import (
    A_ACK_LOST, A_BAD_CHECKSUM, A_DUPACK, A_DUPLICATE, A_FAST, A_KA, A_KA_ACK, A_LOST,
    A_OFFLOADED, A_OOO, A_RETRANS, A_SPURIOUS, A_WFULL, A_WUPD, A_ZWIN, A_ZWP, A_ZWP_ACK,
    ACK, FIN, MASK, RST, SYN, UNSET,
)
from .seqnum import seq_ge as _seq_ge
from .seqnum import seq_gt as _seq_gt
from .seqnum import seq_lt as _seq_lt

__all__ = [
    "A_ACK_LOST",
    "A_DUPACK",
    "A_BAD_CHECKSUM",
    "A_DUPLICATE",
    "A_FAST",
    "A_KA",
    "A_KA_ACK",
    "A_LOST",
    "A_OFFLOADED",
    "A_OOO",
    "A_RETRANS",
    "A_SPURIOUS",
    "A_WFULL",
    "A_WUPD",
    "A_ZWIN",
    "A_ZWP",
    "A_ZWP_ACK",
    "DUPLICATE_WINDOW",
    "SeqFlow",
    "analysis_names",
    "analyze",
    "scaled_window",
    "window_scale",
]


class SeqFlow:
    """What the analysis remembers of one direction (Wireshark's ``tcp_flow_t`` and
    ``tcp_analyze_seq_info``, pared down to what is used).  Sequence numbers are raw
    (absolute); 0 in ``nextseq``, ``maxseqtobeacked`` and ``lastack`` means "none yet",
    as in Wireshark."""

    __slots__ = ("nextseq", "nextseq_time", "maxseqtobeacked", "lastack", "lastack_time",
                 "dupacks", "window", "win_scale", "last_flags")

    def __init__(self) -> None:
        self.nextseq = 0  # one past the highest sequence number sent this way
        self.nextseq_time = 0.0  # when nextseq last moved
        self.maxseqtobeacked = 0  # the highest sequence number the other way may acknowledge
        self.lastack = 0  # the last ACK number sent this way
        self.lastack_time = 0.0
        self.dupacks = 0  # duplicate ACKs of lastack so far; -1 after the peer acked unseen data
        self.window = UNSET  # the last window advertised this way, scaled
        self.win_scale = -1  # the shift to apply; -1 not known yet, -2 the SYN offered none
        self.last_flags = 0  # analysis bits of the last segment this way


#: How close behind an identical segment a copy must come to be called a duplicate
#: (``Analysis.DUPLICATE``): the same TCP header, options, captured payload and IPv4
#: identification as the connection's previous segment, in the same direction,
#: nothing in between, at most this many seconds later.  A capture sees a packet twice on two interfaces, on a
#: mirror port or in a VLAN trunk within microseconds; a sender retransmits only after
#: a timer (RFC 6298 §2.4: an RTO of at least 1 s; Linux: 200 ms; a tail-loss probe,
#: RFC 8985 §7.2: two smoothed RTTs, 10 ms at least on Linux) or after duplicate ACKs,
#: which would lie in between.  Wireshark has no such notion: it calls the copy a
#: retransmission, a duplicate ACK, a keep-alive or a spurious retransmission, and
#: hsviz still reports those flags too.
DUPLICATE_WINDOW = 0.001

A = Analysis
# Each bit's names (the bits are seqnum's; A_ZWP_ACK, which only keeps a probe's ACK
# from counting as a duplicate ACK, has none).
_BIT_NAMES: tuple[tuple[int, tuple[Analysis, ...]], ...] = (
    (A_RETRANS, (A.RETRANSMISSION,)),
    # Wireshark reports a fast or spurious retransmission as a retransmission too.
    (A_FAST, (A.RETRANSMISSION, A.FAST_RETRANSMISSION)),
    (A_SPURIOUS, (A.RETRANSMISSION, A.SPURIOUS_RETRANSMISSION)),
    (A_OOO, (A.OUT_OF_ORDER,)), (A_DUPACK, (A.DUP_ACK,)), (A_LOST, (A.LOST_SEGMENT,)),
    (A_ACK_LOST, (A.ACK_UNSEEN,)), (A_ZWIN, (A.ZERO_WINDOW,)),
    (A_ZWP, (A.ZERO_WINDOW_PROBE,)), (A_WUPD, (A.WINDOW_UPDATE,)), (A_WFULL, (A.WINDOW_FULL,)),
    (A_KA, (A.KEEP_ALIVE,)), (A_KA_ACK, (A.KEEP_ALIVE_ACK,)),
    # not sequence analysis: hsviz's own, and what checksum verification found
    (A_DUPLICATE, (A.DUPLICATE,)),
    (A_BAD_CHECKSUM, (A.BAD_CHECKSUM,)), (A_OFFLOADED, (A.CHECKSUM_OFFLOADED,)),
)
_NAMES_CACHE: dict[int, tuple[Analysis, ...]] = {0: ()}


def analysis_names(bits: int) -> tuple[Analysis, ...]:
    """The Analysis members of ``bits``, each once, in Wireshark's order (one tuple
    per combination, shared by every Segment that has it)."""
    try:
        return _NAMES_CACHE[bits]
    except KeyError:
        out: list[Analysis] = []
        for bit, names in _BIT_NAMES:
            if bits & bit:
                out += [n for n in names if n not in out]
        result = tuple(out)
        _NAMES_CACHE[bits] = result
        return result


def scaled_window(fwd: SeqFlow, rev: SeqFlow, flags: int, win: int, raw_options: bytes) -> int:
    """The window a segment advertises, in bytes; a SYN's window scale option is noted.

    RFC 7323 §2.2: the scale applies only if both SYNs carry the option, and never to
    the window of a SYN itself.  ``fwd`` is the segment's direction, ``rev`` the other.
    """
    if not flags & SYN:
        scale = fwd.win_scale
        return win << scale if scale > 0 else win
    ws = window_scale(raw_options)
    if flags & ACK:
        if ws is None or rev.win_scale < 0:
            fwd.win_scale = rev.win_scale = 0 if ws is None or rev.win_scale == -2 else fwd.win_scale
        else:
            fwd.win_scale = ws
    else:
        fwd.win_scale = ws if ws is not None else -2
    return win


def window_scale(raw: bytes) -> int | None:
    """``parse_options(raw).wscale_effective`` without the rest (a SYN's options are
    read on every connection): the shift of the last window scale option before the
    list ends (kind 0) or breaks (cut short, or a length below 2), above 14 taken as 14
    (RFC 7323 §2.3); None without one."""
    shift = -1
    i, n = 0, len(raw)
    while i < n and raw[i]:
        kind = raw[i]
        size = 1 if kind == 1 else raw[i + 1] if i + 1 < n else 0
        if size < 1 or (size == 1 and kind != 1) or i + size > n:
            break
        if kind == 3 and size == 3:
            shift = raw[i + 2]
        i += size
    return None if shift < 0 else min(shift, 14)


def analyze(
    fwd: SeqFlow, rev: SeqFlow, flags: int, seq: int, ack: int, seglen: int, ts: float,
    window: int, first_rtt: float | None,
) -> int:
    """Wireshark's TCP sequence analysis (``tcp_analyze_sequence_number``), one segment.

    ``fwd`` is the segment's direction, ``rev`` the other; ``window`` is the scaled
    window (:func:`scaled_window`) and ``first_rtt`` the connection's first round
    trip (SYN to the handshake's ACK), if known.  Updates ``fwd`` (and, for an ACK of
    unseen data, ``rev``) and returns the analysis bits.  The checks run in
    Wireshark's order, since some of them end the checking early; each comment names
    the condition it tests.
    """
    bits = 0
    nextseq = fwd.nextseq
    ctl = flags & (SYN | FIN | RST)
    skip_to_fwd_done = False
    # ZERO WINDOW PROBE: 1 byte at the next expected seq while the peer's window is 0.
    if seglen == 1 and seq == nextseq and rev.window == 0:
        bits |= A_ZWP
        skip_to_fwd_done = True
    if not skip_to_fwd_done:
        # ZERO WINDOW: window 0 on a segment without SYN/FIN/RST.
        if window == 0 and not ctl:
            bits |= A_ZWIN
        # LOST SEGMENT: starts beyond what we expected next (a gap in the capture).
        if nextseq and _seq_gt(seq, nextseq) and not flags & RST:
            bits |= A_LOST
        # KEEP-ALIVE: 0 or 1 byte starting one before the next expected seq.
        if seglen <= 1 and seq == ((nextseq - 1) & MASK) and not ctl:
            bits |= A_KA
        # WINDOW UPDATE: nothing new but the window changed.
        if (seglen == 0 and window and window != fwd.window and seq == nextseq
                and ack == fwd.lastack and not ctl):
            bits |= A_WUPD
        # WINDOW FULL: data fills the peer's advertised window exactly.
        if (seglen > 0 and rev.win_scale != -1 and rev.window != UNSET and not ctl
                and (seq + seglen) & MASK == (rev.lastack + (rev.window)) & MASK):
            bits |= A_WFULL
        same = (seglen == 0 and seq == nextseq and ack == fwd.lastack and not ctl)
        if same and window and window == fwd.window and rev.last_flags & A_KA:
            bits |= A_KA_ACK  # KEEP-ALIVE ACK
        elif same and window == 0 and window == fwd.window and rev.last_flags & A_ZWP:
            bits |= A_ZWP_ACK  # ZERO WINDOW PROBE ACK
        elif same and window and window == fwd.window:
            # DUPLICATE ACK: same seq, ack and window, no payload (-1: see ACKED UNSEEN)
            fwd.dupacks = 1 if fwd.dupacks == -1 else fwd.dupacks + 1
            bits |= A_DUPACK
    # (finished_fwd) a new ack value resets the duplicate count
    if ack != fwd.lastack:
        fwd.dupacks = 0
    # ACKED UNSEEN: acknowledges beyond anything the other side was seen to send.  The
    # other side's duplicate ACK count becomes -1 ("neutralised"), which Wireshark keeps
    # in an unsigned counter: until that side's ACK number moves, the fast
    # retransmission test below reads it as at least 2 (reassembly.pcap f8, f10, f12).
    if rev.maxseqtobeacked and _seq_gt(ack, rev.maxseqtobeacked) and flags & ACK:
        bits |= A_ACK_LOST
        rev.maxseqtobeacked = rev.nextseq
        rev.dupacks = -1
    # RETRANSMISSION / FAST RETRANSMISSION / OUT-OF-ORDER / SPURIOUS
    if (seglen > 0 or flags & (SYN | FIN)) and not bits & A_KA:
        not_advanced = bool(nextseq) and _seq_lt(seq, nextseq)
        if seglen > 1 and ((nextseq - 1) & MASK) == seq:
            not_advanced = False  # new data after a zero-window probe
        if seglen > 0 and rev.lastack and _seq_ge(rev.lastack, (seq + seglen) & MASK):
            bits |= A_SPURIOUS  # already acknowledged: the data was not lost
        elif (not_advanced and (rev.dupacks >= 2 or rev.dupacks == -1) and rev.lastack == seq
                and ts - rev.lastack_time < 0.020):
            bits |= A_FAST
        elif (not_advanced and ts - fwd.nextseq_time < (first_rtt or 0.003)
                and nextseq != (seq + seglen + (1 if flags & (SYN | FIN) else 0)) & MASK):
            # out of order: close behind the newest segment, and not a copy of it (a
            # copy ends where the newest ended: a retransmission, or a duplicate)
            bits |= A_OOO
        elif not_advanced:
            bits |= A_RETRANS
    # remember the highest sequence number and what this side acked
    end = (seq + seglen + (1 if flags & (SYN | FIN) else 0)) & MASK
    if (not nextseq or _seq_gt(end, nextseq)) and not bits & A_ZWP:
        fwd.nextseq = end
        fwd.nextseq_time = ts
    if (not fwd.maxseqtobeacked or seq == fwd.maxseqtobeacked) and not bits & A_ZWP:
        fwd.maxseqtobeacked = fwd.nextseq
    fwd.window = window
    fwd.lastack = ack
    fwd.lastack_time = ts
    fwd.last_flags = bits
    return bits
