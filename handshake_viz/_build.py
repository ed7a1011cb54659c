"""Which of hsviz's modules are compiled, and the digest that ties a build to them.

Read by ``setup.py`` (before the package can be imported: this module imports
nothing of hsviz) and by :mod:`handshake_viz.engine`, which runs the compiled
modules only when they were built from the sources beside them: a compiled copy
older than an edited ``track.py`` would follow old rules.
"""

from __future__ import annotations

import os
import zlib

#: The tracker's modules compiled as they are (Cython reads the ``.py`` with the typed
#: declarations of ``_compiled/<name>.pxd``), in import order.
COMPILED = ("seqnum", "seqanalysis", "tcpstate", "zeek", "tracked", "spill", "track")
#: The compiled front end: ``_compiled/frontend.pyx``, written for Cython alone.
FRONT_END = "frontend"


def source_files(package_dir: str) -> list[str]:
    """Every file a build is made from."""
    compiled = os.path.join(package_dir, "_compiled")
    return ([os.path.join(package_dir, f"{m}.py") for m in COMPILED]
            + [os.path.join(compiled, f"{m}.pxd") for m in COMPILED]
            + [os.path.join(compiled, f"{FRONT_END}.pyx")])


def sources_digest(package_dir: str) -> str:
    """A digest of :func:`source_files` (their sizes and a CRC-32 of names and bytes:
    it tells an edited source from the one a build was made of, which is all it is
    for, and costs no hashlib at every start), or "" if one is missing."""
    crc, sizes = 0, []
    for path in source_files(package_dir):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        crc = zlib.crc32(data, zlib.crc32(os.path.basename(path).encode(), crc))
        sizes.append(len(data))
    return f"{crc:08x}-{sum(sizes):x}-{len(sizes)}"
