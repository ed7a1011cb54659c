"""hsviz: see every TCP segment of a conversation, and the socket call that caused it.

The stages, each a module; ``pipeline`` runs them, every view reads its Trace::

    pcapio -> decode -> track / flows -> align -> Trace -> report | layout -> draw
    (records) (Packet)  (Segment, Datagram) (Call)

The public names: every exception (:mod:`handshake_viz.errors`) and every record and
enum (:mod:`handshake_viz.model`), each module's ``__all__`` whole, then the tracker and
the notebook API.
"""


__version__ = "0.1.0"

from handshake_viz import errors, model
from handshake_viz.errors import *  # noqa: F403  (errors.__all__)
from handshake_viz.model import *  # noqa: F403  (model.__all__)
from handshake_viz.engine import Tracker
# The submodule handshake_viz.capture is imported before the function of the same name
# is bound: importing a submodule sets it as a package attribute, and doing it first
# means the public ``hv.capture(...)`` function is the attribute that stays.
import importlib as _importlib  # noqa: E402

_importlib.import_module("handshake_viz.capture")
from handshake_viz.api import Connection, Flow, Trace, capture, load  # noqa: E402

__all__ = [
    "Connection",
    "Flow",
    "Trace",
    "Tracker",
    "__version__",
    "capture",
    "load",
    "plot_connection",
    "plot_trace",
    "render_trace",
]
__all__ += errors.__all__
__all__ += model.__all__
__all__.sort()


def __getattr__(name: str) -> object:
    # matplotlib is imported only when a diagram is drawn: `hsviz analyze` starts fast.
    if name in ("plot_connection", "plot_trace", "render_trace"):
        from handshake_viz import draw

        return getattr(draw, name)
    raise AttributeError(f"module 'handshake_viz' has no attribute {name!r}")
