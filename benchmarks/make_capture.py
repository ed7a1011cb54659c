"""Write a large synthetic Ethernet/IPv4 TCP capture for benchmarks.

::

    python benchmarks/make_capture.py OUT.pcap --connections 20000 --exchanges 15

Each connection is a three-way handshake, ``exchanges`` request/reply rounds
(client request with payload; server reply with payload that piggybacks the
ACK of the request; client pure ACK) and a four-way close (client FIN, server
ACK, server FIN, client ACK): ``3 + 3 * exchanges + 4`` packets, 52 with 15
exchanges, so 20,000 connections give 1,040,000 packets.

Connections arrive as a Poisson process whose rate keeps about
``--concurrency`` of them open at once (400 by default), so a tracker's table
of open connections is exercised the way a busy server's would be.  Times are
plausible for a capture taken at the server on a LAN: client think times of
a few milliseconds, server replies within a millisecond or two, round trips
of 0.1-1 ms.  ISNs, sizes and times come from ``random.Random(seed)``: the
same arguments write the same bytes.

Addresses: 64 clients (10.1.0.1-64) talk to 4 servers (10.2.0.1-4, port
8080); connection *i* uses client ``i % 64`` and client port
``32768 + (i // 64) % 28232``, so every 4-tuple is unique up to 1,806,848
connections (beyond that ports are reused, each time with a fresh ISN, long
after the previous connection on that port closed).

Segments carry Linux-like options (MSS, SACK-permitted, timestamps, window
scale on SYNs; timestamps on every other segment) and valid IPv4 header
checksums; TCP checksums are left 0 (as with checksum offload).

Usable as a module: ``generate(path, connections, exchanges, seed=1)``.
"""

from __future__ import annotations

import argparse
import heapq
import random
import struct
import sys
import time
from pathlib import Path

__all__ = ["generate", "main", "packets_per_connection"]

_PCAP_HEADER = struct.Struct("<IHHiIII").pack(0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
_REC = struct.Struct("<IIII")

# Ethernet + IPv4 (no options) + TCP with 12 bytes of options (NOP NOP TS): 66 bytes.
_FRAME_TS = struct.Struct("!6s6sH BBHHHBBH4s4s HHIIBBHHH BBBBII")
# Ethernet + IPv4 + TCP with the 20-byte SYN options (MSS, SACK-perm, TS, NOP, WS): 74 bytes.
_FRAME_SYN = struct.Struct("!6s6sH BBHHHBBH4s4s HHIIBBHHH BBH BB BBII B BBB")

_SYN, _ACK, _PSH, _FIN = 0x02, 0x10, 0x08, 0x01

_CLIENTS = 64
_SERVERS = 4
_SERVER_PORT = 8080
_PORTS = 60999 - 32768 + 1  # Linux ip_local_port_range


def packets_per_connection(exchanges: int) -> int:
    return 3 + 3 * exchanges + 4


def _ip_sum_base(src: bytes, dst: bytes) -> int:
    """Sum of the IPv4 header words that do not change within one direction."""
    words = struct.unpack("!HHHH", src + dst)
    return sum(words) + 0x4500 + 0x4000 + 0x4006  # ver/IHL/TOS, DF, TTL 64 / proto 6


class _Side:
    """One direction of a connection: addresses, and a frame builder."""

    __slots__ = ("base", "dport", "dst", "ip_id", "mac_dst", "mac_src", "sport", "src", "ts_base")

    def __init__(self, mac_src: bytes, mac_dst: bytes, src: bytes, dst: bytes,
                 sport: int, dport: int, ip_id: int, ts_base: int) -> None:
        self.mac_src, self.mac_dst = mac_src, mac_dst
        self.src, self.dst = src, dst
        self.sport, self.dport = sport, dport
        self.ip_id = ip_id
        self.base = _ip_sum_base(src, dst)
        self.ts_base = ts_base

    def frame(self, t_us: int, seq: int, ack: int, flags: int, win: int, payload: bytes,
              ts_ecr: int, syn: bool = False) -> bytes:
        hdr_len = 40 if syn else 32
        tot = 20 + hdr_len + len(payload)
        ip_id = self.ip_id = (self.ip_id + 1) & 0xFFFF
        s = self.base + tot + ip_id
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        csum = ~s & 0xFFFF
        ts_val = (self.ts_base + t_us // 1000) & 0xFFFFFFFF
        seq &= 0xFFFFFFFF
        ack &= 0xFFFFFFFF
        if syn:
            head = _FRAME_SYN.pack(
                self.mac_dst, self.mac_src, 0x0800,
                0x45, 0, tot, ip_id, 0x4000, 64, 6, csum, self.src, self.dst,
                self.sport, self.dport, seq, ack, hdr_len << 2, flags, win, 0, 0,
                2, 4, 1460, 4, 2, 8, 10, ts_val, ts_ecr, 1, 3, 3, 7,
            )  # fmt: skip
        else:
            head = _FRAME_TS.pack(
                self.mac_dst, self.mac_src, 0x0800,
                0x45, 0, tot, ip_id, 0x4000, 64, 6, csum, self.src, self.dst,
                self.sport, self.dport, seq, ack, hdr_len << 2, flags, win, 0, 0,
                1, 1, 8, 10, ts_val, ts_ecr,
            )  # fmt: skip
        return head + payload if payload else head


_TEXT = (b"GET /api/items?page=42 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: hsviz-bench\r\n"
         b"Accept: */*\r\n\r\n" + bytes(range(32, 127)) * 20) * 2


def _connection(rng: random.Random, i: int, t0: int, exchanges: int) -> list[tuple[int, bytes]]:
    """All frames of connection ``i`` starting at ``t0`` (µs), as (time µs, frame)."""
    client = 1 + i % _CLIENTS
    server = 1 + i % _SERVERS
    c_ip = bytes((10, 1, 0, client))
    s_ip = bytes((10, 2, 0, server))
    c_mac = bytes((0x02, 0, 0, 1, 0, client))
    s_mac = bytes((0x02, 0, 0, 2, 0, server))
    cport = 32768 + (i // _CLIENTS) % _PORTS
    c = _Side(c_mac, s_mac, c_ip, s_ip, cport, _SERVER_PORT, rng.getrandbits(16),
              rng.getrandbits(32))
    s = _Side(s_mac, c_mac, s_ip, c_ip, _SERVER_PORT, cport, rng.getrandbits(16),
              rng.getrandbits(32))
    isn_c = rng.getrandbits(32)
    isn_s = rng.getrandbits(32)
    rtt = rng.randint(100, 1000)  # µs, client <-> capture point (at the server)
    rnd = rng.random
    out: list[tuple[int, bytes]] = []
    add = out.append
    t = t0
    c_win, s_win = 502, 509  # raw fields; both sides scale by 2**7

    def tsv(side: _Side, at: int) -> int:
        return (side.ts_base + at // 1000) & 0xFFFFFFFF

    add((t, c.frame(t, isn_c, 0, _SYN, 64240, b"", 0, syn=True)))
    t_syn = t
    t += 20 + int(rnd() * 30)
    add((t, s.frame(t, isn_s, isn_c + 1, _SYN | _ACK, 65160, b"", tsv(c, t_syn), syn=True)))
    t_sa = t
    t += rtt
    add((t, c.frame(t, isn_c + 1, isn_s + 1, _ACK, c_win, b"", tsv(s, t_sa))))
    cn, sn = isn_c + 1, isn_s + 1
    last_c = last_s = t
    for _ in range(exchanges):
        t += 50 + int(rnd() * rnd() * 20000)  # client think time, mostly short
        n = 40 + int(rnd() * 360)
        add((t, c.frame(t, cn, sn, _PSH | _ACK, c_win, _TEXT[:n], tsv(s, last_s))))
        last_c = t
        cn += n
        t += 100 + int(rnd() * 2000)  # server work
        n = 100 + int(rnd() * 1300)
        k = int(rnd() * 200)
        add((t, s.frame(t, sn, cn, _PSH | _ACK, s_win, _TEXT[k : k + n], tsv(c, last_c))))
        last_s = t
        sn += n
        t += rtt + int(rnd() * 40)
        add((t, c.frame(t, cn, sn, _ACK, c_win, b"", tsv(s, last_s))))
        last_c = t
    t += 50 + int(rnd() * 5000)
    add((t, c.frame(t, cn, sn, _FIN | _ACK, c_win, b"", tsv(s, last_s))))
    cn += 1
    last_c = t
    t += rtt // 2 + 15
    add((t, s.frame(t, sn, cn, _ACK, s_win, b"", tsv(c, last_c))))
    t += 30 + int(rnd() * 200)
    add((t, s.frame(t, sn, cn, _FIN | _ACK, s_win, b"", tsv(c, last_c))))
    sn += 1
    last_s = t
    t += rtt
    add((t, c.frame(t, cn, sn, _ACK, c_win, b"", tsv(s, last_s))))
    return out


def generate(
    path: str | Path,
    connections: int,
    exchanges: int,
    seed: int = 1,
    *,
    concurrency: int = 400,
    start: float = 1_700_000_000.0,
) -> int:
    """Write the capture to ``path``; return the number of packets written."""
    if connections < 0 or exchanges < 0 or concurrency < 1:
        raise ValueError("connections and exchanges must be >= 0, concurrency >= 1")
    rng = random.Random(seed)
    # Mean lifetime of a connection (µs) from the time model above, and the arrival
    # rate that keeps `concurrency` of them open at once (Little's law).
    mean_life = 1000 + exchanges * (50 + 5000 + 100 + 1000 + 550 + 20) + 2500 + 700
    mean_gap = mean_life / concurrency
    t_next = int(start * 1_000_000)
    heap: list[tuple[int, int, bytes]] = []
    push, pop = heapq.heappush, heapq.heappop
    rec = _REC.pack
    order = 0  # tie-break: frames at the same µs keep generation order
    written = 0
    i = 0
    chunk: list[bytes] = []
    with open(path, "wb") as f:
        f.write(_PCAP_HEADER)
        while i < connections or heap:
            if i < connections and (not heap or t_next <= heap[0][0]):
                for t, frame in _connection(rng, i, t_next, exchanges):
                    push(heap, (t, order, frame))
                    order += 1
                i += 1
                t_next += 1 + int(rng.expovariate(1.0) * mean_gap)
                continue
            t, _, frame = pop(heap)
            n = len(frame)
            chunk.append(rec(t // 1_000_000, t % 1_000_000, n, n))
            chunk.append(frame)
            written += 1
            if len(chunk) >= 16384:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="pcap file to write")
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--exchanges", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=400,
                    help="connections open at once, on average (default 400)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    n = generate(args.out, args.connections, args.exchanges, args.seed,
                 concurrency=args.concurrency)
    dt = time.perf_counter() - t0
    size = Path(args.out).stat().st_size
    print(f"{args.out}: {n:,} packets, {args.connections:,} connections, "
          f"{size / 1e6:.1f} MB in {dt:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
