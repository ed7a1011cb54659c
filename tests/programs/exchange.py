#!/usr/bin/env python3
"""A TCP exchange on a port given on the command line, for ``hsviz capture -- CMD``.

``hsviz capture --port P`` watches one port chosen before the command starts, so
unlike echo.py (which binds port 0 and prints it) these modes take the port from
argv.  Plain blocking BSD socket calls in a fixed order, so the traced calls and
the segments they cause are predictable::

    exchange.py pair PORT [MESSAGE [LINGER]]
        a server thread listens on 127.0.0.1:PORT; a client connects, writes
        MESSAGE, shutdown(SHUT_WR), reads the echo until EOF, closes; the server
        accepts, reads until EOF (read -> 0 is the client's FIN), echoes what it
        read in one write, closes.  Prints ``echoed b'...'``, then waits LINGER
        seconds (default 0) before exiting.
    exchange.py server PORT [CONNECTIONS]
        listen on 127.0.0.1:PORT, print ``listening`` (flushed), then serve
        CONNECTIONS connections (default: until killed) as the pair's server does.

Exit status 0 on success; 3 if the echo came back wrong.
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def _listener(port: int) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)
    return srv


def _serve_one(srv: socket.socket) -> None:
    conn, _ = srv.accept()
    got = b""
    while True:
        data = conn.recv(4096)
        if not data:  # the client's FIN
            break
        got += data
    if got:
        conn.sendall(got)
    conn.close()


def _client(port: int, message: bytes) -> bytes:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", port))
    sock.sendall(message)
    sock.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        data = sock.recv(4096)
        if not data:  # the server's FIN
            break
        got += data
    sock.close()
    return got


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("pair", "server"):
        print(__doc__, file=sys.stderr)
        return 2
    port = int(argv[1])
    srv = _listener(port)
    if argv[0] == "server":
        print("listening", flush=True)
        n = int(argv[2]) if len(argv) > 2 else None
        while n is None or n > 0:
            _serve_one(srv)
            n = None if n is None else n - 1
        srv.close()
        return 0
    message = (argv[2] if len(argv) > 2 else "hello").encode()
    t = threading.Thread(target=_serve_one, args=(srv,))
    t.start()
    got = _client(port, message)
    t.join()
    srv.close()
    print(f"echoed {got!r}", flush=True)
    if len(argv) > 3:
        time.sleep(float(argv[3]))
    return 0 if got == message else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
