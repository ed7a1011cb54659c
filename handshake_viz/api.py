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
         conn: int | Iterable[int] | None = None, infer: bool = True,
         kernel: str | Path | bool | None = None, verify_checksums: bool = False) -> Trace:
    """Decode, track and align a capture file.

    ``calls``: an strace log or a ``.calls.jsonl``; by default ``FILE.calls.jsonl`` beside
    the capture is used when it exists.  ``conn`` keeps only those connections' segments
    in memory (the rest are still tracked for numbering).  Without a call log the calls
    are inferred from the segments (``infer=False`` leaves them out).  UDP datagrams
    are kept as ``trace.flows``.  ``kernel``: the kernel's events (``hsviz capture
    --kernel``); by default ``FILE.kernel.jsonl`` beside the capture when it exists
    (``trace.kernel``, ``conn.kernel``); False ignores it.  ``verify_checksums``
    verifies every TCP checksum: a segment that fails gets ``bad-checksum`` in its
    ``analysis`` (``checksum-offloaded`` when the sending host left the sum to its
    network card, as on every loopback capture), and the Zeek view ignores it as Zeek
    does.  Off by default: it costs time, and on loopback every segment is offloaded.

    >>> trace = load("captures/echo.pcap")                  # doctest: +SKIP
    >>> trace.connections[0].summary.conn_state              # doctest: +SKIP
    'SF'
    """
    return _load(path, calls=calls, conn=conn, infer=infer, kernel=kernel,
                 verify_checksums=verify_checksums)


def capture(port: int, *, count: int | None = None, timeout: float | None = None,
            connections: int | None = None, iface: str = "lo",
            output: str | Path | None = None,
            on_ready: Callable[[], None] | None = None, kernel: bool = False) -> Trace:
    """Capture live on ``iface`` (root or CAP_NET_RAW) and return the loaded Trace.

    ``on_ready`` is called once every matching segment from then on will be caught
    (start the client there, not after a guessed delay).  ``kernel`` also records the
    kernel's events for the port (root and tracefs; KernelEventsUnavailable says why
    not) and writes them beside the pcap.

    >>> trace = capture(8080, count=50, timeout=10)           # doctest: +SKIP
    """
    from handshake_viz.capture import LiveCapture
    from handshake_viz.pipeline import LiveTracking

    tracking = LiveTracking(connections=connections)
    live = LiveCapture(port, iface=iface, output=output, count=count, timeout=timeout,
                       on_ready=on_ready, on_packet=tracking.packet, handle_signals=False)
    tracking.stop = live.stop
    if not kernel:
        return _load(live.run().output, kernel=False)
    from handshake_viz.kernel import kernel_path_for
    from handshake_viz.kernelio import KernelRecorder, write_kernel_jsonl

    with KernelRecorder(port) as recorder:  # started before the capture is ready
        pcap = live.run().output
        write_kernel_jsonl(recorder.stop(), kernel_path_for(pcap))
    return _load(pcap)
