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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from handshake_viz.errors import (
    CaptureError,
    PermissionDeniedError,
    UsageError,
    os_error,
)
from handshake_viz.model import Packet, UdpPacket
from handshake_viz.outfile import DEFAULT_MODE
from handshake_viz.pcapio import DEFAULT_SNAPLEN, PcapWriter
from handshake_viz.privilege import PrivilegedSetup

__all__ = [
    "DEFAULT_SNAPLEN",
    "STAMP_WAIT",
    "CaptureResult",
    "CaptureStats",
    "LiveCapture",
    "PacketSocket",
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
SO_LOCK_FILTER = 44
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_RAWIP = 519
ARPHRD_NONE = 0xFFFE

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
DEFAULT_RCVBUF = 64 * 1024 * 1024
#: Longest time, in seconds, :func:`open_packet_socket` waits for the kernel to
#: stamp packets on arrival.  The switch takes 0.2-5 ms to flip on this machine when
#: it is idle; with both cores kept busy the kernel's work item that flips it was
#: seen to wait over 50 ms, and packets read before then carried the time they were
#: *read*, late by the scheduling delay (12 ms seen).  Ready means stamped on arrival.
STAMP_WAIT = 2.0

_TIMESPEC = struct.Struct("@qq")
_TPACKET_STATS = struct.Struct("@II")
_ANCBUF = socket.CMSG_SPACE(_TIMESPEC.size)


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
_IPPROTO_UDP = 17
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


def bpf_port_filter(port: int, *, link_offset: int = 14, snaplen: int = DEFAULT_SNAPLEN,
                    protocols: tuple[int, ...] = (_IPPROTO_TCP,)) -> list[BpfInsn]:
    """A classic BPF program keeping TCP segments (``protocols``: IP protocol numbers,
    6 TCP and 17 UDP, whose ports sit at the same offsets) to or from ``port``.

    ``link_offset`` 14 reads the Ethernet type (Ethernet and Linux loopback);
    0 means frames start at the IP header and the version nibble decides.
    Like ``tcpdump tcp port P`` (``tcp or udp port P``): IPv6 only when the protocol
    is the first next header, IPv4 fragments other than the first are not matched
    (they carry no ports).  Accepted frames are cut to ``snaplen``.
    """
    if not protocols or any(p not in (_IPPROTO_TCP, _IPPROTO_UDP) for p in protocols):
        raise UsageError(f"protocols {protocols}: TCP (6) and UDP (17) only")
    o = link_offset

    def proto_test(ok: str) -> list[tuple[Any, ...]]:
        *first, last = protocols
        return [(_JEQ_K, p, ok, None) for p in first] + [(_JEQ_K, last, ok, "drop")]

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
        *proto_test("v6ports"),
        ("label", "v6ports"),
        (_LD_H_ABS, o + 40),  # source port
        (_JEQ_K, port, "keep", None),
        (_LD_H_ABS, o + 42),  # destination port
        (_JEQ_K, port, "keep", "drop"),
        ("label", "v4"),
        (_LD_B_ABS, o + 9),  # protocol
        *proto_test("v4ports"),
        ("label", "v4ports"),
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
    udp: bool = False,
) -> PacketSocket:
    """Open a packet socket on ``iface`` that receives only TCP (and with ``udp``, UDP)
    on ``port``.

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
            raise os_error(exc, f"interface {iface!r}", "bind", CaptureError) from None
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
        protocols = (_IPPROTO_TCP, _IPPROTO_UDP) if udp else (_IPPROTO_TCP,)
        _attach_filter(sock, bpf_port_filter(port, link_offset=offset, snaplen=snaplen, protocols=protocols))
        # The filter cannot be changed from now on, not even by this process: after the
        # privilege drop the socket stays a view of this port and nothing else.
        sock.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)
        sock.setblocking(False)
        _drain(sock)
        # Before the bind, so that no packet is ever queued with the time it was read.
        arrival_stamps = _wait_for_arrival_stamps(STAMP_WAIT)
        # Zero the kernel's counters: LiveCapture's accounting starts here.
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        try:
            sock.bind((iface, ETH_P_ALL))
        except OSError as exc:
            raise os_error(exc, f"interface {iface!r}", "bind", CaptureError) from None
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
    decoded: int  # TCP segments (and UDP datagrams, when asked for) decoded and handed on
    dropped: int  # frames the kernel dropped (receive buffer full)
    elapsed: float  # seconds since ready


@dataclass(frozen=True, slots=True)
class CaptureResult:
    output: Path
    reason: str  # count | timeout | stopped | interrupted | terminated, or the reason given to stop()
    stats: CaptureStats


class LiveCapture:
    """Capture TCP (and with ``udp``, UDP) on one port, write a pcap, hand on every packet.

    ``run()`` blocks until a stop condition: ``count`` frames written,
    ``timeout`` seconds after ready, :meth:`stop` (any thread, or a callback), or
    SIGINT/SIGTERM when ``handle_signals`` and running in the main thread (a
    second signal raises KeyboardInterrupt at once).  On a stop from outside,
    frames already queued in the kernel are still written, so the pcap holds
    everything sent before the stop; a stop asked for by ``on_packet`` (the
    pipeline's "after N connections") takes effect at once.  Whatever happens, the
    pcap is closed with every frame received.

    This is a source of packets only: it decodes each frame (:class:`Packet`,
    :class:`UdpPacket`) and calls ``on_packet``; tracking them is the pipeline's
    job (:class:`handshake_viz.pipeline.LiveTracking`).  The library prints
    nothing; the CLI passes callbacks: ``on_ready()`` once listening,
    ``on_packet(packet)`` per decoded packet, ``on_status(stats)`` about every
    ``status_interval`` seconds.

    ``privileges``: run as root, :meth:`run` hands the open socket's process over
    to :meth:`PrivilegedSetup.open_and_drop` (its openers, then the drop to the
    user, see :mod:`handshake_viz.privilege`) before it opens the pcap or reads a
    packet.  ``mode`` is the pcap's file mode (0600); ``snaplen`` cuts every frame
    in the kernel and ``headers_only`` keeps each frame's headers only
    (:func:`~handshake_viz.decode.header_length`): both keep its length on the wire.
    """

    def __init__(
        self,
        port: int,
        *,
        iface: str = "lo",
        output: str | os.PathLike[str] | None = None,
        count: int | None = None,
        timeout: float | None = None,
        udp: bool = False,
        on_ready: Callable[[], None] | None = None,
        on_packet: Callable[[Packet | UdpPacket], None] | None = None,
        on_status: Callable[[CaptureStats], None] | None = None,
        status_interval: float = 0.25,
        snaplen: int = DEFAULT_SNAPLEN,
        rcvbuf: int = DEFAULT_RCVBUF,
        handle_signals: bool = True,
        headers_only: bool = False,
        mode: int = DEFAULT_MODE,
        privileges: PrivilegedSetup | None = None,
    ) -> None:
        _check_port(port)
        if not 1 <= snaplen <= DEFAULT_SNAPLEN:
            raise UsageError(f"--snaplen {snaplen}: must be between 1 and {DEFAULT_SNAPLEN}")
        if count is not None and count < 1:
            raise UsageError(f"--count {count}: must be at least 1")
        if timeout is not None and not timeout > 0:
            raise UsageError(f"--timeout {timeout}: must be more than 0 seconds")
        self.port = port
        self.iface = iface
        self.output = Path(output if output is not None else default_output_name())
        self.count = count
        self.timeout = timeout
        self.udp = udp
        self.on_ready = on_ready
        self.on_packet = on_packet
        self.on_status = on_status
        self.status_interval = status_interval
        self.snaplen = snaplen
        self.rcvbuf = rcvbuf
        self.handle_signals = handle_signals
        self.headers_only = headers_only
        self.mode = mode
        self.privileges = privileges
        self.ready = threading.Event()
        self._stop_reason: str | None = None
        self._stop_now = False  # stop() from inside on_packet: no more frames at all
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._packets = 0
        self._decoded = 0
        self._dropped = 0
        self._queued_total = 0  # frames the kernel queued for us (from PACKET_STATISTICS)
        self._frames_read = 0
        self._t_ready = 0.0
        self._psock: PacketSocket | None = None
        self._signals_seen = 0
        self._in_callback = False
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask ``run()`` to finish.  Thread-safe.  From outside, frames already queued
        are still written; from ``on_packet`` the capture ends with that packet."""
        self._stop(reason, now=self._in_callback and threading.current_thread() is self._thread)

    def _stop(self, reason: str, *, now: bool) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_now = now
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals_seen += 1
        if self._signals_seen > 1:
            raise KeyboardInterrupt
        # A stop from outside, even when the handler runs inside on_packet (the main
        # thread's): what the kernel queued is still written.
        self._stop("interrupted" if signum == signal.SIGINT else "terminated", now=False)

    @property
    def stats(self) -> CaptureStats:
        return CaptureStats(
            packets=self._packets,
            decoded=self._decoded,
            dropped=self._dropped,
            elapsed=(time.monotonic() - self._t_ready) if self._t_ready else 0.0,
        )

    @property
    def linktype(self) -> int | None:
        return self._psock.linktype if self._psock else None

    @property
    def arrival_stamps(self) -> bool:
        """Whether packets are stamped when they arrive (False: when they are read,
        late by however long the reader waited; see ``STAMP_WAIT``)."""
        return self._psock.arrival_stamps if self._psock else True

    # -- the loop -----------------------------------------------------------

    def run(self) -> CaptureResult:
        """Capture until a stop condition; call once.  Raises UsageError (interface),
        PermissionDeniedError, CaptureError or OutputError before ready; after ready,
        any exception from a callback propagates once the pcap is closed."""
        from handshake_viz.decode import decode_frame, header_length

        self._thread = threading.current_thread()
        self._decode = decode_frame
        self._header_length = header_length
        self._view = memoryview(bytearray(self.snaplen))  # one receive buffer, reused
        restore: dict[signal.Signals, Any] = {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                restore[signum] = signal.signal(signum, self._on_signal)
        writer: PcapWriter | None = None
        try:
            # The kernel keeps whole frames: a frame its filter cut would lose its length on
            # the wire; the receive buffer (self._view) holds the first `snaplen` bytes and
            # recvmsg still says how long the frame was.
            self._psock = open_packet_socket(self.iface, self.port, rcvbuf=self.rcvbuf, udp=self.udp)
            if self.privileges is not None:  # root's work is done: the rest runs as the user
                self.privileges.open_and_drop()
            writer = PcapWriter(self.output, linktype=self._psock.linktype, snaplen=self.snaplen,
                                mode=self.mode)
            self._t_ready = time.monotonic()
            self.ready.set()
            if self.on_ready is not None:
                self.on_ready()
            self._loop(writer)
            reason = self._stop_reason or "stopped"
            if reason != "count" and not self._stop_now:
                # Write what the kernel had queued when asked to stop, and no more
                # (traffic that keeps coming must not keep us from stopping).
                self._read_drops()
                self._pump(writer, limit=max(0, self._queued_total - self._frames_read))
            writer.close()
            self._read_drops()
            return CaptureResult(self.output, reason, self.stats)
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
        header_length = self._header_length
        on_packet = self.on_packet
        udp = self.udp
        headers_only = self.headers_only
        while limit > 0 and not self._stop_now:
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
            if headers_only:
                data = data[: header_length(linktype, data)]
            writer.write(data, ts_ns=ts_ns, wirelen=n)
            self._packets += 1
            usec = ts_ns // 1000
            # The same float the decoder computes from the microsecond pcap record,
            # so the live ladder equals `hsviz analyze` of the written file.
            ts = usec // 1_000_000 + (usec % 1_000_000) / 1_000_000
            pkt = decode(linktype, data, frame=self._packets, ts=ts, wirelen=n, udp=udp)
            if pkt is not None:
                self._decoded += 1
                if on_packet is not None:
                    self._in_callback = True
                    try:
                        on_packet(pkt)
                    finally:
                        self._in_callback = False
            if self.count is not None and self._packets >= self.count:
                self._stop_reason = "count"
                return


# --------------------------------------------------------------------------- replay


class Replay:
    """An iterator over the packets of a saved capture, paced like the original.

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
        udp: bool = False,
    ) -> None:
        if not speed >= 0:
            raise UsageError(f"--speed {speed}: must be 0 (no waiting) or more")
        from handshake_viz.decode import open_capture

        self.path = path
        self.speed = speed
        self.udp = udp
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

    def __next__(self) -> Packet | UdpPacket:
        return next(self._it)

    def _run(self) -> Iterator[Packet | UdpPacket]:
        from handshake_viz.model import make_packet

        speed, sleep, injector = self.speed, self._sleep, self._injector
        try:
            t0_wall: float | None = None
            t0_pkt = 0.0
            for pkt in self._reader.records(make_packet, UdpPacket if self.udp else None):
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
    udp: bool = False,
) -> Replay:
    """Iterate the TCP packets (with ``udp``, UDP datagrams too) of a saved capture with
    their original timing.

    The gap between two packets is slept scaled by ``1/speed``; ``speed=0``
    never sleeps.  The caller feeds a Tracker and prints, exactly as for a live
    capture.  With ``inject`` (root only) each TCP frame is also re-sent on
    ``iface`` as it is yielded, for other tools watching the interface; the
    kernel receives injected frames too and may answer them.
    """
    return Replay(path, speed=speed, inject=inject, iface=iface, sleep=sleep, udp=udp)


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
        from handshake_viz.decode import open_capture

        try:
            self._reader = open_capture(path)
        except BaseException:
            self.sock.close()
            raise
        self._frames = self._reader.frames()

    def send(self, frame: int) -> None:
        for rec in self._frames:
            if rec.frame == frame:
                out = self._frame_for_iface(rec.linktype, rec.data)
                if out:
                    try:
                        self.sock.send(out)
                    except OSError as exc:
                        raise CaptureError(f"--inject: cannot send frame {frame}: {exc.strerror or exc}") from None
                return

    def _frame_for_iface(self, linktype: int, data: bytes) -> bytes | None:
        from handshake_viz.decode import ip_packet

        if linktype == LINKTYPE_ETHERNET and self.ethernet:
            return data
        ip = ip_packet(linktype, data)
        if not ip:
            return None
        if not self.ethernet:
            return ip
        ethertype = _ETHERTYPE_BY_VERSION.get(ip[0] >> 4)
        return None if ethertype is None else b"\x00" * 12 + ethertype + ip

    def close(self) -> None:
        self.sock.close()
        self._reader.close()
