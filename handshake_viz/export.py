"""``hsviz export``: a copy of a capture as pcapng whose packets carry the socket calls.

Every segment a call caused gets a packet comment (``opt_comment``) naming the call,
``connect() pid 1234 fd 3``, and every segment that released a call says so,
``recvfrom() pid 1240 fd 4 returns 6``; Wireshark shows them in the packet list
(``pkt_comment`` / ``frame.comment``) and in the packet details.  Calls come from the
capture's ``.calls.jsonl`` (or ``--calls``); a connection without traced calls gets
the calls inferred from its segments, marked ``(inferred)`` -- never a mixture,
exactly as the diagram shows them (``--traced-only`` leaves inferred calls out).

With kernel events beside the capture (``X.kernel.jsonl``) a frame the kernel dropped,
a RST it sent, or a retransmission also says so (``kernel dropped it: NO_SOCKET``).
With ``--verify-checksums`` a segment whose TCP checksum fails says that too
(``bad TCP checksum``, or ``TCP checksum offloaded ...``).

The copy is lossless: every record of the input is written, in order, with its
original bytes -- link layer, non-TCP frames, cut frames and all -- so frame
numbers stay the same and the comments point at the right packets.

Format (pcapng, draft-ietf-opsawg-pcapng):

* a pcap input becomes one section: a Section Header Block (little-endian), one
  Interface Description Block (the pcap's link type and snaplen, ``if_tsresol`` 6
  or 9 for micro- or nanosecond files) and one Enhanced Packet Block per record;
* a pcapng input keeps its sections, byte orders, interfaces and every other
  block as they were; a packet block that gets comments is rewritten as an
  Enhanced Packet Block with its old options kept and the comments appended.
  Only the SHB's section length is set to -1 ("not given"), since comments change it.

The blocks are written by :mod:`handshake_viz.pcapio` (no libpcap, no scapy); this
module decides what the comments say.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from handshake_viz.errors import CaptureFileError, OutputError
from handshake_viz.model import Analysis, Call, CallKind, ConnectionSummary, Direction, Segment
from handshake_viz.outfile import DEFAULT_MODE
from handshake_viz.pcapio import CopyResult, Cut, copy_to_pcapng
from handshake_viz.text import safe_text

if TYPE_CHECKING:  # pragma: no cover
    from handshake_viz import pipeline
    from handshake_viz.pipeline import Flow

__all__ = [
    "call_comments",
    "checksum_comments",
    "default_output",
    "export_capture",
    "kernel_comments",
]



# ======================================================================================
# Comments: which call goes on which frame
# ======================================================================================


def _side_of(call: Call, summary: ConnectionSummary) -> Direction | None:
    """The direction a call's own segments travel (C2S for the client's calls)."""
    def same(a: object, b: object) -> bool:
        return a is not None and b is not None and a == b

    if same(call.local, summary.client) or same(call.remote, summary.server):
        return Direction.C2S
    if same(call.local, summary.server) or same(call.remote, summary.client):
        return Direction.S2C
    return None


def _who(call: Call) -> str:
    if call.inferred:
        return f"{call.call}()"
    parts = [f"{call.call}()", f"pid {call.pid}"]
    if call.tid and call.tid != call.pid:
        parts.append(f"tid {call.tid}")
    if call.fd is not None:
        parts.append(f"fd {call.fd}")
    return " ".join(parts)


def _returns(call: Call) -> str:
    if call.errno is not None:
        return f" returns -1 {call.errno}"
    if call.ret is None:
        return " returns"
    return f" returns {call.ret}"


def _comment(call: Call, caused: bool) -> str:
    """``connect() pid 1234 fd 3``, ``recvfrom() pid 1240 fd 4 returns 6``,
    ``read() returns 0 (inferred)``."""
    text = _who(call) + ("" if caused else _returns(call))
    return safe_text(text + " (inferred)" if call.inferred else text)


def call_comments(segments: Iterable[Segment], summaries: Sequence[ConnectionSummary],
                  calls: Iterable[Call], *, datagrams: Sequence[Flow] = ()) -> dict[int, list[str]]:
    """Frame number -> comments, from calls whose ``conn`` and ``frames`` are filled in
    (and the calls of the UDP flows ``datagrams``).

    A segment sent by the call's own side was *caused* by it (``connect() pid 1234
    fd 3``); one arriving from the peer *released* it (``connect() pid 1234 fd 3
    returns 0``).  On one frame the calls that caused it come first, then those it
    released, each in start order.
    """
    sender = {s.frame: s.dir for s in segments}
    by_conn = {s.conn: s for s in summaries}
    out: dict[int, list[tuple[int, float, str]]] = {}
    for flow in datagrams:  # UDP: a send caused its datagram, a receive was released by one
        for c in flow.calls:
            caused = c.kind is CallKind.SEND
            for f in c.frames:
                out.setdefault(f, []).append((0 if caused else 1, c.start, _comment(c, caused)))
    for c in calls:
        if c.conn is None or not c.frames:
            continue
        summary = by_conn.get(c.conn)
        own = _side_of(c, summary) if summary is not None else None
        for f in c.frames:
            d = sender.get(f)
            if d is None:
                continue
            if own is None:  # no endpoints: a connect's SYN is its own, everything else too
                caused = not (c.call == "connect" and d is Direction.S2C)
            else:
                caused = d is own
            text = _comment(c, caused)
            out.setdefault(f, []).append((0 if caused else 1, c.start, text))
    return {f: [t for *_, t in sorted(v, key=lambda x: (x[0], x[1]))] for f, v in out.items()}


def kernel_comments(trace: pipeline.Trace) -> dict[int, list[str]]:
    """Frame number -> what the kernel said about it (with ``X.kernel.jsonl``): a drop
    and its reason, the reason for a RST it sent, a retransmission."""
    out: dict[int, list[str]] = {}
    for conn in trace.connections:
        if conn.kernel is None:
            continue
        for k in conn.kernel.segments:
            notes = []
            if k.drop is not None:
                derived = " (derived: accept queue full)" if k.drop.source.value == "accept-queue" else ""
                notes.append(f"kernel dropped it: {k.drop.reason}{derived}")
            if k.reset_reason:
                notes.append(f"kernel sent this RST: {k.reset_reason}")
            if k.retransmit:
                notes.append("kernel: retransmission")
            if notes:
                out[k.frame] = notes
    return out


#: What a frame's comment says of a checksum that does not verify.
CHECKSUM_NOTES = {
    Analysis.BAD_CHECKSUM: "bad TCP checksum",
    Analysis.CHECKSUM_OFFLOADED: "TCP checksum offloaded: the field holds only the pseudo-header sum "
                                 "(the sending host left the rest to its network card)",
}


def checksum_comments(segments: Iterable[Segment]) -> dict[int, list[str]]:
    """Frame number -> what checksum verification found, for the segments it flagged."""
    return {s.frame: [CHECKSUM_NOTES[a] for a in s.analysis if a in CHECKSUM_NOTES]
            for s in segments if any(a in CHECKSUM_NOTES for a in s.analysis)}


# ======================================================================================
# The whole export, and the CLI subcommand
# ======================================================================================


def _cutter(snaplen: int | None, headers_only: bool) -> Cut | None:
    """How many bytes of each frame an export keeps, or None to keep them all."""
    if snaplen is None and not headers_only:
        return None
    from handshake_viz.decode import header_length

    limit = snaplen if snaplen is not None else 1 << 32

    def cut(linktype: int, data: bytes) -> int:
        return min(limit, header_length(linktype, data) if headers_only else len(data))

    return cut


def default_output(src: str | os.PathLike[str]) -> Path:
    """``trace.pcap`` -> ``trace.annotated.pcapng`` beside it."""
    p = Path(src)
    stem = p.name
    for suffix in (".gz", ".pcapng", ".pcap", ".cap"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return p.with_name(stem + ".annotated.pcapng")


def export_capture(src: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None, *,
                   calls: str | os.PathLike[str] | None = None,
                   traced_only: bool = False, mode: int = DEFAULT_MODE, snaplen: int | None = None,
                   headers_only: bool = False, verify_checksums: bool = False) -> tuple[CopyResult, bool]:
    """Write the annotated pcapng of ``src`` to ``dest`` (default: :func:`default_output`):
    the calls of its Trace (``calls``, else the ``.calls.jsonl`` beside it; connections
    without traced calls get inferred ones unless ``traced_only``) as packet comments.
    Returns the result and whether any traced call was used.

    For a copy to share, ``snaplen`` keeps at most that many bytes of each frame and
    ``headers_only`` its headers only (:func:`~handshake_viz.decode.header_length`);
    every record keeps its length on the wire, so the analysis is the same.
    ``mode`` is the file's mode (0600).  ``verify_checksums`` verifies every TCP
    checksum and comments the segments that fail (:func:`checksum_comments`).

    A capture with neither TCP nor UDP is still copied (with no comments).
    """
    from handshake_viz import pipeline

    dest_path = Path(dest) if dest is not None else default_output(src)
    if dest_path.suffix.lower() != ".pcapng":
        raise OutputError(f"{dest_path}: the export is a pcapng file: name it *.pcapng")
    try:
        trace = pipeline.load(src, calls=calls, infer=not traced_only, verify_checksums=verify_checksums)
    except CaptureFileError as exc:
        if "no TCP segments or UDP datagrams" not in str(exc):
            raise
        trace = pipeline.Trace(Path(src), ())
    segments = [s for c in trace.connections for s in c.segments]
    shown = [c for conn in trace.connections for c in conn.calls]
    comments = call_comments(segments, [c.summary for c in trace.connections], shown, datagrams=trace.flows)
    for frame, notes in (*kernel_comments(trace).items(), *checksum_comments(segments).items()):
        comments.setdefault(frame, []).extend(notes)
    result = copy_to_pcapng(src, dest_path, comments, mode=mode, cut=_cutter(snaplen, headers_only))
    result.warnings[:0] = [w for w in trace.warnings if w not in result.warnings]
    shown += [c for flow in trace.flows for c in flow.calls if c.frames]
    return result, any(not c.inferred for c in shown)
