"""The lessons as runnable scenarios: ``hsviz demo [NAME]``.

Each scenario is a small real server and client talking over 127.0.0.1 with
plain ``socket`` calls, in threads of this process.  Every socket call they
make goes through a :class:`~handshake_viz.recorder.Recorder`, which logs it as
a :class:`Call` record, so the demo needs no strace.

With root (or CAP_NET_RAW) :func:`run_scenario` captures live: the scenario
binds its port first (bind and listen send nothing), the capture on that port
is started and waited for until it is ready, the scenario runs, a short grace
period lets the last ACK arrive, and the capture stops.  It then writes
``NAME.pcap``, ``NAME.calls.jsonl`` and ``NAME.png``.  Without the privilege it
opens the shipped ``captures/NAME.pcap`` instead and says so.

The capture filter of :mod:`handshake_viz.capture` keeps TCP only; the ``udp``
scenario uses a small UDP port filter of its own (:class:`_UdpCapture`).  The
TCP pipeline (decode, track, layout) does not read UDP, so that scenario's
ladder lists the datagrams and calls, and its picture is drawn here
(:func:`_draw_udp`).  A TCP scenario's PNG puts each connection's diagram, as
``hsviz plot`` draws it, side by side.

Which calls a connection's ladder and diagram show is decided by
:func:`calls_by_connection` (a call's own endpoints; a listening socket's calls
go with every connection it accepted; a failed bind with the next connection).

Ports are never fixed: servers bind port 0; ``refused`` binds a socket to
port 0 and closes it without listening, so nobody listens there.
"""

from __future__ import annotations

import argparse
import errno as errno_mod
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from handshake_viz.errors import CaptureError, CaptureFileError, UsageError
from handshake_viz.model import Call, ConnectionSummary, Endpoint, Segment
from handshake_viz.recorder import HOST, SOCKET_TIMEOUT, Recorder, _preview
from handshake_viz.tracer import give_to_sudo_user

__all__ = [
    "SCENARIOS",
    "DemoResult",
    "Scenario",
    "add_demo_command",
    "analyze_capture",
    "calls_by_connection",
    "can_capture",
    "dump_expected_labels",
    "expected_labels",
    "format_result",
    "main",
    "run_scenario",
    "shipped_captures_dir",
]

#: Seconds to wait after a scenario for the last segments (the final ACK) to be captured.
GRACE = 0.1
#: How late the ``backlog`` server calls accept(), in seconds.
BACKLOG_ACCEPT_DELAY = 0.3
DEFAULT_SCENARIO = "echo"
EXPECTED_LABELS_FILE = "expected-labels.json"


class _Threads:
    """Start functions in threads; ``join`` re-raises the first exception any of them raised."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self, fn: Callable[..., None], *args: Any, name: str = "demo") -> None:
        def body() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self._errors.append(exc)

        t = threading.Thread(target=body, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def join(self) -> None:
        deadline = time.monotonic() + 4 * SOCKET_TIMEOUT
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            raise CaptureError("demo: a scenario thread did not finish in time")
        if self._errors:
            raise self._errors[0]


# ========================================================================================
# The scenarios
# ========================================================================================

#: ``start_capture(port)`` starts the capture on ``port`` and returns once it is ready.
StartCapture = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One lesson.  ``run(recorder, start_capture)`` binds its port, calls
    ``start_capture(port)`` before anything is sent, plays server and client
    through the recorder, and returns notes for the reader."""

    name: str
    lesson: str  # one line
    run: Callable[[Recorder, StartCapture], list[str]]  # returns notes for the reader
    transport: str = "tcp"


def _listener(rec: Recorder, backlog: int = 8) -> tuple[socket.socket, int]:
    srv = rec.socket()
    port = rec.bind(srv, 0)
    rec.listen(srv, backlog)
    return srv, port


def _upper_echo(rec: Recorder, conn: socket.socket) -> None:
    """Reply to each read with its upper case until the peer's FIN (read -> 0), then close."""
    while True:
        data = rec.recv(conn)
        if not data:
            break
        rec.send(conn, data.upper())
    rec.close(conn)


def _scenario_handshake(rec: Recorder, start_capture: StartCapture) -> list[str]:
    srv, port = _listener(rec)
    start_capture(port)
    threads = _Threads()

    def server() -> None:
        conn = rec.accept(srv)
        rec.recv(conn)  # -> 0: the client's FIN
        # Take a moment before closing, as a server finishing its work would: the
        # kernel has already acknowledged the FIN, so the close shows all four
        # segments (FIN, ACK, FIN, ACK), where echo shows the FIN-ACK shortcut.
        time.sleep(0.01)
        rec.close(conn)
        rec.close(srv)

    threads.start(server, name="server")
    rec.wait_accepting(srv)
    cli = rec.socket()
    rec.connect(cli, port)
    rec.close(cli)
    threads.join()
    return []


def _scenario_echo(rec: Recorder, start_capture: StartCapture) -> list[str]:
    srv, port = _listener(rec)
    start_capture(port)
    threads = _Threads()

    def server() -> None:
        conn = rec.accept(srv)
        _upper_echo(rec, conn)
        rec.close(srv)

    threads.start(server, name="server")
    rec.wait_accepting(srv)
    cli = rec.socket()
    rec.connect(cli, port)
    for _ in range(3):
        rec.send(cli, b"hello\n")
        rec.recv(cli)
    rec.close(cli)
    threads.join()
    return []


def _scenario_half_close(rec: Recorder, start_capture: StartCapture) -> list[str]:
    srv, port = _listener(rec)
    start_capture(port)
    threads = _Threads()

    def server() -> None:
        conn = rec.accept(srv)
        while rec.recv(conn):  # read until the client's FIN: read() -> 0
            pass
        # The client can no longer send, but it still reads: keep sending.
        for line in (b"HELLO\n", b"still sending\n", b"bye\n"):
            rec.send(conn, line)
            time.sleep(0.005)  # separate segments, easy to see
        rec.close(conn)
        rec.close(srv)

    threads.start(server, name="server")
    rec.wait_accepting(srv)
    cli = rec.socket()
    rec.connect(cli, port)
    rec.send(cli, b"hello\n")
    rec.shutdown(cli, socket.SHUT_WR)
    while rec.recv(cli):  # data after our own FIN, until the server's FIN
        pass
    rec.close(cli)
    threads.join()
    return []


def _unused_port() -> int:
    """A port nobody listens on: bound to a socket that is closed without listen()."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])
    finally:
        probe.close()


def _scenario_refused(rec: Recorder, start_capture: StartCapture) -> list[str]:
    port = _unused_port()
    start_capture(port)
    cli = rec.socket()
    try:
        rec.connect(cli, port)
    except ConnectionRefusedError:
        pass
    else:
        raise CaptureError(f"demo refused: port {port} unexpectedly accepted the connection")
    finally:
        rec.close(cli)
    return [f"nobody listens on port {port}: the kernel answers the SYN with a RST, connect() fails"]


def _scenario_reset(rec: Recorder, start_capture: StartCapture) -> list[str]:
    srv, port = _listener(rec)
    start_capture(port)
    threads = _Threads()

    def server() -> None:
        conn = rec.accept(srv)
        rec.poll(conn)  # data has arrived ... and is never read
        rec.close(conn)  # unread data in the receive buffer: RST, not FIN
        rec.close(srv)

    threads.start(server, name="server")
    rec.wait_accepting(srv)
    cli = rec.socket()
    rec.connect(cli, port)
    rec.send(cli, b"data the server never reads\n")
    try:
        rec.recv(cli)
    except ConnectionResetError:
        pass
    else:
        raise CaptureError("demo reset: the client's read did not fail with ECONNRESET")
    rec.close(cli)
    threads.join()
    return []


def _scenario_time_wait(rec: Recorder, start_capture: StartCapture) -> list[str]:
    # The first server sets SO_REUSEADDR too, as servers do: on Linux a TIME-WAIT
    # socket lets a new bind() through only if both sockets have it (the TIME-WAIT
    # socket inherits the listener's), so without it even the third bind would fail.
    srv = rec.socket()
    rec.setsockopt(srv, "SO_REUSEADDR", 1)
    port = rec.bind(srv, 0)
    rec.listen(srv, 8)
    start_capture(port)
    threads = _Threads()

    def server() -> None:
        conn = rec.accept(srv)
        data = rec.recv(conn)
        rec.send(conn, data.upper())
        rec.close(conn)  # the server closes first: it is the side that ends in TIME-WAIT
        rec.close(srv)

    threads.start(server, name="server")
    rec.wait_accepting(srv)
    cli = rec.socket()
    rec.connect(cli, port)
    rec.send(cli, b"hello\n")
    while rec.recv(cli):  # the reply, then 0: the server's FIN
        pass
    rec.close(cli)
    threads.join()
    time.sleep(0.02)  # the server's last ACK: it now sits in TIME-WAIT

    notes = []
    # Restart the server at once on the same port, without SO_REUSEADDR: refused.
    again = rec.socket()
    try:
        rec.bind(again, port)
    except OSError as exc:
        if exc.errno != errno_mod.EADDRINUSE:
            raise
        notes.append(f"bind({HOST}:{port}) without SO_REUSEADDR: EADDRINUSE, the old connection "
                     "is in TIME-WAIT (for 60 s on Linux)")
    else:
        raise CaptureError(f"demo time-wait: bind to port {port} succeeded without SO_REUSEADDR")
    finally:
        rec.close(again)
    # With SO_REUSEADDR the restart works, and a new client is served.
    srv2 = rec.socket()
    rec.setsockopt(srv2, "SO_REUSEADDR", 1)
    rec.bind(srv2, port)
    rec.listen(srv2, 8)
    notes.append(f"bind({HOST}:{port}) with SO_REUSEADDR: works while the old connection is in TIME-WAIT")

    def server2() -> None:
        conn = rec.accept(srv2)
        _upper_echo(rec, conn)
        rec.close(srv2)

    threads = _Threads()
    threads.start(server2, name="server2")
    rec.wait_accepting(srv2)
    cli2 = rec.socket()
    rec.connect(cli2, port)
    rec.send(cli2, b"hello again\n")
    rec.recv(cli2)
    rec.close(cli2)
    threads.join()
    return notes


def _scenario_backlog(rec: Recorder, start_capture: StartCapture) -> list[str]:
    srv, port = _listener(rec, backlog=1)
    start_capture(port)
    threads = _Threads()

    def client(k: int) -> None:
        cli = rec.socket()
        rec.connect(cli, port)  # returns once the kernel completed the handshake
        rec.send(cli, f"hello from client {k}\n".encode())
        rec.recv(cli)  # waits until the server finally accepts and replies
        rec.close(cli)

    for k in (1, 2):
        threads.start(client, k, name=f"client{k}")
    time.sleep(BACKLOG_ACCEPT_DELAY)  # the server is busy: nobody calls accept()
    for _ in range(2):
        conn = rec.accept(srv)
        _upper_echo(rec, conn)
    rec.close(srv)
    threads.join()
    return [(f"listen(1) and accept() called {BACKLOG_ACCEPT_DELAY * 1000:.0f} ms late: the kernel "
             "completes both handshakes and queues the connections; the clients' data waits too")]


def _scenario_multi_client(rec: Recorder, start_capture: StartCapture) -> list[str]:
    srv, port = _listener(rec)
    start_capture(port)
    n = 3
    handlers = _Threads()

    def server() -> None:
        for _ in range(n):
            conn = rec.accept(srv)
            handlers.start(_upper_echo, rec, conn, name="handler")
        rec.close(srv)

    go = threading.Barrier(n)

    def client(k: int) -> None:
        cli = rec.socket()
        go.wait(SOCKET_TIMEOUT)  # all three connect at the same moment
        rec.connect(cli, port)
        for i in range(2):
            rec.send(cli, f"client {k} line {i + 1}\n".encode())
            rec.recv(cli)
        rec.close(cli)

    threads = _Threads()
    threads.start(server, name="server")
    rec.wait_accepting(srv)
    for k in range(1, n + 1):
        threads.start(client, k, name=f"client{k}")
    threads.join()
    handlers.join()
    return []


def _scenario_udp(rec: Recorder, start_capture: StartCapture) -> list[str]:
    srv = rec.socket(socket.SOCK_DGRAM)
    port = rec.bind(srv, 0)
    start_capture(port)
    threads = _Threads()

    def server() -> None:
        for _ in range(3):
            data, peer = rec.recvfrom(srv)
            rec.sendto(srv, data.upper(), peer)
        rec.close(srv)

    threads.start(server, name="server")
    cli = rec.socket(socket.SOCK_DGRAM)
    for _ in range(3):
        rec.sendto(cli, b"hello\n", Endpoint(HOST, port))
        rec.recvfrom(cli)
    rec.close(cli)
    threads.join()
    return [("UDP: no handshake, no ACKs, no close; each sendto() is one datagram, "
             "and nothing tells the sender whether it arrived")]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("handshake", "connect, accept, close: the three-way handshake and the close",
                 _scenario_handshake),
        Scenario("echo", "an upper-case echo: DATA, the ACK piggybacked on the reply, and the close",
                 _scenario_echo),
        Scenario("half-close", "shutdown(SHUT_WR): the server reads 0 at the FIN, the client still "
                 "receives its data", _scenario_half_close),
        Scenario("refused", "connect to a port nobody listens on: SYN answered by RST, ECONNREFUSED",
                 _scenario_refused),
        Scenario("reset", "close() with unread data in the receive buffer: RST instead of FIN",
                 _scenario_reset),
        Scenario("time-wait", "the side that closes first sits in TIME-WAIT: a restart's bind() "
                 "fails with EADDRINUSE until SO_REUSEADDR", _scenario_time_wait),
        Scenario("backlog", "listen(1) and a late accept(): the kernel completes the handshakes "
                 "before accept() is called", _scenario_backlog),
        Scenario("multi-client", "a threaded server and three concurrent clients: several "
                 "connections in one capture", _scenario_multi_client),
        Scenario("udp", "the same echo over UDP: no handshake, no ACKs, no close",
                 _scenario_udp, transport="udp"),
    )
}


# ========================================================================================
# Capturing
# ========================================================================================


def can_capture() -> bool:
    """Whether this process may open a packet socket: CAP_NET_RAW in its effective set.

    Root normally has it; root in a container started without it does not, so the
    capability is what is checked (euid 0 decides only where /proc cannot tell).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 13))  # CAP_NET_RAW
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


class _TcpCapture:
    """A :class:`~handshake_viz.capture.LiveCapture` run in a thread."""

    def __init__(self, port: int, output: Path) -> None:
        from handshake_viz.capture import LiveCapture

        self.live = LiveCapture(port, output=output, handle_signals=False)
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def _run(self) -> None:
        try:
            self.live.run()
        except BaseException as exc:  # noqa: BLE001 - handed to start()/stop()
            self._error.append(exc)
            self.live.ready.set()  # wake start()

    def start(self) -> None:
        self._thread.start()
        if not self.live.ready.wait(SOCKET_TIMEOUT) or self._error:
            self.stop()
            if self._error:
                raise self._error[0]
            raise CaptureError("demo: the capture did not become ready")

    def stop(self) -> None:
        self.live.stop()
        self._thread.join(SOCKET_TIMEOUT)
        if self._error:
            raise self._error[0]


# Classic BPF for "udp port P" over IPv4 behind a 14-byte link header (Ethernet and
# Linux loopback), in the (code, jt, jf, k) form of linux/filter.h.
_SOCK_FILTER = struct.Struct("=HBBI")


def _bpf_udp_port(port: int, snaplen: int) -> list[tuple[int, int, int, int]]:
    ld_h_abs, ld_b_abs, ld_h_ind, ldx_b_msh, jeq, jset, ret = 0x28, 0x30, 0x48, 0xB1, 0x15, 0x45, 0x06
    return [
        (ld_h_abs, 0, 0, 12),  # 0 ethertype
        (jeq, 0, 10, 0x0800),  # 1 IPv4, else drop (12)
        (ld_b_abs, 0, 0, 23),  # 2 protocol
        (jeq, 0, 8, 17),  # 3 UDP, else drop (12)
        (ld_h_abs, 0, 0, 20),  # 4 flags + fragment offset
        (jset, 6, 0, 0x1FFF),  # 5 a later fragment: drop (12)
        (ldx_b_msh, 0, 0, 14),  # 6 X = IPv4 header length
        (ld_h_ind, 0, 0, 14),  # 7 source port
        (jeq, 2, 0, port),  # 8 -> keep (11)
        (ld_h_ind, 0, 0, 16),  # 9 destination port
        (jeq, 0, 1, port),  # 10 -> keep (11) else drop (12)
        (ret, 0, 0, snaplen),  # 11 keep
        (ret, 0, 0, 0),  # 12 drop
    ]


class _UdpCapture:
    """Loopback capture of UDP on one port, written as pcap (capture.py keeps TCP only).

    Opens the packet socket through :func:`handshake_viz.capture.open_packet_socket`
    (outgoing copies dropped, arrival timestamps on, large buffer), replaces its TCP
    filter by a UDP one, drains what the old filter let in, and records in a thread.
    """

    def __init__(self, port: int, output: Path) -> None:
        self.port = port
        self.output = output
        self.packets = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="udp-capture", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(SOCKET_TIMEOUT)
        if self._error:
            raise self._error[0]

    def _run(self) -> None:
        import ctypes

        # Names from the submodule itself: the package exports a function called capture.
        from handshake_viz.capture import (
            DEFAULT_SNAPLEN,
            PACKET_OUTGOING,
            SCM_TIMESTAMPNS,
            PcapWriter,
            open_packet_socket,
        )

        try:
            psock = open_packet_socket("lo", self.port)
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error.append(exc)
            self._ready.set()
            return
        sock = psock.sock
        try:
            prog = _bpf_udp_port(self.port, DEFAULT_SNAPLEN)
            raw = b"".join(_SOCK_FILTER.pack(*insn) for insn in prog)
            buf = ctypes.create_string_buffer(raw, len(raw))
            sock.setsockopt(socket.SOL_SOCKET, 26, struct.pack("@HP", len(prog), ctypes.addressof(buf)))
            while True:  # what the TCP filter let in before the swap
                try:
                    sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
            with PcapWriter(self.output, linktype=psock.linktype) as writer:
                self._ready.set()
                anc_size = socket.CMSG_SPACE(16)
                while True:
                    stopping = self._stop.is_set()
                    readable, _, _ = select.select([sock], [], [], 0 if stopping else 0.05)
                    if not readable:
                        if stopping:
                            break
                        continue
                    data, anc, _flags, addr = sock.recvmsg(DEFAULT_SNAPLEN, anc_size)
                    if not psock.ignore_outgoing and addr[2] == PACKET_OUTGOING:
                        continue
                    ts_ns = time.time_ns()
                    for level, kind, cdata in anc:
                        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                            sec, nsec = struct.unpack_from("@qq", cdata)
                            ts_ns = sec * 1_000_000_000 + nsec
                    writer.write(data, ts_ns=ts_ns)
                    self.packets += 1
        except BaseException as exc:  # noqa: BLE001 - handed to stop()
            self._error.append(exc)
            self._ready.set()
        finally:
            sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(SOCKET_TIMEOUT)
        if self._error:
            raise self._error[0]


# ========================================================================================
# Analysis of a capture (the same for a live run and a shipped file)
# ========================================================================================


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram of the ``udp`` scenario's capture."""

    frame: int
    ts: float
    src: Endpoint
    dst: Endpoint
    payload: bytes


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What a scenario produced: files, the tracked segments, the calls, notes."""

    scenario: str
    lesson: str
    live: bool  # captured now (True) or read from the shipped captures/ (False)
    pcap: Path
    calls_path: Path
    png: Path | None  # None when no diagram could be drawn
    segments: tuple[Segment, ...]
    summaries: tuple[ConnectionSummary, ...]
    calls: tuple[Call, ...]  # aligned to the segments when handshake_viz.align is there
    datagrams: tuple[Datagram, ...] = ()
    notes: tuple[str, ...] = ()

    def labels(self) -> dict[int, list[str]]:
        """Each connection's segment labels in capture order."""
        out: dict[int, list[str]] = {s.conn: [] for s in self.summaries}
        for seg in self.segments:
            out.setdefault(seg.conn, []).append(seg.label.value)
        return out


def analyze_capture(pcap: Path) -> tuple[list[Segment], list[ConnectionSummary]]:
    """Decode and track a capture file: exactly what ``hsviz analyze`` sees."""
    from handshake_viz.decode import open_capture
    from handshake_viz.track import Tracker

    tracker = Tracker()
    with open_capture(pcap) as reader:
        segments = [tracker.feed(p) for p in reader]
    return segments, list(tracker.summaries())


def _read_datagrams(pcap: Path) -> list[Datagram]:
    """UDP datagrams of an Ethernet-framed IPv4 pcap (the udp scenario's own capture)."""
    data = pcap.read_bytes()
    if len(data) < 24 or data[:4] != b"\xd4\xc3\xb2\xa1":
        raise CaptureFileError(f"{pcap}: not a little-endian microsecond pcap")
    out = []
    pos, frame = 24, 0
    while pos + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, pos)
        body = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        frame += 1
        if len(body) < 42 or body[12:14] != b"\x08\x00" or body[23] != 17:
            continue
        ihl = (body[14] & 0x0F) * 4
        u = 14 + ihl
        sport, dport, ulen = struct.unpack_from("!HHH", body, u)
        src = Endpoint(socket.inet_ntoa(body[26:30]), sport)
        dst = Endpoint(socket.inet_ntoa(body[30:34]), dport)
        out.append(Datagram(frame, sec + usec / 1_000_000, src, dst, body[u + 8 : u + ulen]))
    return out


def _align(segments: Sequence[Segment], summaries: Sequence[ConnectionSummary],
           calls: Sequence[Call]) -> list[Call]:
    try:
        from handshake_viz import align
    except ImportError:
        return list(calls)
    return list(align.align(list(segments), list(summaries), list(calls)))


def _write_calls(path: Path, calls: Iterable[Call]) -> None:
    from handshake_viz.trace import write_calls_jsonl

    write_calls_jsonl(list(calls), path)


def _read_calls(path: Path) -> list[Call]:
    from handshake_viz.trace import read_calls_jsonl

    return list(read_calls_jsonl(path))


def _calls_path_for(pcap: Path) -> Path:
    from handshake_viz.trace import calls_path_for

    return Path(calls_path_for(pcap))


#: How each scenario's diagram shows time: "real" where an idle gap is the lesson.
_TIME_MODE = {"backlog": "real", "time-wait": "ordered"}


def _draw(png: Path, scenario: str, segments: Sequence[Segment],
          summaries: Sequence[ConnectionSummary], calls: Sequence[Call]) -> Path | None:
    """Every connection's diagram side by side in one PNG; None when draw.py is missing.

    Each connection is rendered by :func:`handshake_viz.draw.render` exactly as
    ``hsviz plot`` draws it, and the pictures are put next to each other.
    """
    try:
        from handshake_viz import draw
    except ImportError:
        return None
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    time_mode = _TIME_MODE.get(scenario, "ordered")
    per_conn = calls_by_connection(calls, summaries)
    images = []
    for s in summaries:
        segs = [seg for seg in segments if seg.conn == s.conn]
        fig = draw.render(segs, s, per_conn[s.conn], time=time_mode, max_rows=0)  # type: ignore[arg-type]
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        images.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    if not images:
        return None
    height = max(img.shape[0] for img in images)
    padded = [np.pad(img, ((0, height - img.shape[0]), (0, 0), (0, 0)), constant_values=255)
              for img in images]
    picture = np.concatenate(padded, axis=1)
    fig = _figure_for_pixels(picture)
    return draw.save_figure(fig, png)


def _figure_for_pixels(picture: Any) -> Any:
    """A Figure that shows an RGB array at one pixel per pixel (for save_figure)."""
    from matplotlib.figure import Figure

    dpi = 100
    h, w = picture.shape[:2]
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    fig.figimage(picture, 0, 0)
    return fig


# ========================================================================================
# Running a scenario
# ========================================================================================


def shipped_captures_dir() -> Path:
    """The repository's ``captures/`` directory (next to the package)."""
    return Path(__file__).resolve().parent.parent / "captures"


def _scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UsageError(f"unknown demo scenario {name!r} (have: {', '.join(SCENARIOS)})") from None


def run_scenario(name: str, out_dir: str | os.PathLike[str] = ".", *, live: bool | None = None,
                 draw: bool = True) -> DemoResult:
    """Run scenario ``name`` live and write ``NAME.pcap``, ``.calls.jsonl``, ``.png`` to ``out_dir``.

    ``live=None`` captures when :func:`can_capture`, else reads the shipped
    ``captures/NAME.pcap`` (nothing is written then); ``live=True`` insists
    (PermissionDeniedError without the privilege), ``live=False`` never captures.
    ``draw=False`` skips the PNG (``DemoResult.png`` is None).  Raises UsageError
    for an unknown name, OutputError for an unusable ``out_dir``.
    """
    scenario = _scenario(name)
    if live is None:
        live = can_capture()
    if not live:
        return _open_shipped(scenario)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from handshake_viz.errors import OutputError

        raise OutputError(f"{out}: cannot create the output directory: {exc.strerror or exc}") from None
    pcap = out / f"{name}.pcap"
    rec = Recorder()
    captures: list[_TcpCapture | _UdpCapture] = []

    def start_capture(port: int) -> None:
        cap: _TcpCapture | _UdpCapture
        cap = _UdpCapture(port, pcap) if scenario.transport == "udp" else _TcpCapture(port, pcap)
        captures.append(cap)
        cap.start()

    try:
        notes = scenario.run(rec, start_capture)
        time.sleep(GRACE)
    finally:
        for cap in captures:
            cap.stop()
    if not captures:
        raise CaptureError(f"demo {name}: the scenario never started its capture")
    calls = rec.calls
    calls_path = _calls_path_for(pcap)
    _write_calls(calls_path, calls)
    return _result(scenario, True, pcap, calls_path, calls, notes, out / f"{name}.png" if draw else None)


def _open_shipped(scenario: Scenario) -> DemoResult:
    base = shipped_captures_dir()
    pcap = base / f"{scenario.name}.pcap"
    if not pcap.exists():
        raise CaptureFileError(f"{pcap}: no shipped capture for {scenario.name!r} (and capturing "
                               "needs root or CAP_NET_RAW: try sudo)")
    calls_path = _calls_path_for(pcap)
    calls = _read_calls(calls_path) if calls_path.exists() else []
    png = base / f"{scenario.name}.png"
    result = _result(scenario, False, pcap, calls_path, calls, [], None)
    notes = _lesson_notes(scenario, result)
    return DemoResult(**{**_fields(result), "png": png if png.exists() else None, "notes": tuple(notes)})


def _fields(result: DemoResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in DemoResult.__dataclass_fields__}


def _result(scenario: Scenario, live: bool, pcap: Path, calls_path: Path, calls: Sequence[Call],
            notes: Sequence[str], png: Path | None) -> DemoResult:
    if scenario.transport == "udp":
        datagrams = _read_datagrams(pcap)
        result = DemoResult(scenario.name, scenario.lesson, live, pcap, calls_path, None, (), (),
                            tuple(calls), tuple(datagrams), tuple(notes))
        if png is not None:
            png = _draw_udp(png, result)
        return DemoResult(**{**_fields(result), "png": png})
    segments, summaries = analyze_capture(pcap)
    aligned = _align(segments, summaries, calls)
    result = DemoResult(scenario.name, scenario.lesson, live, pcap, calls_path, None, tuple(segments),
                        tuple(summaries), tuple(aligned), (), tuple(notes))
    if live:
        result = DemoResult(**{**_fields(result), "notes": tuple(list(notes) + _lesson_notes(scenario, result))})
    if png is not None:
        png = _draw(png, scenario.name, segments, summaries, aligned)
    return DemoResult(**{**_fields(result), "png": png})


def _lesson_notes(scenario: Scenario, result: DemoResult) -> list[str]:
    """Numbers measured from the result that make the lesson (e.g. how late accept() came)."""
    notes: list[str] = []
    if scenario.name == "backlog":
        for s in result.summaries:
            acks = [seg for seg in result.segments if seg.conn == s.conn and seg.label.value == "ACK"]
            accept = _accept_of(result.calls, s)
            if acks and accept is not None:
                notes.append(f"conn {s.conn}: accept() returned {(accept.end - acks[0].ts) * 1000:.1f} ms "
                             "after the handshake's final ACK")
    if scenario.name == "time-wait" and result.summaries:
        first = result.summaries[0]
        notes.append(f"conn {first.conn}: server ends in {first.server_state.value}, "
                     f"client in {first.client_state.value}")
    return notes


def _accept_of(calls: Iterable[Call], summary: ConnectionSummary) -> Call | None:
    for c in calls:
        if c.call.startswith("accept") and c.ret is not None and c.ret >= 0 and c.remote == summary.client:
            return c
    return None


# ========================================================================================
# The UDP picture (the TCP diagram does not apply)
# ========================================================================================


def _draw_udp(png: Path, result: DemoResult) -> Path | None:
    """The UDP exchange drawn like the TCP diagrams: two lifelines, one arrow per
    datagram, and each process's socket calls in its lane, all in time order."""
    if not result.datagrams:
        return None
    from matplotlib.figure import Figure

    from handshake_viz import draw

    client, server = result.datagrams[0].src, result.datagrams[0].dst
    # One row per event in time order: a datagram takes a full row, a call half of one.
    events: list[tuple[float, int, Any]] = [(d.ts, 1, d) for d in result.datagrams]
    events += [(c.start, 0, c) for c in result.calls]
    events.sort(key=lambda e: (e[0], e[1]))
    t0 = result.datagrams[0].ts
    y = 0.0
    placed: list[tuple[float, Any]] = []
    for _ts, _k, ev in events:
        step = 1.0 if isinstance(ev, Datagram) else 0.5
        placed.append((y + step / 2, ev))
        y += step
    fig = Figure(figsize=(9.5, 1.9 + 0.42 * y), dpi=120)
    ax = fig.add_axes((0.02, 0.03, 0.96, 0.86))
    ax.set_xlim(-1.25, 2.25)
    ax.set_ylim(y + 0.2, -0.4)
    ax.axis("off")
    fig.suptitle("udp: no handshake, no ACKs, no close; nothing tells the sender a datagram arrived",
                 fontsize=11, y=0.985)
    for x, ep, who in ((0, client, "client"), (1, server, "server")):
        ax.plot([x, x], [-0.3, y + 0.1], color="0.15", lw=1.6)
        ax.text(x, -0.45, f"{who} {ep}", ha="center", va="bottom", fontsize=10, weight="bold",
                bbox={"boxstyle": "round,pad=0.3", "fc": "0.97", "ec": "0.2"})
        lane = -0.6 if x == 0 else 1.6
        ax.plot([lane, lane], [-0.3, y + 0.1], color="0.75", lw=0.8, ls=":")
        ax.text(lane, -0.45, f"{who} process\n(pid {result.calls[0].pid if result.calls else '?'})",
                ha="center", va="bottom", fontsize=9)
    color = draw.PHASE_COLORS.get("data", "tab:green")
    for yy, ev in placed:
        if isinstance(ev, Datagram):
            x0, x1 = (0, 1) if ev.src == client else (1, 0)
            ax.annotate("", xy=(x1, yy + 0.2), xytext=(x0, yy - 0.2),
                        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.5})
            ax.text(0.5, yy - 0.12, f"UDP  len={len(ev.payload)}  {_preview(ev.payload)}", ha="center",
                    va="bottom", fontsize=8.5, family="monospace")
            ax.text(-1.23, yy, f"{(ev.ts - t0) * 1000:.3f} ms", ha="left", va="center", fontsize=7.5,
                    color="0.4", family="monospace")
        else:
            # By port: an unbound UDP socket's own address is 0.0.0.0:port
            on_client = ev.local.port != server.port if ev.local is not None else ev.remote == server
            lane = -0.6 if on_client else 1.6
            err = ev.errno is not None
            text = f"{ev.call}({'' if ev.fd is None else ev.fd})"
            if ev.ret is not None and ev.call in ("sendto", "recvfrom"):
                text += f" → {ev.ret}"
            ax.text(lane + (-0.04 if on_client else 0.04), yy, text, ha="right" if on_client else "left",
                    va="center", fontsize=8, family="monospace", color="firebrick" if err else "0.1")
            ax.plot([lane], [yy], marker="s", ms=5, color="#f5d78e", mec="#c89b2a")
    return draw.save_figure(fig, png)


# ========================================================================================
# Text output and the command line
# ========================================================================================


def format_result(result: DemoResult) -> list[str]:
    """The text ladder of a result: per connection its segments and calls in time order."""
    from handshake_viz import report

    lines = [f"demo {result.scenario}: {result.lesson}"]
    items: list[tuple[float, int, str]]
    if result.datagrams:
        t0 = result.datagrams[0].ts
        client = result.datagrams[0].src
        items = []
        for d in result.datagrams:
            arrow = "→" if d.src == client else "←"
            text = (f"{d.frame:>7} {(d.ts - t0) * 1000:>10.3f} ms  {arrow} UDP       "
                    f"{d.src} > {d.dst} len={len(d.payload)} {_preview(d.payload)}")
            items.append((d.ts, 1, text))
        items += [(c.start, 0, _call_line(c, t0)) for c in result.calls]
        lines += [text for _ts, _k, text in sorted(items, key=lambda i: (i[0], i[1]))]
    else:
        by_conn: dict[int, list[Segment]] = {}
        for seg in result.segments:
            by_conn.setdefault(seg.conn, []).append(seg)
        used: set[int] = set()
        per_conn = calls_by_connection(result.calls, result.summaries)
        for s in result.summaries:
            segs = by_conn.get(s.conn, [])
            t0 = segs[0].ts if segs else s.first_ts
            own = per_conn.get(s.conn, [])
            used.update(id(c) for c in own)
            items = [(seg.ts, 1, report.format_segment(seg, t0)) for seg in segs]
            items += [(c.start, 0, _call_line(c, t0)) for c in own]
            lines.append("")
            lines.append(report.connection_header(s))
            lines.append(report.ladder_columns())
            lines += [text for _ts, _k, text in sorted(items, key=lambda i: (i[0], i[1]))]
            lines.append(report.format_summary(s))
        rest = [c for c in result.calls if id(c) not in used]
        if rest:
            t0 = result.segments[0].ts if result.segments else rest[0].start
            lines.append("")
            lines.append("calls on no connection (setup, failed binds, listeners):")
            lines += [_call_line(c, t0) for c in rest]
    for note in result.notes:
        lines.append(f"note: {note}")
    return lines


def _call_line(call: Call, t0: float) -> str:
    """report.format_call, plus the arguments of calls that move no data (bind's address …)."""
    from handshake_viz import report

    line = report.format_call(call, t0)
    if call.args and call.call not in ("sendto", "recvfrom", "close"):
        line += f"  {call.args}"
    return line


def _on_conn(call: Call, s: ConnectionSummary) -> bool:
    return call.conn == s.conn or (call.conn is None and {call.local, call.remote} == {s.client, s.server})


def calls_by_connection(calls: Sequence[Call], summaries: Sequence[ConnectionSummary]
                        ) -> dict[int, list[Call]]:
    """Which calls each connection's ladder and diagram show.

    A call on the connection (``Call.conn``, else its socket's two endpoints)
    belongs to it.  The other calls are grouped by socket (from ``socket()``
    to ``close()`` of one descriptor): a listening socket's calls are shown with
    every connection it accepted; a socket that never touched a connection
    (a bind that failed) is shown with the next connection to start, else the
    last one.
    """
    out: dict[int, list[Call]] = {s.conn: [] for s in summaries}
    if not summaries:
        return out
    ordered = sorted(calls, key=lambda c: (c.start, c.end))
    sessions: list[list[Call]] = []
    open_by_fd: dict[int, list[Call]] = {}
    for c in ordered:
        fd = c.ret if c.call == "socket" else c.fd
        if fd is None:
            sessions.append([c])
            continue
        if c.call == "socket" or fd not in open_by_fd:
            open_by_fd[fd] = []
            sessions.append(open_by_fd[fd])
        open_by_fd[fd].append(c)
        if c.call == "close":
            del open_by_fd[fd]
    for session in sessions:
        touched = [s for s in summaries if any(_on_conn(c, s) for c in session)]
        for c in session:
            mine = [s for s in touched if _on_conn(c, s)]
            if mine:
                targets = mine
            elif touched:
                targets = touched
            else:
                end = session[-1].end
                later = [s for s in summaries if s.first_ts >= end]
                targets = [min(later, key=lambda s: s.first_ts)] if later else [summaries[-1]]
            for s in targets:
                out[s.conn].append(c)
    return out


def expected_labels(results: Iterable[DemoResult]) -> dict[str, Any]:
    """The ``captures/expected-labels.json`` content: per scenario and connection, the
    segment labels in order, Zeek's conn_state and both sides' final states."""
    out: dict[str, Any] = {}
    for r in results:
        labels = r.labels()
        out[r.scenario] = {
            "connections": len(r.summaries),
            "datagrams": len(r.datagrams),
            "labels": [labels[s.conn] for s in r.summaries],
            "conn_state": [s.conn_state for s in r.summaries],
            "final_states": [[s.client_state.value, s.server_state.value] for s in r.summaries],
        }
    return out


def dump_expected_labels(expected: dict[str, Any]) -> str:
    """JSON text with one scenario per line (diffs stay readable)."""
    body = ",\n".join(f" {json.dumps(name)}: {json.dumps(value)}" for name, value in expected.items())
    return "{\n" + body + "\n}\n"


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    """Register ``hsviz demo [NAME] [--list] [--all] [-o OUT_DIR] [--shipped]``."""
    p = sub.add_parser(
        "demo",
        help="run a TCP lesson on loopback (server + client), capture it and draw it",
        description="Run a small real server and client on 127.0.0.1 that show one TCP lesson, "
        "capture their segments live (root or CAP_NET_RAW), record their socket calls, and write "
        "NAME.pcap, NAME.calls.jsonl and NAME.png. Without the privilege, open the shipped "
        "captures/NAME.pcap instead.",
    )
    p.add_argument("name", nargs="?", default=DEFAULT_SCENARIO, metavar="NAME",
                   help=f"scenario (default: {DEFAULT_SCENARIO}; see --list)")
    p.add_argument("--list", action="store_true", help="list the scenarios and their lessons")
    p.add_argument("--all", action="store_true",
                   help=f"run every scenario (and write {EXPECTED_LABELS_FILE} beside them)")
    p.add_argument("-o", "--output-dir", default=".", metavar="OUT_DIR",
                   help="where to write the files (default: the current directory)")
    p.add_argument("--shipped", action="store_true",
                   help="do not capture: open the shipped captures/NAME.pcap")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.list:
        width = max(map(len, SCENARIOS))
        out.writelines(f"{s.name:<{width}}  {s.lesson}\n" for s in SCENARIOS.values())
        return 0
    names = list(SCENARIOS) if args.all else [args.name]
    for n in names:
        _scenario(n)  # unknown names fail before anything runs
    live: bool | None = False if args.shipped else None
    if live is None and not can_capture():
        err.write(f"hsviz: capturing needs root or CAP_NET_RAW: showing the shipped captures in "
                  f"{shipped_captures_dir()} instead\n")
        live = False
    results = []
    for n in names:
        result = run_scenario(n, args.output_dir, live=live)
        results.append(result)
        out.writelines(line + "\n" for line in format_result(result))
        written = [result.pcap, result.calls_path] + ([result.png] if result.png else [])
        if result.live:
            give_to_sudo_user(written)  # `sudo hsviz demo` leaves files the user owns
        verb = "wrote" if result.live else "shipped"
        out.write(f"{verb}: {', '.join(map(str, written))}\n")
        if result.live and result.png is None:
            err.write(f"hsviz: warning: no diagram drawn for {n}\n")
        out.write("\n")
        out.flush()
    if args.all and live is not False:
        path = Path(args.output_dir) / EXPECTED_LABELS_FILE
        path.write_text(dump_expected_labels(expected_labels(results)))
        give_to_sudo_user([path])
        out.write(f"wrote: {path}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m handshake_viz.demo``: the ``hsviz demo`` command on its own."""
    from handshake_viz.errors import HsvizError

    parser = argparse.ArgumentParser(prog="python -m handshake_viz.demo")
    sub = parser.add_subparsers(dest="command")
    add_demo_command(sub)
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return _cmd_demo(args, sys.stdout, sys.stderr)
    except HsvizError as exc:
        sys.stderr.write(f"hsviz: {exc}\n")
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
