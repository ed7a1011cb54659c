"""Kernel events (``--kernel``): tracefs text, X.kernel.jsonl, the join to the Trace.

The fixtures in ``tests/data/kernel/`` were recorded on this project's machine (Linux
6.18) by ``make_fixtures.py`` there: each lesson's pcap, calls and kernel events, the
raw ``trace_pipe`` text they came from, the clock markers' brackets, a trace with a
``[LOST N EVENTS]`` marker and one cut off mid-line.  Everything here runs without
root; the live tests (root and tracefs: CI) are in ``test_kernel_live.py``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from handshake_viz import pipeline
from handshake_viz.cli import main
from handshake_viz.errors import KernelFileError
from handshake_viz.kernel import (
    ClockSync,
    Drop,
    LinuxState,
    Lost,
    Marker,
    Probe,
    Reset,
    StateChange,
    calibrate,
    event_json,
    find_markers,
    kernel_jsonl_lines,
    parse_kernel_jsonl,
    parse_trace_line,
    parse_trace_text,
    read_kernel_jsonl,
    resolve,
)
from handshake_viz.kerneljoin import DropSource, LinuxDifference, QueueCause, Side, Verdict
from handshake_viz.model import CallKind, Endpoint, TcpState

DATA = Path(__file__).resolve().parent / "data" / "kernel"
LESSONS = ("echo", "backlog", "refused", "half-close", "time-wait", "reset")


def _lines(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines(keepends=True)


# ---------------------------------------------------------------------------------------
# tracefs text
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LESSONS)
def test_recorded_traces_parse_completely(name: str) -> None:
    parsed = parse_trace_text(_lines(f"{name}.trace"))
    assert parsed.unparsed == 0, parsed.problems
    assert not parsed.truncated and parsed.lost == 0
    assert len(parsed.markers) == 10  # five clock markers at each end
    assert any(isinstance(e, StateChange) for e in parsed.events)


def test_lost_events_marker_is_counted_and_kept_in_place() -> None:
    parsed = parse_trace_text(_lines("lost.trace"))
    assert parsed.unparsed == 0, parsed.problems
    lost = [e for e in parsed.events if isinstance(e, Lost)]
    assert [(m.cpu, m.events) for m in lost] == [(1, 2486)]
    assert parsed.lost == 2486
    before = parsed.events[parsed.events.index(lost[0]) - 1]
    assert lost[0].ts == before.ts  # the gap is after the event before it


def test_truncated_last_line_is_not_used() -> None:
    whole = parse_trace_text(_lines("echo.trace"))
    cut = parse_trace_text(_lines("truncated.trace"))
    assert cut.truncated and not whole.truncated
    assert cut.unparsed == 0
    assert len(cut.markers) == len(whole.markers) - 1  # the cut line was the last marker
    assert cut.events == whole.events


def test_trace_line_variants() -> None:
    # a task name with spaces and dashes, a (tgid) column, no flags column
    line = ("  kworker/1:2 x-y-15390 (  15390) [001] 2308.826719: inet_sock_set_state: family=AF_INET6 "
            "protocol=IPPROTO_TCP sport=8080 dport=0 saddr=0.0.0.0 daddr=0.0.0.0 saddrv6=::1 daddrv6=:: "
            "oldstate=TCP_CLOSE newstate=TCP_LISTEN\n")
    e = parse_trace_line(line)
    assert isinstance(e, StateChange)
    assert (e.local, e.remote, e.old, e.new, e.cpu) == (Endpoint("::1", 8080), Endpoint("::", 0), LinuxState.CLOSE,
                                                         LinuxState.LISTEN, 1)
    probe = parse_trace_line(
        "<idle>-0 [000] ..s1. 1.000001: tcp_probe: family=AF_INET6 src=[::1]:8080 dest=[::ffff:127.0.0.1]:40000 "
        "mark=0x0 data_len=6 snd_nxt=0x10 snd_una=0xf snd_cwnd=10 ssthresh=7 snd_wnd=65536 srtt=20 rcv_wnd=100 "
        "sock_cookie=1 skbaddr=00000000deadbeef skaddr=00000000cafe\n")
    assert isinstance(probe, Probe)
    assert probe.remote == Endpoint("127.0.0.1", 40000)  # IPv4-mapped, normalised
    assert (probe.snd_nxt, probe.snd_una, probe.cwnd, probe.srtt_us) == (16, 15, 10, 20)
    drop = parse_trace_line("p-1 [001] ..s1. 5.5: kfree_skb: skbaddr=00000000aa rx_sk=0000000000000000 "
                            "protocol=2048 location=tcp_v4_rcv+0x99/0x1400 reason: NO_SOCKET\n")
    assert isinstance(drop, Drop) and drop.reason == "NO_SOCKET" and drop.rx_sk == ""
    assert parse_trace_line("p-1 [000] ..... 1.0: sched_switch: prev_comm=x\n") is None  # another event
    assert parse_trace_line("# tracer: nop\n") is None
    marker = parse_trace_line("p-1 [000] ...1. 2.5: tracing_mark_write: hsviz-sync 3\n")
    assert marker == Marker(2.5, 0, "hsviz-sync 3")
    for bad in ("garbage\n",
                "p-1 [000] ..... 1.0: inet_sock_set_state: protocol=IPPROTO_TCP sport=x dport=1 saddr=1.1.1.1 "
                "daddr=1.1.1.1 oldstate=TCP_CLOSE newstate=TCP_LISTEN\n",
                "p-1 [000] ..... 1.0: inet_sock_set_state: protocol=IPPROTO_TCP sport=1 dport=1 saddr=1.1.1.1 "
                "daddr=1.1.1.1 oldstate=TCP_CLOSE newstate=TCP_MOONWALK\n"):
        with pytest.raises(ValueError):
            parse_trace_line(bad)
    parsed = parse_trace_text(["garbage\n"] * 30)
    assert parsed.unparsed == 30 and len(parsed.problems) == 20  # counted, a sample kept


# ---------------------------------------------------------------------------------------
# resolve and calibrate: the raw text becomes exactly the written X.kernel.jsonl
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LESSONS)
def test_kernel_jsonl_is_the_trace_resolved_and_mapped(name: str) -> None:
    """parse -> calibrate -> resolve -> onto the capture clock, all sans-IO, gives the
    events the live recorder wrote."""
    written = read_kernel_jsonl(DATA / f"{name}.kernel.jsonl")
    sync_file = json.loads((DATA / f"{name}.sync.json").read_text())
    brackets = {int(k): tuple(v) for k, v in sync_file["brackets"].items()}
    sync = calibrate(find_markers(_lines(f"{name}.trace")), brackets, split=sync_file["split"])  # type: ignore[arg-type]
    assert sync == written.sync
    assert sync is not None and sync.uncertainty < 50e-6 and not sync.stepped
    parsed = parse_trace_text(_lines(f"{name}.trace"), offset=sync.offset)
    events = resolve(parsed.events, written.port).events
    assert [event_json(e) for e in events] == [event_json(e) for e in written.events]


def test_resolve_fills_the_port_and_keeps_only_the_port_s_events() -> None:
    a, b, far = Endpoint("127.0.0.1", 0), Endpoint("127.0.0.1", 8080), Endpoint("127.0.0.1", 9)
    events = [
        StateChange(ts=1.0, cpu=0, local=a, remote=b, old=LinuxState.CLOSE, new=LinuxState.SYN_SENT),
        StateChange(ts=1.1, cpu=0, local=Endpoint("127.0.0.1", 40000), remote=b, old=LinuxState.SYN_SENT,
                    new=LinuxState.ESTABLISHED),
        # a RST and the drop of the packet that caused it, on another port: left out
        Reset(ts=2.0, cpu=1, local=far, remote=Endpoint("127.0.0.1", 5), sent=True, reason="NO_SOCKET", skb="aa"),
        Drop(ts=2.0001, cpu=1, reason="NO_SOCKET", skb="aa"),
        # the same on the port: kept, with the packet's receiver and sender
        Reset(ts=3.0, cpu=1, local=b, remote=Endpoint("127.0.0.1", 5), sent=True, reason="NO_SOCKET", skb="bb"),
        Drop(ts=3.0001, cpu=1, reason="NO_SOCKET", skb="bb"),
        # a recycled packet address on another CPU's event: not the same packet
        Probe(ts=4.0, cpu=0, local=b, remote=a, data_len=1, snd_nxt=0, snd_una=0, cwnd=1, ssthresh=1, snd_wnd=1,
              srtt_us=1, rcv_wnd=1, skb="cc"),
        Drop(ts=4.0001, cpu=1, reason="TCP_OLD_DATA", skb="cc"),
        Lost(cpu=0, events=3, ts=4.0),
    ]
    got = resolve(events, 8080)
    states = [e for e in got.events if isinstance(e, StateChange)]
    assert states[0].local == Endpoint("127.0.0.1", 40000)
    drops = [e for e in got.events if isinstance(e, Drop)]
    assert [(d.ts, d.local, d.remote) for d in drops] == [(3.0001, b, Endpoint("127.0.0.1", 5))]
    assert got.unattributed_drops == 2
    assert not any(isinstance(e, Reset) and e.local == far for e in got.events)
    assert any(isinstance(e, Lost) for e in got.events)


def test_calibrate_takes_the_narrowest_bracket_and_measures_drift() -> None:
    markers = [Marker(10.0, 0, "hsviz-sync 0"), Marker(10.5, 0, "hsviz-sync 1"), Marker(20.0, 0, "hsviz-sync 2"),
               Marker(20.0, 0, "other text")]
    brackets = {0: (100_000_000_000, 100_000_100_000),  # 100 µs wide
                1: (100_500_000_000, 100_500_002_000),  # 2 µs wide: wins
                2: (110_001_000_000, 110_001_002_000)}  # the end: 1 ms later than the start says
    sync = calibrate(markers, brackets, split=2)
    assert sync is not None
    assert sync.offset == pytest.approx(90.000001, abs=1e-9)
    assert sync.uncertainty == pytest.approx(1.5e-6)  # half the bracket + half the printed µs
    assert sync.drift == pytest.approx(1e-3, abs=1e-9) and sync.stepped
    assert calibrate([], brackets) is None


# ---------------------------------------------------------------------------------------
# X.kernel.jsonl from anywhere: one clear line, exit 2, never a traceback
# ---------------------------------------------------------------------------------------

_HEADER = json.dumps({"type": "trace", "version": 1, "port": 8080, "sync": None, "lost": 0})
_STATE = {"type": "state", "ts": 1.5, "cpu": 0, "local": {"ip": "127.0.0.1", "port": 1},
          "remote": {"ip": "127.0.0.1", "port": 8080}, "old": "CLOSE", "new": "SYN_SENT"}


def _with(**change: object) -> str:
    return json.dumps({**_STATE, **change})


@pytest.mark.parametrize("body, says", [
    ('{"type": "state", "ts": 1' + "0" * 5000 + "}", "line 2: Exceeds the limit"),
    ('{"type": "state", "ts": 1e999}', '"ts" must be a number'),
    (_with(cpu=2 ** 70), '"cpu" must be an integer from 0 to 65535'),
    ("[" * 20_000 + "]" * 20_000, "line 2: nested too deeply"),
    (_with(old="X").replace('"X"', '"\\ud800"'), '"old" must be a name'),
    (_with(new="MOONWALK"), '"new" must be a Linux TCP state'),
    (_with(local={"ip": "not an ip", "port": 1}), '"local" ip must be an address'),
    (_with(local={"ip": "127.0.0.1", "port": 70000}), '"port" must be an integer from 0 to 65535'),
    (_with(ts=True), '"ts" must be a number'),
    ('{"type": "drop", "ts": 1, "cpu": 0, "reason": "NO_SOCKET\\u001b[2J"}', '"reason" must be a name'),
    ("not json", "line 2: not JSON"),
    ('"a string"', "line 2: not a JSON object"),
    ("x" * 70_000, "line 2: longer than"),
])
def test_hostile_kernel_jsonl_is_one_line_and_exit_2(tmp_path: Path, body: str, says: str) -> None:
    pcap = tmp_path / "t.pcap"
    pcap.write_bytes((DATA / "echo.pcap").read_bytes())
    (tmp_path / "t.kernel.jsonl").write_text(_HEADER + "\n" + body + "\n", encoding="utf-8",
                                            errors="surrogatepass")
    err = io.StringIO()
    assert main(["analyze", str(pcap)], out=io.StringIO(), err=err) == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.getvalue()
    assert lines[0].startswith(f"hsviz: {tmp_path / 't.kernel.jsonl'}: ") and says in lines[0], lines[0]
    assert len(lines[0]) < 300


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe not utf-8\n", "not UTF-8 text"),
    (b"", 'empty: no "trace" header'),
    (_STATE_LINE := (json.dumps(_STATE) + "\n").encode(), 'the first record must be the "trace" header'),
    (b'{"type": "trace", "version": 99, "port": 1, "lost": 0}\n', "format version 99"),
    (b'{"type": "trace", "version": 1, "port": 1, "lost": 0, "recorded": [1, 2]}\n', '"recorded" must be a list'),
])
def test_unusable_kernel_files(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "x.kernel.jsonl"
    path.write_bytes(content)
    with pytest.raises(KernelFileError) as exc:
        read_kernel_jsonl(path)
    assert str(exc.value).startswith(f"{path}: ") and says in str(exc.value)


def test_kernel_jsonl_round_trip_and_unknown_types_skipped() -> None:
    log = read_kernel_jsonl(DATA / "refused.kernel.jsonl")
    again = parse_kernel_jsonl([*kernel_jsonl_lines(log), '{"type": "future-kind", "x": 1}'])
    assert again.events == tuple(e for e in log.events)
    assert again.sync == log.sync and again.port == log.port and again.recorded == log.recorded


# ---------------------------------------------------------------------------------------
# the join, on the recorded lessons
# ---------------------------------------------------------------------------------------


def _trace(name: str) -> pipeline.Trace:
    return pipeline.load(DATA / f"{name}.pcap")


def test_load_picks_up_the_kernel_file_and_false_ignores_it() -> None:
    trace = _trace("echo")
    assert trace.kernel is not None and trace.kernel.log.path == DATA / "echo.kernel.jsonl"
    assert all(c.kernel is not None for c in trace.connections)
    plain = pipeline.load(DATA / "echo.pcap", kernel=False)
    assert plain.kernel is None and plain.connections[0].kernel is None


def test_echo_states_agree_except_where_linux_differs() -> None:
    check_echo(_trace("echo"))


def check_echo(trace: pipeline.Trace) -> None:
    """Both endpoints' kernel states equal the inferred ones at every step, except the
    two places Linux always reports differently."""
    k = trace.connections[0].kernel
    assert k is not None
    bad = [c for c in k.checks if c.verdict is Verdict.DISAGREE]
    assert bad == []
    linux = {(c.side, c.inferred, c.difference) for c in k.checks if c.verdict is Verdict.LINUX}
    assert linux == {(Side.SERVER, TcpState.SYN_RECEIVED, LinuxDifference.CHILD_AT_FINAL_ACK),
                     (Side.CLIENT, TcpState.TIME_WAIT, LinuxDifference.TIME_WAIT_MINISOCKET)}
    assert k.agree == k.compared - 2 >= 8
    # every inferred state of both sides was compared
    assert {c.inferred for c in k.checks if c.side is Side.CLIENT and c.inferred} == {
        TcpState.SYN_SENT, TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.TIME_WAIT}
    assert [s.new for s in k.client_steps] == [LinuxState.SYN_SENT, LinuxState.ESTABLISHED, LinuxState.FIN_WAIT1,
                                                LinuxState.FIN_WAIT2, LinuxState.CLOSE]
    assert k.server_steps[0].new is LinuxState.LISTEN and k.server_steps[1].old is LinuxState.LISTEN


def test_echo_probes_are_on_the_segments_that_arrived_established() -> None:
    trace = _trace("echo")
    conn = trace.connections[0]
    k = conn.kernel
    assert k is not None
    probed = {s.frame: s.probe for s in k.segments if s.probe is not None}
    data = [g for g in conn.segments if g.length]
    assert {g.frame for g in data} <= set(probed)  # every data segment arrived in ESTABLISHED
    for g in conn.segments:
        p = probed.get(g.frame)
        if p is not None:
            assert p.data_len == g.length
            receiver = conn.summary.server if g.is_c2s else conn.summary.client
            assert p.local == receiver and 0 <= p.ts - g.ts < 0.001
            assert p.cwnd >= 10 and p.snd_wnd > 0 and p.rcv_wnd > 0
    handshake = conn.segments[:3]
    assert all(g.frame not in probed for g in handshake)  # SYN, SYN-ACK, ACK: not ESTABLISHED yet


def test_echo_jsonl_has_kernel_objects_and_a_ladder_column() -> None:
    out = io.StringIO()
    assert main(["analyze", str(DATA / "echo.pcap"), "--jsonl"], out=out, err=io.StringIO()) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    segs = [d for d in lines if d["type"] == "segment"]
    assert all("kernel" in d for d in segs)
    data = next(d for d in segs if d["len"])
    assert {"cwnd", "ssthresh", "srtt_us", "snd_wnd", "rcv_wnd"} <= set(data["kernel"])
    conn = next(d for d in lines if d["type"] == "connection")
    assert conn["kernel"]["compared"] - conn["kernel"]["agree"] == 2
    assert [d["type"] for d in lines[-2:]] == ["listener", "kernel"]
    text = io.StringIO()
    assert main(["analyze", str(DATA / "echo.pcap")], out=text, err=io.StringIO()) == 0
    ladder = text.getvalue()
    assert "kernel client | server" in ladder
    assert "kernel states: 8 of 10 agree" in ladder
    assert "CLOSE+tw" in ladder


def test_backlog_queue_reaches_two_before_the_first_accept_returns() -> None:
    check_backlog(_trace("backlog"))


def check_backlog(trace: pipeline.Trace) -> None:
    assert trace.kernel is not None
    (queue,) = trace.kernel.listeners
    assert queue.backlog == 1 and queue.limit == 2 and queue.dequeues_known
    accepts = sorted(c.end for c in trace.calls if c.kind is CallKind.ACCEPT)
    assert queue.depth_at(accepts[0] - 1e-6) >= 2
    assert [c.cause for c in queue.changes[:3]] == [QueueCause.QUEUED, QueueCause.QUEUED, QueueCause.ACCEPTED]
    # the third client's first SYN found the queue full: dropped (Linux gives no reason)
    (drop,) = queue.overflows
    third = trace.connection(drop.conn)  # type: ignore[arg-type]
    assert drop.frame == third.segments[0].frame and drop.source is DropSource.ACCEPT_QUEUE
    assert third.kernel is not None
    facts = {s.frame: s for s in third.kernel.segments}
    assert facts[third.segments[1].frame].retransmit  # the kernel said it sent the SYN again


def test_refused_syn_is_dropped_with_the_kernel_s_reason_on_its_frame() -> None:
    check_refused(_trace("refused"))


def check_refused(trace: pipeline.Trace) -> None:
    """The forced drop: a SYN to a port nobody listens on, dropped (NO_SOCKET) on its frame."""
    conn = trace.connections[0]
    assert conn.kernel is not None
    (drop,) = conn.kernel.drops
    assert (drop.reason, drop.source, drop.frame) == ("NO_SOCKET", DropSource.KFREE_SKB, conn.segments[0].frame)
    assert drop.receiver == conn.summary.server and drop.sender == conn.summary.client
    rst = conn.kernel.segment(conn.segments[1].frame)
    assert rst is not None and rst.reset_reason == "NO_SOCKET"
    # nobody listened: the Trace says the server was CLOSED all along (hindsight.settle, RFC
    # 9293 §3.10.7.1), so no inferred LISTEN is left for the kernel's NO_SOCKET to contradict
    assert [s.server_state for s in conn.segments] == [TcpState.CLOSED, TcpState.CLOSED]
    assert not [c for c in conn.kernel.checks if c.side is Side.SERVER]
    assert conn.kernel.checks and all(c.verdict is Verdict.AGREE for c in conn.kernel.checks)


def _call(trace: pipeline.Trace, name: str, port: int, **match: object) -> list:  # type: ignore[type-arg]
    return [c for c in trace.calls if c.call == name and c.local is not None and c.local.port == port
            and all(getattr(c, k) == v for k, v in match.items())]


def test_half_close_durations_match_the_calls() -> None:
    check_half_close(_trace("half-close"))


def check_half_close(trace: pipeline.Trace) -> None:
    conn = trace.connections[0]
    k, s = conn.kernel, conn.summary
    assert k is not None
    close_wait = k.period(Side.SERVER, TcpState.CLOSE_WAIT)
    fin_wait_2 = k.period(Side.CLIENT, TcpState.FIN_WAIT_2)
    assert close_wait is not None and fin_wait_2 is not None
    (shutdown,) = _call(trace, "shutdown", s.client.port)
    server_close = [c for c in _call(trace, "close", s.server.port) if c.remote == s.client][0]
    # the server sat in CLOSE-WAIT from the client's FIN until its own close()
    assert shutdown.start <= close_wait.start <= shutdown.end + 0.001
    assert server_close.start <= close_wait.end <= server_close.end  # type: ignore[operator]
    # the client sat in FIN-WAIT-2 until the server's FIN, sent by that close()
    assert server_close.start <= fin_wait_2.end <= server_close.end + 0.001  # type: ignore[operator]
    assert close_wait.duration > 0.010  # the server kept sending for ~15 ms  # type: ignore[operator]


def test_time_wait_durations_match_the_calls() -> None:
    check_time_wait(_trace("time-wait"))


def check_time_wait(trace: pipeline.Trace) -> None:
    conn = trace.connections[0]
    k, s = conn.kernel, conn.summary
    assert k is not None
    fin_wait_2 = k.period(Side.SERVER, TcpState.FIN_WAIT_2)
    close_wait = k.period(Side.CLIENT, TcpState.CLOSE_WAIT)
    time_wait = k.period(Side.SERVER, TcpState.TIME_WAIT)
    assert fin_wait_2 is not None and close_wait is not None and time_wait is not None
    server_close = [c for c in _call(trace, "close", s.server.port) if c.remote == s.client][0]
    client_close = [c for c in _call(trace, "close", s.client.port)][0]
    assert server_close.start <= close_wait.start <= server_close.end + 0.001
    assert client_close.start <= close_wait.end <= client_close.end  # type: ignore[operator]
    assert fin_wait_2.end is not None and client_close.start <= fin_wait_2.end <= client_close.end + 0.001
    assert time_wait.end is None and time_wait.linux is LinuxState.CLOSE  # the mini-socket's end is not reported


def test_reset_reason_and_export_comments(tmp_path: Path) -> None:
    from handshake_viz.export import kernel_comments

    trace = _trace("reset")
    conn = trace.connections[0]
    rst = next(g for g in conn.segments if g.label.value == "RST")
    assert kernel_comments(trace)[rst.frame] == ["kernel sent this RST: TCP_ABORT_ON_CLOSE"]
    out = io.StringIO()
    assert main(["export", str(DATA / "refused.pcap"), "-o", str(tmp_path / "r.pcapng")], out=out,
                err=io.StringIO()) == 0
    assert b"kernel dropped it: NO_SOCKET" in (tmp_path / "r.pcapng").read_bytes()


def test_lost_events_are_reported_when_loading(tmp_path: Path) -> None:
    log = read_kernel_jsonl(DATA / "echo.kernel.jsonl")
    from dataclasses import replace

    from handshake_viz.kernelio import write_kernel_jsonl

    pcap = tmp_path / "e.pcap"
    pcap.write_bytes((DATA / "echo.pcap").read_bytes())
    write_kernel_jsonl(replace(log, lost=7), tmp_path / "e.kernel.jsonl")
    trace = pipeline.load(pcap)
    assert any("7 events lost" in w for w in trace.warnings)
    err = io.StringIO()
    assert main(["analyze", str(pcap), "--summary"], out=io.StringIO(), err=err) == 0
    assert "7 events lost" in err.getvalue()


def test_clock_sync_stepped_flag() -> None:
    assert not ClockSync("mono", 1.0, 1e-6, 0.5e-6, 1e-6).stepped
    assert ClockSync("mono", 1.0, 1e-6, 0.5, 1e-6).stepped


def test_without_root_one_line_says_why_and_nothing_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from handshake_viz.errors import KernelEventsUnavailable
    from handshake_viz.kernelio import KernelRecorder

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    rec = KernelRecorder(8080)
    with pytest.raises(KernelEventsUnavailable) as exc:
        rec.start()
    assert str(exc.value) == "kernel events need root and tracefs: not running as root (try sudo)"
    assert rec.instance is None and rec.mounted is None


def test_the_cleanup_helper_holds_nothing_of_ours_once_started(tmp_path: Path) -> None:
    """The root helper is forked while the caller may hold a listening socket (the
    time-wait lesson under --kernel): when start() returns, the child must already
    have closed every inherited descriptor but its pipe, or the socket outlives the
    caller's close() and a re-bind to its port fails with EADDRINUSE."""
    import os
    import socket

    from handshake_viz.kernelio import _CleanupHelper

    instance = tmp_path / "instance"
    instance.mkdir()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        helper = _CleanupHelper.start(instance, None)
        try:
            held = os.listdir(f"/proc/{helper.pid}/fd")
            targets = [os.readlink(f"/proc/{helper.pid}/fd/{fd}") for fd in held]
        finally:
            assert helper.finish()  # the helper removed the (empty) instance directory
    assert len(held) == 1 and targets[0].startswith("pipe:"), targets
    assert not instance.exists()
