"""One exception tree for the whole project.

::

    HsvizError                      every error hsviz raises on purpose
     ├── InputError                 the user's input cannot be used (exit status 2)
     │    ├── CaptureFileError      a pcap/pcapng file: missing, not a capture, truncated
     │    ├── TraceFileError        a strace log or calls.jsonl that cannot be read
     │    └── UsageError            an option value that makes no sense (port 0, --conn 9 of 3)
     ├── CaptureError               live capture failed (interface, socket, …)
     │    └── PermissionDeniedError capturing or tracing needs root / CAP_NET_RAW
     ├── TraceError                 running or attaching strace failed
     ├── OutputError                a file cannot be written (path, extension)
     └── WorkerError                the child process analysing a capture died

Every message is one line that names the file or option and what is wrong, e.g.
``trace.pcap: record 1234 truncated: 40 of 74 bytes``; the CLI prints exactly
that line and exits with ``exit_status``.
"""

from __future__ import annotations

__all__ = [
    "CaptureError",
    "CaptureFileError",
    "HsvizError",
    "InputError",
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


class UsageError(InputError):
    """An option value that cannot work (port out of range, --conn out of range, …)."""


class CaptureError(HsvizError):
    """Live capture could not start or went wrong."""


class PermissionDeniedError(CaptureError):
    """Capturing or tracing needs privileges this process does not have."""


class TraceError(HsvizError):
    """Running or attaching strace failed."""


class OutputError(HsvizError):
    """An output file cannot be written."""


class WorkerError(HsvizError):
    """The child process that decodes and tracks a capture stopped without finishing
    (killed, out of memory): not the input's fault."""

    exit_status = 1
