#!/usr/bin/env python3
"""Record the capture + strace pairs the alignment tests read, from real programs.

Run as root from the repository root:  python tests/data/align/record.py [NAME ...]
Needs strace and cc.  Each scenario runs a server and a client, each under its own
``strace -f -ttt -T -yy`` (handshake_viz.tracer.start_traced), while
handshake_viz.capture.LiveCapture records the server's port on loopback; the two
strace logs are concatenated into ``NAME.strace`` beside ``NAME.pcap``.  The tests
check relations (which call owns which segment, by label and sequence number), not
ports, times or frame numbers, so re-recorded files keep them passing.

The servers print ``port N`` once listening; that port is what the capture watches
(for a refused connect: a port that was free a moment before).  Programs:
tests/programs/echo.py and echo.c (the textbook echo pair), plus three small
children defined here (``python record.py child MODE ...``) for what echo does not
do: several round trips (piggybacked ACKs) and a server that closes with unread data.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ECHO_PY = REPO / "tests" / "programs" / "echo.py"
ECHO_C = REPO / "tests" / "programs" / "echo.c"
PY = sys.executable
ME = str(Path(__file__).resolve())
FILE_FD = re.compile(r"\(\d+<(?!TCP)")  # a call on a file, pipe, epoll...: start-up noise

#: name -> (server argv or None, client argv); "{port}" and "{echo_c}" are filled in.
SCENARIOS: dict[str, tuple[list[str] | None, list[str]]] = {
    # handshake, exchange, the client's shutdown(SHUT_WR) (half-close), read -> 0, close
    "py-echo": ([PY, str(ECHO_PY), "server"],
                [PY, str(ECHO_PY), "client", "{port}", "HELLO WORLD\n", "--writes", "2"]),
    # four round trips: the client's next write carries the ACK of the echo (PIGGYBACK)
    "py-pingpong": ([PY, str(ECHO_PY), "server"], [PY, ME, "child", "pingpong", "{port}"]),
    # accept() called 0.3 s after the handshake completed
    "py-delay": ([PY, str(ECHO_PY), "server", "--accept-delay", "0.3"],
                 [PY, str(ECHO_PY), "client", "{port}", "late\n"]),
    # nobody listens: SYN, RST, ECONNREFUSED
    "py-refused": (None, [PY, str(ECHO_PY), "client", "{port}", "x"]),
    # the server reads 3 of 24 bytes and closes: RST; the client's recv gets ECONNRESET
    "py-unread": ([PY, ME, "child", "unread-server"], [PY, ME, "child", "unread-client", "{port}"]),
    "c-echo": (["{echo_c}", "server"], ["{echo_c}", "client", "{port}", "HELLO WORLD"]),
    "c-delay": (["{echo_c}", "server", "300"], ["{echo_c}", "client", "{port}", "late"]),
    "c-refused": (None, ["{echo_c}", "client", "{port}", "x"]),
}


# ------------------------------------------------------------------------------ children


def _child(mode: str, args: list[str]) -> int:
    if mode == "pingpong":
        with socket.create_connection(("127.0.0.1", int(args[0]))) as s:
            for i in range(4):
                msg = f"ping {i}\n".encode()
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += s.recv(4096)
                time.sleep(0.05)  # long enough for the peer's delayed ACK to be pending
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        return 0
    if mode == "unread-server":
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        print(f"port {srv.getsockname()[1]}", flush=True)
        conn, _ = srv.accept()
        conn.recv(3)
        time.sleep(0.1)  # the rest has arrived and sits unread
        conn.close()  # unread data: RST instead of FIN
        srv.close()
        return 0
    if mode == "unread-client":
        with socket.create_connection(("127.0.0.1", int(args[0]))) as s:
            s.sendall(b"twenty-four bytes, ok?\n\n")
            time.sleep(0.3)
            try:
                s.recv(100)
            except ConnectionResetError:
                print("reset", flush=True)
        return 0
    raise SystemExit(f"record.py: unknown child mode {mode!r}")


# ------------------------------------------------------------------------------ recording


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _thin(text: str) -> str:
    """Keep three lines of calls on other fds (they prove those are filtered), drop the rest."""
    out, kept = [], 0
    for line in text.splitlines(keepends=True):
        if FILE_FD.search(line):
            kept += 1
            if kept > 3:
                continue
        out.append(line)
    return "".join(out)


def compile_echo_c(directory: Path) -> Path:
    exe = directory / "echo"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(ECHO_C)], check=True, timeout=60)
    return exe


def record(name: str, outdir: Path, echo_c: Path | None = None) -> tuple[Path, Path]:
    """Run scenario ``name``; write ``outdir/NAME.pcap`` and ``outdir/NAME.strace``."""
    from handshake_viz.capture import LiveCapture
    from handshake_viz.tracer import start_traced

    server_argv, client_argv = SCENARIOS[name]
    fill = {"echo_c": str(echo_c) if echo_c else ""}
    pcap, strace = outdir / f"{name}.pcap", outdir / f"{name}.strace"
    with tempfile.TemporaryDirectory() as tmp:
        logs = []
        server = None
        if server_argv is not None:
            logs.append(Path(tmp) / "server.log")
            server = start_traced([a.format(**fill) for a in server_argv], output=logs[-1],
                                  as_user=None, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            line = server.process.stdout.readline().decode()  # type: ignore[union-attr]
            m = re.search(r"port (\d+)", line)
            if not m:
                server.stop()
                raise RuntimeError(f"{name}: server said {line!r}, not 'port N'")
            port = int(m.group(1))
        else:
            port = _free_port()
        fill["port"] = str(port)
        cap = LiveCapture(port, output=pcap, timeout=20, handle_signals=False)
        runner = threading.Thread(target=cap.run, daemon=True)
        runner.start()
        if not cap.ready.wait(5):
            raise RuntimeError(f"{name}: the capture did not start")
        logs.append(Path(tmp) / "client.log")
        client = start_traced([a.format(**fill) for a in client_argv], output=logs[-1], as_user=None,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client.wait(20)
        if server is not None:
            server.wait(20)
            server.stop()
        client.stop()
        time.sleep(0.3)  # the last ACK
        cap.stop()
        runner.join(10)
        strace.write_text("".join(_thin(p.read_text(errors="replace")) for p in logs))
    return pcap, strace


def main(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_echo_c(Path(tmp))
        for name in names or list(SCENARIOS):
            pcap, strace = record(name, HERE, exe)
            print(f"{name}: {pcap.stat().st_size} B pcap, {len(strace.read_text().splitlines())} strace lines")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(_child(sys.argv[2], sys.argv[3:]))
    main(sys.argv[1:])
