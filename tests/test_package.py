"""The package's shape, as the one-pipeline redesign set it: which module may know what.

Read from the source (ast and text), not by importing: a rule broken by a lazy import
inside a function is broken too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "handshake_viz"
SOURCES = sorted([*PACKAGE.glob("*.py"), *PACKAGE.glob("_compiled/*.pyx")])

# pcap's magic in both byte orders and resolutions, and pcapng's section header and
# byte-order magic, as numbers or as the bytes on disk
_MAGIC = re.compile(r"a1b2c3d4|d4c3b2a1|a1b23c4d|4d3cb2a1|0a0d0d0a|1a2b3c4d|4d3c2b1a"
                    r"|\\xd4\\xc3\\xb2\\xa1|\\xa1\\xb2\\xc3\\xd4|\\x0a\\x0d\\x0d\\x0a|\\n\\r\\r\\n",
                    re.IGNORECASE)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (top-level or inside a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_only_pcapio_knows_the_capture_formats_magic_numbers():
    knowing = [p.relative_to(PACKAGE).as_posix() for p in SOURCES
               if _MAGIC.search(p.read_text(encoding="utf-8"))]
    assert knowing == ["pcapio.py"]


@pytest.mark.parametrize("module", ["demo.py", "scenarios.py"])
def test_the_lessons_draw_nothing_themselves(module):
    drawn = {m for m in _imports(PACKAGE / module) if m.split(".")[0] == "matplotlib"}
    assert not drawn


def test_capture_runs_no_tracker():
    trackers = {"handshake_viz.track", "handshake_viz.engine", "handshake_viz.engine.Tracker",
                "handshake_viz.pipeline", "handshake_viz.tcpstate"}
    assert not _imports(PACKAGE / "capture.py") & trackers
