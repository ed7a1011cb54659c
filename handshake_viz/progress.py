"""The progress line of a long analysis: packets/s, how much of the file, and the time left.

``hsviz analyze`` shows it on standard error when that is a terminal (and standard
output is not the same terminal) and the analysis has taken more than about a
second (:data:`DELAY`, or ``HSVIZ_PROGRESS_DELAY`` seconds); it redraws the one
line in place (``\\r``) every :data:`EVERY` seconds at most, and erases it before the
output's last lines and any warning.  Nothing at all is written when standard
error is not a terminal (a pipe, a file, CI's log).

The capture's reader calls the :class:`Progress` with the records read so far each
time it reads a chunk of the file (``CaptureFile.progress``, on both the compiled and
the Python path); the share of the file is the file descriptor's offset over the
file's size (for a gzip-compressed capture, of the compressed bytes), so a pipe has
no percentage or ETA, only the rate.
"""

from __future__ import annotations

import os
import stat
import time
from typing import TextIO

__all__ = ["DELAY", "EVERY", "Progress"]

#: Seconds of analysis before the line first shows.
DELAY = 1.0
#: Seconds between two redraws at most.
EVERY = 0.25


class Progress:
    """Draws the progress line on ``out`` as a reader calls it (see the module docstring):
    :meth:`watch` a reader, and :meth:`close` (erase the line) before writing to ``out``."""

    def __init__(self, out: TextIO, *, delay: float = DELAY, every: float = EVERY) -> None:
        self._out = out
        self._fd: int | None = None
        self._size = 0
        self._every = every
        self._start = time.monotonic()
        self._next = self._start + delay
        self._shown = False

    @classmethod
    def on(cls, out: TextIO, output: TextIO | None = None) -> Progress | None:
        """A Progress on ``out`` when it is a terminal and ``output`` (where the results
        go) is not, else None: results scrolling by on the same terminal are progress
        enough, and a redrawn line would be cut into them."""
        def tty(stream: TextIO | None) -> bool:
            try:
                return stream is not None and stream.isatty()
            except (AttributeError, ValueError):
                return False

        if not tty(out) or tty(output):
            return None
        try:  # (for the tests: a shorter wait than a second)
            delay = float(os.environ.get("HSVIZ_PROGRESS_DELAY", DELAY))
        except ValueError:
            delay = DELAY
        return cls(out, delay=delay)

    def watch(self, reader: object) -> None:
        """Be called by ``reader`` (a ``CaptureFile``) at each chunk it reads; the share
        of the file is its file descriptor's offset over the file's size."""
        self._fd, self._size = None, 0
        try:
            fd = reader._stream.fileno()  # type: ignore[attr-defined]
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                self._fd, self._size = fd, st.st_size
        except (AttributeError, OSError, ValueError):
            pass
        reader.progress = self  # type: ignore[attr-defined]

    def __call__(self, records: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._every
        self._out.write("\r" + self.line(records, now - self._start) + "\x1b[K")
        self._out.flush()
        self._shown = True

    def line(self, records: int, elapsed: float) -> str:
        """``hsviz: 1,234,567 packets, 812,345 packets/s, 63% of the file, ETA 2 s``."""
        rate = records / elapsed if elapsed > 0 else 0.0
        text = f"hsviz: {records:,} packets, {rate:,.0f} packets/s"
        done = self._done()
        if done is not None:
            text += f", {done:.0%} of the file"
            if done > 0:
                text += f", ETA {elapsed * (1 - done) / done:.0f} s"
        return text

    def _done(self) -> float | None:
        """The share of the file read, or None when that cannot be told (a pipe)."""
        if self._fd is None:
            return None
        try:
            offset = os.lseek(self._fd, 0, os.SEEK_CUR)
        except OSError:
            return None
        return min(offset / self._size, 1.0)

    def close(self) -> None:
        """Erase the line, if it was drawn; it is drawn again at the next call."""
        if self._shown:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._shown = False
