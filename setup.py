"""Builds hsviz's compiled tracker when it can; installs the pure-Python package when not.

pyproject.toml holds the package's metadata; this file adds only the optional C
extensions (see handshake_viz/_compiled/__init__.py): Cython compiles the tracker's
own modules (``handshake_viz/track.py`` and the five beside it) into
``handshake_viz._compiled.*``, and the small front end written for it.  Without a C
compiler or Python's headers, with Cython missing, or with ``HSVIZ_PURE_PYTHON=1``
set, ``pip install`` still succeeds, says why in one warning, and hsviz runs the
Python modules (``hsviz --version`` says which).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "handshake_viz"))
from _build import COMPILED, FRONT_END, sources_digest  # noqa: E402  (the package's own list)

DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,  # the types are the .pxd files', not the annotations'
    "binding": True,  # introspectable signatures, as the Python functions have
    "embedsignature": True,
}


def _warn(why: str) -> None:
    print(f"hsviz: not building the compiled tracker ({why}); hsviz will run on pure Python",
          file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: an extension that does not build is left
    out (hsviz then runs on pure Python, and ``hsviz --version`` says so)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler, no headers, …: not fatal
            _warn(f"{type(exc).__name__}: {exc}")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _warn(f"{ext.name}: {type(exc).__name__}: {exc}")


def extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("HSVIZ_PURE_PYTHON", "") not in ("", "0"):
        _warn("HSVIZ_PURE_PYTHON is set")
        return []
    try:
        from Cython import __version__ as cython_version
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:
        _warn(f"Cython is not installed: {exc}")
        return []
    here = os.path.dirname(os.path.abspath(__file__))
    digest = sources_digest(os.path.join(here, "handshake_viz"))
    exts = [Extension(f"handshake_viz._compiled.{m}", [f"handshake_viz/{m}.py"]) for m in COMPILED]
    exts.append(Extension(f"handshake_viz._compiled.{FRONT_END}",
                          [f"handshake_viz/_compiled/{FRONT_END}.pyx"],
                          define_macros=[("HSVIZ_SOURCES_DIGEST", f'"{digest}"'),
                                         ("HSVIZ_CYTHON_VERSION", f'"{cython_version}"')]))
    # Cython does not see that a module depends on its .pxd here (the .pxd is not beside
    # the .py): any change to the sources rebuilds all of them.
    stamp = os.path.join(here, "build", "cython", "sources.digest")
    try:
        with open(stamp) as f:
            force = f.read() != f"{digest} {cython_version}"
    except OSError:
        force = True
    try:
        built = cythonize(exts, build_dir="build/cython", compiler_directives=DIRECTIVES,
                          quiet=True, force=force)
    except Exception as exc:  # noqa: BLE001 - a Cython error leaves the Python path
        _warn(f"Cython failed: {exc}")
        return []
    with open(stamp, "w") as f:
        f.write(f"{digest} {cython_version}")
    return built  # type: ignore[no-any-return]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
