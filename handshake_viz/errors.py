"""One exception tree for the whole project.

::

    HsvizError                      every error hsviz raises on purpose
     ├── InputError                 the user's input cannot be used (exit status 2)
     │    ├── CaptureFileError      a pcap/pcapng file: missing, not a capture, truncated
     │    ├── TraceFileError        a strace log or calls.jsonl that cannot be read
     │    ├── KernelFileError       a kernel.jsonl (kernel events) that cannot be read
     │    └── UsageError            a value that makes no sense (port 0, a negative row count)
     │         └── NoSuchConnection a connection number the capture does not have
     ├── CaptureError               live capture failed (interface, socket, …)
     │    ├── PermissionDeniedError capturing or tracing needs root / CAP_NET_RAW
     │    └── KernelEventsUnavailable  no root, no tracefs or no tracepoint: the capture
     │                                 goes on without kernel events (said in one line)
     ├── TraceError                 running or attaching strace failed
     ├── OutputError                a file cannot be written (path, extension)
     └── WorkerError                the child process analysing a capture died

Every message is one line that names the file, connection or value and what is
wrong, in the library's own words (``trace.pcap: record 1234 truncated: 40 of 74
bytes``; ``trace.pcap: no connection 9: the capture has 3 connections``); the CLI
prints that line and exits with ``exit_status``, putting its own flag names where
the library's words map to one (``--conn 9 out of range``).  A message may quote a
file name or a call log's text: the CLI passes it through
:func:`handshake_viz.text.safe_text` before it reaches a terminal.  :func:`os_error` is
the one translation of an OSError into these words.
"""

from __future__ import annotations

import os as _os

# The exception tree, which handshake_viz re-exports whole; ``os_error`` is the package's
# own helper, imported by name.
__all__ = [
    "CaptureError",
    "NoSuchConnection",
    "CaptureFileError",
    "HsvizError",
    "InputError",
    "KernelEventsUnavailable",
    "KernelFileError",
    "OutputError",
    "PermissionDeniedError",
    "TraceError",
    "TraceFileError",
    "UsageError",
    "WorkerError",
]


class HsvizError(Exception):
    """Base of every error hsviz raises on purpose."""

    exit_status = 2


class InputError(HsvizError):
    """The input (a file or an option) cannot be used."""


class CaptureFileError(InputError):
    """A capture file is missing, unreadable, not a capture, or broken."""


class TraceFileError(InputError):
    """A strace log or a calls.jsonl file cannot be used."""


class KernelFileError(InputError):
    """A ``.kernel.jsonl`` file (kernel events beside a capture) cannot be used."""


class UsageError(InputError):
    """An option value that cannot work (port out of range, --conn out of range, …)."""


class NoSuchConnection(UsageError):
    """A connection number the capture does not have (``conn``, out of ``count``)."""

    def __init__(self, source: object, conn: int, count: int) -> None:
        self.source, self.conn, self.count = source, conn, count
        super().__init__(f"{source}: no connection {conn}: the capture has {count} "
                         f"connection{'s' if count != 1 else ''}")

    def __reduce__(self) -> tuple[type[NoSuchConnection], tuple[object, int, int]]:
        # pickled whole: a child process that reads the capture raises it in the parent
        return type(self), (self.source, self.conn, self.count)


class CaptureError(HsvizError):
    """Live capture could not start or went wrong."""


class PermissionDeniedError(CaptureError):
    """Capturing or tracing needs privileges this process does not have."""


class KernelEventsUnavailable(CaptureError):
    """Kernel events cannot be recorded here (not root, no tracefs, a tracepoint this
    kernel lacks).  Never fatal: the capture goes on without them, after one line
    that says which and why."""


class TraceError(HsvizError):
    """Running or attaching strace failed."""


class OutputError(HsvizError):
    """An output file cannot be written."""


class WorkerError(HsvizError):
    """The child process that decodes and tracks a capture stopped without finishing
    (killed, out of memory): not the input's fault."""

    exit_status = 1


def os_error(exc: OSError, path: object, doing: str, kind: type[HsvizError] = OutputError) -> HsvizError:
    """The project's error for an OSError met while ``doing`` something to ``path``:
    ``kind`` with one line, ``PATH: cannot DOING: reason``, the reason in the
    system's own words (``No space left on device``).

    ``raise os_error(exc, path, "write") from None``.
    """
    from handshake_viz.text import safe_text

    reason = exc.strerror or str(exc) or type(exc).__name__
    shown = _os.fspath(path) if isinstance(path, _os.PathLike) else str(path)
    return kind(safe_text(f"{shown}: cannot {doing}: {reason}"))
