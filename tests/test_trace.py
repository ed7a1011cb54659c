"""Tests for handshake_viz.trace (strace parsing, calls.jsonl) and handshake_viz.tracer (running under strace).

Parser tests read strace output this project recorded from its own programs
(tests/programs/echo.py and echo.c, re-recorded by tests/data/strace/record.py)
and hand-edited variants (tests/data/strace/edited-*.txt).  They assert
relations that hold in any recording (the client's 4-tuple mirrors the
server's, bytes written equal bytes read), so re-recording keeps them valid.
Live tests run the programs under strace here; they need strace (and cc for C).
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handshake_viz.errors import OutputError, TraceError, TraceFileError
from handshake_viz.model import Call, Endpoint
from handshake_viz.trace import (
    RESTART_ERRNOS,
    StraceParse,
    call_from_json,
    calls_path_for,
    load_calls,
    parse_strace,
    parse_strace_file,
    read_calls_jsonl,
    write_calls_jsonl,
)
from handshake_viz.tracer import (
    TRACED_SYSCALLS,
    attach,
    start_traced,
    strace_command,
    strace_version,
    sudo_user,
)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "strace"
PROGRAMS = HERE / "programs"
ECHO_PY = PROGRAMS / "echo.py"
ECHO_C = PROGRAMS / "echo.c"

needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def parse(name: str, **kw: object) -> StraceParse:
    return parse_strace_file(DATA / name, **kw)  # type: ignore[arg-type]


def only(calls: list[Call], name: str, **where: object) -> Call:
    found = [c for c in calls if c.call == name and all(getattr(c, k) == v for k, v in where.items())]
    assert len(found) == 1, (name, where, found)
    return found[0]


def named(calls: list[Call], *names: str) -> list[Call]:
    return [c for c in calls if c.call in names]


def mirrored(a: Call, b: Call) -> bool:
    return a.local is not None and a.remote is not None and (a.local, a.remote) == (b.remote, b.local)


def check_echo_exchange(calls: list[Call], message_len: int) -> None:
    """The client/server echo: connect and accept share one 4-tuple, bytes match, EOF seen."""
    connect = only(calls, "connect")
    accept = only(calls, "accept4" if named(calls, "accept4") else "accept")
    assert connect.errno is None and connect.ret == 0
    assert accept.ret is not None and accept.ret >= 0 and accept.errno is None
    assert mirrored(connect, accept)
    assert accept.remote is not None and accept.remote.port != 0
    client_fd, server_fd = connect.fd, accept.ret
    client = [c for c in calls if c.pid == connect.pid and c.fd == client_fd and c.start >= connect.start]
    server = [c for c in calls if c.tid != connect.tid and c.fd == server_fd and c.start >= accept.start]
    for side in (client, server):
        writes = [c for c in side if c.call in ("write", "send", "sendto")]
        reads = [c for c in side if c.call in ("read", "recv", "recvfrom")]
        assert sum(c.nbytes or 0 for c in writes) == message_len
        assert sum(c.nbytes or 0 for c in reads) == message_len
        assert reads[-1].ret == 0 and reads[-1].nbytes == 0  # EOF: the peer's FIN
        assert side[-1].call == "close" and side[-1].ret == 0
        assert all(mirrored(c, accept) or mirrored(c, connect) for c in side)
    shutdown = only(calls, "shutdown")
    assert shutdown.args.endswith("SHUT_WR") and shutdown.fd == client_fd


# ----------------------------------------------------------- recorded strace


def test_python_pair_threads_and_split_lines() -> None:
    r = parse("py-pair.txt")
    assert r.unparsed == 0 and r.problems == []
    calls = r.calls
    assert [c.start for c in calls] == sorted(c.start for c in calls)
    check_echo_exchange(calls, len(b"hello"))
    # The server runs in a thread: same pid, another tid (from the clone3 line).
    accept = only(calls, "accept4")
    connect = only(calls, "connect")
    assert accept.pid == connect.pid and accept.tid != accept.pid
    # accept4 was split by the main thread's lines: start from the first half,
    # end from the -T duration, which is before the "resumed" line was printed.
    text = (DATA / "py-pair.txt").read_text()
    first = next(line for line in text.splitlines() if "accept4(" in line)
    resumed = next(line for line in text.splitlines() if "<... accept4 resumed>" in line)
    assert "<unfinished ...>" in first
    assert accept.start == float(first.split()[1])
    assert accept.start < accept.end <= float(resumed.split()[1])
    dur = float(resumed.rsplit("<", 1)[1].rstrip(">\n"))
    assert accept.end == pytest.approx(accept.start + dur, abs=1e-9)
    # Calls on files (Python reading its modules) and pipes are not socket calls.
    assert all(c.local is not None or c.remote is not None for c in calls)
    everything = parse("py-pair.txt", inet_only=False).calls
    assert len(everything) > len(calls)
    assert {c.call for c in everything} - {c.call for c in calls} <= {"read", "write", "close"}
    assert r.exits and all(v == "exited with 0" for v in r.exits.values())


def test_python_pair_hex_strings() -> None:
    """-xx -s 8 escapes even the address strings: inet_addr("\\x31\\x32\\x37...")."""
    r = parse("py-pair-xx.txt")
    assert r.unparsed == 0
    check_echo_exchange(r.calls, len(b'hi "there"'))
    bind = only(r.calls, "bind")
    listen = only(r.calls, "listen")
    assert "\\x31\\x32\\x37" in (DATA / "py-pair-xx.txt").read_text()
    assert bind.local == listen.local and bind.local is not None and bind.local.ip == "127.0.0.1"
    assert any('"...' in c.args for c in r.calls)  # -s 8 truncation kept in args


def test_c_pair_fork() -> None:
    r = parse("c-pair.txt")
    assert r.unparsed == 0
    calls = r.calls
    check_echo_exchange(calls, len(b'hello "world"\\n'))
    accept = only(calls, "accept")
    connect = only(calls, "connect")
    assert accept.pid != connect.pid  # the C client is a forked child: another process
    assert accept.args == "3, NULL, NULL" or accept.args.endswith("NULL, NULL")
    server = [c.call for c in calls if c.pid == accept.pid]
    client = [c.call for c in calls if c.pid == connect.pid]
    assert server == ["socket", "setsockopt", "bind", "listen", "accept", "read", "write", "read",
                      "close", "close"]
    # the child first closes the listening socket it inherited, then connects
    assert client == ["close", "socket", "connect", "write", "shutdown", "read", "read", "close"]
    inherited = next(c for c in calls if c.pid == connect.pid)
    assert inherited.local == accept.local and inherited.remote is None


def test_refused_connect() -> None:
    r = parse("py-refused.txt")
    connect = only(r.calls, "connect")
    assert (connect.ret, connect.errno) == (-1, "ECONNREFUSED")
    assert connect.failed
    # No 4-tuple ever existed; the target comes from the sockaddr argument.
    probe_bind = only(r.calls, "bind")
    assert connect.remote == probe_bind.local and connect.local is None
    sock = [c for c in r.calls if c.call == "socket" and c.start < connect.start][-1]
    assert sock.remote == connect.remote  # filled from the connect on the same fd


def test_address_in_use() -> None:
    r = parse("py-inuse.txt")
    binds = named(r.calls, "bind")
    assert [b.errno for b in binds] == [None, "EADDRINUSE"]
    ok, clash = binds
    assert ok.local is not None and ok.local.port != 0  # bind(port 0): the port the kernel chose
    assert clash.local == ok.local  # the address that was taken, from the sockaddr
    reuse = only(r.calls, "setsockopt")
    assert "SO_REUSEADDR" in reuse.args and reuse.fd == ok.fd


def test_close_with_unread_data_resets() -> None:
    r = parse("py-unread.txt")
    recv = only(r.calls, "recvfrom")
    assert (recv.ret, recv.errno, recv.nbytes) == (-1, "ECONNRESET", None)
    accept = only(r.calls, "accept4")
    server_close = only(r.calls, "close", fd=accept.ret)
    assert server_close.end <= recv.start and mirrored(recv, accept)


def test_nonblocking_client() -> None:
    r = parse("py-nonblock.txt")
    connect = only(r.calls, "connect")
    assert connect.errno == "EINPROGRESS" and connect.local is not None  # the connection went on
    polls = named(r.calls, "poll")
    assert len(polls) == 2 and all(p.fd == connect.fd and p.remote == connect.remote for p in polls)
    again = [c for c in r.calls if c.errno == "EAGAIN"]
    assert len(again) == 1 and again[0].call == "recvfrom" and again[0].nbytes is None


def test_ipv6() -> None:
    r = parse("py-v6.txt")
    check_echo_exchange(r.calls, len(b"hello6"))
    assert only(r.calls, "connect").remote.ip == "::1"  # type: ignore[union-attr]


def test_signals_and_restarted_calls() -> None:
    r = parse("py-interrupted.txt")
    assert r.unparsed == 0
    accepts = named(r.calls, "accept4")
    assert [a.errno for a in accepts] == ["ERESTARTSYS", None]
    assert accepts[0].ret is None and accepts[0].errno in RESTART_ERRNOS
    assert accepts[1].remote is not None
    polls = named(r.calls, "poll")
    # poll interrupted by SIGSTOP, resumed by restart_syscall, interrupted by SIGCHLD, resumed
    assert [p.errno for p in polls] == ["ERESTART_RESTARTBLOCK", "ERESTART_RESTARTBLOCK", None]
    assert [p.args.startswith("restarted") for p in polls] == [False, True, True]
    assert {p.fd for p in polls} == {polls[0].fd} and polls[-1].ret == 0
    # The client thread's calls belong to the same process; the forked child traced nothing.
    assert len({c.pid for c in r.calls}) == 1 and len({c.tid for c in r.calls}) == 2
    check_echo_exchange([c for c in r.calls if c.start < polls[0].start and c.errno is None],
                        len(b"late"))


def test_strace_on_stderr_matches_strace_with_output_file() -> None:
    """Without -o: no pid prefix while one process runs, and "strace: Process N attached"
    cut lines in two.  The same program must give the same calls either way."""
    a = parse("py-interrupted.txt")
    b = parse("py-interrupted-stderr.txt")
    text = (DATA / "py-interrupted-stderr.txt").read_text()
    assert "[pid " in text and "strace: Process" in text
    assert any(not line.startswith(("[pid", "strace:")) and line[:1].isdigit() for line in text.splitlines())
    assert b.unparsed == 0
    key = [(c.call, c.errno, c.fd, c.ret, c.nbytes, c.pid == c.tid) for c in a.calls]
    assert key == [(c.call, c.errno, c.fd, c.ret, c.nbytes, c.pid == c.tid) for c in b.calls]
    assert len({c.pid for c in b.calls}) == 1


def test_attached_then_killed_or_detached() -> None:
    killed = parse("py-attach-killed.txt")
    (call,) = killed.calls
    assert call.call == "accept4" and call.ret is None and call.errno is None  # never returned
    assert list(killed.exits.values()) == ["killed by SIGKILL"]
    kill_ts = float((DATA / "py-attach-killed.txt").read_text().splitlines()[-1].split()[1])
    assert call.end == kill_ts > call.start
    detached = parse("py-attach-detached.txt")
    (call,) = detached.calls
    assert call.ret is None and call.errno is None and call.end == call.start
    assert call.local is not None and call.pid != 0  # with -p and -f the pid prefix is there


# --------------------------------------------------------- hand-edited variants


def test_three_threads_interleaved() -> None:
    r = parse("edited-threads.txt")
    assert r.unparsed == 0
    assert {c.pid for c in r.calls} == {200} and {c.tid for c in r.calls} == {200, 201, 202}
    # The first line is a resumed half whose start was cut off: start = end - duration.
    orphan = r.calls[0]
    assert orphan.call == "accept4" and orphan.fd is None and orphan.ret == 7
    assert orphan.start == pytest.approx(1700000000.000010) and orphan.remote == Endpoint("127.0.0.1", 40001)
    ping = only(r.calls, "sendto", tid=202)
    assert ping.nbytes == 9 and ping.args.startswith('5, "ping) = 4"')
    got = only(r.calls, "recvfrom", tid=201, ret=9)
    assert got.start == pytest.approx(1700000000.001) and got.end == pytest.approx(1700000000.00115)
    pong = only(r.calls, "sendto", tid=201)
    assert pong.end == pytest.approx(1700000000.00145)
    wait = only(r.calls, "epoll_wait")
    assert wait.fd is None and wait.ret == 1
    assert only(r.calls, "read").nbytes == 0


def test_failures_and_other_sockets() -> None:
    r = parse("edited-errors.txt")
    assert r.unparsed == 0
    errnos = [(c.call, c.errno) for c in r.calls if c.errno]
    assert errnos == [
        ("connect", "ECONNREFUSED"),
        ("bind", "EADDRINUSE"),
        ("connect", "EINPROGRESS"),
        ("recvfrom", "EAGAIN"),
        ("read", "ECONNRESET"),
        ("write", "EPIPE"),
        ("socket", "EMFILE"),
        ("poll", "EINTR"),
    ]
    assert only(r.calls, "bind").local == Endpoint("::1", 5000)
    # UNIX sockets are not internet sockets: dropped; UDP ones (a DNS lookup) are kept.
    assert not [c for c in r.calls if "nscd" in c.args]
    assert [c for c in r.calls if "dns?" in c.args]
    assert len(parse("edited-errors.txt", inet_only=False).calls) > len(r.calls)
    select = only(r.calls, "select")
    assert select.fd == 4 and select.remote == Endpoint("127.0.0.1", 8080) and select.args.startswith("5, NULL, [4]")
    mixed = only(r.calls, "poll")
    assert mixed.fd is None  # two fds: neither is "the" fd
    assert r.exits == {300: "killed by SIGPIPE"}


def test_broken_lines_are_counted_not_fatal() -> None:
    r = parse("edited-truncated.txt")
    assert r.unparsed == 4
    lines = [p.split(": line ")[1].split(":")[0] for p in r.problems]
    assert lines == ["4", "7", "11", "12"]
    assert "no -ttt timestamp" in r.problems[0] and "truncated" in r.problems[3]
    quoted = only(r.calls, "write", nbytes=33)
    assert '"quote \\" paren ) = 1 brace } back\\\\"' in quoted.args
    looks_like_deco = only(r.calls, "write", nbytes=4096)
    assert "<TCP:[1.2.3.4:5]>" in looks_like_deco.args  # inside a string: not a decoration
    assert looks_like_deco.remote == Endpoint("127.0.0.1", 8080)
    # recvfrom was pending when a sendto resumed: kept, as a call that never returned
    lost = only(r.calls, "recvfrom")
    assert lost.ret is None and lost.errno is None


def test_without_yy_files_are_told_from_sockets_by_their_history() -> None:
    r = parse("edited-noyy.txt")
    assert [(c.call, c.fd) for c in r.calls] == [
        ("socket", 3), ("connect", 3), ("write", 3), ("read", 3), ("read", 3), ("close", 3),
        ("recvfrom", 5),
    ]
    assert all(c.remote == Endpoint("127.0.0.1", 8080) for c in r.calls[:6])


def test_prefix_forms() -> None:
    r = parse("edited-prefixes.txt")
    assert r.unparsed == 0
    assert [c.tid for c in r.calls] == [600, 601, 602, 603, 0]
    ff = parse_strace(["1700000004.0 close(3<TCP:[1.2.3.4:5->6.7.8.9:10]>) = 0 <0.1>"], pid=77)
    assert ff.calls[0].pid == 77 and ff.calls[0].end == pytest.approx(1700000004.1)


def test_ff_file_name_gives_pid(tmp_path: Path) -> None:
    log = tmp_path / "trace.4242"
    log.write_text("1700000004.000000 shutdown(3<TCP:[1.2.3.4:5->6.7.8.9:10]>, SHUT_WR) = 0 <0.000010>\n")
    (call,) = parse_strace_file(log).calls
    assert (call.pid, call.tid) == (4242, 4242)


def test_time_of_day_timestamps_are_reported_once() -> None:
    lines = [f"12:00:0{i}.000000 close(3<TCP:[1.2.3.4:5]>) = 0" for i in range(5)]
    r = parse_strace(lines, name="tod.log")
    assert r.calls == [] and r.unparsed == 5 and len(r.problems) == 1
    assert r.problems[0].startswith("tod.log: line 1: time of day") and "-ttt" in r.problems[0]


def test_v4_mapped_addresses_become_ipv4() -> None:
    line = ("9 1700000000.0 accept4(3<TCPv6:[[::]:80]>, NULL, NULL, 0) = "
            "5<TCPv6:[[::ffff:127.0.0.1]:80->[::ffff:127.0.0.1]:5555]> <0.000010>")
    (call,) = parse_strace([line]).calls
    assert call.local == Endpoint("127.0.0.1", 80) and call.remote == Endpoint("127.0.0.1", 5555)


def test_other_syscalls_are_skipped_silently() -> None:
    lines = [
        "1 1700000000.0 openat(AT_FDCWD, \"/etc/hosts\", O_RDONLY) = 3</etc/hosts> <0.000010>",
        "1 1700000000.1 mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, 3</etc/hosts>, 0) = 0x7f0000000000 <0.1>",
        "1 1700000000.2 --- SIGWINCH {si_signo=SIGWINCH} ---",
        "strace: Process 1 attached",
        "",
    ]
    r = parse_strace(lines)
    assert (r.calls, r.unparsed, r.problems) == ([], 0, [])


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.txt")))
def test_any_cut_of_a_log_parses(name: str) -> None:
    """Cutting a log anywhere (strace killed mid-write) never raises and never invents calls."""
    text = (DATA / name).read_text()
    whole = parse_strace(text.splitlines(keepends=True))
    rng = random.Random(name)
    for cut in sorted(rng.sample(range(len(text)), min(25, len(text)))):
        part = parse_strace(text[:cut].splitlines(keepends=True), name=name)
        assert part.unparsed <= whole.unparsed + 1
        assert len(part.calls) <= len(whole.calls)


def test_garbage_never_raises() -> None:
    rng = random.Random(5)
    alphabet = '0123456789 .()<>[]{}"\\=-?,:+EAGAINresumed unfinished...TCP->'
    for _ in range(300):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        parse_strace([f"1 1700000000.0 read({line}", f"1 1700000000.0 {line}", line])


def test_unreadable_log(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match=r"missing\.log: cannot read"):
        parse_strace_file(tmp_path / "missing.log")
    with pytest.raises(TraceFileError, match="cannot read"):
        parse_strace_file(tmp_path)
    binary = tmp_path / "trace.pcap"
    binary.write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(40))
    with pytest.raises(TraceFileError, match=r"trace\.pcap: not a text strace log"):
        parse_strace_file(binary)


# ----------------------------------------------------------------- calls.jsonl


def test_calls_jsonl_round_trip(tmp_path: Path) -> None:
    calls = parse("c-pair.txt").calls
    aligned = Call(pid=1, tid=2, fd=3, call="connect", start=1.5, end=2.0, ret=0, errno=None,
                   args="3, {...}", local=Endpoint("::1", 5), remote=Endpoint("10.0.0.1", 80),
                   nbytes=None, conn=4, frames=(1, 2, 3), inferred=True)
    path = tmp_path / "trace.calls.jsonl"
    assert write_calls_jsonl([*calls, aligned], path) == len(calls) + 1
    lines = path.read_text().splitlines()
    assert all(json.loads(line)["type"] == "call" for line in lines)
    assert read_calls_jsonl(path) == [*calls, aligned]
    assert call_from_json(aligned.to_json()) == aligned


def test_calls_jsonl_defaults_and_other_records(tmp_path: Path) -> None:
    path = tmp_path / "demo.jsonl"
    path.write_text(
        '{"type": "segment", "frame": 1}\n'
        "\n"
        '{"pid": 7, "call": "write", "start": 10, "fd": 3, "ret": 5, "nbytes": 5}\n'
    )
    (call,) = read_calls_jsonl(path)
    assert (call.pid, call.tid, call.end, call.args, call.frames, call.inferred) == (7, 7, 10.0, "", (), False)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not JSON"),
        ('{"call": "read", "start": 1}', 'missing "pid"'),
        ('{"pid": "7", "call": "read", "start": 1}', '"pid" must be int'),
        ('{"pid": true, "call": "read", "start": 1}', '"pid" must be int'),
        ('{"pid": 7, "call": "read", "start": 2, "end": 1}', "end 1.0 before start 2.0"),
        ('{"pid": 7, "call": "read", "start": 1, "local": {"ip": "1.2.3.4", "port": 70000}}', "out of range"),
        ('{"pid": 7, "call": "read", "start": 1, "frames": [1, "2"]}', '"frames"'),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_calls_jsonl_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "calls.jsonl"
    good = json.dumps({"pid": 1, "call": "close", "start": 0.5})
    path.write_text(f"{good}\n{line}\n")
    with pytest.raises(TraceFileError) as info:
        read_calls_jsonl(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 2: ") and reason in message
    assert "\n" not in message


def test_call_from_json_error_is_a_trace_file_error() -> None:
    with pytest.raises(TraceFileError, match='^bad call record: missing "start"$'):
        call_from_json({"pid": 1, "call": "read"})


def test_calls_path_for() -> None:
    assert calls_path_for("trace.pcap") == Path("trace.calls.jsonl")
    assert calls_path_for("/x/y/run.1.pcapng") == Path("/x/y/run.1.calls.jsonl")
    assert calls_path_for("capture") == Path("capture.calls.jsonl")


def test_jsonl_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match="nope.jsonl: cannot read"):
        read_calls_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(OutputError, match="cannot write"):
        write_calls_jsonl([], tmp_path / "no-such-dir" / "x.jsonl")


def test_load_calls_tells_jsonl_from_strace(tmp_path: Path) -> None:
    calls = parse("py-pair.txt").calls
    path = tmp_path / "c.jsonl"
    write_calls_jsonl(calls, path)
    assert load_calls(path).calls == calls
    assert load_calls(DATA / "py-pair.txt").calls == calls


# ---------------------------------------------------------------------- runner


def test_strace_command_flags(tmp_path: Path) -> None:
    cmd = strace_command(tmp_path / "o", argv=["python3", "-c", "pass"], user="nobody", seccomp=True)
    assert cmd[:5] == ["strace", "-f", "-ttt", "-T", "-yy"]
    trace = cmd[cmd.index("-e") + 1]
    assert trace.startswith("trace=?") and set(trace[6:].split(",")) == {"?" + s for s in TRACED_SYSCALLS}
    assert cmd[cmd.index("-o") + 1] == str(tmp_path / "o") and cmd[cmd.index("-u") + 1] == "nobody"
    assert cmd[-4:] == ["--", "python3", "-c", "pass"] and "--seccomp-bpf" in cmd
    attach_cmd = strace_command("o", pids=[10, 11], seccomp=True)
    assert attach_cmd[-4:] == ["-p", "10", "-p", "11"] and "--seccomp-bpf" not in attach_cmd
    for needed in ("socket", "accept4", "recvfrom", "sendto", "setsockopt", "epoll_wait", "clone3"):
        assert needed in TRACED_SYSCALLS


def test_missing_strace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for run in (lambda: start_traced(["/bin/true"], output=tmp_path / "o"),
                lambda: attach([os.getpid()], tmp_path / "o")):
        with pytest.raises(TraceError) as info:
            run()
        assert str(info.value) == "tracing needs strace (apt-get install strace)"


def test_sudo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUDO_UID", raising=False)
    assert sudo_user() is None
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65533")
    assert sudo_user() == ((65534, 65533) if os.geteuid() != 65534 else None)


@needs_strace
def test_version() -> None:
    version = strace_version()
    assert version is not None and version >= (4, 17)


@needs_strace
def test_bad_command_and_pid(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="^no-such-program-hsviz: command not found$"):
        start_traced(["no-such-program-hsviz"], output=tmp_path / "o", as_user=None)
    with pytest.raises(TraceError, match="^--trace-pid 999999999: no such process$"):
        attach([999999999], tmp_path / "o")
    with pytest.raises(OutputError, match="cannot write"):
        start_traced(["true"], output=tmp_path / "missing" / "o", as_user=None)


@needs_strace
def test_exit_status_and_stop(tmp_path: Path) -> None:
    with start_traced(["sh", "-c", "exit 3"], output=tmp_path / "a", as_user=None) as t:
        assert t.wait(10) == 3
    t = start_traced(["sh", "-c", "kill -TERM $$"], output=tmp_path / "b", as_user=None)
    assert t.wait(10) == -signal.SIGTERM
    t = start_traced(["sleep", "30"], output=tmp_path / "c", as_user=None)
    began = time.monotonic()
    deadline = began + 20
    while not t.command_pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.stop() == -signal.SIGTERM
    assert time.monotonic() - began < 20 and t.command_pids() == []  # not sleep's 30 s
    # Ctrl-C right after the start: strace's own start-up helpers must not be
    # mistaken for the command, nor the command signalled before it is traced.
    for i in range(5):
        t = start_traced(["sleep", "30"], output=tmp_path / f"d{i}", as_user=None)
        assert t.stop() == -signal.SIGTERM


@needs_strace
@needs_root
def test_runs_command_as_another_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    t = start_traced(["id", "-u"], output=tmp_path / "a", as_user=(nobody.pw_uid, nobody.pw_gid),
                     stdout=subprocess.PIPE)
    out, _ = t.process.communicate(timeout=10)
    assert out.decode().strip() == str(nobody.pw_uid)
    monkeypatch.setenv("SUDO_UID", str(nobody.pw_uid))  # the default: back to the sudo user
    monkeypatch.setenv("SUDO_GID", str(nobody.pw_gid))
    t = start_traced(["id", "-u"], output=tmp_path / "b", stdout=subprocess.PIPE)
    assert t.process.communicate(timeout=10)[0].decode().strip() == str(nobody.pw_uid)
    t = start_traced(["id", "-u"], output=tmp_path / "c", as_user=None, stdout=subprocess.PIPE)
    assert t.process.communicate(timeout=10)[0].decode().strip() == "0"


def _port_line(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("port "), line
    return int(line.split()[1])


@needs_strace
def test_live_python_server_and_client(tmp_path: Path) -> None:
    message = "hello over loopback"
    server = start_traced([sys.executable, str(ECHO_PY), "server"], output=tmp_path / "server.strace",
                          as_user=None, stdout=subprocess.PIPE)
    try:
        assert server.process.stdout is not None
        port = int(server.process.stdout.readline().split()[1])
        client = start_traced([sys.executable, str(ECHO_PY), "client", str(port), message],
                              output=tmp_path / "client.strace", as_user=None, stdout=subprocess.PIPE)
        assert client.wait(20) == 0 and server.wait(20) == 0
    finally:
        server.stop()
    s, c = server.result(), client.result()
    assert s.unparsed == 0 and c.unparsed == 0
    connect = only(c.calls, "connect")
    accept = only(s.calls, "accept4")
    assert connect.remote == Endpoint("127.0.0.1", port) and connect.local is not None
    assert mirrored(connect, accept) and accept.fd != accept.ret
    assert connect.start < accept.end  # one wall clock for both processes
    write = only(c.calls, "sendto")
    assert write.nbytes == len(message) and write.fd == connect.fd
    reads = [x for x in c.calls if x.call == "recvfrom"]
    assert sum(x.nbytes or 0 for x in reads) == len(message) and reads[-1].ret == 0
    server_reads = [x for x in s.calls if x.call == "recvfrom"]
    assert server_reads[-1].ret == 0 and server_reads[-1].end >= only(c.calls, "shutdown").start
    assert [x.call for x in c.calls][-1] == "close" and only(c.calls, "close").fd == connect.fd
    assert len({x.pid for x in s.calls}) == 1 and {x.pid for x in s.calls} != {x.pid for x in c.calls}
    jsonl = tmp_path / "trace.calls.jsonl"
    write_calls_jsonl(c.calls, jsonl)
    assert read_calls_jsonl(jsonl) == c.calls


@needs_strace
def test_live_c_echo(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "echo"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", str(exe), str(ECHO_C)], check=True)
    message = "textbook echo"
    # server and client as separate processes, both traced
    server = start_traced([str(exe), "server"], output=tmp_path / "s.strace", as_user=None,
                          stdout=subprocess.PIPE)
    try:
        assert server.process.stdout is not None
        port = int(server.process.stdout.readline().split()[1])
        client = start_traced([str(exe), "client", str(port), message], output=tmp_path / "c.strace",
                              as_user=None, stdout=subprocess.PIPE)
        out, _ = client.process.communicate(timeout=20)
        assert client.wait(1) == 0 and server.wait(20) == 0
    finally:
        server.stop()
    assert out.decode().strip() == f"echoed {message}"
    s, c = server.result(), client.result()
    assert [x.call for x in s.calls] == ["socket", "setsockopt", "bind", "listen", "getsockname", "accept", "read",
                                         "write", "read", "close", "close"]
    assert [x.call for x in c.calls] == ["socket", "connect", "write", "shutdown", "read", "read", "close"]
    check_echo_exchange(sorted(s.calls + c.calls, key=lambda x: x.start), len(message))
    # fork: one traced command, two processes
    pair = start_traced([str(exe), "pair", message], output=tmp_path / "p.strace", as_user=None,
                        stdout=subprocess.DEVNULL)
    assert pair.wait(20) == 0
    calls = pair.result().calls
    assert len({x.pid for x in calls}) == 2
    check_echo_exchange(calls, len(message))


@needs_strace
def test_live_attach(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, str(ECHO_PY), "server"], stdout=subprocess.PIPE, text=True)
    try:
        port = _port_line(server)
        attached_at = time.time()
        t = attach([server.pid], tmp_path / "attach.strace")
        assert t.thread_groups == {server.pid: server.pid}
        got = subprocess.run([sys.executable, str(ECHO_PY), "client", str(port), "ping"],
                             check=False, capture_output=True, text=True, timeout=20)
        assert got.stdout.strip() == "echoed b'ping'"
        assert server.wait(20) == 0
        assert t.wait(20) is not None
    finally:
        server.kill()
    r = t.result()
    accept = only(r.calls, "accept4")
    assert accept.start >= attached_at  # the accept was already blocked: shown from the attach
    assert accept.pid == server.pid and accept.remote is not None and accept.local == Endpoint("127.0.0.1", port)
    assert [x.call for x in r.calls if x.call != "getsockname"] == ["accept4", "recvfrom", "sendto", "recvfrom",
                                                                   "close", "close"]


def test_give_to_sudo_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from handshake_viz.tracer import give_to_sudo_user

    mine = tmp_path / "a.pcap"
    mine.write_bytes(b"x")
    before = mine.stat().st_uid
    monkeypatch.delenv("SUDO_UID", raising=False)
    give_to_sudo_user([mine, None, tmp_path / "missing"])  # not under sudo: nothing
    assert mine.stat().st_uid == before
    if os.geteuid() != 0:
        pytest.skip("handing a file to another user needs root")
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65533")
    give_to_sudo_user([mine, None, tmp_path / "missing"])  # missing paths are skipped
    assert (mine.stat().st_uid, mine.stat().st_gid) == (65534, 65533)
