"""Runs strace: a command under it, or attached to pids.

:func:`start_traced` / :func:`attach` run a command under strace, or attach
strace to running processes, writing a log
:func:`~handshake_viz.trace.parse_strace_file` reads
(:meth:`TracedProcess.result` does that).

Why these strace flags (``strace -f -ttt -T -yy -q -s 64 -e trace=... -o FILE``):

``-ttt``
    Each line starts with the wall-clock time in epoch seconds with
    microseconds: the same clock as a pcap's timestamps, so calls and segments
    go on one time axis with no conversion.  On this machine a client's
    ``connect()`` started 0.9 ms before its SYN appeared in the capture.
``-T``
    Appends the time spent in the call (``<0.000123>``), so ``end = start +
    duration`` even when the line was split by another thread.
``-yy``
    Decorates every fd with what it is.  For TCP sockets that is the 4-tuple,
    ``3<TCP:[127.0.0.1:49736->127.0.0.1:18081]>``, which maps a call to its
    connection without guessing; it also tells sockets from files and pipes, so
    a ``read()`` of a Python module is not mistaken for a ``recv``.
``-f``
    Follows threads and child processes: servers often accept in one thread and
    read in another, and the C demo forks its client.
``-e trace=?name,...``
    Only the socket calls (see :data:`TRACED_SYSCALLS`), plus ``clone``/``fork``
    to know which thread belongs to which process and ``restart_syscall`` to see
    interrupted waits finish.  The ``?`` prefix makes strace ignore names the
    architecture lacks (``recv``/``send``/``select`` do not exist everywhere).
``-q``
    No "Process N attached" chatter on the terminal the traced command shares.
``-s 64``
    Enough of each buffer to recognise it in a diagram label, little enough to
    keep logs small.
``--seccomp-bpf``
    (only when starting a command, strace >= 5.3) the kernel stops the tracee
    only at traced calls, which makes tracing a busy program far cheaper.

Attaching (``-p``) to a process blocked in a call shows the call as if it
started at the moment strace attached.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from .errors import PermissionDeniedError, TraceError, os_error
from .trace import _BOOKKEEPING, CALLS_OF_INTEREST, StraceParse, parse_strace_file

__all__ = [
    "TRACED_SYSCALLS",
    "TracedProcess",
    "Watchdog",
    "attach",
    "find_strace",
    "start_traced",
    "strace_command",
    "strace_version",
    "sudo_user",
]

TRACED_SYSCALLS: tuple[str, ...] = tuple(sorted(CALLS_OF_INTEREST)) + _BOOKKEEPING
"""Everything :func:`strace_command` asks strace for (``-e trace=?a,?b,...``)."""


_MISSING = "tracing needs strace (apt-get install strace)"
_SUDO: Literal["sudo"] = "sudo"


def find_strace() -> str:
    """Path of the strace binary; TraceError when there is none."""
    exe = shutil.which("strace")
    if exe is None:
        raise TraceError(_MISSING)
    return exe


def strace_version(exe: str | None = None) -> tuple[int, int] | None:
    """``(6, 1)`` from ``strace -V``; None when it cannot be told."""
    exe = exe or find_strace()
    try:
        out = subprocess.run([exe, "-V"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def sudo_user() -> tuple[int, int] | None:
    """``(SUDO_UID, SUDO_GID)`` when running under sudo as root, else None."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if uid is None or not uid.isdigit():
        return None
    if int(uid) == os.geteuid():
        return None
    return int(uid), int(gid) if gid and gid.isdigit() else int(uid)


def give_to_sudo_user(paths: Iterable[str | os.PathLike[str] | None]) -> None:
    """Files hsviz wrote as root under sudo go to the user who ran sudo (as tcpdump's
    ``-Z`` does), so that they can be moved, edited and removed without sudo.  Missing
    paths and None are skipped; a chown that fails (a root-squashed mount) is left."""
    user = sudo_user()
    if user is None:
        return
    for path in paths:
        if path is None:
            continue
        try:  # never through a link: the name may have been swapped for one since
            os.chown(path, *user, follow_symlinks=False)
        except OSError:
            pass


def strace_command(
    output: str | os.PathLike[str],
    *,
    argv: Sequence[str] = (),
    pids: Sequence[int] = (),
    user: str | None = None,
    exe: str = "strace",
    seccomp: bool = False,
) -> list[str]:
    """The strace command line for a command (``argv``) or for ``pids`` to attach to."""
    cmd = [exe, "-f", "-ttt", "-T", "-yy", "-q", "-s", "64"]
    if seccomp and argv:
        cmd.append("--seccomp-bpf")
    cmd += ["-e", "trace=" + ",".join("?" + s for s in TRACED_SYSCALLS), "-o", os.fspath(output)]
    if user is not None:
        cmd += ["-u", user]
    for pid in pids:
        cmd += ["-p", str(pid)]
    if argv:
        cmd += ["--", *argv]
    return cmd


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids.extend(int(x) for x in fh.read().split())
        except (OSError, ValueError):
            continue
    return kids


def _descendants(pid: int) -> list[int]:
    out, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(_children(child))
    return out


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _tracer_of(tid_path: str) -> int | None:
    try:
        with open(f"{tid_path}/status") as fh:
            for line in fh:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _thread_groups(pids: Iterable[int]) -> dict[int, int]:
    groups: dict[int, int] = {}
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                groups[int(task)] = pid
        except OSError:
            groups[pid] = pid
    return groups


# The watchdog: a small process that outlives hsviz.  It is started first (before
# the privilege drop, while this interpreter can still be run), drops to the user
# it is told to, and is then handed strace by a pidfd (never a pid that could be
# reused) over a socket only hsviz holds.  When that socket ends -- hsviz
# finished, or died, even by SIGKILL -- it acts:
#   "kill"   (a command hsviz started): SIGKILL to every process under strace,
#            then strace.  strace is made a child subreaper when it starts, so the
#            command's orphans stay under it and none escapes to init.
#   "detach" (--trace-pid): SIGINT to strace, which detaches and leaves the
#            processes running.  It keeps strace's rights (root), so a dropped
#            hsviz can still make a root strace detach.
_WATCHDOG = r"""
import os, select, signal, socket, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
action, uid, gid, groups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if uid >= 0 and os.geteuid() == 0:
    import ctypes
    prctl = ctypes.CDLL(None).prctl
    for cap in range(64):
        prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
link = socket.socket(fileno=0)
pidfd = pid = None
try:
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(link, 64, 1)
        if not msg:
            break
        pidfd, pid = fds[0], int(msg)
except OSError:
    pass
if pidfd is None:
    sys.exit(0)
def gone():
    return bool(select.select([pidfd], [], [], 0)[0])
def below(root):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out
if action == "detach":
    if not gone():
        signal.pidfd_send_signal(pidfd, signal.SIGINT)
    sys.exit(0)
for _ in range(500):
    if gone():
        break
    kids = below(pid)
    if not kids:
        break
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.01)
if not gone():
    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
"""


class Watchdog:
    """Ends (``"kill"``) or detaches (``"detach"``) strace and what it traces when this
    process stops, however it stops (see :data:`_WATCHDOG`).

    Made before strace starts -- before the privilege drop when there is one, with
    ``user`` (uid, gid, groups) the identity it drops to at once -- and told which
    strace to watch by :meth:`watch`.  :meth:`release` makes it act now; :meth:`close`
    also waits for it.
    """

    def __init__(self, action: Literal["kill", "detach"],
                 user: tuple[int, int, Sequence[int]] | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        uid, gid, groups = user if user is not None else (-1, -1, ())
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, action, str(uid), str(gid),
                 ",".join(map(str, groups))],
                stdin=theirs.fileno(), stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise TraceError(f"cannot start the strace watchdog: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        self._link: socket.socket | None = ours

    def watch(self, strace_pid: int) -> None:
        """Watch this strace from now on."""
        assert self._link is not None
        pidfd = os.pidfd_open(strace_pid)
        try:
            socket.send_fds(self._link, [str(strace_pid).encode()], [pidfd])
        finally:
            os.close(pidfd)

    def release(self) -> None:
        """End the link: the watchdog does its action (on what is left) and exits."""
        if self._link is not None:
            self._link.close()
            self._link = None

    def close(self) -> None:
        self.release()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _strace_preexec(subreaper: bool) -> Callable[[], None] | None:
    """For a started command: strace adopts the command's orphans (a child subreaper),
    so the watchdog finds every process to end under it."""
    if not subreaper:
        return None
    from handshake_viz.privilege import PR_SET_CHILD_SUBREAPER, prctl

    def preexec() -> None:
        prctl(PR_SET_CHILD_SUBREAPER, 1)

    return preexec


class TracedProcess:
    """strace running a command (:func:`start_traced`) or attached to pids (:func:`attach`).

    ``wait()`` returns strace's exit status, which for a started command is the
    command's own: its exit code, or ``-N`` when signal N killed it (strace
    kills itself with the same signal).  ``stop()`` ends the command (started)
    or detaches (attached) and returns the status.  Use as a context manager to
    stop on exit.  ``result()`` parses the log.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        output: Path,
        *,
        argv: Sequence[str] = (),
        pids: Sequence[int] = (),
        thread_groups: Mapping[int, int] | None = None,
        stderr_log: IO[bytes] | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.process = process
        self.watchdog = watchdog
        self.output = output
        self.argv = tuple(argv)
        self.pids = tuple(pids)
        self.thread_groups = dict(thread_groups or {})
        self._stderr_log = stderr_log
        self._strace_exe = _exe(process.pid)

    @property
    def strace_pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def command_pids(self) -> list[int]:
        """The traced command and everything it started that is still alive.

        strace forks short-lived helpers of its own at start-up (feature
        probes), and the command's process runs strace's image until it execs:
        processes still running strace's executable are not the command.
        """
        return [
            pid
            for pid in _descendants(self.process.pid)
            if (exe := _exe(pid)) is not None and exe != self._strace_exe  # None: a zombie
        ]

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """strace's exit status, or None if it is still running after ``timeout`` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 2.0) -> int | None:
        """Detach (attached) or end the command with SIGTERM, then SIGKILL (started)."""
        if self.process.poll() is not None:
            return self.process.returncode
        if self.pids:  # attached: SIGINT makes strace detach and leave them running
            if self.watchdog is not None:  # strace is root, we may not be: the watchdog sends it
                self.watchdog.release()
            else:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGINT)
        else:
            # A child signalled before strace has seized it dies under strace's
            # feet ("Unexpected wait status"): wait until it is traced and has
            # exec'd the command.
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                kids = self.command_pids()
                if kids and all(_tracer_of(f"/proc/{k}") in (self.process.pid, None) for k in kids):
                    break
                time.sleep(0.005)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in reversed(self.command_pids()):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                if self.wait(timeout) is not None:
                    return self.process.returncode
        if self.wait(timeout) is None:
            self.process.kill()
            self.process.wait()
        return self.process.returncode

    def result(self, *, inet_only: bool = True) -> StraceParse:
        """Parse what strace wrote so far (complete once strace has exited)."""
        return parse_strace_file(self.output, thread_groups=self.thread_groups, inet_only=inet_only)

    def close(self) -> None:
        self.stop()
        if self.watchdog is not None:
            self.watchdog.close()
            self.watchdog = None
        if self._stderr_log is not None:
            self._stderr_log.close()
            self._stderr_log = None

    def __enter__(self) -> TracedProcess:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prepare_output(output: Path) -> None:
    try:
        with open(output, "w"):
            pass
    except OSError as exc:
        raise os_error(exc, output, "write") from None


def _user_name(as_user: tuple[int, int]) -> str | None:
    """The name strace -u needs.  strace takes the groups from the passwd entry
    (initgroups), which is SUDO_GID unless sudo was given another group."""
    uid, _gid = as_user
    if uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise TraceError(f"running the command as uid {uid} needs root")
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise TraceError(f"uid {uid} has no user name, which strace -u needs: run as root instead") from None


def start_traced(
    argv: Sequence[str],
    *,
    output: str | os.PathLike[str],
    as_user: tuple[int, int] | None | Literal["sudo"] = _SUDO,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_to: str | None = None,
    watchdog: bool | Watchdog = False,
) -> TracedProcess:
    """Run ``argv`` under strace, writing the log to ``output``.

    ``log_to``: strace writes its log there (a FIFO the caller reads and saves to
    ``output``) instead of creating ``output`` itself.  ``watchdog``: the
    command and everything it starts die with this process, even when it is killed
    by SIGKILL (see :data:`_WATCHDOG`).

    ``as_user``: ``"sudo"`` (default) runs the command as the user who invoked
    sudo (``SUDO_UID``) when there is one; a ``(uid, gid)`` pair runs it as that
    user; None runs it with our own privileges.  strace's ``-u`` does the
    switch, so strace itself keeps the right to trace.  The command inherits
    stdin/stdout/stderr unless given.

    Raises TraceError (no strace, unknown command, user), OutputError (output).
    """
    if not argv:
        raise TraceError("nothing to trace: give a command after --")
    exe = find_strace()
    search_path = (env or os.environ).get("PATH", os.defpath)
    if shutil.which(argv[0], path=search_path) is None and not (
        os.sep in argv[0] and os.access(argv[0], os.X_OK)
    ):
        raise TraceError(f"{argv[0]}: command not found")
    user_pair = sudo_user() if as_user == _SUDO else as_user
    user = _user_name(user_pair) if user_pair is not None else None
    out = Path(output)
    if log_to is None:
        _prepare_output(out)
    version = strace_version(exe)
    seccomp = version is not None and version >= (5, 3)
    cmd = strace_command(out if log_to is None else log_to, argv=argv, user=user, exe=exe, seccomp=seccomp)
    try:
        proc = subprocess.Popen(
            cmd, stdin=stdin, stdout=stdout, stderr=stderr,
            env=dict(env) if env is not None else None, cwd=cwd,
            preexec_fn=_strace_preexec(bool(watchdog)),
        )
    except OSError as exc:
        raise TraceError(f"cannot run strace: {exc.strerror or exc}") from None
    guard = None
    if watchdog:
        try:
            guard = Watchdog("kill") if watchdog is True else watchdog
            guard.watch(proc.pid)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return TracedProcess(proc, out, argv=argv, watchdog=guard)


def attach(
    pids: Sequence[int],
    output: str | os.PathLike[str],
    *,
    timeout: float = 5.0,
    log_to: str | None = None,
    watchdog: bool = False,
) -> TracedProcess:
    """Attach strace to running processes (all their threads and future children).

    ``log_to`` as for :func:`start_traced`; with ``watchdog`` strace is made to
    detach (by a small process that stays with strace's rights) when
    :meth:`TracedProcess.stop` is called or this process dies, whatever rights this
    process has by then.

    Returns once every thread of every pid is traced, so nothing they do
    afterwards is missed.  Calls already blocked when strace attaches show as
    starting at that moment.  Raises TraceError (no strace, no such process,
    strace failed), PermissionDeniedError (not allowed to trace the pid).
    """
    if not pids:
        raise TraceError("nothing to trace: no pid given")
    exe = find_strace()
    for pid in pids:
        if pid <= 0 or not os.path.isdir(f"/proc/{pid}"):
            raise TraceError(f"--trace-pid {pid}: no such process")
    out = Path(output)
    if log_to is None:
        _prepare_output(out)
    groups = _thread_groups(pids)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the TracedProcess, closed by close()
    cmd = strace_command(out if log_to is None else log_to, pids=pids, exe=exe)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    except OSError as exc:
        log.close()
        raise TraceError(f"cannot run strace: {exc.strerror or exc}") from None
    try:
        guard = Watchdog("detach") if watchdog else None
        if guard is not None:
            guard.watch(proc.pid)
    except BaseException:
        proc.kill()
        proc.wait()
        log.close()
        raise
    traced = TracedProcess(proc, out, pids=pids, thread_groups=groups, stderr_log=log, watchdog=guard)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            text = log.read().decode(errors="replace").strip().splitlines()
            log.close()
            if guard is not None:
                guard.close()
            last = text[-1] if text else f"strace exited with status {proc.returncode}"
            m = re.search(r"ptrace\(PTRACE_\w+, (\d+)\)", last)
            who = m.group(1) if m else str(pids[0])
            if "Operation not permitted" in last:
                raise PermissionDeniedError(
                    f"tracing pid {who} is not permitted (needs root or CAP_SYS_PTRACE, "
                    "and no other tracer such as gdb): try sudo"
                )
            raise TraceError(f"strace could not attach to pid {who}: {last.removeprefix('strace: ')}")
        pending = [
            f"/proc/{pid}/task/{task}"
            for pid in pids
            for task in (os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else [])
            if _tracer_of(f"/proc/{pid}/task/{task}") not in (proc.pid, None)
        ]
        if not pending:
            return traced
        if time.monotonic() > deadline:
            traced.close()
            who = pending[0].split("/")[2]
            raise TraceError(f"strace did not attach to pid {who} within {timeout:g} s")
        time.sleep(0.005)
