"""Stores for the connections a Tracker has finished with (``Tracker(store=…)``).

A tracker must remember a finished connection for as long as a late segment of it
may turn up (Wireshark's ``tcp.stream`` and analysis flags are decided by all that
came before), yet keeping every connection of a long capture in memory makes the
memory grow with the capture.  With a store, the tracker keeps only the open
connections and the few thousand most recently finished; older ones are packed
(about 500 bytes) and handed here, and fetched back on a late segment.

* :class:`SqliteStore` keeps them in a private temporary SQLite database, which
  SQLite keeps in a small page cache and spills to a file deleted on close:
  memory stays flat however many connections the capture has.
* :class:`MemoryStore` keeps them in a dict (for tests, and small captures).

Packing is this module's too: :func:`pack` makes the bytes a store keeps of a
finished connection (everything the tracker knows of it, and its summary),
:func:`unpack` gives the connection back exactly as it was, and
:func:`unpack_summary` only its summary.  A store sees opaque bytes under a
connection number and a :func:`store_key` (:class:`ConnectionStore`).
"""

from __future__ import annotations

import marshal
import sqlite3
from dataclasses import fields
from operator import attrgetter
from typing import Protocol

from handshake_viz.model import ConnectionSummary, Direction, TcpState
from handshake_viz.tracked import TrackedConn, TrackedFlow, summary_of
from handshake_viz.zeek import EndpointState, ZeekEndpoint, ZeekView

__all__ = [
    "ConnectionStore",
    "MemoryStore",
    "SqliteStore",
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
# unpack makes again, and the enums, stored by value.
_FLOW_LINKS = ("dir", "state", "conn", "peer", "zeek")
_FLOW_SCALARS = tuple(f.name for f in fields(TrackedFlow) if f.name not in _FLOW_LINKS)
_ZEND_SCALARS = tuple(f.name for f in fields(ZeekEndpoint) if f.name not in ("state", "prev_state"))
_CONN_SCALARS = ("index", "client", "server", "roles_guessed", "first_ts", "last_ts", "segments",
                 "syn_time", "first_rtt", "ip_version", "closed", "handshake_acked")
_flow_scalars = attrgetter(*_FLOW_SCALARS)
_zend_scalars = attrgetter(*_ZEND_SCALARS)
_conn_scalars = attrgetter(*_CONN_SCALARS)
# The Zeek view's own fields (its two endpoints apart).
# ``likely`` is the tracker's (shared by every view): unpack's caller sets it again.
_VIEW_SCALARS = tuple(n for n in ZeekView.__slots__ if n not in ("ends", "likely"))
_view_scalars = attrgetter(*_VIEW_SCALARS)


def pack(conn: TrackedConn) -> bytes:
    """Everything the tracker knows of ``conn``, and its summary, as marshal bytes (about
    500 bytes, against about 2 KB as objects); :func:`unpack` gives it back exactly."""
    z = conn.zeek
    flows = tuple((f.state.value, *_flow_scalars(f)) for f in (conn.c2s, conn.s2c))
    ends = tuple((int(e.state), int(e.prev_state), *_zend_scalars(e)) for e in z.ends)
    last = conn.last
    if last is not None:  # the flow it names, as "is c2s"
        last = (last[0] is conn.c2s, *last[1:])
    state = (*_conn_scalars(conn), flows, _view_scalars(z), ends, last)
    return marshal.dumps((state, conn.summary_fields()))


def unpack(blob: bytes, likely: frozenset[int] = frozenset()) -> TrackedConn:
    """The connection :func:`pack` packed, not yet in the tracker's queues; ``likely``:
    the tracker's likely server ports, which its Zeek view needs again."""
    state, _ = marshal.loads(blob)
    conn = TrackedConn.__new__(TrackedConn)
    n = len(_CONN_SCALARS)
    for name, value in zip(_CONN_SCALARS, state[:n]):
        setattr(conn, name, value)
    flows, view, ends, last = state[n:]
    z = ZeekView.__new__(ZeekView)
    z.likely = likely
    for name, value in zip(_VIEW_SCALARS, view):
        setattr(z, name, value)
    z.ends = tuple(  # type: ignore[assignment]
        ZeekEndpoint(EndpointState(e[0]), EndpointState(e[1]), *e[2:]) for e in ends)
    conn.zeek = z
    conn.c2s, conn.s2c = (
        TrackedFlow(dir=d, state=TcpState(f[0]), conn=conn, zeek=z.ends[d is Direction.C2S],
                    **dict(zip(_FLOW_SCALARS, f[1:])))
        for d, f in zip((Direction.C2S, Direction.S2C), flows)
    )
    conn.c2s.peer, conn.s2c.peer = conn.s2c, conn.c2s
    conn.queued = False
    conn.last = None if last is None else ((conn.c2s if last[0] else conn.s2c), *last[1:])
    return conn


def unpack_summary(blob: bytes) -> ConnectionSummary:
    """The summary of the connection :func:`pack` packed (without unpacking the rest)."""
    return summary_of(marshal.loads(blob)[1])


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


class SqliteStore:
    """A ConnectionStore in a private temporary SQLite database (deleted on close).

    SQLite's page cache is set to ``cache_kib`` (default 4 MiB); beyond that the
    database lives in a temporary file.  Puts are written 512 at a time (reads look
    at the unwritten ones first), so a put costs a few microseconds.
    """

    def __init__(self, cache_kib: int = 4096) -> None:
        # "" is SQLite's private temporary database: on disk once it outgrows the cache.
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db.executescript(f"""
            PRAGMA cache_size = -{int(cache_kib)};
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            CREATE TABLE conns (conn INTEGER PRIMARY KEY, key TEXT NOT NULL, state BLOB NOT NULL);
            CREATE INDEX by_key ON conns (key, conn);
        """)
        # puts not yet written, by connection number; written 512 at a time
        self._pending: dict[int, tuple[str, bytes]] = {}
        self._pending_keys: dict[str, int] = {}  # newest pending connection per key

    def _flush(self) -> None:
        if self._pending:
            db = self._db
            db.execute("BEGIN")  # one transaction for the batch, not one per row
            db.executemany(
                "INSERT OR REPLACE INTO conns VALUES (?, ?, ?)",
                [(conn, key, state) for conn, (key, state) in self._pending.items()],
            )
            db.execute("COMMIT")
            self._pending.clear()
            self._pending_keys.clear()

    def put(self, conn: int, key: str, state: bytes) -> None:
        self._pending[conn] = (key, state)
        if self._pending_keys.get(key, -1) < conn:
            self._pending_keys[key] = conn
        if len(self._pending) >= 512:
            self._flush()

    def get(self, conn: int) -> bytes | None:
        entry = self._pending.get(conn)
        if entry is not None:
            return entry[1]
        row = self._db.execute("SELECT state FROM conns WHERE conn = ?", (conn,)).fetchone()
        return None if row is None else bytes(row[0])

    def find(self, key: str) -> tuple[int, bytes] | None:
        row = self._db.execute(
            "SELECT conn, state FROM conns WHERE key = ? ORDER BY conn DESC LIMIT 1", (key,)
        ).fetchone()
        pending = self._pending_keys.get(key)
        if pending is not None and (row is None or pending > row[0]):
            return pending, self._pending[pending][1]
        return None if row is None else (int(row[0]), bytes(row[1]))

    def __len__(self) -> int:
        self._flush()
        return int(self._db.execute("SELECT count(*) FROM conns").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
