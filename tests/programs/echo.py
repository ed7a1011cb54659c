#!/usr/bin/env python3
"""Tiny TCP echo programs whose socket calls the tests trace with strace.

Every mode uses plain blocking BSD socket calls in a fixed order so the calls
and the segments they cause are predictable.  Ports are never fixed: a server
binds port 0 and prints ``port N`` on stdout (flushed) once it is listening.

Modes::

    echo.py server [--accept-delay S] [--connections N]
        listen on 127.0.0.1 (SO_REUSEADDR), print the port; for each connection:
        accept (optionally after sleeping S seconds), echo until EOF, close
    echo.py client PORT MESSAGE [--writes K] [--no-shutdown]
        connect, write MESSAGE (in K writes), shutdown(SHUT_WR), read until EOF, close
    echo.py pair MESSAGE          server thread + client thread in one process
    echo.py refused               connect to a port nobody listens on (ECONNREFUSED)
    echo.py inuse                 bind a port that is already bound (EADDRINUSE)
    echo.py unread                server closes with unread data, so it sends a RST
                                  and the client's read fails with ECONNRESET
    echo.py nonblock MESSAGE      non-blocking client: EINPROGRESS, poll, EAGAIN
    echo.py v6 MESSAGE            like pair, over ::1 (skips with status 77 without IPv6)
    echo.py interrupted           a SIGALRM interrupts a blocking accept (ERESTARTSYS,
                                  retried); then a forked child stops and continues us
                                  during a poll (restart_syscall)
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import threading
import time


def _say(text: str) -> None:
    print(text, flush=True)


def _listener(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(8)
    return srv


def _echo_one(conn: socket.socket) -> None:
    while True:
        data = conn.recv(4096)
        if not data:
            break
        conn.sendall(data)
    conn.close()


def server(accept_delay: float = 0.0, connections: int = 1) -> None:
    srv = _listener()
    _say(f"port {srv.getsockname()[1]}")
    for _ in range(connections):
        if accept_delay:
            time.sleep(accept_delay)
        conn, _addr = srv.accept()
        _echo_one(conn)
    srv.close()


def client(port: int, message: bytes, writes: int = 1, shutdown: bool = True,
           family: int = socket.AF_INET, host: str = "127.0.0.1") -> bytes:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.connect((host, port))
    step = max(1, -(-len(message) // writes))
    for i in range(0, len(message), step):
        sock.sendall(message[i : i + step])
    if shutdown:
        sock.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        data = sock.recv(4096)
        if not data:
            break
        got += data
    sock.close()
    return got


def pair(message: bytes, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
    srv = _listener(family, host)
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        _echo_one(conn)

    t = threading.Thread(target=serve)
    t.start()
    got = client(port, message, family=family, host=host)
    t.join()
    srv.close()
    _say(f"echoed {got!r}")


def refused() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # bound but never listened: nobody accepts on this port
    sock = socket.socket()
    try:
        sock.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        _say("refused")
    sock.close()


def inuse() -> None:
    first = _listener()
    port = first.getsockname()[1]
    second = socket.socket()
    try:
        second.bind(("127.0.0.1", port))
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE
        _say("in use")
    second.close()
    first.close()


def unread() -> None:
    srv = _listener()
    port = srv.getsockname()[1]
    cli = socket.socket()
    cli.connect(("127.0.0.1", port))
    conn, _ = srv.accept()
    cli.sendall(b"never read by the server")
    time.sleep(0.05)  # let the bytes land in conn's receive queue
    conn.close()  # unread data: the kernel answers with RST, not FIN
    try:
        cli.recv(100)
    except ConnectionResetError:
        _say("reset")
    cli.close()
    srv.close()


def nonblock(message: bytes) -> None:
    srv = _listener()
    port = srv.getsockname()[1]
    cli = socket.socket()
    cli.setblocking(False)
    rc = cli.connect_ex(("127.0.0.1", port))
    assert rc in (0, errno.EINPROGRESS), rc
    p = select.poll()
    p.register(cli, select.POLLOUT)
    p.poll(2000)
    conn, _ = srv.accept()
    try:
        cli.recv(10)
    except BlockingIOError:
        _say("would block")
    cli.send(message)
    got = conn.recv(4096)
    conn.send(got)
    p.modify(cli, select.POLLIN)
    p.poll(2000)
    _say(f"echoed {cli.recv(4096)!r}")
    cli.close()
    conn.close()
    srv.close()


def interrupted() -> None:
    signal.signal(signal.SIGALRM, lambda *_: None)
    srv = _listener()
    port = srv.getsockname()[1]

    def late_client() -> None:
        time.sleep(0.1)
        client(port, b"late")

    t = threading.Thread(target=late_client)
    t.start()
    signal.setitimer(signal.ITIMER_REAL, 0.03)  # fires while accept() blocks
    conn, _ = srv.accept()  # Python retries after the handler (PEP 475)
    _echo_one(conn)
    t.join()
    srv.close()
    me = os.getpid()
    child = os.fork()
    if child == 0:
        time.sleep(0.05)
        os.kill(me, signal.SIGSTOP)
        time.sleep(0.05)
        os.kill(me, signal.SIGCONT)
        os._exit(0)
    with socket.socket() as idle:
        idle.bind(("127.0.0.1", 0))
        idle.listen(1)
        p = select.poll()
        p.register(idle, select.POLLIN)
        p.poll(200)  # nobody connects: times out after the stop/continue
    os.waitpid(child, 0)
    _say("interrupted")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    mode, rest = argv[0], argv[1:]
    if mode == "server":
        delay = float(rest[rest.index("--accept-delay") + 1]) if "--accept-delay" in rest else 0.0
        n = int(rest[rest.index("--connections") + 1]) if "--connections" in rest else 1
        server(delay, n)
    elif mode == "client":
        writes = int(rest[rest.index("--writes") + 1]) if "--writes" in rest else 1
        got = client(int(rest[0]), rest[1].encode(), writes, "--no-shutdown" not in rest)
        _say(f"echoed {got!r}")
    elif mode == "pair":
        pair(rest[0].encode())
    elif mode == "refused":
        refused()
    elif mode == "inuse":
        inuse()
    elif mode == "unread":
        unread()
    elif mode == "nonblock":
        nonblock(rest[0].encode())
    elif mode == "interrupted":
        interrupted()
    elif mode == "v6":
        if not socket.has_ipv6:
            return 77
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            return 77
        pair(rest[0].encode(), socket.AF_INET6, "::1")
    else:
        print(f"echo.py: unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
