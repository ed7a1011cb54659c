"""A producer run in a forked child process, its items read in the parent.

``with Child(name, produce) as items:`` forks; the child iterates ``produce()`` and
sends each item over a pipe, pickled; the parent iterates ``items``.  Two commands
use it to put the machine's second CPU to work: ``hsviz analyze --jsonl`` (the child
decodes and tracks while the parent formats, :mod:`~handshake_viz.analyze`) and
``hsviz plot --conn`` (the child reads the capture while the parent loads
matplotlib, :mod:`~handshake_viz.cli`).

The child ignores SIGINT (Ctrl-C is the parent's to handle) and is killed when the
parent leaves the ``with`` block early, on any error or interrupt, or when the
reader of the output went away.  An error the child raises on purpose
(HsvizError) is sent over and raised again in the parent, after the items before
it; any other exception is a bug, and the child prints its traceback.  A child that
stops without saying why is a :class:`~handshake_viz.errors.WorkerError` naming
``name`` (the capture).
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from handshake_viz.errors import HsvizError, WorkerError

__all__ = ["Child", "readable_beside", "usable_cpus"]

_PIPE_SIZE = 1 << 20  # room for a few hundred batches, so neither side waits on the other


def readable_beside(path: str | os.PathLike[str]) -> int | None:
    """The size of ``path`` when a forked child can read it while its parent reads it
    too or does other work: ``fork`` exists and ``path`` is a regular file; None for
    standard input (``-``), a pipe, a missing file (its reader says what is wrong)."""
    if not hasattr(os, "fork") or os.fspath(path) == "-":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Child:
    """``with Child(name, produce) as items:`` runs ``produce()`` in a forked child and
    iterates its items in the parent (see the module's docstring)."""

    def __init__(self, name: str, produce: Callable[[], Iterable[Any]]) -> None:
        self._name = name
        self._produce = produce
        self._pid = 0
        self._rfd = -1

    def __enter__(self) -> Iterator[Any]:
        # Output still buffered in the parent would be written twice once the child
        # flushes its copy of the buffers: flush before forking.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        rfd, wfd = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(wfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only makes the two sides wait more often
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(rfd)
            _child_main(wfd, self._produce)
        os.close(wfd)
        self._pid, self._rfd = pid, rfd
        return self._items()

    def ready(self) -> bool:
        """Whether the child has sent its first item (or ended): taking it would not wait.
        Only before the items are read."""
        import select

        return self._rfd >= 0 and bool(select.select([self._rfd], [], [], 0)[0])

    def _items(self) -> Iterator[Any]:
        with os.fdopen(self._rfd, "rb", buffering=1 << 16, closefd=True) as pipe:
            self._rfd = -1
            read = pipe.read
            loads = pickle.loads
            while True:
                head = read(4)
                if len(head) < 4:
                    raise WorkerError(self._died())
                size = int.from_bytes(head, "little")
                blob = read(size)
                if len(blob) < size:
                    raise WorkerError(self._died())
                kind, value = loads(blob)
                if kind == "error":
                    raise value
                if kind == "done":
                    return
                yield value

    def _died(self) -> str:
        _, status = os.waitpid(self._pid, 0)
        self._pid = 0
        if os.WIFSIGNALED(status):
            how = f"killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exit status {os.waitstatus_to_exitcode(status)}"
        return f"{self._name}: the analysing process stopped early ({how})"

    def __exit__(self, *exc: object) -> None:
        if self._rfd >= 0:
            os.close(self._rfd)
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover - already gone
                pass
            os.waitpid(self._pid, 0)
            self._pid = 0


def _child_main(wfd: int, produce: Callable[[], Iterable[Any]]) -> None:
    """Run ``produce`` and send its items; exit without returning to the caller."""
    status = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with os.fdopen(wfd, "wb", buffering=1 << 16) as pipe:
            write, flush = pipe.write, pipe.flush
            dumps = pickle.dumps
            try:
                for item in produce():
                    blob = dumps(("item", item), 5)
                    write(len(blob).to_bytes(4, "little"))
                    write(blob)
                    flush()  # each item on its way at once: none is lost if we are killed
                blob = dumps(("done", None), 5)
            except HsvizError as exc:
                blob = dumps(("error", exc), 5)
            write(len(blob).to_bytes(4, "little"))
            write(blob)
    except BrokenPipeError:
        status = 0  # the parent stopped reading: it has what it wants
    except BaseException:  # a bug: show it, and let the parent report the exit
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(status)
