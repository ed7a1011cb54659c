"""Live capture on a Linux interface (loopback by default), a pcap writer, and replay.

Theory of operation
-------------------
The receive path is a plain ``AF_PACKET``/``SOCK_RAW`` socket from the standard
``socket`` module, set up so that the kernel does the expensive work:

* ``PACKET_IGNORE_OUTGOING`` (Linux 4.20+): on loopback a packet socket sees each
  packet twice, once leaving and once arriving.  The kernel drops the outgoing
  copy; without the option we drop frames whose ``pkttype`` is ``PACKET_OUTGOING``.
  Never by comparing bytes: real retransmissions are byte-identical.
* A classic BPF program, assembled here (libpcap is not required), keeps only TCP
  to or from the port, IPv4 and IPv6, exactly what ``tcpdump tcp port P`` keeps.
* A large receive buffer (``SO_RCVBUFFORCE`` as root) absorbs bursts while the
  Python side decodes, tracks and prints.
* ``SO_TIMESTAMPNS``: each frame carries the kernel's receive time.

Readiness: the socket is created with protocol 0 (no packets are queued at all),
bound to the interface with protocol 0 to learn its link type, the filter is
attached, anything queued is drained, the kernel is seen stamping packets on
arrival (below), and only then is it bound with ``ETH_P_ALL``.  From the moment
:class:`LiveCapture` reports ready, every matching packet is caught and carries
its arrival time, and no unfiltered packet was ever queued.

Arrival timestamps are a global switch in Linux (the ``netstamp_needed_key``
static key), on only while some socket has asked for timestamps.  Asking
(``SO_TIMESTAMPNS``) does not switch it on at once: the switch is flipped by a
deferred work item, measured here 0.2-5 ms (median 1.7 ms) later.  A packet that
arrives before that is stamped when it is *read*, so a capture opened while the
switch was off (no capture running, the previous one closed) could stamp its
first packets late: a refused ``connect()`` then seemed to return before its RST
arrived.  So the packet socket asks first thing, and before it is bound a
throwaway UDP socket sends itself a datagram over loopback until one comes back
stamped before ``recvmsg`` was called (:func:`_wait_for_arrival_stamps`; at most
``STAMP_WAIT`` seconds, usually one to five probes).  The packet socket itself
keeps the switch on for as long as the capture runs.

Every accepted frame is written to the pcap before it is decoded, so what was
received is never lost: the writer keeps only complete records in its buffer,
gets them onto the file within 100 ms (a background thread flushes even while
the consumer is stuck), and is closed on any exit.  On a requested stop the
frames the kernel still holds are written first.  Frames the kernel had to drop
(receive buffer full) are counted from ``PACKET_STATISTICS`` and reported.

Live timestamps are rounded to microseconds, as the pcap stores them, so the
live ladder is exactly what ``hsviz analyze`` prints for the written file.

Scapy (the runtime dependency) is used where it serves: ``--inject`` reads the
raw frames of a capture with its ``RawPcapReader``.  It is kept out of the
receive loop: scapy's ``AsyncSniffer`` lost over 90% of a 20,000-segment burst
on this machine.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from handshake_viz.errors import (
    CaptureError,
    CaptureFileError,
    OutputError,
    PermissionDeniedError,
    UsageError,
)
from handshake_viz.model import ConnectionSummary, Packet, Segment

__all__ = [
    "DEFAULT_SNAPLEN",
    "STAMP_WAIT",
    "CaptureResult",
    "CaptureStats",
    "LiveCapture",
    "PacketSocket",
    "PcapWriter",
    "Replay",
    "bpf_port_filter",
    "default_output_name",
    "open_packet_socket",
    "replay",
]

# --- Linux ABI constants (linux/if_packet.h, asm-generic/socket.h, linux/if_ether.h).
# The socket module lacks most of them; importing scapy.arch.linux for them costs
# half a second before the capture can say it is ready.
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_RAWIP = 519
ARPHRD_NONE = 0xFFFE

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

DEFAULT_SNAPLEN = 262144
DEFAULT_RCVBUF = 64 * 1024 * 1024
#: Longest time, in seconds, :func:`open_packet_socket` waits for the kernel to
#: stamp packets on arrival (the switch takes 0.2-5 ms to flip on this machine).
STAMP_WAIT = 0.05

_TIMESPEC = struct.Struct("@qq")
_TPACKET_STATS = struct.Struct("@II")
_ANCBUF = socket.CMSG_SPACE(_TIMESPEC.size)


# --------------------------------------------------------------------------- pcap


_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_HEADER = struct.Struct("<IHHiIII")  # magic, 2, 4, thiszone, sigfigs, snaplen, linktype
_PCAP_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len


class PcapWriter:
    """Write a classic little-endian, microsecond pcap as records arrive.

    Microsecond resolution because every reader (tcpdump, tshark, scapy, Zeek,
    tcptrace) reads it; loopback ordering is kept by record order anyway.

    Records are buffered whole in memory and written with ``os.write``, never
    through a buffered file that could flush half a record, so if the process
    dies the file holds the header and complete records only.  A record reaches
    the file at most ``2 * flush_interval`` (100 ms by default) after ``write``:
    ``write`` flushes once the oldest pending record is ``flush_interval`` old,
    and a background thread does the same when no more writes come (a capture
    whose consumer is stuck printing still gets its records onto the disk).
    Per record this costs one lock and one ``bytearray`` extend, not a syscall.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = DEFAULT_SNAPLEN,
        flush_interval: float = 0.05,
        max_buffer: int = 1 << 20,
        background_flush: bool = True,
    ) -> None:
        self.path = Path(path)
        self.linktype = linktype
        self.snaplen = snaplen
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.records = 0
        self._buf = bytearray()
        self._pending_since = 0.0
        self._lock = threading.Lock()
        self._error: OutputError | None = None  # raised by the flusher thread, reported here
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self._write_all(_PCAP_HEADER.pack(_PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype))
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None
        if background_flush:
            self._flusher = threading.Thread(target=self._flush_loop, name="pcap-flush", daemon=True)
            self._flusher.start()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(
        self,
        data: bytes,
        ts: float | None = None,
        *,
        ts_ns: int | None = None,
        wirelen: int | None = None,
    ) -> None:
        """Append one record.  ``ts_ns`` (epoch nanoseconds) wins over ``ts`` (seconds)."""
        if self._error is not None:
            raise self._error
        if self._fd is None:
            raise ValueError("write to a closed PcapWriter")
        if ts_ns is not None:
            usec_total = ts_ns // 1000
        elif ts is not None:
            usec_total = round(ts * 1_000_000)
        else:
            usec_total = time.time_ns() // 1000
        caplen = min(len(data), self.snaplen)
        orig = max(wirelen if wirelen is not None else len(data), caplen)
        record = _PCAP_RECORD.pack(usec_total // 1_000_000, usec_total % 1_000_000, caplen, orig) + (
            data[:caplen] if caplen < len(data) else data
        )
        with self._lock:
            buf = self._buf
            now = time.monotonic()
            if not buf:
                self._pending_since = now
            # One extend per record: a signal handler that raises between two
            # bytecodes can never leave half a record in the buffer.
            buf += record
            self.records += 1
            if len(buf) >= self.max_buffer or now - self._pending_since >= self.flush_interval:
                self._flush_locked()

    def maybe_flush(self, now: float | None = None) -> None:
        """Flush if the oldest pending record has waited ``flush_interval`` or more."""
        if self._buf and (now if now is not None else time.monotonic()) - self._pending_since >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._buf and self._fd is not None:
            # SIGINT/SIGTERM are held while the buffer goes out, so a handler that
            # raises cannot make the bytes be written twice or cut in half.
            with _signals_held():
                data, self._buf = self._buf, bytearray()
                self._write_all(data)

    def _flush_loop(self) -> None:
        while not self._closing.wait(self.flush_interval):
            try:
                self.maybe_flush()
            except OutputError as exc:
                self._error = exc
                return

    def close(self) -> None:
        """Write what is pending and close the file.  Safe to call more than once."""
        if self._fd is None:
            return
        self._closing.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._lock:
            try:
                self._flush_locked()
            finally:
                fd, self._fd = self._fd, None
                if fd is not None:
                    os.close(fd)
        if self._error is not None:
            raise self._error

    def _write_all(self, data: bytes | bytearray) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave captured data in memory
        try:
            self.close()
        except Exception:  # noqa: BLE001,S110 - nothing left to report to at interpreter exit
            pass


class _signals_held:
    """Block SIGINT and SIGTERM in the main thread for the duration (no-op elsewhere)."""

    _SIGS = frozenset({signal.SIGINT, signal.SIGTERM})

    def __enter__(self) -> None:
        self._old: set[int] | None = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.pthread_sigmask(signal.SIG_BLOCK, self._SIGS)

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


def default_output_name(now: float | None = None) -> str:
    """``capture-20240131-142501.pcap`` for the local time ``now``."""
    return time.strftime("capture-%Y%m%d-%H%M%S.pcap", time.localtime(now))


# --------------------------------------------------------------------------- BPF

# Classic BPF opcodes (linux/filter.h), only those the port filter needs.
_LD_W_ABS = 0x20
_LD_H_ABS = 0x28
_LD_B_ABS = 0x30
_LD_H_IND = 0x48
_LDX_B_MSH = 0xB1  # X = 4 * (pkt[k] & 0x0f): the IPv4 header length
_ALU_AND_K = 0x54
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06

_SOCK_FILTER = struct.Struct("=HBBI")

_IPPROTO_TCP = 6
_IPV4_FRAG_OFFSET_MASK = 0x1FFF

BpfInsn = tuple[int, int, int, int]


def _assemble(prog: list[tuple[Any, ...]]) -> list[BpfInsn]:
    """Resolve labels.  Items: ``("label", name)``, ``(code, k)``, ``(code, k, jt, jf)``
    where ``jt``/``jf`` are label names or ``None`` (= the next instruction)."""
    where: dict[str, int] = {}
    pc = 0
    for item in prog:
        if item[0] == "label":
            where[item[1]] = pc
        else:
            pc += 1
    out: list[BpfInsn] = []
    pc = 0
    for item in prog:
        if item[0] == "label":
            continue
        code, k = item[0], item[1]
        jt = jf = 0
        if len(item) == 4:
            jt = 0 if item[2] is None else where[item[2]] - pc - 1
            jf = 0 if item[3] is None else where[item[3]] - pc - 1
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise AssertionError("BPF jump out of range")
        out.append((code, jt, jf, k & 0xFFFFFFFF))
        pc += 1
    return out


def bpf_port_filter(port: int, *, link_offset: int = 14, snaplen: int = DEFAULT_SNAPLEN) -> list[BpfInsn]:
    """A classic BPF program keeping TCP segments to or from ``port``.

    ``link_offset`` 14 reads the Ethernet type (Ethernet and Linux loopback);
    0 means frames start at the IP header and the version nibble decides.
    Like ``tcpdump tcp port P``: IPv6 only when TCP is the first next header,
    IPv4 fragments other than the first are not matched (they carry no ports).
    Accepted frames are cut to ``snaplen``.
    """
    o = link_offset
    prog: list[tuple[Any, ...]] = []
    if o >= 14:
        prog += [
            (_LD_H_ABS, o - 2),
            (_JEQ_K, 0x86DD, "v6", None),
            (_JEQ_K, 0x0800, "v4", "drop"),
        ]
    else:
        prog += [
            (_LD_B_ABS, o),
            (_ALU_AND_K, 0xF0),
            (_JEQ_K, 0x60, "v6", None),
            (_JEQ_K, 0x40, "v4", "drop"),
        ]
    prog += [
        ("label", "v6"),
        (_LD_B_ABS, o + 6),  # next header
        (_JEQ_K, _IPPROTO_TCP, None, "drop"),
        (_LD_H_ABS, o + 40),  # source port
        (_JEQ_K, port, "keep", None),
        (_LD_H_ABS, o + 42),  # destination port
        (_JEQ_K, port, "keep", "drop"),
        ("label", "v4"),
        (_LD_B_ABS, o + 9),  # protocol
        (_JEQ_K, _IPPROTO_TCP, None, "drop"),
        (_LD_H_ABS, o + 6),  # flags + fragment offset
        (_JSET_K, _IPV4_FRAG_OFFSET_MASK, "drop", None),
        (_LDX_B_MSH, o),
        (_LD_H_IND, o),  # source port at X + o
        (_JEQ_K, port, "keep", None),
        (_LD_H_IND, o + 2),
        (_JEQ_K, port, "keep", "drop"),
        ("label", "keep"),
        (_RET_K, snaplen),
        ("label", "drop"),
        (_RET_K, 0),
    ]
    return _assemble(prog)


def _attach_filter(sock: socket.socket, prog: list[BpfInsn]) -> None:
    raw = b"".join(_SOCK_FILTER.pack(*insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# --------------------------------------------------------------------------- socket


def _interface_names() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def _check_port(port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: must be between 1 and 65535")


def _check_iface(iface: str) -> None:
    names = _interface_names()
    if iface not in names:
        raise UsageError(f"unknown interface {iface!r} (have: {', '.join(names)})")


@dataclass(frozen=True, slots=True)
class PacketSocket:
    """An open, filtered, bound capture socket and what is known about it."""

    sock: socket.socket
    iface: str
    linktype: int
    ignore_outgoing: bool  # the kernel drops outgoing copies (else we check pkttype)
    rcvbuf: int  # bytes the kernel granted
    arrival_stamps: bool = True  # the kernel was seen stamping packets on arrival before the bind


def open_packet_socket(
    iface: str,
    port: int,
    *,
    snaplen: int = DEFAULT_SNAPLEN,
    rcvbuf: int = DEFAULT_RCVBUF,
) -> PacketSocket:
    """Open a packet socket on ``iface`` that receives only TCP on ``port``.

    When this returns, the socket is listening: every later matching packet is
    queued with the time it arrived, nothing unfiltered ever was.  (Should the
    kernel not be seen stamping on arrival within ``STAMP_WAIT`` seconds, the
    socket is bound anyway and ``arrival_stamps`` is False.)  Raises UsageError
    (port, interface), PermissionDeniedError (no CAP_NET_RAW) or CaptureError.
    """
    _check_port(port)
    _check_iface(iface)
    try:
        # Protocol 0: the socket receives nothing until bound with ETH_P_ALL below.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise PermissionDeniedError("capturing needs root or CAP_NET_RAW: try sudo") from None
    except OSError as exc:
        raise CaptureError(f"cannot open a packet socket: {exc.strerror or exc}") from None
    try:
        # First thing: switching arrival timestamps on takes the kernel a millisecond
        # or two, which the setup below overlaps (see the module docstring).
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.bind((iface, 0))  # learn the link type; registers no packet hook
        except OSError as exc:
            raise CaptureError(f"interface {iface!r}: cannot bind: {exc.strerror or exc}") from None
        hatype = sock.getsockname()[3]
        if hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
            linktype, offset = LINKTYPE_ETHERNET, 14
        elif hatype in (ARPHRD_NONE, ARPHRD_RAWIP):
            linktype, offset = LINKTYPE_RAW, 0
        else:
            raise CaptureError(f"interface {iface!r}: link type ARPHRD {hatype} is not supported")
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            ignore_outgoing = True
        except OSError:  # kernel before 4.20: drop PACKET_OUTGOING by pkttype instead
            ignore_outgoing = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:  # not privileged for FORCE: take what rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        _attach_filter(sock, bpf_port_filter(port, link_offset=offset, snaplen=snaplen))
        sock.setblocking(False)
        _drain(sock)
        # Before the bind, so that no packet is ever queued with the time it was read.
        arrival_stamps = _wait_for_arrival_stamps(STAMP_WAIT)
        # Zero the kernel's counters: LiveCapture's accounting starts here.
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        try:
            sock.bind((iface, ETH_P_ALL))
        except OSError as exc:
            raise CaptureError(f"interface {iface!r}: cannot bind: {exc.strerror or exc}") from None
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except BaseException:
        sock.close()
        raise
    return PacketSocket(sock, iface, linktype, ignore_outgoing, granted, arrival_stamps)


def _wait_for_arrival_stamps(timeout: float) -> bool:
    """Wait until the kernel stamps received packets on arrival; True once it does.

    Needs a socket with ``SO_TIMESTAMPNS`` already open (the caller's packet
    socket): that asks the kernel to switch arrival stamps on, and keeps them on.
    Each probe sends a datagram to a throwaway UDP socket over loopback and reads
    it back.  Loopback stamps a packet while ``sendto`` still runs, so a stamp
    earlier than the moment ``recvmsg`` is called is an arrival stamp; a packet
    that arrived unstamped is stamped inside ``recvmsg``, later than that moment.
    Probes are 0.5 ms apart, for at most ``timeout`` seconds.  False (never an
    exception) when no probe passed or loopback cannot be used.
    """
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return False
    try:
        probe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(max(timeout, 0.01))  # a datagram on loopback is there at once
        addr = probe.getsockname()
        deadline = time.monotonic() + timeout
        while True:
            probe.sendto(b"\0", addr)
            called = time.time_ns()
            _data, anc, _flags, _addr = probe.recvmsg(1, _ANCBUF)
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(cdata)
                    if sec * 1_000_000_000 + nsec < called:
                        return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)
    except OSError:  # no usable loopback (a network namespace without it): carry on
        return False
    finally:
        probe.close()


def _drain(sock: socket.socket) -> int:
    """Discard whatever is queued (nothing, by construction; kept as a guarantee)."""
    n = 0
    while True:
        try:
            sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return n
        n += 1


# --------------------------------------------------------------------------- live


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """A snapshot of a running capture."""

    packets: int  # frames written to the pcap
    segments: int  # TCP segments decoded and tracked
    connections: int  # distinct connections seen
    completed: int  # connections closed by FINs acked both ways or by a RST
    dropped: int  # frames the kernel dropped (receive buffer full)
    elapsed: float  # seconds since ready


@dataclass(frozen=True, slots=True)
class CaptureResult:
    output: Path
    reason: str  # count | timeout | connections | stopped | interrupted | terminated
    stats: CaptureStats
    summaries: list[ConnectionSummary] = field(default_factory=list)


class LiveCapture:
    """Capture TCP on one port, write a pcap, track and report every segment.

    ``run()`` blocks until a stop condition: ``count`` frames written,
    ``timeout`` seconds after ready, ``connections`` connections completed,
    :meth:`stop` (any thread), or SIGINT/SIGTERM when ``handle_signals`` and
    running in the main thread (a second signal raises KeyboardInterrupt at
    once).  On a requested stop, frames already queued in the kernel are still
    written, so the pcap holds everything sent before the stop.  Whatever
    happens, the pcap is closed with every frame received.

    The library prints nothing; the CLI passes callbacks:
    ``on_ready()`` once listening, ``on_segment(seg)`` per tracked segment,
    ``on_status(stats)`` about every ``status_interval`` seconds.
    """

    def __init__(
        self,
        port: int,
        *,
        iface: str = "lo",
        output: str | os.PathLike[str] | None = None,
        count: int | None = None,
        timeout: float | None = None,
        connections: int | None = None,
        on_ready: Callable[[], None] | None = None,
        on_segment: Callable[[Segment], None] | None = None,
        on_status: Callable[[CaptureStats], None] | None = None,
        status_interval: float = 0.25,
        snaplen: int = DEFAULT_SNAPLEN,
        rcvbuf: int = DEFAULT_RCVBUF,
        handle_signals: bool = True,
        tracker: Any = None,
    ) -> None:
        _check_port(port)
        for name, value in (("--count", count), ("--connections", connections)):
            if value is not None and value < 1:
                raise UsageError(f"{name} {value}: must be at least 1")
        if timeout is not None and not timeout > 0:
            raise UsageError(f"--timeout {timeout}: must be more than 0 seconds")
        self.port = port
        self.iface = iface
        self.output = Path(output if output is not None else default_output_name())
        self.count = count
        self.timeout = timeout
        self.connections = connections
        self.on_ready = on_ready
        self.on_segment = on_segment
        self.on_status = on_status
        self.status_interval = status_interval
        self.snaplen = snaplen
        self.rcvbuf = rcvbuf
        self.handle_signals = handle_signals
        if tracker is None:
            from handshake_viz.track import Tracker

            tracker = Tracker()
        self.tracker = tracker
        self.ready = threading.Event()
        self._stop_reason: str | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._packets = 0
        self._segments = 0
        self._dropped = 0
        self._queued_total = 0  # frames the kernel queued for us (from PACKET_STATISTICS)
        self._frames_read = 0
        self._seen: set[int] = set()
        self._completed: set[int] = set()
        self._t_ready = 0.0
        self._psock: PacketSocket | None = None
        self._signals_seen = 0

    # -- control ------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask ``run()`` to finish: queued frames are still written.  Thread-safe."""
        if self._stop_reason is None:
            self._stop_reason = reason
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals_seen += 1
        if self._signals_seen > 1:
            raise KeyboardInterrupt
        self.stop("interrupted" if signum == signal.SIGINT else "terminated")

    @property
    def stats(self) -> CaptureStats:
        return CaptureStats(
            packets=self._packets,
            segments=self._segments,
            connections=len(self._seen),
            completed=len(self._completed),
            dropped=self._dropped,
            elapsed=(time.monotonic() - self._t_ready) if self._t_ready else 0.0,
        )

    @property
    def linktype(self) -> int | None:
        return self._psock.linktype if self._psock else None

    def summaries(self) -> list[ConnectionSummary]:
        return list(self.tracker.summaries())

    # -- the loop -----------------------------------------------------------

    def run(self) -> CaptureResult:
        """Capture until a stop condition; call once.  Raises UsageError (interface),
        PermissionDeniedError, CaptureError or OutputError before ready; after ready,
        any exception from a callback propagates once the pcap is closed."""
        from handshake_viz.decode import decode_frame

        self._decode = decode_frame
        self._view = memoryview(bytearray(self.snaplen))  # one receive buffer, reused
        restore: dict[signal.Signals, Any] = {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                restore[signum] = signal.signal(signum, self._on_signal)
        writer: PcapWriter | None = None
        try:
            self._psock = open_packet_socket(self.iface, self.port, snaplen=self.snaplen, rcvbuf=self.rcvbuf)
            writer = PcapWriter(self.output, linktype=self._psock.linktype, snaplen=self.snaplen)
            self._t_ready = time.monotonic()
            self.ready.set()
            if self.on_ready is not None:
                self.on_ready()
            self._loop(writer)
            reason = self._stop_reason or "stopped"
            if reason not in ("count", "connections"):
                # Write what the kernel had queued when asked to stop, and no more
                # (traffic that keeps coming must not keep us from stopping).
                self._read_drops()
                self._pump(writer, limit=max(0, self._queued_total - self._frames_read))
            writer.close()
            self._read_drops()
            return CaptureResult(self.output, reason, self.stats, self.summaries())
        finally:
            if writer is not None:
                writer.close()
            if self._psock is not None:
                self._psock.sock.close()
            self._wake_r.close()
            self._wake_w.close()
            for signum, handler in restore.items():
                signal.signal(signum, handler)

    def _loop(self, writer: PcapWriter) -> None:
        assert self._psock is not None
        sock = self._psock.sock
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._wake_r.fileno(), select.POLLIN)
        deadline = self._t_ready + self.timeout if self.timeout is not None else None
        next_status = self._t_ready + self.status_interval
        tick = writer.flush_interval
        while self._stop_reason is None:
            wait = tick
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            for fd, _ in poller.poll(int(wait * 1000) + 1):
                if fd == sock.fileno():
                    self._pump(writer)
                else:
                    try:
                        self._wake_r.recv(64)
                    except BlockingIOError:
                        pass
            now = time.monotonic()
            writer.maybe_flush(now)
            if deadline is not None and now >= deadline and self._stop_reason is None:
                self._stop_reason = "timeout"
            if now >= next_status:
                next_status = now + self.status_interval
                self._read_drops()
                if self.on_status is not None:
                    self.on_status(self.stats)

    def _read_drops(self) -> None:
        """Fold the kernel's counters (reset on every read) into ours."""
        if self._psock is not None and self._psock.sock.fileno() >= 0:
            raw = self._psock.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
            packets, drops = _TPACKET_STATS.unpack(raw)
            self._queued_total += packets - drops  # tp_packets includes the drops
            self._dropped += drops

    def _pump(self, writer: PcapWriter, *, limit: int = 512) -> None:
        """Receive what is queued now, at most ``limit`` frames."""
        assert self._psock is not None
        sock = self._psock.sock
        check_outgoing = not self._psock.ignore_outgoing
        linktype = self._psock.linktype
        view = self._view
        decode = self._decode
        feed = self.tracker.feed
        is_finished = self.tracker.is_finished
        on_segment = self.on_segment
        while limit > 0:
            limit -= 1
            try:
                n, anc, _flags, addr = sock.recvmsg_into([view], _ANCBUF, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            self._frames_read += 1
            if check_outgoing and addr[2] == PACKET_OUTGOING:
                continue
            ts_ns = 0
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(cdata)
                    ts_ns = sec * 1_000_000_000 + nsec
            if not ts_ns:
                ts_ns = time.time_ns()
            data = bytes(view[: min(n, self.snaplen)])
            writer.write(data, ts_ns=ts_ns, wirelen=n)
            self._packets += 1
            usec = ts_ns // 1000
            # The same float the decoder computes from the microsecond pcap record,
            # so the live ladder equals `hsviz analyze` of the written file.
            ts = usec // 1_000_000 + (usec % 1_000_000) / 1_000_000
            pkt = decode(linktype, data, frame=self._packets, ts=ts, wirelen=n)
            if pkt is not None:
                seg = feed(pkt)
                self._segments += 1
                self._seen.add(seg.conn)
                if is_finished(seg.conn):  # both FINs acknowledged, or a RST
                    self._completed.add(seg.conn)
                if on_segment is not None:
                    on_segment(seg)
                if self.connections is not None and len(self._completed) >= self.connections:
                    self._stop_reason = "connections"
                    return
            if self.count is not None and self._packets >= self.count:
                self._stop_reason = "count"
                return


# --------------------------------------------------------------------------- replay


class Replay:
    """An iterator over the TCP packets of a saved capture, paced like the original.

    Made by :func:`replay`.  The file is opened at once (a bad file raises
    CaptureFileError before the first packet); :attr:`stats` is the decoder's
    count of records, skipped frames and warnings (a truncated tail, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        speed: float,
        inject: bool,
        iface: str,
        sleep: Callable[[float], None],
    ) -> None:
        if not speed >= 0:
            raise UsageError(f"--speed {speed}: must be 0 (no waiting) or more")
        from handshake_viz.decode import open_capture

        self.path = path
        self.speed = speed
        self._sleep = sleep
        self._reader = open_capture(path)  # raises CaptureFileError with one clear line
        try:
            self._injector = _Injector(path, iface) if inject else None
        except BaseException:
            self._reader.close()
            raise
        self._it = self._run()

    @property
    def stats(self) -> Any:
        return self._reader.stats

    def __iter__(self) -> Replay:
        return self

    def __next__(self) -> Packet:
        return next(self._it)

    def _run(self) -> Iterator[Packet]:
        speed, sleep, injector = self.speed, self._sleep, self._injector
        try:
            t0_wall: float | None = None
            t0_pkt = 0.0
            for pkt in self._reader:
                if speed > 0:
                    if t0_wall is None:
                        t0_wall, t0_pkt = time.monotonic(), pkt.ts
                    else:
                        # Against a schedule from the first packet: no drift from sleeps.
                        delay = t0_wall + (pkt.ts - t0_pkt) / speed - time.monotonic()
                        if delay > 0:
                            sleep(delay)
                if injector is not None:
                    injector.send(pkt.frame)
                yield pkt
        finally:
            self.close()

    def close(self) -> None:
        if self._injector is not None:
            self._injector.close()
            self._injector = None
        self._reader.close()

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replay(
    path: str | os.PathLike[str],
    *,
    speed: float = 1.0,
    inject: bool = False,
    iface: str = "lo",
    sleep: Callable[[float], None] = time.sleep,
) -> Replay:
    """Iterate the TCP packets of a saved capture with their original timing.

    The gap between two packets is slept scaled by ``1/speed``; ``speed=0``
    never sleeps.  The caller feeds a Tracker and prints, exactly as for a live
    capture.  With ``inject`` (root only) each TCP frame is also re-sent on
    ``iface`` as it is yielded, for other tools watching the interface; the
    kernel receives injected frames too and may answer them.
    """
    return Replay(path, speed=speed, inject=inject, iface=iface, sleep=sleep)


_ETHERTYPE_BY_VERSION = {4: b"\x08\x00", 6: b"\x86\xdd"}


class _Injector:
    """Re-send the raw frames of a capture on an interface, by record number."""

    def __init__(self, path: str | os.PathLike[str], iface: str) -> None:
        if os.fspath(path) == "-":
            raise UsageError("--inject: needs a capture file, not standard input")
        _check_iface(iface)
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise PermissionDeniedError("--inject needs root or CAP_NET_RAW: try sudo") from None
        self.sock.bind((iface, 0))
        hatype = self.sock.getsockname()[3]
        self.ethernet = hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
        from scapy.utils import RawPcapReader

        try:
            self._reader = RawPcapReader(os.fspath(path))
        except Exception as exc:  # decode already accepted the file; scapy may not
            self.sock.close()
            raise CaptureFileError(f"{path}: --inject cannot read the raw frames: {exc}") from None
        self._records = iter(self._reader)
        self._frame = 0

    def send(self, frame: int) -> None:
        for data, meta in self._records:
            self._frame += 1
            if self._frame == frame:
                lt = getattr(meta, "linktype", None)  # pcapng: per interface
                linktype = int(lt if lt is not None else getattr(self._reader, "linktype", LINKTYPE_ETHERNET))
                out = self._frame_for_iface(linktype, data)
                if out:
                    try:
                        self.sock.send(out)
                    except OSError as exc:
                        raise CaptureError(f"--inject: cannot send frame {frame}: {exc.strerror or exc}") from None
                return

    def _frame_for_iface(self, linktype: int, data: bytes) -> bytes | None:
        ip = _ip_part(linktype, data)
        if ip is None or not ip:
            return None
        if not self.ethernet:
            return ip
        if linktype == LINKTYPE_ETHERNET:
            return data
        ethertype = _ETHERTYPE_BY_VERSION.get(ip[0] >> 4)
        return None if ethertype is None else b"\x00" * 12 + ethertype + ip

    def close(self) -> None:
        self.sock.close()
        self._reader.close()


def _ip_part(linktype: int, data: bytes) -> bytes | None:
    """The IP packet inside a frame of a known link type, else None."""
    if linktype == LINKTYPE_ETHERNET:
        off, etype = 12, data[12:14]
        while etype in (b"\x81\x00", b"\x88\xa8"):  # VLAN tags
            off += 4
            etype = data[off : off + 2]
        return data[off + 2 :] if etype in (b"\x08\x00", b"\x86\xdd") else None
    if linktype in (LINKTYPE_RAW, 228, 229, 12, 14):  # raw IP / IPv4 / IPv6
        return data
    if linktype == 0:  # BSD loopback: 4-byte family in host order
        return data[4:]
    if linktype == 113:  # Linux cooked v1
        return data[16:]
    if linktype == 276:  # Linux cooked v2
        return data[20:]
    return None

