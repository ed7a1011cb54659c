"""`hsviz` as a user runs it: subprocesses for the entry points, main() for the rest."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from handshake_viz.cli import main

ROOT = Path(__file__).resolve().parents[1]
ECHO = ROOT / "captures" / "echo.pcap"
CORPUS = ROOT.parent / "shared" / "corpus"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv", [[sys.executable, "-m", "handshake_viz", "--help"], ["hsviz", "--help"]])
def test_help_works_both_ways(argv):
    if argv[0] == "hsviz":
        exe = Path(sys.executable).with_name("hsviz")
        if not exe.exists():
            pytest.skip("the hsviz console script is not installed in this environment")
        argv = [str(exe), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("analyze", "plot", "capture", "replay"):
        assert command in done.stdout


def test_analyze_text_ladder_of_the_echo_capture():
    code, out, err = run("analyze", str(ECHO))
    assert code == 0, err
    labels = [line.split()[4] for line in out.splitlines()
              if line.strip()[:1].isdigit() and (" → " in line or " ← " in line)]
    assert labels[:3] == ["SYN", "SYN-ACK", "ACK"]
    assert "PIGGYBACK" in labels and labels[-1] == "ACK"
    assert "SF ShADadFf" in out


def test_the_ladder_written_as_bytes_is_the_ladder_written_as_text(tmp_path):
    """On a real stdout the ladder goes out as UTF-8 bytes (no decoding and encoding per
    line); it must be what main() writes to a text stream, in the same order: a refused
    connection's (its held SYN settled through Python), UDP flows' after connections'.
    (Copies without their call logs: with one, analyze takes the pipeline's path.)"""
    for name in ("echo.pcap", "refused.pcap", "udp.pcap", "multi-client.pcap"):
        pcap = tmp_path / name
        pcap.write_bytes((ROOT / "captures" / name).read_bytes())
        code, text, err = run("analyze", str(pcap))
        assert code == 0, err
        assert " → " in text and ("conn 0:" in text or "flow 0 (UDP):" in text)
        done = subprocess.run([sys.executable, "-m", "handshake_viz", "analyze", str(pcap)],
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout == text.encode(), name


def test_text_then_bytes_keep_their_order():
    from handshake_viz.cli import _TextAndBytes

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    both = _TextAndBytes.of(stream)
    assert both is not None
    both.write("conn 0: → first\n")
    both.write_bytes("  then ← bytes\n".encode())
    both.write("text again\n")
    stream.flush()
    assert raw.getvalue().decode() == "conn 0: → first\n  then ← bytes\ntext again\n"
    assert _TextAndBytes.of(io.StringIO()) is None  # no byte stream under it
    assert _TextAndBytes.of(io.TextIOWrapper(io.BytesIO(), encoding="latin-1")) is None


def test_analyze_jsonl_schema():
    code, out, _ = run("analyze", str(ECHO), "--jsonl")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    segs = [r for r in records if r["type"] == "segment"]
    conns = [r for r in records if r["type"] == "connection"]
    assert len(conns) == 1 and len(segs) == conns[0]["segments"]
    assert set(segs[0]) == {
        "type", "frame", "ts", "conn", "src", "sport", "dst", "dport", "dir", "seq", "ack",
        "rel_seq", "rel_ack", "len", "flags", "win", "options", "label", "phase", "analysis", "state",
    }
    assert segs[0]["label"] == "SYN" and segs[0]["flags"] == "S" and segs[0]["rel_ack"] is None
    assert segs[0]["options"]["mss"] > 0
    assert segs[1]["state"] == {"client": "ESTABLISHED", "server": "SYN-RECEIVED"}
    assert set(conns[0]) >= {"conn", "client", "server", "first_ts", "last_ts", "segments",
                             "bytes_c2s", "bytes_s2c", "conn_state", "history"}


def test_analyze_conn_filter_and_summary():
    code, out, _ = run("analyze", str(ECHO), "--summary")
    assert code == 0 and out.count("\n") == 1 and out.startswith("conn 0:")
    code, _, err = run("analyze", str(ECHO), "--conn", "5")
    assert code == 2 and "--conn 5 out of range" in err and err.count("\n") == 1


def _bad(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case", ["missing", "directory", "not-a-capture", "empty", "no-tcp"])
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, case):
    if case == "missing":
        path = tmp_path / "nope.pcap"
    elif case == "directory":
        path = tmp_path
    elif case == "not-a-capture":
        path = _bad(tmp_path, "text.pcap", b"hello, this is not a capture\n")
    elif case == "empty":
        path = _bad(tmp_path, "empty.pcap", b"")
    else:  # a valid pcap with one ICMP packet: neither TCP nor UDP
        hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 1, 0, b"\x7f\0\0\1", b"\x7f\0\0\1")
        frame = b"\0" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", 1, 2, 8, 0)
        rec = struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
        path = _bad(tmp_path, "udp.pcap", hdr + rec)
    done = subprocess.run([sys.executable, "-m", "handshake_viz", "analyze", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert str(path.name) in lines[0] or str(path) in lines[0]


def test_truncated_tail_keeps_complete_segments_and_warns(tmp_path):
    data = ECHO.read_bytes()
    cut = _bad(tmp_path, "cut.pcap", data[:-10])
    code, out, err = run("analyze", str(cut), "--jsonl")
    assert code == 0
    segs = [json.loads(x) for x in out.splitlines() if '"segment"' in x]
    full = [json.loads(x) for x in run("analyze", str(ECHO), "--jsonl")[1].splitlines() if '"segment"' in x]
    assert len(segs) == len(full) - 1
    assert "truncated" in err and "cut.pcap" in err


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"third-party corpus not found at {CORPUS}")
def test_analyze_every_corpus_capture_runs_clean():
    for trace in sorted((CORPUS / "traces").iterdir()):
        code, out, err = run("analyze", str(trace), "--jsonl")
        assert code == 0, (trace.name, err)
        assert out.count('"type": "connection"') >= 1


def test_analyze_with_calls_interleaves_call_records():
    # captures/echo.calls.jsonl beside the pcap is picked up by default
    code, out, _ = run("analyze", str(ECHO), "--jsonl")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    calls = [r for r in records if r["type"] == "call"]
    assert calls, "the shipped echo capture has its calls beside it"
    assert set(calls[0]) >= {"conn", "pid", "tid", "fd", "call", "start", "end", "ret", "errno",
                             "inferred", "frames"}
    connect = next(c for c in calls if c["call"] == "connect")
    frames = {r["frame"]: r for r in records if r["type"] == "segment"}
    assert [frames[f]["label"] for f in connect["frames"]] == ["SYN", "SYN-ACK"]
    assert not any(c["inferred"] for c in calls)
    # the text ladder shows the calls too
    code, out, _ = run("analyze", str(ECHO))
    assert "connect(" in out and "accept4(" in out


def test_analyze_calls_option_errors_are_one_line(tmp_path):
    code, _, err = run("analyze", str(ECHO), "--calls", str(tmp_path / "missing.strace"))
    assert code == 2 and err.count("\n") == 1 and "missing.strace" in err


# --- plot: the capture read in a child while matplotlib loads ---------------------------


def _plot_bytes(tmp_path: Path, name: str, *argv: str) -> tuple[int, str, bytes]:
    out = tmp_path / name
    code, _, err = run("plot", *argv, "-o", str(out))
    return code, err, out.read_bytes() if out.exists() else b""


def _read_in_a_child(monkeypatch) -> list[int]:
    """From now on plot reads every capture in a child (however small); returns the
    list of forks made."""
    import os

    from handshake_viz import child, cli

    forks: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(cli, "_worth_a_child", lambda src: True)
    monkeypatch.setattr(child.os, "fork", fork)
    return forks


@pytest.mark.parametrize("argv", [("--conn", "1"), ("--conn", "0,2"), ()])
def test_plot_reads_in_a_child_and_draws_the_same(tmp_path, monkeypatch, argv):
    from handshake_viz import cli

    capture = ROOT / "captures" / "multi-client.pcap"
    assert not cli._worth_a_child(capture)  # 9 kB: read in this process
    alone = _plot_bytes(tmp_path, "alone.png", str(capture), *argv)
    forks = _read_in_a_child(monkeypatch)
    beside = _plot_bytes(tmp_path, "beside.png", str(capture), *argv)
    assert forks == [1]
    assert alone[:2] == beside[:2] == (0, "") and alone[2] == beside[2]


def test_plot_child_errors_are_the_same_one_line(tmp_path, monkeypatch):
    forks = _read_in_a_child(monkeypatch)
    capture = ROOT / "captures" / "multi-client.pcap"
    code, err, png = _plot_bytes(tmp_path, "x.png", str(capture), "--conn", "7")
    assert (code, png) == (2, b"") and forks == [1]
    assert err.startswith("hsviz: ") and "--conn 7" in err and err.count("\n") == 1
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(capture.read_bytes()[:100])
    code, err, png = _plot_bytes(tmp_path, "y.png", str(cut), "--conn", "0")
    assert (code, png) == (2, b"") and err.count("\n") == 1 and str(cut) in err and forks == [1, 1]


def test_plot_without_conn_reads_only_the_first_connection(tmp_path, monkeypatch):
    from handshake_viz import pipeline

    wanted = []
    real = pipeline.load

    def load(*a, **kw):
        wanted.append(kw.get("conn"))
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "load", load)
    code, _, png = _plot_bytes(tmp_path, "mc.png", str(ROOT / "captures" / "multi-client.pcap"))
    assert code == 0 and png and wanted == [[0]]
    wanted.clear()  # UDP alone: the first connection is none, so the flows
    code, _, png = _plot_bytes(tmp_path, "udp.png", str(ROOT / "captures" / "udp.pcap"))
    assert code == 0 and png and wanted == [[0], None]


# --- the hsviz command exits at once after analyze and plot ---------------------------


def _hsviz(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "handshake_viz", *argv], capture_output=True,
                          timeout=120, cwd=ROOT, **kw)


def test_the_command_writes_everything_before_its_quick_exit(tmp_path):
    # analyze and plot end in os._exit: all their output must be out by then
    whole = _hsviz("analyze", str(ECHO))
    code, out, err = run("analyze", str(ECHO))
    assert (whole.returncode, whole.stdout.decode(), whole.stderr.decode()) == (code, out, err)
    big = _hsviz("analyze", str(ROOT / "captures" / "multi-client.pcap"), "--jsonl")
    assert big.returncode == 0 and big.stdout.endswith(b"\n") and big.stdout.count(b"\n") > 40
    png = tmp_path / "e.png"
    done = _hsviz("plot", str(ECHO), "-o", str(png))
    assert done.returncode == 0 and done.stdout.decode() == f"{png}\n"
    assert png.read_bytes().endswith(b"IEND\xaeB`\x82") and not list(tmp_path.glob(".*"))
    bad = _hsviz("analyze", str(tmp_path / "none.pcap"))
    assert bad.returncode == 2 and bad.stderr.decode() == f"hsviz: {tmp_path / 'none.pcap'}: no such file\n"


def test_a_reader_that_leaves_early_is_not_an_error(tmp_path):
    # `hsviz analyze big.pcap | head -1`, on a ladder ten times what a pipe holds
    many = tmp_path / "many.pcap"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_capture.py"), str(many),
                    "--connections", "300", "--exchanges", "5"], check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "handshake_viz", "analyze", str(many)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first = proc.stdout.readline()
    proc.stdout.close()
    assert first.startswith(b"conn 0: ")
    assert proc.wait(timeout=120) == 0 and proc.stderr.read() == b""

