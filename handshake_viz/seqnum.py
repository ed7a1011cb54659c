"""TCP arithmetic shared by the tracker and its Zeek view: sequence numbers modulo
2**32 (RFC 9293 §3.4) and the header's flag bits as plain ints (cheaper than
``Flag`` members in per-segment code)."""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = ["ACK", "FIN", "HALF", "MASK", "PSH", "RST", "SYN", "members", "seq_ge", "seq_gt", "seq_lt"]

MASK = 0xFFFFFFFF
HALF = 0x80000000

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def seq_gt(a: int, b: int) -> bool:
    """a > b in sequence space (RFC 9293 §3.4)."""
    return 0 < ((a - b) & MASK) < HALF


def seq_lt(a: int, b: int) -> bool:
    return 0 < ((b - a) & MASK) < HALF


def seq_ge(a: int, b: int) -> bool:
    return ((a - b) & MASK) < HALF


_E = TypeVar("_E", bound=enum.Enum)


def members(enum_cls: type[_E]) -> type[_E]:
    """A plain class holding ``enum_cls``'s members: ``members(Label).ACK is Label.ACK``.

    CPython 3.11 looks up every ``Label.ACK`` through ``EnumType.__getattr__``, about
    150 ns a time, more than a dozen of them per segment; a plain class attribute costs
    a fifth of that.  The per-segment code below names members through these.  (Typed
    as the enum class: to a type checker ``L.ACK`` is what ``Label.ACK`` is.)
    """
    return type(enum_cls.__name__, (), dict(enum_cls.__members__))  # type: ignore[return-value]
