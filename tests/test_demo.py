"""The lesson scenarios of ``hsviz demo``, run live, and the shipped captures/ library.

Live runs need root or CAP_NET_RAW.  CI has it: there (``CI`` set) a missing
privilege fails the tests loudly instead of skipping them.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from conftest import require
from handshake_viz import demo
from handshake_viz.cli import build_parser, main
from handshake_viz.model import Call, Direction, Flag, Segment
from handshake_viz.trace import read_calls_jsonl

CAPTURES = Path(__file__).resolve().parents[1] / "captures"


def _require_capture() -> None:
    if demo.can_capture():
        return
    require(False, "capturing on loopback needs root or CAP_NET_RAW")


_RUNS: dict[str, demo.DemoResult] = {}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


def run(name: str, out_dir: Path) -> demo.DemoResult:
    """Each scenario runs once per test session (live, without the PNG: drawing is tested once)."""
    _require_capture()
    if name not in _RUNS:
        _RUNS[name] = demo.run_scenario(name, out_dir, live=True, draw=False)
    return _RUNS[name]


def labels(segments: list[Segment] | tuple[Segment, ...]) -> list[str]:
    return [s.label.value for s in segments]


def conn_segments(result: demo.DemoResult, conn: int) -> list[Segment]:
    return [s for s in result.segments if s.conn == conn]


def calls_named(result: demo.DemoResult, *names: str) -> list[Call]:
    return [c for c in result.calls if c.call in names]


def side_calls(result: demo.DemoResult, endpoint_port: int, *names: str) -> list[Call]:
    """Calls made on sockets whose own port is ``endpoint_port``."""
    return [c for c in calls_named(result, *names) if c.local is not None and c.local.port == endpoint_port]


# ---------------------------------------------------------------------------------------
# every scenario: files and basic shape
# ---------------------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.parametrize("name", list(demo.SCENARIOS))
def test_scenario_writes_pcap_and_calls(name: str, out_dir: Path) -> None:
    result = run(name, out_dir)
    assert result.live
    assert result.pcap == out_dir / f"{name}.pcap" and result.pcap.stat().st_size > 24
    assert result.calls_path == out_dir / f"{name}.calls.jsonl"
    written = read_calls_jsonl(result.calls_path)
    assert len(written) == len(result.calls) > 0
    assert all(c.pid == os.getpid() and not c.inferred for c in written)
    # every call's times are on the capture's clock: within the run, in order
    assert all(c.start <= c.end for c in written)
    if result.segments:
        first, last = result.segments[0].ts, result.segments[-1].ts
        assert any(c.start <= first for c in written) and any(c.end >= last - 0.01 for c in written)


# ---------------------------------------------------------------------------------------
# the lessons
# ---------------------------------------------------------------------------------------


@pytest.mark.live
def test_handshake(out_dir: Path) -> None:
    r = run("handshake", out_dir)
    assert len(r.summaries) == 1
    segs = conn_segments(r, 0)
    assert labels(segs)[:3] == ["SYN", "SYN-ACK", "ACK"]
    assert [s.dir for s in segs[:3]] == [Direction.C2S, Direction.S2C, Direction.C2S]
    assert r.summaries[0].conn_state == "SF"
    got = labels(segs)
    assert got[3:] in (["FIN", "ACK", "FIN", "ACK"], ["FIN", "FIN-ACK", "ACK"])
    assert segs[3].dir is Direction.C2S and r.summaries[0].client_state.value == "TIME-WAIT"
    (connect,) = calls_named(r, "connect")
    assert connect.ret == 0 and connect.start <= segs[0].ts <= connect.end
    (accept,) = calls_named(r, "accept4")
    assert accept.end >= segs[2].ts and accept.remote == r.summaries[0].client


@pytest.mark.live
def test_echo_shows_data_piggyback_and_close(out_dir: Path) -> None:
    r = run("echo", out_dir)
    assert len(r.summaries) == 1
    segs = conn_segments(r, 0)
    got = labels(segs)
    assert got[:3] == ["SYN", "SYN-ACK", "ACK"]
    assert "DATA" in got and "PIGGYBACK" in got
    data = [s for s in segs if s.length]
    assert [s.payload for s in data if s.dir is Direction.C2S] == [b"hello\n"] * 3
    assert [s.payload for s in data if s.dir is Direction.S2C] == [b"HELLO\n"] * 3
    # the client closes first; Linux answers FIN-ACK (or ACK, then FIN), and the last ACK
    close = segs[got.index("FIN"):]
    assert close[0].dir is Direction.C2S
    assert labels(close) in (["FIN", "FIN-ACK", "ACK"], ["FIN", "ACK", "FIN", "ACK"])
    assert r.summaries[0].client_state.value == "TIME-WAIT"
    client = r.summaries[0].client
    assert [c.nbytes for c in side_calls(r, client.port, "sendto")] == [6, 6, 6]


@pytest.mark.live
def test_half_close_server_reads_eof_while_client_still_receives(out_dir: Path) -> None:
    r = run("half-close", out_dir)
    s = r.summaries[0]
    segs = conn_segments(r, 0)
    client_fin = next(x for x in segs if x.dir is Direction.C2S and x.flags & Flag.FIN)
    later_data = [x for x in segs if x.dir is Direction.S2C and x.length and x.ts > client_fin.ts]
    assert len(later_data) >= 2, "the server keeps sending after the client's FIN"
    (shutdown,) = calls_named(r, "shutdown")
    assert shutdown.args == "SHUT_WR" and shutdown.ret == 0
    server_eof = [c for c in side_calls(r, s.server.port, "recvfrom") if c.ret == 0]
    assert len(server_eof) == 1
    client_reads_after = [c for c in side_calls(r, s.client.port, "recvfrom")
                          if c.ret and c.end > server_eof[0].end]
    assert client_reads_after, "the client still receives data after the server read 0"
    assert sum(c.ret or 0 for c in client_reads_after) > 0


@pytest.mark.live
def test_refused_is_syn_then_rst_and_econnrefused(out_dir: Path) -> None:
    r = run("refused", out_dir)
    assert labels(r.segments) == ["SYN", "RST"]
    assert [s.dir for s in r.segments] == [Direction.C2S, Direction.S2C]
    (connect,) = calls_named(r, "connect")
    assert connect.errno == "ECONNREFUSED" and connect.ret == -1
    assert connect.remote is not None and connect.remote.port == r.summaries[0].server.port
    assert connect.start <= r.segments[0].ts and connect.end >= r.segments[1].ts
    assert not calls_named(r, "listen", "accept4")


@pytest.mark.live
def test_reset_is_rst_after_data_without_fin(out_dir: Path) -> None:
    r = run("reset", out_dir)
    segs = conn_segments(r, 0)
    got = labels(segs)
    assert "RST" in got
    rst = segs[got.index("RST")]
    assert rst.dir is Direction.S2C
    assert any(x.length and x.dir is Direction.C2S and x.ts < rst.ts for x in segs)
    assert not any(x.flags & Flag.FIN for x in segs if x.dir is Direction.S2C), "closing side sent a FIN"
    s = r.summaries[0]
    server_close = [c for c in side_calls(r, s.server.port, "close") if c.remote == s.client]
    assert server_close and server_close[0].start <= rst.ts <= server_close[0].end + 0.005
    assert [c.errno for c in side_calls(r, s.client.port, "recvfrom")] == ["ECONNRESET"]
    # the server never read the data
    assert not side_calls(r, s.server.port, "recvfrom")


@pytest.mark.live
def test_time_wait_bind_fails_then_reuseaddr_works(out_dir: Path) -> None:
    r = run("time-wait", out_dir)
    assert len(r.summaries) == 2
    first = r.summaries[0]
    assert first.server_state.value == "TIME-WAIT", "the server closed first"
    port = first.server.port
    binds = [c for c in calls_named(r, "bind") if c.args == f"127.0.0.1:{port}"]
    assert [c.errno for c in binds] == [None, "EADDRINUSE", None]  # the first server's, then the restarts
    _first, failed, ok = binds
    assert failed.ret == -1 and ok.ret == 0 and failed.end <= ok.start
    assert failed.start > first.last_ts, "bind fails while the old connection is in TIME-WAIT"
    opts = [c for c in calls_named(r, "setsockopt") if c.fd == ok.fd and c.end <= ok.start]
    assert opts and "SO_REUSEADDR" in opts[-1].args
    assert r.summaries[1].server == first.server and r.summaries[1].conn_state == "SF"


@pytest.mark.live
def test_backlog_accept_returns_well_after_the_handshake(out_dir: Path) -> None:
    r = run("backlog", out_dir)
    assert [c.args for c in calls_named(r, "listen")] == ["1"]
    assert len(r.summaries) == demo.BACKLOG_CLIENTS == 3
    queued, dropped = [], []
    for s in r.summaries:
        segs = conn_segments(r, s.conn)
        (accept,) = [c for c in calls_named(r, "accept4") if c.remote == s.client]
        (connect,) = [c for c in calls_named(r, "connect") if c.local == s.client]
        assert connect.ret == 0
        if labels(segs)[:3] == ["SYN", "SYN-ACK", "ACK"]:  # queued by the kernel before accept()
            queued.append(s)
            assert accept.end - segs[2].ts > 0.6 * demo.BACKLOG_ACCEPT_DELAY
            assert connect.end < accept.start, "connect() returned before accept()"
        else:  # listen(1) queues two: the third SYN is dropped and sent again a second later
            dropped.append(s)
            assert labels(segs)[:4] == ["SYN", "SYN", "SYN-ACK", "ACK"]
            assert segs[1].ts - segs[0].ts > 0.9
    assert len(queued) == 2 and len(dropped) == 1
    assert any("after the handshake's final ACK" in n for n in r.notes)


@pytest.mark.live
def test_multi_client_three_connections(out_dir: Path) -> None:
    r = run("multi-client", out_dir)
    assert len(r.summaries) == 3
    assert len({s.client.port for s in r.summaries}) == 3
    assert len({s.server for s in r.summaries}) == 1
    for s in r.summaries:
        assert labels(conn_segments(r, s.conn))[:3] == ["SYN", "SYN-ACK", "ACK"]
        assert s.conn_state == "SF" and s.bytes_c2s == s.bytes_s2c == 32
    assert len({c.tid for c in calls_named(r, "connect")}) == 3, "one client thread each"


@pytest.mark.live
def test_udp_has_no_handshake(out_dir: Path) -> None:
    r = run("udp", out_dir)
    assert r.segments == () and r.summaries == ()
    assert len(r.datagrams) == 6 and {d.flow for d in r.datagrams} == {0}
    assert [d.dir for d in r.datagrams] == [Direction.C2S, Direction.S2C] * 3
    assert [d.payload for d in r.datagrams] == [b"hello\n", b"HELLO\n"] * 3
    assert len(calls_named(r, "sendto")) == 6 and not calls_named(r, "connect", "listen", "accept4")
    # each sendto caused its datagram, each recvfrom was released by one
    assert all(len(c.frames) == 1 for c in calls_named(r, "sendto", "recvfrom"))


# ---------------------------------------------------------------------------------------
# the picture, the command, the fallback
# ---------------------------------------------------------------------------------------


@pytest.mark.live
def test_png_is_drawn(tmp_path: Path) -> None:
    _require_capture()
    pytest.importorskip("matplotlib")
    result = demo.run_scenario("refused", tmp_path, live=True)
    assert result.png == tmp_path / "refused.png"
    assert result.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_list_and_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(demo.SCENARIOS)
    assert main(["demo", "no-such-lesson"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-lesson" in err[0] and "echo" in err[0]


def test_registrar_defaults() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo"])
    assert (args.name, args.output_dir, args.list, args.all) == ("echo", ".", False, False)
    args = parser.parse_args(["demo", "refused", "-o", "out"])
    assert (args.name, args.output_dir) == ("refused", "out")


def test_without_capture_opens_the_shipped_file(tmp_path: Path) -> None:
    result = demo.run_scenario("echo", tmp_path, live=False)
    assert not result.live
    assert result.pcap == CAPTURES / "echo.pcap"
    assert list(tmp_path.iterdir()) == [], "nothing is written when reading the shipped capture"
    assert result.calls and labels(result.segments)[:3] == ["SYN", "SYN-ACK", "ACK"]
    out = io.StringIO()
    text = "\n".join(demo.format_result(result))
    out.write(text)
    assert "SYN-ACK" in text and "connect(" in text


# ---------------------------------------------------------------------------------------
# the shipped library stays in step with the code
# ---------------------------------------------------------------------------------------


def _expected() -> dict[str, dict[str, object]]:
    path = CAPTURES / demo.EXPECTED_LABELS_FILE
    if not path.exists():
        pytest.fail(f"{path} is missing: remake the library (see captures/README.md)", pytrace=False)
    return json.loads(path.read_text())


def test_every_scenario_is_shipped() -> None:
    expected = _expected()
    assert sorted(expected) == sorted(demo.SCENARIOS)
    for name in demo.SCENARIOS:
        for suffix in (".pcap", ".calls.jsonl", ".png"):
            assert (CAPTURES / f"{name}{suffix}").is_file(), f"captures/{name}{suffix} missing"


@pytest.mark.parametrize("name", list(demo.SCENARIOS))
def test_shipped_capture_still_analyzes_the_same(name: str) -> None:
    want = _expected()[name]
    result = demo.run_scenario(name, CAPTURES, live=False)
    got = demo.expected_labels([result])[name]
    assert got == want, f"captures/{name}.pcap no longer analyzes as recorded in expected-labels.json"
    calls = read_calls_jsonl(CAPTURES / f"{name}.calls.jsonl")
    assert calls and len(calls) == len(result.calls)


@pytest.mark.live
def test_files_written_under_sudo_belong_to_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`sudo hsviz demo` must not leave root-owned files in the user's directory."""
    _require_capture()
    require(os.geteuid() == 0, "needs root to hand files to another user (runs in CI)")
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65533")
    assert main(["demo", "refused", "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    files = sorted(tmp_path.iterdir())
    names = {p.name for p in files}
    assert names - {"refused.kernel.jsonl"} == {"refused.pcap", "refused.calls.jsonl", "refused.png"}
    assert all((p.stat().st_uid, p.stat().st_gid) == (65534, 65533) for p in files)
