"""The demo's socket calls, made and logged as :class:`~handshake_viz.model.Call` records.

The demo scenarios (:mod:`handshake_viz.demo`) make every socket call through
a :class:`Recorder`, which logs it as a :class:`Call` record (``time.time()``
before and after: the same wall clock as the capture's kernel timestamps), so
the demo needs no strace.
"""

from __future__ import annotations

import errno as errno_mod
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from handshake_viz.errors import CaptureError
from handshake_viz.model import Call, Endpoint
from handshake_viz.text import escape_preview

__all__ = [
    "ACCEPT_SETTLE",
    "HOST",
    "SOCKET_TIMEOUT",
    "Recorder",
]

HOST = "127.0.0.1"
#: Seconds every socket may block: a scenario that goes wrong fails, it never hangs.
SOCKET_TIMEOUT = 5.0
#: Seconds a client waits after the server thread said it is about to call accept().
ACCEPT_SETTLE = 0.005


def _endpoint(addr: Any) -> Endpoint | None:
    if isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str):
        return Endpoint(addr[0], int(addr[1]))
    return None


def _sockname(sock: socket.socket) -> Endpoint | None:
    try:
        ep = _endpoint(sock.getsockname())
    except OSError:
        return None
    return ep if ep is not None and ep.port else None


def _peername(sock: socket.socket) -> Endpoint | None:
    try:
        return _endpoint(sock.getpeername())
    except OSError:
        return None


def _errno_name(exc: OSError) -> str:
    if exc.errno is None:  # socket.timeout from SOCKET_TIMEOUT
        return "ETIMEDOUT"
    return errno_mod.errorcode.get(exc.errno, str(exc.errno))


def _preview(data: bytes) -> str:
    """The bytes as strace shows them: quoted and escaped (``"hello\\n"``)."""
    return escape_preview(data, limit=24)


_SHUT_WR = socket.SHUT_WR
_Socket = socket.socket  # the Recorder has a method named socket


class Recorder:
    """Makes socket calls and records each one as a :class:`Call`.

    Call names are the system calls strace would show for the same Python code
    (``accept4``, ``sendto``, ``recvfrom`` …), so a demo's calls.jsonl and an
    strace of the same program read alike.  ``fd`` is the socket's descriptor
    at the time of the call; ``accept4`` returns the new descriptor and carries
    the new connection's endpoints.  A failed call is recorded with ``ret=-1``
    and its errno name, then the exception is re-raised.  Thread-safe.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        # socket -> its last known (local, remote); weak, so a new socket never inherits
        # the entry of a dead one that happened to have the same id()
        self._known: weakref.WeakKeyDictionary[_Socket, tuple[Endpoint | None, Endpoint | None]] = (
            weakref.WeakKeyDictionary()
        )
        self._accepting: weakref.WeakKeyDictionary[_Socket, threading.Event] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def calls(self) -> list[Call]:
        """The calls so far, ordered by start time.

        A ``socket()`` call has no address yet when it returns; it is given the
        endpoints of the first later call on its descriptor (the bind, connect or
        accept that gave it one), so the diagram puts it in the right lane.
        """
        with self._lock:
            calls = sorted(self._calls, key=lambda c: (c.start, c.end))
        out = []
        for i, c in enumerate(calls):
            if c.call == "socket" and c.local is None and c.remote is None:
                later = next((d for d in calls[i + 1:] if d.fd == c.ret and d.call != "accept4"), None)
                if later is not None:
                    c = replace(c, local=later.local, remote=later.remote)
            out.append(c)
        return out

    def _add(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _run(
        self,
        sock: _Socket,
        name: str,
        fn: Callable[[], Any],
        *,
        args: str = "",
        ret: Callable[[Any], int] = lambda _r: 0,
        nbytes: Callable[[Any], int | None] = lambda _r: None,
        local: Callable[[Any], Endpoint | None] | None = None,
        remote: Callable[[Any], Endpoint | None] | None = None,
        local_hint: Endpoint | None = None,
        remote_hint: Endpoint | None = None,
        how: str | None = None,
        sockaddr: Endpoint | None = None,
    ) -> Any:
        """Make one call and record it.

        The endpoints are the socket's after the call, else before it, else the
        last ones this socket was seen with (a socket reset by its peer has no
        peer name any more, but its calls still belong to that connection), else
        the address the call asked for (``local_hint``/``remote_hint``: a failed
        bind is drawn on the side of the address it wanted).
        """
        fd = sock.fileno()
        known_local, known_remote = self._known.get(sock, (None, None))
        local_before = _sockname(sock) or known_local
        remote_before = _peername(sock) or known_remote
        tid = threading.get_native_id()
        start = time.time()
        try:
            result = fn()
        except OSError as exc:
            end = time.time()
            self._add(Call(
                pid=self.pid, tid=tid, fd=fd, call=name, start=start, end=end, ret=-1,
                errno=_errno_name(exc), args=args,
                local=_sockname(sock) or local_before or local_hint,
                remote=_peername(sock) or remote_before or remote_hint, how=how, sockaddr=sockaddr,
            ))
            raise
        end = time.time()
        is_open = sock.fileno() >= 0
        loc = local(result) if local is not None else (_sockname(sock) if is_open else None)
        rem = remote(result) if remote is not None else (_peername(sock) if is_open else None)
        loc = loc or local_before or local_hint
        rem = rem or remote_before or remote_hint
        if local is None and remote is None:
            self._known[sock] = (loc, rem)
        self._add(Call(
            pid=self.pid, tid=tid, fd=fd, call=name, start=start, end=end, ret=ret(result),
            args=args, local=loc, remote=rem, nbytes=nbytes(result), how=how, sockaddr=sockaddr,
        ))
        return result

    # -- the calls ------------------------------------------------------------

    def socket(self, kind: int = socket.SOCK_STREAM) -> _Socket:
        tid = threading.get_native_id()
        start = time.time()
        sock = socket.socket(socket.AF_INET, kind)
        end = time.time()
        sock.settimeout(SOCKET_TIMEOUT)
        what = "SOCK_STREAM" if kind == socket.SOCK_STREAM else "SOCK_DGRAM"
        self._add(Call(pid=self.pid, tid=tid, fd=None, call="socket", start=start, end=end,
                       ret=sock.fileno(), args=f"AF_INET, {what}"))
        return sock

    def setsockopt(self, sock: _Socket, option: str, value: int = 1) -> None:
        self._run(sock, "setsockopt",
                  lambda: sock.setsockopt(socket.SOL_SOCKET, getattr(socket, option), value),
                  args=f"SOL_SOCKET, {option}, {value}")

    def bind(self, sock: _Socket, port: int = 0) -> int:
        """Bind to 127.0.0.1:``port``; returns the bound port."""
        self._run(sock, "bind", lambda: sock.bind((HOST, port)), args=f"{HOST}:{port}",
                  local_hint=Endpoint(HOST, port) if port else None, sockaddr=Endpoint(HOST, port))
        return int(sock.getsockname()[1])

    def listen(self, sock: _Socket, backlog: int) -> None:
        self._run(sock, "listen", lambda: sock.listen(backlog), args=str(backlog))

    def _accepting_event(self, sock: _Socket) -> threading.Event:
        with self._lock:
            event = self._accepting.get(sock)
            if event is None:
                event = self._accepting[sock] = threading.Event()
            return event

    def wait_accepting(self, sock: _Socket) -> None:
        """Return once a thread is (all but) blocked in ``accept()`` on ``sock``.

        So that a client started next finds the server waiting, and the diagram
        shows the classic picture: accept() called first, returning after the
        handshake.  (The ``backlog`` lesson does the opposite on purpose.)
        """
        if not self._accepting_event(sock).wait(SOCKET_TIMEOUT):
            raise CaptureError("demo: the server thread never reached accept()")
        time.sleep(ACCEPT_SETTLE)

    def accept(self, sock: _Socket) -> _Socket:
        self._accepting_event(sock).set()
        conn, _addr = self._run(
            sock, "accept4", sock.accept,
            ret=lambda r: r[0].fileno(),
            local=lambda r: _sockname(r[0]), remote=lambda r: _peername(r[0]),
        )
        conn.settimeout(SOCKET_TIMEOUT)
        return conn

    def connect(self, sock: _Socket, port: int) -> None:
        self._run(sock, "connect", lambda: sock.connect((HOST, port)), args=f"{HOST}:{port}",
                  remote_hint=Endpoint(HOST, port), sockaddr=Endpoint(HOST, port))

    def send(self, sock: _Socket, data: bytes) -> int:
        return int(self._run(sock, "sendto", lambda: sock.send(data), args=_preview(data),
                             ret=lambda n: n, nbytes=lambda n: n))

    def recv(self, sock: _Socket, size: int = 4096) -> bytes:
        data: bytes = self._run(sock, "recvfrom", lambda: sock.recv(size), args=str(size),
                                ret=len, nbytes=len)
        return data

    def sendto(self, sock: _Socket, data: bytes, addr: Endpoint) -> int:
        return int(self._run(sock, "sendto", lambda: sock.sendto(data, (addr.ip, addr.port)),
                             args=f"{_preview(data)}, {addr}", ret=lambda n: n, nbytes=lambda n: n,
                             remote=lambda _n: addr, sockaddr=addr))

    def recvfrom(self, sock: _Socket, size: int = 4096) -> tuple[bytes, Endpoint]:
        data, addr = self._run(sock, "recvfrom", lambda: sock.recvfrom(size), args=str(size),
                               ret=lambda r: len(r[0]), nbytes=lambda r: len(r[0]),
                               remote=lambda r: _endpoint(r[1]))
        peer = _endpoint(addr)
        assert peer is not None
        return data, peer

    def shutdown(self, sock: _Socket, how: int = _SHUT_WR) -> None:
        name = {socket.SHUT_RD: "SHUT_RD", socket.SHUT_WR: "SHUT_WR", socket.SHUT_RDWR: "SHUT_RDWR"}[how]
        self._run(sock, "shutdown", lambda: sock.shutdown(how), args=name, how=name)

    def poll(self, sock: _Socket, timeout: float = SOCKET_TIMEOUT) -> int:
        """Wait until ``sock`` is readable without reading it (``poll(POLLIN)``)."""
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return int(self._run(sock, "poll", lambda: len(poller.poll(int(timeout * 1000))),
                             args="POLLIN", ret=lambda n: n))

    def close(self, sock: _Socket) -> None:
        # The endpoints are read before the call: a closed socket has none.
        self._run(sock, "close", sock.close)
