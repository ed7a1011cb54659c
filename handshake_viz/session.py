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
2. The capture opens its socket; once it is *ready* (every matching segment
   from now on is caught) strace starts the command, by default as the user
   who ran ``sudo`` (``SUDO_UID``), not as root: strace ``-u`` switches users,
   so strace itself keeps the right to trace.
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
strace attaches *before* the capture opens, so a wrong pid or a missing
permission is reported before anything is captured.  When the capture stops,
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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from handshake_viz.capture import (
    CaptureResult,
    CaptureStats,
    LiveCapture,
    default_output_name,
)
from handshake_viz.errors import HsvizError, TraceError, UsageError
from handshake_viz.model import Call, Packet, UdpPacket
from handshake_viz.trace import StraceParse, calls_path_for, write_calls_jsonl
from handshake_viz.tracer import TracedProcess, attach, find_strace, start_traced

__all__ = [
    "DEFAULT_GRACE",
    "SessionResult",
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
        self._stdio = (stdin, stdout, stderr)
        self.live = LiveCapture(
            port, iface=iface, output=output if output is not None else default_output_name(),
            count=count, timeout=timeout,
            on_ready=self._ready, on_packet=on_packet, on_status=on_status,
            handle_signals=handle_signals,
        )
        self.output = self.live.output
        self.strace_log = strace_path_for(self.output)
        self.calls_path = calls_path_for(self.output)
        self.traced: TracedProcess | None = None
        self._finishing = threading.Event()
        self._watcher: threading.Thread | None = None
        self._ran = False
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
        if self.pids:
            self.traced = attach(self.pids, self.strace_log)
            self._start_watcher()
        try:
            result = self.live.run()
            status, terminated = self._finish_tracing()
        except BaseException:  # an error, or a second Ctrl-C: end tracing, keep what there is
            self._finish_tracing()
            if self.live.ready.is_set():
                with contextlib.suppress(HsvizError):
                    self._write_calls()
            elif self.strace_log.exists() and self.strace_log.stat().st_size == 0:
                with contextlib.suppress(OSError):
                    self.strace_log.unlink()  # nothing was captured: leave nothing behind
            raise
        calls, parse = self._write_calls()
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
        )

    def _ready(self) -> None:
        """The capture is ready: start the command (LiveCapture calls this, main thread)."""
        if self.on_ready is not None:
            self.on_ready()
        if self.command:
            stdin, stdout, stderr = self._stdio
            self.traced = start_traced(
                self.command, output=self.strace_log, as_user=self.as_user,
                stdin=stdin, stdout=stdout, stderr=stderr,
            )
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
        return status, self.ended_command

    def _write_calls(self) -> tuple[list[Call], StraceParse]:
        """Parse the strace log, align with the pcap's segments, write calls.jsonl."""
        from handshake_viz.trace import parse_strace_file

        groups = self.traced.thread_groups if self.traced is not None else None
        parse = parse_strace_file(self.strace_log, thread_groups=groups)
        calls = list(parse.calls)
        if calls and self.live.stats.packets:
            calls = _aligned(self.output, calls)
        write_calls_jsonl(calls, self.calls_path)
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
