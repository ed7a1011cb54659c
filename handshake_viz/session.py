"""A live capture with strace running beside it: ``hsviz capture -- CMD`` and ``--trace-pid``.

:class:`TracedCapture` composes :class:`~handshake_viz.capture.LiveCapture`
(the port's segments) with :func:`~handshake_viz.tracer.start_traced` or
:func:`~handshake_viz.tracer.attach` (the programs' socket calls) and, once both
have stopped, :func:`~handshake_viz.align.align`.  It leaves three files side
by side, so that ``hsviz analyze``/``plot``/``api.load`` of the pcap find the
calls without being told::

    trace.pcap          every frame captured
    trace.strace        strace's own log, untouched (nothing the parser skipped is lost)
    trace.calls.jsonl   the parsed socket calls, with ``conn`` and ``frames`` aligned

Order of events, running a command (``command=[...]``)
------------------------------------------------------
1. Before anything starts: strace must exist and the command must be found
   (one-line errors, nothing captured).
2. The capture opens its socket; with ``privileges`` (``hsviz capture`` as root)
   it then drops to the user who ran sudo (:mod:`handshake_viz.privilege`), after
   arming the watchdog that ends the command if hsviz dies.  Once it is *ready*
   (every matching segment from now on is caught, the pcap open) strace starts the
   command as that user: strace runs unprivileged and traces its own child.  (With
   ``--as-root``, for a real root login, strace starts before the drop instead.)
   strace writes its log into a FIFO; :class:`StraceLog` saves it to ``X.strace``.
3. When the command exits -- strace exits when the command and everything it
   started have -- the capture keeps running for ``grace`` seconds (the last
   FIN/ACK of a close is often still in flight), then stops.
4. If the capture stops first (``count``, ``timeout``, ``connections``, Ctrl-C,
   SIGTERM, :meth:`TracedCapture.stop`), the command gets ``grace`` seconds to
   exit by itself (at a terminal, Ctrl-C reached it too), then it is ended:
   SIGTERM, then SIGKILL after 2 s.  hsviz started it, so it does not outlive
   the session; :attr:`SessionResult.terminated` says it happened.
5. The strace log is parsed, the pcap decoded and tracked again (the same
   records the live view printed: live timestamps are rounded as the pcap
   stores them), the calls aligned and written.

Attaching (``pids=[...]``)
--------------------------
strace attaches *before* the capture opens (and before the privilege drop: it
needs root to trace another user's processes), so a wrong pid or a missing
permission is reported before anything is captured, and no file is left.  When the capture stops,
strace detaches and the processes keep running.  If every traced process exits
first, the capture stops ``grace`` seconds later, as for a command.  Calls that
were blocked when strace attached appear to start at that moment.

Interrupts: Ctrl-C or SIGTERM stop the capture (it handles them); the traced
command is then ended as in 4 -- or, attached, left running -- and the pcap,
the strace log and the calls file are all still written.  A second Ctrl-C
raises KeyboardInterrupt at once; the command is still ended and the calls
written on the way out.

The exit status of the command is reported, never turned into hsviz's own: a
capture of a failing command (a refused ``connect()``) is a good capture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from handshake_viz.capture import (
    DEFAULT_SNAPLEN,
    CaptureResult,
    CaptureStats,
    LiveCapture,
    default_output_name,
)
from handshake_viz.errors import HsvizError, OutputError, TraceError, UsageError
from handshake_viz.model import Call, Packet, UdpPacket
from handshake_viz.outfile import DEFAULT_MODE, check_target, create_live, unlinked
from handshake_viz.privilege import PrivilegedSetup
from handshake_viz.trace import StraceParse, calls_path_for, write_calls_jsonl
from handshake_viz.tracer import TracedProcess, Watchdog, attach, find_strace, start_traced

__all__ = [
    "DEFAULT_GRACE",
    "SessionResult",
    "StraceLog",
    "TracedCapture",
    "describe_status",
    "strace_path_for",
]

DEFAULT_GRACE = 0.5
"""Seconds the capture keeps running after the traced command exits.

On loopback the last ACK of a close follows the FIN within microseconds; half
a second covers a loaded machine and a real interface's round trip."""

_POLL = 0.02  # how often the watcher looks at strace (seconds)


def strace_path_for(pcap_path: str | os.PathLike[str]) -> Path:
    """``trace.pcap`` -> ``trace.strace`` (the raw log kept beside the capture)."""
    calls = calls_path_for(pcap_path)  # trace.calls.jsonl: same stem rules
    return calls.with_name(calls.name.removesuffix(".calls.jsonl") + ".strace")


def describe_status(status: int | None) -> str:
    """``exited with status 3`` / ``killed by signal SIGTERM`` for a Popen-style status."""
    if status is None:
        return "status unknown"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = str(-status)
        return f"killed by signal {name}"
    return f"exited with status {status}"


@dataclass(frozen=True, slots=True)
class SessionResult:
    """What a traced capture did and wrote.

    ``status``: the command's exit status (``-N``: killed by signal N), None when
    attached.  ``terminated``: the capture stopped first and hsviz ended the
    command.  ``still_running``: attached pids alive after strace detached.
    ``calls``: every parsed socket call, aligned (``conn``/``frames`` filled in).
    """

    capture: CaptureResult
    mode: Literal["command", "attach"]
    calls: list[Call]
    calls_path: Path
    strace_log: Path
    status: int | None = None
    terminated: bool = False
    pids: tuple[int, ...] = ()
    still_running: tuple[int, ...] = ()
    unparsed: int = 0
    problems: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # what went wrong writing the strace log


class StraceLog:
    """strace's log on its way to ``X.strace``.

    strace writes into a FIFO in a private directory, and this process saves what
    comes out.  So ``X.strace`` is made by the user after the privilege drop (never
    by root, never through a link, ``mode`` 0600), even when strace itself had to
    start as root before it (``--trace-pid``); and a full disk is met here, where
    the file is cut back to its last whole line and the lines that could not be
    kept are counted (:attr:`fault`).  A FIFO rather than a pipe: strace would
    pass an inherited pipe descriptor on to the command it starts, shifting the
    command's own descriptor numbers.

    Order: make it (``fifo`` is what strace's ``-o`` names), start strace, call
    :meth:`start` (after the drop: creates the file, starts the copying thread),
    and :meth:`finish` once strace has exited.  Never started (an attach that
    failed, a capture that never got ready), it leaves no file behind.
    """

    def __init__(self, path: Path, mode: int = DEFAULT_MODE) -> None:
        self.path = path
        self.mode = mode
        self.fault: str | None = None
        self.lines = 0  # whole lines in the file
        self.lost = 0  # lines that could not be written
        self._dir: str | None = tempfile.mkdtemp(prefix="hsviz-strace-")
        self.fifo = os.path.join(self._dir, "log")
        os.mkfifo(self.fifo, 0o600)
        self._read = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(self._read, True)
        # Our own writer keeps the FIFO from reading as ended before strace opens it,
        # and until finish() says strace is gone.
        self._hold: int | None = os.open(self.fifo, os.O_WRONLY | os.O_CLOEXEC)
        self._fd: int | None = None
        self._thread: threading.Thread | None = None

    def remove_fifo(self) -> None:
        """Remove the FIFO's name once strace has it open (or never will)."""
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.fifo)
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)
            self._dir = None

    def start(self) -> None:
        """Create ``X.strace`` and copy the log into it from now on (OutputError)."""
        self._fd = create_live(self.path, self.mode)
        self._thread = threading.Thread(target=self._copy, name="hsviz-strace-log", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        fd = self._fd
        assert fd is not None
        size = 0  # bytes in the file
        whole = 0  # bytes in the file up to the end of its last whole line
        while chunk := os.read(self._read, 1 << 16):
            if not size:
                self.remove_fifo()  # strace has it open: no name left behind, even after a SIGKILL
            if self.fault is not None:
                self.lost += chunk.count(b"\n")
                continue
            done = 0
            try:
                while done < len(chunk):
                    done += os.write(fd, chunk[done:])
            except OSError as exc:
                cut = chunk.rfind(b"\n", 0, done) + 1  # 0: no line ended in what was written
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size + cut if cut else whole)
                self.lines += chunk.count(b"\n", 0, cut)
                self.lost += chunk.count(b"\n", cut)
                self.fault = f"cannot write: {exc.strerror or exc}"
                continue
            size += len(chunk)
            self.lines += chunk.count(b"\n")
            if (last := chunk.rfind(b"\n")) >= 0:
                whole = size - len(chunk) + last + 1
            if unlinked(fd):
                self.fault = "the file was removed while it was written (its directory deleted?)"
                self.lost, self.lines = self.lines, 0

    def finish(self) -> str | None:
        """strace has exited: copy what is left, close, and say what went wrong (None: nothing)."""
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in (self._read, self._fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read, self._fd = -1, None
        self.remove_fifo()
        if self.fault is None:
            return None
        return (f"{self.path}: {self.fault}: the log keeps its first {self.lines:,} lines, cut back "
                f"to the last whole line; {self.lost:,} lines lost")


def _alive(pid: int) -> bool:
    """Running and not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X", "")


def _check_command(argv: Sequence[str]) -> None:
    """The same test start_traced makes, done before the capture starts."""
    exe = argv[0]
    if os.sep in exe:
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise TraceError(f"{exe}: command not found or not executable")
    elif shutil.which(exe) is None:
        raise TraceError(f"{exe}: command not found")


class TracedCapture:
    """Capture ``port`` while strace traces ``command`` (started) or ``pids`` (attached).

    Exactly one of ``command``/``pids``.  Capture options and callbacks are
    :class:`~handshake_viz.capture.LiveCapture`'s (track the packets with
    :class:`~handshake_viz.pipeline.LiveTracking`); ``on_ready`` is called once
    the capture is ready, just before the command starts.  ``stdin``/``stdout``/
    ``stderr`` go to the command (default: inherited).  The constructor checks
    everything it can (options, strace, the command, the pids) and raises
    UsageError/TraceError before anything runs; :meth:`run` does the rest.
    """

    def __init__(
        self,
        port: int,
        *,
        command: Sequence[str] = (),
        pids: Sequence[int] = (),
        as_user: tuple[int, int] | None | Literal["sudo"] = "sudo",
        grace: float = DEFAULT_GRACE,
        iface: str = "lo",
        output: str | os.PathLike[str] | None = None,
        count: int | None = None,
        timeout: float | None = None,
        on_ready: Callable[[], None] | None = None,
        on_packet: Callable[[Packet | UdpPacket], None] | None = None,
        on_status: Callable[[CaptureStats], None] | None = None,
        handle_signals: bool = True,
        stdin: IO[Any] | int | None = None,
        stdout: IO[Any] | int | None = None,
        stderr: IO[Any] | int | None = None,
        privileges: PrivilegedSetup | None = None,
        as_root: bool = False,
        mode: int = DEFAULT_MODE,
        snaplen: int = DEFAULT_SNAPLEN,
        headers_only: bool = False,
    ) -> None:
        if bool(command) == bool(pids):
            raise UsageError("trace either a command (after --) or running processes (--trace-pid), one of them")
        if not grace >= 0:
            raise UsageError(f"--grace {grace}: must be 0 or more seconds")
        for pid in pids:
            if pid <= 0 or not os.path.isdir(f"/proc/{pid}"):
                raise TraceError(f"--trace-pid {pid}: no such process")
        find_strace()  # TraceError: "tracing needs strace (apt-get install strace)"
        if command:
            _check_command(command)
        self.command = tuple(command)
        self.pids = tuple(dict.fromkeys(pids))
        self.as_user = as_user
        self.grace = grace
        self.on_ready = on_ready
        self.privileges = privileges
        self.as_root = as_root
        self.file_mode = mode
        self._stdio = (stdin, stdout, stderr)
        self.live = LiveCapture(
            port, iface=iface, output=output if output is not None else default_output_name(),
            count=count, timeout=timeout,
            on_ready=self._ready, on_packet=on_packet, on_status=on_status,
            handle_signals=handle_signals, privileges=privileges, mode=mode, headers_only=headers_only,
            snaplen=snaplen,
        )
        self.output = self.live.output
        self.log: StraceLog | None = None
        self._guard: Watchdog | None = None
        self.strace_log = strace_path_for(self.output)
        self.calls_path = calls_path_for(self.output)
        self.traced: TracedProcess | None = None
        self._finishing = threading.Event()
        self._watcher: threading.Thread | None = None
        self._ran = False
        self._faults: list[str] = []
        self.ended_command = False  # the capture stopped first and we ended the command
        self.calls_written: Path | None = None  # set once the calls file is written

    @property
    def mode(self) -> Literal["command", "attach"]:
        return "command" if self.command else "attach"

    def stop(self, reason: str = "stopped") -> None:
        """Stop the capture (thread-safe); the command is then ended, or strace detached."""
        self.live.stop(reason)

    # -- the session -----------------------------------------------------------------

    def run(self) -> SessionResult:
        """Trace and capture until a stop condition; write the strace log and the calls.

        Raises what LiveCapture.run, start_traced and attach raise; tracing is
        stopped whatever happens."""
        if self._ran:
            raise UsageError("a TracedCapture runs once")
        self._ran = True
        try:
            if self.pids:  # attaching needs privilege: before the capture drops it
                self.log = StraceLog(self.strace_log, self.file_mode)
                self.traced = attach(self.pids, self.strace_log, log_to=self.log.fifo,
                                     watchdog=self.privileges is not None)
                self.log.remove_fifo()
            if self.privileges is None:
                self._check_outputs()
            else:
                self.privileges.after.append(self._check_outputs)
                if self.command:  # armed while this interpreter may still be run
                    self.privileges.add(self._arm_watchdog)
                if self.command and self.as_root:  # root's full rights: started before the drop
                    self.privileges.add(self._start_command)
            result = self.live.run()
            status, terminated = self._finish_tracing()
        except BaseException:  # an error, or a second Ctrl-C: end tracing, keep what there is
            self._finish_tracing()
            if self.log is not None and self.log.path.exists() and self.live.ready.is_set():
                with contextlib.suppress(HsvizError):
                    self._write_calls()
            raise
        try:
            calls, parse = self._write_calls()
        except OutputError as exc:
            if not self._faults:
                raise
            # The strace log failed first (a full disk): that is the cause to name.
            raise OutputError(f"{self._faults[0]}; and {exc}") from None
        return SessionResult(
            capture=result,
            mode=self.mode,
            calls=calls,
            calls_path=self.calls_path,
            strace_log=self.strace_log,
            status=status if self.command else None,
            terminated=terminated,
            pids=self.pids,
            still_running=tuple(p for p in self.pids if _alive(p)),
            unparsed=parse.unparsed,
            problems=list(parse.problems),
            faults=list(self._faults),
        )

    def _check_outputs(self) -> None:
        """The strace log and the calls file may be written (as the user, after the
        drop): checked before the pcap is made, so a refused name leaves nothing."""
        check_target(self.strace_log)
        check_target(self.calls_path)

    def _arm_watchdog(self) -> None:
        """The watchdog that ends the command if hsviz dies, made before the drop and
        dropping itself to the same user (it must be able to kill what runs as them)."""
        assert self.privileges is not None
        t = self.privileges.target
        self._guard = Watchdog("kill", None if self.as_root else (t.uid, t.gid, t.groups))

    def _start_command(self) -> None:
        if self.traced is not None:
            return
        stdin, stdout, stderr = self._stdio
        self.log = StraceLog(self.strace_log, self.file_mode)
        try:
            self.traced = start_traced(
                self.command, output=self.strace_log,
                as_user=None if self.privileges is not None else self.as_user,
                stdin=stdin, stdout=stdout, stderr=stderr, log_to=self.log.fifo,
                watchdog=self._guard if self._guard is not None else True,
            )
        except BaseException:
            self.log.finish()
            self.log = None
            if self._guard is not None:
                self._guard.close()
            raise

    def _ready(self) -> None:
        """The capture is ready, the pcap open, privileges dropped: save strace's log,
        start the command (LiveCapture calls this, main thread)."""
        if self.on_ready is not None:
            self.on_ready()
        if self.command:
            self._start_command()
        assert self.log is not None
        self.log.start()
        self._start_watcher()

    def _start_watcher(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="hsviz-strace-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Stop the capture ``grace`` seconds after strace exits (the command ended,
        or every attached process did).  Polls, so the main thread can always reap."""
        traced = self.traced
        assert traced is not None
        while not self._finishing.is_set():
            if traced.wait(_POLL) is not None:
                if not self._finishing.wait(self.grace):
                    self.live.stop("command" if self.command else "traced-exited")
                return

    def _finish_tracing(self) -> tuple[int | None, bool]:
        """End the command or detach; returns (strace's exit status, whether we ended the command)."""
        self._finishing.set()
        if self._watcher is not None:
            self._watcher.join()
        traced = self.traced
        if traced is None:
            if self.log is not None:
                self.log.finish()  # never started: nothing written, the FIFO removed
            return None, False
        if self.command and traced.poll() is None:
            # The capture stopped first (count, timeout, connections, a signal).  The
            # command may be about to exit by itself -- Ctrl-C at a terminal reached it
            # too -- so it gets the same grace before it is ended.
            traced.wait(self.grace)
            if traced.poll() is None:
                self.ended_command = True
        try:
            status = traced.stop()
        finally:
            traced.close()
            if self.log is not None:
                fault = self.log.finish()
                if fault is not None:
                    self._faults.append(fault)
        return status, self.ended_command

    def _write_calls(self) -> tuple[list[Call], StraceParse]:
        """Parse the strace log, align with the pcap's segments, write calls.jsonl."""
        from handshake_viz.trace import parse_strace_file

        groups = self.traced.thread_groups if self.traced is not None else None
        parse = parse_strace_file(self.strace_log, thread_groups=groups)
        calls = list(parse.calls)
        if calls and self.live.stats.packets:
            calls = _aligned(self.output, calls)
        write_calls_jsonl(calls, self.calls_path, mode=self.file_mode)
        self.calls_written = self.calls_path
        return calls, parse


def _aligned(pcap: Path, calls: list[Call]) -> list[Call]:
    """The calls aligned with the segments of the written pcap (read back, so that
    times are exactly those of the file)."""
    from handshake_viz import pipeline
    from handshake_viz.errors import CaptureFileError

    try:
        return list(pipeline.load(pcap, calls=calls, infer=False).calls)
    except CaptureFileError:  # nothing decodable was captured: nothing to align with
        return calls
