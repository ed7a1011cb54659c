"""``hsviz capture -- CMD`` and ``--trace-pid``: a live capture with strace beside it.

The end-to-end tests run ``python -m handshake_viz capture`` as a subprocess on a
free port, with real programs (tests/programs/exchange.py, which takes the port
from argv, and the textbook C echo client), then check the files it left: the
pcap, ``X.calls.jsonl`` and ``X.strace``; that ``hsviz analyze`` reads the pcap;
and that ``handshake_viz.api.load`` finds the calls, traced (not inferred), each
joined to the frames the alignment rules give it -- checked by what those frames
are (SYN, SYN-ACK, the handshake ACK, the data, the FINs), never by number.

They need root or CAP_NET_RAW (capture) and strace: without them they skip
here, and fail in CI (``CI=true``), where they must run.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import NOBODY

from handshake_viz import cli
from handshake_viz.api import load
from handshake_viz.model import Call, Direction, Flag, Segment


def strace_path_for(pcap: str | Path) -> Path:
    # Imported late: a submodule imported at collection time becomes an attribute of the
    # package, and tests/test_api.py checks the package's public names.
    from handshake_viz.session import strace_path_for as real

    return real(pcap)

REPO = Path(__file__).resolve().parents[1]
EXCHANGE = REPO / "tests" / "programs" / "exchange.py"
ECHO_C = REPO / "tests" / "programs" / "echo.c"
RUN_TIMEOUT = 30


# --------------------------------------------------------------------------- helpers


from conftest import can_capture as _can_capture  # noqa: E402
from conftest import require as _need  # noqa: E402


@pytest.fixture
def traced() -> None:
    """Capture and strace are both needed."""
    _need(_can_capture(), "needs root or CAP_NET_RAW to capture (runs in CI)")
    _need(shutil.which("strace") is not None, "needs strace (apt-get install strace)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hsviz(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "handshake_viz", *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, cwd=REPO, env=env, check=False, **kw)  # type: ignore[call-overload]


def _start_hsviz(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "handshake_viz", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait_for_line(stream: object, needle: str, timeout: float = 15.0) -> list[str]:
    """Lines read from a text pipe up to the one containing ``needle``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    fd = stream.fileno()  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never came; got {seen!r}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _echo_client(port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(message)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while data := s.recv(4096):
            got += data
    return got


class Joined:
    """A loaded connection's calls and segments, with questions about how they are joined."""

    def __init__(self, pcap: Path, conn: int = 0) -> None:
        self.trace = load(pcap)
        self.conn = self.trace.connection(conn)
        assert not self.conn.calls_inferred, "the calls beside the pcap must be used"
        assert self.conn.calls and not any(c.inferred for c in self.conn.calls)
        self.frames = {s.frame: s for s in self.conn.segments}
        s = self.conn.summary
        self.client = (s.client.ip, s.client.port)
        self.server = (s.server.ip, s.server.port)

    def side(self, call: Call) -> str:
        local = (call.local.ip, call.local.port) if call.local else None
        if local == self.client:
            return "client"
        if local == self.server:
            return "server"
        raise AssertionError(f"{call} is on neither side")

    def calls(self, side: str, *names: str) -> list[Call]:
        return [c for c in self.conn.calls if c.call in names and self.side(c) == side]

    def one(self, side: str, *names: str) -> Call:
        found = self.calls(side, *names)
        assert len(found) == 1, (side, names, found)
        return found[0]

    def segs(self, call: Call) -> list[Segment]:
        return [self.frames[f] for f in call.frames]


def _is(seg: Segment, direction: Direction, *, syn: bool = False, fin: bool = False,
        ack: bool = True, payload: bytes | None = None) -> bool:
    return (
        seg.dir is direction
        and bool(seg.flags & Flag.SYN) == syn
        and bool(seg.flags & Flag.FIN) == fin
        and bool(seg.flags & Flag.ACK) == ack
        and not seg.flags & Flag.RST
        and (payload is None or seg.payload == payload)
    )


C2S, S2C = Direction.C2S, Direction.S2C


def check_client_side(j: Joined, message: bytes, write: str, read: str, close_names: tuple[str, ...]) -> None:
    """connect -> SYN, SYN-ACK; write -> the data segment; shutdown -> the client's FIN;
    read -> the echo; read -> 0 -> the server's FIN."""
    connect = j.one("client", "connect")
    syn, syn_ack = j.segs(connect)
    assert _is(syn, C2S, syn=True, ack=False) and _is(syn_ack, S2C, syn=True)
    assert connect.start <= syn.ts + 0.01 and connect.end >= syn_ack.ts - 0.01  # same wall clock
    w = j.one("client", write)
    assert w.nbytes == len(message)
    assert [s.payload for s in j.segs(w)] == [message] and _is(j.segs(w)[0], C2S)
    shut = j.one("client", "shutdown")
    [fin] = j.segs(shut)
    assert _is(fin, C2S, fin=True)
    reads = j.calls("client", read)
    assert reads[-1].ret == 0 and reads[-1].errno is None
    [server_fin] = j.segs(reads[-1])
    assert _is(server_fin, S2C, fin=True)
    data_reads = [r for r in reads if r.ret]
    assert b"".join(s.payload for r in data_reads for s in j.segs(r)) == message
    assert all(s.dir is S2C for r in data_reads for s in j.segs(r))
    assert [c.call for c in j.conn.calls if j.side(c) == "client"][-1] in close_names


def check_server_side(j: Joined, message: bytes, read: str, write: str) -> None:
    """accept -> the handshake ACK; read -> the data; read -> 0 -> the client's FIN;
    write -> the echo; close -> the server's FIN."""
    accept = j.one("server", "accept", "accept4")
    [hs_ack] = j.segs(accept)
    assert _is(hs_ack, C2S) and hs_ack.rel_ack == 1 and hs_ack.rel_seq == 1
    reads = j.calls("server", read)
    assert b"".join(s.payload for r in reads if r.ret for s in j.segs(r)) == message
    assert reads[-1].ret == 0
    [client_fin] = j.segs(reads[-1])
    assert _is(client_fin, C2S, fin=True)
    w = j.one("server", write)
    assert [s.payload for s in j.segs(w)] == [message] and _is(j.segs(w)[0], S2C)
    close = j.one("server", "close")
    [server_fin] = j.segs(close)
    assert _is(server_fin, S2C, fin=True)


def check_files(pcap: Path) -> None:
    calls_jsonl = pcap.with_name(pcap.stem + ".calls.jsonl")
    assert pcap.is_file() and calls_jsonl.is_file() and strace_path_for(pcap).is_file()
    records = [json.loads(line) for line in calls_jsonl.read_text().splitlines()]
    assert records and all(r["type"] == "call" and r["inferred"] is False for r in records)
    assert any(r["conn"] == 0 and r["frames"] for r in records)  # written aligned
    got = _hsviz("analyze", str(pcap), "--jsonl")
    assert got.returncode == 0, got.stderr
    lines = [json.loads(line) for line in got.stdout.splitlines()]
    [connection] = [r for r in lines if r["type"] == "connection"]
    assert connection["segments"] == sum(r["type"] == "segment" for r in lines) >= 7


# --------------------------------------------------------------------------- end to end


def test_command_python_pair(traced: None, tmp_path: Path) -> None:
    port, message = _free_port(), b"hello, traced"
    pcap = tmp_path / "x.pcap"
    t0 = time.monotonic()
    got = _hsviz("capture", "--port", str(port), "-o", str(pcap), "--",
                 sys.executable, str(EXCHANGE), "pair", str(port), message.decode())
    took = time.monotonic() - t0
    assert got.returncode == 0, got.stderr
    assert f"echoed {message!r}" in got.stdout  # the command's own output comes through
    assert "hsviz: command exited with status 0\n" in got.stderr
    assert f"packets to {pcap}\n" in got.stderr
    assert "conn 0: socket calls" in got.stdout and "connect(" in got.stdout and "frames " in got.stdout
    assert took < 60  # it ends when the command does (a wide margin: the machine may be busy)
    check_files(pcap)
    j = Joined(pcap)
    check_client_side(j, message, "sendto", "recvfrom", ("close",))
    check_server_side(j, message, "recvfrom", "sendto")
    assert len({c.pid for c in j.conn.calls}) == 1 and len({c.tid for c in j.conn.calls}) == 2  # threads


def test_command_c_client(traced: None, tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    _need(cc is not None, "needs a C compiler (cc)")
    exe = tmp_path / "echo"
    subprocess.run([str(cc), "-O2", "-Wall", "-o", str(exe), str(ECHO_C)], check=True, timeout=60)
    port, message = _free_port(), b"textbook echo"
    srv = socket.create_server(("127.0.0.1", port))

    def serve() -> None:  # untraced: the C client is the traced command
        conn, _ = srv.accept()
        with conn:
            got = b""
            while data := conn.recv(4096):
                got += data
            conn.sendall(got)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    pcap = tmp_path / "c.pcap"
    try:
        got = _hsviz("capture", "--port", str(port), "-o", str(pcap), "--grace", "0.2", "--",
                     str(exe), "client", str(port), message.decode())
    finally:
        t.join(5)
        srv.close()
    assert got.returncode == 0, got.stderr
    assert f"echoed {message.decode()}" in got.stdout
    assert "hsviz: command exited with status 0\n" in got.stderr
    check_files(pcap)
    j = Joined(pcap)
    check_client_side(j, message, "write", "read", ("close",))
    assert not j.calls("server", "accept", "accept4", "read", "write")  # the server was not traced


def test_attach_then_ctrl_c_leaves_the_server_running(traced: None, tmp_path: Path) -> None:
    port, message = _free_port(), b"attached"
    server = subprocess.Popen([sys.executable, str(EXCHANGE), "server", str(port)],
                              stdout=subprocess.PIPE, text=True)
    pcap = tmp_path / "a.pcap"
    hs = None
    try:
        _wait_for_line(server.stdout, "listening")
        hs = _start_hsviz("capture", "--port", str(port), "-o", str(pcap), "--trace-pid", str(server.pid))
        _wait_for_line(hs.stderr, "listening on lo port")
        assert _echo_client(port, message) == message
        time.sleep(0.2)  # the last ACK
        hs.send_signal(signal.SIGINT)  # Ctrl-C
        _out, err = hs.communicate(timeout=RUN_TIMEOUT)
        assert hs.returncode == 0, err
        assert f"hsviz: stopped tracing pid {server.pid} (still running)" in err
        assert _alive(server.pid) and server.poll() is None
        # still serving, and no longer traced
        assert _echo_client(port, b"again") == b"again"
        with open(f"/proc/{server.pid}/status") as fh:
            assert "TracerPid:\t0\n" in fh.read()
    finally:
        if hs is not None and hs.poll() is None:
            hs.kill()
            hs.wait()
        server.kill()
        server.wait()
    check_files(pcap)
    j = Joined(pcap)
    check_server_side(j, message, "recvfrom", "sendto")
    assert {c.pid for c in j.conn.calls} == {server.pid}
    assert not j.calls("client", "connect", "sendto", "recvfrom")  # the client was not traced


def test_attached_processes_that_exit_stop_the_capture(traced: None, tmp_path: Path) -> None:
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(EXCHANGE), "server", str(port), "1"],
                              stdout=subprocess.PIPE, text=True)
    pcap = tmp_path / "e.pcap"
    try:
        _wait_for_line(server.stdout, "listening")
        hs = _start_hsviz("capture", "--port", str(port), "-o", str(pcap), "--grace", "0.2",
                          "--timeout", "20", "--trace-pid", str(server.pid))
        _wait_for_line(hs.stderr, "listening on lo port")
        t0 = time.monotonic()
        assert _echo_client(port, b"one") == b"one"
        _out, err = hs.communicate(timeout=RUN_TIMEOUT)
        assert time.monotonic() - t0 < 15  # not the 20 s timeout
    finally:
        server.kill()
        server.wait()
    assert hs.returncode == 0, err
    assert f"stopped tracing pid {server.pid} (exited)" in err
    check_files(pcap)


def test_sigterm_ends_the_started_command(traced: None, tmp_path: Path) -> None:
    port = _free_port()
    pcap = tmp_path / "t.pcap"
    hs = _start_hsviz("capture", "--port", str(port), "-o", str(pcap), "--",
                      sys.executable, str(EXCHANGE), "server", str(port))
    try:
        _wait_for_line(hs.stdout, "listening")  # the command's own line: it is serving
        assert _echo_client(port, b"before the end") == b"before the end"
        time.sleep(0.2)
        hs.send_signal(signal.SIGTERM)
        _out, err = hs.communicate(timeout=RUN_TIMEOUT)
    finally:
        if hs.poll() is None:
            hs.kill()
            hs.wait()
    assert hs.returncode == 0, err
    assert "hsviz: the capture stopped first (terminated): ended the command (killed by signal SIGTERM)\n" in err
    check_files(pcap)
    j = Joined(pcap)
    pids = {c.pid for c in j.conn.calls}
    assert len(pids) == 1 and not _alive(pids.pop())
    check_server_side(j, b"before the end", "recvfrom", "sendto")


def test_exit_status_is_reported_not_returned(traced: None, tmp_path: Path) -> None:
    got = _hsviz("capture", "--port", str(_free_port()), "-o", str(tmp_path / "s.pcap"), "--grace", "0",
                 "--", "sh", "-c", "exit 3")
    assert got.returncode == 0, got.stderr
    assert "hsviz: command exited with status 3\n" in got.stderr
    assert "hsviz: wrote 0 packets" in got.stderr and "wrote 0 socket calls" in got.stderr
    assert (tmp_path / "s.calls.jsonl").read_text() == ""


def test_command_runs_as_the_sudo_user_and_as_root_only_for_root(traced: None, nobody_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Under sudo the command runs as who ran sudo; --as-root is refused there (hsviz
    cannot know whether that user may run it as root) and kept for a real root login."""
    env = dict(os.environ, SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY))
    port = str(_free_port())
    as_user = _hsviz("capture", "--port", port, "-o", str(nobody_dir / "u.pcap"), "--grace", "0",
                     "--", "id", "-u", env=env)
    assert as_user.returncode == 0, as_user.stderr
    assert as_user.stdout.split()[0] == str(NOBODY)
    refused = _hsviz("capture", "--port", port, "-o", str(nobody_dir / "r.pcap"), "--grace", "0",
                     "--as-root", "--", "id", "-u", env=env)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("hsviz: --as-root: refused under sudo") and refused.stderr.count("\n") == 1
    assert not (nobody_dir / "r.pcap").exists()
    root_env = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
    # root without capabilities writes only where root may: not in the user's directory
    as_root = _hsviz("capture", "--port", port, "-o", str(tmp_path / "root.pcap"), "--grace", "0",
                     "--as-root", "--", "sh", "-c", "id -u; grep CapEff /proc/self/status", env=root_env)
    assert as_root.returncode == 0, as_root.stderr
    uid, caps = as_root.stdout.split("\n")[:2]
    assert uid == "0" and int(caps.split()[1], 16) != 0  # root's full rights, as asked


# --------------------------------------------------------------------------- no strace


@pytest.fixture
def path_without_strace(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "true"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return dict(os.environ, PATH=str(bin_dir))


@pytest.mark.parametrize("how", ["command", "pid"])
def test_strace_missing_says_so_before_capturing(path_without_strace: dict[str, str], tmp_path: Path,
                                                  how: str) -> None:
    pcap = tmp_path / "n.pcap"
    what = ["--", "true"] if how == "command" else ["--trace-pid", str(os.getpid())]
    got = _hsviz("capture", "--port", str(_free_port()), "-o", str(pcap), *what, env=path_without_strace)
    assert got.returncode == 2
    assert got.stderr == "hsviz: tracing needs strace (apt-get install strace)\n"
    assert got.stdout == ""
    assert not pcap.exists() and not strace_path_for(pcap).exists()


def test_capturing_without_a_command_needs_no_strace(path_without_strace: dict[str, str],
                                                     tmp_path: Path) -> None:
    _need(_can_capture(), "needs root or CAP_NET_RAW to capture (runs in CI)")
    pcap = tmp_path / "plain.pcap"
    got = _hsviz("capture", "--port", str(_free_port()), "-o", str(pcap), "--timeout", "0.2",
                 env=path_without_strace)
    assert got.returncode == 0, got.stderr
    assert pcap.is_file() and not strace_path_for(pcap).exists()


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trace-pid", "1", "--", "true"], "--trace-pid: trace either a command after -- or"),
        (["--as-root"], "--as-root: only for a command given after --"),
        (["--"], "--: give the command to trace after it"),
        (["--grace", "-1", "--", "true"], "--grace -1.0: must be 0 or more seconds"),
        (["--trace-pid", "0"], "--trace-pid 0: no such process"),
        (["--", "surely-no-such-command-hsviz"], "surely-no-such-command-hsviz: command not found"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    if shutil.which("strace") is None and "strace" not in message:
        pytest.skip("strace is checked before these")
    out, err = io.StringIO(), io.StringIO()
    pcap = tmp_path / "u.pcap"
    status = cli.main(["capture", "--port", "9", "-o", str(pcap), *argv], out=out, err=err)
    assert status == 2
    assert err.getvalue().startswith(f"hsviz: {message}") and err.getvalue().count("\n") == 1
    assert not pcap.exists()


def test_strace_path_for_and_status_words() -> None:
    from handshake_viz.session import describe_status

    assert strace_path_for("d/trace.pcap") == Path("d/trace.strace")
    assert strace_path_for("trace.pcapng") == Path("trace.strace")
    assert strace_path_for("odd.name") == Path("odd.name.strace")
    assert describe_status(0) == "exited with status 0"
    assert describe_status(3) == "exited with status 3"
    assert describe_status(-signal.SIGTERM) == "killed by signal SIGTERM"
    assert describe_status(None) == "status unknown"


def test_capture_stopping_first_ends_the_command(traced: None, tmp_path: Path) -> None:
    t0 = time.monotonic()
    got = _hsviz("capture", "--port", str(_free_port()), "-o", str(tmp_path / "k.pcap"), "--timeout", "0.3",
                 "--", "sleep", "30")
    assert time.monotonic() - t0 < 20  # not sleep's 30 s
    assert got.returncode == 0, got.stderr
    assert "hsviz: the capture stopped first (timeout): ended the command (killed by signal SIGTERM)\n" \
        in got.stderr


def test_a_command_about_to_exit_is_not_ended(traced: None, tmp_path: Path) -> None:
    """--connections 1 stops the capture at the last ACK; the command still has work to
    do (here: 0.3 s) and gets the grace period to finish it."""
    port = _free_port()
    got = _hsviz("capture", "--port", str(port), "-o", str(tmp_path / "g.pcap"), "--connections", "1",
                 "--grace", "3", "--", sys.executable, str(EXCHANGE), "pair", str(port), "hello", "0.3")
    assert got.returncode == 0, got.stderr
    assert "hsviz: command exited with status 0\n" in got.stderr and "ended the command" not in got.stderr
    assert "echoed b'hello'" in got.stdout
