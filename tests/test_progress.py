"""hsviz analyze's progress line: on a terminal only, erased before the output's end.

The line waits a second before it shows (``HSVIZ_PROGRESS_DELAY`` shortens that here:
no test depends on how fast anything runs)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import make_capture
from handshake_viz.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    """A few megabytes: the reader reads it in several chunks."""
    path = tmp_path_factory.mktemp("progress") / "p.pcap"
    make_capture(path, 200, 15, seed=3)
    return path


def _run(args: list[str], *, stderr_tty: bool, stdout_tty: bool = False, pure: bool = False,
         delay: str | None = "0") -> tuple[int, bytes, bytes]:
    """Run hsviz with stderr (and stdout) on a pseudo-terminal or a file: (exit status,
    what reached stdout, what reached stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HSVIZ_PURE_PYTHON", "HSVIZ_PROGRESS_DELAY")}
    if pure:
        env["HSVIZ_PURE_PYTHON"] = "1"
    if delay is not None:
        env["HSVIZ_PROGRESS_DELAY"] = delay
    master, slave = pty.openpty()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "handshake_viz", *args],
                                    stdout=slave if stdout_tty else out,
                                    stderr=slave if stderr_tty else err, env=env, cwd=ROOT)
            os.close(slave)
            tty = b""
            while True:  # read the terminal until the child is gone
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # EIO: no writer left
                        chunk = b""
                    tty += chunk
                    if chunk:
                        continue
                if proc.poll() is not None and not ready:
                    break
                if ready:  # EOF or EIO
                    break
            status = proc.wait(60)
        finally:
            os.close(master)
        out.seek(0)
        err.seek(0)
        return (status, tty if stdout_tty else out.read(), tty if stderr_tty else err.read())


@pytest.mark.parametrize("pure", [False, True], ids=["default", "pure-python"])
@pytest.mark.parametrize("mode", ["--summary", "--jsonl", "--ladder"])
def test_a_terminal_sees_packets_per_second_share_and_eta(capture, mode, pure):
    args = ["analyze", str(capture)] + ([] if mode == "--ladder" else [mode])
    status, out, err = _run(args, stderr_tty=True, pure=pure)
    assert status == 0, err
    text = err.decode()
    assert "packets/s" in text and "% of the file" in text and "ETA" in text, text
    assert text.startswith("\r") and text.endswith("\r\x1b[K")  # redrawn in place, then erased
    # the output is what it is without the line
    status, plain, _ = _run(args, stderr_tty=False, pure=pure)
    assert out == plain


def test_nothing_when_stderr_is_not_a_terminal(capture):
    status, out, err = _run(["analyze", str(capture), "--summary"], stderr_tty=False)
    assert status == 0 and err == b"" and out


def test_nothing_before_the_delay(capture):
    status, _, err = _run(["analyze", str(capture), "--summary"], stderr_tty=True, delay="3600")
    assert status == 0 and err == b""


def test_nothing_when_the_output_goes_to_the_same_terminal(capture):
    status, out, _ = _run(["analyze", str(capture), "--summary"], stderr_tty=True, stdout_tty=True)
    assert status == 0
    assert b"packets/s" not in out and b"conn 0:" in out


def test_warnings_come_after_the_line_is_erased(capture, tmp_path):
    cut = tmp_path / "cut.pcap"
    data = capture.read_bytes()
    cut.write_bytes(data[: len(data) - 7])  # the last record cut short: one warning
    status, _, err = _run(["analyze", str(cut), "--summary"], stderr_tty=True)
    assert status == 0
    text = err.decode()
    assert "warning:" in text and "packets/s" in text
    before = text[: text.index("hsviz: warning:")]
    assert before.endswith("\r\x1b[K")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_terminals_only():
    assert Progress.on(io.StringIO()) is None
    assert Progress.on(_Terminal()) is not None
    assert Progress.on(_Terminal(), _Terminal()) is None
    assert Progress.on(_Terminal(), io.StringIO()) is not None


def test_a_pipe_has_a_rate_but_no_share():
    line = Progress(_Terminal()).line(500_000, 2.0)
    assert line == "hsviz: 500,000 packets, 250,000 packets/s"
