"""The numbers the tracking modules share: sequence numbers modulo 2**32 (RFC 9293
§3.4), the header's flag bits and the sequence analysis's bits, as plain ints
(cheaper than ``Flag`` members in per-segment code).

Every module of the tracker takes its constants from here, and the compiled copy of
each (``handshake_viz._compiled``) declares the ones it uses as C numbers.  That is
why they live here rather than beside the code that gives them meaning: a compiled
module's C numbers are no longer Python names another module could import.  The
comparisons below spell MASK and HALF out for the same reason.
"""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = [
    "ACK", "A_ACK_LOST", "A_BAD_CHECKSUM", "A_DUPACK", "A_DUPLICATE", "A_FAST", "A_KA",
    "A_KA_ACK", "A_LOST", "A_OFFLOADED", "A_OOO", "A_RETRANS", "A_SPURIOUS", "A_WFULL",
    "A_WUPD", "A_ZWIN", "A_ZWP", "A_ZWP_ACK", "FIN", "HALF", "MASK", "PSH", "RST", "SYN",
    "UNSET", "members", "seq_ge", "seq_gt", "seq_lt",
]

MASK = 0xFFFFFFFF
HALF = 0x80000000
#: What a field holding a sequence number, an acknowledgement or a window holds before
#: the capture showed one (every real one is 0 .. 2**32 - 1): a number, not None, so
#: that the compiled tracker keeps such fields as C numbers.
UNSET = -1

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# The sequence analysis's bits (``seqanalysis``), in the order of Wireshark's expert
# info, which is the order of their names (``seqanalysis.analysis_names``): retransmission,
# fast and spurious retransmission, out-of-order, duplicate ACK, lost segment, ACKed
# unseen, zero window, zero-window probe, window update, window full, keep-alive,
# keep-alive ACK, zero-window-probe ACK (no name: it only keeps a probe's ACK from
# counting as a duplicate ACK), then hsviz's own duplicate, and what checksum
# verification found (``checksum``): bad, or offloaded.
(A_RETRANS, A_FAST, A_SPURIOUS, A_OOO, A_DUPACK, A_LOST, A_ACK_LOST, A_ZWIN, A_ZWP, A_WUPD,
 A_WFULL, A_KA, A_KA_ACK, A_ZWP_ACK, A_DUPLICATE, A_BAD_CHECKSUM, A_OFFLOADED) = (1 << i for i in range(17))


def seq_gt(a: int, b: int) -> bool:
    """a > b in sequence space (RFC 9293 §3.4)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000  # (MASK, HALF)


def seq_lt(a: int, b: int) -> bool:
    return 0 < ((b - a) & 0xFFFFFFFF) < 0x80000000


def seq_ge(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) < 0x80000000


_E = TypeVar("_E", bound=enum.Enum)


def members(enum_cls: type[_E]) -> type[_E]:
    """A plain class holding ``enum_cls``'s members: ``members(Label).ACK is Label.ACK``.

    CPython 3.11 looks up every ``Label.ACK`` through ``EnumType.__getattr__``, about
    150 ns a time, more than a dozen of them per segment; a plain class attribute costs
    a fifth of that.  The per-segment code below names members through these.  (Typed
    as the enum class: to a type checker ``L.ACK`` is what ``Label.ACK`` is.)
    """
    return type(enum_cls.__name__, (), dict(enum_cls.__members__))  # type: ignore[return-value]
