"""spill.py and Tracker(store=…): finished connections leave memory, and nothing changes.

Every differential test runs the same packets through a Tracker that keeps
everything and one that stores all but the newest one or two finished
connections, and compares every Segment, every summary and is_finished: late
segments of stored connections (the random streams keep talking after FINs and
RSTs) and SYNs reusing their ports must come out as if nothing had been stored.
"""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest

from conftest import make_capture
from handshake_viz.decode import open_capture
from handshake_viz.model import Packet
from handshake_viz.spill import MemoryStore, FileStore
from handshake_viz.track import Tracker
from test_track_fastpath import _random_stream

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "traces"


class _Counting(Tracker):
    """Counts connections brought back from the store."""

    restored = 0

    def _restore(self, *four_tuple):  # type: ignore[no-untyped-def,override]
        flow = super()._restore(*four_tuple)
        if flow is not None:
            self.restored += 1
        return flow


def _compare(packets: list[Packet], store, keep: int) -> _Counting:
    plain, stored = Tracker(), _Counting(store=store, keep_finished=keep)
    for p in packets:
        a, b = plain.feed(p), stored.feed(p)
        assert a == b, f"frame {p.frame}"
    assert stored.connection_count == plain.connection_count
    assert stored.summaries() == plain.summaries()
    for i in range(plain.connection_count):
        assert stored.is_finished(i) == plain.is_finished(i)
    return stored


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("make_store", [MemoryStore, FileStore])
def test_random_streams_are_unchanged_by_storing(seed, make_store):
    rng = random.Random(seed)
    packets = _random_stream(rng, n_conns=rng.choice([3, 8, 20]), n_packets=600)
    stored = _compare(packets, make_store(), keep=1 + seed % 2)
    assert stored.connections_in_memory <= stored.connection_count


def test_late_segments_and_port_reuse_do_come_back():
    """Across the seeds, stored connections are restored (else the test proves little)."""
    restored = 0
    for seed in range(24):
        rng = random.Random(seed)
        packets = _random_stream(rng, n_conns=8, n_packets=600)
        restored += _compare(packets, MemoryStore(), keep=1).restored
    assert restored > 50


def test_checksum_state_is_packed_and_comes_back():
    """With checksums verified, what the Zeek view counted of the segments it ignored
    (the 'C' letters' scale, ZeekEndpoint.bad_checksums) goes to the store and back."""
    restored = 0
    for seed in range(12):
        rng = random.Random(300 + seed)
        packets = _random_stream(rng, n_conns=8, n_packets=600)
        statuses = [rng.choice([0, 0, 0, 1, 2, 3, 4]) for _ in packets]
        plain, stored = Tracker(), _Counting(store=MemoryStore(), keep_finished=1)
        for p, status in zip(packets, statuses):
            fields = (p.frame, p.ts, p.src, p.sport, p.dst, p.dport, p.seq, p.ack, p.flags, p.win,
                      p.length, p.payload, p.raw_options, p.ip_version, p.ip_id, status)
            assert plain.feed_checked(*fields) == stored.feed_checked(*fields), f"frame {p.frame}"
        assert stored.summaries() == plain.summaries()
        assert stored.zeek_connections() == plain.zeek_connections()
        assert any("C" in z.history.upper() for z in plain.zeek_connections())
        restored += stored.restored
    assert restored > 20


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"third-party corpus not found at {CORPUS}")
def test_corpus_is_unchanged_by_storing():
    for trace in sorted(CORPUS.iterdir()):
        with open_capture(trace) as reader:
            _compare(list(reader), FileStore(), keep=1)


def test_summaries_feed_all_and_feed_agree_with_a_store():
    rng = random.Random(99)
    packets = _random_stream(rng, n_conns=10, n_packets=2000)
    a = Tracker(store=MemoryStore(), keep_finished=1)
    a.feed_all(packets)
    b = Tracker()
    for p in packets:
        b.feed(p)
    assert a.summaries() == b.summaries()


def _generated(tmp_path: Path, connections: int) -> Path:
    path = tmp_path / "many.pcap"
    make_capture(path, connections, 3, seed=3, concurrency=50)
    return path


def test_memory_holds_open_connections_only(tmp_path):
    """3,000 connections, about 50 open at a time: the tracker never holds more than
    the open ones and the newest ``keep`` finished, and the rest are freed."""
    path = _generated(tmp_path, 3000)
    keep = 100
    tracker = Tracker(store=FileStore(), keep_finished=keep)
    open_now: set[int] = set()
    most = 0
    gc.collect()
    gc.disable()  # as analyze runs: stored connections must be freed by refcounting alone
    try:
        with open_capture(path) as reader:
            for p in reader:
                seg = tracker.feed(p)
                if tracker.is_finished(seg.conn):
                    open_now.discard(seg.conn)
                else:
                    open_now.add(seg.conn)
                most = max(most, tracker.connections_in_memory)
                assert tracker.connections_in_memory <= len(open_now) + keep
        from handshake_viz.tracked import TrackedConn

        alive = sum(isinstance(o, TrackedConn) for o in gc.get_objects())
        assert alive <= keep + len(open_now)
    finally:
        gc.enable()
    assert tracker.connection_count == 3000
    assert most < 300
    assert [s.conn_state for s in tracker.summaries()] == ["SF"] * 3000


def test_file_store_newest_per_key_and_replace():
    with FileStore() as store:
        assert store.find("k") is None and store.get(0) is None
        store.put(3, "k", b"three")
        store.put(1, "k", b"one")
        store.put(2, "other", b"two")
        assert store.find("k") == (3, b"three")
        for i in range(600):  # past the write buffer: some records in the file, some not
            store.put(10 + i, f"x{i}", b"x" * (i % 7) * 1000)
        assert store.find("k") == (3, b"three") and store.get(1) == b"one"
        store.put(3, "k", b"THREE")
        store.put(700, "k", b"newest")
        assert store.find("k") == (700, b"newest")
        assert store.get(3) == b"THREE"
        assert len(store) == 604


def test_memory_store_matches_file_store():
    a, b = MemoryStore(), FileStore()
    rng = random.Random(5)
    for _ in range(2000):
        conn = rng.randrange(300)
        key = f"k{conn % 40}"  # a connection's 4-tuple never changes
        state = rng.randbytes(rng.choice([8, 3000]))
        a.put(conn, key, state)
        b.put(conn, key, state)
        probe = f"k{rng.randrange(45)}"
        assert a.find(probe) == b.find(probe)
        n = rng.randrange(320)
        assert a.get(n) == b.get(n)
    assert len(a) == len(b)
