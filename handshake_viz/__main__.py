"""``python -m handshake_viz`` is the same as the ``hsviz`` command."""

from handshake_viz.cli import entry

entry()
