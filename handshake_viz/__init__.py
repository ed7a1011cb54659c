"""hsviz: see every TCP segment of a conversation, and the socket call that caused it.

The stages, each a module::

    decode / capture  ->  track  ->  align  ->  layout -> draw
    (Packet records)    (Segment)   (Call)     (the sequence diagram)
"""

from __future__ import annotations

__version__ = "0.1.0"

from handshake_viz.errors import (
    CaptureError,
    CaptureFileError,
    HsvizError,
    InputError,
    OutputError,
    PermissionDeniedError,
    TraceError,
    TraceFileError,
    UsageError,
)
from handshake_viz.model import (
    Analysis,
    Call,
    ConnectionSummary,
    Direction,
    Endpoint,
    Flag,
    Label,
    Packet,
    Phase,
    Segment,
    TcpOptions,
    TcpState,
)
from handshake_viz.track import Tracker

__all__ = [
    "Analysis",
    "Call",
    "CaptureError",
    "CaptureFileError",
    "ConnectionSummary",
    "Direction",
    "Endpoint",
    "Flag",
    "HsvizError",
    "InputError",
    "Label",
    "OutputError",
    "Packet",
    "PermissionDeniedError",
    "Phase",
    "Segment",
    "TcpOptions",
    "TcpState",
    "TraceError",
    "TraceFileError",
    "Tracker",
    "UsageError",
    "__version__",
]
