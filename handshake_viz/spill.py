"""Stores for the connections a Tracker has finished with (``Tracker(store=…)``).

A tracker must remember a finished connection for as long as a late segment of it
may turn up (Wireshark's ``tcp.stream`` and analysis flags are decided by all that
came before), yet keeping every connection of a long capture in memory makes the
memory grow with the capture.  With a store, the tracker keeps only the open
connections and the few thousand most recently finished; older ones are packed
(about 700 bytes) and handed here, and fetched back on a late segment.

* :class:`FileStore` appends them to a private temporary file (deleted on close)
  and keeps 24 bytes of index per connection in memory: memory stays flat (4.8 MB
  of index for 200,000 stored connections) however long the capture.
* :class:`MemoryStore` keeps them in a dict (for tests, and small captures).

Packing is this module's too: :func:`pack` makes the bytes a store keeps of a
finished connection (its summary first, then everything the tracker knows of it),
:func:`unpack` gives the connection back exactly as it was, and
:func:`unpack_summary` only its summary (which reads only the summary's bytes).  A
store sees opaque bytes under a connection number and a :func:`store_key`
(:class:`ConnectionStore`).
"""

from __future__ import annotations

import marshal
import os
import tempfile
from array import array
from typing import Protocol

from handshake_viz.errors import OutputError
from handshake_viz.model import ConnectionSummary, Direction, TcpState

from .tracked import TrackedConn, TrackedFlow, summary_of
from .zeek import EndpointState, ZeekEndpoint, ZeekView

__all__ = [
    "ConnectionStore",
    "FileStore",
    "MemoryStore",
    "pack",
    "store_key",
    "unpack",
    "unpack_summary",
]


class ConnectionStore(Protocol):
    """Where a Tracker puts finished connections it no longer keeps in memory.

    ``key`` names the connection's 4-tuple in either direction (both directions give
    the same key, :func:`store_key`); ``state`` is opaque bytes (:func:`pack`).
    ``find`` returns the newest connection stored under ``key``: with port reuse,
    several are.  ``put`` for a connection already stored replaces it.
    """

    def put(self, conn: int, key: str, state: bytes) -> None: ...

    def get(self, conn: int) -> bytes | None: ...

    def find(self, key: str) -> tuple[int, bytes] | None: ...


def store_key(a: tuple[str, int], b: tuple[str, int]) -> str:
    """The same text for a 4-tuple in both directions."""
    if b < a:
        a, b = b, a
    return f"{a[0]} {a[1]} {b[0]} {b[1]}"


# What is packed of each record: everything but the references between them, which
# unpack makes again, and the enums, stored by value.  Named here one by one (the
# records' own __slots__ say the same; tests/test_spill.py holds them to it).
_FLOW_SCALARS = (
    "nextseq", "nextseq_time", "maxseqtobeacked", "lastack", "lastack_time", "dupacks", "window",
    "win_scale", "last_flags", "base", "syn_seq", "fin_end", "fin_acked", "syn_acked",
    "highest_ack", "data_end", "ready",
)
_ZEND_SCALARS = (
    "start_seq", "seen", "last_syn", "last_fin", "last_rst", "last_seq", "rxmits", "gaps",
    "zero_windows", "contig", "blocks", "missed", "wraps", "ack_beyond", "fins", "pkts",
    "bad_checksums", "did_close",
)
_CONN_SCALARS = ("index", "client", "server", "roles_guessed", "first_ts", "last_ts", "segments",
                 "syn_time", "first_rtt", "ip_version", "closed", "handshake_acked")
_LAST = ("last_seq", "last_ack", "last_flags", "last_win", "last_length", "last_payload",
         "last_options", "last_ip_id")
# The Zeek view's own fields (its two endpoints apart; ``likely`` is the tracker's,
# shared by every view: unpack's caller gives it again).
_VIEW_SCALARS = ("orig_is_client", "history", "first_ts", "last_ts", "syn_ts", "closed",
                 "h_first", "rows")


def _set(obj: object, names: tuple[str, ...], values: tuple[object, ...]) -> None:
    for name, value in zip(names, values):
        setattr(obj, name, value)


# The values of those names, spelled out: read as fields (C fields, compiled), not looked
# up by name, since a capture stores most of its connections.  tests/test_spill.py holds
# each to its names.
def _flow_values(f: TrackedFlow) -> tuple[object, ...]:
    return (f.nextseq, f.nextseq_time, f.maxseqtobeacked, f.lastack, f.lastack_time, f.dupacks,
            f.window, f.win_scale, f.last_flags, f.base, f.syn_seq, f.fin_end, f.fin_acked,
            f.syn_acked, f.highest_ack, f.data_end, f.ready)


def _end_values(e: ZeekEndpoint) -> tuple[object, ...]:
    return (e.start_seq, e.seen, e.last_syn, e.last_fin, e.last_rst, e.last_seq, e.rxmits, e.gaps,
            e.zero_windows, e.contig, e.blocks, e.missed, e.wraps, e.ack_beyond, e.fins, e.pkts,
            e.bad_checksums, e.did_close)


def _conn_values(c: TrackedConn) -> tuple[object, ...]:
    return (c.index, c.client, c.server, c.roles_guessed, c.first_ts, c.last_ts, c.segments,
            c.syn_time, c.first_rtt, c.ip_version, c.closed, c.handshake_acked)


def _last_values(c: TrackedConn) -> tuple[object, ...]:
    return (c.last_seq, c.last_ack, c.last_flags, c.last_win, c.last_length, c.last_payload,
            c.last_options, c.last_ip_id)


def _view_values(z: ZeekView) -> tuple[object, ...]:
    return (z.orig_is_client, z.history, z.first_ts, z.last_ts, z.syn_ts, z.closed, z.h_first,
            z.rows)


def pack(conn: TrackedConn) -> bytes:
    """Everything the tracker knows of ``conn`` as marshal bytes (about 700 bytes,
    against about 2 KB as objects), its summary first: the summary's length (two
    bytes), the summary's marshal bytes, then the state's.  :func:`unpack` gives the
    connection back exactly, :func:`unpack_summary` reads only the summary."""
    z = conn.zeek
    c2s, s2c = conn.c2s, conn.s2c
    o, r = z.ends
    # (enum members by value: ``_value_``, what ``.value`` reads, without its property)
    flows = ((c2s.state._value_, _flow_values(c2s)), (s2c.state._value_, _flow_values(s2c)))
    ends = ((o.state._value_, o.prev_state._value_, _end_values(o)),
            (r.state._value_, r.prev_state._value_, _end_values(r)))
    # the previous segment's flow, as "is c2s" (None before the first)
    last_flow = conn.last_flow
    last = (None if last_flow is None else last_flow is c2s, _last_values(conn))
    state = (_conn_values(conn), flows, _view_values(z), ends, last)
    summary = marshal.dumps(conn.summary_fields())
    return len(summary).to_bytes(2, "little") + summary + marshal.dumps(state)


def unpack(blob: bytes, likely: frozenset[int] = frozenset()) -> TrackedConn:
    """The connection :func:`pack` packed, not yet in the tracker's queues; ``likely``:
    the tracker's likely server ports, which its Zeek view needs again."""
    scalars, flows, view, ends, last = marshal.loads(blob[2 + int.from_bytes(blob[:2], "little"):])
    z = ZeekView.__new__(ZeekView)
    z.likely = likely
    _set(z, _VIEW_SCALARS, view)
    z.ends = (ZeekEndpoint(), ZeekEndpoint())
    for e, (state, prev_state, values) in zip(z.ends, ends):
        e.state, e.prev_state = EndpointState(state), EndpointState(prev_state)
        _set(e, _ZEND_SCALARS, values)
    conn = TrackedConn.__new__(TrackedConn)
    _set(conn, _CONN_SCALARS, scalars)
    conn.zeek = z
    conn.queued = False
    conn.c2s, conn.s2c = (
        TrackedFlow(d, TcpState(state), conn, z.ends[d is Direction.C2S])
        for d, (state, _) in zip((Direction.C2S, Direction.S2C), flows)
    )
    for flow, (_, values) in zip((conn.c2s, conn.s2c), flows):
        _set(flow, _FLOW_SCALARS, values)
    conn.c2s.peer, conn.s2c.peer = conn.s2c, conn.c2s
    is_c2s, values = last
    conn.last_flow = None if is_c2s is None else conn.c2s if is_c2s else conn.s2c
    _set(conn, _LAST, values)
    return conn


def unpack_summary(blob: bytes) -> ConnectionSummary:
    """The summary of the connection :func:`pack` packed (without unpacking the rest:
    marshal reads the first object and ignores what follows)."""
    return summary_of(marshal.loads(memoryview(blob)[2:]))


class MemoryStore:
    """A ConnectionStore in two dicts."""

    def __init__(self) -> None:
        self._by_conn: dict[int, tuple[str, bytes]] = {}
        self._newest: dict[str, int] = {}

    def put(self, conn: int, key: str, state: bytes) -> None:
        self._by_conn[conn] = (key, state)
        if self._newest.get(key, -1) < conn:
            self._newest[key] = conn

    def get(self, conn: int) -> bytes | None:
        entry = self._by_conn.get(conn)
        return None if entry is None else entry[1]

    def find(self, key: str) -> tuple[int, bytes] | None:
        conn = self._newest.get(key)
        return None if conn is None else (conn, self._by_conn[conn][1])

    def __len__(self) -> int:
        return len(self._by_conn)


_BLOOM_BITS = 1 << 23  # FileStore's Bloom filter: 1 MiB
_BLOOM_MASK = _BLOOM_BITS - 1
_WRITE = 1 << 20  # FileStore writes its records a megabyte at a time


class FileStore:
    """A ConnectionStore in a private temporary file (removed when closed, or when the
    process ends however it ends: it is unlinked from the start).

    Each put appends a record (the key's length and bytes, then the state) to a
    buffer written to the file a megabyte at a time; memory keeps, per connection
    number, where its newest record is and how long (12 bytes), and per put the low
    32 bits of the key's hash and the connection (8 bytes: a hash that matches is
    only a candidate, its record's key is compared).  The tracker asks for every 4-tuple it
    has not seen yet, which is nearly always one never stored: a Bloom filter of the
    stored keys (1 MiB, two bits a key: at 200,000 keys one answer in 400 is a false
    "maybe") answers most of those at once; the others look through the hashes.
    ``directory``: where the file goes (default: the system's temporary directory).
    """

    def __init__(self, directory: str | None = None) -> None:
        try:
            self._file = tempfile.TemporaryFile(dir=directory)
        except OSError as exc:
            raise OutputError(f"cannot make the temporary store of finished connections: {exc}") from None
        self._fd = self._file.fileno()
        self._written = 0  # bytes in the file
        self._buffer = bytearray()  # records not written yet (they follow the file's bytes)
        self._where = array("q")  # by connection: its newest record's offset, -1 if none
        self._length = array("I")  # by connection: that record's length
        self._hashes = bytearray()  # per put: hash(key)'s low 32 bits, 4 bytes little-endian
        self._owners = array("i")  # per put: the connection
        self._bloom = bytearray(_BLOOM_BITS >> 3)

    def put(self, conn: int, key: str, state: bytes) -> None:
        h = hash(key)
        one, two = h & _BLOOM_MASK, (h >> 23) & _BLOOM_MASK  # the key's two bits
        bloom = self._bloom
        bloom[one >> 3] |= 1 << (one & 7)
        bloom[two >> 3] |= 1 << (two & 7)
        encoded = key.encode()
        record = len(encoded).to_bytes(2, "little") + encoded + state
        where, length = self._where, self._length
        while len(where) <= conn:
            where.append(-1)
            length.append(0)
        where[conn] = self._written + len(self._buffer)
        length[conn] = len(record)
        self._hashes += (h & 0xFFFFFFFF).to_bytes(4, "little")
        self._owners.append(conn)
        self._buffer += record
        if len(self._buffer) >= _WRITE:
            self._flush()

    def _flush(self) -> None:
        view = memoryview(self._buffer)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._written += n
        except OSError as exc:
            raise OutputError(f"cannot write the temporary store of finished connections: "
                              f"{exc.strerror or exc}") from None
        finally:
            view.release()
        self._buffer.clear()

    def _record(self, conn: int) -> bytes | None:
        if conn < 0 or conn >= len(self._where) or self._where[conn] < 0:
            return None
        offset, length = self._where[conn], self._length[conn]
        if offset >= self._written:
            start = offset - self._written
            return bytes(self._buffer[start : start + length])
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise OutputError(f"cannot read the temporary store of finished connections: "
                              f"{exc.strerror or exc}") from None

    @staticmethod
    def _split(record: bytes) -> tuple[str, bytes]:
        n = int.from_bytes(record[:2], "little")
        return record[2 : 2 + n].decode(), record[2 + n :]

    def get(self, conn: int) -> bytes | None:
        record = self._record(conn)
        return None if record is None else self._split(record)[1]

    def find(self, key: str) -> tuple[int, bytes] | None:
        h = hash(key)
        one, two = h & _BLOOM_MASK, (h >> 23) & _BLOOM_MASK
        bloom = self._bloom
        if not (bloom[one >> 3] & 1 << (one & 7) and bloom[two >> 3] & 1 << (two & 7)):
            return None  # never stored
        # The hashes are searched as bytes (memmem: a 200,000-put store in a tenth of a
        # millisecond; array.index compared them one Python int at a time, 50 times slower,
        # and a false "maybe" comes once in 400 new keys there).
        best: tuple[int, bytes] | None = None
        hashes, owners = self._hashes, self._owners
        low = (h & 0xFFFFFFFF).to_bytes(4, "little")
        i = hashes.find(low)
        while i >= 0:
            if i & 3:  # straddles two hashes
                i = hashes.find(low, i + 1)
                continue
            conn = owners[i >> 2]
            if best is None or conn > best[0]:
                stored, state = self._split(self._record(conn))  # type: ignore[arg-type]
                if stored == key:
                    best = conn, state
            i = hashes.find(low, i + 4)
        return best

    def __len__(self) -> int:
        return sum(1 for offset in self._where if offset >= 0)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
