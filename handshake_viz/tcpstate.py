"""RFC 9293 connection states, as a passive observer sees them move.

Theory of operation
===================

This module decides every RFC 9293 state, in the style of h11's ``_state.py``: two
transition tables and the few rules that say which events a captured segment is.
The tracker (``track.py``) keeps the bookkeeping (what a segment acknowledges, the
highest ACK each side sent: sequence arithmetic), asks :func:`is_acceptable`
whether the receiver can take the segment and :func:`after_segment` for both
endpoints' new states, and stores what it is told; it never chooses a state
itself.

Two endpoints, two tables
-------------------------
Every segment has a sender and a receiver, and means something different to each.
:class:`Event` names what it means: to its sender ("I send a SYN", "I send a FIN")
and to its receiver ("a SYN arrives", "my FIN is acknowledged").
``TRANSITIONS[Role.SENDER][state][event]`` is the sender's new state after sending
``event``: the "snd" arcs of RFC 9293 §3.3.2's state diagram (figure 5) and the
CLOSE call of §3.10.4.  ``TRANSITIONS[Role.RECEIVER][state][event]`` is the
receiver's new state when ``event`` arrives: the SEGMENT ARRIVES rules of §3.10.7.
A client and a server use the same tables; which endpoint is which only decides
the states they start in (:func:`initial_states`).

One segment, in order
---------------------
The capture point is taken to be both the instant the segment leaves and the
instant it arrives (true on loopback, where these captures come from).  So a
segment is its sender's events first, then its receiver's; within one endpoint the
ACK field comes before the FIN bit (§3.10.7.4 processes the ACK field, the fifth
check, before the FIN bit, the eighth), and a RST is the whole story of its
segment (§3.10.7.4, second check).  :func:`segment_events` spells that out.

What the receiver cannot accept, it does not act on: a segment wholly before the
receiver's RCV.NXT fails §3.10.7.4's first check and is only answered with an ACK,
so none of its receiver events apply (:func:`is_acceptable`).  The sender's events
still do: it did send the segment.

A passive observer, not an endpoint
-----------------------------------
An endpoint that gets a segment its state does not expect answers it, drops it, or
resets the connection.  The observer can do none of that, and it sees what an
endpoint never would: retransmissions of segments already processed, segments
that arrived before the capture started, strays from an older connection on the
same ports.  Such a segment is evidence of nothing new, so **a move the table
does not list leaves the state alone** (:func:`next_state`) instead of raising an
error the way h11 does for a local protocol violation.  The states only move when
the capture shows evidence for the move.

The one move the segment-at-a-time view gets wrong on its own is the simultaneous
close (§3.6, figure 13): both endpoints send a FIN before the other's arrives.
The observer sees the first FIN arrive (its receiver goes to CLOSE-WAIT) before the
second is sent, but the second FIN does not acknowledge the first, so it left
before the first arrived: its sender was in ESTABLISHED, went to FIN-WAIT-1, and
the crossing FIN then took it to CLOSING.  That is the event
:attr:`Event.FIN_CROSSING` ("a FIN sent while the peer's FIN is unacknowledged"),
an entry of the sender's table like any other.
"""

from __future__ import annotations

import enum

from handshake_viz.model import TcpState
from .seqnum import ACK, FIN, HALF, MASK, RST, SYN, UNSET
from .seqnum import members as _members

__all__ = [
    "TRANSITIONS",
    "Event",
    "Role",
    "after_segment",
    "initial_states",
    "is_acceptable",
    "next_state",
    "segment_events",
]


class Event(str, enum.Enum):
    """What a segment means to one endpoint, as its sender or as its receiver.

    A ``str`` enum so that the transition tables hash it in C (a plain Enum's
    ``__hash__`` is a Python function).
    """

    SYN = "SYN"  # a SYN without ACK
    SYN_ACK = "SYN-ACK"
    ACK_OF_SYN = "ACK of SYN"  # as receiver: acknowledges this endpoint's SYN
    ACK_OF_FIN = "ACK of FIN"  # as receiver: acknowledges this endpoint's FIN
    ACKS_PEER_SYN = "acks the peer's SYN"  # as sender: proof it got the SYN-ACK
    FIN = "FIN"
    FIN_CROSSING = "FIN crossing the peer's FIN"  # as sender: the peer's FIN is unacknowledged
    RST = "RST"


class Role(str, enum.Enum):
    """Which end of a segment an endpoint is."""

    SENDER = "sender"
    RECEIVER = "receiver"


S = _members(TcpState)
E = _members(Event)

Table = dict[TcpState, dict[Event, TcpState]]

# The sender's new state after it sends the event.
_SEND: Table = {
    # §3.10.1 OPEN (active): send a SYN, go to SYN-SENT; a listener that sends one
    # (§3.10.2 SEND in LISTEN) does the same.  §3.10.7.2: a listener answers a SYN with
    # a SYN,ACK and goes to SYN-RECEIVED; an endpoint the capture last saw CLOSED (after
    # a RST) is taken to be listening again.
    S.CLOSED: {E.SYN: S.SYN_SENT, E.SYN_ACK: S.SYN_RECEIVED, E.RST: S.CLOSED},
    S.LISTEN: {E.SYN: S.SYN_SENT, E.SYN_ACK: S.SYN_RECEIVED, E.RST: S.CLOSED},
    S.SYN_SENT: {
        # §3.10.7.3, simultaneous open (§3.5, figure 7): a SYN arrived, answered by SYN,ACK.
        E.SYN_ACK: S.SYN_RECEIVED,
        # §3.10.7.3: our SYN acknowledged, we acknowledge theirs.  Sending that ACK
        # proves the SYN,ACK arrived even when the capture saw it first (reordered).
        E.ACKS_PEER_SYN: S.ESTABLISHED,
        E.FIN: S.FIN_WAIT_1,
        E.FIN_CROSSING: S.FIN_WAIT_1,
        E.RST: S.CLOSED,
    },
    # §3.10.4 CLOSE in SYN-RECEIVED and ESTABLISHED: send a FIN, go to FIN-WAIT-1.
    S.SYN_RECEIVED: {E.FIN: S.FIN_WAIT_1, E.FIN_CROSSING: S.FIN_WAIT_1, E.RST: S.CLOSED},
    S.ESTABLISHED: {E.FIN: S.FIN_WAIT_1, E.FIN_CROSSING: S.FIN_WAIT_1, E.RST: S.CLOSED},
    S.CLOSE_WAIT: {
        # §3.10.4 CLOSE in CLOSE-WAIT: send a FIN, go to LAST-ACK.
        E.FIN: S.LAST_ACK,
        # §3.6, figure 13 (simultaneous close): this FIN left before the peer's FIN
        # arrived (it does not acknowledge it), so it was sent from ESTABLISHED
        # (FIN-WAIT-1) and the peer's FIN then took the sender to CLOSING (§3.10.7.4,
        # eighth check, FIN-WAIT-1).  The observer had moved it to CLOSE-WAIT too early.
        E.FIN_CROSSING: S.CLOSING,
        E.RST: S.CLOSED,
    },
    # §3.5.2: an endpoint may send a RST in any state; it forgets the connection.
    S.FIN_WAIT_1: {E.RST: S.CLOSED},
    S.FIN_WAIT_2: {E.RST: S.CLOSED},
    S.CLOSING: {E.RST: S.CLOSED},
    S.LAST_ACK: {E.RST: S.CLOSED},
    S.TIME_WAIT: {E.RST: S.CLOSED},
}

# The receiver's new state when the event arrives (§3.10.7 SEGMENT ARRIVES).
_RECV: Table = {
    # §3.10.7.1: in CLOSED everything is answered with a RST (or dropped), no move.
    S.CLOSED: {},
    # §3.10.7.2: a RST is ignored; a SYN is answered with a SYN,ACK, and the listener
    # shows SYN-RECEIVED when that leaves (the sender's SYN-ACK event), not before.
    S.LISTEN: {},
    S.SYN_SENT: {
        # §3.10.7.3: a SYN without ACK -> SYN-RECEIVED (simultaneous open, figure 7)
        E.SYN: S.SYN_RECEIVED,
        # §3.10.7.3: a SYN,ACK that acknowledges our SYN -> ESTABLISHED
        E.ACK_OF_SYN: S.ESTABLISHED,
        # §3.10.7.3: an acceptable RST -> CLOSED ("connection reset")
        E.RST: S.CLOSED,
    },
    S.SYN_RECEIVED: {
        # §3.10.7.4, fifth check: an acceptable ACK in SYN-RECEIVED -> ESTABLISHED
        E.ACK_OF_SYN: S.ESTABLISHED,
        # §3.10.7.4, eighth check: a FIN in SYN-RECEIVED or ESTABLISHED -> CLOSE-WAIT
        E.FIN: S.CLOSE_WAIT,
        # §3.10.7.4, second check: a RST -> CLOSED (the observer sees no LISTEN to go back to)
        E.RST: S.CLOSED,
    },
    S.ESTABLISHED: {E.FIN: S.CLOSE_WAIT, E.RST: S.CLOSED},
    S.FIN_WAIT_1: {
        # §3.10.7.4, fifth check: our FIN acknowledged -> FIN-WAIT-2
        E.ACK_OF_FIN: S.FIN_WAIT_2,
        # §3.10.7.4, eighth check: a FIN while ours is unacknowledged -> CLOSING (the ACK
        # field came first: a FIN that also acknowledges ours found us in FIN-WAIT-2)
        E.FIN: S.CLOSING,
        E.RST: S.CLOSED,
    },
    # §3.10.7.4, eighth check: FIN-WAIT-2 + FIN -> TIME-WAIT (§3.6.1: data may still
    # arrive in FIN-WAIT-2, the half-closed connection)
    S.FIN_WAIT_2: {E.FIN: S.TIME_WAIT, E.RST: S.CLOSED},
    S.CLOSE_WAIT: {E.RST: S.CLOSED},
    # §3.10.7.4, fifth check: CLOSING + ACK of our FIN -> TIME-WAIT
    S.CLOSING: {E.ACK_OF_FIN: S.TIME_WAIT, E.RST: S.CLOSED},
    # §3.10.7.4, fifth check: LAST-ACK + ACK of our FIN -> CLOSED
    S.LAST_ACK: {E.ACK_OF_FIN: S.CLOSED, E.RST: S.CLOSED},
    S.TIME_WAIT: {E.RST: S.CLOSED},
}

TRANSITIONS: dict[Role, Table] = {Role.SENDER: _SEND, Role.RECEIVER: _RECV}
"""``TRANSITIONS[role][state][event]``: the new state (h11's ``EVENT_TRIGGERED_TRANSITIONS``)."""


def next_state(role: Role, state: TcpState, event: Event) -> TcpState:
    """The state after ``event`` for an endpoint in ``state`` playing ``role``.

    A move the table does not list leaves the state alone: a passive observer sees
    retransmissions and stray segments that change nothing (see the module docstring).
    """
    return TRANSITIONS[role][state].get(event, state)


def initial_states(flags: int) -> tuple[TcpState, TcpState]:
    """The client's and the server's states before the first segment of a connection
    (whose header flags are ``flags``) is applied."""
    if not flags & SYN:
        # Mid-stream: both were already talking; whatever came before is not known.
        return S.ESTABLISHED, S.ESTABLISHED
    if flags & ACK:
        # The capture starts at the SYN-ACK: the client's SYN went out uncaptured.
        return S.SYN_SENT, S.LISTEN
    return S.CLOSED, S.LISTEN


def is_acceptable(seq: int, seg_len: int, rcv_nxt: int | None) -> bool:
    """§3.10.7.4 first check, as far as an observer can make it: False for a segment
    wholly before the receiver's RCV.NXT (``rcv_nxt``, the highest ACK it sent; None,
    or seqnum.UNSET, if it sent none), which the receiver only answers with an ACK.

    ``seg_len`` counts the payload and the FIN (SEG.LEN without the SYN: segments
    with SYN or RST never reach this check).  The receiver's window is not known to
    the observer, so only the left edge is checked.
    """
    if rcv_nxt is None or rcv_nxt == UNSET:
        return True
    last = seq if seg_len == 0 else (seq + seg_len - 1) & MASK
    return ((last - rcv_nxt) & MASK) < HALF  # last >= rcv_nxt (seqnum.seq_ge, inlined)


Events = tuple[Event, ...]


def segment_events(
    flags: int, *, acks_syn: bool, syn_acked: bool, acks_fin: bool, peer_fin_unacked: bool,
    acceptable: bool,
) -> tuple[Events, Events]:
    """What one segment is to its sender and to its receiver, each in the order the
    events apply.

    ``flags`` are the header's flag bits; the rest is what the tracker worked out:

    * ``acks_syn``: the ACK field acknowledges the receiver's SYN for the first time;
    * ``syn_acked``: the receiver's SYN is acknowledged, by this segment or before;
    * ``acks_fin``: the ACK field acknowledges the receiver's FIN for the first time;
    * ``peer_fin_unacked``: the receiver sent a FIN that the sender has not
      acknowledged, even counting this segment;
    * ``acceptable``: the receiver can accept the segment (:func:`is_acceptable`).
    """
    if flags & RST:
        # §3.10.7.4 second check (§3.10.7.3 in SYN-SENT): a RST ends the connection; its
        # ACK field and any other flag do not matter.  (The observer takes every RST
        # as acceptable: it cannot see the receiver's window.)
        return (E.RST,), (E.RST,)
    if flags & SYN:
        if flags & ACK:
            # §3.10.7.3: a SYN,ACK acknowledging the receiver's SYN establishes it; one
            # that does not is a retransmission or a stray, and moves the receiver nowhere.
            return (E.SYN_ACK,), ((E.ACK_OF_SYN,) if syn_acked else ())
        return (E.SYN,), (E.SYN,)
    sent: Events = (E.ACKS_PEER_SYN,) if acks_syn else ()
    received: Events = ()
    if acceptable:
        # the ACK field first (fifth check) ...
        if acks_syn:
            received += (E.ACK_OF_SYN,)
        if acks_fin:
            received += (E.ACK_OF_FIN,)
    if flags & FIN:
        sent += (E.FIN_CROSSING if peer_fin_unacked else E.FIN,)
        if acceptable:
            received += (E.FIN,)  # ... then the FIN bit (eighth check)
    return sent, received


def after_segment(
    sender: TcpState, receiver: TcpState, flags: int, *, acks_syn: bool, syn_acked: bool,
    acks_fin: bool, peer_fin_unacked: bool, acceptable: bool,
) -> tuple[TcpState, TcpState]:
    """The sender's and the receiver's states after one segment (arguments as
    :func:`segment_events`)."""
    if not (flags & (SYN | FIN | RST) or acks_syn or acks_fin):
        return sender, receiver  # no event either side: most segments the tracker asks about
    key = (flags & (SYN | ACK | FIN | RST) | acks_syn << 5 | syn_acked << 6 | acks_fin << 7
           | peer_fin_unacked << 8 | acceptable << 9)
    found = _EVENTS.get(key)
    if found is None:
        found = _EVENTS[key] = segment_events(
            flags, acks_syn=acks_syn, syn_acked=syn_acked, acks_fin=acks_fin,
            peer_fin_unacked=peer_fin_unacked, acceptable=acceptable)
    sent, received = found
    for event in sent:
        table = _SEND[sender]
        sender = table.get(event, sender)
    for event in received:
        table = _RECV[receiver]
        receiver = table.get(event, receiver)
    return sender, receiver


# segment_events by its arguments (as the bits of one number): a few dozen combinations
# occur, and the tracker asks for one on every segment its fast path does not take.
_EVENTS: dict[int, tuple[Events, Events]] = {}
