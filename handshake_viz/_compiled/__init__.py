"""hsviz's compiled tracker: the tracker's own Python modules, compiled, and a front end.

What is here
------------
* ``<module>.pxd`` for each of ``_build.COMPILED`` (seqnum, seqanalysis, tcpstate,
  zeek, tracked, spill, track): Cython's "augmenting" declarations.  setup.py compiles
  ``handshake_viz/<module>.py`` itself, with these types (C fields for the records,
  C numbers for sequence arithmetic), into the extension ``handshake_viz._compiled.
  <module>``.  The rules exist once, in the ``.py``; a ``.pxd`` only says what type
  each name has.  The compiled modules import each other relatively (``from .zeek
  import ...``), so that compiled ``track`` uses compiled ``zeek``, and everything
  else (``model``, ``checksum``) absolutely, so that the records they make are the
  package's own.  They live under other names than the ``.py`` files, so that a
  ``.so`` never shadows a ``.py``: ``handshake_viz.track`` is always the Python one.
* ``frontend.pyx``, written for Cython: the per-packet loop around the tracker (the
  pcap record walk, the Ethernet/IPv4/TCP decode, the JSON Lines and ladder lines),
  whose Python versions (``pcapio``, ``decode``, ``report``) are built on ``struct``
  and ``%``-formatting that compiled code cannot make fast.

Nothing outside imports this package but :mod:`handshake_viz.engine`, which uses it
only when it was built from the sources beside it (``_build.sources_digest``) and
``HSVIZ_PURE_PYTHON`` is not set.  ``tests/test_differential.py`` holds the compiled
modules and the front end to the Python ones, output for output.
"""
