"""Recording kernel events through tracefs while a capture runs: the I/O half of
:mod:`handshake_viz.kernel`.

Theory of operation
-------------------
:class:`KernelRecorder` leaves every other user of tracing alone:

* **A private instance.**  ``instances/hsviz-PID-N-XXXX`` (mkdir makes one: its own
  ring buffer, clock, events and filters), unique per recorder, so two captures at
  once each get their own.  Instances left by an hsviz that was killed (its pid is
  gone) are removed when the next one starts.
* **tracefs mounted only if it was not.**  When no tracefs is mounted, a private one
  is mounted on a temporary directory for the capture and unmounted after.  Another
  hsviz's private mount is never borrowed (it may go away first).
* **The ``mono`` trace clock** (CLOCK_MONOTONIC).  The packet timestamps are wall
  clock (CLOCK_REALTIME); the two differ by a constant that changes only when the
  wall clock is stepped.  ``mono`` is read by the same fast, NMI-safe accessor as
  the default clock but is one clock for all CPUs (``local`` is per-CPU and may
  differ between them) and, unlike ``tai``, keeps no offset the kernel can update
  mid-read.  The offset is measured, not assumed: clock markers are written into
  the instance's ``trace_marker`` between two reads of the wall clock, at the start
  and at the end (:func:`handshake_viz.kernel.calibrate`; a stepped clock shows as
  ``drift``).
* **Filters on the port** for every tracepoint that names ports
  (``sport == P || dport == P``).  ``tcp_send_reset`` (addresses only as sockaddr
  arrays) and ``skb:kfree_skb`` (no addresses at all) cannot be filtered so; the
  drop event is filtered to IP packets and to reasons other than the routine ones
  (``NOT_SPECIFIED``, ``QUEUE_PURGE``), resolved by name from the event's format
  file, and :func:`handshake_viz.kernel.resolve` keeps only the port's.
* **A reader thread** copies ``trace_pipe`` to an anonymous temporary file as it
  fills (poll, then read: the GIL is not held while waiting), so the ring buffer
  (4 MiB per CPU, 64 MiB in all at most) only has to hold what arrives between two reads.  Parsing waits
  until the capture is over, so it costs the capture nothing.  What the ring still
  lost is counted (per-CPU ``overrun``, and the ``[LOST N EVENTS]`` markers) and
  reported, never dropped silently.
* **Cleaned up on every exit path.**  :meth:`KernelRecorder.close` (also the context
  manager's exit) turns tracing off, removes the instance and unmounts what it
  mounted, with SIGINT and SIGTERM held back until it is done, so a Ctrl-C or a
  SIGTERM never leaves an instance behind (only SIGKILL can; the next start removes it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import select
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from handshake_viz.errors import KernelEventsUnavailable, os_error
from handshake_viz.kernel import (
    EVENTS,
    SYNC_MARKER,
    KernelLog,
    calibrate,
    find_markers,
    kernel_jsonl_lines,
    kernel_path_for,
    parse_trace_text,
    resolve,
)

__all__ = [
    "BUFFER_KB",
    "KernelRecorder",
    "UNAVAILABLE",
    "find_tracefs",
    "instances_of",
    "remove_stale",
    "write_kernel_jsonl",
]

#: The one-line reason's start when kernel events cannot be had.
UNAVAILABLE = "kernel events need root and tracefs"
#: Ring buffer per CPU, KiB: about 40,000 events, far more than one read's interval holds
#: (less per CPU on machines with more than 16 CPUs: 64 MiB in all at most).
BUFFER_KB = 4096
_TOTAL_KB = 65536
_PREFIX = "hsviz-"
_MOUNT_PREFIX = "hsviz-tracefs-"
_CLOCK = "mono"
_MARKERS = 5  # narrow clock markers wanted at each end; the narrowest bracket is used
_NARROW_NS = 5_000  # a bracket this narrow (ns) counts
_MARKER_TRIES = 50
#: Drop reasons left out in the kernel: routine frees, not a packet refused.
_ROUTINE_DROPS = ("NOT_SPECIFIED", "QUEUE_PURGE")
_ETH_P_IP, _ETH_P_IPV6 = 0x0800, 0x86DD
_counter = 0
_counter_lock = threading.Lock()


# ======================================================================================
# tracefs: where, and mounting it
# ======================================================================================


def _mounts() -> Iterator[tuple[str, str]]:
    """(mount point, fstype) of this process's mount namespace."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[1])
                    yield point, parts[2]
    except OSError:
        return


def find_tracefs() -> Path | None:
    """A mounted tracefs (not another hsviz's private mount), or None."""
    for point, fstype in _mounts():
        if fstype == "tracefs" and not Path(point).name.startswith(_MOUNT_PREFIX):
            return Path(point)
    return None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_tracefs() -> Path:
    target = Path(tempfile.mkdtemp(prefix=_MOUNT_PREFIX))
    if _libc().mount(b"nodev", os.fsencode(target), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        target.rmdir()
        raise KernelEventsUnavailable(f"{UNAVAILABLE}: cannot mount tracefs: {os.strerror(err)}")
    return target


def _unmount(target: Path) -> None:
    libc = _libc()
    if libc.umount2(os.fsencode(target), 0) != 0 and ctypes.get_errno() == errno.EBUSY:
        libc.umount2(os.fsencode(target), 2)  # MNT_DETACH: gone once the last file closes
    with contextlib.suppress(OSError):
        target.rmdir()


def instances_of(tracefs: Path) -> list[str]:
    """The hsviz instances under ``tracefs/instances`` (tests check none is left)."""
    try:
        return sorted(p.name for p in (tracefs / "instances").iterdir() if p.name.startswith(_PREFIX))
    except OSError:
        return []


def _remove_stale(tracefs: Path) -> None:
    """Instances of hsviz processes that no longer exist (killed with SIGKILL)."""
    for name in instances_of(tracefs):
        m = re.match(rf"^{_PREFIX}(\d+)-", name)
        if m and not os.path.exists(f"/proc/{m[1]}"):
            with contextlib.suppress(OSError):
                (tracefs / "instances" / name).rmdir()


def _reason_numbers(format_text: str, names: tuple[str, ...]) -> list[int]:
    """The numbers of drop reasons ``names`` in kfree_skb's format (they differ
    between kernel versions): ``{ 2, "NOT_SPECIFIED" }``."""
    return [int(n) for n, name in re.findall(r'\{\s*(\d+),\s*"(\w+)"\s*\}', format_text) if name in names]


def remove_stale(pcap: str | os.PathLike[str]) -> None:
    """Remove ``X.kernel.jsonl`` beside a capture about to be (re)written: it described
    the capture this one replaces, and would be joined to it (OutputError if it stays)."""
    stale = kernel_path_for(pcap)
    try:
        stale.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise os_error(exc, stale, "remove the earlier kernel events") from None


def write_kernel_jsonl(log: KernelLog, path: str | os.PathLike[str], *, mode: int | None = None) -> Path:
    """Write ``X.kernel.jsonl`` as the other outputs are written (a temporary file renamed
    into place, never through a link, ``mode`` bits: 0600 by default); OutputError when
    it cannot be written."""
    from handshake_viz.outfile import DEFAULT_MODE, AtomicFile

    path = Path(path)
    with AtomicFile(path, "w", mode_bits=DEFAULT_MODE if mode is None else mode) as fh:
        for line in kernel_jsonl_lines(log):
            fh.write(line + "\n")
    return path


# ======================================================================================
# The recorder
# ======================================================================================


class _CleanupHelper:
    """A child process that keeps root for one job: when the recorder closes -- or its
    process dies, ``kill -9`` included, which closes the pipe just the same -- switch
    tracing off, remove the trace instance and undo a private mount.

    The capturing process drops every privilege after :meth:`KernelRecorder.open`
    (``hsviz capture``), and removing a tracefs instance or unmounting needs them; the
    helper reads no packet, no file and no trace, only one byte from its pipe.
    """

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid, self.pipe = pid, pipe

    @classmethod
    def start(cls, instance: Path, mounted: Path | None) -> _CleanupHelper:
        """Fork the helper, and return once it holds nothing of this process's but its
        pipe.  Until it closes them, a forked child holds a copy of every descriptor:
        a listening socket the caller then closes would stay open in the child, and a
        new bind to its port fail with EADDRINUSE (the time-wait lesson did, one run in
        a few on a busy machine, where the child may wait a while for a CPU)."""
        r, w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the helper: root, no threads, nothing but the pipe
            status = 1
            try:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)  # only the pipe ends it
                keep = sorted((r, ready_w))
                os.closerange(0, keep[0])
                os.closerange(keep[0] + 1, keep[1])
                os.closerange(keep[1] + 1, os.sysconf("SC_OPEN_MAX"))
                os.close(ready_w)  # the parent's read returns: everything else is closed
                while os.read(r, 64):
                    pass
                status = 0 if _remove_instance(instance, mounted) else 1
            finally:
                os._exit(status)
        os.close(r)
        os.close(ready_w)
        try:
            while os.read(ready_r, 64):  # EOF once the helper has closed all but its pipe
                pass
        finally:
            os.close(ready_r)
        return cls(pid, w)

    def finish(self) -> bool:
        """Tell the helper to clean up and wait for it; whether the instance is gone."""
        with contextlib.suppress(OSError):
            os.close(self.pipe)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status) == 0


def _remove_instance(instance: Path, mounted: Path | None) -> bool:
    """Tracing off, the instance removed (EBUSY while the kernel lets go of the pipe:
    retried), the private mount undone; whether the instance is gone."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.join(instance, "tracing_on"), os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    gone = False
    for attempt in range(50):
        try:
            os.rmdir(instance)
            gone = True
            break
        except FileNotFoundError:
            gone = True
            break
        except OSError:
            time.sleep(0.01 * (attempt + 1) / 5)
    if mounted is not None:
        _unmount(mounted)
    return gone


class KernelRecorder:
    """Record the kernel events of TCP ``port`` while a capture runs.

    ::

        with KernelRecorder(port) as kernel:   # start(): KernelEventsUnavailable if it cannot
            ...capture...
            log = kernel.stop()                # the port's events, on the wall clock
        # closed: instance removed, tracefs unmounted if it was mounted for this

    ``warnings`` lists tracepoints this kernel lacks (recorded without them).
    """

    def __init__(self, port: int, *, buffer_kb: int = BUFFER_KB) -> None:
        global _counter
        with _counter_lock:
            _counter += 1
            n = _counter
        self.port = port
        self.buffer_kb = min(buffer_kb, max(1024, _TOTAL_KB // (os.cpu_count() or 1)))
        self.name = f"{_PREFIX}{os.getpid()}-{n}-{secrets.token_hex(2)}"
        self.tracefs: Path | None = None
        self.mounted: Path | None = None  # the private mount to undo
        self.instance: Path | None = None
        self.recorded: tuple[str, ...] = ()
        self.missing: tuple[str, ...] = ()
        self.warnings: list[str] = []
        self._pipe: int | None = None
        self._marker: int | None = None
        self._raw: IO[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r: int | None = None  # a pipe that wakes the reader at once when stopping
        self._wake_w: int | None = None
        self._reader_error: list[BaseException] = []
        self._brackets: dict[int, tuple[int, int]] = {}
        self._next_marker = 0
        self._split = 0
        self._on: int | None = None  # tracing_on, kept open: stop() may run without root
        self._stats: list[int] = []  # per_cpu/cpu*/stats, kept open for the same reason
        self._helper: _CleanupHelper | None = None
        self._closed = False
        self.left_behind: Path | None = None  # an instance close() could not remove (never seen)

    # -- start ---------------------------------------------------------------------

    def start(self) -> KernelRecorder:
        """:meth:`open` and :meth:`start_reading` at once (a process that keeps root)."""
        self.open()
        with self._closed_on_failure():
            self.start_reading()
        return self

    def open(self) -> KernelRecorder:
        """Everything that needs root, done before ``hsviz capture`` drops it: the
        instance, its events and filters, the files read and written later (kept
        open), recording switched on, and a small helper process that stays root only
        to remove the instance (and undo the mount) once this process closes the
        recorder or dies, even by ``kill -9``.  KernelEventsUnavailable (one line that
        says which and why) when it cannot; nothing is left behind then."""
        with self._closed_on_failure():
            self._open()
        return self

    @contextlib.contextmanager
    def _closed_on_failure(self) -> Iterator[None]:
        """A step that fails, Ctrl-C included, closes the recorder before the error goes
        on: no trace instance is left behind by a half-made start."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def start_reading(self) -> None:
        """Clock markers and the reader thread: no privilege needed (the files are
        open), so this may run after the drop."""
        # Markers before the reader waits on the pipe: a waiting reader is woken inside
        # each write, which makes the write slow and its bracket wide.
        self._mark()
        self._split = self._next_marker
        self._reader = threading.Thread(target=self._read_loop, name="hsviz-kernel", daemon=True)
        self._reader.start()

    def _open(self) -> None:
        if os.geteuid() != 0:
            raise KernelEventsUnavailable(f"{UNAVAILABLE}: not running as root (try sudo)")
        self.tracefs = find_tracefs()
        if self.tracefs is None:
            self.tracefs = self.mounted = _mount_tracefs()
        _remove_stale(self.tracefs)
        instances = self.tracefs / "instances"
        try:
            (instances / self.name).mkdir()
        except OSError as exc:
            raise KernelEventsUnavailable(f"{UNAVAILABLE}: cannot create a trace instance in {instances}: "
                                          f"{exc.strerror or exc}") from None
        self.instance = instances / self.name
        have = [e for e in EVENTS if (self.instance / "events" / e.replace(":", "/")).is_dir()]
        self.missing = tuple(e for e in EVENTS if e not in have)
        if "sock:inet_sock_set_state" not in have:
            raise KernelEventsUnavailable(f"{UNAVAILABLE}: this kernel has no sock:inet_sock_set_state "
                                          "tracepoint (Linux 4.16 or later has it)")
        self.warnings += [f"kernel events: this kernel has no {e} tracepoint: recording without it"
                          for e in self.missing]
        clocks = self._read("trace_clock")
        if _CLOCK not in clocks.replace("[", " ").replace("]", " ").split():
            raise KernelEventsUnavailable(f"{UNAVAILABLE}: no '{_CLOCK}' trace clock (have: {clocks.strip()})")
        self._write("trace_clock", _CLOCK)
        self._write("buffer_size_kb", str(self.buffer_kb))
        for event in have:
            path = f"events/{event.replace(':', '/')}"
            filt = self._filter(event)
            if filt:
                self._write(f"{path}/filter", filt)
            self._write(f"{path}/enable", "1")
        self.recorded = tuple(have)
        self._raw = tempfile.TemporaryFile(prefix="hsviz-kernel-")
        self._wake_r, self._wake_w = os.pipe()
        self._pipe = os.open(self.instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        self._marker = os.open(self.instance / "trace_marker", os.O_WRONLY)
        self._on = os.open(self.instance / "tracing_on", os.O_WRONLY)
        self._stats = [os.open(f, os.O_RDONLY) for f in sorted((self.instance / "per_cpu").glob("cpu*/stats"))]
        os.write(self._on, b"1")
        self._helper = _CleanupHelper.start(self.instance, self.mounted)

    def _filter(self, event: str) -> str:
        if event in ("tcp:tcp_send_reset",):
            return ""  # no port fields: kept or left out by resolve()
        if event == "skb:kfree_skb":
            assert self.instance is not None
            fmt = self._read("events/skb/kfree_skb/format")
            routine = _reason_numbers(fmt, _ROUTINE_DROPS)
            filt = f"(protocol == {_ETH_P_IP} || protocol == {_ETH_P_IPV6})"
            return filt + "".join(f" && reason != {n}" for n in routine)
        return f"sport == {self.port} || dport == {self.port}"

    def _read(self, rel: str) -> str:
        assert self.instance is not None
        try:
            return (self.instance / rel).read_text()
        except OSError as exc:
            raise KernelEventsUnavailable(f"{UNAVAILABLE}: cannot read {rel}: {exc.strerror or exc}") from None

    def _write(self, rel: str, value: str) -> None:
        assert self.instance is not None
        try:
            with open(self.instance / rel, "w") as fh:
                fh.write(value)
        except OSError as exc:
            raise KernelEventsUnavailable(f"{UNAVAILABLE}: cannot set {rel} to {value!r}: "
                                          f"{exc.strerror or exc}") from None

    def _mark(self) -> None:
        """Clock markers, each between two reads of the wall clock, until a few had
        narrow brackets (another thread taking the GIL between the reads widens one)."""
        assert self._marker is not None
        narrow = 0
        for _ in range(_MARKER_TRIES):
            n = self._next_marker
            self._next_marker += 1
            text = f"{SYNC_MARKER} {n}".encode()
            before = time.time_ns()
            os.write(self._marker, text)
            after = time.time_ns()
            self._brackets[n] = (before, after)
            narrow += after - before <= _NARROW_NS
            if narrow >= _MARKERS:
                break

    def _read_loop(self) -> None:
        """Copy trace_pipe to the temporary file until told to stop (stop() drains the rest)."""
        assert self._pipe is not None and self._wake_r is not None
        poller = select.poll()
        poller.register(self._pipe, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stopping.is_set():
                if not self._drain():
                    poller.poll(1000)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self._reader_error.append(exc)

    def _drain(self) -> bool:
        """Copy what trace_pipe holds now; whether there was anything."""
        assert self._pipe is not None and self._raw is not None
        got = False
        while True:
            try:
                chunk = os.read(self._pipe, 1 << 16)
            except BlockingIOError:
                return got
            if not chunk:
                return got
            self._raw.write(chunk)
            got = True

    # -- stop ------------------------------------------------------------------------

    def stop(self) -> KernelLog:
        """Stop recording and return the port's events on the wall clock (the instance
        stays until :meth:`close`)."""
        assert self.instance is not None and self._raw is not None
        self._wake()  # the reader stops waiting on the pipe first (see _start)
        if self._reader is not None:
            self._reader.join()
        self._mark()
        assert self._on is not None
        os.write(self._on, b"0")
        self._drain()
        if self._reader_error:
            raise KernelEventsUnavailable(f"kernel events: reading the trace failed: {self._reader_error[0]}")
        overrun = self._overruns()
        sync = calibrate(find_markers(self._text()), self._brackets, _CLOCK, split=self._split)
        parsed = parse_trace_text(self._text(), offset=sync.offset if sync is not None else 0.0)
        resolved = resolve(parsed.events, self.port)
        events = resolved.events
        if sync is None:
            self.warnings.append("kernel events: no clock markers came back: times are the trace clock's")
        if parsed.unparsed:
            self.warnings.append(f"kernel events: {parsed.unparsed} trace lines not understood "
                                 f"(first: {parsed.problems[0]})")
        return KernelLog(port=self.port, sync=sync, events=events, lost=max(overrun, parsed.lost),
                         recorded=self.recorded, missing=self.missing,
                         unattributed_drops=resolved.unattributed_drops)

    def _text(self) -> Iterator[str]:
        """The recorded text, line by line, from the start."""
        assert self._raw is not None
        self._raw.seek(0)
        for line in self._raw:
            yield line.decode("utf-8", "replace")

    def _wake(self) -> None:
        """Tell the reader to drain what is left and stop."""
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _overruns(self) -> int:
        """Events the ring buffer lost: per-CPU ``overrun`` plus ``dropped events``."""
        total = 0
        for fd in self._stats:
            with contextlib.suppress(OSError, ValueError):
                for line in os.pread(fd, 4096, 0).decode("ascii", "replace").splitlines():
                    key, _, value = line.partition(":")
                    if key.strip() in ("overrun", "dropped events"):
                        total += int(value)
        return total

    # -- close -----------------------------------------------------------------------

    def close(self) -> None:
        """Remove the instance and undo the mount; safe to call more than once and
        from any exit path (SIGINT and SIGTERM wait until it is done)."""
        if self._closed:
            return
        self._closed = True
        held = {signal.SIGINT, signal.SIGTERM}
        in_main = threading.current_thread() is threading.main_thread()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held) if in_main else None
        try:
            self._wake()
            if self._on is not None:
                with contextlib.suppress(OSError):
                    os.write(self._on, b"0")
            if self._reader is not None and self._reader.is_alive():
                self._reader.join(2.0)
            for fd in (self._pipe, self._marker, self._wake_r, self._wake_w, self._on, *self._stats):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._pipe = self._marker = self._wake_r = self._wake_w = self._on = None
            self._stats = []
            if self._raw is not None:
                self._raw.close()
            if self._helper is not None:  # it has root: it removes the instance and the mount
                if not self._helper.finish():
                    self.left_behind = self.instance
                return
            if self.instance is not None:
                for attempt in range(50):  # EBUSY while the kernel lets go of the pipe
                    try:
                        self.instance.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.01 * (attempt + 1) / 5)
                else:
                    self.left_behind = self.instance
            if self.mounted is not None:
                _unmount(self.mounted)
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def __enter__(self) -> KernelRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
