"""Which implementation of the tracker runs: compiled, or pure Python.

hsviz's tracking rules are written once, in Python (``track``, ``tcpstate``,
``seqanalysis``, ``zeek``, ``tracked``, ``spill``, ``seqnum``).  ``pip install`` also
compiles those same files with Cython, typed by ``_compiled/*.pxd``, into
``handshake_viz._compiled.*`` (other names than the Python modules', so that the
Python modules are always what they say), together with a compiled front end
(``_compiled/frontend.pyx``: the record walk, the commonest frame's decoding, the
output lines).  This module picks one:

* the compiled modules, when they were built, and built from the sources beside
  them (a build older than an edited ``track.py`` would follow old rules);
* else the Python modules, which are the reference: everything works the same on
  them, slower.

``HSVIZ_PURE_PYTHON=1`` in the environment forces the Python modules.
:data:`IMPLEMENTATION` says which runs and why (``hsviz --version`` prints it).

Everything that tracks a whole file asks here for its :data:`Tracker` (and the
:data:`FileStore` it puts finished connections in) and, compiled, for :data:`frontend`; the modules that use the Python tracker itself (the tests of the
rules, the live capture) import ``handshake_viz.track``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from handshake_viz import _build

__all__ = ["ENV", "IMPLEMENTATION", "FileStore", "Tracker", "compiled", "frontend", "use"]

#: The environment variable that forces the pure-Python modules.
ENV = "HSVIZ_PURE_PYTHON"


def _compiled_modules() -> tuple[ModuleType | None, ModuleType | None, str]:
    """(compiled track, compiled front end, description), or Nones and why not
    (whatever the environment says)."""
    try:
        from handshake_viz._compiled import frontend as front
        from handshake_viz._compiled import track as ctrack
    except ImportError as exc:
        missing = str(exc).startswith(("No module named", "cannot import name"))
        why = "is not built" if missing else f"does not load ({exc})"
        return None, None, (f"pure Python (the compiled tracker {why}: pip install -e . builds it "
                            "where a C compiler and Python's headers are)")
    here = os.path.dirname(os.path.abspath(__file__))
    if front.SOURCES_DIGEST != _build.sources_digest(here):
        return None, None, ("pure Python (the compiled tracker was built from other sources: "
                            "pip install -e . builds it again)")
    return ctrack, front, f"compiled (Cython {front.CYTHON_VERSION})"


def _load() -> tuple[ModuleType | None, ModuleType | None, str]:
    """:func:`_compiled_modules`, unless :data:`ENV` asks for pure Python."""
    if os.environ.get(ENV, "") not in ("", "0"):
        return None, None, f"pure Python ({ENV} is set)"
    return _compiled_modules()


def _select(track: ModuleType | None, front: ModuleType | None, description: str) -> None:
    """Make this module's names those of one implementation."""
    global Tracker, FileStore, frontend, compiled, IMPLEMENTATION
    if track is not None:
        from handshake_viz._compiled.spill import FileStore as store
    else:
        from handshake_viz.spill import FileStore as store
        from handshake_viz.track import Tracker as python_tracker
    Tracker = track.Tracker if track is not None else python_tracker
    FileStore = store
    frontend = front
    compiled = track is not None
    IMPLEMENTATION = description


@contextmanager
def use(compiled_path: bool) -> Iterator[bool]:
    """Within the block, run the compiled modules (``True``, whatever :data:`ENV` says)
    or the Python ones (``False``); yields whether the one asked for is there (the
    compiled may not be built).  For the differential tests, which compare the two
    in one process; everything that tracks a file looks its names up here at call time."""
    before = (Tracker, FileStore, frontend, compiled, IMPLEMENTATION)
    chosen = _compiled_modules() if compiled_path else (None, None, "pure Python")
    try:
        if compiled_path and chosen[0] is None:
            yield False
        else:
            _select(*chosen)
            yield True
    finally:
        global_names = ("Tracker", "FileStore", "frontend", "compiled", "IMPLEMENTATION")
        globals().update(zip(global_names, before))


#: The tracker class that runs (compiled or Python), its FileStore, and the compiled
#: front end (None on pure Python); True when the compiled tracker and front end run;
#: which runs and why (``hsviz --version``).
Tracker: Any
FileStore: Any
frontend: ModuleType | None
compiled: bool
IMPLEMENTATION: str
_select(*_load())
