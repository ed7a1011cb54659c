"""A burst of short TCP connections on loopback, for capture-completeness checks.

    python burst.py N

A server thread and a client loop in one process.  Prints the server's port,
waits for a line on stdin (so capturers can start first), runs N connections
(each: ping, pong, close), then prints the seconds the burst took.  Used by
tests/test_capture.py and benchmarks/bench_capture_burst.py.
"""

import socket
import sys
import threading
import time

n = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(512)
print(srv.getsockname()[1], flush=True)
sys.stdin.readline()


def serve() -> None:
    for _ in range(n):
        c, _ = srv.accept()
        c.recv(100)
        c.sendall(b"pong" * 8)
        c.recv(100)
        c.close()


t = threading.Thread(target=serve)
t.start()
t0 = time.perf_counter()
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
    c.sendall(b"ping" * 8)
    c.recv(100)
    c.close()
t.join()
print(f"{time.perf_counter() - t0:.3f}", flush=True)
