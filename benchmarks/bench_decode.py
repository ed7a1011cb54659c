"""Time decoding alone: capture file -> Packet records, packets/s and peak RSS.

::

    python benchmarks/bench_decode.py [CAPTURE] [--runs 3] [--no-scapy]

Without CAPTURE, a 1,040,000-packet capture (20,000 connections, 15 exchanges,
``make_capture.py``) is generated in a temporary directory first.

Every run is a fresh Python process (so peak RSS is that run's own); the time
is measured inside it around the iteration only, excluding interpreter start
and imports.  The table shows the median of the runs and the largest peak RSS
(VmHWM) with, for reference, the RSS of the same process just before reading.

Methods:

* ``hsviz open_capture``: ``handshake_viz.decode.open_capture``, every TCP
  packet built as a ``Packet``;
* ``scapy RawPcapReader+struct`` (unless ``--no-scapy``): scapy's raw record
  reader plus one ``struct`` unpack of the Ethernet/IPv4/TCP fields per record
  and no record objects, the baseline DESIGN.md measured (pcap only).

The full ``hsviz analyze`` benchmark (against tshark and tcptrace) is separate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_CHILD_PRELUDE = r"""
import json, os, resource, sys, time

def peak_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss

path = sys.argv[1]
"""

_CHILD_HSVIZ = r"""
from handshake_viz.decode import open_capture
base = peak_kib()
t0 = time.perf_counter()
c0 = time.process_time()
n = 0
with open_capture(path) as reader:
    for pkt in reader:
        n += 1
dt = time.perf_counter() - t0
cpu = time.process_time() - c0
print(json.dumps({"packets": n, "seconds": dt, "cpu": cpu, "base_kib": base, "peak_kib": peak_kib(),
                  "records": reader.stats.records}))
"""

_CHILD_SCAPY = r"""
import struct
from scapy.utils import RawPcapReader
fields = struct.Struct("!HBxHxxHxB2x4s4sHHIIBBH").unpack_from
base = peak_kib()
t0 = time.perf_counter()
c0 = time.process_time()
n = records = 0
reader = RawPcapReader(path)
for data, meta in reader:
    records += 1
    if len(data) >= 54:
        f = fields(data, 12)
        if f[0] == 0x0800 and f[4] == 6:
            n += 1
reader.close()
dt = time.perf_counter() - t0
cpu = time.process_time() - c0
print(json.dumps({"packets": n, "seconds": dt, "cpu": cpu, "base_kib": base, "peak_kib": peak_kib(),
                  "records": records}))
"""

METHODS = {
    "hsviz open_capture": _CHILD_HSVIZ,
    "scapy RawPcapReader+struct": _CHILD_SCAPY,
}


def run_once(code: str, capture: Path) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_PRELUDE + code, str(capture)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"bench_decode: child failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(capture: Path, runs: int, methods: list[str]) -> list[dict[str, object]]:
    rows = []
    for method in methods:
        results = [run_once(METHODS[method], capture) for _ in range(runs)]
        seconds = statistics.median(r["seconds"] for r in results)
        cpu = statistics.median(r["cpu"] for r in results)
        packets = results[0]["packets"]
        rows.append(
            {
                "method": method,
                "packets": packets,
                "seconds": seconds,
                "cpu": cpu,
                "pps": packets / seconds if seconds else float("inf"),
                "peak_mb": max(r["peak_kib"] for r in results) / 1024,
                "base_mb": max(r["base_kib"] for r in results) / 1024,
                "runs": [round(r["seconds"], 3) for r in results],
            }
        )
    return rows


def print_table(capture: Path, rows: list[dict[str, object]], runs: int) -> None:
    size = capture.stat().st_size
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"capture: {capture} ({size / 1e6:.1f} MB), median of {runs} run(s), "
          f"load average {load:.2f} on {os.cpu_count()} CPUs")
    head = f"{'method':<28} {'packets':>10} {'median s':>9} {'packets/s':>11} {'cpu s':>7} " \
           f"{'pkts/cpu-s':>11} {'peak RSS':>9} {'(before)':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['method']:<28} {r['packets']:>10,} {r['seconds']:>9.2f} {r['pps']:>11,.0f} "
            f"{r['cpu']:>7.2f} {r['packets'] / r['cpu']:>11,.0f} "
            f"{r['peak_mb']:>7.1f}MB {r['base_mb']:>7.1f}MB"
        )
    if len(rows) > 1:
        base = rows[-1]
        for r in rows[:-1]:
            print(f"{r['method']} / {base['method']}: {r['pps'] / base['pps']:.2f}x packets/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture", nargs="?", help="pcap/pcapng to read (default: generate one)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-scapy", action="store_true", help="skip the scapy baseline")
    ap.add_argument("--connections", type=int, default=20000, help="when generating")
    ap.add_argument("--exchanges", type=int, default=15, help="when generating")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args(argv)

    methods = ["hsviz open_capture"]
    with tempfile.TemporaryDirectory(prefix="hsviz-bench-") as tmp:
        if args.capture:
            capture = Path(args.capture)
            if not capture.is_file():
                print(f"{args.capture}: no such file", file=sys.stderr)
                return 2
        else:
            sys.path.insert(0, str(HERE))
            from make_capture import generate

            capture = Path(tmp) / "bench.pcap"
            n = generate(capture, args.connections, args.exchanges)
            print(f"generated {capture.name}: {n:,} packets", file=sys.stderr)
        if not args.no_scapy:
            with capture.open("rb") as f:
                is_pcapng = f.read(4) == b"\x0a\x0d\x0d\x0a"
            if is_pcapng:
                print("scapy baseline skipped: RawPcapReader reads pcap only", file=sys.stderr)
            else:
                methods.append("scapy RawPcapReader+struct")
        rows = bench(capture, args.runs, methods)
        print_table(capture, rows, args.runs)
        if args.json:
            print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
