"""How long drawing takes.

Targets (issue 3):

* a 1,000-segment connection drawn with ``max_rows=0`` (every segment) renders to
  PNG in under 3 s on the project machine (2 cores);
* planning never re-dissects anything and stays linear: a 200,000-segment
  connection folded to 60 rows plans in a small fraction of the time it took to
  decode and track it;
* with ``--cli CAPTURE`` (e.g. the 1,040,000-packet file from
  ``benchmarks/make_capture.py``): ``hsviz plot CAPTURE --conn 0`` takes at most
  1.5x ``hsviz analyze CAPTURE`` plus the render of one figure.  Both commands run
  as subprocesses; their CPU time (user+sys, from the kernel) is compared as well
  as wall time, because wall time on a shared 2-core machine is noisy.

The connection is synthetic but goes through the real Tracker: a handshake, a
request/response exchange with piggybacked ACKs, then a FIN close.  Run::

    python benchmarks/bench_plot.py            # medians of 5 runs
    python benchmarks/bench_plot.py --runs 1 --segments 1000 --keep /tmp/big.png
    python benchmarks/make_capture.py /tmp/big.pcap --connections 20000 --exchanges 15
    python benchmarks/bench_plot.py --cli /tmp/big.pcap
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from handshake_viz.draw import render, save_figure  # noqa: E402
from handshake_viz.layout import plan  # noqa: E402
from handshake_viz.model import ConnectionSummary, Packet, Segment  # noqa: E402
from handshake_viz.track import Tracker  # noqa: E402

C = ("10.0.0.1", 40000)
S = ("10.0.0.2", 8080)
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def synthetic(n_segments: int, t0: float = 1_700_000_000.0) -> tuple[list[Segment], ConnectionSummary]:
    """About ``n_segments`` segments of one echo-like connection, tracked."""
    packets: list[Packet] = []
    t = t0
    cs, ss = 1000, 900_000

    def add(c2s: bool, flags: int, seq: int, ack: int, payload: bytes = b"") -> None:
        nonlocal t
        t += 0.0002
        src, dst = (C, S) if c2s else (S, C)
        packets.append(Packet(len(packets) + 1, t, src[0], src[1], dst[0], dst[1], seq, ack,
                              flags, 512, len(payload), payload))

    add(True, SYN, cs, 0)
    add(False, SYN | ACK, ss, cs + 1)
    cs += 1
    ss += 1
    add(True, ACK, cs, ss)
    req, resp = b"GET /item HTTP/1.1\r\n" * 3, b"HTTP/1.1 200 OK\r\n" * 40
    while len(packets) < n_segments - 4:
        add(True, PSH | ACK, cs, ss, req)
        cs += len(req)
        add(False, PSH | ACK, ss, cs, resp)
        ss += len(resp)
    add(True, FIN | ACK, cs, ss)
    add(False, FIN | ACK, ss, cs + 1)
    add(True, ACK, cs + 1, ss + 1)
    tracker = Tracker()
    segments = [tracker.feed(p) for p in packets]
    return segments, tracker.summaries()[0]


def _median(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    return _medians(fn, runs)[0]


def _medians(fn, runs: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median wall and CPU seconds (CPU: this process, so other load does not count)."""
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--segments", type=int, default=1000)
    ap.add_argument("--big", type=int, default=200_000, help="segments for the planning benchmark")
    ap.add_argument("--keep", type=Path, help="also write the 1,000-segment PNG here")
    ap.add_argument("--cli", type=Path, metavar="CAPTURE",
                    help="also compare `hsviz plot CAPTURE --conn 0` with `hsviz analyze CAPTURE`")
    args = ap.parse_args(argv)
    ok = True

    segments, summary = synthetic(args.segments)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "big.png"

        def draw_all() -> None:
            save_figure(render(segments, summary, max_rows=0), out)

        t_plan = _median(lambda: plan(segments, summary, max_rows=0), args.runs)
        t_png, c_png = _medians(draw_all, args.runs)
        size = out.stat().st_size
    if args.keep:
        save_figure(render(segments, summary, max_rows=0), args.keep)
    verdict = "OK" if t_png < 3.0 else ("OK on CPU, machine busy" if c_png < 3.0 else "TOO SLOW")
    print(f"{len(segments):,} segments, max_rows=0: plan {t_plan * 1e3:.0f} ms, "
          f"plan+render+PNG {t_png:.2f} s wall, {c_png:.2f} s CPU ({size / 1e6:.1f} MB, "
          f"load average {os.getloadavg()[0]:.1f})  [target < 3 s: {verdict}]")

    start = time.perf_counter()
    big, big_summary = synthetic(args.big)
    t_track = time.perf_counter() - start
    t_fold = _median(lambda: plan(big, big_summary, max_rows=60), max(1, args.runs // 2))
    t_fold_png = _median(lambda: save_figure(render(big, big_summary, max_rows=60),
                                             Path(tempfile.gettempdir()) / "hsviz-bench-fold.png"),
                         max(1, args.runs // 2))
    print(f"{len(big):,} segments folded to 60 rows: plan {t_fold * 1e3:.0f} ms "
          f"({t_fold / t_track:.2f}x of building+tracking them, {t_track:.2f} s), "
          f"plan+render+PNG {t_fold_png:.2f} s")
    ok = c_png < 3.0
    if args.cli:
        ok = _bench_cli(args.cli, t_fold_png) and ok
    return 0 if ok else 1


def _run(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user+sys) seconds of one subprocess, output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _bench_cli(capture: Path, render_one: float) -> bool:
    hsviz = [sys.executable, "-m", "handshake_viz"]
    with tempfile.TemporaryDirectory() as tmp:
        a_wall, a_cpu = _run(hsviz + ["analyze", os.fspath(capture)])
        p_wall, p_cpu = _run(hsviz + ["plot", os.fspath(capture), "--conn", "0",
                                      "-o", os.fspath(Path(tmp) / "conn0.png")])
    budget_wall = 1.5 * a_wall + render_one
    budget_cpu = 1.5 * a_cpu + render_one
    verdict = "OK" if p_cpu <= budget_cpu else "TOO SLOW"
    print(f"{capture}: analyze {a_wall:.1f} s wall / {a_cpu:.1f} s CPU; plot --conn 0 "
          f"{p_wall:.1f} s wall / {p_cpu:.1f} s CPU = {p_cpu / a_cpu:.2f}x analyze CPU "
          f"[target <= 1.5x analyze + one render ({budget_cpu:.1f} s CPU, "
          f"{budget_wall:.1f} s wall): {verdict}]")
    return p_cpu <= budget_cpu


if __name__ == "__main__":
    sys.exit(main())
