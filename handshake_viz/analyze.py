"""``hsviz analyze`` on a whole capture file: decode → track → text, in one process or two.

The work is a stream of *items*, made by :func:`produce` and written by
:func:`analyze_file`:

* ``("rows", [row, …])``: a batch of labelled segments (``--jsonl``), each row a
  pair of :data:`~handshake_viz.report.PacketFields` (what the decoder read) and
  :data:`~handshake_viz.report.TrackFields` (what the tracker made of it);
* ``("end", End)``: the tracker's totals, once every packet was read;
* ``("text", [line, …])``: finished output lines (connection lines, summaries);
* ``("raw", text)``: finished output (the compiled front end's JSON Lines);
* ``("bytes", data)``: finished UTF-8 output (a connection's whole ladder).

With ``jobs=1`` the items go straight from :func:`produce` to the writer.  With
``jobs=2`` (the default for ``--jsonl`` on a large file when two CPUs are free)
:func:`produce` runs in a forked child (:class:`~handshake_viz.child.Child`) that decodes and tracks, and sends only the
TrackFields half of each row over a pipe, pickled 128 rows at a time; the parent
decodes the file a second time for the PacketFields half, pairs them up and
writes the JSON.  Decoding and tracking take about 60 % of one process's time,
decoding plus formatting about 55 %, so each of the two processes does a bit over
half and the wall time drops by a third.  The output is the same byte for byte
either way (``tests/test_analyze.py``), and so are the errors: a decode error in
the child reaches the parent after the rows before it, and is raised there.

Only the JSON Lines output is worth a second process: ``--summary`` builds no
rows, and the ladder keeps every line until the end (in a temporary file past a
few megabytes: ``LadderSpill``).  Both processes read the
file, so standard input and pipes always take one.

Finished connections are kept in a temporary file
(:class:`~handshake_viz.spill.FileStore`), so memory holds only the open ones.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any, Literal

from handshake_viz import engine, pipeline, report
from handshake_viz.child import Child, readable_beside, usable_cpus
from handshake_viz.decode import CaptureReader, open_capture
from handshake_viz.errors import CaptureFileError, HsvizError, NoSuchConnection, OutputError, UsageError
from handshake_viz.flows import FlowTracker
from handshake_viz.hindsight import Settler
from handshake_viz.model import Datagram, Segment
from handshake_viz.progress import Progress
from handshake_viz.spill import FileStore
from handshake_viz.track import discard

__all__ = ["BATCH", "PARALLEL_MIN_BYTES", "End", "Mode", "analyze_file", "choose_jobs", "produce"]

Mode = Literal["jsonl", "summary", "ladder"]

BATCH = 128  # rows per item: small batches keep the child's freshly made rows in cache
PARALLEL_MIN_BYTES = 16 << 20  # below ~100,000 packets a second process is not worth starting


@dataclass(frozen=True, slots=True)
class End:
    """What the trackers knew once the whole file was read."""

    connections: int
    records: int  # records in the file (TCP or not)
    warnings: tuple[str, ...]  # e.g. a truncated last record
    flows: int = 0  # UDP flows


Item = tuple[str, Any]


def produce(path: str, mode: Mode, want: int | None = None, *, split: bool = False,
            verify_checksums: bool = False, progress: Progress | None = None) -> Iterator[Item]:
    """Decode and track ``path``; yield the items of ``mode`` (see the module docstring).

    ``want`` keeps only that connection (the ``--jsonl`` rows are filtered by the
    writer).  With ``split`` the rows are only the tracker's half of each segment
    (:data:`~handshake_viz.report.TrackFields`), for a parent that decodes the file
    for the other half; else pairs of both halves.  A decode error is raised after
    the rows before it were yielded, as ``hsviz analyze`` has always printed them.
    ``verify_checksums``: verify every TCP checksum as the tracker is fed
    (``pipeline.stream``); only the tracker's half of a row says what it found.
    ``progress`` watches the reader (the progress line).
    """
    import gc

    # Nothing here leaves cyclic garbage (a connection and its flows refer to each
    # other, but the tracker breaks that cycle when it stores one), so the cyclic
    # collector would only walk the heap: a few percent of the run on a million packets.
    collecting = gc.isenabled()
    gc.disable()
    try:
        # Finished connections go to a temporary file, so that memory grows with
        # the open connections only; so do the ladder's lines (LadderSpill).
        with engine.FileStore() as store:
            yield from _items(path, mode, want, split, store, verify_checksums, progress)
    finally:
        if collecting:
            gc.enable()


class LadderSpill:
    """The ladder's lines, connection by connection, as UTF-8 text (each line ends in a
    newline), written to a private temporary file once they pass ``budget`` bytes in
    memory: the ladder prints each connection's lines together, in connection order,
    after the last packet, and a capture of a million packets has hundreds of megabytes
    of them.  Bytes, not strings: the compiled ladder makes UTF-8 and the output is
    UTF-8, so nothing is decoded or encoded in between.

    Each flush appends every connection's lines in memory to the file as one chunk,
    followed by where the same connection's chunk before it ends and this chunk's
    length (12 bytes); memory keeps only where each connection's last chunk ends (8
    bytes a connection), so that memory does not grow with the ladder.  :meth:`pop`
    follows a connection's chunks back and returns them in the order they were
    written, whatever the number of flushes."""

    _LINK = struct.Struct("<qI")  # after a chunk: the previous chunk's link (-1: none), its length

    def __init__(self, budget: int = 4 << 20) -> None:
        self._mem: dict[int, bytearray] = {}
        self._size = 0
        self._budget = budget
        self._file: Any = None  # the temporary file, once lines went to it
        self._written = 0  # bytes in it
        self._last = array("q")  # by key: where its last chunk's link is in the file, -1: none

    def add(self, key: int, line: str) -> None:
        data = (line + "\n").encode()
        have = self._mem.get(key)
        if have is None:
            self._mem[key] = bytearray(data)
        else:
            have += data
        self._size += len(data)
        if self._size > self._budget:
            self._flush()

    def extend(self, lines: dict[int, bytearray], size: int) -> None:
        """:meth:`add` for many lines at once (the compiled ladder's batches): each key's
        lines, newline-ended, ``size`` bytes in all; the bytearrays become this spill's."""
        mem = self._mem
        for key, more in lines.items():
            have = mem.get(key)
            if have is None:
                mem[key] = more
            else:
                have += more
        self._size += size
        if self._size > self._budget:
            self._flush()

    def _flush(self) -> None:
        import tempfile

        mem, last, link = self._mem, self._last, self._LINK.pack
        parts: list[bytes | bytearray] = []
        at = self._written
        for key, lines in mem.items():
            if key >= len(last):
                last.extend([-1] * (key + 1 - len(last)))
            parts += (lines, link(last[key], len(lines)))
            at += len(lines)
            last[key] = at
            at += self._LINK.size
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile()
            self._file.writelines(parts)
        except OSError as exc:
            raise OutputError(f"cannot write the ladder's temporary file: {exc.strerror or exc}") from None
        self._written = at
        mem.clear()
        self._size = 0

    def pop(self, key: int) -> bytes:
        """Every line of ``key`` (a connection or flow number), in order, each ending in
        a newline, and forgets them (the file keeps their bytes until :meth:`close`)."""
        tail = self._mem.pop(key, b"")
        where = self._last[key] if 0 <= key < len(self._last) else -1
        if where < 0:
            return bytes(tail)
        self._last[key] = -1
        chunks = [tail]
        unpack, size = self._LINK.unpack, self._LINK.size
        try:
            self._file.flush()
            fd = self._file.fileno()
            while where >= 0:
                before, length = unpack(os.pread(fd, size, where))
                chunks.append(os.pread(fd, length, where - length))
                where = before
        except OSError as exc:
            raise OutputError(f"cannot read the ladder's temporary file: {exc.strerror or exc}") from None
        chunks.reverse()
        return b"".join(chunks)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _items(path: str, mode: Mode, want: int | None, split: bool,
           store: FileStore | None, verify: bool, progress: Progress | None) -> Iterator[Item]:
    ladders = LadderSpill()
    flow_ladders = LadderSpill()
    try:
        yield from _ladder_items(path, mode, want, split, store, ladders, flow_ladders, verify,
                                 progress)
    finally:
        ladders.close()
        flow_ladders.close()


def _compiled_items(reader: CaptureReader, mode: Mode, want: int | None, store: FileStore | None,
                    ladders: LadderSpill, flow_ladders: LadderSpill, flows: FlowTracker,
                    verify: bool) -> Generator[Item, None, Any]:
    """The three modes on the compiled front end (``engine.frontend``): the same output
    as the Python path's below, each line made in C (``"raw"`` items: finished text);
    returns the tracker."""
    front = engine.frontend
    tracker = engine.Tracker(record=discard, store=store)
    sink = (front.JsonLines(want) if mode == "jsonl" else front.Count() if mode == "summary"
            else front.Ladder(ladders, flow_ladders, want))
    for text in pipeline.walk_compiled(reader, tracker, sink, flows, verify_checksums=verify):
        yield "raw", text
    if mode == "ladder":
        sink.release()  # the connections whose SYNs were never answered
    return tracker


def _ladder_items(path: str, mode: Mode, want: int | None, split: bool, store: FileStore | None,
                  ladders: LadderSpill, flow_ladders: LadderSpill, verify: bool,
                  progress: Progress | None) -> Iterator[Item]:
    flows = FlowTracker()
    with open_capture(path) as reader:
        if progress is not None:
            progress.watch(reader)
        if engine.compiled and not split:  # (the child of two processes sends Python rows)
            tracker = yield from _compiled_items(reader, mode, want, store, ladders, flow_ladders,
                                                 flows, verify)
        elif mode == "jsonl":
            record = report.track_fields if split else report.both_fields
            tracker: Any = engine.Tracker(record=record, store=store)
            udp_row = report.flow_fields if split else report.datagram_pair
            # the decoder hands each packet's fields to the tracker: no Packet records
            rows = pipeline.stream(reader, tracker, flows, udp_row, verify_checksums=verify)
            yield from _batches("rows", rows, BATCH)
        elif mode == "summary":
            tracker = engine.Tracker(record=discard, store=store)
            deque(pipeline.stream(reader, tracker, flows, _discard_datagram, verify_checksums=verify),
                  maxlen=0)
        else:
            tracker = engine.Tracker(store=store)
            starts: dict[int, float] = {}
            flow_starts: dict[int, float] = {}
            settler = Settler()  # the ladder is per connection: hindsight applies

            def add(segs: Iterable[Segment]) -> None:
                for seg in segs:
                    t0 = starts.setdefault(seg.conn, seg.ts)
                    ladders.add(seg.conn, report.format_segment(seg, t0))

            for rec in pipeline.stream(reader, tracker, flows, verify_checksums=verify):
                if type(rec) is Datagram:
                    if want is None:
                        t0 = flow_starts.setdefault(rec.flow, rec.ts)
                        flow_ladders.add(rec.flow, report.format_datagram(rec, t0))
                    continue
                if want is not None and rec.conn != want:
                    continue
                add(settler.feed(rec))
            for conn in range(tracker.connection_count):
                add(settler.release(conn))
        stats = reader.stats
    if progress is not None:
        progress.close()
    count = tracker.connection_count
    yield "end", End(count, stats.records, tuple(stats.warnings), flows.flow_count)
    if (not count and not flows.flow_count) or (want is not None and want >= count):
        return
    # One summary at a time: a list of them all would add to the peak memory.
    selected = map(tracker.summary, range(count) if want is None else (want,))
    flow_summaries = flows.summaries() if want is None else []
    if mode == "jsonl":
        yield from _batches("text", map(report.connection_jsonl, selected), 1024)
    elif mode == "summary":
        yield from _batches("text", map(report.format_summary, selected), 1024)
        yield from _batches("text", map(report.format_flow_summary, flow_summaries), 1024)
    else:
        columns = f"{report.ladder_columns()}\n"
        for s in selected:
            yield "bytes", b"".join((f"{report.connection_header(s)}\n{columns}".encode(),
                                     ladders.pop(s.conn), f"{report.format_summary(s)}\n\n".encode()))
        for f in flow_summaries:
            yield "bytes", b"".join((f"{report.flow_header(f)}\n{columns}".encode(),
                                     flow_ladders.pop(f.flow),
                                     f"{report.format_flow_summary(f)}\n\n".encode()))


def _discard_datagram(d: Datagram) -> bool:
    return True


def _batches(kind: str, items: Iterable[Any], size: int) -> Iterator[Item]:
    """``(kind, list)`` items of up to ``size``; on an error, the part made so far first."""
    it = iter(items)
    batch: list[Any] = []
    try:
        while True:
            batch.extend(islice(it, size))
            if not batch:
                return
            yield kind, batch
            batch = []
    except HsvizError:
        if batch:
            yield kind, batch
        raise


def choose_jobs(path: str, mode: Mode, jobs: int | None) -> int:
    """1 or 2 processes: ``jobs`` if given, else 2 for ``--jsonl`` on a file of at least
    :data:`PARALLEL_MIN_BYTES` when two CPUs are ours and the tracker runs on pure
    Python (compiled, one process makes the lines faster than two pass Python rows
    between them).  Always 1 for standard input, a pipe or a missing file (both
    processes read the file), or without ``fork``."""
    if jobs == 1:
        return 1
    size = readable_beside(path)
    if size is None:
        return 1
    if jobs is not None:
        return jobs
    if mode != "jsonl" or usable_cpus() < 2 or size < PARALLEL_MIN_BYTES or engine.compiled:
        return 1
    return 2


def analyze_file(
    path: str,
    mode: Mode,
    *,
    want: int | None = None,
    jobs: int | None = None,
    write: Callable[[str], Any],
    warn: Callable[[str], Any],
    verify_checksums: bool = False,
    progress: Progress | None = None,
    write_bytes: Callable[[bytes], Any] | None = None,
) -> int:
    """Analyse ``path`` and ``write`` the output of ``mode`` as it is made; returns the
    number of connections.  ``verify_checksums``: see :func:`produce`.  ``progress``
    (:meth:`Progress.on`) draws the progress line while the file is read, and is
    erased before anything is written to its stream.

    ``write_bytes`` takes UTF-8 output where there is some (the ladder), written in
    order with ``write``'s; without it, such output is decoded for ``write``.

    ``warn`` gets each decode warning (after the output).  Raises UsageError when
    ``want`` is out of range or the file has no TCP segment, and whatever
    ``open_capture`` raises for a broken file: the output made before a broken record
    is written first.
    """
    jobs = choose_jobs(path, mode, jobs)
    if progress is not None:
        warn = _erasing_first(progress, warn)
    try:
        if jobs == 1:
            return _consume(produce(path, mode, want, verify_checksums=verify_checksums,
                                    progress=progress), None, path, want, write, warn, write_bytes)
        # (the parent's half of each row is the decoder's alone: no checksum in it)
        child = Child(path, partial(produce, path, mode, want, split=True, verify_checksums=verify_checksums))
        with child as items, open_capture(path) as reader:
            if progress is not None:
                progress.watch(reader)
            return _consume(items, reader.records(report.packet_fields, report.udp_fields), path,
                            want, write, warn, write_bytes)
    finally:
        if progress is not None:
            progress.close()


def _erasing_first(progress: Progress, warn: Callable[[str], Any]) -> Callable[[str], Any]:
    """``warn``, after erasing the progress line."""
    def erased(line: str) -> Any:
        progress.close()
        return warn(line)
    return erased


def _consume(
    items: Iterable[Item],
    decoded: Iterator[report.PacketFields] | None,
    path: str,
    want: int | None,
    write: Callable[[str], Any],
    warn: Callable[[str], Any],
    write_bytes: Callable[[bytes], Any] | None = None,
) -> int:
    """Write the items; ``decoded`` is the parent's own decoding of the file, to be
    paired with the child's rows (None: the rows are pairs already)."""
    lines = report.segment_lines
    end: End | None = None
    for kind, value in items:
        if kind == "rows":
            if decoded is not None:
                packets = list(islice(decoded, len(value)))
                if len(packets) < len(value):
                    raise CaptureFileError(f"{path}: the file changed while it was read "
                                           "(is it still being written? try -j 1)")
                value = zip(packets, value)
            text = lines(value, want)
            if text:
                write("\n".join(text) + "\n")
        elif kind == "text":
            write("\n".join(value) + "\n")
        elif kind == "raw":
            write(value)
        elif kind == "bytes":
            if write_bytes is None:
                write(value.decode())
            else:
                write_bytes(value)
        else:
            end = value
            count = end.connections
            if want is not None and want >= count and (count or end.flows):
                raise NoSuchConnection(path, want, count)
            if not count and not end.flows:
                for w in end.warnings:
                    warn(w)
                raise UsageError(f"{path}: no TCP segments or UDP datagrams in {end.records} records")
    assert end is not None, "produce() always ends with an 'end' item"
    for w in end.warnings:
        warn(w)
    return end.connections


