"""What ``hsviz capture`` does with root: open what needs it, then give it all up.

Theory of operation
-------------------
A capture needs privilege for a few ``open`` calls and for nothing after them: the
packet socket (``CAP_NET_RAW``), strace attaching to processes it did not start
(``CAP_SYS_PTRACE``), and whatever other privileged sources a capture grows (a
tracefs instance for kernel tracepoints).  Like ``tcpdump -Z``, hsviz opens them
first, as root, and then drops to the user who ran it *before* it reads a packet,
parses a line of strace output or opens an output file:

1. :class:`PrivilegedSetup` collects the *openers*: callables run with root's
   rights, in order, after the packet socket is open and filtered (``LiveCapture``
   opens that itself, first).  A new privileged source adds itself with
   :meth:`PrivilegedSetup.add`; whatever it opens stays open across the drop.
2. :func:`drop_privileges` then, while still root: drops every capability from
   the bounding set (no later ``execve`` of a setuid or file-capability program can
   bring one back), clears the ambient set and locks ``SECBIT_NOROOT`` (uid 0 gains
   nothing by ``execve``); sets the groups, gid and uid (real, effective and saved)
   of the target user; clears the effective, permitted and inheritable sets; sets
   ``PR_SET_NO_NEW_PRIVS``; and reads ``/proc/self/status`` back to check.  Any
   step that fails ends the capture (fail closed).

The target (:func:`capture_identity`): the user who ran sudo (``SUDO_UID`` /
``SUDO_GID`` and that user's groups), or ``--user NAME``; run as plain root
without ``--user``, hsviz stays uid 0 but still loses every capability.  The
process is left non-dumpable (the kernel does that when the uid changes), so the
user cannot ptrace it to reach the packet socket, whose filter is locked
(``SO_LOCK_FILTER``) before the drop.

What keeps privilege after the drop: only the open packet socket, which can do
nothing but receive the port's packets, and -- with ``--trace-pid`` -- strace,
which must stay root to keep tracing another user's processes (it runs with the
user as its real uid, so the dropped hsviz may still signal it to detach).  A
command after ``--`` is started after the drop by strace running as the user:
nothing of it is privileged.  ``--as-root`` (refused under sudo: hsviz cannot know
whether the user may run that command as root) starts strace before the drop,
with root's full rights, for a real root login.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import threading
from collections.abc import Callable
from dataclasses import dataclass

from handshake_viz.errors import CaptureError, UsageError

__all__ = [
    "Identity",
    "PrivilegedSetup",
    "capture_identity",
    "drop_privileges",
    "process_status",
]

# linux/prctl.h, linux/securebits.h, linux/capability.h
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_CHILD_SUBREAPER = 36
SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
#: capset(2)'s number (the C library has no wrapper); elsewhere the uid change
#: alone clears the effective and permitted sets and the check below tells.
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "riscv64": 91}.get(os.uname().machine)

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> None:
    """``prctl(2)``; OSError on failure.  Loaded once, so a ``preexec_fn`` may call it."""
    if _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                   ctypes.c_ulong(arg5)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass(frozen=True, slots=True)
class Identity:
    """Whom a capture runs as after the drop."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str

    @classmethod
    def of_user(cls, entry: pwd.struct_passwd, gid: int | None = None) -> Identity:
        group = entry.pw_gid if gid is None else gid
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, group))))
        return cls(entry.pw_uid, group, groups, entry.pw_name, entry.pw_dir)


def _lookup(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise UsageError(f"--user {name}: no such user") from None


def capture_identity(user: str | None = None, *, as_root: bool = False) -> Identity:
    """The identity a capture drops to: ``--user``, else the user who ran sudo, else
    the current one (uid 0 for a real root login, which then keeps its uid and loses
    its capabilities).  UsageError for ``--as-root`` under sudo or with ``--user``.
    """
    sudo_uid = os.environ.get("SUDO_UID", "")
    under_sudo = os.geteuid() == 0 and sudo_uid.isdigit() and int(sudo_uid) != 0
    if as_root and under_sudo:
        raise UsageError("--as-root: refused under sudo: hsviz cannot know whether the user who ran "
                         "sudo may run that command as root (log in as root, or run it without --as-root)")
    if as_root and user is not None:
        raise UsageError("--as-root: runs the command as root, so it cannot go with --user")
    if user is not None:
        if os.geteuid() != 0:
            raise UsageError(f"--user {user}: switching users needs root")
        return Identity.of_user(_lookup(user))
    if under_sudo:
        gid = os.environ.get("SUDO_GID", "")
        try:
            entry = pwd.getpwuid(int(sudo_uid))
        except KeyError:
            raise UsageError(f"SUDO_UID {sudo_uid}: no such user") from None
        return Identity.of_user(entry, int(gid) if gid.isdigit() else None)
    uid = os.geteuid()
    try:
        entry = pwd.getpwuid(uid)
        name, home = entry.pw_name, entry.pw_dir
    except KeyError:
        name, home = str(uid), "/"
    return Identity(uid, os.getegid(), tuple(sorted(set(os.getgroups()))), name, home)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _clear_capabilities() -> None:
    """Empty effective, permitted and inheritable sets of this thread (allowed without
    privilege: a process may always give capabilities up)."""
    if _SYS_CAPSET is None:
        return
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.syscall(_SYS_CAPSET, ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63


def process_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status`` as a dict: ``Uid``, ``Gid``, ``Groups``, ``CapEff``, ``CapPrm``,
    ``CapInh``, ``CapBnd``, ``CapAmb``, ``NoNewPrivs``, …"""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def drop_privileges(target: Identity) -> None:
    """Become ``target`` and keep no capability (see the module docstring for the
    steps).  Must run while this process is its only thread: capabilities, the
    bounding set and no_new_privs belong to a thread, so a thread started before
    the drop would keep them.  CaptureError when anything does not hold afterwards.
    """
    n = _threads()
    if n != 1:
        raise CaptureError(f"cannot drop privileges safely: {n} threads are running (a bug in hsviz)")
    try:
        if os.geteuid() == 0:
            for cap in range(_last_cap() + 1):
                try:
                    prctl(PR_CAPBSET_DROP, cap)
                except OSError as exc:
                    if exc.errno != 22:  # EINVAL: a capability this kernel does not have
                        raise
            prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED
                  | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)
            os.setgroups(list(target.groups))
            os.setresgid(target.gid, target.gid, target.gid)
            os.setresuid(target.uid, target.uid, target.uid)
        try:
            prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError:
            pass  # a kernel before 4.3 has no ambient set
        _clear_capabilities()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        raise CaptureError(f"cannot drop privileges to {target.name}: {exc.strerror or exc}") from None
    status = process_status()
    ids = {status["Uid"], status["Gid"]}
    if ids != {f"{target.uid}\t" * 3 + str(target.uid), f"{target.gid}\t" * 3 + str(target.gid)} or any(
        int(status.get(k, "0"), 16) for k in ("CapEff", "CapPrm", "CapInh", "CapAmb")
    ):
        raise CaptureError(f"cannot drop privileges to {target.name}: still Uid {status['Uid']}, "
                           f"CapEff {status['CapEff']}")
    if target.uid != 0:  # the user's own home and name for what runs from now on
        os.environ.update(HOME=target.home, USER=target.name, LOGNAME=target.name)


class PrivilegedSetup:
    """The privileged part of a capture: openers run as root, then the drop to ``target``.

    ``LiveCapture(privileges=setup)`` calls :meth:`open_and_drop` right after its
    packet socket is open, filtered and locked, and before it opens the pcap.  Other
    privileged sources hook in with :meth:`add` before the capture runs (the
    ``--trace-pid`` strace attach; a kernel tracepoint source would open its tracefs
    instance here); what they open stays open, what they start keeps running.
    """

    def __init__(self, target: Identity) -> None:
        self.target = target
        self.openers: list[Callable[[], object]] = []
        #: Run as the user right after the drop, before any output file is made
        #: (checks that the outputs may be written).
        self.after: list[Callable[[], object]] = []
        self.dropped = False

    def add(self, opener: Callable[[], object]) -> None:
        """Run ``opener()`` with root's rights, after the packet socket, before the drop."""
        if self.dropped:
            raise CaptureError("a privileged opener was added after the drop")
        self.openers.append(opener)

    def open_and_drop(self) -> None:
        """The openers (as root), the drop, then the ``after`` callables (as the user)."""
        for opener in self.openers:
            opener()
        drop_privileges(self.target)
        self.dropped = True
        for then in self.after:
            then()

