"""Kernel events recorded live (root and tracefs: CI runs these as root).

The lessons run with ``kernel=True`` and are checked as the recorded fixtures are in
``test_kernel.py`` (the same checks, on today's kernel); and every way a capture can
end leaves no trace instance behind, nor a tracefs mount it made.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import test_kernel as fixtures
from conftest import can_capture, require
from handshake_viz import demo, pipeline
from handshake_viz.errors import KernelEventsUnavailable
from handshake_viz.kernel import StateChange, read_kernel_jsonl
from handshake_viz.kernelio import KernelRecorder, find_tracefs, instances_of

pytestmark = pytest.mark.live


def _kernel_events_reason() -> str | None:
    """Why kernel events cannot be recorded here (None: they can)."""
    if not can_capture():
        return "needs root or CAP_NET_RAW to capture"
    try:
        KernelRecorder(9).start().close()
    except KernelEventsUnavailable as exc:
        return str(exc)
    return None


def test_private_tracefs_mount_is_undone() -> None:
    """First in this module: before the fixture below mounts a tracefs of its own."""
    reason = _kernel_events_reason()
    require(reason is None, f"kernel events: {reason} (runs in CI)")
    if find_tracefs() is not None:
        pytest.skip("tracefs is mounted here: the recorder uses it and mounts nothing")
    with KernelRecorder(9) as rec:
        assert rec.mounted is not None and rec.tracefs == rec.mounted
        mounted = rec.mounted
    with open("/proc/self/mounts") as fh:
        assert str(mounted) not in fh.read()
    assert not mounted.exists()


@pytest.fixture(scope="module")
def tracefs() -> Iterator[Path]:
    """A tracefs to look into: the system's, or one mounted for this module (the
    recorder then uses it, as it uses any tracefs already mounted)."""
    reason = _kernel_events_reason()
    require(reason is None, f"kernel events: {reason} (runs in CI)")
    found = find_tracefs()
    if found is not None:
        yield found
        return
    target = Path(tempfile.mkdtemp(prefix="test-tracefs-"))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(b"nodev", os.fsencode(target), b"tracefs", 0, None) == 0, os.strerror(ctypes.get_errno())
    try:
        yield target
    finally:
        libc.umount2(os.fsencode(target), 2)
        target.rmdir()


def _left(tracefs: Path, pid: int) -> list[str]:
    return [n for n in instances_of(tracefs) if n.startswith(f"hsviz-{pid}-")]


_RUNS: dict[str, demo.DemoResult] = {}


def run(name: str, tmp: Path) -> demo.DemoResult:
    if name not in _RUNS:
        _RUNS[name] = demo.run_scenario(name, tmp / name, live=True, draw=False, kernel=True)
    result = _RUNS[name]
    assert result.kernel_path is not None, result.warnings
    return result


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel-live")


# ---------------------------------------------------------------------------------------
# the lessons, live
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, check", [
    ("echo", fixtures.check_echo),  # states agree except where Linux differs
    ("backlog", fixtures.check_backlog),  # the queue holds 2 before accept(); the 3rd SYN dropped
    ("half-close", fixtures.check_half_close),  # CLOSE-WAIT and FIN-WAIT-2 as long as the calls say
    ("time-wait", fixtures.check_time_wait),
    ("refused", fixtures.check_refused),  # a forced drop, with the kernel's reason, on its frame
])
def test_lesson_live(tracefs: Path, out: Path, name: str, check: object) -> None:
    r = run(name, out)
    assert _left(tracefs, os.getpid()) == []
    check(r.trace)  # type: ignore[operator]


def test_two_recorders_at_once_each_get_their_own_instance(tracefs: Path) -> None:
    ports = []
    listeners = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        listeners.append(s)
    a, b = KernelRecorder(ports[0]), KernelRecorder(ports[1])
    with a, b:
        assert a.name != b.name and len(_left(tracefs, os.getpid())) == 2
        for s in listeners:
            s.listen(1)
            socket.create_connection(s.getsockname()).close()
        logs = a.stop(), b.stop()
    for s in listeners:
        s.close()
    assert _left(tracefs, os.getpid()) == []
    for port, log in zip(ports, logs):
        states = [e for e in log.events if isinstance(e, StateChange)]
        assert states and all(port in (e.local.port, e.remote.port) for e in states)


# ---------------------------------------------------------------------------------------
# every way out of `hsviz capture --kernel` leaves nothing under instances/
# ---------------------------------------------------------------------------------------


def _capture(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "handshake_viz", "capture", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_listening(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if line.startswith("listening on"):
            return seen
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"capture never said 'listening on': {''.join(seen)}")


def test_sigterm_leaves_no_instance_and_writes_the_events(tracefs: Path, tmp_path: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    proc = _capture(["--port", str(port), "-o", "k.pcap", "--kernel"], tmp_path)
    _wait_listening(proc)
    assert _left(tracefs, proc.pid)  # recording
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    c.close()
    a.close()
    srv.close()
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert _left(tracefs, proc.pid) == []
    assert f"kernel events to k.kernel.jsonl" in err
    log = read_kernel_jsonl(tmp_path / "k.kernel.jsonl")
    assert log.port == port and any(isinstance(e, StateChange) for e in log.events)
    trace = pipeline.load(tmp_path / "k.pcap")
    assert trace.kernel is not None and trace.connections[0].kernel is not None


def test_error_after_start_leaves_no_instance(tracefs: Path, tmp_path: Path) -> None:
    proc = _capture(["--port", "9", "--iface", "no-such-if", "-o", "e.pcap", "--kernel"], tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "unknown interface" in err
    assert _left(tracefs, proc.pid) == []


def test_failing_traced_command_leaves_no_instance(tracefs: Path, tmp_path: Path) -> None:
    require(subprocess.run(["which", "strace"], capture_output=True).returncode == 0,
            "strace is not installed (.ci/run installs it)")
    proc = _capture(["--port", "9", "-o", "f.pcap", "--kernel", "--", "false"], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "command exited with status 1" in err, err
    assert _left(tracefs, proc.pid) == []
    assert (tmp_path / "f.kernel.jsonl").exists()


def test_interrupt_in_process_leaves_no_instance(tracefs: Path) -> None:
    """A KeyboardInterrupt (a second Ctrl-C) while recording: the context manager cleans up."""
    with pytest.raises(KeyboardInterrupt):
        with KernelRecorder(9):
            assert _left(tracefs, os.getpid())
            raise KeyboardInterrupt
    assert _left(tracefs, os.getpid()) == []


def test_unavailable_kernel_events_say_why_and_the_capture_goes_on(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    require(can_capture(), "needs root or CAP_NET_RAW to capture (runs in CI)")
    from handshake_viz.errors import KernelEventsUnavailable

    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as the recorder sees it: not root
    with pytest.raises(KernelEventsUnavailable, match=r"not running as root \(try sudo\)$"):
        KernelRecorder(9).open()
    monkeypatch.undo()
    # The CLI says so in one line and captures on.  In a process of its own: a capture
    # through the CLI drops this process's privileges, which the other tests still need.
    script = ("import handshake_viz.kernelio as k\n"
              "def refuse(self):\n"
              "    raise k.KernelEventsUnavailable(k.UNAVAILABLE + ': not running as root (try sudo)')\n"
              "k.KernelRecorder._open = refuse\n"
              "from handshake_viz.cli import main\n"
              "raise SystemExit(main(['capture', '--port', '9', '--kernel', '--timeout', '0.3', "
              "'-o', 'n.pcap']))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == ("hsviz: kernel events need root and tracefs: not running as root (try sudo); "
                        "capturing without them")
    assert (tmp_path / "n.pcap").exists() and not (tmp_path / "n.kernel.jsonl").exists()


def test_kernel_events_under_sudo_keep_no_privilege_and_clean_up_after_kill_9(tracefs: Path,
                                                                                nobody_dir: Path) -> None:
    """`sudo hsviz capture --kernel`: the instance is opened as root, then the capture
    drops every privilege and still records; a root helper that reads nothing removes
    the instance when the capture ends, or is killed."""
    from conftest import NOBODY

    def status(pid: int) -> dict[str, str]:
        with open(f"/proc/{pid}/status") as fh:
            return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)

    env = {**os.environ, "SUDO_UID": str(NOBODY), "SUDO_GID": str(NOBODY)}
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "handshake_viz", "capture", "--port", str(port),
                                 "--kernel", "-o", "k.pcap"], cwd=nobody_dir, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            _wait_listening(proc)
            st = status(proc.pid)
            assert st["Uid"].split() == [str(NOBODY)] * 4 and int(st["CapEff"], 16) == 0, st
            assert _left(tracefs, proc.pid), "the instance exists while capturing"
            with socket.create_connection(("127.0.0.1", port)) as c:
                a, _ = srv.accept()
                c.sendall(b"x")
                a.recv(1)
                a.close()
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert _left(tracefs, proc.pid) == []
    kernel_file = nobody_dir / "k.kernel.jsonl"
    assert kernel_file.stat().st_uid == NOBODY and kernel_file.read_text().count("\n") > 3
    # kill -9 while recording: the helper still removes the instance
    proc = subprocess.Popen([sys.executable, "-m", "handshake_viz", "capture", "--port", str(port),
                             "--kernel", "-o", "kill.pcap"], cwd=nobody_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_listening(proc)
        assert _left(tracefs, proc.pid)
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 10
        while _left(tracefs, proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _left(tracefs, proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
