"""Socket calls from strace logs and call logs.

Two parts:

* :func:`parse_strace` turns strace text into :class:`~handshake_viz.model.Call`
  records.  It never raises on content: a line it cannot read is counted in
  ``StraceParse.unparsed`` and sampled in ``StraceParse.problems``.
* :func:`write_calls_jsonl` / :func:`read_calls_jsonl`: the ``trace.calls.jsonl``
  file beside a capture, one ``Call.to_json()`` object per line.

The logs come from :mod:`handshake_viz.tracer`, which runs strace and says why
it uses the flags it does.

Things strace does that the parser handles (all seen on this machine, strace 6.1):

* a call interrupted by another thread's line is split:
  ``recvfrom(5<TCP:[...]>,  <unfinished ...>`` and later
  ``<... recvfrom resumed>"hello", 4096, 0, NULL, NULL) = 5 <0.000099>``;
  the two halves are joined per thread (start from the first, return from the
  second);
* the fd decoration is printed when the call *starts*: ``connect(3<TCP:[6407]>,
  ...)`` shows only the socket inode, ``bind`` shows the address it binds.  The
  4-tuple appears on later calls on the same fd; the parser follows each fd
  from ``socket()``/``accept()`` to ``close()`` and fills ``local``/``remote``
  of earlier calls from it;
* ``accept``/``accept4`` return the new fd, decorated with the new connection's
  4-tuple (``= 4<TCP:[...]>``): that tuple is the call's ``local``/``remote``,
  ``fd`` is the listening socket and ``ret`` the new fd;
* signals (``--- SIGCHLD {...} ---``), exits (``+++ exited with 0 +++``,
  ``+++ killed by SIGKILL +++``), restarted calls
  (``= ? ERESTARTSYS (To be restarted if SA_RESTART is set)``, then
  ``restart_syscall(<... resuming interrupted poll ...>)``);
* a process killed inside a call (``accept4(3<...>,  <unfinished ...>) = ?``)
  and a call cut off when strace detached (``accept4(3<...>,  <detached ...>``):
  the call is kept with ``ret`` and ``errno`` both ``None`` (it never returned);
* when strace writes to stderr instead of ``-o``, its ``strace: Process N
  attached`` message can land in the middle of a line and push the rest of the
  line onto the next one; lines from the only tracee then carry no pid prefix;
* with ``-xx`` even addresses are hex-escaped: ``inet_addr("\\x31\\x32\\x37...")``.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import gc
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import TraceFileError, os_error
from .model import COUNTS_MESSAGES, SYSCALLS, Call, CallKind, Endpoint, call_kind, normalize_ip
from .outfile import DEFAULT_MODE, AtomicFile
from .pcapio import CALLS_SUFFIX, beside
from .text import safe_text

__all__ = [
    "ACCEPT_CALLS",
    "CALLS_OF_INTEREST",
    "READ_CALLS",
    "RESTART_ERRNOS",
    "WAIT_CALLS",
    "WRITE_CALLS",
    "StraceParse",
    "call_from_json",
    "call_facts",
    "calls_path_for",
    "load_calls",
    "parse_strace",
    "parse_strace_file",
    "read_calls_jsonl",
    "strace_line",
    "write_calls_jsonl",
]

# ----------------------------------------------------------------- vocabulary

def _named(kind: CallKind) -> frozenset[str]:
    return frozenset(name for name, k in SYSCALLS.items() if k is kind)


READ_CALLS = _named(CallKind.RECV)
WRITE_CALLS = _named(CallKind.SEND)
ACCEPT_CALLS = _named(CallKind.ACCEPT)
WAIT_CALLS = _named(CallKind.WAIT)
CALLS_OF_INTEREST = frozenset(SYSCALLS)  # model.SYSCALLS: every call hsviz knows by name
# Calls that only make sense on a socket: kept even when the fd is undecorated.
_SOCKET_ONLY = frozenset(
    {"bind", "listen", "connect", "shutdown", "setsockopt", "recv", "recvfrom",
     "recvmsg", "send", "sendto", "sendmsg"}
) | ACCEPT_CALLS
_EPOLL = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2"})
# Traced only to learn thread groups and to see interrupted waits finish.
_BOOKKEEPING = ("clone", "clone3", "fork", "vfork", "restart_syscall")

_PARSED = CALLS_OF_INTEREST | frozenset(_BOOKKEEPING)

RESTART_ERRNOS = frozenset(
    {"ERESTARTSYS", "ERESTARTNOINTR", "ERESTARTNOHAND", "ERESTART_RESTARTBLOCK"}
)
"""A call that failed with one of these was interrupted by a signal and restarted:
the kernel (or libc) runs it again, and the trace shows it again."""

# Connect "errors" that do not mean the connection failed.
_CONNECT_PENDING = frozenset({"EINPROGRESS", "EALREADY", "EISCONN"})

_MAX_PROBLEMS = 20
#: Longest line a call log or an strace log may have.  A call record is under a
#: kilobyte and strace -s 64 lines a few; a longer line is hostile or broken, and
#: reading it whole could take any amount of memory.
MAX_LINE = 65536
_MAX_ARGS = 120


@dataclass(frozen=True, slots=True)
class StraceParse:
    """What :func:`parse_strace` made of a log.

    ``calls`` are sorted by start time.  ``unparsed`` counts lines that looked
    broken (truncated, no timestamp, a return value that cannot be read);
    other syscalls, signals and strace's own messages are skipped silently.
    ``problems`` holds a few short samples (``name: line N: reason``).
    ``exits`` maps a thread id to how it ended (``"exited with 0"``,
    ``"killed by SIGKILL"``) when the log says so.
    """

    calls: list[Call] = field(default_factory=list)
    unparsed: int = 0
    problems: list[str] = field(default_factory=list)
    exits: dict[int, str] = field(default_factory=dict)
    lines: int = 0


# ------------------------------------------------------------ line grammar

_LEADER = re.compile(
    r"(?:\[pid\s+(?P<p1>\d{1,10})(?:<[^>]*>)?\]\s+|(?P<p2>\d{1,10})(?:<[^>]*>)?\s+)?"
    r"(?P<ts>\d{1,12}\.\d{1,9})\s+(?P<rest>.*)",
    re.DOTALL,
)
_TIME_OF_DAY = re.compile(r"(?:\[pid\s+\d+[^\]]*\]\s+|\d+\S*\s+)?\d\d:\d\d:\d\d")
_CALL_OPEN = re.compile(r"(\w+)\(")
_RESUMED = re.compile(r"<\.\.\. (\w+) resumed>\s?(.*)", re.DOTALL)
_STRACE_MSG = re.compile(r"strace: Process \d+ (?:attached|detached|suspended)")
_ATTACHED = re.compile(r"strace: Process (\d{1,10}) attached")
_DECO = r"<(?:->|[^<>]|<[^<>]*>)*>"
_DECO_RE = re.compile(_DECO)
_RET = re.compile(
    r"\s*=\s*(?P<ret>-?\d{1,20}|\?|0x[0-9a-fA-F]{1,16})(?P<deco>" + _DECO + r")?"
    r"(?:\s+(?P<errno>E[A-Z0-9_?]+)(?:\s+\([^)]*\))?)?"
    r"(?:\s+\((?P<extra>.*?)\))?"
    r"(?P<unavailable>\s+<unavailable>)?"
    r"\s*(?:<(?P<dur>\d{1,12}(?:\.\d{1,9})?)>)?\s*$",
    re.DOTALL,
)
_LEADING_FD = re.compile(r"\s*(?P<fd>-?\d{1,10})(?P<deco>" + _DECO + r")?")
_POLL_FD = re.compile(r"fd=(?P<fd>\d{1,10})(?P<deco>" + _DECO + r")?")
_SELECT_FD = re.compile(r"(?P<fd>\d{1,10})(?P<deco>" + _DECO + r")?")
_STRING_OR_DECO = re.compile(r'"(?:[^"\\]|\\.)*"|(?<=\d)' + _DECO, re.DOTALL)
_SOCK_DECO = re.compile(r"(?P<kind>[A-Za-z][\w-]*):\[(?P<body>.*)\]", re.DOTALL)
_ENDPOINT = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.%\w]+)\]|(?P<ip4>\d+\.\d+\.\d+\.\d+)):(?P<port>\d{1,5}(?!\d))")
_SIN = re.compile(r'sin_port=htons\((?P<port>\d{1,5}(?!\d))\),\s*sin_addr=inet_addr\("(?P<ip>(?:[^"\\]|\\.)*)"\)')
_SIN6 = re.compile(
    r'sin6_port=htons\((?P<port>\d{1,5}(?!\d))\).*?inet_pton\(AF_INET6,\s*"(?P<ip>(?:[^"\\]|\\.)*)"', re.DOTALL
)
_INTERRUPTED = re.compile(r"resuming interrupted (\w+)")
_ESCAPE = re.compile(r'\\(x[0-9A-Fa-f]{2}|[0-7]{1,3}|.)', re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "a": "\a", "b": "\b"}

_INET_KINDS = frozenset({"TCP", "TCPv6", "UDP", "UDPv6"})  # internet sockets, with endpoints
_ROOT = -1  # placeholder tid for lines without a pid prefix until the root is known


def _unescape(text: str) -> str:
    """Undo strace's string escapes (``\\x41``, ``\\101``, ``\\n``, ``\\"``)."""
    if "\\" not in text:
        return text

    def repl(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] == "x" and len(e) == 3:
            return chr(int(e[1:], 16))
        if e[0] in "01234567":
            return chr(int(e, 8))
        return _SIMPLE_ESCAPES.get(e, e)

    return _ESCAPE.sub(repl, text)


def _skip_deco(s: str, i: int) -> int:
    """Index just past the ``<...>`` that starts at ``s[i]`` (nested, ``->`` aware)."""
    m = _DECO_RE.match(s, i)
    if m is not None:
        return m.end()
    depth, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "<":
            depth += 1
        elif c == ">" and s[i - 1] != "-":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


_SPECIAL = re.compile(r'["<()\[\]{}]')
_QUOTE_END = re.compile(r'"|\\.', re.DOTALL)


def _split_args(s: str) -> tuple[str, str] | None:
    """Split ``args) = ret`` at the call's closing parenthesis.

    Quotes (with backslash escapes), brackets and fd decorations are skipped,
    so ``write(3, "a) = 1", 6) = 6`` splits at the right place.  ``None`` when
    the parenthesis never comes (a truncated line).
    """
    depth, n = 0, len(s)
    m = _SPECIAL.search(s)
    while m is not None:
        i, c = m.start(), m.group()
        if c == '"':  # jump to the closing quote, over escapes
            q = _QUOTE_END.search(s, i + 1)
            while q is not None and q.group() != '"':
                q = _QUOTE_END.search(s, q.end())
            if q is None:
                return None
            i = q.start()
        elif c == "<":
            i = _skip_deco(s, i) - 1
        elif c in "([{":
            depth += 1
        elif depth == 0:
            return (s[:i], s[i + 1 :]) if c == ")" else None
        else:
            depth -= 1
        if i + 1 >= n:
            return None
        m = _SPECIAL.search(s, i + 1)
    return None


def _top_args(s: str) -> list[str]:
    """Split an argument list at its top-level commas (quotes, brackets, decorations kept)."""
    out: list[str] = []
    depth, i, n, last = 0, 0, len(s), 0
    while i < n:
        c = s[i]
        if c == '"':
            i += 1
            while i < n and s[i] != '"':
                i += 2 if s[i] == "\\" else 1
        elif c == "<":
            i = _skip_deco(s, i)
            continue
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(s[last:i].strip())
            last = i + 1
        i += 1
    out.append(s[last:].strip())
    return out


def _endpoint(ip: str, port: str) -> Endpoint:
    return Endpoint(normalize_ip(ip), int(port))


@dataclass(frozen=True, slots=True)
class _Deco:
    """An fd decoration: ``kind`` is TCP/TCPv6/UDP/UNIX-STREAM/socket/pipe/path/..."""

    kind: str
    local: Endpoint | None = None
    remote: Endpoint | None = None

    @property
    def family(self) -> str:
        """``"inet"`` (TCP or UDP), ``"sock"`` (a socket of unknown protocol) or ``"other"``."""
        if self.kind in _INET_KINDS:
            return "inet"
        if self.kind == "socket":
            return "sock"
        return "other"


def _parse_deco(text: str | None) -> _Deco | None:
    if not text:
        return None
    return _parse_deco_text(text)


@functools.lru_cache(maxsize=8192)  # a log repeats the same few decorations
def _parse_deco_text(text: str) -> _Deco:
    inner = text[1:-1]
    m = _SOCK_DECO.fullmatch(inner)
    if not m:
        return _Deco("path")
    kind, body = m.group("kind"), m.group("body")
    if kind not in _INET_KINDS:
        return _Deco(kind)
    ends = [_endpoint(e.group("ip6") or e.group("ip4"), e.group("port")) for e in _ENDPOINT.finditer(body)]
    if "->" in body and len(ends) == 2:
        return _Deco(kind, ends[0], ends[1])
    if len(ends) == 1:
        return _Deco(kind, ends[0])
    return _Deco(kind)  # only the inode: not bound or connected yet


def _sockaddr(args: str) -> Endpoint | None:
    """The first AF_INET/AF_INET6 sockaddr in the arguments."""
    m4 = _SIN.search(args) if "AF_INET" in args else None
    m6 = _SIN6.search(args) if "AF_INET6" in args else None
    m = min((x for x in (m4, m6) if x), key=lambda x: x.start(), default=None)
    if m is None:
        return None
    return _endpoint(_unescape(m.group("ip")), m.group("port"))


_MSG_FLAG = re.compile(r"\bMSG_[A-Z_]+")
_SHUT = re.compile(r"\bSHUT_(?:RDWR|RD|WR)\b")
_SHUT_NUMBERS = {"0": "SHUT_RD", "1": "SHUT_WR", "2": "SHUT_RDWR"}
_PLAIN_ENDPOINT = re.compile(r"(?:^|[\s,])(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<ip4>\d+\.\d+\.\d+\.\d+)):(?P<port>\d{1,5}(?!\d))\s*$")


def call_facts(name: str, args: str) -> tuple[tuple[str, ...], str | None, Endpoint | None]:
    """What a call's argument text says that later stages need, read once here:
    ``(msg_flags, how, sockaddr)``: the ``MSG_*`` flags of a send or receive, a
    shutdown's ``SHUT_*``, and the address argument (strace's ``sin_port=htons(…)``
    form, or ``ip:port`` at the end as the demo recorder writes it)."""
    kind = call_kind(name)
    flags: tuple[str, ...] = ()
    how: str | None = None
    addr: Endpoint | None = None
    if kind is CallKind.SEND or kind is CallKind.RECV:
        if "MSG_" in args:
            flags = tuple(dict.fromkeys(_MSG_FLAG.findall(args)))
    elif kind is CallKind.SHUTDOWN:
        m = _SHUT.search(args)
        if m is not None:
            how = m.group()
        else:
            last = args.rsplit(",", 1)[-1].strip()
            how = _SHUT_NUMBERS.get(last)
    if kind in (CallKind.CONNECT, CallKind.BIND, CallKind.SEND, CallKind.ACCEPT):
        addr = _sockaddr(args)
        if addr is None:
            m = _PLAIN_ENDPOINT.search(args)
            if m is not None:
                addr = _endpoint(m.group("ip6") or m.group("ip4"), m.group("port"))
    return flags, how, addr


def _short_args(args: str) -> str:
    """Arguments without fd decorations, whitespace collapsed, at most 120 chars."""
    if "<" in args:
        args = _STRING_OR_DECO.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "", args)
    text = args
    text = " ".join(text.split()).rstrip(", ")
    return text if len(text) <= _MAX_ARGS else text[: _MAX_ARGS - 1] + "…"


def _ret_int(raw: str | None) -> int | None:
    if raw is None or raw == "?":
        return None
    try:
        return int(raw, 16) if raw.startswith("0x") else int(raw)
    except ValueError:
        return None


# ---------------------------------------------------------------- the parser


@dataclass(slots=True)
class _Open:
    tid: int
    name: str
    start: float
    args: str
    line: int
    seq: int


@dataclass(slots=True)
class _Raw:
    """One whole system call as the log shows it, halves joined."""

    tid: int
    name: str
    start: float
    end: float | None  # None: never returned (filled in from the thread's exit)
    args: str
    ret: str | None
    rdeco: str | None
    errno: str | None
    line: int
    seq: int
    restarted: bool = False


class _Parser:
    def __init__(self, name: str, pid: int | None, thread_groups: Mapping[int, int] | None) -> None:
        self.name = name
        self.pid = pid
        self.thread_groups = dict(thread_groups or {})
        self.pending: dict[int, _Open] = {}
        self.raws: list[_Raw] = []
        self.exits: dict[int, tuple[float, str]] = {}
        self.clones: dict[int, tuple[int, bool]] = {}  # child tid -> (parent tid, is thread)
        self.interrupted: dict[int, _Raw] = {}
        self.unparsed = 0
        self.problems: list[str] = []
        self.fragment: str | None = None
        self.fragment_line = 0
        self.last_ts = 0.0
        self.lines = 0
        self.seq = 0
        # Lines without a pid prefix (strace writing to stderr, or -ff files).
        self.live: set[int] = {_ROOT}
        self.root: int | None = None
        self.saw_unprefixed = False
        self.known: set[int] = set()
        self.attached: list[int] = []
        self.tod_reported = False

    # -- bookkeeping

    def problem(self, line_no: int, reason: str, text: str = "", *, count: bool = True) -> None:
        if count:
            self.unparsed += 1
        if len(self.problems) < _MAX_PROBLEMS:
            snippet = f": {text[:60]!r}" if text else ""
            self.problems.append(f"{self.name}: line {line_no}: {reason}{snippet}")

    def tid_for(self, p: str | None) -> int:
        if p is not None:
            tid = int(p)
            if tid not in self.known:
                self.known.add(tid)
                if (
                    self.root is None
                    and self.saw_unprefixed
                    and tid not in self.clones
                    and tid not in self.attached
                ):
                    self.root = tid
                    if _ROOT in self.live:
                        self.live.discard(_ROOT)
                        self.live.add(tid)
            self.live.add(tid)
            return tid
        self.saw_unprefixed = True
        if self.pid is not None and not self.known:
            return self.pid
        if len(self.live) == 1:
            return next(iter(self.live))
        return self.root if self.root is not None else _ROOT

    # -- lines

    def feed(self, line_no: int, line: str) -> None:
        self.lines += 1
        line = line.rstrip("\r\n")
        if self.fragment is not None:
            line, self.fragment = self.fragment + line, None
            line_no = self.fragment_line
        if "strace: " in line:
            m = _STRACE_MSG.search(line)
            if m:
                a = _ATTACHED.match(line, m.start())
                if a:
                    self.attached.append(int(a.group(1)))
                head = line[: m.start()]
                if head.strip():  # the message cut a call line in two
                    self.fragment, self.fragment_line = head, line_no
                return
            if line.startswith("strace: "):
                self.problem(line_no, "strace says", line[8:], count=False)
                return
        if not line.strip() or line.startswith(" > "):  # blank, -k stack frame
            return
        m = _LEADER.match(line)
        if m is None:
            if _TIME_OF_DAY.match(line):
                if not self.tod_reported:
                    self.tod_reported = True
                    self.problem(line_no, "time of day, not epoch seconds: record with strace -ttt", line)
                else:
                    self.unparsed += 1
            else:
                self.problem(line_no, "no -ttt timestamp", line)
            return
        ts = float(m.group("ts"))
        self.last_ts = max(self.last_ts, ts)
        tid = self.tid_for(m.group("p1") or m.group("p2"))
        rest = m.group("rest")
        while rest.startswith("["):  # -i instruction pointer, -n syscall number
            close = rest.find("]")
            if close < 0:
                break
            rest = rest[close + 1 :].lstrip()
        if rest.startswith("---"):  # signal delivery, "stopped by"
            return
        if rest.startswith("+++"):
            what = rest.strip("+ \t")
            self.exits[tid] = (ts, what)
            self.live.discard(tid)
            return
        if rest.startswith("<..."):
            self.resumed(line_no, tid, ts, rest, line)
            return
        c = _CALL_OPEN.match(rest)
        if c is None:
            self.problem(line_no, "not a system call line", line)
            return
        self.call_line(line_no, tid, ts, c.group(1), rest[c.end() :], line)

    def call_line(self, line_no: int, tid: int, ts: float, name: str, body: str, line: str) -> None:
        stripped = body.rstrip()
        for marker in ("<unfinished ...>", "<detached ...>"):
            if stripped.endswith(marker):
                args = stripped[: -len(marker)].rstrip()
                if tid in self.pending:
                    self.lost(self.pending.pop(tid))
                op = _Open(tid, name, ts, args, line_no, self.next_seq())
                if marker == "<detached ...>":
                    self.lost(op)
                else:
                    self.pending[tid] = op
                return
        if name not in _PARSED:  # another syscall, whole on one line: nothing to keep
            return
        split = _split_args(body)
        if split is None:
            self.problem(line_no, "truncated line (no closing parenthesis)", line)
            return
        args, tail = split
        self.finish(line_no, tid, name, ts, args, tail, ts, self.next_seq(), line)

    def resumed(self, line_no: int, tid: int, ts: float, rest: str, line: str) -> None:
        m = _RESUMED.match(rest)
        if m is None:
            self.problem(line_no, "unreadable resumed line", line)
            return
        name, tail = m.group(1), m.group(2)
        op = self.pending.pop(tid, None)
        if op is not None and op.name != name:
            self.problem(line_no, f"{name} resumed but {op.name} was pending", line)
            self.lost(op)
            op = None
        split = _split_args(tail)
        if split is None:
            if tail.rstrip().endswith("<unfinished ...>") and op is not None:
                self.pending[tid] = op  # resumed and interrupted again
                return
            self.problem(line_no, "truncated line (no closing parenthesis)", line)
            if op is not None:
                self.lost(op)
            return
        more, rtail = split
        if op is None:  # the first half is not in the log (it was cut off)
            self.finish(line_no, tid, name, None, more, rtail, ts, self.next_seq(), line)
            return
        head = op.args.rstrip()
        more = more.strip()
        args = f"{head} {more}" if head and more else head or more
        self.finish(line_no, tid, name, op.start, args, rtail, ts, op.seq, line)

    def finish(
        self,
        line_no: int,
        tid: int,
        name: str,
        start: float | None,
        args: str,
        tail: str,
        line_ts: float,
        seq: int,
        line: str,
    ) -> None:
        r = _RET.match(tail)
        if r is None:
            self.problem(line_no, "unreadable return value", line)
            return
        dur = float(r.group("dur")) if r.group("dur") else None
        if start is None:
            start = line_ts - dur if dur is not None else line_ts
        ret, errno = r.group("ret"), r.group("errno")
        returned = not (ret == "?" and errno is None)
        if "<unfinished ...>" in args:  # killed inside the call: "...,  <unfinished ...>) = ?"
            args = args.replace("<unfinished ...>", "").rstrip()
            returned = False
        if not returned:
            end = None
        elif dur is not None:
            end = start + dur
        else:
            end = line_ts
        raw = _Raw(tid, name, start, end, args, None if ret == "?" else ret, r.group("deco"),
                   errno, line_no, seq)
        if name == "restart_syscall":
            self.restart(raw)
        elif errno in RESTART_ERRNOS:
            self.interrupted[tid] = raw
        if name in ("clone", "clone3", "fork", "vfork"):
            child = _ret_int(raw.ret)
            if child is not None and child > 0:
                self.clones[child] = (tid, name.startswith("clone") and "CLONE_THREAD" in args)
                self.live.add(child)
        self.raws.append(raw)

    def restart(self, raw: _Raw) -> None:
        """Make ``restart_syscall`` look like the call it resumes."""
        m = _INTERRUPTED.search(raw.args)
        orig = self.interrupted.get(raw.tid)
        name = m.group(1) if m else "restart_syscall"
        if name == "restart_syscall" and orig is not None:
            name = orig.name
        raw.name = name
        raw.restarted = True
        raw.args = orig.args if orig is not None and orig.name == name else ""
        # If the restarted call is interrupted again, the next restart_syscall
        # says "resuming interrupted restart_syscall": ``interrupted`` still
        # holds the original call for it.

    def lost(self, op: _Open) -> None:
        """A call that never returned in the log (killed, detached, or cut off)."""
        self.raws.append(_Raw(op.tid, op.name, op.start, None, op.args, None, None, None, op.line, op.seq))

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def final_root(self) -> int:
        """The tid of lines without a pid prefix, once the whole log is read."""
        if self.root is not None:
            return self.root
        if self.pid is not None:
            return self.pid
        return self.attached[0] if self.attached else 0

    def close(self) -> None:
        if self.fragment is not None:
            self.problem(self.fragment_line, "truncated line", self.fragment)
            self.fragment = None
        for op in self.pending.values():
            self.lost(op)
        self.pending.clear()


# ----------------------------------------------------- from raw calls to Call


@dataclass(slots=True)
class _Draft:
    raw: _Raw
    pid: int
    tid: int
    fd: int | None
    call: str
    ret: int | None
    kind: str | None  # "tcp" | "sock" | "other" | None (no decoration)
    local: Endpoint | None = None
    remote: Endpoint | None = None
    fixed: bool = False  # local/remote come from the call itself: never fill
    keep: bool | None = None  # decided without a lifetime (waits, failed socket())


@dataclass(slots=True)
class _Life:
    """One fd from its creation (socket/accept) or first sighting to close()."""

    kind: str | None = None
    local: Endpoint | None = None
    remote: Endpoint | None = None
    connect_remote: Endpoint | None = None
    drafts: list[_Draft] = field(default_factory=list)

    def see(self, deco: _Deco | None) -> None:
        if deco is None:
            return
        if self.kind in (None, "sock") or deco.family == "inet":
            self.kind = deco.family
        if deco.local is not None and deco.remote is not None:
            if self.remote is None:
                self.local, self.remote = deco.local, deco.remote
        elif deco.local is not None and self.local is None:
            self.local = deco.local


def _merge(a: str | None, b: str | None) -> str | None:
    """Combine two kinds: inet beats sock beats None; other only if nothing better."""
    order = {"inet": 3, "sock": 2, "other": 1}
    return max((a, b), key=lambda k: order.get(k or "", 0))


def _socket_kind(args: str) -> str | None:
    if "AF_INET" in args:
        return "inet" if "SOCK_STREAM" in args or "SOCK_DGRAM" in args else "other"
    if args.lstrip().startswith("AF_"):
        return "other"
    return None


class _Builder:
    """Resolves pids, follows fds through their lives, fills 4-tuples, filters."""

    def __init__(self, p: _Parser, inet_only: bool) -> None:
        self.p = p
        self.inet_only = inet_only
        self.root = p.final_root()
        self.table: dict[tuple[int, int], _Life] = {}
        self.lives: list[_Life] = []
        self.loose: list[_Draft] = []
        self._tgid: dict[int, int] = {}

    def tid(self, tid: int) -> int:
        return self.root if tid == _ROOT else tid

    def tgid(self, tid: int) -> int:
        if tid in self._tgid:
            return self._tgid[tid]
        cur, seen = tid, {tid}
        while cur not in self.p.thread_groups:
            parent = self.p.clones.get(cur)
            if parent is None or not parent[1]:
                break
            cur = self.tid(parent[0])
            if cur in seen:
                break
            seen.add(cur)
        pid = self.p.thread_groups.get(cur, cur)
        self._tgid[tid] = pid
        return pid

    def life(self, pid: int, fd: int, *, new: bool = False) -> _Life:
        key = (pid, fd)
        life = None if new else self.table.get(key)
        if life is None:
            life = _Life()
            self.table[key] = life
            self.lives.append(life)
        return life

    def build(self) -> list[Call]:
        p = self.p
        exit_ts = {self.tid(t): ts for t, (ts, _) in p.exits.items()}
        drafts: list[_Draft] = []
        for raw in sorted(p.raws, key=lambda r: (r.start, r.seq)):
            if raw.name not in CALLS_OF_INTEREST:
                continue
            tid = self.tid(raw.tid)
            if raw.end is None:
                raw.end = max(exit_ts.get(tid, p.last_ts), raw.start)
            d = self.draft(raw, self.tgid(tid), tid)
            drafts.append(d)
        for life in self.lives:
            self.fill(life)
        out = []
        for d in drafts:
            keep = d.keep if d.keep is not None else True
            if self.inet_only and not keep:
                continue
            out.append(self.to_call(d))
        return out

    def draft(self, raw: _Raw, pid: int, tid: int) -> _Draft:
        name = raw.name
        ret = _ret_int(raw.ret)
        rdeco = _parse_deco(raw.rdeco)
        if name == "socket":
            kind = rdeco.family if rdeco else _socket_kind(raw.args)
            d = _Draft(raw, pid, tid, ret if ret is not None and ret >= 0 else None, name, ret, kind)
            if d.fd is None:
                d.keep = kind in ("inet", "sock") or (kind is None and not self.inet_only)
                return d
            life = self.life(pid, d.fd, new=True)
            life.kind = _merge(kind, None)
            life.see(rdeco)
            life.drafts.append(d)
            return d
        if name in _EPOLL:
            return self.loose_draft(_Draft(raw, pid, tid, None, name, ret, None, keep=True))
        if name in ("poll", "ppoll", "select", "pselect6"):
            return self.wait_draft(raw, pid, tid, ret)
        m = _LEADING_FD.match(raw.args)
        fd = int(m.group("fd")) if m else None
        deco = _parse_deco(m.group("deco")) if m else None
        d = _Draft(raw, pid, tid, fd, name, ret, deco.family if deco else None)
        if deco is not None:
            d.local, d.remote = deco.local, deco.remote
        if name in ACCEPT_CALLS:
            if ret is not None and ret >= 0:
                new = self.life(pid, ret, new=True)
                new.kind = rdeco.family if rdeco else d.kind  # undecorated: like the listener
                new.see(rdeco)
                if rdeco is not None and rdeco.remote is not None:
                    d.local, d.remote, d.fixed = rdeco.local, rdeco.remote, True
                else:
                    d.remote = _sockaddr(raw.args)
        elif name == "bind":
            d.local = _sockaddr(raw.args) or d.local
        elif name == "connect":
            d.remote = _sockaddr(raw.args) or d.remote
        if fd is None or fd < 0:
            d.keep = name in _SOCKET_ONLY or not self.inet_only
            return self.loose_draft(d)
        found = self.table.get((pid, fd))
        reused = (  # the fd was reused without a close() in the log
            found is not None and deco is not None and deco.remote is not None
            and found.remote not in (None, deco.remote)
        )
        life = self.life(pid, fd, new=True) if found is None or reused else found
        life.see(deco)
        if name == "connect" and d.remote is not None and life.connect_remote is None:
            life.connect_remote = d.remote
        life.drafts.append(d)
        if name == "close":
            self.table.pop((pid, fd), None)
        return d

    def wait_draft(self, raw: _Raw, pid: int, tid: int, ret: int | None) -> _Draft:
        if raw.name in ("poll", "ppoll"):
            found = [(int(m.group("fd")), m.group("deco")) for m in _POLL_FD.finditer(raw.args)]
        else:
            # select(nfds, readfds, writefds, exceptfds, timeout): sets look like
            # [3<TCP:[...]> 4<TCP:[...]>]; decorations contain brackets too.
            sets = [a for a in _top_args(raw.args)[1:4] if a.startswith("[")]
            found = [(int(m.group("fd")), m.group("deco")) for s in sets for m in _SELECT_FD.finditer(s)]
        kinds: list[str | None] = []
        fds: dict[int, _Deco | None] = {}
        for fd, text in found:
            deco = _parse_deco(text)
            fds.setdefault(fd, deco)
            kind = deco.family if deco else None
            if kind is None:
                known = self.table.get((pid, fd))
                kind = known.kind if known else None
            kinds.append(kind)
        d = _Draft(raw, pid, tid, None, raw.name, ret, None)
        d.keep = any(k in ("inet", "sock") for k in kinds) or not self.inet_only
        if len(fds) == 1:
            (fd, deco), = fds.items()
            d.fd = fd
            if deco is not None:
                d.local, d.remote, d.kind = deco.local, deco.remote, deco.family
            life = self.table.get((pid, fd))
            if life is not None:
                life.drafts.append(d)
                return d
        return self.loose_draft(d)

    def loose_draft(self, d: _Draft) -> _Draft:
        self.loose.append(d)
        return d

    def fill(self, life: _Life) -> None:
        kind = life.kind
        remote = life.remote or life.connect_remote
        for d in life.drafts:
            if d.keep is None:
                if kind in ("inet", "sock"):
                    d.keep = True
                elif kind == "other":
                    d.keep = False
                else:
                    d.keep = d.call in _SOCKET_ONLY
            if d.fixed:
                continue
            errno = d.raw.errno
            if d.call == "connect":
                ok = errno is None or errno in _CONNECT_PENDING
                if d.local is None and ok and life.remote is not None and life.remote == d.remote:
                    d.local = life.local
                continue
            if d.call == "bind":
                if errno is None and life.local is not None and (d.local is None or d.local.port == 0):
                    d.local = life.local
                continue
            if d.local is None:
                d.local = life.local
            if d.remote is None:
                d.remote = remote

    def to_call(self, d: _Draft) -> Call:
        raw = d.raw
        nbytes = None
        moved = (d.call in READ_CALLS or d.call in WRITE_CALLS) and d.call not in COUNTS_MESSAGES
        if moved and d.ret is not None and d.ret >= 0 and raw.errno is None:
            nbytes = d.ret
        flags, how, sockaddr = call_facts(d.call, raw.args)
        args = _short_args(raw.args)
        if raw.restarted:
            args = f"restarted: {args}" if args else "restarted"
        end = raw.end if raw.end is not None else raw.start
        return Call(
            pid=d.pid,
            tid=d.tid,
            fd=d.fd,
            call=d.call,
            start=raw.start,
            end=end,
            ret=d.ret,
            errno=raw.errno,
            args=args,
            local=d.local,
            remote=d.remote,
            nbytes=nbytes,
            msg_flags=flags,
            how=how,
            sockaddr=sockaddr,
        )


def parse_strace(
    lines: Iterable[str | None],
    *,
    name: str = "<strace>",
    pid: int | None = None,
    thread_groups: Mapping[int, int] | None = None,
    inet_only: bool = True,
) -> StraceParse:
    """Read strace text made with ``strace -f -ttt -T -yy`` into Call records.

    ``name`` labels problems.  ``pid`` is the process id for lines without a
    pid prefix (``-ff`` files, or strace without ``-f``); otherwise it is
    worked out from the log, 0 if it cannot be.  ``thread_groups`` maps thread
    ids to process ids for threads that existed before the trace started (an
    attach); threads created while tracing are found from ``clone`` lines.
    With ``inet_only`` (the default) calls on files, pipes and UNIX sockets are
    dropped: only TCP and UDP sockets (and sockets of unknown kind) remain.

    Never raises on content: a line longer than :data:`MAX_LINE` (None from a
    reader that did not keep it) is counted as not understood, numbers longer than
    any pid, fd or time are not read as numbers.
    """
    p = _Parser(name, pid, thread_groups)
    # The records hold no reference cycles; the cyclic collector only re-scans
    # them over and over (a 320,000-line log took 2.8 times longer with it on).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for n, line in enumerate(lines, 1):
            if line is None or len(line) > MAX_LINE:
                p.problem(n, f"longer than {MAX_LINE:,} characters")
                continue
            p.feed(n, line)
        p.close()
        calls = _Builder(p, inet_only).build()
    finally:
        if was_enabled:
            gc.enable()
    calls.sort(key=lambda c: c.start)
    root = p.final_root()
    exits = {(root if t == _ROOT else t): what for t, (_, what) in p.exits.items()}
    return StraceParse(calls, p.unparsed, p.problems, exits, p.lines)


def _open_text(path: Path) -> IO[str]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if b"\0" in head:
            raise TraceFileError(f"{path}: not a text strace log (binary data)")
        return open(path, encoding="utf-8", errors="replace", newline="")
    except OSError as exc:
        raise os_error(exc, path, "read", TraceFileError) from None


def parse_strace_file(
    path: str | os.PathLike[str],
    *,
    pid: int | None = None,
    thread_groups: Mapping[int, int] | None = None,
    inet_only: bool = True,
) -> StraceParse:
    """:func:`parse_strace` on a file.  A ``-ff`` file (``log.1234``) gives its pid.

    Raises TraceFileError only when the file cannot be read.
    """
    path = Path(path)
    if pid is None:
        m = re.search(r"\.(\d+)$", path.name)
        pid = int(m.group(1)) if m else None
    with _open_text(path) as fh:
        try:
            return parse_strace(
                _bounded_lines(fh), name=str(path), pid=pid, thread_groups=thread_groups, inet_only=inet_only
            )
        except OSError as exc:
            raise os_error(exc, path, "read", TraceFileError) from None


# ------------------------------------------------------------- calls.jsonl


class _RecordError(ValueError):
    """A call record that does not fit the schema (internal; becomes TraceFileError)."""


#: Deepest JSON nesting a call record may have (a record nests two levels: an
#: object holding "local": {...} and "frames": [...]).
MAX_DEPTH = 8
#: Longest number literal accepted in a call record: 64-bit integers, and floats
#: as json.dumps writes epoch seconds.  Longer ones cost quadratic time to convert
#: (Python refuses ints over 4,300 digits) or overflow a float.
_MAX_INT_DIGITS = 20
_MAX_FLOAT_CHARS = 32
#: Times outside this many seconds from the epoch are not a capture's clock.
_MAX_SECONDS = 1e11
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ERRNO = re.compile(r"E[A-Z0-9_?]{1,31}")
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _RecordError(f"number with {len(text):,} digits (at most {_MAX_INT_DIGITS})")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > _MAX_FLOAT_CHARS:
        raise _RecordError(f"number {len(text):,} characters long (at most {_MAX_FLOAT_CHARS})")
    return float(text)


def _json_constant(text: str) -> float:
    raise _RecordError(f"{text} is not a number")


_CALL_JSON = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)


def _nesting(line: str) -> int:
    """How deep the JSON text ``line`` nests (brackets inside strings do not count)."""
    if line.count("[") + line.count("{") <= MAX_DEPTH:
        return 0
    depth = deepest = 0
    for m in _NESTING.finditer(line):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _parse_call_line(line: str) -> Any:
    """One call-log line as JSON, within the bounds above; _RecordError otherwise."""
    if _nesting(line) > MAX_DEPTH:
        raise _RecordError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return _CALL_JSON.decode(line)
    except json.JSONDecodeError as exc:
        raise _RecordError(f"not JSON ({exc.msg})") from None
    except RecursionError:  # belt and braces: _nesting should have refused it
        raise _RecordError(f"JSON nested deeper than {MAX_DEPTH} levels") from None


def _need(d: Mapping[str, Any], key: str, types: tuple[type, ...], *, optional: bool = False) -> Any:
    if key not in d or d[key] is None:
        if optional:
            return None
        raise _RecordError(f'missing "{key}"')
    value = d[key]
    if isinstance(value, bool) and bool not in types:
        raise _RecordError(f'"{key}" must be {types[0].__name__}, not {_shown(value)}')
    if not isinstance(value, types):
        raise _RecordError(f'"{key}" must be {types[0].__name__}, not {_shown(value)}')
    if isinstance(value, float) and not math.isfinite(value):
        raise _RecordError(f'"{key}" must be a finite number')
    if isinstance(value, str) and _SURROGATE.search(value):
        raise _RecordError(f'"{key}" is not valid Unicode (a lone surrogate)')
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _shown(value: object) -> str:
    """A short, escaped picture of a bad value for a message."""
    text = repr(value)
    return safe_text(text if len(text) <= 40 else text[:37] + "...")


def _seconds(d: Mapping[str, Any], key: str, *, optional: bool = False) -> float | None:
    value = _need(d, key, (int, float), optional=optional)
    if value is None:
        return None
    if not -_MAX_SECONDS < value < _MAX_SECONDS:
        raise _RecordError(f'"{key}" {_shown(value)} is not a time in epoch seconds')
    return float(value)


def _text(d: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = _need(d, key, (str,), optional=key != "call")
    if value is not None and not pattern.fullmatch(value):
        raise _RecordError(f'"{key}" {_shown(value)} is not {what}')
    return value  # type: ignore[no-any-return]


def _endpoint_json(d: Mapping[str, Any], key: str) -> Endpoint | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _RecordError(f'"{key}" must be an object with "ip" and "port"')
    ip = _need(value, "ip", (str,))
    port = _need(value, "port", (int,))
    if not 0 <= port <= 65535:
        raise _RecordError(f'"{key}" port {port} out of range')
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise _RecordError(f'"{key}" ip {_shown(ip)} is not an IP address') from None
    return Endpoint(normalize_ip(ip), port)


def _decode_call(d: Any) -> Call:
    if not isinstance(d, Mapping):
        raise _RecordError("not a JSON object")
    pid = _need(d, "pid", (int,))
    tid = _need(d, "tid", (int,), optional=True)
    start = _seconds(d, "start")
    assert start is not None
    end_raw = _seconds(d, "end", optional=True)
    end = start if end_raw is None else end_raw
    if end < start:
        raise _RecordError(f"end {end} before start {start}")
    frames = d.get("frames") or []
    if not isinstance(frames, list) or not all(isinstance(f, int) and not isinstance(f, bool) for f in frames):
        raise _RecordError('"frames" must be a list of frame numbers')
    inferred = d.get("inferred", False)
    if not isinstance(inferred, bool):
        raise _RecordError('"inferred" must be true or false')
    args = _need(d, "args", (str,), optional=True) or ""
    name = _text(d, "call", _NAME, "a system call name")
    assert name is not None
    flags, how, sockaddr = call_facts(name, args)
    return Call(
        pid=pid,
        tid=pid if tid is None else tid,
        fd=_need(d, "fd", (int,), optional=True),
        call=name,
        start=start,
        end=end,
        ret=_need(d, "ret", (int,), optional=True),
        errno=_text(d, "errno", _ERRNO, "an errno name"),
        args=args,
        local=_endpoint_json(d, "local"),
        remote=_endpoint_json(d, "remote"),
        nbytes=_need(d, "nbytes", (int,), optional=True),
        conn=_need(d, "conn", (int,), optional=True),
        frames=tuple(frames),
        inferred=inferred,
        msg_flags=flags,
        how=how,
        sockaddr=sockaddr,
    )


def call_from_json(d: Mapping[str, Any]) -> Call:
    """The inverse of ``Call.to_json()``.  ``pid``, ``call`` and ``start`` are required;
    ``tid`` defaults to ``pid``, ``end`` to ``start``, the rest to empty.

    Raises TraceFileError (``bad call record: reason``) when a field is wrong.
    """
    try:
        return _decode_call(d)
    except _RecordError as exc:
        raise TraceFileError(f"bad call record: {exc}") from None


def calls_path_for(pcap_path: str | os.PathLike[str]) -> Path:
    """``trace.pcap`` -> ``trace.calls.jsonl`` (same for .pcapng and .cap)."""
    return beside(pcap_path, CALLS_SUFFIX)


def write_calls_jsonl(calls: Iterable[Call], path: str | os.PathLike[str], *, mode: int = DEFAULT_MODE) -> int:
    """Write one ``Call.to_json()`` object per line; returns how many.

    The file is written whole under a temporary name and renamed into place
    (:class:`~handshake_viz.outfile.AtomicFile`: no link followed, ``mode`` 0600
    unless told).  Raises OutputError when it cannot be written.
    """
    path = Path(path)
    n = 0
    with AtomicFile(path, "w", mode_bits=mode) as fh:
        for call in calls:
            fh.write(json.dumps(call.to_json(), separators=(",", ":"), ensure_ascii=False))
            fh.write("\n")
            n += 1
    return n


def _bounded_lines(fh: IO[str], limit: int = MAX_LINE) -> Iterator[str | None]:
    """The lines of ``fh``, or None for a line longer than ``limit`` characters (its
    text is read in ``limit``-sized pieces and dropped, never held whole)."""
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith("\n"):
            while True:
                rest = fh.readline(limit)
                if not rest or rest.endswith("\n"):
                    break
            yield None
            continue
        yield line


def read_calls_jsonl(path: str | os.PathLike[str]) -> list[Call]:
    """Read a calls file.  Blank lines and records of another ``type`` (an
    ``hsviz analyze --jsonl`` stream also holds segments) are skipped.

    The file may come from anyone (it is picked up beside a capture): lines longer
    than :data:`MAX_LINE`, JSON nested deeper than :data:`MAX_DEPTH`, numbers longer
    than a 64-bit integer, times beyond any clock, text that is not valid Unicode
    and names that are not a call's are refused.  Raises TraceFileError
    ``file: line N: reason`` for the first bad line.
    """
    path = Path(path)
    calls: list[Call] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(_bounded_lines(fh), 1):
                if line is None:
                    raise TraceFileError(f"{path}: line {n}: longer than {MAX_LINE:,} characters")
                if not line.strip():
                    continue
                try:
                    d = _parse_call_line(line)
                    if isinstance(d, dict) and d.get("type", "call") != "call":
                        continue
                    calls.append(_decode_call(d))
                except _RecordError as exc:
                    raise TraceFileError(f"{path}: line {n}: {exc}") from None
    except UnicodeDecodeError:
        raise TraceFileError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise os_error(exc, path, "read", TraceFileError) from None
    return calls


def load_calls(path: str | os.PathLike[str], **strace_options: Any) -> StraceParse:
    """Read calls from either a calls.jsonl file or a strace log, by content.

    A file whose first non-blank character is ``{`` is JSONL (bad lines raise
    TraceFileError); anything else is parsed as strace text.
    """
    path = Path(path)
    with _open_text(path) as fh:
        first = fh.read(MAX_LINE).lstrip()[:1]
    if first == "{":
        calls = read_calls_jsonl(path)
        calls.sort(key=lambda c: c.start)
        return StraceParse(calls, 0, [], {}, 0)
    return parse_strace_file(path, **strace_options)


# ------------------------------------------------------------ a call as strace prints it


def strace_line(call: Call, data: bytes | None = None) -> str:
    """``call`` as ``strace -f -ttt -T`` prints it (without ``-yy``'s fd decorations)::

        444  1795321422.640360 connect(18, {sa_family=AF_INET, sin_port=htons(53745),
        sin_addr=inet_addr("127.0.0.1")}, 16) = 0 <0.000666>

    A call parsed from strace keeps its arguments as strace printed them (shortened);
    a call the demo's recorder logged is spelled out from its facts (``sendto(18,
    "hello\\n", 6, 0, NULL, 0)`` for Python's ``send``); ``data`` is what a read returned
    or a write sent, when the caller knows it (the payload of the segments it is joined
    to) and the record does not say.  An inferred call was never traced: its line says
    ``?`` where nothing is known, and gives no duration.
    """
    args = call.args if _printed_by_strace(call) else _spelled_out(call, data)
    if call.errno is not None:
        try:
            why = os.strerror(getattr(errno_mod, call.errno))
        except (AttributeError, TypeError):
            why = call.errno
        result = f"-1 {call.errno} ({why})"
    else:
        result = "?" if call.ret is None else str(call.ret)
    if call.kind is CallKind.WAIT and call.ret and call.fd is not None and call.errno is None:
        result += f" ([{{fd={call.fd}, revents=POLLIN}}])"
    took = f" <{call.end - call.start:.6f}>" if (call.ret is not None or call.errno) and not call.inferred else ""
    tid = "?" if call.inferred else call.tid
    return f"{tid}  {call.start:.6f} {call.call}({args}) = {result}{took}"


def _printed_by_strace(call: Call) -> bool:
    """strace prints a descriptor call's fd first; the demo's recorder does not."""
    if call.inferred:
        return False
    if call.fd is None:  # socket(): strace names the protocol too
        return call.args.count(",") >= 2
    return call.args.startswith(f"{call.fd},") or (call.args == str(call.fd) and call.kind is CallKind.CLOSE)


def _sockaddr_text(ep: Endpoint | None) -> tuple[str, int]:
    if ep is None:
        return "NULL", 0
    if ":" in ep.ip:
        return (f'{{sa_family=AF_INET6, sin6_port=htons({ep.port}), sin6_flowinfo=htonl(0), '
                f'inet_pton(AF_INET6, "{ep.ip}", &sin6_addr), sin6_scope_id=0}}', 28)
    return f'{{sa_family=AF_INET, sin_port=htons({ep.port}), sin_addr=inet_addr("{ep.ip}")}}', 16


# the recorder's data argument: strace-quoted ("hello\n"), or Python's repr (b'hello\n')
_QUOTED_ARG = re.compile(r'"(?:[^"\\]|\\.)*"' r"|b'(?:[^'\\]|\\.)*'" r'|b"(?:[^"\\]|\\.)*"')


def _quoted(call: Call, data: bytes | None) -> str:
    """The data argument of a send or receive, quoted as strace quotes it."""
    from handshake_viz.text import escape_preview

    if call.kind is CallKind.RECV and call.ret == 0 and call.errno is None:
        return '""'
    quoted = _QUOTED_ARG.match(call.args) if call.kind is CallKind.SEND else None
    if quoted is None:
        return escape_preview(data, limit=32) if data else '"…"'
    text = quoted.group(0)
    if text.startswith("b"):  # older recordings kept Python's repr of the bytes
        import ast

        try:
            return escape_preview(ast.literal_eval(text), limit=32)
        except (ValueError, SyntaxError):
            return text
    return text


# strace's argument lists of the calls that are a template of the same few facts
_ARGUMENTS = {
    CallKind.BIND: "{fd}, {addr}, {size}",
    CallKind.CONNECT: "{fd}, {addr}, {size}",
    CallKind.LISTEN: "{fd}, {backlog}",
    CallKind.ACCEPT: "{fd}, {addr}, [{size}], SOCK_CLOEXEC",
    CallKind.SEND: "{fd}, {data}, {nbytes}, 0, {dest}",
    CallKind.RECV: "{fd}, {data}, {buffer}, 0, NULL, NULL",
    CallKind.SHUTDOWN: "{fd}, {how}",
    CallKind.WAIT: "[{{fd={fd}, events=POLLIN}}], 1, 5000",
    CallKind.CLOSE: "{fd}",
}


def _spelled_out(call: Call, data: bytes | None) -> str:
    """Arguments of a recorded (or inferred) call, in strace's form."""
    fd = "?" if call.fd is None else str(call.fd)
    kind = call.kind
    if kind is CallKind.SOCKET:
        parts = call.args.split(", ") if call.args else ["AF_INET", "SOCK_STREAM"]
        return ", ".join(parts + ["IPPROTO_IP"] * (len(parts) < 3))
    template = _ARGUMENTS.get(kind)
    if template is not None:
        known = call.sockaddr or (call.remote if kind in (CallKind.ACCEPT, CallKind.CONNECT) else None)
        addr, size = _sockaddr_text(known)
        return template.format(
            fd=fd, addr=addr, size=size, backlog=call.args or "?", how=call.how or call.args or "?",
            data=_quoted(call, data) if kind in (CallKind.SEND, CallKind.RECV) else "",
            nbytes="?" if call.nbytes is None else call.nbytes,
            dest=f"{addr}, {size}" if call.sockaddr is not None else "NULL, 0",
            buffer=call.args if call.args.isdigit() else "?")
    parts = call.args.split(", ")
    if kind is CallKind.OPTION and len(parts) == 3:  # SOL_SOCKET, SO_REUSEADDR, 1
        return f"{fd}, {parts[0]}, {parts[1]}, [{parts[2]}], 4"
    return f"{fd}, {call.args}" if call.args else fd
    if kind is CallKind.CLOSE:
        return fd
    return f"{fd}, {call.args}" if call.args else fd
