"""Privilege, output files, hostile input and faults during a capture (issue 14).

Each test states the fault, does it for real where the machine allows (a tmpfs that
fills up, a directory removed under a running capture, ``kill -9``, a user the
capture drops to), and checks what the program does: one line naming the file and
the problem, a non-zero status, no traceback, and nothing captured lost that the
file could hold.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NOBODY, can_capture, require

from handshake_viz import report
from handshake_viz.errors import OutputError, TraceFileError, UsageError
from handshake_viz.model import Call
from handshake_viz.outfile import AtomicFile, create_live, parse_mode
from handshake_viz.pcapio import PcapWriter
from handshake_viz.text import safe_text
from handshake_viz.trace import MAX_LINE, parse_strace, read_calls_jsonl, write_calls_jsonl

REPO = Path(__file__).resolve().parents[1]
ECHO = REPO / "captures" / "echo.pcap"
TIMEOUT = 60


def _hsviz(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "handshake_viz", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd or REPO, env=env, check=False, **kw)  # type: ignore[call-overload]


def _one_line(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2, no traceback, exactly one line on stderr holding every needle."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


# --------------------------------------------------------------------------- text


def test_safe_text_escapes_what_no_sink_may_receive() -> None:
    assert safe_text("send\x1b[31m(3) = -1 E\x1b[2J") == "send\\x1b[31m(3) = -1 E\\x1b[2J"
    assert safe_text("a\ud800b\u202ec\x7f\x85") == "a\\ud800b\\u202ec\\x7f\\x85"
    assert safe_text("plain \\x41 ünïcode →") == "plain \\x41 ünïcode →"  # printable text unchanged
    out = safe_text("".join(map(chr, range(0x110000))))
    assert all(0x20 <= ord(c) != 0x7F for c in out if ord(c) < 0xA0)
    out.encode("utf-8")  # no lone surrogate left


def test_ladder_escapes_a_call_log_s_text() -> None:
    call = Call(pid=1, tid=1, fd=3, call="send\x1b[31m", start=1.0, end=1.0, ret=-1, errno="E\x1b[2J")
    line = report.format_call(call, 1.0)
    assert "\x1b" not in line and "send\\x1b[31m(3) = -1 E\\x1b[2J" in line


def test_error_lines_escape_file_names(tmp_path: Path) -> None:
    res = _hsviz("analyze", str(tmp_path / "x\x1b[2J.pcap"))
    _one_line(res, "x\\x1b[2J.pcap: no such file")
    assert "\x1b" not in res.stderr


# --------------------------------------------------------------------------- hostile call logs


def _call_line(**fields: object) -> str:
    base: dict[str, object] = {"pid": 10, "tid": 10, "fd": 3, "call": "connect", "start": 1795321422.64,
                               "end": 1795321422.65, "ret": 0}
    base.update(fields)
    return json.dumps(base)


HOSTILE_LOGS = {
    "nested 50,000 deep": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "nested 40 deep": '{"pid": 1, "x": ' + "[" * 40 + "]" * 40 + "}",
    "a 400-digit start": _call_line(start=None).replace('"start": null', '"start": ' + "1" * 400),
    "a 5,000-digit pid": _call_line(pid=None).replace('"pid": null', '"pid": ' + "9" * 5000),
    "a lone surrogate in call": _call_line(call="\ud800"),
    "an escape in call": _call_line(call="send\x1b[31m", errno="E\x1b[2J"),
    "an escape in errno": _call_line(errno="E\x1b[2J"),
    "an address that is not one": _call_line(local={"ip": "\x1b[2J", "port": 1}),
    "a time beyond any clock": _call_line(start=1e300, end=1e300),
    "Infinity": _call_line().replace('"ret": 0', '"ret": Infinity'),
    "a 10 MB line": '{"args": "' + "x" * 10_000_000 + '"}',
}


@pytest.fixture(scope="module")
def hostile_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """echo.pcap with each hostile calls.jsonl beside it."""
    root = tmp_path_factory.mktemp("hostile")
    pairs = {}
    for i, (name, text) in enumerate(HOSTILE_LOGS.items()):
        pcap = root / f"h{i}.pcap"
        shutil.copy(ECHO, pcap)
        pcap.with_suffix(".calls.jsonl").write_text(text + "\n", encoding="utf-8", errors="surrogatepass")
        pairs[name] = pcap
    return pairs


@pytest.mark.parametrize("name", list(HOSTILE_LOGS))
def test_hostile_calls_jsonl_is_one_line_and_exit_2(name: str, hostile_pairs: dict[str, Path],
                                                     tmp_path: Path) -> None:
    pcap = hostile_pairs[name]
    for argv in (["analyze", str(pcap)], ["plot", str(pcap), "-o", str(tmp_path / "x.svg")],
                 ["export", str(pcap), "-o", str(tmp_path / "x.pcapng")]):
        res = _hsviz(*argv)
        _one_line(res, f"{pcap.stem}.calls.jsonl: line 1")
        assert "\x1b" not in res.stderr, res.stderr
    assert not (tmp_path / "x.svg").exists() and not (tmp_path / "x.pcapng").exists()
    import handshake_viz as hv

    with pytest.raises(TraceFileError, match=r"\.calls\.jsonl: line 1: "):
        hv.load(pcap)


def test_call_log_bounds_keep_good_records() -> None:
    """The bounds are far from what a real record needs: the shipped logs all read."""
    for log in sorted((REPO / "captures").glob("*.calls.jsonl")):
        assert read_calls_jsonl(log)


def test_strace_parser_counts_hostile_lines_and_never_raises() -> None:
    lines = [
        "9" * 5000 + " 1795321422.1 connect(3, {sa_family=AF_INET}, 16) = 0 <0.1>",
        "1 " + "1" * 400 + ".5 connect(3, {}, 16) = 0 <0.1>",
        "1 1795321422.1 connect(3<TCP:[1.2.3.4:" + "9" * 5000 + "]>, {}, 16) = " + "1" * 5000,
        "1 1795321422.1 recvfrom(" + "9" * 5000 + ', "x", 1, 0, NULL, NULL) = 1 <0.000001>',
        "1 1795321422.1 " + "(" * 50_000,
        "1 1795321422.1 send\x1b[31m(3, \"\x1b[2J\", 1, 0) = 1",
        None,  # a line too long to keep
        "x" * (MAX_LINE + 1),
    ]
    got = parse_strace(lines)
    assert got.unparsed >= 3 and got.lines >= 6
    assert all(c.call.isidentifier() for c in got.calls)


def test_overlong_strace_lines_are_not_held(tmp_path: Path) -> None:
    from handshake_viz.trace import parse_strace_file

    log = tmp_path / "x.strace"
    log.write_text("1 1795321422.1 " + "x" * 5_000_000 + "\n" + "1 1795321422.2 close(3) = 0 <0.1>\n")
    got = parse_strace_file(log, inet_only=False)
    assert got.unparsed == 1 and "longer than 65,536 characters" in got.problems[0]
    assert [c.call for c in got.calls] == ["close"]


# --------------------------------------------------------------------------- output files


def test_parse_mode() -> None:
    assert parse_mode("0600") == 0o600 and parse_mode("644") == 0o644
    for bad in ("0777", "0400", "abc", "04600"):
        with pytest.raises(UsageError, match="--mode"):
            parse_mode(bad)


def test_outputs_are_new_private_files_never_written_through_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep me")
    os.chmod(secret, 0o640)
    link = tmp_path / "link.pcap"
    link.symlink_to(secret)
    with pytest.raises(OutputError, match=r"link\.pcap: is a symbolic link"):
        PcapWriter(link)
    with pytest.raises(OutputError, match=r"link\.pcap: is a symbolic link"):
        write_calls_jsonl([], link)
    assert secret.read_text() == "keep me" and stat.S_IMODE(secret.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pcap", "secret"]  # no temporary left
    (tmp_path / "fifo").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="not a regular file"):
        create_live(tmp_path / "fifo")
    old = tmp_path / "old.pcap"
    old.write_text("old")
    os.chmod(old, 0o644)
    with PcapWriter(old) as w:
        w.write(b"\0" * 60, 1.0)
    assert stat.S_IMODE(old.stat().st_mode) == 0o600 and old.stat().st_size == 24 + 16 + 60


def test_atomic_file_leaves_the_old_file_on_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.calls.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), AtomicFile(path) as fh:
        fh.write("new")
        raise RuntimeError
    assert path.read_text() == "old\n" and len(list(tmp_path.iterdir())) == 1


def _whole_pcap(path: Path) -> int:
    """Records of a little-endian pcap, asserting that it ends on a record boundary."""
    data = path.read_bytes()
    pos, n = 24, 0
    while pos < len(data):
        assert pos + 16 <= len(data), "a cut record header"
        pos += 16 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        n += 1
    assert pos == len(data), "a cut record"
    return n


def test_writer_on_a_full_disk_cuts_back_to_whole_records(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write fails part-way through a buffer (ENOSPC after a short write)."""
    import handshake_viz.pcapio as pcapio

    path = tmp_path / "x.pcap"
    w = PcapWriter(path, background_flush=False, max_buffer=1 << 30, flush_interval=1e9)
    for i in range(10):
        w.write(bytes(100), 1.0 + i)
    w.flush()
    real_write, budget = os.write, [24 + 3 * 116 + 50]  # room for three records and half of one

    def full(fd: int, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]
        if budget[0] <= 0:
            raise OSError(28, "No space left on device")
        n = real_write(fd, view[: budget[0]])
        budget[0] -= n
        return n

    monkeypatch.setattr(pcapio.os, "write", full)
    for i in range(5):
        w.write(bytes(100), 20.0 + i)
    budget[0] = 3 * 116 + 50
    with pytest.raises(OutputError, match=r"x\.pcap: cannot write: No space left on device: the file keeps "
                       r"the first 13 packets, cut back to the last whole record; 2 lost"):
        w.flush()
    with pytest.raises(OutputError):
        w.write(bytes(100), 30.0)
    assert (w.on_disk, w.lost) == (13, 3)
    monkeypatch.setattr(pcapio.os, "write", real_write)
    w.close()  # the error was raised already: closing is quiet
    assert _whole_pcap(path) == 13


def test_writer_says_when_its_file_was_removed(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    w = PcapWriter(d / "x.pcap", background_flush=False)
    w.write(bytes(60), 1.0)
    shutil.rmtree(d)
    with pytest.raises(OutputError, match=r"x\.pcap: the file was removed while it was written \(its "
                       r"directory deleted\?\): its 1 packets are lost"):
        w.close()


def test_a_4_gib_record_claim_never_allocates_4_gib(tmp_path: Path) -> None:
    """Under a 1 GiB address-space limit, a record header claiming 4 GiB (with a
    snaplen that allows it) is a truncated record, not a MemoryError."""
    path = tmp_path / "huge.pcap"
    header = (0xA1B2C3D4).to_bytes(4, "little") + bytes.fromhex("02000400") + bytes(8)
    header += (0xFFFFFFFF).to_bytes(4, "little") + (1).to_bytes(4, "little")
    path.write_bytes(header + (1).to_bytes(4, "little") + bytes(4) + (0xFFFFFFF0).to_bytes(4, "little") * 2
                     + bytes(100))
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from handshake_viz.cli import main\n"
        "p = sys.argv[1]\n"
        "print(main(['analyze', p]), main(['export', p, '-o', p + '.pcapng']), main(['replay', p, '--speed', '0']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert res.stdout.split() == ["2", "2", "2"], res.stdout + res.stderr
    assert "MemoryError" not in res.stderr and "Traceback" not in res.stderr
    assert "record 1 truncated: 100 of 4294967280 bytes" in res.stderr


# --------------------------------------------------------------------------- headers only


def _segments_and_lengths(path: Path) -> tuple[list[dict[str, object]], list[tuple[object, ...]]]:
    lines = [json.loads(line) for line in _hsviz("analyze", "--jsonl", str(path)).stdout.splitlines()]
    segments = [d for d in lines if d["type"] == "segment"]
    conns = [(d["conn"], d["segments"], d["bytes_c2s"], d["bytes_s2c"], d["conn_state"])
             for d in lines if d["type"] == "connection"]
    return segments, conns


def test_export_no_payload_keeps_every_length(tmp_path: Path) -> None:
    src = tmp_path / "echo.pcap"
    shutil.copy(ECHO, src)
    for flags in (["--no-payload"], ["--snaplen", "96"], ["--no-payload", "--mode", "0644"]):
        dest = tmp_path / "cut.pcapng"
        res = _hsviz("export", str(src), "-o", str(dest), *flags)
        assert res.returncode == 0, res.stderr
        assert _segments_and_lengths(dest) == _segments_and_lengths(src)
        assert stat.S_IMODE(dest.stat().st_mode) == (0o644 if "--mode" in flags else 0o600)
    from handshake_viz.decode import open_capture

    with open_capture(tmp_path / "cut.pcapng") as reader:
        assert all(not p.payload for p in reader) and reader.stats.snaplen_cut > 0


# --------------------------------------------------------------------------- live: privilege


def _need_root_capture() -> None:
    require(can_capture() and os.geteuid() == 0, "needs root to capture and switch users (runs in CI)")
    require(shutil.which("strace") is not None, "needs strace (.ci/run installs it)")


def _sudo_env() -> dict[str, str]:
    return {**os.environ, "SUDO_UID": str(NOBODY), "SUDO_GID": str(NOBODY)}


def _root_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Capture:
    """``hsviz capture ...`` running in the background, its stderr collected."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "handshake_viz", "capture", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        self._out = threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True)  # type: ignore[union-attr]
        self._out.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.err.append(line)
            if line.startswith("listening on"):
                self.ready.set()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail("capture never got ready: " + "".join(self.err))

    def finish(self) -> int:
        rc = self.proc.wait(TIMEOUT)
        self._out.join(5)
        time.sleep(0.05)
        return rc


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            kids += [int(k) for k in fh.read().split()]
    return kids


def _status(pid: int) -> dict[str, str]:
    from handshake_viz.privilege import process_status

    return process_status(pid)


def test_a_running_capture_keeps_no_privilege(nobody_dir: Path) -> None:
    """`sudo hsviz capture -- CMD`: once listening, hsviz, strace and the command are
    the user who ran sudo, with no capability at all, and the capture still works."""
    _need_root_capture()
    port = _free_port()
    cap = _Capture("--port", str(port), "-o", "p.pcap", "--", "sleep", "3", cwd=nobody_dir, env=_sudo_env())
    cap.wait_ready()
    time.sleep(0.3)
    status = _status(cap.proc.pid)
    lines = {k: status[k] for k in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                                    "NoNewPrivs")}
    print("\n".join(f"{k}:\t{v}" for k, v in lines.items()))  # the report quotes these (pytest -s)
    assert lines["Uid"].split() == [str(NOBODY)] * 4 and lines["Gid"].split() == [str(NOBODY)] * 4
    assert all(int(lines[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    assert lines["NoNewPrivs"] == "1"
    assert _status(cap.proc.pid)["Uid"].split()[0] == str(NOBODY)
    for child in _children(cap.proc.pid):  # strace and the watchdog
        st = _status(child)
        assert st["Uid"].split() == [str(NOBODY)] * 4 and int(st["CapEff"], 16) == 0, st
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", port)) != 0  # refused: SYN and RST are captured
    assert cap.finish() == 0, "".join(cap.err)
    assert _whole_pcap(nobody_dir / "p.pcap") == 2
    for name in ("p.pcap", "p.strace", "p.calls.jsonl"):
        st = (nobody_dir / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o600), name


def test_plain_root_drops_to_user_given(nobody_dir: Path) -> None:
    """Run as plain root, `--user NAME` is whom the capture becomes."""
    _need_root_capture()
    res = _hsviz("capture", "--port", str(_free_port()), "-o", "u.pcap", "--timeout", "0.3", "--user", "nobody",
                 cwd=nobody_dir, env=_root_env())
    assert res.returncode == 0, res.stderr
    assert (nobody_dir / "u.pcap").stat().st_uid == NOBODY
    res = _hsviz("capture", "--port", "1", "--user", "no-such-user-hsviz", cwd=nobody_dir, env=_root_env())
    _one_line(res, "--user no-such-user-hsviz: no such user")


@pytest.fixture
def root_secret(tmp_path: Path) -> Iterator[Path]:
    """A root-owned 0600 file, as /etc/shadow is."""
    secret = tmp_path / "shadow"
    secret.write_text("root:secret\n")
    os.chmod(secret, 0o600)
    yield secret
    assert secret.read_text() == "root:secret\n", "the root-owned file was written"
    st = secret.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), "the root-owned file was given away"


@pytest.mark.parametrize("planted", ["x.pcap", "x.strace", "x.calls.jsonl"])
def test_links_to_root_files_are_never_written_or_given_away(planted: str, nobody_dir: Path,
                                                              root_secret: Path) -> None:
    """`sudo hsviz capture -o x.pcap -- CMD` with x.pcap, x.strace or x.calls.jsonl a
    link to a root-owned file (the user planted it in their own directory)."""
    _need_root_capture()
    (nobody_dir / planted).symlink_to(root_secret)
    res = _hsviz("capture", "--port", str(_free_port()), "-o", "x.pcap", "--timeout", "1", "--", "true",
                 cwd=nobody_dir, env=_sudo_env())
    _one_line(res, f"{planted}: is a symbolic link")
    assert sorted(p.name for p in nobody_dir.iterdir()) == [planted]  # nothing made, nothing left


def test_a_root_owned_file_is_not_replaced(nobody_dir: Path) -> None:
    _need_root_capture()
    victim = nobody_dir / "x.pcap"
    victim.write_text("root's\n")
    os.chmod(victim, 0o600)
    res = _hsviz("capture", "--port", str(_free_port()), "-o", "x.pcap", "--timeout", "1", cwd=nobody_dir,
                 env=_sudo_env())
    _one_line(res, "x.pcap: exists and you may not write it: not replaced")
    assert victim.read_text() == "root's\n" and victim.stat().st_uid == 0


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def _talk(port: int, rounds: int, size: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(rounds):
            s.sendall(b"x" * size)
            got = 0
            while got < size:
                got += len(s.recv(65536))


def test_capture_no_payload_keeps_every_length(tmp_path: Path) -> None:
    """Two captures of the same traffic, one with --no-payload, one --snaplen 80: the
    analysis has the same segments, lengths, numbers and states as the full one."""
    _need_root_capture()
    srv, _ = _echo_server()
    port = srv.getsockname()[1]
    caps = {name: _Capture("--port", str(port), "-o", f"{name}.pcap", "--count", "12", *flags,
                           cwd=tmp_path, env=_root_env())
            for name, flags in (("full", []), ("headers", ["--no-payload"]), ("s80", ["--snaplen", "80"]))}
    for c in caps.values():
        c.wait_ready()
    _talk(port, 3, 3000)
    for c in caps.values():
        assert c.finish() == 0, "".join(c.err)
    srv.close()
    full = _segments_and_lengths(tmp_path / "full.pcap")
    assert len(full[0]) == 12 and sum(d["len"] for d in full[0]) == 18000  # type: ignore[misc]
    for name in ("headers", "s80"):
        cut = _segments_and_lengths(tmp_path / f"{name}.pcap")
        for a, b in zip(full[0], cut[0], strict=True):
            # each packet socket reads its own arrival stamp: the times differ by microseconds
            assert {**a, "ts": 0} == {**b, "ts": 0}
        assert cut[1] == full[1]
    assert (tmp_path / "headers.pcap").stat().st_size < (tmp_path / "full.pcap").stat().st_size / 10


# --------------------------------------------------------------------------- live: faults


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up."""
    require(os.geteuid() == 0, "needs root to mount a tmpfs (runs in CI)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    require(res.returncode == 0, f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_leaves_a_readable_pcap_and_counts_the_lost(small_disk: Path) -> None:
    _need_root_capture()
    srv, _ = _echo_server()
    port = srv.getsockname()[1]
    cap = _Capture("--port", str(port), "-o", str(small_disk / "x.pcap"), "--timeout", "30",
                   cwd=small_disk, env=_root_env())
    cap.wait_ready()
    _talk(port, 40, 4000)  # about 330 KB of frames on a 256 KiB disk
    rc = cap.finish()
    srv.close()
    err = "".join(cap.err)
    assert rc == 2 and "Traceback" not in err, err
    assert "x.pcap: cannot write: No space left on device: the file keeps the first" in err
    assert "cut back to the last whole record;" in err and " lost" in err
    kept = _whole_pcap(small_disk / "x.pcap")
    assert f"the file keeps the first {kept:,} packets" in err
    if shutil.which("tcpdump"):
        res = subprocess.run(["tcpdump", "-nn", "-r", str(small_disk / "x.pcap")], capture_output=True,
                             text=True, check=False)
        assert res.returncode == 0 and len(res.stdout.splitlines()) == kept, res.stderr


def test_a_strace_log_that_fills_the_disk_is_cut_at_a_whole_line(small_disk: Path) -> None:
    _need_root_capture()
    chatty = [sys.executable, "-c", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "for _ in range(20000): s.sendto(b'x', ('127.0.0.1', 9))"]
    res = _hsviz("capture", "--port", str(_free_port()), "-o", str(small_disk / "x.pcap"), "--", *chatty,
                 cwd=small_disk, env=_root_env())
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "x.strace: cannot write: No space left on device: the log keeps its first" in res.stderr
    assert "cut back to the last whole line;" in res.stderr
    log = (small_disk / "x.strace").read_bytes()
    assert log and log.endswith(b"\n")
    assert _whole_pcap(small_disk / "x.pcap") == 0


def test_a_removed_output_directory_is_reported(tmp_path: Path) -> None:
    _need_root_capture()
    srv, _ = _echo_server()
    port = srv.getsockname()[1]
    out = tmp_path / "out"
    out.mkdir()
    cap = _Capture("--port", str(port), "-o", str(out / "x.pcap"), "--timeout", "3", cwd=tmp_path,
                   env=_root_env())
    cap.wait_ready()
    _talk(port, 2, 100)
    time.sleep(0.3)
    shutil.rmtree(out)
    _talk(port, 2, 100)
    rc = cap.finish()
    srv.close()
    err = "".join(cap.err)
    assert rc == 2 and "Traceback" not in err, err
    assert "x.pcap: the file was removed while it was written (its directory deleted?)" in err
    assert "wrote" not in err


def test_kill_9_of_hsviz_ends_strace_and_the_command(nobody_dir: Path) -> None:
    _need_root_capture()
    marker = "301.25"  # a sleep nobody else runs
    cap = _Capture("--port", str(_free_port()), "-o", "k.pcap", "--", "sh", "-c",
                   f"sleep {marker} & sleep {marker}", cwd=nobody_dir, env=_sudo_env())
    cap.wait_ready()
    deadline = time.monotonic() + 10
    while len(_pids_of(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_pids_of(marker)) == 2
    strace = [p for p in _children(cap.proc.pid) if "strace" in _cmdline(p)]
    cap.proc.kill()
    cap.proc.wait()
    deadline = time.monotonic() + 5
    while (_pids_of(marker) or any(_running(p) for p in strace)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_of(marker) == [] and not any(_running(p) for p in strace)
    assert _whole_pcap(nobody_dir / "k.pcap") == 0  # the capture's file is still whole


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _pids_of(marker: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline(int(p)) == f"sleep {marker} "
            and _running(int(p))]


def test_a_failed_trace_pid_leaves_no_file(tmp_path: Path) -> None:
    """A process already traced (by another strace) cannot be attached to."""
    _need_root_capture()
    victim = subprocess.Popen(["strace", "-o", "/dev/null", "sleep", "30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        kids: list[int] = []
        while not kids and time.monotonic() < deadline:
            kids = [k for k in _children(victim.pid) if "sleep" in _cmdline(k)]
            time.sleep(0.02)
        assert kids
        res = _hsviz("capture", "--port", str(_free_port()), "-o", "t.pcap", "--trace-pid", str(kids[0]),
                     cwd=tmp_path, env=_root_env())
        _one_line(res, f"pid {kids[0]}")
        assert list(tmp_path.iterdir()) == []
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
