"""The RFC 9293 transition tables, walked through scripted segment sequences.

h11's test style: each script is a list of segments, each with who sends it, its
flags and what the tracker would have worked out about it (what it acknowledges,
whether its receiver can accept it); after every step the test checks *both*
endpoints' states.  No packets and no tracker: these are the tables alone
(tests/test_track.py walks the same shapes through the whole tracker).
"""

from __future__ import annotations

import itertools

import pytest

from handshake_viz.model import TcpState
from handshake_viz.tcpstate import (
    TRANSITIONS,
    Event,
    Role,
    after_segment,
    initial_states,
    is_acceptable,
    next_state,
    segment_events,
)

S = TcpState
E = Event
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
FACTS = {"acks_syn": False, "syn_acked": False, "acks_fin": False, "peer_fin_unacked": False,
         "acceptable": True}


def bits(flags: str) -> int:
    out = 0
    for ch in flags:
        out |= FLAG_BITS[ch]
    return out


class Endpoints:
    """The client's and the server's states, moved one segment at a time."""

    def __init__(self, first_flags: str = "S", **states: TcpState) -> None:
        client, server = initial_states(bits(first_flags))
        self.states = {"client": states.get("client", client), "server": states.get("server", server)}

    def segment(self, who: str, flags: str, **facts: bool) -> dict[str, TcpState]:
        sender = "client" if who == "c" else "server"
        receiver = "server" if who == "c" else "client"
        self.states[sender], self.states[receiver] = after_segment(
            self.states[sender], self.states[receiver], bits(flags), **{**FACTS, **facts})
        return self.states


def walk(endpoints: Endpoints, steps: list[tuple]) -> Endpoints:
    """Each step: (who, flags, facts, client state, server state)."""
    for i, (who, flags, facts, client, server) in enumerate(steps, 1):
        got = endpoints.segment(who, flags, **facts)
        assert got == {"client": client, "server": server}, f"step {i} ({who} {flags} {facts}): {got}"
    return endpoints


HANDSHAKE = [
    ("c", "S", {}, S.SYN_SENT, S.LISTEN),
    ("s", "SA", {"syn_acked": True}, S.ESTABLISHED, S.SYN_RECEIVED),
    ("c", "A", {"acks_syn": True, "syn_acked": True}, S.ESTABLISHED, S.ESTABLISHED),
]


def established() -> Endpoints:
    return Endpoints(client=S.ESTABLISHED, server=S.ESTABLISHED)


def test_three_way_handshake_and_four_way_close():
    walk(Endpoints("S"), HANDSHAKE + [
        ("c", "PA", {}, S.ESTABLISHED, S.ESTABLISHED),  # data moves nothing
        ("c", "FA", {}, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("s", "A", {"acks_fin": True}, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("s", "FA", {}, S.TIME_WAIT, S.LAST_ACK),
        ("c", "A", {"acks_fin": True}, S.TIME_WAIT, S.CLOSED),
    ])


def test_close_with_the_middle_fin_acking_the_first():
    # RFC 9293 §3.6 figure 12's FIN,ACK: the ACK field first, then the FIN bit, so the
    # first closer goes FIN-WAIT-1 -> FIN-WAIT-2 -> TIME-WAIT, never CLOSING.
    walk(established(), [
        ("c", "FA", {}, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("s", "FA", {"acks_fin": True}, S.TIME_WAIT, S.LAST_ACK),
        ("c", "A", {"acks_fin": True}, S.TIME_WAIT, S.CLOSED),
    ])


def test_simultaneous_open():
    # §3.5 figure 7: both send a SYN, each answers the other's with a SYN,ACK.
    walk(Endpoints("S"), [
        ("c", "S", {}, S.SYN_SENT, S.LISTEN),
        ("s", "S", {}, S.SYN_RECEIVED, S.SYN_SENT),
        ("c", "SA", {"syn_acked": True}, S.SYN_RECEIVED, S.ESTABLISHED),
        ("s", "SA", {"syn_acked": True}, S.ESTABLISHED, S.ESTABLISHED),
    ])


def test_simultaneous_close_passes_through_closing():
    # §3.6 figure 13: the server's FIN does not acknowledge the client's, so the two
    # crossed; both end in CLOSING, and each ACK of a FIN takes its receiver to TIME-WAIT.
    walk(established(), [
        ("c", "FA", {}, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("s", "FA", {"peer_fin_unacked": True}, S.CLOSING, S.CLOSING),
        ("c", "A", {"acks_fin": True}, S.CLOSING, S.TIME_WAIT),
        ("s", "A", {"acks_fin": True}, S.TIME_WAIT, S.TIME_WAIT),
    ])


def test_the_crossing_fin_is_a_table_entry():
    assert TRANSITIONS[Role.SENDER][S.CLOSE_WAIT][E.FIN_CROSSING] is S.CLOSING
    assert TRANSITIONS[Role.SENDER][S.CLOSE_WAIT][E.FIN] is S.LAST_ACK
    assert segment_events(bits("FA"), **{**FACTS, "peer_fin_unacked": True})[0] == (E.FIN_CROSSING,)
    # Anywhere else a crossing FIN is a FIN.
    for state, row in TRANSITIONS[Role.SENDER].items():
        if state is not S.CLOSE_WAIT:
            assert row.get(E.FIN_CROSSING) == row.get(E.FIN), state


def test_half_close_data_keeps_flowing_after_the_first_fin():
    # §3.6.1: the endpoint that closed first still receives.
    walk(established(), [
        ("c", "FA", {}, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("s", "A", {"acks_fin": True}, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("s", "PA", {}, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("c", "A", {}, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("s", "PA", {}, S.FIN_WAIT_2, S.CLOSE_WAIT),
        ("s", "FA", {}, S.TIME_WAIT, S.LAST_ACK),
        ("c", "A", {"acks_fin": True}, S.TIME_WAIT, S.CLOSED),
    ])


def test_refused_syn_answered_by_rst():
    walk(Endpoints("S"), [
        ("c", "S", {}, S.SYN_SENT, S.LISTEN),
        ("s", "RA", {"acks_syn": True}, S.CLOSED, S.CLOSED),
    ])


@pytest.mark.parametrize("state", list(TcpState), ids=str)
def test_rst_in_each_state(state):
    """A RST closes its sender and its receiver in every state, except a receiver that
    is listening (§3.10.7.2: ignored) or already closed."""
    assert next_state(Role.SENDER, state, E.RST) is S.CLOSED
    expected = state if state in (S.LISTEN, S.CLOSED) else S.CLOSED
    assert next_state(Role.RECEIVER, state, E.RST) is expected
    # as a segment, whatever else it carries or acknowledges
    for flags in ("R", "RA", "FR", "SR"):
        got = after_segment(state, state, bits(flags), **{**FACTS, "acks_fin": True, "acks_syn": True})
        assert got == (S.CLOSED, expected), flags


@pytest.mark.parametrize("state", list(TcpState), ids=str)
def test_rst_mid_script_from_either_side(state):
    for who in "cs":
        endpoints = Endpoints(client=state, server=state)
        got = endpoints.segment(who, "RA")
        sender, receiver = ("client", "server") if who == "c" else ("server", "client")
        assert got[sender] is S.CLOSED
        assert got[receiver] is (state if state in (S.LISTEN, S.CLOSED) else S.CLOSED)


def test_moves_the_table_does_not_list_leave_the_state_alone():
    # A retransmitted FIN, a stray SYN, a SYN,ACK retransmitted after the handshake, an
    # ACK of a FIN nobody is waiting for: evidence of nothing new.
    walk(established(), [
        ("c", "FA", {}, S.FIN_WAIT_1, S.CLOSE_WAIT),
        ("c", "FA", {}, S.FIN_WAIT_1, S.CLOSE_WAIT),  # retransmission
        ("s", "S", {}, S.FIN_WAIT_1, S.CLOSE_WAIT),  # a stray SYN
        ("s", "SA", {"syn_acked": True}, S.FIN_WAIT_1, S.CLOSE_WAIT),
    ])
    assert next_state(Role.RECEIVER, S.ESTABLISHED, E.SYN) is S.ESTABLISHED
    assert next_state(Role.RECEIVER, S.TIME_WAIT, E.FIN) is S.TIME_WAIT
    assert next_state(Role.RECEIVER, S.ESTABLISHED, E.ACK_OF_FIN) is S.ESTABLISHED
    assert next_state(Role.SENDER, S.TIME_WAIT, E.FIN) is S.TIME_WAIT


def test_an_unacceptable_segment_moves_only_its_sender():
    # fin_retransmission.pcap's shape: a FIN wholly before the receiver's RCV.NXT is only
    # answered (§3.10.7.4, first check); the sender did send it.
    walk(Endpoints("S"), [
        ("c", "S", {}, S.SYN_SENT, S.LISTEN),
        ("c", "F", {}, S.FIN_WAIT_1, S.LISTEN),
        ("s", "SA", {"syn_acked": True}, S.FIN_WAIT_1, S.SYN_RECEIVED),
        ("c", "FA", {"acks_syn": True, "syn_acked": True, "acceptable": False},
         S.FIN_WAIT_1, S.SYN_RECEIVED),
        ("s", "R", {}, S.CLOSED, S.CLOSED),
    ])


def test_the_ack_of_the_syn_seen_before_the_syn_ack():
    # A reordered handshake: the client's ACK proves it got the SYN,ACK.
    walk(Endpoints("SA"), [
        ("s", "SA", {}, S.SYN_SENT, S.SYN_RECEIVED),
        ("c", "A", {"acks_syn": True, "syn_acked": True}, S.ESTABLISHED, S.ESTABLISHED),
    ])


def test_events_in_order_sender_then_receiver_ack_before_fin():
    sent, received = segment_events(bits("FA"), **{**FACTS, "acks_syn": True, "acks_fin": True})
    assert sent == (E.ACKS_PEER_SYN, E.FIN)
    assert received == (E.ACK_OF_SYN, E.ACK_OF_FIN, E.FIN)
    sent, received = segment_events(bits("FA"), **{**FACTS, "acks_fin": True, "acceptable": False})
    assert (sent, received) == ((E.FIN,), ())
    assert segment_events(bits("RA"), **FACTS) == ((E.RST,), (E.RST,))
    assert segment_events(bits("S"), **FACTS) == ((E.SYN,), (E.SYN,))
    assert segment_events(bits("SA"), **FACTS) == ((E.SYN_ACK,), ())
    assert segment_events(bits("A"), **FACTS) == ((), ())


def test_after_segment_is_its_events_through_the_tables():
    """after_segment (memoised, with a shortcut for segments that are no event) against
    segment_events walked through next_state, for every combination."""
    names = list(FACTS)
    for flags in range(0x20):
        if flags & FLAG_BITS["P"]:
            continue  # PSH changes nothing here
        for values in itertools.product([False, True], repeat=len(names)):
            facts = dict(zip(names, values))
            sent, received = segment_events(flags, **facts)
            for sender, receiver in itertools.product(TcpState, TcpState):
                want_s, want_r = sender, receiver
                for event in sent:
                    want_s = next_state(Role.SENDER, want_s, event)
                for event in received:
                    want_r = next_state(Role.RECEIVER, want_r, event)
                assert after_segment(sender, receiver, flags, **facts) == (want_s, want_r)


def test_both_tables_have_a_row_for_every_state():
    for role in Role:
        assert set(TRANSITIONS[role]) == set(TcpState), role
        for row in TRANSITIONS[role].values():
            assert all(isinstance(e, Event) and isinstance(s, TcpState) for e, s in row.items())


def test_initial_states_follow_the_first_segment():
    assert initial_states(bits("S")) == (S.CLOSED, S.LISTEN)
    assert initial_states(bits("SA")) == (S.SYN_SENT, S.LISTEN)
    assert initial_states(bits("PA")) == (S.ESTABLISHED, S.ESTABLISHED)  # mid-stream
    assert initial_states(bits("R")) == (S.ESTABLISHED, S.ESTABLISHED)


@pytest.mark.parametrize("seq, seg_len, rcv_nxt, ok", [
    (100, 0, None, True),  # the receiver never acknowledged: nothing to compare with
    (100, 10, 100, True),
    (100, 0, 100, True),
    (99, 0, 100, False),  # a keep-alive: one before RCV.NXT
    (90, 10, 100, False),  # wholly before
    (90, 11, 100, True),  # its last byte is new
    (0xFFFFFFFA, 10, 2, True),  # across the wrap
    (0xFFFFFFF0, 2, 2, False),
])
def test_acceptable_is_the_left_edge_of_the_receive_window(seq, seg_len, rcv_nxt, ok):
    assert is_acceptable(seq, seg_len, rcv_nxt) is ok
