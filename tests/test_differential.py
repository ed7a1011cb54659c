"""The compiled tracker and front end against the Python modules they are compiled from.

The Python path (``handshake_viz.track`` and the modules beside it) is the reference;
``pip install`` compiles the same files with Cython, plus a front end of its own
(``_compiled/frontend.pyx``: the record walk, the commonest frame's decoding, the
output lines).  Whatever runs, every byte hsviz writes must be the same, so each test
here analyses one file twice in this process, once on each path
(:func:`handshake_viz.engine.use`), and compares everything: ``--jsonl`` (one process
and two), ``--summary``, the text ladder, each with ``--conn`` and with checksums
verified, and what ``plot`` and the API load (every Segment, Datagram, summary and
warning).

The files are ``captures/*.pcap``, both batches of the third-party corpus, and
seeded random streams written with scapy: interleaved conversations with
retransmissions and late segments, gaps, overlaps, port reuse, sequence numbers
that wrap, zero windows, RSTs, odd flags, snaplen-cut payloads, reordering, IPv6 and
UDP.  The compiled path not being built is a skip here and a failure in CI.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from conftest import in_ci, require
from handshake_viz import engine, pipeline
from handshake_viz.analyze import analyze_file
from handshake_viz.errors import HsvizError
from handshake_viz.model import Packet
from test_track_fastpath import _random_stream  # noqa: E402  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = sorted((ROOT / "captures").glob("*.pcap"))
CORPUS = ROOT.parent / "shared" / "corpus"
TRACES = sorted([*(CORPUS / "traces").glob("*"), *(CORPUS / "batch2" / "traces").glob("*")])


def _compiled_built() -> bool:
    with engine.use(True) as there:
        return there


def _analyze(path: Path, mode: str, *, want: int | None = None, jobs: int = 1,
             verify: bool = False) -> tuple[str, list[str], str]:
    out, warnings = io.StringIO(), []
    try:
        analyze_file(str(path), mode, want=want, jobs=jobs, write=out.write, warn=warnings.append,
                     verify_checksums=verify)  # type: ignore[arg-type]
        error = ""
    except HsvizError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return out.getvalue(), warnings, error


def _load(path: Path, conn: int | None = None, verify: bool = False) -> object:
    try:
        t = pipeline.load(path, conn=conn, verify_checksums=verify)
    except HsvizError as exc:
        return f"{type(exc).__name__}: {exc}"
    return (t.connections, t.flows, t.calls, t.warnings, t.records)


def _every_output(path: Path) -> dict[str, object]:
    """Everything hsviz makes of ``path`` on the path :func:`engine.use` chose."""
    got: dict[str, object] = {}
    for mode in ("jsonl", "summary", "ladder"):
        got[mode] = _analyze(path, mode)
        got[f"{mode} verified"] = _analyze(path, mode, verify=True)
    got["jsonl -j 2"] = _analyze(path, "jsonl", jobs=2)
    got["load"] = _load(path)
    got["load verified"] = _load(path, verify=True)
    summary = got["summary"]
    connections = summary[0].count("\n") if isinstance(summary, tuple) else 0  # type: ignore[union-attr]
    for conn in sorted({0, connections // 2, max(connections - 1, 0)}):
        got[f"jsonl --conn {conn}"] = _analyze(path, "jsonl", want=conn)
        got[f"ladder --conn {conn}"] = _analyze(path, "ladder", want=conn)
        got[f"load --conn {conn}"] = _load(path, conn=conn)
    return got


def assert_same_on_both_paths(path: Path) -> dict[str, object]:
    require(_compiled_built(), "the compiled tracker is not built (pip install -e . builds it)")
    with engine.use(False):
        python = _every_output(path)
    with engine.use(True):
        assert engine.compiled
        compiled = _every_output(path)
    for what, expected in python.items():
        assert compiled[what] == expected, f"{path.name}: {what} differs between compiled and Python"
    return python


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_captures_same_on_both_paths(capture):
    out = assert_same_on_both_paths(capture)
    assert '"type": "' in out["jsonl"][0]  # type: ignore[index]  (segments, or udp.pcap's datagrams)


@pytest.mark.skipif(not TRACES and not in_ci(), reason=f"third-party corpus not found at {CORPUS}")
@pytest.mark.parametrize("trace", TRACES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_corpus_same_on_both_paths(trace):
    assert_same_on_both_paths(trace)


def test_both_corpus_batches_are_compared():
    require(bool(TRACES), f"third-party corpus not found at {CORPUS}")
    assert {p.parent.parent.name for p in TRACES} >= {"corpus", "batch2"}


# --------------------------------------------------------------------------------------
# Random streams, written with scapy
# --------------------------------------------------------------------------------------


def _v6(address: str) -> str:
    """The IPv6 address an IPv4 one stands for in a connection with an IPv6 end."""
    return address if ":" in address else "fe80::" + address.replace(".", ":")[3:]


def _write(path: Path, packets: list[Packet], rng: random.Random) -> None:
    """``packets`` as an Ethernet pcap, with a UDP datagram now and then, some payloads
    cut short of their length (a snaplen) and some segments arriving late (moved up
    to 30 records on, their times unchanged)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import PcapWriter

    # (explicit addresses: an Ether() without them would ask the network for them)
    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    records: list[tuple[float, bytes, int]] = []
    for p in packets:
        if ":" in p.src or ":" in p.dst:
            ip = IPv6(src=_v6(p.src), dst=_v6(p.dst))
        else:
            ip = IP(src=p.src, dst=p.dst, id=rng.randrange(65536))
        tcp = TCP(sport=p.sport, dport=p.dport, seq=p.seq, ack=p.ack, flags=p.flags, window=p.win,
                  dataofs=5 + len(p.raw_options) // 4)
        wire = bytes(ether / ip / tcp / Raw(p.raw_options + b"x" * p.length))
        cut = len(wire) - (p.length - len(p.payload))
        records.append((p.ts, wire[:cut], len(wire)))
        if rng.random() < 0.05:
            udp = ether / IP(src="10.0.0.9", dst="10.0.0.1") / UDP(sport=53, dport=rng.choice([5353, 40000]))
            records.append((p.ts, bytes(udp / Raw(b"q" * rng.randrange(40))), 0))
    for i in range(len(records) - 1, -1, -1):
        if rng.random() < 0.02:
            late = records.pop(i)
            records.insert(min(i + rng.randrange(2, 30), len(records)), late)
    with PcapWriter(str(path), linktype=1, sync=False) as w:
        w.write_header(None)  # (write_packet leaves the file's header to write)
        for ts, data, wirelen in records:
            sec = int(ts)
            w.write_packet(data, sec=sec, usec=round((ts - sec) * 1e6), caplen=len(data),
                           wirelen=wirelen or len(data))


@pytest.mark.parametrize("calm", [1.0, 20.0])
@pytest.mark.parametrize("seed", range(12))
def test_random_streams_same_on_both_paths(tmp_path, seed, calm):
    rng = random.Random(9000 + seed)
    packets = _random_stream(rng, rng.randint(1, 8), rng.randint(100, 600), calm)
    path = tmp_path / f"random-{seed}.pcap"
    _write(path, packets, rng)
    out = assert_same_on_both_paths(path)
    jsonl = out["jsonl"][0]  # type: ignore[index]
    assert jsonl.count('"type": "segment"') == len(packets)


def test_random_streams_have_what_they_are_for(tmp_path):
    """The streams above do hold wrapping numbers, reused ports, late segments and
    reordering: otherwise their agreement proves little."""
    rng = random.Random(9000)
    packets = _random_stream(rng, 6, 600, 1.0)
    assert any(p.seq > 0xFFFF_F000 for p in packets) and any(p.seq < 0x1000 for p in packets) or any(
        p.seq + p.length > 0xFFFF_FFFF for p in packets)
    path = tmp_path / "r.pcap"
    _write(path, packets, rng)
    with engine.use(False):
        text = _analyze(path, "jsonl")[0]
    segments = [json.loads(line) for line in text.splitlines() if '"type": "segment"' in line]
    flags = {flag for seg in segments for flag in seg["analysis"]}
    assert {"retransmission", "out-of-order", "lost-segment", "zero-window"} <= flags
    tuples = {frozenset({(s["src"], s["sport"]), (s["dst"], s["dport"])}) for s in segments}
    assert len({s["conn"] for s in segments}) > len(tuples)  # a 4-tuple used again
    times = [s["ts"] for s in segments]
    assert times != sorted(times)  # late segments


# --------------------------------------------------------------------------------------
# Which path runs, and saying so
# --------------------------------------------------------------------------------------


def _version(pure: bool) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HSVIZ_PURE_PYTHON"}
    if pure:
        env["HSVIZ_PURE_PYTHON"] = "1"
    return subprocess.run([sys.executable, "-m", "handshake_viz", "--version"], env=env, check=True,
                          capture_output=True, text=True).stdout


def test_version_says_which_path_runs():
    assert _version(pure=True).endswith(", pure Python (HSVIZ_PURE_PYTHON is set)\n")
    require(_compiled_built(), "the compiled tracker is not built (pip install -e . builds it)")
    assert ", compiled (Cython " in _version(pure=False)


def test_a_build_from_other_sources_is_not_run(monkeypatch):
    require(_compiled_built(), "the compiled tracker is not built (pip install -e . builds it)")
    from handshake_viz import _build

    monkeypatch.setattr(_build, "sources_digest", lambda package_dir: "edited")
    track, front, why = engine._compiled_modules()
    assert track is None and front is None
    assert why.startswith("pure Python (the compiled tracker was built from other sources")
    with engine.use(True) as there:
        assert not there  # (and nothing was switched)
