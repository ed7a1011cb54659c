"""Text for people: payload previews, durations, byte counts, and wire text made safe.

One helper for every view (the text ladder, the diagram, the notebook), so that a
preview of the same bytes or a duration of the same length reads the same
everywhere.  Pure functions of their arguments.

:func:`safe_text` is the one escape for text that came from outside (a capture, a
call log, a file name) on its way to a terminal, an error message, an SVG/HTML
file or a pcapng comment: a call log can name a call ``send\x1b[31m`` and a raw ESC
repaints a terminal or makes an SVG invalid XML.
"""

from __future__ import annotations

import re

__all__ = [
    "PREVIEW_CHARS",
    "clock_text",
    "escape_preview",
    "human_duration",
    "humanize_bytes",
    "plural",
    "safe_text",
    "title_duration",
]

# Characters no sink may receive raw: C0 and C1 controls and DEL (terminal escapes;
# invalid in XML 1.0), lone surrogates (cannot be encoded), line and paragraph
# separators, bidirectional overrides and isolates (text that reads other than it
# is), and the two noncharacters XML forbids.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ufffe\uffff\ud800-\udfff]")


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: object) -> str:
    """``str(text)`` with every control, separator, bidi and surrogate character
    written as ``\\xNN`` / ``\\uNNNN``: safe for a terminal, an error line, XML
    (SVG, HTML) and UTF-8.  Printable text, backslashes included, is unchanged, so
    strace's own escapes read as strace printed them.

    ``safe_text("send\\x1b[31m") == "send\\\\x1b[31m"``.
    """
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape_char, s) if _UNSAFE.search(s) else s

#: Characters of payload a preview shows inside its quotes (escapes count in full).
PREVIEW_CHARS = 16

_ESCAPES = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}


def escape_preview(payload: bytes, length: int | None = None, limit: int = PREVIEW_CHARS) -> str:
    """Quoted, escaped start of a payload, at most ``limit`` characters inside the quotes.

    ``escape_preview(b"HELLO\\n") == '"HELLO\\\\n"'``.  Escapes are those strace
    prints (``\\n``, ``\\x00``) and are never cut in half; ``…`` marks a cut, also
    when the capture holds fewer bytes than the segment carried (``length``).  An
    empty payload (nothing captured) gives ``""``.  The result is printable ASCII
    plus the ellipsis, whatever the bytes were.
    """
    if not payload:
        return ""
    out: list[str] = []
    used = 0
    cut = False
    last = len(payload) - 1
    for i, b in enumerate(payload):
        piece = _ESCAPES.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")
        if used + len(piece) > limit or (used + len(piece) == limit and i < last):
            cut = True
            break
        out.append(piece)
        used += len(piece)
    if length is not None and length > len(payload):
        cut = True
    return '"' + "".join(out) + ("…" if cut else "") + '"'


def humanize_bytes(n: int) -> str:
    """``humanize_bytes(90112) == '88 KiB'``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n} B"  # pragma: no cover


def human_duration(seconds: float) -> str:
    """``0.4 s``, ``12 ms``, ``1.5 ms``, ``350 µs`` (always a unit, never scientific)."""
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s >= 100:
        return f"{sign}{s:,.0f} s"
    if s >= 0.1:
        return f"{sign}{s:.1f} s"
    if s >= 0.01:
        return f"{sign}{s * 1e3:.0f} ms"
    if s >= 0.001:
        return f"{sign}{s * 1e3:.1f} ms"
    return f"{sign}{s * 1e6:.0f} µs"


def title_duration(seconds: float) -> str:
    """A duration with more digits, for titles: ``1.70 ms``, ``2.35 s``."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:,.2f} s"


def clock_text(ms: float) -> str:
    """A time since the start, in ms: microseconds where they matter (loopback), fewer
    digits for long times: ``0.054 ms``, ``13.58 ms``, ``299.2 ms``, ``120,000 ms``."""
    a = abs(ms)
    if a < 10:
        return f"{ms:.3f} ms"
    if a < 100:
        return f"{ms:.2f} ms"
    if a < 100_000:
        return f"{ms:,.1f} ms"
    return f"{ms:,.0f} ms"


def plural(n: int, one: str, many: str) -> str:
    """``plural(1, "segment", "segments") == "1 segment"``, with thousands separators."""
    return f"{n:,} {one if n == 1 else many}"
