#!/usr/bin/env python3
"""Capture a burst of short loopback connections with hsviz, tcpdump and scapy.

    sudo "$(command -v python)" benchmarks/bench_capture_burst.py [--connections 2000] [--alone]
    sudo "$(command -v python)" benchmarks/bench_capture_burst.py --kernel [--runs 5]

A generator process opens ``--connections`` connections one after the other to
its own server on 127.0.0.1 (a free port), each: handshake, a 32-byte request,
a 32-byte reply, close: about 10 segments each, 20,000 for the default 2,000,
sent as fast as loopback allows (well under a second on a 2-core machine).

Watching the same burst at the same time (or each on its own burst with
``--alone``):

* ``hsviz capture --port P`` (the full live pipeline: capture, pcap, decode,
  track, one ladder line per segment to a file);
* ``tcpdump -i lo -U -w ... tcp port P`` when installed (the reference);
* scapy's ``AsyncSniffer`` with a Python ``lfilter`` for the port (no libpcap
  needed), counting what it keeps.  It receives both loopback copies of each
  packet, so its count includes duplicates.

Each capturer is started and the burst begins only after all of them said they
were listening; all are stopped after the burst (hsviz by SIGTERM, which writes
what the kernel had queued).  Prints a table of packets recorded.
Needs root (or CAP_NET_RAW).

``--kernel`` measures what ``hsviz capture --kernel`` costs instead: bursts in
turn with ``hsviz capture`` and with ``hsviz capture --kernel`` (tcpdump beside
each as the reference), ``--runs`` times, and prints per burst its length, the
packets recorded, the kernel events recorded and lost, the hsviz process's CPU
time, and how long it took from SIGTERM to exit (``--kernel`` parses, joins the
port's events and writes ``.kernel.jsonl`` then).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The burst: a server thread and a client loop in one process (shared with the tests).
# Prints the port, waits for a line on stdin, runs the burst, prints the seconds it took.
GENERATOR = Path(__file__).resolve().parents[1] / "tests" / "programs" / "burst.py"

# scapy's native Linux sniffing socket, a Python filter on the port, a counter.
SCAPY_SNIFFER = r"""
import signal, sys, threading
from scapy.all import AsyncSniffer, TCP
port = int(sys.argv[1])
kept = 0
def keep(p):
    return TCP in p and (p[TCP].sport == port or p[TCP].dport == port)
def count(p):
    global kept
    kept += 1
done = threading.Event()
signal.signal(signal.SIGINT, lambda *a: done.set())
s = AsyncSniffer(iface="lo", lfilter=keep, prn=count, store=False,
                 started_callback=lambda: print("listening", file=sys.stderr, flush=True))
s.start()
done.wait()
s.stop()
print(kept, flush=True)
"""


class Capturer:
    name = ""
    key = ""
    ready_text = ""
    stop_signal = signal.SIGINT
    pcap: Path
    proc: subprocess.Popen[bytes]
    errfile: Path
    outfile: Path

    def start(self, port: int, workdir: Path) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited early: {self.errfile.read_text()}")
            if self.ready_text in self.errfile.read_text():
                return
            time.sleep(0.02)
        raise SystemExit(f"{self.name} did not get ready in {timeout} s")

    def _spawn(self, cmd: list[str], workdir: Path, stdout: int | None = None) -> None:
        self.errfile = workdir / f"{self.key}.err"
        self.outfile = workdir / f"{self.key}.out"
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.outfile, "wb"), stderr=open(self.errfile, "wb"), cwd=workdir
        )

    def stop(self) -> None:
        self.proc.send_signal(self.stop_signal)
        t0 = time.monotonic()
        _, status, usage = os.wait4(self.proc.pid, 0)  # the child's own CPU time, as it exits
        self.stop_seconds = time.monotonic() - t0
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.proc.returncode = os.waitstatus_to_exitcode(status)

    def result(self) -> tuple[int, str]:
        raise NotImplementedError


class Hsviz(Capturer):
    name = "hsviz capture"
    key = "hsviz"
    ready_text = "listening on lo port"
    stop_signal = signal.SIGTERM

    extra: tuple[str, ...] = ()

    def start(self, port: int, workdir: Path) -> None:
        self.pcap = workdir / f"{self.key}.pcap"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "handshake_viz", "capture", "--port", str(port), "-o", str(self.pcap),
               *self.extra]
        self.errfile = workdir / f"{self.key}.err"
        self.outfile = workdir / f"{self.key}.out"
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.outfile, "wb"), stderr=open(self.errfile, "wb"), cwd=workdir, env=env
        )

    def result(self) -> tuple[int, str]:
        err = self.errfile.read_text()
        drops = "0"
        for line in err.splitlines():
            if "kernel dropped" in line:
                drops = line.split("dropped", 1)[1].split()[0]
        return count_records(self.pcap), drops


class HsvizKernel(Hsviz):
    name = "hsviz capture --kernel"
    key = "hsviz-kernel"
    extra = ("--kernel",)

    def kernel_events(self) -> tuple[int, int]:
        """(events written, events lost) from the .kernel.jsonl header."""
        import json

        with open(self.pcap.with_suffix(".kernel.jsonl"), encoding="utf-8") as fh:
            header = json.loads(fh.readline())
        return header["events"], header["lost"]


class Tcpdump(Capturer):
    name = "tcpdump -U"
    key = "tcpdump"
    ready_text = "listening on"
    stop_signal = signal.SIGINT

    def start(self, port: int, workdir: Path) -> None:
        self.pcap = workdir / "tcpdump.pcap"
        self._spawn(["tcpdump", "-i", "lo", "-U", "-w", str(self.pcap), "tcp", "port", str(port)], workdir)

    def result(self) -> tuple[int, str]:
        drops = "?"
        for line in self.errfile.read_text().splitlines():
            if "dropped by kernel" in line:
                drops = line.split()[0]
        return count_records(self.pcap), drops


class ScapySniffer(Capturer):
    name = "scapy AsyncSniffer+lfilter"
    key = "scapy"
    ready_text = "listening"
    stop_signal = signal.SIGINT

    def start(self, port: int, workdir: Path) -> None:
        self._spawn([sys.executable, "-c", SCAPY_SNIFFER, str(port)], workdir)

    def result(self) -> tuple[int, str]:
        text = self.outfile.read_text().split()
        return (int(text[-1]) if text else -1), "-"


def count_records(path: Path) -> int:
    """Records in a classic pcap (either byte order), by walking the record headers."""
    import struct

    data = path.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    pos, n = 24, 0
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        if pos + 16 + caplen > len(data):
            break
        pos += 16 + caplen
        n += 1
    return n


def settle(paths: list[Path], quiet: float = 0.5, limit: float = 60.0) -> None:
    """Wait until none of the files has grown for ``quiet`` seconds."""
    sizes: list[int] = []
    still_since = time.monotonic()
    deadline = still_since + limit
    while time.monotonic() < deadline:
        now = [p.stat().st_size if p.exists() else 0 for p in paths]
        if now != sizes:
            sizes, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return
        time.sleep(0.05)


def run_burst(capturers: list[Capturer], connections: int, workdir: Path) -> float:
    gen = subprocess.Popen(
        [sys.executable, str(GENERATOR), str(connections)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert gen.stdin is not None and gen.stdout is not None
    port = int(gen.stdout.readline())
    try:
        for c in capturers:
            c.start(port, workdir)
        for c in capturers:
            c.wait_ready()
        gen.stdin.write("go\n")
        gen.stdin.flush()
        seconds = float(gen.stdout.readline())
        gen.wait(timeout=60)
        # Let the slow ones catch up before asking them to stop: tcpdump stops at
        # SIGINT without reading what its ring still holds.
        time.sleep(1.0)
        settle([c.pcap for c in capturers if hasattr(c, "pcap")])
    finally:
        for c in capturers:
            if getattr(c, "proc", None) is not None and c.proc.poll() is None:
                c.stop()
        if gen.poll() is None:
            gen.kill()
    return seconds


def kernel_cost(connections: int, runs: int) -> int:
    """Bursts in turn with and without --kernel; one row per burst."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="hsviz-burst-") as tmp:
        workdir = Path(tmp)
        for n in range(runs):
            for kind in (Hsviz, HsvizKernel):
                hs = kind()
                group: list[Capturer] = [hs] + ([Tcpdump()] if shutil.which("tcpdump") else [])
                seconds = run_burst(group, connections, workdir)
                packets, drops = hs.result()
                reference = group[1].result()[0] if len(group) > 1 else None
                events, lost = hs.kernel_events() if isinstance(hs, HsvizKernel) else (0, 0)
                rows.append((n + 1, hs.name, seconds, packets, reference, drops, events, lost, hs.cpu_seconds,
                             hs.stop_seconds))
    print(f"{connections} short connections on loopback, with and without --kernel, {runs} runs")
    print(f"{'run':>3} {'capturer':<24} {'burst s':>8} {'packets':>8} {'tcpdump':>8} {'drops':>6} "
          f"{'k-events':>9} {'k-lost':>7} {'CPU s':>6} {'stop s':>7}")
    for run, name, seconds, packets, ref, drops, events, lost, cpu, stop in rows:
        print(f"{run:>3} {name:<24} {seconds:>8.2f} {packets:>8} {ref if ref is not None else '-':>8} {drops:>6} "
              f"{events:>9} {lost:>7} {cpu:>6.2f} {stop:>7.2f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--alone", action="store_true", help="give each capturer its own burst")
    ap.add_argument("--no-scapy", action="store_true", help="leave out scapy's AsyncSniffer")
    ap.add_argument("--kernel", action="store_true", help="measure what --kernel costs (see above)")
    ap.add_argument("--runs", type=int, default=5, help="bursts of each kind with --kernel (default 5)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (or CAP_NET_RAW) to capture", file=sys.stderr)
        return 2
    if args.kernel:
        return kernel_cost(args.connections, args.runs)
    kinds: list[type[Capturer]] = [Hsviz]
    if shutil.which("tcpdump"):
        kinds.append(Tcpdump)
    else:
        print("tcpdump not installed: no reference count", file=sys.stderr)
    if not args.no_scapy:
        kinds.append(ScapySniffer)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hsviz-burst-") as tmp:
        workdir = Path(tmp)
        groups = [[k()] for k in kinds] if args.alone else [[k() for k in kinds]]
        for group in groups:
            seconds = run_burst(group, args.connections, workdir)
            for c in group:
                packets, drops = c.result()
                rows.append((c.name, packets, drops, seconds))
    reference = next((r[1] for r in rows if r[0] == Tcpdump.name), None)
    mode = "each on its own burst" if args.alone else "all on the same burst"
    print(f"{args.connections} short connections on loopback, {mode}")
    print(f"{'capturer':<28} {'burst s':>8} {'packets':>8} {'vs tcpdump':>11} {'kernel drops':>13}")
    for name, packets, drops, seconds in rows:
        ratio = f"{100.0 * packets / reference:.1f}%" if reference else "-"
        print(f"{name:<28} {seconds:>8.2f} {packets:>8} {ratio:>11} {drops:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
