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
from types import ModuleType
from typing import Any

from handshake_viz import _build

__all__ = ["ENV", "IMPLEMENTATION", "FileStore", "Tracker", "compiled", "frontend"]

#: The environment variable that forces the pure-Python modules.
ENV = "HSVIZ_PURE_PYTHON"


def _load() -> tuple[ModuleType | None, ModuleType | None, str]:
    """(compiled track, compiled front end, description), or Nones and why not."""
    if os.environ.get(ENV, "") not in ("", "0"):
        return None, None, f"pure Python ({ENV} is set)"
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


_track, frontend, IMPLEMENTATION = _load()
#: True when the compiled tracker and front end run.
compiled = _track is not None

if _track is not None:
    from handshake_viz._compiled.spill import FileStore

    Tracker: Any = _track.Tracker
else:
    from handshake_viz.spill import FileStore  # noqa: F401
    from handshake_viz.track import Tracker  # noqa: F401  (the reference)
