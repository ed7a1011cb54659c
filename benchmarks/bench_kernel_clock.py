#!/usr/bin/env python3
"""How well kernel events line up with the packets of the same capture.

    sudo "$(command -v python)" benchmarks/bench_kernel_clock.py [--connections 500]

Captures ``--connections`` short loopback connections (``tests/programs/burst.py``: ping,
pong, close) with
``hsviz.capture(..., kernel=True)`` and compares, on the capture's clock:

* each probe (``tcp_probe``, taken as a segment is processed on arrival) with the
  captured segment it was joined to: the probe comes after the packet socket saw
  the segment, so ``probe - frame`` is processing time plus the mapping's error;
* each client's ``SYN_SENT -> ESTABLISHED`` with the SYN-ACK that caused it (after it);
* each ``ESTABLISHED -> FIN_WAIT1`` with the FIN it precedes (close() changes the
  state, then sends).

A negative ``after`` or a positive ``before`` difference would be the mapping's
error showing through; the clock markers' own bound is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import handshake_viz as hv  # noqa: E402
from handshake_viz.kernel import LinuxState  # noqa: E402
from handshake_viz.model import Flag  # noqa: E402

# The burst (shared with the tests): prints the port, waits for a line, runs.
GENERATOR = Path(__file__).resolve().parents[1] / "tests" / "programs" / "burst.py"


def show(name: str, values_us: list[float]) -> None:
    if not values_us:
        print(f"{name:<44} (none)")
        return
    q = statistics.quantiles(values_us, n=100) if len(values_us) > 1 else values_us * 99
    print(f"{name:<44} {len(values_us):>6} {min(values_us):>8.1f} {q[49]:>8.1f} {q[98]:>8.1f} {max(values_us):>9.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    ap.add_argument("--connections", type=int, default=500)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root to capture and to record kernel events", file=sys.stderr)
        return 2
    gen = subprocess.Popen([sys.executable, str(GENERATOR), str(args.connections)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    port = int(gen.stdout.readline())

    def go() -> None:
        gen.stdin.write("go\n")  # type: ignore[union-attr]
        gen.stdin.flush()  # type: ignore[union-attr]

    try:
        with tempfile.TemporaryDirectory(prefix="hsviz-clock-") as tmp:
            trace = hv.capture(port, connections=args.connections, timeout=120, kernel=True,
                               output=Path(tmp) / "c.pcap", on_ready=go)
    finally:
        gen.kill()
        gen.wait()
    assert trace.kernel is not None
    probe, synack, fin = [], [], []
    for conn in trace.connections:
        k = conn.kernel
        assert k is not None
        for g, facts in zip(conn.segments, k.segments):
            if facts.probe is not None:
                probe.append((facts.probe.ts - g.ts) * 1e6)
        synacks = [g for g in conn.segments if g.flags & Flag.SYN and g.flags & Flag.ACK]
        est = [s for s in k.client_steps if s.old is LinuxState.SYN_SENT and s.new is LinuxState.ESTABLISHED]
        if synacks and est and est[0].ts is not None:
            synack.append((est[0].ts - synacks[-1].ts) * 1e6)
        fins = [g for g in conn.segments if g.flags & Flag.FIN]
        for steps in (k.client_steps, k.server_steps):
            closing = [s for s in steps if s.new is LinuxState.FIN_WAIT1 and s.ts is not None]
            if closing and fins:
                first_fin = min((g for g in fins if g.ts >= closing[0].ts - 0.001), key=lambda g: g.ts, default=None)
                if first_fin is not None:
                    fin.append((closing[0].ts - first_fin.ts) * 1e6)  # type: ignore[operator]
    sync = trace.kernel.log.sync
    print(f"{len(trace.connections)} connections, {len(trace.kernel.log.events)} kernel events, "
          f"{trace.kernel.log.lost} lost")
    if sync is not None:
        end = sync.end_uncertainty * 1e6 if sync.end_uncertainty is not None else float("nan")
        drift = sync.drift * 1e6 if sync.drift is not None else float("nan")
        print(f"clock markers: offset known to ±{sync.uncertainty * 1e6:.2f} µs at the start, "
              f"±{end:.2f} µs at the end; end minus start {drift:.2f} µs")
    print(f"{'difference (µs)':<44} {'n':>6} {'min':>8} {'median':>8} {'p99':>8} {'max':>9}")
    show("probe - its segment (after)", probe)
    show("client ESTABLISHED - SYN-ACK (after)", synack)
    show("FIN_WAIT1 - its FIN (before)", fin)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
