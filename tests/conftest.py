"""What every test module shares: the rule for tests that need privileges or tools.

Outside CI a test whose needs are missing (root / CAP_NET_RAW, strace, a compiler)
is skipped with the reason; in CI (``CI=true``), where ``.ci/run`` installs
everything and runs as root, the same miss is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The user a capture drops to in the tests (``SUDO_UID``): Debian's ``nobody``.
NOBODY = 65534


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require(condition: bool, why: str) -> None:
    """Skip outside CI, fail in CI, when ``condition`` does not hold."""
    if not condition:
        if in_ci():
            pytest.fail(f"CI must be able to run this test: {why}", pytrace=False)
        pytest.skip(why)


def can_capture() -> bool:
    """True when this process may open a packet socket (root or CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except (PermissionError, OSError):
        return False
    return True


@pytest.fixture
def live() -> None:
    """Capture tests need CAP_NET_RAW: skip outside CI, fail loudly in CI."""
    require(can_capture(), "needs root or CAP_NET_RAW to capture (runs in CI)")


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory that user NOBODY owns, as a sudo user's own directory would be:
    pytest's ``tmp_path`` lies under a root-only directory the dropped user cannot
    enter.  Needs root (skip outside CI, fail in CI)."""
    require(os.geteuid() == 0, "needs root to make a directory for another user (runs in CI)")
    path = Path(tempfile.mkdtemp(prefix="hsviz-test-"))
    os.chmod(path, 0o755)
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def benchmark_module(name: str):  # type: ignore[no-untyped-def]
    """A module of benchmarks/ (not a package: its scripts run by path), for the
    helpers the tests share with the benchmarks."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def make_capture(path, connections: int, exchanges: int, **kw) -> int:  # type: ignore[no-untyped-def]
    """benchmarks/make_capture.py's ``generate``: a synthetic capture of many
    interleaved connections, made by this project (the benchmarks' own generator)."""
    return int(benchmark_module("make_capture").generate(path, connections, exchanges, **kw))
