"""Two stalls every socket programmer meets, made on purpose on 127.0.0.1:PORT.

    python stalls.py nagle PORT        # write, write, read x5: Nagle meets the delayed ACK
    python stalls.py nodelay PORT      # the same with TCP_NODELAY on the client: no stall
    python stalls.py zerowindow PORT   # a reader that sleeps: the window goes to zero

The server runs in a thread, the client in the main thread; both use plain blocking
sockets.  Prints one line per exchange (nagle/nodelay: how long it took) and exits 0.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

EXCHANGES = 5
ZW_RCVBUF = 4096  # the reader's receive buffer (the kernel doubles it)
ZW_BYTES = 256 * 1024
ZW_SLEEP = 1.2  # seconds the reader does not read: long enough for window probes


def _listener(port: int, rcvbuf: int | None = None) -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf is not None:  # set before listen(): the accepted socket inherits it
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    return srv


def _echo_pairs(srv: socket.socket) -> None:
    """Answer each 10-byte request (sent as two 5-byte writes) once all of it is in."""
    conn, _ = srv.accept()
    with conn:
        for _ in range(EXCHANGES):
            got = b""
            while len(got) < 10:
                chunk = conn.recv(10 - len(got))
                if not chunk:
                    return
                got += chunk
            conn.sendall(got.upper())
        conn.recv(1)  # the client's FIN


def nagle(port: int, nodelay: bool) -> None:
    srv = _listener(port)
    server = threading.Thread(target=_echo_pairs, args=(srv,))
    server.start()
    with socket.create_connection(("127.0.0.1", port)) as c:
        if nodelay:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(EXCHANGES):
            t = time.monotonic()
            c.sendall(b"hello")
            c.sendall(b"world")
            reply = b""
            while len(reply) < 10:
                reply += c.recv(10 - len(reply))
            print(f"exchange {i}: {(time.monotonic() - t) * 1000:.1f} ms {reply!r}", flush=True)
    server.join()
    srv.close()


def _slow_reader(srv: socket.socket) -> None:
    conn, _ = srv.accept()
    with conn:
        time.sleep(ZW_SLEEP)
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        print(f"read {total} bytes", flush=True)


def zerowindow(port: int) -> None:
    srv = _listener(port, rcvbuf=ZW_RCVBUF)
    server = threading.Thread(target=_slow_reader, args=(srv,))
    server.start()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"x" * ZW_BYTES)
        c.shutdown(socket.SHUT_WR)
        c.recv(1)  # the server's FIN
    server.join()
    srv.close()


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "zerowindow":
        zerowindow(port)
    else:
        nagle(port, nodelay=mode == "nodelay")
