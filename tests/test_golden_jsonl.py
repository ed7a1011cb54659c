"""``hsviz analyze --jsonl`` output does not change by accident.

``tests/data/jsonl-before-redesign.json`` holds the SHA-256 of the output of
every capture in ``captures/`` and in the corpus's first batch, recorded before
the one-pipeline redesign (commit e33c1f8, one process): the redesign promised
the same bytes, UDP ``"datagram"`` lines aside (they are new, and removed before
hashing).  A change that means to alter the output on purpose records the new
hashes with ``python tests/test_golden_jsonl.py --update`` and says why in its
commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pytest

from handshake_viz.cli import main

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "jsonl-before-redesign.json"
CORPUS = REPO.parent / "shared" / "corpus" / "traces"


def _files() -> dict[str, Path]:
    files = {p.name: p for p in sorted((REPO / "captures").glob("*.pcap"))}
    if CORPUS.is_dir():
        files.update({p.name: p for p in sorted(CORPUS.iterdir())})
    return files


def _digest(path: Path, jobs: str) -> str:
    out = io.StringIO()
    assert main(["analyze", str(path), "--jsonl", "-j", jobs], out=out, err=io.StringIO()) == 0
    kept = "".join(line for line in out.getvalue().splitlines(keepends=True)
                   if not line.startswith('{"type": "datagram"'))
    return hashlib.sha256(kept.encode()).hexdigest()


def _golden() -> dict[str, str]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(_golden()))
def test_jsonl_bytes_as_recorded(name: str) -> None:
    path = _files().get(name)
    if path is None:
        pytest.skip(f"{name}: the third-party corpus is not at {CORPUS}")
    want = _golden()[name]
    assert _digest(path, "1") == want, f"hsviz analyze {name} --jsonl changed"
    assert _digest(path, "2") == want, f"hsviz analyze {name} --jsonl -j 2 changed"


def test_every_capture_has_a_recorded_output() -> None:
    missing = sorted(set(_files()) - set(_golden()) - {"udp.pcap"})  # udp.pcap: new datagram lines only
    assert not missing, f"record them: python tests/test_golden_jsonl.py --update ({missing})"


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    GOLDEN.write_text(json.dumps({name: _digest(p, "1") for name, p in _files().items()
                                  if name != "udp.pcap"}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
