"""Output files: created new by whoever hsviz runs as, never written through a link.

``hsviz capture`` starts as root and drops to the invoking user before it opens
an output file (:mod:`handshake_viz.privilege`), so the kernel judges every file
hsviz writes with the user's rights.  This module adds what the kernel cannot
know: an existing name is replaced only when it is a regular file that the user
may write (not a symbolic link, not a device, not a file they could only remove
because the directory is theirs), and a file is never opened by its name.

Every output is first made as a fresh temporary file in the target directory
(``mkstemp``: ``O_CREAT | O_EXCL | O_NOFOLLOW``, nobody else's file is ever
opened), given its mode (:data:`DEFAULT_MODE`, 0600: captures and call logs hold
payloads) and then renamed over the name.  Two ways:

* :func:`create_live`: renamed at once, the open descriptor returned: a live
  capture or strace log lives under its real name while it grows, so a crash
  leaves every complete record where the user expects it.
* :class:`AtomicFile`: renamed only once everything is written: a calls file or
  an export is either the whole new file or the old one, never half of each.

:func:`unlinked` tells a writer that its file has no name any more (the
directory was removed under it): the data written from then on is lost, and a
capture must say so rather than report success.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from handshake_viz.errors import OutputError, UsageError, os_error

__all__ = ["DEFAULT_MODE", "AtomicFile", "check_target", "create_live", "parse_mode", "unlinked"]

#: Mode of every file hsviz writes unless told otherwise (``--mode``).
DEFAULT_MODE = 0o600


def parse_mode(text: str) -> int:
    """``--mode 0640`` -> ``0o640``.  Owner read and write are required (hsviz and
    the user need them); execute and special bits are refused."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise UsageError(f"--mode {text}: give an octal mode such as 0600 or 0644") from None
    if mode & ~0o666 or mode & 0o600 != 0o600:
        raise UsageError(f"--mode {text}: must include owner read and write (0600) and no "
                         "execute or special bits")
    return mode


def check_target(path: str | os.PathLike[str]) -> None:
    """OutputError unless ``path`` may be replaced by a new file: it does not exist, or
    it is a regular file (not a symbolic link) that this process may write."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(exc, path, "write") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{os.fspath(path)}: is a symbolic link: hsviz does not write through "
                          "links (remove it or choose another name)")
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{os.fspath(path)}: cannot write: Is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{os.fspath(path)}: exists and is not a regular file: not replaced")
    if not _may_write(path):
        raise OutputError(f"{os.fspath(path)}: exists and you may not write it: not replaced")


def _may_write(path: str | os.PathLike[str]) -> bool:
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True, follow_symlinks=False)
    return os.access(path, os.W_OK, follow_symlinks=False)  # pragma: no cover - Linux has both


def _temp(path: Path, mode: int) -> tuple[int, str]:
    """A new, empty, private file beside ``path``: (descriptor, its name)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise os_error(exc, path, "write") from None
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        _discard(fd, tmp)
        raise os_error(exc, path, "write") from None
    return fd, tmp


def _discard(fd: int | None, tmp: str) -> None:
    if fd is not None:
        os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _put_in_place(tmp: str, path: Path) -> None:
    check_target(path)  # again: the name may have changed since the caller looked
    try:
        os.rename(tmp, path)
    except OSError as exc:
        raise os_error(exc, path, "write") from None


def create_live(path: str | os.PathLike[str], mode: int = DEFAULT_MODE) -> int:
    """A new file named ``path`` for a writer that appends as data arrives; returns its
    descriptor (write-only, close-on-exec).  OutputError (one line) when ``path`` may
    not be replaced (:func:`check_target`) or the directory cannot be written."""
    path = Path(path)
    check_target(path)
    fd, tmp = _temp(path, mode)
    try:
        _put_in_place(tmp, path)
    except BaseException:
        _discard(fd, tmp)
        raise
    return fd


def unlinked(fd: int) -> bool:
    """True when the file open on ``fd`` has no name left (deleted, or its directory
    removed): what is written to it can never be read again."""
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True


class AtomicFile:
    """``with AtomicFile(path, "w") as fh: ...``: written to a temporary file beside
    ``path`` and renamed over it only when the block finishes without an error; on
    an error the temporary file is removed and ``path`` is left as it was.

    ``mode_bits`` is the new file's mode; the open mode ``mode`` is ``"w"`` (text,
    UTF-8, or ``encoding``) or ``"wb"``.  OSError inside the block and on the rename
    becomes OutputError.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "w", *, mode_bits: int = DEFAULT_MODE,
                 encoding: str = "utf-8") -> None:
        self.path = Path(path)
        self._open_mode = mode
        self._mode_bits = mode_bits
        self._encoding = encoding
        self._tmp = ""
        self._fh: IO[Any] | None = None

    def __enter__(self) -> IO[Any]:
        check_target(self.path)
        fd, self._tmp = _temp(self.path, self._mode_bits)
        if "b" in self._open_mode:
            self._fh = os.fdopen(fd, self._open_mode)
        else:
            self._fh = os.fdopen(fd, self._open_mode, encoding=self._encoding)
        return self._fh

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        fh, self._fh = self._fh, None
        assert fh is not None
        if kind is None:
            try:
                fh.close()
            except OSError as err:
                _discard(None, self._tmp)
                raise os_error(err, self.path, "write") from None
            try:
                _put_in_place(self._tmp, self.path)
            except BaseException:
                _discard(None, self._tmp)
                raise
            return
        try:
            fh.close()
        except OSError:
            pass
        _discard(None, self._tmp)
        if isinstance(exc, OSError):
            raise os_error(exc, self.path, "write") from None
