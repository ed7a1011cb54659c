"""One way through the stages: a capture (file, live, replay) becomes a :class:`Trace`.

::

    frames --decode--> Packet / UdpPacket --track / flows--> Segment / Datagram --+
    strace log, calls.jsonl --trace--> Call --------align (else infer)-------------+--> Trace
    X.kernel.jsonl --kernel--> kernel events ------kerneljoin (addresses, ports)-----+

Every view reads what this module makes: the text ladder and JSONL (``report``,
``analyze``), the diagram (``layout`` then ``draw``), the notebook (``api``), the
annotated pcapng (``export``), the demo and the traced capture (``session``).  No
other module chains decode, track and align, and only here is it decided which
calls a connection shows: the traced ones when a call log has any for it, else
calls inferred from its segments (marked ``inferred``), never a mixture.  Kernel
events (``X.kernel.jsonl`` beside ``X.pcap``, written by ``hsviz capture --kernel``)
are joined here too: ``Trace.kernel`` and each ``Connection.kernel``.

* :func:`load` -- a capture file (and the call log beside it) as a whole Trace;
* :func:`stream` -- a capture file decoded and tracked record by record, for
  ``hsviz analyze`` on files too large to hold (no calls: alignment needs whole
  connections);
* :class:`LiveTracking` -- packets from a live capture or a replay, tracked as
  they arrive, and the Trace once it stops (:func:`trace_of_segments`).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handshake_viz.errors import CaptureFileError, InputError, NoSuchConnection, TraceFileError, UsageError
from handshake_viz.model import (
    Call,
    ConnectionSummary,
    Datagram,
    FlowSummary,
    Packet,
    Segment,
    UdpPacket,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from handshake_viz.explain import Explanation
    from handshake_viz.html import Page

    from handshake_viz.decode import CaptureReader
    from handshake_viz.flows import FlowTracker
    from handshake_viz.kernel import KernelLog
    from handshake_viz.kerneljoin import KernelConnection, KernelView
    from handshake_viz.track import Tracker

__all__ = [
    "Connection",
    "Flow",
    "LiveTracking",
    "Trace",
    "calls_file_for",
    "kernel_file_for",
    "load",
    "stream",
    "trace_of_segments",
    "walk_compiled",
]


# ======================================================================================
# The records every view reads
# ======================================================================================


#: The DataFrame's integer columns that always have a value (``rel_ack`` may not).
_INT_COLUMNS = ("frame", "conn", "sport", "dport", "seq", "ack", "rel_seq", "len", "win")


@dataclass(frozen=True)
class Connection:
    """One TCP connection of a trace: its summary, labelled segments and socket calls
    (traced when a call log had any for it, else inferred and marked so).

    >>> conn = load("captures/echo.pcap").connections[0]     # doctest: +SKIP
    >>> [s.label.value for s in conn.segments][:3]            # doctest: +SKIP
    ['SYN', 'SYN-ACK', 'ACK']
    """

    summary: ConnectionSummary
    segments: tuple[Segment, ...]
    calls: tuple[Call, ...] = ()
    #: The trace's calls on no connection (a listener's bind, a bind that failed on
    #: this connection's port): what :meth:`explain` needs beyond the connection.
    others: tuple[Call, ...] = field(default=(), repr=False, compare=False)
    kernel: KernelConnection | None = None  # the kernel's account, when X.kernel.jsonl was there

    @property
    def conn(self) -> int:
        return self.summary.conn

    def explain(self) -> Explanation:
        """What happened, in words: the numbered story, the findings (data: kind,
        frames, calls, numbers) and every call's timing; prints as text, renders as
        HTML in a notebook, ``.text("zh")`` in Chinese, ``.to_json()`` as data.

        >>> conn.explain().findings                               # doctest: +SKIP
        (Finding(kind=<FindingKind.REFUSED: 'refused'>, ...),)
        """
        from handshake_viz.explain import explain_connection

        return explain_connection(self, others=self.others)

    @property
    def calls_inferred(self) -> bool:
        """True when the calls were reconstructed from the segments, not traced."""
        return bool(self.calls) and all(c.inferred for c in self.calls)

    def plot(self, *, ax: Axes | None = None, time: str = "ordered", max_rows: int = 60,
             **style: Any) -> Axes:
        """Draw the sequence diagram on ``ax`` (or a new figure) and return the Axes.

        >>> ax = conn.plot(max_rows=0)                            # doctest: +SKIP
        """
        from handshake_viz.draw import plot_connection

        return plot_connection(self.segments, self.summary, self.calls, ax=ax, time=time,
                               max_rows=max_rows, **style)

    def show(self, *, time: str = "ordered", max_rows: int = 60) -> Page:
        """The interactive diagram, inline in Jupyter: hover a segment for its record,
        payload and header bytes, a call for its strace line and timing; zoom, open
        folds, step with the arrow keys.  Where scripts are not allowed the notebook
        shows the static picture.  ``.save("x.html")`` writes the page.

        >>> conn.show()                                           # doctest: +SKIP
        """
        from handshake_viz.frames import capture_of
        from handshake_viz.html import build_page

        try:
            capture: Path | None = capture_of(self.segments[0]) if self.segments else None
        except UsageError:
            capture = None  # not loaded from a file: the page shows no header bytes
        return build_page([self], calls=self.others, capture=capture, time=time,  # type: ignore[arg-type]
                          max_rows=max_rows, png=True)

    def to_dataframe(self) -> Any:
        """The segments as a pandas DataFrame, one row per segment (needs pandas).

        >>> conn.to_dataframe()[["frame", "label", "rel_seq"]]    # doctest: +SKIP
        """
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "to_dataframe() needs pandas: pip install 'hsviz[pandas]' (or pip install pandas)"
            ) from exc
        rows = []
        for s in self.segments:
            d = s.to_json()
            del d["type"]
            d["client_state"] = d["state"]["client"]
            d["server_state"] = d["state"]["server"]
            del d["state"]
            d["analysis"] = ",".join(d["analysis"])
            rows.append(d)
        # rel_ack is null without the ACK bit: pandas' nullable integers keep the column
        # integer (<NA>, not a float column with NaN); the other numbers are never missing
        return pd.DataFrame(rows).astype({**dict.fromkeys(_INT_COLUMNS, "int64"), "rel_ack": "Int64"})

    def __repr__(self) -> str:
        s = self.summary
        return (f"<Connection {s.conn}: {s.client} -> {s.server}, {s.segments} segments, "
                f"{s.conn_state} {s.history}, {len(self.calls)} calls>")

    def _repr_html_(self) -> str:
        s = self.summary
        rows = "".join(
            f"<tr><td>{g.frame}</td><td>{(g.ts - s.first_ts) * 1000:.3f}</td>"
            f"<td>{'→' if g.is_c2s else '←'}</td><td><b>{g.label.value}</b></td>"
            f"<td>{g.flag_str}</td><td>{g.rel_seq}</td><td>{'' if g.rel_ack is None else g.rel_ack}</td>"
            f"<td>{g.length}</td><td>{', '.join(a.value for a in g.analysis)}</td>"
            f"<td>{g.client_state.value}</td><td>{g.server_state.value}</td></tr>"
            for g in self.segments[:200]
        )
        more = f"<p>… {len(self.segments) - 200} more segments</p>" if len(self.segments) > 200 else ""
        return (
            f"<p><b>conn {s.conn}</b>: {html.escape(str(s.client))} → {html.escape(str(s.server))} "
            f"— {s.segments} segments, {s.duration * 1000:.3f} ms, {s.conn_state} {html.escape(s.history)}</p>"
            "<table><tr><th>frame</th><th>ms</th><th></th><th>label</th><th>flags</th><th>seq</th>"
            "<th>ack</th><th>len</th><th>analysis</th><th>client</th><th>server</th></tr>"
            f"{rows}</table>{more}"
        )

    def _repr_png_(self) -> bytes:
        import io

        import matplotlib.pyplot as plt

        from handshake_viz.draw import write_png

        ax = self.plot()
        buf = io.BytesIO()
        write_png(ax.figure, buf, 80, facecolor="auto")
        plt.close(ax.figure)
        return buf.getvalue()


@dataclass(frozen=True)
class Flow:
    """One UDP flow of a trace: its summary, datagrams and socket calls."""

    summary: FlowSummary
    datagrams: tuple[Datagram, ...]
    calls: tuple[Call, ...] = ()

    @property
    def flow(self) -> int:
        return self.summary.flow

    def __repr__(self) -> str:
        s = self.summary
        return f"<Flow {s.flow}: {s.client} -> {s.server}, {s.datagrams} datagrams, {len(self.calls)} calls>"


@dataclass(frozen=True)
class Trace:
    """A whole capture: its TCP connections, UDP flows, every socket call (those on no
    connection too: a listening socket's bind and listen, a failed bind), what
    decoding noticed, and the kernel's account when it was recorded (``kernel``:
    listeners' accept queues, every drop, the log's clock and loss counts)."""

    path: Path | None
    connections: tuple[Connection, ...]
    flows: tuple[Flow, ...] = ()
    calls: tuple[Call, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    calls_path: Path | None = None
    records: int = 0  # packet records in the capture (TCP, UDP or neither)
    kernel: KernelView | None = None

    def connection(self, conn: int) -> Connection:
        """Connection number ``conn`` (UsageError naming the range when there is none)."""
        for c in self.connections:
            if c.conn == conn:
                return c
        raise NoSuchConnection(self.path, conn, len(self.connections))

    def flow(self, flow: int) -> Flow:
        for f in self.flows:
            if f.flow == flow:
                return f
        raise UsageError(f"{self.path}: no UDP flow {flow} (the capture has {len(self.flows)})")

    def show(self, *, conns: Iterable[int] | None = None, flows: Iterable[int] | None = None,
             time: str = "ordered", max_rows: int = 60) -> Page:
        """The interactive diagram of the whole trace (or the connections and flows
        numbered), inline in Jupyter, with a list to pick one connection: see
        :meth:`Connection.show`.

        >>> trace.show(conns=[0, 2])                              # doctest: +SKIP
        """
        from handshake_viz.html import trace_page

        return trace_page(self, conns=conns, flows=flows, time=time, max_rows=max_rows,  # type: ignore[arg-type]
                          png=True)

    def packets(self) -> Any:
        """Every frame of the capture as a scapy ``PacketList`` (``Ether/IP/TCP/Raw`` …),
        in file order: ``trace.packets().summary()``, ``wrpcap("copy.pcap", …)``.

        >>> trace.packets()[0].show()                             # doctest: +SKIP
        """
        from handshake_viz.frames import packet_list

        if self.path is None:
            raise UsageError("this trace was not read from a capture file: it has no frames to hand over")
        return packet_list(self.path)

    @property
    def loose_calls(self) -> tuple[Call, ...]:
        """Traced calls on no captured connection or flow (setup, listeners, failed binds)."""
        return tuple(c for c in self.calls if c.conn is None and not c.frames and not c.inferred)

    def __len__(self) -> int:
        return len(self.connections)

    def __repr__(self) -> str:
        flows = f", {len(self.flows)} UDP flows" if self.flows else ""
        return f"<Trace {self.path}: {len(self.connections)} connections{flows}, {len(self.calls)} calls>"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{c.conn}</td><td>{html.escape(str(c.summary.client))}</td>"
            f"<td>{html.escape(str(c.summary.server))}</td><td>{c.summary.segments}</td>"
            f"<td>{c.summary.duration * 1000:.3f}</td><td>{c.summary.bytes_c2s}</td>"
            f"<td>{c.summary.bytes_s2c}</td><td>{c.summary.conn_state}</td>"
            f"<td>{html.escape(c.summary.history)}</td><td>{len(c.calls)}"
            f"{' (inferred)' if c.calls_inferred else ''}</td></tr>"
            for c in self.connections
        )
        return (
            f"<p><b>{html.escape(str(self.path))}</b>: {len(self.connections)} TCP connections"
            f"{f', {len(self.flows)} UDP flows' if self.flows else ''}</p>"
            "<table><tr><th>conn</th><th>client</th><th>server</th><th>segments</th><th>ms</th>"
            "<th>bytes →</th><th>bytes ←</th><th>conn_state</th><th>history</th><th>calls</th></tr>"
            f"{rows}</table>"
        )


# ======================================================================================
# Calls: which file, read, aligned, chosen per connection
# ======================================================================================


def calls_file_for(capture: str | Path, calls: str | Path | None = None) -> Path | None:
    """The call log to use: ``calls`` when given (it must exist), else
    ``X.calls.jsonl`` beside capture ``X.pcap`` when it exists, else None."""
    from handshake_viz.pcapio import CALLS_SUFFIX

    return _file_for(capture, calls, CALLS_SUFFIX, TraceFileError)


def kernel_file_for(capture: str | Path, kernel: str | Path | None = None) -> Path | None:
    """The kernel events to use: ``kernel`` when given (it must exist), else
    ``X.kernel.jsonl`` beside capture ``X.pcap`` when it exists, else None."""
    from handshake_viz.errors import KernelFileError
    from handshake_viz.pcapio import KERNEL_SUFFIX

    return _file_for(capture, kernel, KERNEL_SUFFIX, KernelFileError)


def _file_for(capture: str | Path, given: str | Path | None, suffix: str,
              missing: type[InputError]) -> Path | None:
    """``given`` (which must exist), else the capture's ``suffix`` file beside it
    (``pcapio.beside``) when it exists."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise missing(f"{path}: no such file")
        return path
    if str(capture) == "-":
        return None
    from handshake_viz.pcapio import beside

    found = beside(capture, suffix)
    return found if found.is_file() else None


def _read_calls(path: Path | None) -> list[Call]:
    if path is None:
        return []
    from handshake_viz.trace import load_calls

    return list(load_calls(path).calls)


def trace_of_segments(
    path: Path | None,
    summaries: Sequence[ConnectionSummary],
    segments: Iterable[Segment],
    traced: Sequence[Call] = (),
    *,
    flows: Sequence[FlowSummary] = (),
    datagrams: Iterable[Datagram] = (),
    infer: bool = True,
    warnings: Sequence[str] = (),
    calls_path: Path | None = None,
    records: int = 0,
    kernel: KernelLog | None = None,
) -> Trace:
    """The Trace of tracked segments (and datagrams) and traced calls: the calls are
    aligned with the segments, and each connection gets its own traced calls when it
    has any, else (``infer``) calls inferred from its segments.  With ``kernel`` (the
    events of an ``X.kernel.jsonl``) every connection gets the kernel's account.

    ``summaries`` name the connections to keep (others' segments are ignored), in order.
    """
    from handshake_viz import align
    from handshake_viz.hindsight import settle

    wanted = {s.conn for s in summaries}
    collected: dict[int, list[Segment]] = {s.conn: [] for s in summaries}
    all_segments: list[Segment] = []
    for seg in segments:
        if seg.conn in wanted:
            collected[seg.conn].append(seg)
            all_segments.append(seg)
    # Whole connections are known: what hindsight settles (a refused SYN's responder
    # was CLOSED, not LISTEN) is settled here, once, for every view.
    kept = {conn: settle(segs) for conn, segs in collected.items()}
    if any(kept[conn] is not segs for conn, segs in collected.items()):
        all_segments = sorted((s for segs in kept.values() for s in segs), key=lambda s: s.frame)
    by_flow: dict[int, list[Datagram]] = {f.flow: [] for f in flows}
    for d in datagrams:
        if d.flow in by_flow:
            by_flow[d.flow].append(d)
    aligned: list[Call] = []
    if traced:
        aligned = align.align(all_segments, summaries, traced)
        if flows:
            aligned = align.align_datagrams([d for f in flows for d in by_flow[f.flow]], flows, aligned)
    connections = []
    loose = tuple(c for c in aligned if c.conn is None and not c.frames and not c.inferred)
    for s in summaries:
        segs = tuple(kept[s.conn])
        own = [c for c in aligned if c.conn == s.conn]
        calls = own if own else (align.infer_calls(segs, s) if infer and segs else [])
        connections.append(Connection(s, segs, tuple(calls), loose))
    flow_records = []
    for f in flows:
        dgrams = tuple(by_flow[f.flow])
        flow_records.append(Flow(f, dgrams, tuple(align.calls_for_flow(f, dgrams, aligned))))
    view = None
    if kernel is not None:
        from handshake_viz.kerneljoin import join

        view = join(kernel, [(c.summary, c.segments) for c in connections], aligned, path=kernel.path)
        connections = [replace(c, kernel=view.connection(c.conn)) for c in connections]
        warnings = list(warnings) + _kernel_warnings(kernel)
    return Trace(path, tuple(connections), tuple(flow_records), tuple(aligned), tuple(warnings),
                 calls_path, records, view)


def _kernel_warnings(log: KernelLog) -> list[str]:
    """What a kernel log's reader must be told: lost events are never silent."""
    out = []
    if log.lost:
        out.append(f"{log.path}: the kernel's trace buffer overflowed: {log.lost} events lost "
                   "(the kernel's account has gaps)")
    if log.sync is None:
        out.append(f"{log.path}: no clock calibration: kernel times are not on the capture's clock")
    return out


# ======================================================================================
# A capture file
# ======================================================================================


def load(
    path: str | Path,
    *,
    calls: str | Path | Sequence[Call] | None = None,
    conn: int | Iterable[int] | None = None,
    infer: bool = True,
    udp: bool = True,
    kernel: str | Path | KernelLog | bool | None = None,
    verify_checksums: bool = False,
) -> Trace:
    """Decode, track and align a capture file into a :class:`Trace`.

    ``calls``: an strace log or a ``.calls.jsonl`` (or the Call records themselves);
    by default ``FILE.calls.jsonl`` beside the capture when it exists.  ``kernel``:
    an ``X.kernel.jsonl`` (or its KernelLog); by default the one beside the capture
    when it exists; False: none.  ``conn`` keeps only those connections (the
    rest are still tracked, for numbering), and only their segments in memory unless
    there are traced calls (those are joined with every connection in view).  Connections
    without traced calls get calls inferred from their segments (``infer=False``
    leaves them without).  ``udp`` keeps UDP datagrams as flows.
    ``verify_checksums`` verifies every TCP checksum (:mod:`~handshake_viz.checksum`):
    ``bad-checksum`` and ``checksum-offloaded`` in the segments' analysis, Zeek's view
    ignoring them as Zeek does.  A capture with neither TCP nor UDP is a
    CaptureFileError.
    """
    from handshake_viz import engine
    from handshake_viz.decode import open_capture
    from handshake_viz.flows import FlowTracker

    path = Path(path)
    wanted = _wanted(conn)
    given = calls is not None and not isinstance(calls, (str, Path))
    calls_path = None if given else calls_file_for(path, calls)  # type: ignore[arg-type]
    # Traced calls are joined to their connections with every connection in view: a call
    # of another connection (an accept() on the same listener) must not look like one of
    # no connection, nor be taken for one of the wanted ones.
    keeping = None if (given and calls) or calls_path is not None else wanted
    tracker: Tracker = engine.Tracker()
    flow_tracker = FlowTracker()
    segments: list[Segment] = []
    datagrams: list[Datagram] = []
    with open_capture(path) as reader:
        if engine.compiled:  # only the wanted connections' Segments are built
            keep = engine.frontend.Keep(keeping)
            for _ in walk_compiled(reader, tracker, keep, flow_tracker if udp else None,
                                   verify_checksums=verify_checksums):
                pass
            segments, datagrams = keep.segments, keep.datagrams
        else:
            keep_seg, keep_dgram = segments.append, datagrams.append
            for rec in stream(reader, tracker, flow_tracker if udp else None,
                              verify_checksums=verify_checksums):
                if type(rec) is Datagram:
                    keep_dgram(rec)
                elif keeping is None or rec.conn in keeping:
                    keep_seg(rec)
        warnings = tuple(reader.stats.warnings)
        records = reader.stats.records
    summaries = tracker.summaries()
    flows = flow_tracker.summaries()
    if not summaries and not flows:
        raise CaptureFileError(f"{path}: no TCP segments or UDP datagrams in {records} records")
    if wanted is not None:
        missing = sorted(c for c in wanted if c >= len(summaries))
        if missing:
            raise NoSuchConnection(path, missing[0], len(summaries))
    if keeping is not None:
        summaries = [s for s in summaries if s.conn in keeping]
    traced = list(calls) if given else _read_calls(calls_path)  # type: ignore[arg-type]
    trace = trace_of_segments(path, summaries, segments, traced, flows=flows, datagrams=datagrams,
                              infer=infer, warnings=warnings, calls_path=calls_path, records=records,
                              kernel=_kernel_log(path, kernel))
    if wanted is not None and keeping is None:
        trace = replace(trace, connections=tuple(c for c in trace.connections if c.conn in wanted))
    from handshake_viz.frames import remember

    remember(trace)  # seg.packet() finds its file through it
    return trace


def _kernel_log(capture: Path, kernel: str | Path | KernelLog | bool | None) -> KernelLog | None:
    if kernel is False:
        return None
    if kernel is not None and kernel is not True and not isinstance(kernel, (str, Path)):
        return kernel
    found = kernel_file_for(capture, kernel if isinstance(kernel, (str, Path)) else None)
    if found is None:
        return None
    from handshake_viz.kernel import read_kernel_jsonl

    return read_kernel_jsonl(found)


def _wanted(conn: int | Iterable[int] | None) -> set[int] | None:
    if conn is None:
        return None
    wanted = {conn} if isinstance(conn, int) else set(conn)
    if any(c < 0 for c in wanted):
        raise UsageError(f"connection {min(wanted)}: connection numbers start at 0")
    return wanted


def stream(reader: CaptureReader, tracker: Tracker, flows: FlowTracker | None = None,
           make_udp: Callable[..., Any] | None = None, *, verify_checksums: bool = False
           ) -> Iterator[Any]:
    """Each record of an open capture, tracked: what ``tracker``'s ``record`` makes of a
    TCP segment, and (with ``flows``) of a UDP datagram what ``make_udp`` makes of the
    Datagram ``flows`` returns (default: the Datagram).  Nothing is kept: memory stays
    that of the tracker (``hsviz analyze`` on any size of file).  With
    ``verify_checksums`` each TCP segment's checksum is verified on the way
    (``Tracker.feed_checked``)."""
    if verify_checksums:
        return reader.records(tracker.feed_checked, _udp(flows, make_udp), verify_checksums=True)
    return reader.records(tracker.feed_fields, _udp(flows, make_udp))


def walk_compiled(reader: CaptureReader, tracker: Any, sink: Any, flows: FlowTracker | None = None,
                  *, verify_checksums: bool = False) -> Iterator[str]:
    """:func:`stream` on the compiled front end (``engine.frontend``): each record of an
    open capture decoded and tracked in C, what the compiled ``tracker`` made of each
    TCP segment handed to ``sink`` (a ``frontend`` sink), each UDP datagram fed to
    ``flows`` and the Datagram to ``sink.datagram``.  Yields the text ``sink`` made
    (JSON Lines), now and then; the tracker keeps no sink after the walk."""
    from handshake_viz.engine import frontend

    walk = frontend.Walk(tracker, sink, None if flows is None else flows.feed_fields,  # type: ignore[union-attr]
                         verify_checksums)
    try:
        if verify_checksums:
            from handshake_viz.checksum import counting

            with counting(reader) as counts:
                walk.tally = counts.counts
                yield from walk.run(reader)
        else:
            yield from walk.run(reader)
    finally:
        walk.close()


def _udp(flows: FlowTracker | None, make_udp: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """What ``stream`` hands a UDP datagram's fields to: none without ``flows``."""
    if flows is None:
        return None
    feed = flows.feed_fields
    if make_udp is None:
        return feed
    wrap = make_udp
    return lambda *f: wrap(feed(*f))


# ======================================================================================
# Live: a capture or a replay, tracked as it arrives
# ======================================================================================


class LiveTracking:
    """Track packets as a live capture (or a replay) hands them over.

    ``packet(p)`` takes a Packet or UdpPacket (``LiveCapture(on_packet=...)``) and
    calls ``on_segment(seg)`` / ``on_datagram(d)``; with ``connections=N`` it calls
    ``stop("connections")`` once N connections have finished (both FINs acknowledged,
    or a RST); ``completed`` counts those, ``tracker.connection_count`` every connection
    seen.  :meth:`trace` gives the Trace of what was seen (the calls of a traced
    session are aligned by :func:`load` on the written file instead, so that times
    are exactly those of the file).
    """

    def __init__(
        self,
        *,
        connections: int | None = None,
        on_segment: Callable[[Segment], None] | None = None,
        on_datagram: Callable[[Datagram], None] | None = None,
        keep: bool = False,
    ) -> None:
        from handshake_viz import engine
        from handshake_viz.flows import FlowTracker

        if connections is not None and connections < 1:
            raise UsageError(f"--connections {connections}: must be at least 1")
        self.tracker: Tracker = engine.Tracker()
        self.flows = FlowTracker()
        self.connections = connections
        self.on_segment = on_segment
        self.on_datagram = on_datagram
        self.stop: Callable[[str], None] | None = None
        self._keep = keep
        self._segments: list[Segment] = []
        self._datagrams: list[Datagram] = []
        self._completed: set[int] = set()

    def packet(self, p: Packet | UdpPacket) -> None:
        if type(p) is UdpPacket:
            d = self.flows.feed(p)
            if self._keep:
                self._datagrams.append(d)
            if self.on_datagram is not None:
                self.on_datagram(d)
            return
        seg = self.tracker.feed(p)  # type: ignore[arg-type]
        if self._keep:
            self._segments.append(seg)
        if self.tracker.is_finished(seg.conn):
            self._completed.add(seg.conn)
        if self.on_segment is not None:
            self.on_segment(seg)
        if (self.connections is not None and len(self._completed) >= self.connections
                and self.stop is not None):
            self.stop("connections")

    @property
    def completed(self) -> int:
        """Connections finished so far (both FINs acknowledged, or reset)."""
        return len(self._completed)

    def summaries(self) -> list[ConnectionSummary]:
        return self.tracker.summaries()

    def trace(self, path: Path | None = None, calls: Sequence[Call] = ()) -> Trace:
        """What was seen, as a Trace (needs ``keep=True``)."""
        return trace_of_segments(path, self.summaries(), self._segments, calls,
                                 flows=self.flows.summaries(), datagrams=self._datagrams)
