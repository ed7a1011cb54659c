"""The lessons, each a small real server and client: what ``hsviz demo NAME`` runs.

Each scenario plays server and client over 127.0.0.1 with plain ``socket`` calls
in threads of this process, every call made through a
:class:`~handshake_viz.recorder.Recorder`, which logs it as a :class:`Call`
record, so the demo needs no strace.  A scenario binds its port first (bind and
listen send nothing), then calls ``start_capture(port)`` before anything is
sent; capturing, saving and drawing are :mod:`handshake_viz.demo`'s job.

Ports are never fixed: each lesson takes a port free at that moment, below the
kernel's ephemeral range (so no client connection elsewhere on the machine can be
given it while a lesson closes and binds it again); ``refused`` uses such a port
without listening on it.
"""

from __future__ import annotations

import errno as errno_mod
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handshake_viz.errors import CaptureError
from handshake_viz.model import Endpoint
from handshake_viz.recorder import HOST, SOCKET_TIMEOUT, Recorder

__all__ = ["BACKLOG_ACCEPT_DELAY", "BACKLOG_CLIENTS", "DEFAULT_SCENARIO", "SCENARIOS", "Scenario", "StartCapture"]

#: How late the ``backlog`` server calls accept(), in seconds.
BACKLOG_ACCEPT_DELAY = 0.3
#: Clients of the ``backlog`` lesson: listen(1) queues two, the third SYN is dropped.
BACKLOG_CLIENTS = 3
DEFAULT_SCENARIO = "echo"


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
    through the recorder, and returns notes for the reader.  ``time`` is how its
    diagram shows time ("real" where an idle gap is the lesson)."""

    name: str
    lesson: str  # one line
    run: Callable[[Recorder, StartCapture], list[str]]  # returns notes for the reader
    transport: str = "tcp"
    time: str = "ordered"


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free right now below the kernel's ephemeral range, so that no client
    connection anywhere on the machine is given it as its source port while a lesson
    closes and binds it again (the time-wait restart); never a fixed number."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        return port
    return 0  # every try taken: let the kernel choose


def _listener(rec: Recorder, backlog: int = 8) -> tuple[socket.socket, int]:
    srv = rec.socket()
    port = rec.bind(srv, _free_port())
    rec.listen(srv, backlog)
    return srv, port


def _serve(rec: Recorder, start_capture: StartCapture, serve: Callable[[socket.socket], None]
           ) -> tuple[socket.socket, _Threads]:
    """The classic opening: a listening socket on a fresh port, the capture started on
    it, ``serve(listener)`` running in a server thread; returns once that thread is
    (all but) blocked in accept(), with a client socket connected to it."""
    srv, port = _listener(rec)
    start_capture(port)
    threads = _Threads()
    threads.start(serve, srv, name="server")
    rec.wait_accepting(srv)
    cli = rec.socket()
    rec.connect(cli, port)
    return cli, threads


def _upper_echo(rec: Recorder, conn: socket.socket) -> None:
    """Reply to each read with its upper case until the peer's FIN (read -> 0), then close."""
    while True:
        data = rec.recv(conn)
        if not data:
            break
        rec.send(conn, data.upper())
    rec.close(conn)


def _scenario_handshake(rec: Recorder, start_capture: StartCapture) -> list[str]:
    def server(srv: socket.socket) -> None:
        conn = rec.accept(srv)
        rec.recv(conn)  # -> 0: the client's FIN
        # Take a moment before closing, as a server finishing its work would: the
        # kernel has already acknowledged the FIN, so the close shows all four
        # segments (FIN, ACK, FIN, ACK), where echo shows the FIN-ACK shortcut.
        time.sleep(0.01)
        rec.close(conn)
        rec.close(srv)

    cli, threads = _serve(rec, start_capture, server)
    rec.close(cli)
    threads.join()
    return []


def _scenario_echo(rec: Recorder, start_capture: StartCapture) -> list[str]:
    def server(srv: socket.socket) -> None:
        _upper_echo(rec, rec.accept(srv))
        rec.close(srv)

    cli, threads = _serve(rec, start_capture, server)
    for _ in range(3):
        rec.send(cli, b"hello\n")
        rec.recv(cli)
    rec.close(cli)
    threads.join()
    return []


def _scenario_half_close(rec: Recorder, start_capture: StartCapture) -> list[str]:
    def server(srv: socket.socket) -> None:
        conn = rec.accept(srv)
        while rec.recv(conn):  # read until the client's FIN: read() -> 0
            pass
        # The client can no longer send, but it still reads: keep sending.
        for line in (b"HELLO\n", b"still sending\n", b"bye\n"):
            rec.send(conn, line)
            time.sleep(0.005)  # separate segments, easy to see
        rec.close(conn)
        rec.close(srv)

    cli, threads = _serve(rec, start_capture, server)
    rec.send(cli, b"hello\n")
    rec.shutdown(cli, socket.SHUT_WR)
    while rec.recv(cli):  # data after our own FIN, until the server's FIN
        pass
    rec.close(cli)
    threads.join()
    return []


def _unused_port() -> int:
    """A port nobody listens on (free when probed; below the ephemeral range)."""
    return _free_port()


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
    def server(srv: socket.socket) -> None:
        conn = rec.accept(srv)
        rec.poll(conn)  # data has arrived ... and is never read
        rec.close(conn)  # unread data in the receive buffer: RST, not FIN
        rec.close(srv)

    cli, threads = _serve(rec, start_capture, server)
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
    port = rec.bind(srv, _free_port())
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

    for k in range(1, BACKLOG_CLIENTS + 1):
        threads.start(client, k, name=f"client{k}")
        time.sleep(0.01)  # one after the other: the queue fills in order
    time.sleep(BACKLOG_ACCEPT_DELAY)  # the server is busy: nobody calls accept()
    for _ in range(BACKLOG_CLIENTS):
        conn = rec.accept(srv)
        _upper_echo(rec, conn)
    rec.close(srv)
    threads.join()
    return [(f"listen(1) and accept() called {BACKLOG_ACCEPT_DELAY * 1000:.0f} ms late: the kernel "
             "completes two handshakes and queues them (Linux queues backlog + 1); the third SYN "
             "finds the queue full, is dropped without an answer and sent again a second later")]


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
    port = rec.bind(srv, _free_port(socket.SOCK_DGRAM))
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
        Scenario("backlog", "listen(1), three clients and a late accept(): the kernel completes two "
                 "handshakes before accept() is called and drops the third SYN", _scenario_backlog,
                 time="real"),
        Scenario("multi-client", "a threaded server and three concurrent clients: several "
                 "connections in one capture", _scenario_multi_client),
        Scenario("udp", "the same echo over UDP: no handshake, no ACKs, no close",
                 _scenario_udp, transport="udp"),
    )
}
