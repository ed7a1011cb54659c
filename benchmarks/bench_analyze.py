"""Time ``hsviz analyze`` against tshark and tcptrace on one capture: wall time,
packets/s, peak RSS, and the ratio to tshark.

::

    python benchmarks/bench_analyze.py [CAPTURE] [--runs 3]
    python benchmarks/bench_analyze.py --sizes [--runs 1]

Without CAPTURE, a 1,040,000-packet capture (20,000 connections, 15
request/reply exchanges each, ``make_capture.py``) is generated in a temporary
directory first.

Every run of every tool is its own child process, with stdout sent to
/dev/null: the time is the child's wall time from start to exit (interpreter
start and imports included, as a user sees it).  The peak RSS is the larger of
two figures: the child's ``ru_maxrss`` as GNU time (``/usr/bin/time``) reports it,
else as ``wait4`` does, which is the largest *single* process of the tool; and the
sum of the RSS of all the tool's processes alive at once, sampled every 50 ms
(``hsviz analyze --jsonl`` runs two processes on a large capture, and is charged
for both).  (Linux counts in a child's ``ru_maxrss`` the peak RSS of the process
that forked it: GNU time is a small process, and without it this script, which
generates and counts captures in child processes, stays at ~15 MB itself.)  The
table shows the median time of the runs and the largest peak RSS.  Tools not
installed are left out with a note.

Tools:

* ``hsviz analyze --jsonl``: every segment labelled and printed as JSON Lines;
* ``hsviz analyze --summary``: the same tracking, one line per connection;
* ``tshark -n -T fields``: Wireshark's TCP analysis on, printing a comparable set
  of per-packet fields (frame, time, stream, addresses, ports, raw and relative
  seq/ack, length, flags, window, analysis flags);
* ``tcptrace -n -l``: per-connection long output (``-n``: without it tcptrace
  spends seconds on reverse DNS lookups).

``--sizes`` runs ``hsviz analyze`` on generated captures of growing size, in
two series: more connections of the default shape (memory grows with the
connections the tracker must remember), and a fixed number of connections with
longer conversations (memory must not grow with packets).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

TSHARK_FIELDS = (
    "frame.number", "frame.time_epoch", "tcp.stream", "ip.src", "tcp.srcport", "ip.dst",
    "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.seq", "tcp.ack", "tcp.len",
    "tcp.flags.str", "tcp.window_size_value", "tcp.analysis.flags",
)  # fmt: skip


def _hsviz(*extra: str) -> list[str]:
    return [sys.executable, "-m", "handshake_viz", "analyze", "{capture}", *extra]


# name -> (argv with {capture}, executable that must exist)
TOOLS: dict[str, tuple[list[str], str]] = {
    "hsviz analyze --jsonl": (_hsviz("--jsonl"), sys.executable),
    "hsviz analyze --summary": (_hsviz("--summary"), sys.executable),
    "hsviz analyze": (_hsviz(), sys.executable),  # the text ladder
    "tshark -T fields": (
        ["tshark", "-r", "{capture}", "-n", "-o", "tcp.relative_sequence_numbers:TRUE",
         "-T", "fields", *(a for f in TSHARK_FIELDS for a in ("-e", f))],
        "tshark",
    ),
    "tcptrace -n -l": (["tcptrace", "-n", "-l", "{capture}"], "tcptrace"),
}
REFERENCE = "tshark -T fields"


@dataclass
class Row:
    tool: str
    packets: int
    seconds: list[float] = field(default_factory=list)
    peak_kib: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def pps(self) -> float:
        return self.packets / self.median if self.median else float("inf")

    @property
    def peak_mb(self) -> float:
        return max(self.peak_kib) / 1024


# GNU time measures a child's peak RSS from a small process of its own (see the module
# docstring); without it, wait4's figure for our own child is used.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def _tree_rss_kib(root: int) -> int:
    """Sum of VmRSS over ``root`` and all its descendants (0 once it is gone).

    Walks /proc/PID/task/TID/children, so a sample reads a handful of small files:
    the sampler must not take CPU from the tool it measures."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE_KIB
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            pass
    return total


_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class _TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process tree, sampled every 50 ms: a tool that runs
    two processes at once (hsviz analyze -j 2) is charged for both."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, _tree_rss_kib(self.pid))


def run_child(argv: list[str]) -> tuple[float, int]:
    """Run ``argv`` with stdout to /dev/null; return (wall seconds, peak RSS in KiB).

    The peak is the larger of GNU time's (the largest single process) and the sampled
    sum over all the tool's processes alive at once, minus GNU time's own ~2 MB."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    with open(os.devnull, "wb") as devnull, tempfile.NamedTemporaryFile("r") as rss:
        cmd = [GNU_TIME, "-f", "%M", "-o", rss.name, *argv] if GNU_TIME else argv
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=devnull, stderr=subprocess.PIPE, env=env)
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        assert proc.stderr is not None
        errors = proc.stderr.read()  # tshark/tcptrace chatter is small; read before waiting
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stderr.close()
        measured = rss.read().split()
    if proc.returncode != 0:
        tail = (errors.decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"bench_analyze: {argv[0]} exited {proc.returncode}: {tail}")
    peak = int(measured[-1]) if GNU_TIME and measured else usage.ru_maxrss  # Linux: KiB
    if sampler.peak:
        time_own = 2048 if GNU_TIME else 0  # /usr/bin/time itself is in the sampled tree
        peak = max(peak, sampler.peak - time_own)
    return wall, peak


def count_packets(capture: Path) -> int:
    """Records in a classic pcap, by walking the record headers (fast, no decoding);
    TCP packets via hsviz's decoder for anything else."""
    with capture.open("rb") as f:
        head = f.read(24)
        magic = head[:4]
        order = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<",
                 b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
        if order is not None:
            rec = struct.Struct(order + "8xI4x")
            n = 0
            while True:
                hdr = f.read(16)
                if len(hdr) < 16:
                    return n
                (caplen,) = rec.unpack(hdr)
                f.seek(caplen, os.SEEK_CUR)
                n += 1
    code = ("import sys; from handshake_viz.decode import open_capture\n"
            "with open_capture(sys.argv[1]) as r:\n    sum(1 for _ in r)\n"
            "print(r.stats.records)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code, str(capture)], capture_output=True,
                         text=True, check=True, env=env).stdout
    return int(out.split()[-1])


def available(tools: list[str]) -> list[str]:
    out = []
    for name in tools:
        exe = TOOLS[name][1]
        if shutil.which(exe) or os.path.exists(exe):
            out.append(name)
        else:
            print(f"({name}: {exe} not installed, skipped)", file=sys.stderr)
    return out


def bench(capture: Path, tools: list[str], runs: int, packets: int) -> list[Row]:
    rows = {name: Row(name, packets) for name in tools}
    # Interleave the tools run by run, so a busy moment on the machine hits all of them.
    for _ in range(runs):
        for name in tools:
            argv = [a.replace("{capture}", str(capture)) for a in TOOLS[name][0]]
            wall, peak = run_child(argv)
            rows[name].seconds.append(wall)
            rows[name].peak_kib.append(peak)
    return list(rows.values())


def print_table(title: str, rows: list[Row]) -> None:
    print(title)
    head = (f"{'tool':<26} {'packets':>10} {'median s':>9} {'packets/s':>11} {'peak RSS':>9} "
            f"{'vs tshark':>10}  runs (s)")
    print(head)
    print("-" * len(head))
    ref = next((r for r in rows if r.tool == REFERENCE), None)
    for r in rows:
        ratio = f"{ref.median / r.median:>9.1f}x" if ref else f"{'-':>10}"
        runs = " ".join(f"{s:.2f}" for s in r.seconds)
        print(f"{r.tool:<26} {r.packets:>10,} {r.median:>9.2f} {r.pps:>11,.0f} "
              f"{r.peak_mb:>7.1f}MB {ratio}  {runs}")
    if ref:
        print("(vs tshark: tshark's median time / the tool's; above 1 is faster than tshark)")
    if not GNU_TIME:
        print(f"(a child's peak RSS reads at least this script's own, {own_peak_mb():.1f} MB: "
              "Linux counts the parent's peak in a child's ru_maxrss)")


def own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, connections: int, exchanges: int) -> int:
    """make_capture.py in a child process: a child's ru_maxrss includes the peak RSS of
    the process it was started from, so this one must stay small."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "make_capture.py"), str(path),
                    "--connections", str(connections), "--exchanges", str(exchanges)],
                   check=True, stderr=subprocess.DEVNULL)
    n = count_packets(path)
    print(f"generated {path.name}: {n:,} packets, {connections:,} connections x {exchanges} "
          f"exchanges ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return n


def sizes(tmp: Path, runs: int, tools: list[str]) -> list[dict[str, object]]:
    """Peak RSS of hsviz as captures grow, in two series (see the module docstring)."""
    per_conn = 3 + 3 * 15 + 4  # make_capture.packets_per_connection(15)
    series = [
        ("more connections (15 exchanges each)",
         [(max(1, n // per_conn), 15) for n in (104_000, 312_000, 1_040_000, 3_120_000)]),
        ("2,000 connections, longer conversations",
         [(2000, e) for e in (15, 50, 165)]),
    ]  # fmt: skip
    out = []
    for title, shapes in series:
        print(f"\n{title}")
        head = f"{'connections':>11} {'packets':>10}" + "".join(
            f" {t.replace('hsviz analyze ', ''):>11} {'RSS':>8}" for t in tools)
        print(head)
        print("-" * len(head))
        for conns, exchanges in shapes:
            cap = tmp / f"sizes-{conns}x{exchanges}.pcap"
            n = generate(cap, conns, exchanges)
            rows = bench(cap, tools, runs, n)
            cap.unlink()
            line = f"{conns:>11,} {n:>10,}"
            for r in rows:
                line += f" {r.median:>10.2f}s {r.peak_mb:>6.1f}MB"
                out.append({"series": title, "connections": conns, "packets": n, "tool": r.tool,
                            "median_s": r.median, "peak_mb": r.peak_mb})
            print(line, flush=True)
    if not GNU_TIME:
        print(f"(a child's peak RSS reads at least this script's own, {own_peak_mb():.1f} MB)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture", nargs="?", help="pcap/pcapng to analyze (default: generate one)")
    ap.add_argument("--runs", type=int, default=3, help="runs per tool (median reported)")
    ap.add_argument("--connections", type=int, default=20000, help="when generating")
    ap.add_argument("--exchanges", type=int, default=15, help="when generating")
    ap.add_argument("--only", action="append", choices=sorted(TOOLS), metavar="TOOL",
                    help="run only this tool (repeatable); default: all installed")
    ap.add_argument("--sizes", action="store_true",
                    help="peak RSS of hsviz on growing captures instead of the comparison")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hsviz-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if args.sizes:
            tools = args.only or ["hsviz analyze --jsonl", "hsviz analyze --summary", "hsviz analyze"]
            result = sizes(tmp, args.runs, available(tools))
            if args.json:
                print(json.dumps(result))
            return 0
        if args.capture:
            capture = Path(args.capture)
            if not capture.is_file():
                print(f"bench_analyze: {args.capture}: no such file", file=sys.stderr)
                return 2
            packets = count_packets(capture)
        else:
            capture = tmp / "bench.pcap"
            packets = generate(capture, args.connections, args.exchanges)
        tools = available(args.only or list(TOOLS))
        rows = bench(capture, tools, args.runs, packets)
        size = capture.stat().st_size
        print_table(f"capture: {capture} ({packets:,} packets, {size / 1e6:.1f} MB), "
                    f"median of {args.runs} run(s), {os.cpu_count()} CPUs", rows)
        if args.json:
            print(json.dumps([{"tool": r.tool, "packets": r.packets, "seconds": r.seconds,
                               "median_s": r.median, "pps": r.pps, "peak_mb": r.peak_mb}
                              for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
