"""A capture's frames by number: their bytes, their fields, and scapy packets of them.

hsviz decodes frames itself (:mod:`handshake_viz.decode`, the fast path every
analysis takes); this module is for looking closer at a few of them afterwards:

* :func:`read_frames` -- the raw :class:`~handshake_viz.pcapio.Frame` records of
  chosen frame numbers, in one pass over the file;
* :func:`show_frame` -- one TCP frame taken apart field by field
  (:mod:`handshake_viz.wire`, ``hsviz show``), with what tracking knows of it;
* :func:`to_scapy`, :func:`packet_list` -- frames handed over to scapy
  (``Ether/IP/TCP/Raw``), where Python users go deeper: ``.show()``,
  ``hexdump()``, ``wrpcap()``.  scapy is imported here only, never on the
  analysis path;
* :func:`remember`, :func:`capture_of` -- which capture file a Segment came from,
  so that ``seg.packet()`` needs no file name: :func:`handshake_viz.pipeline.load`
  remembers each Trace it makes (weakly: a Trace nobody holds is forgotten).
"""

from __future__ import annotations

import bisect
import os
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handshake_viz.errors import UsageError
from handshake_viz.model import Datagram, Segment
from handshake_viz.pcapio import CaptureFile, Frame

if TYPE_CHECKING:  # pragma: no cover
    from handshake_viz.pipeline import Trace
    from handshake_viz.wire import WireView

__all__ = ["capture_of", "packet_list", "read_frames", "remember", "segment_at", "show_frame",
           "to_scapy", "packet_of"]

PathLike = str | os.PathLike[str]


def read_frames(path: PathLike, wanted: Iterable[int] | None = None) -> dict[int, Frame]:
    """The frames numbered ``wanted`` (every frame when None), read in one pass that
    stops after the last one wanted.  Frames the file does not have are missing
    from the result."""
    from handshake_viz.decode import LINKTYPES
    from handshake_viz.pcapio import open_file

    want = None if wanted is None else set(wanted)
    last = max(want) if want else 0
    out: dict[int, Frame] = {}
    if want is not None and not want:
        return out
    capture: CaptureFile = open_file(path, supported=LINKTYPES)
    with capture:
        for fr in capture.frames():
            if want is None or fr.frame in want:
                out[fr.frame] = fr
                if want is not None and fr.frame >= last:
                    break
    return out


def segment_at(path: PathLike, frame: int) -> Segment | None:
    """Frame ``frame`` of the capture as tracked (label, relative numbers, states): the
    file is tracked up to that frame only.  None when that frame is no TCP segment."""
    from handshake_viz.decode import open_capture
    from handshake_viz.engine import Tracker

    tracker: Tracker = Tracker()
    reader = open_capture(path)
    with reader:
        for seg in reader.records(tracker.feed_fields):
            if seg.frame >= frame:
                return seg if seg.frame == frame else None
    return None


def _count_frames(path: PathLike) -> int:
    return len(read_frames(path))


def show_frame(path: PathLike, frame: int) -> WireView:
    """Frame ``frame`` of the capture taken apart field by field, with its tracking.
    UsageError (one line) for a frame number the capture does not have, NotTcp for
    a frame that is no TCP segment."""
    from handshake_viz.wire import NotTcp, dissect

    if frame < 1:
        raise UsageError(f"{os.fspath(path)}: frame {frame}: frame numbers start at 1")
    found = read_frames(path, [frame]).get(frame)
    if found is None:
        n = _count_frames(path)
        raise UsageError(f"{os.fspath(path)}: frame {frame} out of range (the capture has "
                         f"{n} frame{'s' if n != 1 else ''})")
    try:
        dissect(found)  # not TCP: say so before tracking the file up to it
    except NotTcp as exc:
        raise NotTcp(f"{os.fspath(path)}: {exc}") from None
    return dissect(found, segment_at(path, frame))


# ==========================================================================================
# scapy
# ==========================================================================================


def to_scapy(frame: Frame) -> Any:
    """A frame as a scapy packet of its link type (``Ether/IP/TCP/Raw`` on Ethernet),
    with the capture's time."""
    from scapy.config import conf
    from scapy.layers import inet, inet6, l2  # noqa: F401  (registers the link types)
    from scapy.packet import Raw

    cls: Any = conf.l2types.get(frame.linktype)
    if cls is None and frame.linktype == 14:  # DLT_RAW on OpenBSD: IP, either version
        cls = conf.l2types.get(101)
    pkt: Any = (cls or Raw)(frame.data)
    pkt.time = frame.ts
    pkt.wirelen = frame.wirelen
    return pkt


def packet_list(path: PathLike, wanted: Iterable[int] | None = None) -> Any:
    """The capture's frames (or those numbered ``wanted``) as a scapy ``PacketList``."""
    from scapy.plist import PacketList

    frames = read_frames(path, wanted)
    return PacketList([to_scapy(frames[n]) for n in sorted(frames)], name=Path(path).name)


# ==========================================================================================
# Which capture a record came from
# ==========================================================================================

_TRACES: list[weakref.ref[Trace]] = []
_KEEP = 16  # traces remembered (the most recent)


def remember(trace: Trace) -> None:
    """Note that ``trace``'s records came from ``trace.path`` (see :func:`capture_of`)."""
    if trace.path is None:
        return
    _TRACES[:] = [r for r in _TRACES if r() is not None][-(_KEEP - 1):]
    _TRACES.append(weakref.ref(trace))


def _holds(trace: Trace, rec: Segment | Datagram) -> bool:
    if isinstance(rec, Segment):
        owners: Iterable[Any] = (c.segments for c in trace.connections if c.conn == rec.conn)
    else:
        owners = (f.datagrams for f in trace.flows if f.flow == rec.flow)
    for records in owners:
        i = bisect.bisect_left(records, rec.frame, key=lambda r: r.frame)
        if i < len(records) and records[i] == rec:
            return True
    return False


def capture_of(rec: Segment | Datagram) -> Path:
    """The capture file ``rec`` was read from: that of the most recently loaded Trace
    (still in use) that holds this very record.  UsageError when none does."""
    for ref in reversed(_TRACES):
        trace = ref()
        if trace is not None and trace.path is not None and _holds(trace, rec):
            return trace.path
    raise UsageError(f"frame {rec.frame}: which capture it came from is not known here "
                     "(load the capture with hsviz.load, or pass the file: seg.packet('x.pcap'))")


def packet_of(rec: Segment | Datagram, capture: PathLike | None = None) -> Any:
    """``rec``'s frame as a scapy packet (see :meth:`Segment.packet`)."""
    path = capture_of(rec) if capture is None else capture
    found = read_frames(path, [rec.frame]).get(rec.frame)
    if found is None:
        raise UsageError(f"{os.fspath(path)}: no frame {rec.frame}")
    return to_scapy(found)
