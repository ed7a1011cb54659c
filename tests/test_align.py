"""Socket calls lined up with segments: the alignment rules, scenario by scenario.

Each scenario builds the packets of a conversation (run through the real
Tracker) and the calls strace -f -ttt -T -yy would print for the programs that
had it, on the same clock: a connect() starts ~1 ms before its SYN, a read
returns just after the segment that released it, and, as strace prints them, a
connect()ed socket has no 4-tuple yet (only the address in its sockaddr) while
every later call on it carries the full 4-tuple.  Each test states the exact
call -> frames pairs, and the inferred calls for the same segments.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import require

from handshake_viz.align import (
    SLACK,
    accept_queue_delay,
    align,
    calls_for_connection,
    infer_calls,
    timeline,
)
from handshake_viz.trace import call_facts
from handshake_viz.model import (
    Call,
    ConnectionSummary,
    Endpoint,
    Label,
    Packet,
    Segment,
)
from handshake_viz.track import Tracker

T0 = 1_700_000_000.0
MS = 1e-3
CLIENT = Endpoint("10.0.0.1", 40000)
SERVER = Endpoint("10.0.0.2", 8080)
CPID, SPID = 100, 200
CFD, LFD, SFD = 3, 3, 4  # client socket, server's listening socket, accepted socket

FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


class Capture:
    """Packets of one or more conversations on one clock; frames count from 1."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []

    def conv(self, client: Endpoint = CLIENT, server: Endpoint = SERVER, isn_c: int = 1000,
             isn_s: int = 5000) -> Conv:
        return Conv(self, client, server, isn_c, isn_s)

    def track(self) -> tuple[list[Segment], list[ConnectionSummary]]:
        times = [p.ts for p in self.packets]
        assert times == sorted(times), "build packets in time order"
        tracker = Tracker()
        segments = [tracker.feed(p) for p in self.packets]
        return segments, tracker.summaries()


class Conv:
    """One connection's segments: ``seq``/``ack`` relative to the sender's/receiver's ISN."""

    def __init__(self, cap: Capture, client: Endpoint, server: Endpoint, isn_c: int, isn_s: int):
        self.cap, self.client, self.server = cap, client, server
        self.isn = {"c": isn_c, "s": isn_s}

    def seg(self, who: str, flags: str, seq: int, ack: int = 0, length: int = 0, *, at: float,
            payload: bytes | None = None) -> int:
        """Append a segment sent at ``at`` ms; returns its frame number."""
        other = "s" if who == "c" else "c"
        src, dst = (self.client, self.server) if who == "c" else (self.server, self.client)
        bits = 0
        for ch in flags:
            bits |= FLAG_BITS[ch]
        frame = len(self.cap.packets) + 1
        raw_ack = (self.isn[other] + ack) & 0xFFFFFFFF if "A" in flags else 0
        data = payload if payload is not None else bytes(length)
        self.cap.packets.append(Packet(
            frame, T0 + at * MS, src.ip, src.port, dst.ip, dst.port,
            (self.isn[who] + seq) & 0xFFFFFFFF, raw_ack, bits, 65535, length, data))
        return frame

    def handshake(self, at: float = 1.0) -> tuple[int, int, int]:
        return (self.seg("c", "S", 0, at=at), self.seg("s", "SA", 0, 1, at=at + 0.02),
                self.seg("c", "A", 1, 1, at=at + 0.03))


def sockaddr(ep: Endpoint) -> str:
    return f'{{sa_family=AF_INET, sin_port=htons({ep.port}), sin_addr=inet_addr("{ep.ip}")}}, 16'


def call(name: str, who: str, start: float, end: float, ret: int | None = 0, *,
         errno: str | None = None, fd: int | None = -1, pid: int | None = None,
         nbytes: int | None = None, args: str = "", local: Endpoint | None | str = "auto",
         remote: Endpoint | None | str = "auto", conv: Conv | None = None) -> Call:
    """A call as the trace parser would give it (times in ms after T0).

    ``who`` is "c" (client process) or "s" (server process).  By default the call
    carries its socket's 4-tuple, as strace -yy prints it.
    """
    cl = conv.client if conv else CLIENT
    sv = conv.server if conv else SERVER
    mine, theirs = (cl, sv) if who == "c" else (sv, cl)
    if fd == -1:
        fd = CFD if who == "c" else SFD
    if name in ("read", "recvfrom", "write", "sendto") and nbytes is None and ret and ret > 0:
        nbytes = ret
    flags, how, sockaddr = call_facts(name, args)  # what the parser reads from the arguments
    return Call(
        pid=pid if pid is not None else (CPID if who == "c" else SPID),
        tid=pid if pid is not None else (CPID if who == "c" else SPID),
        fd=fd, call=name, start=T0 + start * MS, end=T0 + end * MS, ret=ret, errno=errno,
        args=args, local=mine if local == "auto" else local,  # type: ignore[arg-type]
        remote=theirs if remote == "auto" else remote, nbytes=nbytes,  # type: ignore[arg-type]
        msg_flags=flags, how=how, sockaddr=sockaddr,
    )


def client_open(start: float = 0.1, end: float = 1.05, *, conv: Conv | None = None, fd: int = CFD,
                pid: int = CPID, errno: str | None = None) -> list[Call]:
    """socket() + connect() as strace prints them: no 4-tuple yet, the address in the args."""
    sv = conv.server if conv else SERVER
    return [
        call("socket", "c", start - 0.05, start - 0.04, fd, fd=None, local=None, remote=None,
             pid=pid, args="AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP"),
        call("connect", "c", start, end, -1 if errno else 0, errno=errno, fd=fd, pid=pid,
             local=None, remote=sv, args=f"{fd}<TCP:[4711]>, {sockaddr(sv)}"),
    ]


def server_listen() -> list[Call]:
    return [
        call("socket", "s", -5.0, -4.99, LFD, fd=None, local=None, remote=None),
        call("bind", "s", -4.9, -4.89, fd=LFD, local=SERVER, remote=None, args=sockaddr(SERVER)),
        call("listen", "s", -4.8, -4.79, fd=LFD, local=SERVER, remote=None, args="8"),
    ]


def accept(start: float, end: float, *, conv: Conv | None = None, full_tuple: bool = True,
           ret: int = SFD) -> Call:
    """accept4 on the listening fd; strace -yy prints the returned fd's 4-tuple."""
    c = call("accept4", "s", start, end, ret, fd=LFD, conv=conv, args="SOCK_CLOEXEC")
    return c if full_tuple else replace(c, remote=None)


def pairs(calls: list[Call], segments: list[Segment], summaries: list[ConnectionSummary]):
    got = align(segments, summaries, calls)
    assert len(got) == len(calls)
    for before, after in zip(calls, got):
        assert replace(after, conn=before.conn, frames=before.frames) == before  # nothing else changed
    return [(c.call, c.conn, c.frames) for c in got]


def inferred(segments: list[Segment], summary: ConnectionSummary):
    calls = infer_calls(segments, summary)
    assert all(c.inferred and c.pid == 0 and c.fd is None and c.conn == summary.conn for c in calls)
    return [(side_of(c, summary), c.call, c.ret, c.errno, c.frames) for c in calls]


def side_of(c: Call, summary: ConnectionSummary) -> str:
    return "c" if c.local == summary.client else "s"


# ==========================================================================================
# The scenarios of the issue
# ==========================================================================================


def echo_conversation():
    """connect/accept, an echo with a piggybacked ACK, the client closes first."""
    cap = Capture()
    cv = cap.conv()
    syn, synack, ack = cv.handshake(at=1.0)
    d1 = cv.seg("c", "PA", 1, 1, 6, at=2.0)  # client writes HELLO\n
    a1 = cv.seg("s", "A", 1, 7, at=2.02)
    e1 = cv.seg("s", "PA", 1, 7, 6, at=3.0)  # server echoes
    d2 = cv.seg("c", "PA", 7, 7, 6, at=4.0)  # client's next write acks the echo: PIGGYBACK
    e2 = cv.seg("s", "PA", 7, 13, 6, at=5.0)  # PIGGYBACK
    a2 = cv.seg("c", "A", 13, 13, at=5.1)
    fin_c = cv.seg("c", "FA", 13, 13, at=6.0)  # client close()
    fin_s = cv.seg("s", "FA", 13, 14, at=6.5)  # server close() in CLOSE-WAIT: -> LAST-ACK
    last = cv.seg("c", "A", 14, 14, at=6.52)
    return cap, {"syn": syn, "synack": synack, "ack": ack, "d1": d1, "a1": a1, "e1": e1, "d2": d2,
                 "e2": e2, "a2": a2, "fin_c": fin_c, "fin_s": fin_s, "last": last}


def test_handshake_and_exchange_with_piggybacked_ack():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    assert [segments[f[k] - 1].label for k in ("d2", "e2")] == [Label.PIGGYBACK, Label.PIGGYBACK]
    calls = server_listen() + [accept(0.0, 1.1)] + client_open(0.1, 1.05) + [
        call("recvfrom", "s", 1.2, 2.05, 6),
        call("sendto", "c", 1.9, 2.05, 6),
        call("recvfrom", "c", 2.1, 3.05, 6),
        call("sendto", "s", 2.9, 3.05, 6),
        call("recvfrom", "s", 3.1, 4.05, 6),
        call("sendto", "c", 3.9, 4.05, 6),
        call("recvfrom", "c", 4.1, 5.05, 6),
        call("sendto", "s", 4.9, 5.05, 6),
        call("recvfrom", "s", 5.1, 6.05, 0),
        call("close", "c", 5.9, 6.05),
        call("close", "s", 6.4, 6.55),
        call("close", "s", 6.6, 6.61, fd=LFD, local=SERVER, remote=None),
    ]
    assert pairs(calls, segments, summaries) == [
        ("socket", None, ()), ("bind", None, ()), ("listen", None, ()),
        ("accept4", 0, (f["ack"],)),
        ("socket", 0, ()),
        ("connect", 0, (f["syn"], f["synack"])),
        ("recvfrom", 0, (f["d1"],)),
        ("sendto", 0, (f["d1"],)),
        ("recvfrom", 0, (f["e1"],)),
        ("sendto", 0, (f["e1"],)),
        ("recvfrom", 0, (f["d2"],)),
        ("sendto", 0, (f["d2"],)),
        ("recvfrom", 0, (f["e2"],)),
        ("sendto", 0, (f["e2"],)),
        ("recvfrom", 0, (f["fin_c"],)),  # read() -> 0: the peer's FIN
        ("close", 0, (f["fin_c"],)),
        ("close", 0, (f["fin_s"],)),  # close after the peer's FIN: the LAST-ACK path
        ("close", None, ()),  # the listening socket belongs to no connection
    ]


def test_handshake_inferred():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "connect", 0, None, (f["syn"], f["synack"])),
        ("s", "accept", None, None, (f["ack"],)),
        ("c", "write", 6, None, (f["d1"],)),
        ("s", "read", 6, None, (f["d1"],)),
        ("s", "write", 6, None, (f["e1"],)),
        ("c", "read", 6, None, (f["e1"],)),
        ("c", "write", 6, None, (f["d2"],)),
        ("s", "read", 6, None, (f["d2"],)),
        ("s", "write", 6, None, (f["e2"],)),
        ("c", "read", 6, None, (f["e2"],)),
        ("c", "close", 0, None, (f["fin_c"],)),
        ("s", "read", 0, None, (f["fin_c"],)),  # the server reads the end of the stream
        ("s", "close", 0, None, (f["fin_s"],)),  # the client had closed: no read -> 0 for it
    ]
    inf = infer_calls(segments, summaries[0])
    connect = inf[0]
    assert (connect.start, connect.end) == (segments[f["syn"] - 1].ts, segments[f["synack"] - 1].ts)
    assert connect.local == CLIENT and connect.remote == SERVER


def test_accept_that_returns_the_fd_only_uses_the_fds_lifetime():
    """If the parser gives accept() only the listening address, the fd it returned decides."""
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    calls = [accept(0.0, 1.1, full_tuple=False)] + client_open() + [call("recvfrom", "s", 1.2, 2.05, 6)]
    assert pairs(calls, segments, summaries)[0] == ("accept4", 0, (f["ack"],))
    assert pairs(calls, segments, summaries)[-1] == ("recvfrom", 0, (f["d1"],))


def test_one_write_split_into_two_segments():
    cap = Capture()
    cv = cap.conv()
    syn, synack, _ = cv.handshake()
    s1 = cv.seg("c", "A", 1, 1, 1448, at=2.0)
    s2 = cv.seg("c", "PA", 1449, 1, 1552, at=2.01)
    cv.seg("s", "A", 1, 3001, at=2.03)
    segments, summaries = cap.track()
    calls = client_open() + [
        call("sendto", "c", 1.9, 2.05, 3000),
        call("recvfrom", "s", 2.2, 2.25, 2048),  # the first 2048 bytes span both segments
        call("recvfrom", "s", 2.3, 2.35, 952),
    ]
    assert pairs(calls, segments, summaries)[1:] == [
        ("connect", 0, (syn, synack)), ("sendto", 0, (s1, s2)),
        ("recvfrom", 0, (s1, s2)), ("recvfrom", 0, (s2,)),
    ]
    assert inferred(segments, summaries[0])[2:] == [
        ("c", "write", 3000, None, (s1, s2)),  # one burst: no PSH until the second segment
        ("s", "read", 3000, None, (s1, s2)),
    ]


def test_two_writes_coalesced_into_one_segment():
    cap = Capture()
    cv = cap.conv()
    cv.handshake()
    both = cv.seg("c", "PA", 1, 1, 6, at=2.2)  # Nagle: "HEL" and "LO\n" leave together
    cv.seg("s", "A", 1, 7, at=2.22)
    part = cv.seg("c", "A", 7, 1, 2, at=3.0)  # then a 4-byte and a 4-byte write as 2 + 6
    rest = cv.seg("c", "PA", 9, 1, 6, at=3.1)
    segments, summaries = cap.track()
    calls = client_open() + [
        call("sendto", "c", 2.0, 2.05, 3),
        call("sendto", "c", 2.1, 2.15, 3),
        call("recvfrom", "s", 2.25, 2.3, 6),
        call("sendto", "c", 2.9, 2.95, 4),
        call("sendto", "c", 2.96, 3.05, 4),
    ]
    assert pairs(calls, segments, summaries)[2:] == [
        ("sendto", 0, (both,)), ("sendto", 0, (both,)), ("recvfrom", 0, (both,)),
        ("sendto", 0, (part, rest)), ("sendto", 0, (rest,)),
    ]
    assert inferred(segments, summaries[0])[2:] == [
        ("c", "write", 6, None, (both,)), ("s", "read", 6, None, (both,)),
        ("c", "write", 8, None, (part, rest)), ("s", "read", 8, None, (part, rest)),
    ]


def half_close_conversation():
    cap = Capture()
    cv = cap.conv()
    syn, synack, ack = cv.handshake()
    data = cv.seg("c", "PA", 1, 1, 6, at=2.0)
    cv.seg("s", "A", 1, 7, at=2.02)
    fin_c = cv.seg("c", "FA", 7, 1, at=3.0)  # shutdown(SHUT_WR)
    cv.seg("s", "A", 1, 8, at=3.05)
    reply = cv.seg("s", "PA", 1, 8, 6, at=4.0)  # data still flows the other way
    cv.seg("c", "A", 8, 7, at=4.02)
    fin_s = cv.seg("s", "FA", 7, 8, at=5.0)
    cv.seg("c", "A", 8, 8, at=5.02)
    return cap, {"syn": syn, "synack": synack, "ack": ack, "data": data, "fin_c": fin_c,
                 "reply": reply, "fin_s": fin_s}


def test_half_close_with_shutdown():
    cap, f = half_close_conversation()
    segments, summaries = cap.track()
    calls = [accept(0.0, 1.1)] + client_open() + [
        call("sendto", "c", 1.9, 2.05, 6),
        call("recvfrom", "s", 1.2, 2.05, 6),
        call("shutdown", "c", 2.9, 3.05, args="3<TCP:[10.0.0.1:40000->10.0.0.2:8080]>, SHUT_WR"),
        call("recvfrom", "s", 2.1, 3.05, 0),
        call("sendto", "s", 3.9, 4.05, 6),
        call("recvfrom", "c", 3.1, 4.05, 6),
        call("close", "s", 4.9, 5.05),
        call("recvfrom", "c", 4.1, 5.05, 0),
        call("close", "c", 5.1, 5.15),  # its FIN went with the shutdown: sends nothing
    ]
    assert pairs(calls, segments, summaries) == [
        ("accept4", 0, (f["ack"],)), ("socket", 0, ()), ("connect", 0, (f["syn"], f["synack"])),
        ("sendto", 0, (f["data"],)), ("recvfrom", 0, (f["data"],)),
        ("shutdown", 0, (f["fin_c"],)), ("recvfrom", 0, (f["fin_c"],)),
        ("sendto", 0, (f["reply"],)), ("recvfrom", 0, (f["reply"],)),
        ("close", 0, (f["fin_s"],)), ("recvfrom", 0, (f["fin_s"],)),
        ("close", 0, ()),
    ]


def test_half_close_inferred():
    cap, f = half_close_conversation()
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "connect", 0, None, (f["syn"], f["synack"])),
        ("s", "accept", None, None, (f["ack"],)),
        ("c", "write", 6, None, (f["data"],)),
        ("s", "read", 6, None, (f["data"],)),
        ("c", "shutdown", 0, None, (f["fin_c"],)),  # the server still sent data after it
        ("s", "read", 0, None, (f["fin_c"],)),
        ("s", "write", 6, None, (f["reply"],)),
        ("c", "read", 6, None, (f["reply"],)),
        ("s", "close", 0, None, (f["fin_s"],)),
        ("c", "read", 0, None, (f["fin_s"],)),  # a half-closed client reads to the end
    ]
    shut = [c for c in infer_calls(segments, summaries[0]) if c.call == "shutdown"]
    assert shut[0].args == "SHUT_WR"


def test_shutdown_rd_sends_nothing_and_close_takes_the_fin():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    calls = client_open() + [
        call("shutdown", "c", 5.5, 5.6, args="3<TCP:[10.0.0.1:40000->10.0.0.2:8080]>, SHUT_RD"),
        call("close", "c", 5.9, 6.05),
    ]
    assert pairs(calls, segments, summaries)[2:] == [("shutdown", 0, ()), ("close", 0, (f["fin_c"],))]


def refused_capture(second_at: float | None = None):
    cap = Capture()
    cv = cap.conv()
    frames = [cv.seg("c", "S", 0, at=1.0), cv.seg("s", "RA", 1, 1, at=1.01)]
    if second_at is not None:
        cv2 = cap.conv(client=Endpoint("10.0.0.1", 40001), isn_c=7000)
        frames += [cv2.seg("c", "S", 0, at=second_at), cv2.seg("s", "RA", 1, 1, at=second_at + 0.01)]
    return cap, frames


def test_refused_connect_without_a_4tuple_matches_by_address_and_time():
    cap, (syn, rst) = refused_capture()
    segments, summaries = cap.track()
    assert summaries[0].conn_state == "REJ"
    calls = client_open(0.1, 1.05, errno="ECONNREFUSED") + [
        call("close", "c", 4.0, 4.01, local=None, remote=None),  # strace: 3<TCP:[4711]>, no tuple
    ]
    assert pairs(calls, segments, summaries) == [
        ("socket", 0, ()), ("connect", 0, (syn, rst)), ("close", 0, ()),
    ]
    # the parser may leave ``remote`` empty: the sockaddr in the arguments is enough
    bare = [replace(c, remote=None) for c in calls]
    assert pairs(bare, segments, summaries)[1] == ("connect", 0, (syn, rst))
    assert inferred(segments, summaries[0]) == [("c", "connect", -1, "ECONNREFUSED", (syn, rst))]


def test_refused_connect_far_from_the_syn_or_of_the_wrong_outcome_is_not_matched():
    cap, _ = refused_capture()
    segments, summaries = cap.track()
    late = client_open(100.0, 100.2, errno="ECONNREFUSED")  # 99 ms after the SYN/RST pair
    assert pairs(late, segments, summaries)[1] == ("connect", None, ())
    ok = client_open(0.1, 1.05)  # it "succeeded", but this connection was refused
    assert pairs(ok, segments, summaries)[1] == ("connect", None, ())


def test_two_refused_connects_to_one_server():
    # 50 ms apart: each call finds its own connection
    cap, (syn1, rst1, syn2, rst2) = refused_capture(second_at=51.0)
    segments, summaries = cap.track()
    calls = (client_open(0.1, 1.05, errno="ECONNREFUSED")
             + client_open(50.1, 51.05, errno="ECONNREFUSED", fd=5))
    got = pairs(calls, segments, summaries)
    assert [got[1], got[3]] == [("connect", 0, (syn1, rst1)), ("connect", 1, (syn2, rst2))]
    # at the same instant from two threads: no way to tell which is which, so no guess
    cap, _ = refused_capture(second_at=1.02)
    segments, summaries = cap.track()
    calls = (client_open(0.1, 1.05, errno="ECONNREFUSED")
             + client_open(0.1, 1.05, errno="ECONNREFUSED", fd=5, pid=101))
    got = pairs(calls, segments, summaries)
    assert [got[1], got[3]] == [("connect", None, ()), ("connect", None, ())]


def unread_conversation():
    cap = Capture()
    cv = cap.conv()
    syn, synack, ack = cv.handshake()
    data = cv.seg("c", "PA", 1, 1, 12, at=2.0)
    cv.seg("s", "A", 1, 13, at=2.02)
    rst = cv.seg("s", "RA", 1, 13, at=50.0)  # closed with 9 bytes unread
    return cap, {"syn": syn, "synack": synack, "ack": ack, "data": data, "rst": rst}


def test_close_with_unread_data_sends_rst_and_the_peer_gets_econnreset():
    cap, f = unread_conversation()
    segments, summaries = cap.track()
    calls = [accept(0.0, 1.1)] + client_open() + [
        call("sendto", "c", 1.9, 2.05, 12),
        call("recvfrom", "s", 2.1, 2.15, 3),
        call("close", "s", 49.8, 50.05),
        call("recvfrom", "c", 100.0, 100.01, -1, errno="ECONNRESET"),
        call("close", "c", 100.5, 100.51),
    ]
    assert pairs(calls, segments, summaries) == [
        ("accept4", 0, (f["ack"],)), ("socket", 0, ()), ("connect", 0, (f["syn"], f["synack"])),
        ("sendto", 0, (f["data"],)), ("recvfrom", 0, (f["data"],)),
        ("close", 0, (f["rst"],)),
        ("recvfrom", 0, (f["rst"],)),
        ("close", 0, ()),
    ]
    assert inferred(segments, summaries[0]) == [
        ("c", "connect", 0, None, (f["syn"], f["synack"])),
        ("s", "accept", None, None, (f["ack"],)),
        ("c", "write", 12, None, (f["data"],)),
        ("s", "read", 12, None, (f["data"],)),
        ("s", "close", 0, None, (f["rst"],)),
        ("c", "read", -1, "ECONNRESET", (f["rst"],)),
    ]


def test_rst_answering_data_after_close_belongs_to_no_call():
    cap = Capture()
    cv = cap.conv()
    cv.handshake()
    fin = cv.seg("s", "FA", 1, 1, at=2.0)  # server closes first
    cv.seg("c", "A", 1, 2, at=2.02)
    late = cv.seg("c", "PA", 1, 2, 5, at=30.0)  # the client writes anyway
    rst = cv.seg("s", "R", 2, at=30.01)  # the closed socket answers with a RST
    segments, summaries = cap.track()
    calls = [accept(0.0, 1.1), call("close", "s", 1.9, 2.05)] + client_open() + [
        call("sendto", "c", 29.9, 30.05, 5),
        call("sendto", "c", 40.0, 40.01, -1, errno="EPIPE"),
    ]
    assert pairs(calls, segments, summaries)[1:2] + pairs(calls, segments, summaries)[4:] == [
        ("close", 0, (fin,)), ("sendto", 0, (late,)), ("sendto", 0, (rst,)),
    ]
    inf = inferred(segments, summaries[0])
    assert ("s", "close", 0, None, (fin,)) in inf
    assert not any(c[:2] == ("s", "close") and c[4] == (rst,) for c in inf)
    assert ("c", "read", -1, "ECONNRESET", (rst,)) in inf


def test_accept_called_after_a_delay_returns_long_after_the_ack():
    cap = Capture()
    cv = cap.conv()
    _, _, ack = cv.handshake()
    d1 = cv.seg("c", "PA", 1, 1, 3, at=2.0)  # the kernel takes data before accept() is called
    cv.seg("s", "A", 1, 4, at=2.01)
    d2 = cv.seg("c", "PA", 4, 1, 3, at=2.1)
    cv.seg("s", "A", 1, 7, at=2.11)
    echo = cv.seg("s", "PA", 1, 7, 6, at=200.2)
    segments, summaries = cap.track()
    calls = server_listen() + client_open() + [
        call("sendto", "c", 1.9, 2.05, 3), call("sendto", "c", 2.06, 2.15, 3),
        accept(200.0, 200.05),  # called 199 ms late: returns at once
        call("recvfrom", "s", 200.1, 200.12, 6),
        call("sendto", "s", 200.15, 200.25, 6),
    ]
    got = align(segments, summaries, calls)
    assert [(c.call, c.frames) for c in got[5:]] == [
        ("sendto", (d1,)), ("sendto", (d2,)), ("accept4", (ack,)),
        ("recvfrom", (d1, d2)), ("sendto", (echo,)),
    ]
    acc = got[7]
    assert acc.end > segments[ack - 1].ts + 0.19
    assert accept_queue_delay(acc, segments) == pytest.approx(0.199 - 0.00003, abs=1e-6)
    blocked = align(segments, summaries, [accept(0.0, 1.1)])[0]
    assert accept_queue_delay(blocked, segments) < 0  # it was waiting before the ACK came
    assert accept_queue_delay(got[6], segments) is None  # not an accept
    assert inferred(segments, summaries[0])[1] == ("s", "accept", None, None, (ack,))


# ==========================================================================================
# More rules: retransmissions, descriptors shared by processes, reuse, addresses, attach
# ==========================================================================================


def test_retransmissions_are_not_listed():
    cap = Capture()
    cv = cap.conv()
    syn = cv.seg("c", "S", 0, at=1.0)
    cv.seg("c", "S", 0, at=1001.0)  # the first SYN-ACK was lost: the SYN is resent
    synack = cv.seg("s", "SA", 0, 1, at=1001.02)
    cv.seg("c", "A", 1, 1, at=1001.03)
    data = cv.seg("c", "PA", 1, 1, 6, at=1002.0)
    again = cv.seg("c", "PA", 1, 1, 6, at=1210.0)  # RTO
    cv.seg("s", "A", 1, 7, at=1210.02)
    segments, summaries = cap.track()
    assert segments[again - 1].analysis  # track flags it
    calls = client_open(0.1, 1001.05) + [call("sendto", "c", 1001.9, 1002.05, 6),
                                          call("recvfrom", "s", 1210.03, 1210.05, 6)]
    assert pairs(calls, segments, summaries)[1:] == [
        ("connect", 0, (syn, synack)), ("sendto", 0, (data,)), ("recvfrom", 0, (data,)),
    ]
    inf = inferred(segments, summaries[0])
    assert inf[0] == ("c", "connect", 0, None, (syn, synack))
    assert [c for c in inf if c[1] == "write"] == [("c", "write", 6, None, (data,))]


def test_forking_server_only_the_last_close_sends_the_fin():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    child = 201
    calls = [accept(0.0, 1.1),
             call("close", "s", 1.15, 1.16),  # the parent drops its copy of the fd
             call("recvfrom", "s", 1.2, 2.05, 6, pid=child),  # the child inherited fd 4
             call("sendto", "s", 2.9, 3.05, 6, pid=child),
             call("close", "s", 6.4, 6.55, pid=child)]
    assert pairs(calls, segments, summaries) == [
        ("accept4", 0, (f["ack"],)), ("close", 0, ()),
        ("recvfrom", 0, (f["d1"],)), ("sendto", 0, (f["e1"],)), ("close", 0, (f["fin_s"],)),
    ]


def test_port_reuse_tells_connections_apart_by_time():
    cap = Capture()
    first, second = cap.conv(isn_c=1000), cap.conv(isn_c=900000)
    syn1, synack1, _ = first.handshake(at=1.0)
    d1 = first.seg("c", "PA", 1, 1, 4, at=2.0)
    fin1 = first.seg("c", "FA", 5, 1, at=3.0)
    first.seg("s", "FA", 1, 6, at=3.1)
    first.seg("c", "A", 6, 2, at=3.2)
    syn2, synack2, _ = second.handshake(at=1001.0)
    d2 = second.seg("c", "PA", 1, 1, 4, at=1002.0)
    segments, summaries = cap.track()
    assert len(summaries) == 2
    calls = (client_open(0.1, 1.05) + [call("sendto", "c", 1.9, 2.05, 4), call("close", "c", 2.9, 3.05)]
             + client_open(1000.1, 1001.05) + [call("sendto", "c", 1001.9, 1002.05, 4)])
    assert pairs(calls, segments, summaries) == [
        ("socket", 0, ()), ("connect", 0, (syn1, synack1)), ("sendto", 0, (d1,)), ("close", 0, (fin1,)),
        ("socket", 1, ()), ("connect", 1, (syn2, synack2)), ("sendto", 1, (d2,)),
    ]


def test_ipv4_mapped_addresses_match_the_ipv4_capture():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    mapped_srv = Endpoint("::ffff:10.0.0.2", 8080)
    mapped_cli = Endpoint("::ffff:10.0.0.1", 40000)
    c = call("recvfrom", "s", 1.2, 2.05, 6, local=mapped_srv, remote=mapped_cli)
    assert pairs([c], segments, summaries) == [("recvfrom", 0, (f["d1"],))]


def test_calls_of_unknown_sockets_stay_unmatched_and_keep_their_order():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    other = Endpoint("10.9.9.9", 443)
    calls = [call("sendto", "c", 1.9, 2.05, 6, local=CLIENT, remote=other),
             call("read", "c", 1.0, 1.1, 5, fd=7, local=None, remote=None),
             call("sendto", "c", 1.9, 2.05, 6)]
    assert pairs(calls, segments, summaries) == [
        ("sendto", None, ()), ("read", None, ()), ("sendto", 0, (f["d1"],)),
    ]
    already = replace(infer_calls(segments, summaries[0])[0])
    assert align(segments, summaries, [already]) == [already]  # inferred calls pass through


def test_trace_attached_mid_stream_is_pinned_by_time():
    """strace -p after the first exchange: byte 0 of the trace is not relative seq 1."""
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    calls = [
        call("recvfrom", "c", 2.1, 3.05, 6),
        call("sendto", "c", 3.9, 4.05, 6),
        call("recvfrom", "c", 4.1, 5.05, 6),
        call("close", "c", 5.9, 6.05),
    ]
    assert pairs(calls, segments, summaries) == [
        ("recvfrom", 0, (f["e1"],)), ("sendto", 0, (f["d2"],)), ("recvfrom", 0, (f["e2"],)),
        ("close", 0, (f["fin_c"],)),
    ]
    later = [call("sendto", "c", 3.9, 4.05, 6), call("recvfrom", "c", 4.1, 5.05, 6)]
    assert pairs(later, segments, summaries) == [("sendto", 0, (f["d2"],)), ("recvfrom", 0, (f["e2"],))]


def test_capture_started_mid_stream_is_pinned_by_time():
    """No SYN captured: relative seq 1 is the first captured byte, not the first written."""
    cap = Capture()
    cv = cap.conv()
    d1 = cv.seg("c", "PA", 101, 1, 6, at=2.0)  # 100 bytes were sent before the capture began
    cv.seg("s", "A", 1, 107, at=2.01)
    d2 = cv.seg("c", "PA", 107, 1, 6, at=3.0)
    segments, summaries = cap.track()
    calls = client_open() + [call("sendto", "c", 0.5, 0.6, 100),  # before the capture
                             call("sendto", "c", 1.9, 2.05, 6), call("sendto", "c", 2.9, 3.05, 6)]
    got = pairs(calls, segments, summaries)
    assert got[3:] == [("sendto", 0, (d1,)), ("sendto", 0, (d2,))]


def test_attached_trace_agrees_with_the_full_trace():
    """Dropping socket/connect/accept (strace -p after they ran) must not move any frame."""
    cap, _ = half_close_conversation()
    segments, summaries = cap.track()
    calls = [accept(0.0, 1.1)] + client_open() + [
        call("sendto", "c", 1.9, 2.05, 6), call("recvfrom", "s", 1.2, 2.05, 6),
        call("shutdown", "c", 2.9, 3.05, args="SHUT_WR"), call("recvfrom", "s", 2.1, 3.05, 0),
        call("sendto", "s", 3.9, 4.05, 6), call("recvfrom", "c", 3.1, 4.05, 6),
        call("close", "s", 4.9, 5.05), call("recvfrom", "c", 4.1, 5.05, 0),
    ]
    full = align(segments, summaries, calls)
    late = [c for c in calls if c.call not in ("socket", "connect", "accept4")]
    attached = align(segments, summaries, late)
    assert [c.frames for c in attached] == [c.frames for c in full[3:]]
    assert all(c.frames for c in attached)


def test_fd_number_closed_and_reused_at_one_instant():
    cap, (syn1, rst1, syn2, rst2) = refused_capture(second_at=51.0)
    segments, summaries = cap.track()
    first = client_open(0.1, 1.05, errno="ECONNREFUSED")
    second = client_open(50.1, 51.05, errno="ECONNREFUSED")
    # the close of the first socket and the socket() returning fd 3 again share a timestamp
    close = call("close", "c", 50.04, 50.05, local=None, remote=None)
    second[0] = replace(second[0], start=T0 + 50.0 * MS, end=T0 + 50.04 * MS)
    got = pairs(first + [close] + second, segments, summaries)
    assert got == [("socket", 0, ()), ("connect", 0, (syn1, rst1)), ("close", 0, ()),
                   ("socket", 1, ()), ("connect", 1, (syn2, rst2))]


def test_peek_reads_list_the_bytes_without_consuming_them():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    calls = [accept(0.0, 1.1),
             call("recvfrom", "s", 1.2, 2.05, 6, args="4<TCP:[...]>, \"HELLO\\n\", 4096, MSG_PEEK, NULL, NULL"),
             call("recvfrom", "s", 2.06, 2.07, 6),
             call("recvfrom", "s", 3.1, 4.05, 6)]
    assert pairs(calls, segments, summaries)[1:] == [
        ("recvfrom", 0, (f["d1"],)), ("recvfrom", 0, (f["d1"],)), ("recvfrom", 0, (f["d2"],)),
    ]


def test_nonblocking_connect_and_poll():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    calls = client_open(0.1, 0.2, errno="EINPROGRESS") + [
        call("poll", "c", 0.25, 1.05, 1, args="[{fd=3, events=POLLOUT}], 1, 5000"),
        call("poll", "c", 2.1, 3.05, 1, args="[{fd=3, events=POLLIN}], 1, 5000"),
        call("recvfrom", "c", 3.06, 3.07, 6),
        call("recvfrom", "c", 3.1, 3.11, -1, errno="EAGAIN"),
    ]
    assert pairs(calls, segments, summaries)[1:] == [
        ("connect", 0, (f["syn"],)),
        ("poll", 0, (f["synack"],)), ("poll", 0, (f["e1"],)),
        ("recvfrom", 0, (f["e1"],)), ("recvfrom", 0, ()),
    ]


def test_slack_is_the_only_time_tolerance():
    cap, (syn, rst) = refused_capture()
    segments, summaries = cap.track()
    calls = client_open(20.0, 20.1, errno="ECONNREFUSED")  # printed 19 ms after the SYN
    assert pairs(calls, segments, summaries)[1] == ("connect", None, ())
    assert align(segments, summaries, calls, slack=0.025)[1].frames == (syn, rst)
    assert SLACK < 0.019


# ==========================================================================================
# Inferred calls only for a side that had a socket
# ==========================================================================================


def test_syn_abandoned_by_the_client_gives_the_server_no_calls():
    """SYN, then the client's own RST (corpus syn-then-rst): nothing reached a server socket."""
    cap = Capture()
    cv = cap.conv()
    syn = cv.seg("c", "S", 0, at=1.0)
    rst = cv.seg("c", "R", 0, at=1.3)
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "connect", -1, "EINPROGRESS", (syn,)),  # it closed before any answer: connect() had not waited
        ("c", "close", 0, None, (rst,)),
    ]


def test_half_open_handshake_reset_by_the_client_gives_the_server_no_calls():
    """SYN, SYN-ACK, the client's RST (a SYN scan): the handshake never completed."""
    cap = Capture()
    cv = cap.conv()
    syn = cv.seg("c", "S", 0, at=1.0)
    synack = cv.seg("s", "SA", 0, 1, at=1.02)
    rst = cv.seg("c", "R", 1, at=1.03)
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "connect", 0, None, (syn, synack)),
        ("c", "close", 0, None, (rst,)),
    ]


def test_unacceptable_ack_does_not_complete_the_handshake():
    """Corpus fin_retransmission: the client's FIN comes before the SYN-ACK; its FIN+ACK
    repeats the SYN's sequence number, which SYN-RECEIVED drops unread (RFC 9293
    3.10.7.4, first check); the server's later RST is its kernel's, for no socket."""
    cap = Capture()
    cv = cap.conv()
    syn = cv.seg("c", "S", 0, at=1.0)
    fin = cv.seg("c", "F", 0, at=290.0)
    cv.seg("s", "SA", 0, 1, at=305.0)
    cv.seg("c", "FA", 0, 1, at=307.0)
    cv.seg("s", "R", 1, at=610.0)
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "connect", -1, "EINPROGRESS", (syn,)),
        ("c", "close", 0, None, (fin,)),
    ]
    # a traced accept() would not be released by that segment either
    got = align(segments, summaries, [accept(0.0, 400.0)])
    assert got[0].frames == ()


def test_lone_rst_implies_no_call():
    cap = Capture()
    cap.conv().seg("c", "R", 1, at=1.0)
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == []


def test_server_without_its_handshake_ack_captured_still_has_calls():
    """The server's data shows it was connected even when the capture missed the ACK."""
    cap = Capture()
    cv = cap.conv()
    cv.seg("c", "S", 0, at=1.0)
    cv.seg("s", "SA", 0, 1, at=1.02)
    data = cv.seg("s", "PA", 1, 1, 5, at=2.0)  # a greeting; the client's ACK was not captured
    segments, summaries = cap.track()
    assert ("s", "write", 5, None, (data,)) in inferred(segments, summaries[0])


def test_capture_started_mid_stream_infers_both_sides():
    cap = Capture()
    cv = cap.conv()
    d1 = cv.seg("c", "PA", 101, 1, 6, at=2.0)
    cv.seg("s", "A", 1, 107, at=2.01)
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "write", 6, None, (d1,)), ("s", "read", 6, None, (d1,)),
    ]


# ==========================================================================================
# Calls on one segment: a FIN that carries data, data in the SYN (TCP Fast Open)
# ==========================================================================================


def test_fin_carrying_data_is_written_before_the_close_and_read_before_eof():
    """The server's last bytes ride on its FIN: write() then close(); the client reads the
    bytes, then read() returns 0 -- never the other way round."""
    cap = Capture()
    cv = cap.conv()
    syn, synack, ack = cv.handshake()
    req = cv.seg("c", "PA", 1, 1, 6, at=2.0)
    last = cv.seg("s", "FPA", 1, 7, 188, at=3.0)  # 188 bytes and the FIN in one segment
    fin_c = cv.seg("c", "FA", 7, 190, at=3.1)
    cv.seg("s", "A", 190, 8, at=3.12)
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "connect", 0, None, (syn, synack)),
        ("s", "accept", None, None, (ack,)),
        ("c", "write", 6, None, (req,)),
        ("s", "read", 6, None, (req,)),
        ("s", "write", 188, None, (last,)),
        ("c", "read", 188, None, (last,)),
        ("s", "close", 0, None, (last,)),
        ("c", "read", 0, None, (last,)),
        ("c", "close", 0, None, (fin_c,)),
    ]
    by = {(side_of(c, summaries[0]), c.call, c.ret): c for c in infer_calls(segments, summaries[0])}
    assert by[("s", "write", 188)].end <= by[("s", "close", 0)].start
    assert by[("c", "read", 188)].end <= by[("c", "read", 0)].start


def test_fin_ending_a_burst_of_data():
    """A write split over two segments, the second also carrying the FIN."""
    cap = Capture()
    cv = cap.conv()
    syn, synack, ack = cv.handshake()
    d1 = cv.seg("s", "A", 1, 1, 1000, at=2.0)
    d2 = cv.seg("s", "FPA", 1001, 1, 500, at=2.1)
    fin_c = cv.seg("c", "FA", 1, 1502, at=3.0)
    cv.seg("s", "A", 1502, 2, at=3.02)
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "connect", 0, None, (syn, synack)),
        ("s", "accept", None, None, (ack,)),
        ("s", "write", 1500, None, (d1, d2)),
        ("c", "read", 1500, None, (d1, d2)),
        ("s", "close", 0, None, (d2,)),
        ("c", "read", 0, None, (d2,)),
        ("c", "close", 0, None, (fin_c,)),
    ]


def fast_open_conversation(*, taken: bool = True):
    """Data in the SYN.  ``taken``: the SYN-ACK acknowledges it (RFC 7413 Fast Open with a
    valid cookie); else it acknowledges the SYN only and the client sends the data again."""
    cap = Capture()
    cv = cap.conv()
    f = {"syn": cv.seg("c", "S", 0, length=40, at=1.0)}
    if taken:
        f["synack"] = cv.seg("s", "SA", 0, 41, at=1.02)
        f["ack"] = cv.seg("c", "A", 41, 1, at=1.03)
        seq = 41
    else:
        f["synack"] = cv.seg("s", "SA", 0, 1, at=1.02)
        f["ack"] = cv.seg("c", "A", 1, 1, at=1.03)
        f["resent"] = cv.seg("c", "PA", 1, 1, 40, at=1.04)
        cv.seg("s", "A", 1, 41, at=1.06)
        seq = 41
    f["reply"] = cv.seg("s", "PA", 1, seq, 300, at=2.0)
    f["fin_s"] = cv.seg("s", "FA", 301, seq, at=2.01)
    f["fin_c"] = cv.seg("c", "FA", seq, 302, at=2.1)
    cv.seg("s", "A", 302, seq + 1, at=2.12)
    return cap, f


def test_fast_open_inferred_connects_then_accepts_then_reads():
    cap, f = fast_open_conversation()
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0]) == [
        ("c", "sendto", 40, None, (f["syn"], f["synack"])),  # connects and sends in one call
        ("s", "accept", None, None, (f["syn"],)),  # queued at the SYN, before the handshake ACK
        ("s", "read", 40, None, (f["syn"],)),  # the data was readable at once
        ("s", "write", 300, None, (f["reply"],)),
        ("c", "read", 300, None, (f["reply"],)),
        ("s", "close", 0, None, (f["fin_s"],)),
        ("c", "read", 0, None, (f["fin_s"],)),
        ("c", "close", 0, None, (f["fin_c"],)),
    ]
    calls = infer_calls(segments, summaries[0])
    opener, acc, read = calls[:3]
    assert opener.args == "MSG_FASTOPEN" and opener.nbytes == 40
    syn_ts, synack_ts = segments[f["syn"] - 1].ts, segments[f["synack"] - 1].ts
    assert (opener.start, opener.end) == (syn_ts, synack_ts)
    assert acc.end <= read.start and acc.start >= opener.start


def test_fast_open_data_refused_by_the_server_is_read_where_it_was_sent_again():
    """The SYN-ACK acknowledges only the SYN (no valid cookie): the server dropped the SYN's
    data, accept() returns at the handshake ACK and read() gets the bytes resent after it."""
    cap, f = fast_open_conversation(taken=False)
    segments, summaries = cap.track()
    assert inferred(segments, summaries[0])[:3] == [
        ("c", "sendto", 40, None, (f["syn"], f["synack"])),
        ("s", "accept", None, None, (f["ack"],)),
        ("s", "read", 40, None, (f["resent"],)),
    ]
    assert not any(c.call == "write" for c in infer_calls(segments, summaries[0])
                   if side_of(c, summaries[0]) == "c")  # the resend is the kernel's
    fast = f'{CFD}<TCP:[4711]>, "{"Q" * 40}", 40, MSG_FASTOPEN, {sockaddr(SERVER)}'
    calls = [accept(0.0, 1.035),
             call("sendto", "c", 0.95, 1.025, 40, local=None, remote=SERVER, args=fast),
             call("recvfrom", "s", 1.036, 1.045, 40)]
    assert pairs(calls, segments, summaries) == [
        ("accept4", 0, (f["ack"],)),
        ("sendto", 0, (f["syn"], f["synack"])),  # it sent the bytes in the SYN ...
        ("recvfrom", 0, (f["resent"],)),  # ... but the server got them from the resend
    ]


def test_fast_open_traced():
    """strace of a Fast Open client and server: sendto(MSG_FASTOPEN) is the client's
    connect (SYN, SYN-ACK), accept() is released by the SYN, the read by the SYN's data."""
    cap, f = fast_open_conversation()
    segments, summaries = cap.track()
    fast = f'{CFD}<TCP:[4711]>, "{"Q" * 40}", 40, MSG_FASTOPEN, {sockaddr(SERVER)}'
    calls = [accept(0.0, 1.04)] + [
        call("socket", "c", 0.9, 0.91, CFD, fd=None, local=None, remote=None),
        call("sendto", "c", 0.95, 1.03, 40, local=None, remote=SERVER, args=fast),
        call("recvfrom", "s", 1.05, 1.06, 40),
        call("sendto", "s", 1.9, 2.005, 300),
        call("close", "s", 2.006, 2.02),
        call("recvfrom", "c", 1.1, 2.005, 300),
        call("recvfrom", "c", 2.02, 2.03, 0),
        call("close", "c", 2.09, 2.11),
    ]
    assert pairs(calls, segments, summaries) == [
        ("accept4", 0, (f["syn"],)),
        ("socket", 0, ()),
        ("sendto", 0, (f["syn"], f["synack"])),
        ("recvfrom", 0, (f["syn"],)),
        ("sendto", 0, (f["reply"],)),
        ("close", 0, (f["fin_s"],)),
        ("recvfrom", 0, (f["reply"],)),
        ("recvfrom", 0, (f["fin_s"],)),
        ("close", 0, (f["fin_c"],)),
    ]


def test_fast_open_nonblocking_sendto_returns_before_the_syn_ack():
    """A non-blocking sendto(MSG_FASTOPEN) returns the bytes it queued in the SYN at once:
    with the SYN-ACK 50 ms later (more than SLACK) it was not released by it."""
    cap = Capture()
    cv = cap.conv()
    syn = cv.seg("c", "S", 0, length=40, at=1.0)
    synack = cv.seg("s", "SA", 0, 41, at=51.0)
    cv.seg("c", "A", 41, 1, at=51.1)
    segments, summaries = cap.track()
    fast = f'{CFD}<TCP:[4711]>, "{"Q" * 40}", 40, MSG_FASTOPEN, {sockaddr(SERVER)}'
    sendto = call("sendto", "c", 0.95, 1.05, 40, local=None, remote=SERVER, args=fast)
    assert pairs([sendto], segments, summaries) == [("sendto", 0, (syn,))]  # matched by address
    blocking = replace(sendto, end=T0 + 51.05 * MS)
    assert pairs([blocking], segments, summaries) == [("sendto", 0, (syn, synack))]


def test_fast_open_cookie_request_traced():
    """Without a cookie the SYN only asks for one and the data follows the handshake: the
    sendto(MSG_FASTOPEN) caused the SYN, was released by the SYN-ACK and sent the data."""
    cap = Capture()
    cv = cap.conv()
    syn, synack, ack = cv.handshake()
    data = cv.seg("c", "PA", 1, 1, 40, at=1.04)
    segments, summaries = cap.track()
    fast = f'{CFD}<TCP:[4711]>, "{"Q" * 40}", 40, MSG_FASTOPEN, {sockaddr(SERVER)}'
    calls = [call("sendto", "c", 0.95, 1.05, 40, local=None, remote=SERVER, args=fast),
             call("sendto", "c", 1.5, 1.6, -1, errno="EPIPE", args=f"{CFD}, \"x\", 1, MSG_FASTOPEN")]
    assert [fr for _n, _c, fr in pairs(calls, segments, summaries)] == [(syn, synack, data), ()]
    assert inferred(segments, summaries[0])[:3] == [
        ("c", "connect", 0, None, (syn, synack)),  # nothing shows it was not a connect()
        ("s", "accept", None, None, (ack,)),
        ("c", "write", 40, None, (data,)),
    ]


CAPTURES = Path(__file__).resolve().parents[1] / "captures"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not (CORPUS / "traces").is_dir(),
                                  reason=f"third-party corpus not found at {CORPUS}")


def _tracked(path: Path) -> tuple[list[Segment], list[ConnectionSummary]]:
    from handshake_viz.decode import open_capture

    tracker = Tracker()
    with open_capture(path) as reader:
        segments = [tracker.feed(p) for p in reader]
    return segments, tracker.summaries()


@needs_corpus
@pytest.mark.parametrize("name, expected", [
    ("syn-then-rst.pcap", [("c", "connect", -1, "EINPROGRESS", (1,)), ("c", "close", 0, None, (2,))]),
    ("fin_retransmission.pcap", [("c", "connect", -1, "EINPROGRESS", (1,)), ("c", "close", 0, None, (2,))]),
    ("single-rst.pcap", []),
])
def test_corpus_connections_the_server_never_accepted(name: str, expected: list[tuple[object, ...]]):
    segments, summaries = _tracked(CORPUS / "traces" / name)
    (summary,) = summaries
    assert inferred(segments, summary) == expected


def test_shipped_refused_capture_infers_the_connect_only():
    pcap = CAPTURES / "refused.pcap"
    if not pcap.exists():
        pytest.skip(f"{pcap} not shipped")
    segments, summaries = _tracked(pcap)
    (summary,) = summaries
    assert [s.label for s in segments] == [Label.SYN, Label.RST]
    assert inferred(segments, summary) == [("c", "connect", -1, "ECONNREFUSED", (1, 2))]


@needs_corpus
def test_corpus_ftp_control_fin_with_data():
    """ipv6.pcap connection 0 (FTP control): the server's last segment is a FIN with 188
    bytes of data (the goodbye): written then closed, read then EOF."""
    segments, summaries = _tracked(CORPUS / "traces" / "ipv6.pcap")
    calls = inferred(segments, summaries[0])
    assert calls[-7:] == [
        ("s", "write", 6, None, (131,)),
        ("c", "read", 6, None, (131,)),
        ("s", "write", 188, None, (132,)),
        ("c", "read", 188, None, (132,)),
        ("s", "close", 0, None, (132,)),
        ("c", "read", 0, None, (132,)),
        ("c", "close", 0, None, (135,)),
    ]


@needs_corpus
@pytest.mark.parametrize("name, conn, expected", [
    ("tcp-fast-open.pcap", 1, [
        ("c", "sendto", 86, None, (8, 10)), ("s", "accept", None, None, (8,)),
        ("s", "read", 86, None, (8,)),
        ("s", "write", 1307, None, (12,)), ("c", "read", 1307, None, (12,)),
        ("s", "close", 0, None, (14,)), ("c", "read", 0, None, (14,)),
        ("c", "close", 0, None, (15,)),
    ]),
    ("tcp-fast-open.pcap", 0, [  # the cookie request: a plain SYN, data after the handshake
        ("c", "connect", 0, None, (1, 2)), ("s", "accept", None, None, (3,)),
        ("c", "write", 65, None, (3,)), ("s", "read", 65, None, (3,)),
        ("s", "write", 200, None, (5,)), ("c", "read", 200, None, (5,)),
        ("s", "close", 0, None, (6,)), ("c", "read", 0, None, (6,)),
        ("c", "close", 0, None, (7,)),
    ]),
    ("payload-syn.pcap", 0, [  # 100 bytes in the SYN, acknowledged by the SYN-ACK
        ("c", "sendto", 100, None, (1, 2)), ("s", "accept", None, None, (1,)),
        ("s", "read", 100, None, (1,)),
        ("c", "close", 0, None, (4,)), ("s", "read", 0, None, (4,)),
        ("s", "close", 0, None, (5,)),
    ]),
])
def test_corpus_data_in_the_syn(name: str, conn: int, expected: list[tuple[object, ...]]):
    segments, summaries = _tracked(CORPUS / "traces" / name)
    assert inferred(segments, summaries[conn]) == expected


def _every_capture() -> list[Path]:
    files = sorted(CAPTURES.glob("*.pcap")) if CAPTURES.is_dir() else []
    if (CORPUS / "traces").is_dir():
        files += sorted(p for p in (CORPUS / "traces").iterdir() if p.suffix in (".pcap", ".pcapng"))
    return files


@pytest.mark.parametrize("path", _every_capture(), ids=lambda p: p.name)
def test_inferred_calls_keep_each_sides_causal_order(path: Path):
    """On every capture: per side, the call that opened the connection (connect, or a
    sendto that connects) or accept() comes first; on a segment that carries both data
    and a FIN, the write/read of the data comes before the close/shutdown/read -> 0."""
    segments, summaries = _tracked(path)
    for summary in summaries:
        calls = infer_calls(segments, summary)
        assert [c.start for c in calls] == sorted(c.start for c in calls)
        for side in ("c", "s"):
            mine = [c for c in calls if side_of(c, summary) == side]
            opening = [k for k, c in enumerate(mine) if c.call in ("connect", "accept")
                       or "MSG_FASTOPEN" in c.args]
            assert opening in ([], [0]), (summary.conn, side, mine)
            for k, c in enumerate(mine):
                ending = c.call in ("close", "shutdown") or (c.call == "read" and c.ret == 0)
                if not ending:
                    continue
                later_data = [d for d in mine[k + 1:] if d.call in ("read", "write") and (d.ret or 0) > 0
                              and set(d.frames) & set(c.frames)]
                assert not later_data, (summary.conn, side, c, later_data)


@pytest.mark.parametrize("path", _every_capture(), ids=lambda p: p.name)
def test_server_calls_exactly_where_the_connection_was_established(path: Path):
    """Checked against the Zeek-style history the tracker writes (tests/test_track_corpus.py
    holds it to Zeek's own): an ACK or data letter (A/a/D/d) means the handshake
    completed or the capture began after it; without one the server gets no call, and
    without any SYN, SYN-ACK, ACK or data letter neither side does."""
    segments, summaries = _tracked(path)
    for summary in summaries:
        calls = infer_calls(segments, summary)
        sides = {side_of(c, summary) for c in calls}
        established = any(ch in summary.history for ch in "AaDd")
        assert ("s" in sides) == established, (summary.conn, summary.history, calls)
        if not any(ch in summary.history for ch in "SsHhAaDd"):
            assert not calls, (summary.conn, summary.history, calls)


# ==========================================================================================
# Traced or inferred, never both
# ==========================================================================================


def test_calls_for_connection_never_mixes_traced_and_inferred():
    cap, f = refused_capture(second_at=51.0)
    segments, summaries = cap.track()
    traced = align(segments, summaries, client_open(0.1, 1.05, errno="ECONNREFUSED"))
    first = calls_for_connection(0, segments, summaries[0], traced)
    assert first and not any(c.inferred for c in first)
    assert [c.call for c in first] == ["socket", "connect"]
    second = calls_for_connection(1, segments, summaries[1], traced)
    assert second and all(c.inferred for c in second)
    assert [c.frames for c in second] == [(f[2], f[3])]


def test_timeline_puts_a_call_no_later_than_what_it_caused():
    cap, f = echo_conversation()
    segments, summaries = cap.track()
    calls = align(segments, summaries, client_open(1.5, 1.6) + [  # printed after its SYN (1.0)
        call("recvfrom", "s", 1.2, 2.05, 6),
        call("sendto", "c", 1.9, 2.05, 6),
    ])
    merged = timeline(segments, calls)
    names = [x.call if isinstance(x, Call) else x.frame for x in merged]
    assert names[:8] == ["socket", "connect", f["syn"], f["synack"], f["ack"], "recvfrom", "sendto",
                         f["d1"]]
    assert len(merged) == len(segments) + len(calls)


# ==========================================================================================
# Real captures made by the project (captures/), when present
# ==========================================================================================


def _read_jsonl_calls(path: Path) -> list[Call]:
    try:
        from handshake_viz.trace import read_calls_jsonl
    except ImportError:
        out = []
        for line in path.read_text().splitlines():
            d = json.loads(line)
            d.pop("type", None)
            for k in ("local", "remote"):
                d[k] = Endpoint(**d[k]) if d.get(k) else None
            d["frames"] = tuple(d.get("frames") or ())
            out.append(Call(**d))
        return out
    return list(read_calls_jsonl(path))


def _recorded_pairs():
    return sorted(p for p in CAPTURES.glob("*.pcap") if p.with_suffix(".calls.jsonl").exists()) \
        if CAPTURES.is_dir() else []


@pytest.mark.parametrize("pcap", _recorded_pairs(), ids=lambda p: p.stem)
def test_recorded_captures_bytes_of_each_call_are_the_bytes_of_its_segments(pcap: Path):
    """Independent check on real data: the payload a send/recv moved equals its segments'."""
    from handshake_viz.decode import open_capture

    tracker = Tracker()
    with open_capture(pcap) as reader:
        segments = [tracker.feed(p) for p in reader]
    summaries = tracker.summaries()
    calls = _read_jsonl_calls(pcap.with_suffix(".calls.jsonl"))
    got = align(segments, summaries, calls)
    by_frame = {s.frame: s for s in segments}
    checked = 0
    for c in got:
        segs = [by_frame[fr] for fr in c.frames]
        if c.call == "connect" and c.errno is None and c.conn is not None:
            assert [s.label for s in segs] == [Label.SYN, Label.SYN_ACK]
            checked += 1
        if c.call == "connect" and c.errno == "ECONNREFUSED" and c.conn is not None:
            assert [s.label for s in segs] == [Label.SYN, Label.RST]
            checked += 1
        if c.call in ("accept", "accept4") and c.conn is not None:
            assert len(segs) == 1 and segs[0].is_c2s and segs[0].rel_seq == 1
            checked += 1
        if c.call in ("sendto", "recvfrom", "write", "read") and (c.nbytes or 0) > 0 and c.conn is not None:
            assert segs, c
            total = sum(s.length for s in segs)
            assert total >= c.nbytes  # the segments carry at least the call's bytes
            checked += 1
        if c.call in ("sendto", "recvfrom", "read") and c.ret == 0 and c.conn is not None:
            assert [s.flags & 0x01 for s in segs] == [1]
    if not summaries:
        assert all(c.conn is None for c in got)  # no TCP (the udp lesson): nothing to align
    else:
        assert checked


# ==========================================================================================
# Real programs traced with strace while captured: tests/data/align (record.py there)
# ==========================================================================================

ALIGN_DATA = Path(__file__).resolve().parent / "data" / "align"
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESC = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "a": "\a", "b": "\b"}


def _strace_bytes(args: str) -> bytes | None:
    """The first string argument as strace printed it (the data a read/write moved)."""
    m = _QUOTED.search(args)
    if m is None:
        return None

    def one(e: re.Match[str]) -> str:
        t = e.group(1)
        if t[0] == "x":
            return chr(int(t[1:], 16))
        if t[0] in "01234567":
            return chr(int(t, 8))
        return _SIMPLE.get(t, t)

    return _ESC.sub(one, m.group(1)).encode("latin-1")


def _load_pair(pcap: Path, strace: Path):
    from handshake_viz.decode import open_capture
    from handshake_viz.trace import parse_strace_file

    tracker = Tracker()
    with open_capture(pcap) as reader:
        segments = [tracker.feed(p) for p in reader]
    parsed = parse_strace_file(strace)
    assert parsed.unparsed == 0, parsed.problems
    return segments, tracker.summaries(), parsed.calls


def check_real_scenario(name: str, pcap: Path, strace: Path) -> None:
    """The alignment rules, checked on a real trace against facts independent of them."""
    segments, summaries, calls = _load_pair(pcap, strace)
    assert len(summaries) == 1, f"{name}: one connection expected"
    summary = summaries[0]
    got = align(segments, summaries, calls)
    by_frame = {s.frame: s for s in segments}
    mine = [c for c in got if c.conn == 0]
    assert mine, f"{name}: no call matched the connection"

    def side(c: Call) -> str:
        if c.local == summary.client or (c.local is None and c.remote == summary.server):
            return "client"
        assert c.local == summary.server, c
        return "server"

    def segs(c: Call) -> list[Segment]:
        return [by_frame[f] for f in c.frames]

    def first_byte(s: Segment) -> int:
        """Relative seq of a segment's first data byte (a SYN's data follows the SYN)."""
        return s.rel_seq + (1 if s.label is Label.SYN else 0)

    # calls on the listening socket belong to no connection
    for c in got:
        if c.call in ("bind", "listen", "setsockopt") or (c.local is not None and c.remote is None):
            assert c.conn is None, c
    hs_ack = next((s for s in segments if s.label is Label.ACK and s.rel_seq == 1 and s.is_c2s), None)
    syn = next((s for s in segments if s.label is Label.SYN), None)
    synack = next((s for s in segments if s.label is Label.SYN_ACK), None)
    fast_open = bool(syn and syn.length and synack and synack.rel_ack and synack.rel_ack > 1)
    if fast_open:
        hs_ack = syn  # the server took the SYN's data: accept() returns at the SYN
    offset = {"client": 0, "server": 0}
    read_offset = {"client": 0, "server": 0}
    fin = {d: next((s for s in segments if s.flags & 0x01 and s.is_c2s == (d == "client")), None)
           for d in ("client", "server")}
    rst = {d: next((s for s in segments if s.flags & 0x04 and s.is_c2s == (d == "client")), None)
           for d in ("client", "server")}
    for c in sorted(mine, key=lambda c: c.start):
        me = side(c)
        peer = "server" if me == "client" else "client"
        labels = [s.label for s in segs(c)]
        if c.call == "connect":
            assert me == "client"
            assert labels == ([Label.SYN, Label.RST] if c.errno == "ECONNREFUSED" else [Label.SYN, Label.SYN_ACK])
        elif c.call in ("accept", "accept4"):
            assert segs(c) == [hs_ack]
        elif c.call in ("write", "sendto") and c.nbytes:
            data = _strace_bytes(c.args)
            lo, hi = offset[me] + 1, offset[me] + 1 + c.nbytes
            carrying = [s for s in segs(c) if s.length]
            if "MSG_FASTOPEN" in c.args:  # it connected too: the SYN, then the SYN-ACK
                assert [s.label for s in segs(c) if not s.length][:1] in ([Label.SYN], [Label.SYN_ACK])
                assert synack is None or synack in segs(c) or c.end < synack.ts
            else:
                assert carrying == segs(c)
            assert carrying and all(s.is_c2s == (me == "client") for s in carrying)
            stream = b"".join(s.payload for s in carrying)
            start = lo - first_byte(carrying[0])
            assert stream[start:start + c.nbytes] == data  # the bytes strace saw leave
            assert first_byte(carrying[-1]) + carrying[-1].length >= hi
            offset[me] += c.nbytes
        elif c.call in ("read", "recvfrom") and c.nbytes:
            data = _strace_bytes(c.args)
            lo = read_offset[me] + 1
            assert segs(c) and all(s.is_c2s == (me == "server") for s in segs(c))
            stream = b"".join(s.payload for s in segs(c))
            start = lo - first_byte(segs(c)[0])
            assert stream[start:start + c.nbytes] == data  # the bytes strace saw arrive
            read_offset[me] += c.nbytes
        elif c.call in ("read", "recvfrom") and c.ret == 0:
            assert segs(c) == [fin[peer]]
        elif c.errno == "ECONNRESET":
            assert segs(c) == [rst[peer]]
        elif c.call == "shutdown":
            assert segs(c) == [fin[me]]
        elif c.call == "close":
            shut = any(d.call == "shutdown" and side(d) == me for d in mine)
            if summary.conn_state == "REJ" or (rst[peer] is not None and rst[peer].ts < c.start):
                assert segs(c) == []  # refused or reset before: nothing left to send
            elif rst[me] is not None:
                assert segs(c) == [rst[me]]  # closed with unread data
            else:
                assert segs(c) == ([] if shut else [fin[me]])
        else:
            assert c.frames == (), c

    names = [c.call for c in mine]
    if "refused" in name:
        assert summary.conn_state == "REJ" and "connect" in names
        assert any(c.errno == "ECONNREFUSED" and len(c.frames) == 2 for c in mine)
    else:
        assert any(c.call in ("accept", "accept4") for c in mine)
    if "delay" in name:
        acc = next(c for c in mine if c.call in ("accept", "accept4"))
        assert acc.start - hs_ack.ts > 0.1  # called late (the server slept 0.3 s) ...
        assert accept_queue_delay(acc, segments) == pytest.approx(acc.start - hs_ack.ts)
    if "unread" in name:
        assert rst["server"] is not None and fin["server"] is None
        assert any(c.errno == "ECONNRESET" for c in mine)
    if "pingpong" in name:
        piggy = [s for s in segments if s.label is Label.PIGGYBACK]
        assert piggy, "re-record: no piggybacked ACK in this capture"
        for s in piggy:
            owners = [c for c in mine if s.frame in c.frames]
            assert sorted(c.call for c in owners) == ["recvfrom", "sendto"]
            assert {side(c) for c in owners} == {"client", "server"}


def _recorded_align_pairs() -> list[str]:
    return sorted(p.stem for p in ALIGN_DATA.glob("*.pcap") if p.with_suffix(".strace").exists())


@pytest.mark.parametrize("name", _recorded_align_pairs())
def test_real_traced_programs(name: str):
    check_real_scenario(name, ALIGN_DATA / f"{name}.pcap", ALIGN_DATA / f"{name}.strace")


def test_the_recorded_scenarios_are_all_there():
    names = set(_recorded_align_pairs())
    for scenario in ("py-echo", "py-pingpong", "py-delay", "py-refused", "py-unread",
                     "c-echo", "c-delay", "c-refused"):
        assert scenario in names, f"tests/data/align/{scenario}.pcap missing: run record.py"


def _can_record() -> str | None:
    import os
    import shutil

    if os.geteuid() != 0:
        return "recording needs root (live capture)"
    for tool in ("strace", "cc"):
        if shutil.which(tool) is None:
            return f"recording needs {tool}"
    return None


@pytest.mark.live
@pytest.mark.parametrize("name", ["c-echo", "py-unread", "py-refused"])
def test_live_recording_aligns(name: str, tmp_path: Path):
    why = _can_record()
    require(not why, why or "")
    import importlib.util

    spec = importlib.util.spec_from_file_location("align_record", ALIGN_DATA / "record.py")
    assert spec and spec.loader
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    exe = record.compile_echo_c(tmp_path) if name.startswith("c-") else None
    pcap, strace = record.record(name, tmp_path, exe)
    check_real_scenario(name, pcap, strace)
