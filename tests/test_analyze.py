"""analyze.py: one process or two, the same bytes out; errors and early exits either way."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from conftest import make_capture
from handshake_viz import analyze
from handshake_viz.analyze import PARALLEL_MIN_BYTES, analyze_file, choose_jobs
from handshake_viz.errors import CaptureFileError, NoSuchConnection, UsageError, WorkerError

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "captures"
CORPUS = ROOT.parent / "shared" / "corpus" / "traces"


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """300 interleaved connections (15,600 segments), some ports reused."""
    path = tmp_path_factory.mktemp("many") / "many.pcap"
    make_capture(path, 300, 15, seed=7)
    return path


def run(path: Path | str, mode: str = "jsonl", *, jobs: int, want: int | None = None, verify: bool = False):
    out, warnings = io.StringIO(), []
    try:
        analyze_file(str(path), mode, want=want, jobs=jobs, write=out.write, warn=warnings.append,
                     verify_checksums=verify)
        error = None
    except (CaptureFileError, UsageError, WorkerError) as exc:
        error = exc
    return out.getvalue(), warnings, error


def same_both_ways(path: Path | str, mode: str = "jsonl", want: int | None = None, verify: bool = False):
    one = run(path, mode, jobs=1, want=want, verify=verify)
    two = run(path, mode, jobs=2, want=want, verify=verify)
    assert one[0] == two[0], f"{path}: output differs between 1 and 2 processes"
    assert one[1] == two[1]
    assert type(one[2]) is type(two[2]) and str(one[2]) == str(two[2])
    return one


def test_two_processes_write_the_same_bytes(many):
    out, warnings, error = same_both_ways(many)
    assert error is None and not warnings
    assert out.count('"type": "segment"') == 300 * 52
    assert out.count('"type": "connection"') == 300
    # and the single process is the CLI's long-standing output
    from handshake_viz.cli import main

    cli_out = io.StringIO()
    assert main(["analyze", str(many), "--jsonl", "-j", "1"], out=cli_out, err=io.StringIO()) == 0
    assert cli_out.getvalue() == out


@pytest.mark.parametrize("name", sorted(p.name for p in CAPTURES.glob("*.pcap")))
def test_shipped_captures_both_ways(name):
    out, _, error = same_both_ways(CAPTURES / name)
    assert error is None and out
    if name == "udp.pcap":  # the one lesson without TCP: its datagrams, one line each
        assert out.count('"type": "datagram"') == 6 and '"type": "segment"' not in out


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"third-party corpus not found at {CORPUS}")
@pytest.mark.parametrize("verify", [False, True], ids=["", "verifying-checksums"])
def test_corpus_both_ways(verify):
    for trace in [*sorted(CORPUS.iterdir()), *sorted((CORPUS.parent / "batch2" / "traces").iterdir())]:
        same_both_ways(trace, verify=verify)


def test_verifying_checksums_both_ways(many):
    """make_capture leaves every TCP checksum 0: with verification each segment is
    flagged and takes the tracker's general path; one process or two, the same bytes,
    and in every mode the same as the single process's."""
    for mode in ("jsonl", "summary", "ladder"):
        out, warnings, error = same_both_ways(many, mode, verify=True)
        assert error is None and not warnings
        plain = run(many, mode, jobs=1)[0]
        assert out != plain
        if mode == "jsonl":
            assert out.count('"bad-checksum"') == 300 * 52
            segments = [json.loads(line) for line in out.splitlines() if '"segment"' in line]
            for seg in segments:
                seg["analysis"].remove("bad-checksum")
            assert segments == [json.loads(line) for line in plain.splitlines() if '"segment"' in line]


def test_ladder_lines_spill_and_come_back_in_order():
    """The text ladder's lines past the memory budget go to a temporary database and
    come back per connection, as UTF-8 with a newline after each, in the order they were
    added (one by one or in the compiled ladder's batches), whatever was flushed when."""
    from handshake_viz.analyze import LadderSpill

    spill = LadderSpill(budget=50)
    want: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for i in range(200):
        key, line = i % 3 if i % 7 else 1, f"line {i} → " + "x" * (i % 13)
        if i % 5:
            spill.add(key, line)
        else:
            data = (line + "\n").encode()
            spill.extend({key: bytearray(data)}, len(data))
        want[key].append(line)
    assert spill._file is not None, "the budget of 50 bytes was passed: some lines went to disk"
    assert [spill.pop(k) for k in (2, 0, 1)] == ["".join(f"{x}\n" for x in want[k]).encode()
                                                 for k in (2, 0, 1)]
    assert spill.pop(5) == b""
    assert spill.pop(1) == b"", "popped once, forgotten"
    spill.close()


def test_one_connection_both_ways(many):
    out, _, error = same_both_ways(many, want=17)
    assert error is None
    assert out.count('"type": "connection"') == 1 and '"conn": 17,' in out
    assert all('"conn": 17,' in line for line in out.splitlines())


def test_connection_out_of_range_both_ways(many):
    out, _, error = same_both_ways(many, want=300)
    assert isinstance(error, NoSuchConnection) and (error.conn, error.count) == (300, 300)
    assert "no connection 300: the capture has 300 connections" in str(error)
    assert out == ""


def test_broken_record_mid_file_both_ways(many, tmp_path):
    data = bytearray(many.read_bytes())
    # record 5001's captured length set absurdly large: a corrupt file from there on
    pos = 24
    for _ in range(5000):
        caplen = int.from_bytes(data[pos + 8 : pos + 12], "little")
        pos += 16 + caplen
    data[pos + 8 : pos + 12] = (10**9).to_bytes(4, "little")
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    out, _, error = same_both_ways(bad)
    assert isinstance(error, CaptureFileError) and "record 5001" in str(error)
    assert out.count("\n") == 5000  # every segment before the broken record was written


def test_truncated_tail_warns_both_ways(tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((CAPTURES / "echo.pcap").read_bytes()[:-10])
    _, warnings, error = same_both_ways(cut)
    assert error is None and len(warnings) == 1 and "truncated" in warnings[0]


def test_summary_and_ladder_modes_are_the_same_either_way(many):
    for mode in ("summary", "ladder"):
        out, _, error = same_both_ways(many, mode)
        assert error is None and out


def test_child_killed_is_one_clear_error(many, monkeypatch):
    real = analyze.produce

    def dies(path, mode, want=None, **kw):
        for i, item in enumerate(real(path, mode, want, **kw)):
            if i == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            yield item

    monkeypatch.setattr(analyze, "produce", dies)
    out, _, error = run(many, jobs=2)
    assert isinstance(error, WorkerError)
    assert str(error) == f"{many}: the analysing process stopped early (killed by signal 9)"
    assert out.count("\n") == 3 * analyze.BATCH  # what came before was written
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # and the child was reaped


def test_bug_in_child_shows_its_traceback(many, monkeypatch, capfd):
    def broken(path, mode, want=None, **kw):
        raise ValueError("a bug")
        yield  # pragma: no cover

    monkeypatch.setattr(analyze, "produce", broken)
    _, _, error = run(many, jobs=2)
    assert isinstance(error, WorkerError) and "exit status 1" in str(error)
    assert "ValueError: a bug" in capfd.readouterr().err


def test_reader_leaving_early_stops_the_child(many):
    def write(text: str) -> None:
        raise BrokenPipeError

    with pytest.raises(BrokenPipeError):
        analyze_file(str(many), "jsonl", jobs=2, write=write, warn=print)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_choose_jobs(many, tmp_path):
    assert choose_jobs(str(many), "jsonl", None) == 1  # small
    big = tmp_path / "big.pcap"
    with open(big, "wb") as f:
        f.truncate(PARALLEL_MIN_BYTES)
    from handshake_viz import engine

    two_cpus = len(os.sched_getaffinity(0)) >= 2
    with engine.use(False):  # two processes only help the Python tracker
        assert choose_jobs(str(big), "jsonl", None) == (2 if two_cpus else 1)
    with engine.use(True) as compiled:
        if compiled:
            assert choose_jobs(str(big), "jsonl", None) == 1
            assert choose_jobs(str(big), "jsonl", 2) == 2
    assert choose_jobs(str(big), "summary", None) == 1
    assert choose_jobs(str(big), "ladder", None) == 1
    assert choose_jobs(str(tmp_path / "missing.pcap"), "jsonl", None) == 1
    assert choose_jobs(str(big), "summary", 2) == 2
    assert choose_jobs("-", "jsonl", 2) == 1  # standard input cannot be read twice
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert choose_jobs(str(fifo), "jsonl", 2) == 1


def test_cli_rejects_other_job_counts(capsys):
    from handshake_viz.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(CAPTURES / "echo.pcap"), "-j", "3"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_two_processes_on_a_pipe_of_stdout(many):
    """The real thing: a subprocess writing into a pipe, as `hsviz analyze … | jq` does."""
    import subprocess

    one = subprocess.run([sys.executable, "-m", "handshake_viz", "analyze", str(many), "--jsonl",
                          "-j", "1"], capture_output=True, timeout=120)
    two = subprocess.run([sys.executable, "-m", "handshake_viz", "analyze", str(many), "--jsonl",
                          "-j", "2"], capture_output=True, timeout=120)
    assert one.returncode == two.returncode == 0
    assert one.stdout == two.stdout and not two.stderr


def test_file_changing_under_the_parent_is_one_clear_error(many, tmp_path, monkeypatch):
    """The parent decodes the file for itself: if it then holds fewer packets than the
    child tracked (a pcap still being written, then cut), say so; do not misalign."""
    shorter = tmp_path / "shorter.pcap"
    data = many.read_bytes()
    shorter.write_bytes(data[: len(data) // 2])
    full = run(many, jobs=1)[0]
    real, parent = analyze.open_capture, os.getpid()

    def opener(path, **kw):
        return real(path if os.getpid() != parent else shorter, **kw)

    monkeypatch.setattr(analyze, "open_capture", opener)
    out, _, error = run(many, jobs=2)
    assert isinstance(error, CaptureFileError)
    assert str(error) == f"{many}: the file changed while it was read (is it still being written? try -j 1)"
    assert out and full.startswith(out)  # what was written is right, as far as it goes
