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
"""

from __future__ import annotations

import sqlite3

__all__ = ["MemoryStore", "SqliteStore"]


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
