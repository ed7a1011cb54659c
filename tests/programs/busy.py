#!/usr/bin/env python3
"""Programs whose socket lanes are busy, for ``hsviz capture --port PORT -- busy.py MODE PORT``.

Each mode is a server and its clients in one process (threads), on 127.0.0.1:PORT,
shaped like the real programs that made the diagram hard to read::

    busy.py http PORT      a threaded HTTP/1.1 server (http.server) and three keep-alive
                           clients (http.client) at once, three requests each
    busy.py resp PORT      a RESP exchange (Redis's protocol: "$4\\r\\nname\\r\\n"), a
                           SET, a GET and an INCR, each answered by the server
    busy.py options PORT   a client that sets five socket options before it connects
                           and sends; the server sets two on the accepted socket
    busy.py bulk PORT [MB] the server sends MB megabytes (default 20) in 64 KiB writes;
                           the client reads until EOF

Prints one line saying what was done; exit status 0 on success, 3 if an answer was wrong.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import sys
import threading


def _listener(port: int) -> socket.socket:
    return socket.create_server(("127.0.0.1", port), backlog=8)  # SO_REUSEADDR, bind, listen


def http_mode(port: int) -> int:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = f"you asked for {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    bad: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for i in range(3):
            conn.request("GET", f"/{n}/{i}")
            body = conn.getresponse().read()
            if body != f"you asked for /{n}/{i}\n".encode():
                bad.append(body.decode(errors="replace"))
        conn.close()

    clients = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    server.shutdown()
    server.server_close()
    serving.join()
    print(f"http: 3 clients, 3 requests each, {len(bad)} wrong")
    return 3 if bad else 0


def _resp(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def resp_mode(port: int) -> int:
    srv = _listener(port)
    answers = {b"SET": b"+OK\r\n", b"GET": b"$15\r\nprice $5 and $6\r\n", b"INCR": b":1\r\n"}

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                command = data.split(b"\r\n")[2]
                conn.sendall(answers[command])

    t = threading.Thread(target=serve)
    t.start()
    got = []
    with socket.create_connection(("127.0.0.1", port)) as c:
        for words in ((b"SET", b"name", b"price $5 and $6"), (b"GET", b"name"), (b"INCR", b"n")):
            c.sendall(_resp(*words))
            got.append(c.recv(4096))
    t.join()
    srv.close()
    print(f"resp: {got!r}")
    return 0 if got == list(answers.values()) else 3


def options_mode(port: int) -> int:
    srv = _listener(port)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            conn.sendall(conn.recv(4096).upper())

    t = threading.Thread(target=serve)
    t.start()
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for level, name, value in ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
                               (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                               (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
                               (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
                               (socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)):
        c.setsockopt(level, name, value)
    c.connect(("127.0.0.1", port))
    c.sendall(b"five options\n")
    got = c.recv(4096)
    c.close()
    t.join()
    srv.close()
    print(f"options: {got!r}")
    return 0 if got == b"FIVE OPTIONS\n" else 3


def bulk_mode(port: int, megabytes: int) -> int:
    srv = _listener(port)
    chunk = bytes(range(256)) * 256  # 64 KiB
    total = megabytes << 20

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            sent = 0
            while sent < total:
                sent += conn.send(chunk[: min(len(chunk), total - sent)])

    t = threading.Thread(target=serve)
    t.start()
    got = 0
    with socket.create_connection(("127.0.0.1", port)) as c:
        while data := c.recv(1 << 17):
            got += len(data)
    t.join()
    srv.close()
    print(f"bulk: {got} bytes")
    return 0 if got == total else 3


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    mode, port = argv[1], int(argv[2])
    if mode == "http":
        return http_mode(port)
    if mode == "resp":
        return resp_mode(port)
    if mode == "options":
        return options_mode(port)
    if mode == "bulk":
        return bulk_mode(port, int(argv[3]) if len(argv) > 3 else 20)
    print(f"busy.py: unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
