"""TCP checksum verification (``--verify-checksums``), off the default path.

Theory of operation
-------------------
RFC 9293 §3.1: the checksum is the 16-bit one's complement of the one's complement
sum of a pseudo-header (IPv4: source, destination, zero, protocol 6, TCP length;
IPv6, RFC 8200 §8.1: source, final destination, 32-bit TCP length, three zero bytes,
next header 6) and the whole segment, header and payload, padded with a zero byte
to an even length.  A segment verifies when that sum, its own checksum field
included, is all ones (0 modulo 0xFFFF: 0x0000 and 0xFFFF are the same number in one's
complement, RFC 1624 §3).  The sum of 16-bit words modulo 0xFFFF is the segment read
as one big-endian integer modulo 0xFFFF (2**16 is 1 modulo 0xFFFF), which is what
``_verify`` computes: Python does it in C; a compiled path sums words in a loop.

:func:`tcp_checksum` says one of:

* ``GOOD``: the segment verifies;
* ``OFFLOADED``: it does not, but the field holds the pseudo-header's sum (not
  complemented): the sending host's stack left the rest of the sum to the network
  card (``CHECKSUM_PARTIAL`` on Linux, the same on macOS and Windows), and a capture
  on that host -- and every capture on loopback, whose virtual card never fills it
  in -- sees the packet before the card did.  The receiver got the full sum.  A
  segmentation-offloaded super-packet may carry the pseudo-header sum without the
  length (the card adds each piece's): that counts too;
* ``BAD``: neither: corrupted, or left unfilled some other way (a zero field);
* ``UNVERIFIABLE``: the capture does not hold the whole segment (a snaplen cut it,
  or the frame is shorter than its IP header says), so no sum can be made; tshark
  calls that "unverified", Zeek lets it through.  Never flagged, only counted.

Which bytes are the segment: those the IP header says, capped as the decoder caps
them (:mod:`handshake_viz.decode`: an IPv4 total length of 0 is the bytes on the
wire, an enclosing PPPoE length can shorten it) -- tshark's segment, so that a
``bad-checksum`` flag is where tshark's validated status says "bad".

:func:`checked_decoder` wraps the decoder for :meth:`CaptureReader.records
<handshake_viz.decode.CaptureReader.records>` (``verify=True``): a TCP segment's
``make`` gets its status as one more argument after Packet's fields
(``Tracker.feed_checked``).  Nothing here runs unless asked for: the default path
decodes without it, and the compiled hot path can mirror this one function.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from handshake_viz.decode import _decode, _network
from handshake_viz.seqanalysis import A_BAD_CHECKSUM, A_OFFLOADED

if TYPE_CHECKING:  # pragma: no cover
    from handshake_viz.decode import CaptureReader

__all__ = [
    "ANALYSIS_BITS",
    "BAD",
    "GOOD",
    "LINK_SHORT",
    "OFFLOADED",
    "STATUS_NAMES",
    "UNVERIFIABLE",
    "ZEEK_IGNORES",
    "ChecksumCounts",
    "checked_decoder",
    "counting",
    "tcp_checksum",
    "verified_records",
]

# A segment's checksum status (small ints: an index into the tables below).
GOOD = 0
BAD = 1
OFFLOADED = 2
UNVERIFIABLE = 3
LINK_SHORT = 4

STATUS_NAMES = ("good", "bad", "offloaded", "unverifiable", "link-short")

#: Per status, the analysis bits the segment gets (``seqanalysis``): tshark's
#: "incorrect checksum" is ``bad-checksum``, or ``checksum-offloaded`` when the field
#: holds the pseudo-header's sum.
ANALYSIS_BITS = (0, A_BAD_CHECKSUM, A_OFFLOADED, 0, A_BAD_CHECKSUM)
#: Per status, whether Zeek (which verifies unless run with ``-C``) ignores the
#: segment: a ``C`` in the history, no packet counted, no state moved.  Zeek has no
#: notion of offload: its ``TCPAnalyzer::ValidateChecksum`` wants the full sum, so an
#: offloaded segment is ignored as a bad one is (corpus: localhost-bad-chksum.pcap).
#: It reads the segment's length from the IP header, never from an enclosing PPPoE
#: length: ``LINK_SHORT`` segments verify for Zeek.
ZEEK_IGNORES = (False, True, True, False, False)

_U16 = struct.Struct("!H")


def _verify(buf: bytes, t: int, seglen: int, end: int, addresses: int) -> int:
    """The status of the ``seglen`` bytes of TCP segment at ``buf[t:]`` (captured up to
    ``end``); ``addresses``: the pseudo-header's source and destination addresses read
    as one number.

    Sums modulo 0xFFFF: a run of an even number of bytes read as one big-endian
    number is the sum of its 16-bit words (2**16 is 1 modulo 0xFFFF), so the
    pseudo-header is the addresses, the protocol (6) and the length (IPv6's 32-bit
    length is its two 16-bit words), and the segment is padded by shifting.
    """
    stop = t + seglen
    if stop > end:
        return UNVERIFIABLE
    segment = int.from_bytes(buf[t:stop], "big")
    pseudo = addresses + 6  # (the protocol; the length below)
    if (pseudo + seglen + (segment << 8 if seglen & 1 else segment)) % 0xFFFF == 0:
        return GOOD
    field = (buf[t + 16] << 8 | buf[t + 17]) % 0xFFFF
    if field and (field == (pseudo + seglen) % 0xFFFF or field == pseudo % 0xFFFF):
        return OFFLOADED  # the pseudo-header's sum: with the length, or TSO's without
    return BAD


def tcp_checksum(lt: int, buf: bytes, start: int, end: int, extra: int) -> int:
    """The checksum status of the TCP segment in frame ``buf[start:end]`` of link type
    ``lt`` (``extra``: bytes on the wire not captured), a frame the decoder made a TCP
    packet of: ``GOOD``, ``BAD``, ``OFFLOADED``, ``UNVERIFIABLE`` or ``LINK_SHORT``."""
    if lt == 1 and buf[start + 12] == 8 and buf[start + 13] == 0 and buf[start + 14] == 0x45:
        # decode's fast path: Ethernet, IPv4 without options
        p = start + 14
        claimed = buf[p + 2] << 8 | buf[p + 3]
        wire = end - p + extra
        if claimed == 0 or claimed > wire:
            claimed = wire
        return _verify(buf, p + 20, claimed - 20, end, int.from_bytes(buf[p + 12 : p + 20], "big"))
    found = _network(lt, buf, start, end)
    if not found:
        return UNVERIFIABLE
    p, ver, cap = found
    wire = end - p + extra  # bytes from the IP header on, as on the wire
    if (ver or buf[p] >> 4) == 4:
        claimed = _U16.unpack_from(buf, p + 2)[0]
        if claimed == 0 or claimed > wire:  # as decode: offload's 0, a frame shorter than it says
            claimed = wire
        t = p + ((buf[p] & 15) << 2)
        size = claimed - (t - p)
        src, dst = buf[p + 12 : p + 16], buf[p + 16 : p + 20]
    else:
        claimed = _U16.unpack_from(buf, p + 4)[0]
        if claimed == 0 or claimed > wire - 40:
            claimed = wire - 40
        src, dst = buf[p + 8 : p + 24], buf[p + 24 : p + 40]
        nh, t, routed = buf[p + 6], p + 40, False
        while nh != 6:  # what decode walked: hop-by-hop, routing, fragment, options, AH
            if nh == 44:
                hl = 8
            elif nh == 51:
                hl = (buf[t + 1] + 2) << 2
            else:
                hl = (buf[t + 1] + 1) << 3
                if nh == 43 and buf[t + 3] and not routed and hl >= 24:
                    # Segments left: the pseudo-header names the final destination
                    # (RFC 8200 §8.1), the last address of type 0 and 2 (RFC 6275 §6.4),
                    # the first of a segment routing header (type 4, RFC 8754 §2).
                    routed = True
                    if buf[t + 2] == 4:
                        dst = buf[t + 8 : t + 24]
                    elif buf[t + 2] in (0, 2):
                        dst = buf[t + hl - 16 : t + hl]
            nh = buf[t]
            t += hl
        size = claimed + 40 - (t - p)
    addresses = int.from_bytes(src + dst, "big")
    # tshark's segment (and decode's): an enclosing length (PPPoE) may end it sooner
    short = (t - p) + size - cap
    status = _verify(buf, t, size - short if short > 0 else size, end, addresses)
    if (short > 0 and (status == BAD or status == OFFLOADED)
            and _verify(buf, t, size, end, addresses) == GOOD):
        return LINK_SHORT
    return status


class ChecksumCounts:
    """How many TCP segments a verifying walk found of each status
    (``counts[status]``)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * len(STATUS_NAMES)

    def __getitem__(self, status: int) -> int:
        return self.counts[status]

    def __repr__(self) -> str:
        return "ChecksumCounts(" + ", ".join(f"{n}={c}" for n, c in zip(STATUS_NAMES, self.counts)) + ")"


class _Fields(tuple):  # type: ignore[type-arg]
    """Packet's fields, as the verifying decoder's own ``make`` returns them (a type of
    its own, so that nothing a ``make_udp`` returns is taken for them)."""

    __slots__ = ()


def _collect(*fields: Any) -> _Fields:
    return _Fields(fields)


def checked_decoder(counts: ChecksumCounts) -> Callable[..., Any]:
    """A decoder for :meth:`CaptureFile.walk <handshake_viz.pcapio.CaptureFile.walk>`
    that decodes as :mod:`~handshake_viz.decode` does, verifies each TCP segment's
    checksum, counts the statuses in ``counts`` and calls ``make`` with Packet's
    fields and then the status."""
    tally = counts.counts

    def decode(lt: int, buf: bytes, start: int, end: int, frame: int, ts: float, extra: int,
               make: Callable[..., Any], make_udp: Callable[..., Any] | None) -> Any:
        r = _decode(lt, buf, start, end, frame, ts, extra, _collect, make_udp)
        if type(r) is not _Fields:
            return r
        status = tcp_checksum(lt, buf, start, end, extra)
        tally[status] += 1
        return make(*r, status)

    return decode


def verified_records(reader: CaptureReader, make: Callable[..., Any],
                     make_udp: Callable[..., Any] | None) -> Iterator[Any]:
    """``reader.records(make, make_udp, verify_checksums=True)``: ``make`` gets each TCP
    segment's checksum status after Packet's fields.  The counts are
    ``reader.stats.checksums``; segments the capture does not hold whole are named
    in a warning once the walk is over (they are never flagged)."""
    with counting(reader) as counts:
        yield from reader.walk(checked_decoder(counts), make, make_udp)


@contextmanager
def counting(reader: CaptureReader) -> Iterator[ChecksumCounts]:
    """The counts of a verifying walk over ``reader`` (``reader.stats.checksums``), and
    the warning that names the segments it could not verify, once the walk is over
    (the compiled front end verifies through this too)."""
    counts = reader.stats.checksums = ChecksumCounts()
    try:
        yield counts
    finally:
        reader.stats.checksums = counts  # (a second pass over the file reset the stats)
        cut = counts[UNVERIFIABLE]
        if cut:
            reader.stats.warnings.append(
                f"{reader.name}: {cut} TCP segment{'s were' if cut > 1 else ' was'} not captured whole "
                "(a snaplen cut, or a frame shorter than its IP header says): "
                f"{'their checksums were' if cut > 1 else 'its checksum was'} not verified")
