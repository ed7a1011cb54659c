"""The notebook-sized API: ``load`` a capture, look at its connections, plot one.

This is the layer the CLI and notebooks share; it only composes the stages::

    trace = load("captures/echo.pcap")      # decode -> track -> (calls) align
    conn = trace.connections[0]
    conn.segments, conn.calls, conn.summary
    conn.plot()                              # draw

No analysis happens here: it belongs to ``track`` and ``align``.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handshake_viz.errors import CaptureFileError, UsageError
from handshake_viz.model import Call, ConnectionSummary, Segment

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = ["Connection", "Trace", "capture", "load"]


@dataclass(frozen=True)
class Connection:
    """One TCP connection of a trace: its summary, labelled segments and socket calls.

    >>> conn = load("captures/echo.pcap").connections[0]     # doctest: +SKIP
    >>> [s.label.value for s in conn.segments][:3]            # doctest: +SKIP
    ['SYN', 'SYN-ACK', 'ACK']
    """

    summary: ConnectionSummary
    segments: tuple[Segment, ...]
    calls: tuple[Call, ...] = ()

    @property
    def conn(self) -> int:
        return self.summary.conn

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
        return pd.DataFrame(rows)

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

        ax = self.plot()
        buf = io.BytesIO()
        ax.figure.savefig(buf, format="png", dpi=80)
        plt.close(ax.figure)
        return buf.getvalue()


@dataclass(frozen=True)
class Trace:
    """A whole capture: its connections, the socket calls, and what decoding noticed."""

    path: Path | None
    connections: tuple[Connection, ...]
    calls: tuple[Call, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    calls_path: Path | None = None

    def connection(self, conn: int) -> Connection:
        for c in self.connections:
            if c.conn == conn:
                return c
        raise UsageError(f"{self.path}: --conn {conn} out of range (the capture has "
                         f"{len(self.connections)} connection{'s' if len(self.connections) != 1 else ''})")

    def __len__(self) -> int:
        return len(self.connections)

    def __repr__(self) -> str:
        return f"<Trace {self.path}: {len(self.connections)} connections, {len(self.calls)} calls>"

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
            f"<p><b>{html.escape(str(self.path))}</b>: {len(self.connections)} TCP connections</p>"
            "<table><tr><th>conn</th><th>client</th><th>server</th><th>segments</th><th>ms</th>"
            "<th>bytes →</th><th>bytes ←</th><th>conn_state</th><th>history</th><th>calls</th></tr>"
            f"{rows}</table>"
        )


def _read_calls(path: Path) -> list[Call]:
    """A calls.jsonl file or an strace log, told apart by content."""
    from handshake_viz.trace import load_calls

    return list(load_calls(path).calls)


def load(path: str | Path, *, calls: str | Path | None = None,
         conn: int | Iterable[int] | None = None, infer: bool = True) -> Trace:
    """Decode, track and align a capture file.

    ``calls``: an strace log or a ``.calls.jsonl``; by default ``FILE.calls.jsonl`` beside
    the capture is used when it exists.  ``conn`` keeps only those connections' segments
    in memory (the rest are still tracked for numbering).  Without a call log the calls
    are inferred from the segments (``infer=False`` leaves them out).

    >>> trace = load("captures/echo.pcap")                  # doctest: +SKIP
    >>> trace.connections[0].summary.conn_state              # doctest: +SKIP
    'SF'
    """
    from handshake_viz.decode import open_capture
    from handshake_viz.track import Tracker

    path = Path(path)
    wanted: set[int] | None
    if conn is None:
        wanted = None
    elif isinstance(conn, int):
        wanted = {conn}
    else:
        wanted = set(conn)
    if wanted is not None and any(c < 0 for c in wanted):
        raise UsageError(f"--conn {min(wanted)}: connection numbers start at 0")

    tracker = Tracker()
    kept: dict[int, list[Segment]] = {}
    with open_capture(path) as reader:
        for packet in reader:
            seg = tracker.feed(packet)
            if wanted is None or seg.conn in wanted:
                kept.setdefault(seg.conn, []).append(seg)
        warnings = tuple(reader.stats.warnings)
    summaries = tracker.summaries()
    if not summaries:
        raise CaptureFileError(f"{path}: no TCP segments in the capture")
    if wanted is not None:
        missing = sorted(c for c in wanted if c >= len(summaries))
        if missing:
            raise UsageError(f"{path}: --conn {missing[0]} out of range (the capture has "
                             f"{len(summaries)} connection{'s' if len(summaries) != 1 else ''})")

    calls_path: Path | None = Path(calls) if calls is not None else None
    if calls_path is None:
        try:
            from handshake_viz.trace import calls_path_for
        except ImportError:  # pragma: no cover - during development only
            calls_path_for = None  # type: ignore[assignment]
        if calls_path_for is not None:
            candidate = Path(calls_path_for(path))
            calls_path = candidate if candidate.exists() else None
    elif not calls_path.exists():
        raise CaptureFileError(f"{calls_path}: no such file")
    traced: list[Call] = _read_calls(calls_path) if calls_path is not None else []

    all_segments = [s for c in sorted(kept) for s in kept[c]]
    connections = []
    aligned: list[Call] = []
    try:
        from handshake_viz import align as align_mod
    except ImportError:  # pragma: no cover - during development only
        align_mod = None  # type: ignore[assignment]
    if traced and align_mod is not None:
        aligned = align_mod.align(all_segments, summaries, traced)
    for s in summaries:
        if wanted is not None and s.conn not in wanted:
            continue
        segs = tuple(kept.get(s.conn, ()))
        conn_calls: Sequence[Call] = ()
        if align_mod is not None:
            own = [c for c in aligned if c.conn == s.conn]
            if own:
                conn_calls = own
            elif infer:
                conn_calls = align_mod.infer_calls(segs, s)
        connections.append(Connection(s, segs, tuple(conn_calls)))
    return Trace(path, tuple(connections), tuple(aligned), warnings, calls_path)


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

    live = LiveCapture(port, iface=iface, output=output, count=count,
                                   timeout=timeout, connections=connections,
                                   on_ready=on_ready, handle_signals=False)
    result = live.run()
    return load(result.output)
