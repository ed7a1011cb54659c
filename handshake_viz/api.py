"""The notebook-sized API: ``load`` a capture, look at its connections, plot one.

A thin layer over :mod:`handshake_viz.pipeline`, which builds the :class:`Trace`::

    trace = load("captures/echo.pcap")      # decode -> track -> (calls) align
    conn = trace.connections[0]
    conn.segments, conn.calls, conn.summary
    conn.plot()                              # draw

No analysis happens here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from handshake_viz.pipeline import Connection, Flow, Trace
from handshake_viz.pipeline import load as _load

__all__ = ["Connection", "Flow", "Trace", "capture", "load"]


def load(path: str | Path, *, calls: str | Path | None = None,
         conn: int | Iterable[int] | None = None, infer: bool = True) -> Trace:
    """Decode, track and align a capture file.

    ``calls``: an strace log or a ``.calls.jsonl``; by default ``FILE.calls.jsonl`` beside
    the capture is used when it exists.  ``conn`` keeps only those connections' segments
    in memory (the rest are still tracked for numbering).  Without a call log the calls
    are inferred from the segments (``infer=False`` leaves them out).  UDP datagrams
    are kept as ``trace.flows``.

    >>> trace = load("captures/echo.pcap")                  # doctest: +SKIP
    >>> trace.connections[0].summary.conn_state              # doctest: +SKIP
    'SF'
    """
    return _load(path, calls=calls, conn=conn, infer=infer)


def capture(port: int, *, count: int | None = None, timeout: float | None = None,
            connections: int | None = None, iface: str = "lo",
            output: str | Path | None = None,
            on_ready: Callable[[], None] | None = None) -> Trace:
    """Capture live on ``iface`` (root or CAP_NET_RAW) and return the loaded Trace.

    ``on_ready`` is called once every matching segment from then on will be caught
    (start the client there, not after a guessed delay).

    >>> trace = capture(8080, count=50, timeout=10)           # doctest: +SKIP
    """
    from handshake_viz.capture import LiveCapture
    from handshake_viz.pipeline import LiveTracking

    tracking = LiveTracking(connections=connections)
    live = LiveCapture(port, iface=iface, output=output, count=count, timeout=timeout,
                       on_ready=on_ready, on_packet=tracking.packet, handle_signals=False)
    tracking.stop = live.stop
    result = live.run()
    return _load(result.output)
