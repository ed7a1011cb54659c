"""Time ``hsviz analyze`` against tshark and tcptrace on one capture, and print one
table: tool, packets/s, wall time, peak RSS, and the ratios to tcptrace and to tshark
(and to ``hsviz analyze --summary``, which the ladder's and plot's targets are set by).

::

    python benchmarks/bench_analyze.py [CAPTURE] [--runs 5]
    python benchmarks/bench_analyze.py CAPTURE --scale LARGER_CAPTURE [--runs 3]
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
table shows the median time of the runs and the largest peak RSS.  The tools take
turns run by run, and a ratio is the median of the ratios of the same round's runs
(so that a busy moment of the machine, which slows every tool of its round, cancels
out): ``x tcptrace`` is the tool's time over tcptrace's (at most 1.0: as fast as
tcptrace or faster), ``tshark /`` is tshark's time over the tool's (how many times
faster than tshark).  Tools not installed are left out with a note.

Tools:

* ``hsviz analyze --jsonl``: every segment labelled and printed as JSON Lines;
* ``hsviz analyze --summary``: the same tracking, one line per connection;
* ``tshark -n -T fields``: Wireshark's TCP analysis on, printing a comparable set
  of per-packet fields (frame, time, stream, addresses, ports, raw and relative
  seq/ack, length, flags, window, analysis flags);
* ``tcptrace -n -l``: per-connection long output (``-n``: without it tcptrace
  spends seconds on reverse DNS lookups);
* ``hsviz plot --conn N``: one connection's diagram (PNG) out of the whole file
  (``--plot-conn``; by default the last of the generated capture's 20,000).

``--scale LARGER_CAPTURE`` times hsviz's modes on CAPTURE and on a larger capture
of the same shape (``make_capture.py --connections 200000`` for ten times the
default): the larger's time and peak RSS over the smaller's, which stay near its
size ratio and near 1.0 when memory does not grow with the file.

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


def _hsviz(*extra: str, command: str = "analyze") -> list[str]:
    return [sys.executable, "-m", "handshake_viz", command, "{capture}", *extra]


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
    "hsviz plot --conn N": (_hsviz("--conn", "{conn}", "-o", "{tmp}/plot.png", command="plot"),
                            sys.executable),
}
REFERENCE = "tshark -T fields"
TCPTRACE = "tcptrace -n -l"
HSVIZ = ("hsviz analyze --jsonl", "hsviz analyze --summary", "hsviz analyze")


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


def bench(capture: Path, tools: list[str], runs: int, packets: int, conn: int = 19999) -> list[Row]:
    rows = {name: Row(name, packets) for name in tools}
    tmp = tempfile.mkdtemp(prefix="hsviz-bench-out-")
    # Interleave the tools run by run, so a busy moment on the machine hits all of them.
    for _ in range(runs):
        for name in tools:
            argv = [a.replace("{capture}", str(capture)).replace("{conn}", str(conn))
                    .replace("{tmp}", tmp) for a in TOOLS[name][0]]
            wall, peak = run_child(argv)
            rows[name].seconds.append(wall)
            rows[name].peak_kib.append(peak)
    shutil.rmtree(tmp, ignore_errors=True)
    return list(rows.values())


def paired(a: Row, b: Row) -> float:
    """Median over the rounds of a's time over b's in the same round."""
    return statistics.median(x / y for x, y in zip(a.seconds, b.seconds, strict=True))


def print_table(title: str, rows: list[Row]) -> None:
    """The one table: tool, packets/s, wall s, peak MB, and the same-round ratios."""
    print(title)
    head = (f"{'tool':<26} {'packets/s':>11} {'wall s':>7} {'peak MB':>8} {'x tcptrace':>10} "
            f"{'tshark /':>9} {'x summary':>9}  runs (s)")
    print(head)
    print("-" * len(head))
    tcptrace = next((r for r in rows if r.tool == TCPTRACE), None)
    tshark = next((r for r in rows if r.tool == REFERENCE), None)
    summary = next((r for r in rows if r.tool == "hsviz analyze --summary"), None)
    for r in rows:
        vs_tcptrace = f"{paired(r, tcptrace):>9.2f}x" if tcptrace else f"{'-':>10}"
        vs_tshark = f"{paired(tshark, r):>8.1f}x" if tshark else f"{'-':>9}"
        vs_summary = f"{paired(r, summary):>8.2f}x" if summary else f"{'-':>9}"
        runs = " ".join(f"{s:.2f}" for s in r.seconds)
        print(f"{r.tool:<26} {r.pps:>11,.0f} {r.median:>7.2f} {r.peak_mb:>8.1f} {vs_tcptrace} "
              f"{vs_tshark} {vs_summary}  {runs}")
    print("(wall s: the median; peak MB: the largest; x tcptrace, x summary: the tool's time "
          "over tcptrace's or hsviz analyze --summary's, tshark /: tshark's time over the "
          "tool's, each the median of the same round's ratios)")
    if not GNU_TIME:
        print(f"(a child's peak RSS reads at least this script's own, {own_peak_mb():.1f} MB: "
              "Linux counts the parent's peak in a child's ru_maxrss)")


def scale(small: Path, large: Path, tools: list[str], runs: int) -> list[dict[str, object]]:
    """hsviz's modes on ``small`` and ``large`` in turn: the larger's time and peak RSS
    over the smaller's (the same round's runs paired)."""
    n_small, n_large = count_packets(small), count_packets(large)
    print(f"{small.name}: {n_small:,} packets; {large.name}: {n_large:,} packets "
          f"({n_large / n_small:.1f}x), median of {runs} run(s), {os.cpu_count()} CPUs")
    head = (f"{'tool':<26} {'small s':>8} {'large s':>8} {'time x':>7} {'small MB':>9} "
            f"{'large MB':>9} {'memory x':>9}")
    print(head)
    print("-" * len(head))
    out = []
    for name in tools:
        rows = [Row(name, n_small), Row(name, n_large)]
        for _ in range(runs):
            for row, cap in zip(rows, (small, large)):
                argv = [a.replace("{capture}", str(cap)) for a in TOOLS[name][0]]
                wall, peak = run_child(argv)
                row.seconds.append(wall)
                row.peak_kib.append(peak)
        a, b = rows
        t_ratio, m_ratio = paired(b, a), b.peak_mb / a.peak_mb
        print(f"{name:<26} {a.median:>8.2f} {b.median:>8.2f} {t_ratio:>6.2f}x {a.peak_mb:>9.1f} "
              f"{b.peak_mb:>9.1f} {m_ratio:>8.2f}x", flush=True)
        out.append({"tool": name, "small_s": a.seconds, "large_s": b.seconds,
                    "small_mb": a.peak_mb, "large_mb": b.peak_mb, "time_ratio": t_ratio,
                    "memory_ratio": m_ratio})
    return out


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


def compile_sources() -> None:
    """Write the package's bytecode (``__pycache__``), as an install does: under
    PYTHONDONTWRITEBYTECODE an edited module would be compiled again in every run."""
    import compileall

    compileall.compile_dir(str(REPO / "handshake_viz"), quiet=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture", nargs="?", help="pcap/pcapng to analyze (default: generate one)")
    ap.add_argument("--runs", type=int, default=5, help="runs per tool (median reported)")
    ap.add_argument("--plot-conn", type=int, default=None,
                    help="the connection hsviz plot draws (default: the last of a generated "
                    "capture, 19999 for the default one; without it and with CAPTURE, no plot)")
    ap.add_argument("--scale", metavar="LARGER_CAPTURE",
                    help="time hsviz's modes on CAPTURE and on this larger capture instead")
    ap.add_argument("--connections", type=int, default=20000, help="when generating")
    ap.add_argument("--exchanges", type=int, default=15, help="when generating")
    ap.add_argument("--only", action="append", choices=sorted(TOOLS), metavar="TOOL",
                    help="run only this tool (repeatable); default: all installed")
    ap.add_argument("--sizes", action="store_true",
                    help="peak RSS of hsviz on growing captures instead of the comparison")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)
    compile_sources()

    with tempfile.TemporaryDirectory(prefix="hsviz-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if args.sizes:
            tools = args.only or ["hsviz analyze --jsonl", "hsviz analyze --summary", "hsviz analyze"]
            result = sizes(tmp, args.runs, available(tools))
            if args.json:
                print(json.dumps(result))
            return 0
        conn = args.plot_conn
        if args.capture:
            capture = Path(args.capture)
            for name in (args.capture, args.scale):
                if name and not Path(name).is_file():
                    print(f"bench_analyze: {name}: no such file", file=sys.stderr)
                    return 2
            if args.scale:
                result = scale(capture, Path(args.scale), available(args.only or list(HSVIZ)),
                               args.runs)
                if args.json:
                    print(json.dumps(result))
                return 0
            packets = count_packets(capture)
        else:
            capture = tmp / "bench.pcap"
            packets = generate(capture, args.connections, args.exchanges)
            conn = args.connections - 1 if conn is None else conn
        default = [t for t in TOOLS if conn is not None or t != "hsviz plot --conn N"]
        tools = available(args.only or default)
        rows = bench(capture, tools, args.runs, packets, conn if conn is not None else 0)
        size = capture.stat().st_size
        print_table(f"{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPUs: "
                    f"{capture.name} ({packets:,} packets, {size / 1e6:.1f} MB), "
                    f"median of {args.runs} run(s)"
                    + (f", plot --conn {conn}" if "hsviz plot --conn N" in tools else ""), rows)
        if args.json:
            print(json.dumps([{"tool": r.tool, "packets": r.packets, "seconds": r.seconds,
                               "median_s": r.median, "pps": r.pps, "peak_mb": r.peak_mb}
                              for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
