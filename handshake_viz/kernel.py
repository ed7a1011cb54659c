"""The kernel's own account of a capture: tracepoint records, read from tracefs text
or from ``X.kernel.jsonl``.  No I/O here except reading a named file on request;
:mod:`handshake_viz.kernelio` runs tracefs, :mod:`handshake_viz.kerneljoin` puts the
events beside the Trace.

Theory of operation
-------------------
While ``hsviz capture --kernel`` runs, a private tracefs instance records these
tracepoints for the port (measured on Linux 6.18, this project's machine)::

    sock:inet_sock_set_state   every TCP state change of every socket: both
                               addresses and ports, old and new state
    tcp:tcp_probe              each segment a socket receives in ESTABLISHED:
                               cwnd, ssthresh, srtt, snd_wnd, rcv_wnd, snd_una/nxt
    tcp:tcp_retransmit_skb     a retransmitted segment (a SYN too), and the sender's state
    tcp:tcp_retransmit_synack  a retransmitted SYN-ACK
    tcp:tcp_send_reset         a RST sent, and why (NO_SOCKET, …)
    tcp:tcp_receive_reset      a RST received
    skb:kfree_skb              a packet dropped, and why (NO_SOCKET, TCP_ZEROWINDOW, …)

``trace_pipe`` prints one line per event (:func:`parse_trace_text` reads them)::

    python3-24008 [000] ..s1.  1620.011248: kfree_skb: skbaddr=00000000c921aac7 \
        rx_sk=0000000000000000 protocol=2048 location=tcp_v4_rcv+0x99/0x1400 reason: NO_SOCKET

Facts the join relies on, each measured here:

* The tracepoints fire in whatever context handles the packet -- often a softirq
  in another process -- so the pid means nothing; events are joined by
  addresses and ports, and, within tracefs, by the (hashed) socket and packet
  addresses it prints (``skaddr``, ``skbaddr``, ``rx_sk``: the same pointer
  always hashes to the same text during one boot).
* A client's first state change (CLOSE -> SYN_SENT) is reported before its port is
  chosen (``sport=0``): :func:`resolve` takes the port from the same socket's next event.
* ``kfree_skb`` carries no addresses.  A drop is the port's when the dropped
  packet or its receiving socket was seen in an event on the port: the RST sent
  for it (``tcp_send_reset`` names the packet that caused it), a probe of the same
  packet, or the socket (``rx_sk``).  Other drops are counted, not kept.
* A SYN that finds the accept queue full is freed with ``consume_skb`` like any
  accepted SYN (tcp_rcv_state_process): no ``kfree_skb``, no reason.  The join
  derives that drop from the queue instead (:mod:`handshake_viz.kerneljoin`).
* Times are those of the instance's trace clock (``mono``, CLOCK_MONOTONIC);
  :class:`ClockSync` maps them onto the capture's wall clock from markers written
  into the trace between two reads of the wall clock (:func:`calibrate`): the
  markers are read first (:func:`find_markers`), then the events are parsed with
  the offset applied.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Union

from handshake_viz.errors import KernelFileError, os_error
from handshake_viz.model import Endpoint, TcpState, Word, normalize_ip
from handshake_viz.pcapio import KERNEL_SUFFIX, beside

__all__ = [
    "EVENTS",
    "SYNC_MARKER",
    "ClockSync",
    "Drop",
    "EventType",
    "KernelEvent",
    "KernelLog",
    "LinuxState",
    "Lost",
    "Marker",
    "Probe",
    "Reset",
    "Resolved",
    "Retransmit",
    "StateChange",
    "TraceParse",
    "calibrate",
    "kernel_jsonl_lines",
    "kernel_path_for",
    "find_markers",
    "parse_kernel_jsonl",
    "parse_trace_line",
    "parse_trace_text",
    "read_kernel_jsonl",
    "resolve",
]

#: The tracepoints recorded, as ``system:event`` (the directories under ``events/``).
EVENTS: tuple[str, ...] = (
    "sock:inet_sock_set_state",
    "tcp:tcp_probe",
    "tcp:tcp_retransmit_skb",
    "tcp:tcp_retransmit_synack",
    "tcp:tcp_send_reset",
    "tcp:tcp_receive_reset",
    "skb:kfree_skb",
)

#: Text of the clock markers hsviz writes into its instance (``trace_marker``).
SYNC_MARKER = "hsviz-sync"

#: Version of the ``X.kernel.jsonl`` format this module writes and reads.
FORMAT_VERSION = 1


class LinuxState(Word):
    """Linux's TCP states (include/net/tcp_states.h), as the tracepoints name them
    without the ``TCP_`` prefix.  ``rfc`` is the RFC 9293 state each stands for."""

    ESTABLISHED = "ESTABLISHED"
    SYN_SENT = "SYN_SENT"
    SYN_RECV = "SYN_RECV"
    FIN_WAIT1 = "FIN_WAIT1"
    FIN_WAIT2 = "FIN_WAIT2"
    TIME_WAIT = "TIME_WAIT"
    CLOSE = "CLOSE"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"
    LISTEN = "LISTEN"
    CLOSING = "CLOSING"
    NEW_SYN_RECV = "NEW_SYN_RECV"  # a request mini-socket: a half-open connection

    @property
    def rfc(self) -> TcpState:
        return _RFC[self]


_RFC = {
    LinuxState.ESTABLISHED: TcpState.ESTABLISHED,
    LinuxState.SYN_SENT: TcpState.SYN_SENT,
    LinuxState.SYN_RECV: TcpState.SYN_RECEIVED,
    LinuxState.FIN_WAIT1: TcpState.FIN_WAIT_1,
    LinuxState.FIN_WAIT2: TcpState.FIN_WAIT_2,
    LinuxState.TIME_WAIT: TcpState.TIME_WAIT,
    LinuxState.CLOSE: TcpState.CLOSED,
    LinuxState.CLOSE_WAIT: TcpState.CLOSE_WAIT,
    LinuxState.LAST_ACK: TcpState.LAST_ACK,
    LinuxState.LISTEN: TcpState.LISTEN,
    LinuxState.CLOSING: TcpState.CLOSING,
    LinuxState.NEW_SYN_RECV: TcpState.SYN_RECEIVED,
}


class EventType(Word):
    """The ``"type"`` of an event line in ``X.kernel.jsonl``."""

    STATE = "state"
    PROBE = "probe"
    RETRANSMIT = "retransmit"
    RESET = "reset"
    DROP = "drop"
    LOST = "lost"


# ======================================================================================
# Records
# ======================================================================================
#
# ``ts`` is seconds on the trace clock as parsed, epoch seconds on the capture's clock
# after :func:`on_capture_clock` (what ``X.kernel.jsonl`` holds).  ``local`` is the
# endpoint of the socket the event is about, ``remote`` its peer.  ``sock``/``skb`` are
# tracefs's hashed pointers: identities, not addresses.


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """A socket moved from ``old`` to ``new`` (``sock:inet_sock_set_state``).  A
    listening socket's peer is ``0.0.0.0:0`` (``::`` for IPv6)."""

    type: ClassVar[EventType] = EventType.STATE
    ts: float
    cpu: int
    local: Endpoint
    remote: Endpoint
    old: LinuxState
    new: LinuxState
    sock: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """The receiving socket's congestion and window variables as a segment arrives in
    ESTABLISHED (``tcp:tcp_probe``, called first thing in tcp_rcv_established).

    ``cwnd`` is in segments, ``srtt_us`` in microseconds, windows in bytes
    (``snd_wnd``: what the peer last advertised, scaled; ``rcv_wnd``: what this socket
    advertises); ``data_len`` is the arriving segment's payload."""

    type: ClassVar[EventType] = EventType.PROBE
    ts: float
    cpu: int
    local: Endpoint
    remote: Endpoint
    data_len: int
    snd_nxt: int
    snd_una: int
    cwnd: int
    ssthresh: int
    snd_wnd: int
    srtt_us: int
    rcv_wnd: int
    sock: str = ""
    skb: str = ""

    def values(self) -> dict[str, int]:
        """The variables, as the JSONL ``"kernel"`` object of a segment names them."""
        return {"cwnd": self.cwnd, "ssthresh": self.ssthresh, "srtt_us": self.srtt_us,
                "snd_wnd": self.snd_wnd, "rcv_wnd": self.rcv_wnd, "snd_una": self.snd_una,
                "snd_nxt": self.snd_nxt}


@dataclass(frozen=True, slots=True, kw_only=True)
class Retransmit:
    """``local`` sent a segment again (``tcp_retransmit_skb``; a SYN-ACK of a half-open
    connection: ``tcp_retransmit_synack``, ``synack`` true)."""

    type: ClassVar[EventType] = EventType.RETRANSMIT
    ts: float
    cpu: int
    local: Endpoint
    remote: Endpoint
    state: LinuxState | None
    synack: bool = False
    sock: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset:
    """A RST: ``sent`` by ``local`` (``tcp_send_reset``, with the kernel's ``reason``;
    ``state`` None when no socket sent it) or received by ``local`` (``tcp_receive_reset``)."""

    type: ClassVar[EventType] = EventType.RESET
    ts: float
    cpu: int
    local: Endpoint
    remote: Endpoint
    sent: bool
    reason: str | None = None
    state: LinuxState | None = None
    sock: str = ""
    skb: str = ""  # sent: the packet that made the kernel answer with a RST


@dataclass(frozen=True, slots=True, kw_only=True)
class Drop:
    """The kernel dropped a packet (``skb:kfree_skb``) for ``reason``.  ``local`` is the
    endpoint it was addressed to and ``remote`` its sender, once :func:`resolve` has
    found them (None: not known)."""

    type: ClassVar[EventType] = EventType.DROP
    ts: float
    cpu: int
    reason: str
    location: str = ""
    local: Endpoint | None = None
    remote: Endpoint | None = None
    skb: str = ""
    rx_sk: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Lost:
    """The ring buffer of ``cpu`` overflowed: ``events`` events were lost (tracefs's
    ``CPU:N [LOST M EVENTS]``); ``ts`` is the time of the event before the gap."""

    type: ClassVar[EventType] = EventType.LOST
    cpu: int
    events: int
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class Marker:
    """A line hsviz wrote into the trace (``tracing_mark_write``): the clock markers."""

    ts: float
    cpu: int
    text: str


KernelEvent = Union[StateChange, Probe, Retransmit, Reset, Drop, Lost]


# ======================================================================================
# tracefs text
# ======================================================================================

# ``TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: BODY``.  The task name may hold spaces and
# dashes (``kworker/1:2-15390``, ``<idle>-0``); the flags column (irq-info) and a
# ``(TGID)`` column (record-tgid) are optional.
_LINE = re.compile(
    r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?:\S{4,5}\s+)?"
    r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?(?P<body>.*)$"
)
_LOST = re.compile(r"^CPU:(?P<cpu>\d+) \[LOST (?P<n>\d+) EVENTS\]\s*$")
_FIELD = re.compile(r"(\w+)(?:=|: )(\S*)")
_HEX = re.compile(r"^(?:0x)?[0-9a-f]+$")


class _LineError(ValueError):
    """A tracefs line that does not say what its event says (internal)."""


@dataclass(frozen=True, slots=True)
class TraceParse:
    """What :func:`parse_trace_text` made of tracefs text."""

    events: tuple[KernelEvent, ...]
    markers: tuple[Marker, ...]
    lost: int  # events lost to ring-buffer overruns, from the LOST markers
    problems: tuple[str, ...]  # lines not understood (``line N: reason``), at most 20
    unparsed: int  # how many lines were not understood
    truncated: bool  # the text ended in the middle of a line (it was not used)
    lines: int


def _state(text: str) -> LinuxState:
    try:
        return LinuxState(text.removeprefix("TCP_"))
    except ValueError:
        raise _LineError(f"unknown TCP state {text[:40]!r}") from None


def _opt_state(text: str | None) -> LinuxState | None:
    return None if text is None or text == "UNKNOWN" else _state(text)


def _int(fields: Mapping[str, str], key: str, base: int = 10) -> int:
    try:
        return int(fields[key], base)
    except KeyError:
        raise _LineError(f"no {key}") from None
    except ValueError:
        raise _LineError(f"{key}={fields[key][:40]!r} is not a number") from None


def _ip(text: str) -> str:
    """The one spelling of an address (``normalize_ip``); a trace names few, many times."""
    ip = _address(text)
    if ip is None:
        raise _LineError(f"{text[:60]!r} is not an address")
    return ip


@functools.lru_cache(maxsize=1024)
def _address(text: str) -> str | None:
    try:
        return normalize_ip(str(ipaddress.ip_address(text.strip("[]"))))
    except ValueError:
        return None


def _family_endpoints(f: Mapping[str, str]) -> tuple[Endpoint, Endpoint]:
    """``saddr``/``daddr`` (or the ``v6`` ones for AF_INET6) and ``sport``/``dport``."""
    v6 = f.get("family") == "AF_INET6"
    try:
        src, dst = (f["saddrv6"], f["daddrv6"]) if v6 else (f["saddr"], f["daddr"])
    except KeyError:
        raise _LineError("no saddr/daddr") from None
    return Endpoint(_ip(src), _int(f, "sport")), Endpoint(_ip(dst), _int(f, "dport"))


def _sockaddr(text: str | None, key: str) -> Endpoint:
    """``127.0.0.1:8080`` or ``[::1]:8080`` (tracefs's ``%pISpc``)."""
    if not text or ":" not in text:
        raise _LineError(f"no {key}")
    host, _, port = text.rpartition(":")
    try:
        return Endpoint(_ip(host), int(port))
    except ValueError:
        raise _LineError(f"{key}={text[:60]!r} is not ADDRESS:PORT") from None


def _fields(body: str) -> dict[str, str]:
    return {k: v for k, v in _FIELD.findall(body)}


def parse_trace_line(line: str, offset: float = 0.0) -> KernelEvent | Marker | None:
    """One line of tracefs text as a record; None for a comment, a blank line or an
    event of another kind.  ``offset`` is added to the trace clock's time (a marker's
    time stays the trace clock's).  Raises ValueError naming what is wrong."""
    text = line.rstrip("\n")
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    lost = _LOST.match(text)
    if lost:
        return Lost(cpu=int(lost["cpu"]), events=int(lost["n"]))
    m = _LINE.match(text)
    if m is None:
        raise _LineError("not a tracefs event line")
    ts, cpu, event, body = float(m["ts"]), int(m["cpu"]), m["event"], m["body"]
    if event == "tracing_mark_write":
        return Marker(ts, cpu, body.strip())
    ts += offset
    f = _fields(body)
    if event == "inet_sock_set_state":
        if f.get("protocol") not in (None, "IPPROTO_TCP"):
            return None
        local, remote = _family_endpoints(f)
        return StateChange(ts=ts, cpu=cpu, local=local, remote=remote, old=_state(f.get("oldstate", "")),
                           new=_state(f.get("newstate", "")), sock=f.get("skaddr", ""))
    if event == "tcp_probe":
        return Probe(ts=ts, cpu=cpu, local=_sockaddr(f.get("src"), "src"), remote=_sockaddr(f.get("dest"), "dest"),
                     data_len=_int(f, "data_len"), snd_nxt=_int(f, "snd_nxt", 16), snd_una=_int(f, "snd_una", 16),
                     cwnd=_int(f, "snd_cwnd"), ssthresh=_int(f, "ssthresh"), snd_wnd=_int(f, "snd_wnd"),
                     srtt_us=_int(f, "srtt"), rcv_wnd=_int(f, "rcv_wnd"), sock=f.get("skaddr", ""),
                     skb=f.get("skbaddr", ""))
    if event in ("tcp_retransmit_skb", "tcp_retransmit_synack"):
        local, remote = _family_endpoints(f)
        return Retransmit(ts=ts, cpu=cpu, local=local, remote=remote, state=_opt_state(f.get("state")),
                          synack=event == "tcp_retransmit_synack", sock=f.get("skaddr", ""))
    if event == "tcp_send_reset":
        return Reset(ts=ts, cpu=cpu, local=_sockaddr(f.get("src"), "src"), remote=_sockaddr(f.get("dest"), "dest"),
                     sent=True, reason=f.get("reason"), state=_opt_state(f.get("state")),
                     sock=_null_ptr(f.get("skaddr", "")), skb=f.get("skbaddr", ""))
    if event == "tcp_receive_reset":
        local, remote = _family_endpoints(f)
        return Reset(ts=ts, cpu=cpu, local=local, remote=remote, sent=False, sock=f.get("skaddr", ""))
    if event == "kfree_skb":
        reason = f.get("reason")
        if not reason:
            raise _LineError("no reason")
        return Drop(ts=ts, cpu=cpu, reason=reason, location=f.get("location", ""), skb=f.get("skbaddr", ""),
                    rx_sk=_null_ptr(f.get("rx_sk", "")))
    return None


def _null_ptr(text: str) -> str:
    """A hashed pointer, or "" for NULL (printed as zeros)."""
    return "" if not text.strip("0x") else text


def find_markers(lines: Iterable[str]) -> list[Marker]:
    """Only the markers of tracefs text (a first, quick pass: the clock offset they give
    is then applied as the events are parsed)."""
    out = []
    for line in lines:
        if "tracing_mark_write" in line and line.endswith("\n"):
            with contextlib.suppress(ValueError):
                rec = parse_trace_line(line)
                if isinstance(rec, Marker):
                    out.append(rec)
    return out


def parse_trace_text(lines: Iterable[str], *, offset: float = 0.0, max_problems: int = 20) -> TraceParse:
    """Read tracefs text (``trace_pipe`` or ``trace``), one line per item, each with its
    newline.  A last line without a newline was cut off mid-write: it is counted in
    ``truncated`` and not used.  Lines not understood are counted, never fatal.
    ``offset`` moves the events' times (not the markers') onto another clock:
    ``ClockSync.offset`` for the capture's."""
    events: list[KernelEvent] = []
    markers: list[Marker] = []
    problems: list[str] = []
    unparsed = lost = n = 0
    truncated = False
    last_ts: float | None = None
    for n, line in enumerate(lines, 1):
        if not line.endswith("\n"):
            truncated = bool(line.strip())
            break
        try:
            rec = parse_trace_line(line, offset)
        except ValueError as exc:
            unparsed += 1
            if len(problems) < max_problems:
                problems.append(f"line {n}: {exc}")
            continue
        if rec is None:
            continue
        if isinstance(rec, Marker):
            markers.append(rec)
        elif isinstance(rec, Lost):
            lost += rec.events
            events.append(replace(rec, ts=last_ts))
        else:
            last_ts = rec.ts
            events.append(rec)
    return TraceParse(tuple(events), tuple(markers), lost, tuple(problems), unparsed, truncated, n)


# ======================================================================================
# Resolving: the port's events, with every address filled in
# ======================================================================================


@dataclass(frozen=True, slots=True)
class Resolved:
    """The events about one port, and how many drops could not be tied to it."""

    events: tuple[KernelEvent, ...]
    unattributed_drops: int


#: How close (seconds, trace clock) a drop must follow the event that names its packet.
_SAME_PACKET = 0.001


def resolve(events: Sequence[KernelEvent], port: int) -> Resolved:
    """Keep the events about ``port``, with addresses filled in (sans-IO).

    * A state change reported with local port 0 (a client's CLOSE -> SYN_SENT, before
      connect() chose the port) takes the port of the next change from SYN_SENT between
      the same local address and peer (the tracepoint prints no socket identity; two
      connects to one peer at once are paired in order).
    * A drop is kept when the event just before it on the same CPU names the same
      packet and is on the port (the RST sent for it, a probe of it: packet addresses
      are recycled within microseconds, so only the one just before counts), or when
      the socket that received it (``rx_sk``) was seen on the port.  It then gets that
      event's addresses: ``local`` the receiver, ``remote`` the sender when known.
      Other drops are counted in ``unattributed_drops``.
    * Events of other ports (the RST and drop tracepoints cannot be filtered by port
      in the kernel) are left out.  Lost-event markers are kept.
    """
    fixed = list(events)
    pending: dict[tuple[str, Endpoint], list[int]] = {}  # (local ip, peer) -> changes without a port
    for i, e in enumerate(fixed):
        if not isinstance(e, StateChange):
            continue
        key = (e.local.ip, e.remote)
        if e.local.port == 0 and e.new is LinuxState.SYN_SENT:
            pending.setdefault(key, []).append(i)
        elif e.old is LinuxState.SYN_SENT and e.local.port and pending.get(key):
            j = pending[key].pop(0)
            early = fixed[j]
            assert isinstance(early, StateChange)
            fixed[j] = replace(early, local=Endpoint(early.local.ip, e.local.port))
    socks: dict[str, tuple[Endpoint, Endpoint | None]] = {}
    for e in fixed:
        sock = getattr(e, "sock", "")
        if sock and not isinstance(e, (Drop, Lost)) and _on_port(e, port):
            socks[sock] = (e.local, e.remote if e.remote.port else None)
    last: dict[int, tuple[str, float, bool, Endpoint, Endpoint]] = {}  # cpu -> its last packet-naming event
    kept: list[KernelEvent] = []
    unattributed = 0
    for e in fixed:
        if isinstance(e, Drop):
            hit = last.pop(e.cpu, None)
            if hit is not None and hit[0] == e.skb and hit[2] and 0 <= e.ts - hit[1] <= _SAME_PACKET:
                kept.append(replace(e, local=hit[3], remote=hit[4]))
            elif e.rx_sk and e.rx_sk in socks:
                local, remote = socks[e.rx_sk]
                kept.append(replace(e, local=local, remote=remote))
            else:
                unattributed += 1
            continue
        ours = _on_port(e, port)
        if isinstance(e, (Reset, Probe)) and e.skb and (not isinstance(e, Reset) or e.sent):
            # a RST goes back to the packet's sender; a probe is the receiving socket's
            last[e.cpu] = (e.skb, e.ts, ours, e.local, e.remote)
        if ours:
            kept.append(e)
    return Resolved(tuple(kept), unattributed)


def _on_port(e: KernelEvent, port: int) -> bool:
    if isinstance(e, Lost):
        return True
    if isinstance(e, Drop):
        return e.local is not None and (e.local.port == port or (e.remote is not None and e.remote.port == port))
    return e.local.port == port or e.remote.port == port


# ======================================================================================
# Clocks
# ======================================================================================


@dataclass(frozen=True, slots=True)
class ClockSync:
    """How the trace clock maps onto the capture's (wall) clock: ``wall = trace + offset``.

    ``uncertainty`` bounds the offset's error (seconds): half the narrowest bracket of
    wall-clock reads around a marker, plus half a microsecond (tracefs prints
    microseconds).  ``drift`` is the offset measured at the end minus the one at the
    start, each to within its own uncertainty (None with one calibration): only a
    step of the wall clock during the capture makes it larger than those."""

    clock: str
    offset: float
    uncertainty: float
    drift: float | None = None
    end_uncertainty: float | None = None

    @property
    def stepped(self) -> bool:
        """The wall clock moved against the trace clock during the capture: the drift is
        more than both measurements' uncertainty (none with one calibration)."""
        return self.drift is not None and abs(self.drift) > self.uncertainty + (self.end_uncertainty or 0.0) + 1e-5

    def to_json(self) -> dict[str, Any]:
        return {"clock": self.clock, "offset": self.offset, "uncertainty": self.uncertainty,
                "drift": self.drift, "end_uncertainty": self.end_uncertainty}


_PRINTED = 1e-6  # tracefs prints trace timestamps in microseconds


def calibrate(markers: Sequence[Marker], brackets: Mapping[int, tuple[int, int]], clock: str = "mono",
              *, split: int | None = None) -> ClockSync | None:
    """The clock offset from clock markers (``hsviz-sync N``) and, for each ``N``, the
    wall clock in nanoseconds read just before and just after writing it: the marker's
    trace time fell between the two, so ``offset`` lies in ``[before - ts, after - ts]``.
    The narrowest bracket wins.  Markers ``N < split`` are the start's, the others the
    end's; with both, ``drift`` is end minus start.  None without usable markers."""
    best: dict[bool, tuple[float, float]] = {}  # is_end -> (half width, offset)
    for m in markers:
        word, _, number = m.text.partition(" ")
        if word != SYNC_MARKER or not number.isdigit() or int(number) not in brackets:
            continue
        n = int(number)
        before, after = brackets[n]
        half = (after - before) / 2e9 + _PRINTED / 2
        offset = (before + after) / 2e9 - m.ts
        end = split is not None and n >= split
        if end not in best or half < best[end][0]:
            best[end] = (half, offset)
    if not best:
        return None
    start = best.get(False) or best[True]
    if len(best) < 2:
        return ClockSync(clock, start[1], start[0])
    return ClockSync(clock, start[1], start[0], best[True][1] - best[False][1], best[True][0])


# ======================================================================================
# X.kernel.jsonl
# ======================================================================================


@dataclass(frozen=True, slots=True)
class KernelLog:
    """The contents of an ``X.kernel.jsonl``: what was recorded and how, and the events
    (on the capture's clock)."""

    port: int
    sync: ClockSync | None
    events: tuple[KernelEvent, ...]
    lost: int = 0  # events the ring buffer overwrote before they were read
    recorded: tuple[str, ...] = EVENTS  # tracepoints that were on
    missing: tuple[str, ...] = ()  # tracepoints this kernel lacks
    unattributed_drops: int = 0
    path: Path | None = field(default=None, compare=False)


def kernel_path_for(pcap_path: str | os.PathLike[str]) -> Path:
    """``trace.pcap`` -> ``trace.kernel.jsonl`` (same stem rules as the calls file)."""
    return beside(pcap_path, KERNEL_SUFFIX)


def _ep(e: Endpoint | None) -> dict[str, Any] | None:
    return None if e is None else {"ip": e.ip, "port": e.port}


def event_json(e: KernelEvent) -> dict[str, Any]:
    """One event as its JSONL object (the schema's one definition)."""
    if isinstance(e, Lost):
        return {"type": "lost", "ts": e.ts, "cpu": e.cpu, "events": e.events}
    out: dict[str, Any] = {"type": e.type.value, "ts": e.ts, "cpu": e.cpu, "local": _ep(e.local),
                           "remote": _ep(e.remote)}
    if isinstance(e, StateChange):
        out.update(old=e.old.value, new=e.new.value, sock=e.sock)
    elif isinstance(e, Probe):
        out.update(data_len=e.data_len, **e.values(), sock=e.sock)
    elif isinstance(e, Retransmit):
        out.update(state=e.state and e.state.value, synack=e.synack, sock=e.sock)
    elif isinstance(e, Reset):
        out.update(sent=e.sent, reason=e.reason, state=e.state and e.state.value, sock=e.sock)
    else:
        out.update(reason=e.reason, location=e.location)
    return out


def kernel_jsonl_lines(log: KernelLog) -> Iterator[str]:
    """The file's lines (without newlines): a ``"trace"`` header, then one event a line."""
    header = {"type": "trace", "version": FORMAT_VERSION, "port": log.port,
              "sync": log.sync.to_json() if log.sync else None, "lost": log.lost,
              "recorded": list(log.recorded), "missing": list(log.missing),
              "unattributed_drops": log.unattributed_drops, "events": len(log.events)}
    yield json.dumps(header)
    for e in log.events:
        yield json.dumps(event_json(e))


# -- reading, defensively: the file may come from anywhere ----------------------------

_MAX_LINE = 1 << 16
_U32 = (1 << 32) - 1
_TOKEN = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # a reason or state name
_LOCATION = re.compile(r"^[A-Za-z0-9_.+/]{0,128}$")
_SOCK = re.compile(r"^[0-9a-fx]{0,18}$")


class _Bad(ValueError):
    """A field of a kernel.jsonl line that does not fit the schema (internal)."""


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _get(d: Mapping[str, Any], key: str, kind: str, *, lo: float = 0, hi: float = _U32,
         optional: bool = False) -> Any:
    value = d.get(key)
    if value is None:
        if optional:
            return None
        raise _Bad(f'missing "{key}"')
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _Bad(f'"{key}" must be an integer from {lo:g} to {hi:g}, not {_show(value)}')
        return value
    if kind == "num":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise _Bad(f'"{key}" must be a number from {lo:g} to {hi:g}, not {_show(value)}')
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _Bad(f'"{key}" must be true or false, not {_show(value)}')
        return value
    pattern = {"token": _TOKEN, "location": _LOCATION, "sock": _SOCK}[kind]
    if not isinstance(value, str) or not pattern.match(value):
        raise _Bad(f'"{key}" must be a name ({pattern.pattern}), not {_show(value)}')
    return value


def _endpoint(d: Mapping[str, Any], key: str, optional: bool = False) -> Endpoint | None:
    value = d.get(key)
    if value is None:
        if optional:
            return None
        raise _Bad(f'missing "{key}"')
    if not isinstance(value, Mapping):
        raise _Bad(f'"{key}" must be an object with "ip" and "port"')
    ip = value.get("ip")
    known = _address(ip) if isinstance(ip, str) and len(ip) <= 64 else None
    if known is None:
        raise _Bad(f'"{key}" ip must be an address, not {_show(ip)}')
    return Endpoint(known, _get(value, "port", "int", hi=65535))


def _linux_state(d: Mapping[str, Any], key: str, optional: bool = False) -> LinuxState | None:
    name = _get(d, key, "token", optional=optional)
    if name is None:
        return None
    try:
        return LinuxState(name)
    except ValueError:
        raise _Bad(f'"{key}" must be a Linux TCP state, not {_show(name)}') from None


_TS_MAX = 1e11  # epoch seconds (year 5138) or trace-clock seconds: anything larger is wrong


def _event(d: Mapping[str, Any]) -> KernelEvent | None:
    kind = d.get("type")
    if kind == "lost":
        return Lost(cpu=_get(d, "cpu", "int", hi=65535), events=_get(d, "events", "int", hi=2**53),
                    ts=_get(d, "ts", "num", hi=_TS_MAX, optional=True))
    if kind not in ("state", "probe", "retransmit", "reset", "drop"):
        return None  # another record type: left for other readers
    ts = _get(d, "ts", "num", hi=_TS_MAX)
    cpu = _get(d, "cpu", "int", hi=65535)
    if kind == "drop":
        return Drop(ts=ts, cpu=cpu, reason=_get(d, "reason", "token"),
                    location=_get(d, "location", "location", optional=True) or "",
                    local=_endpoint(d, "local", True), remote=_endpoint(d, "remote", True))
    local, remote = _endpoint(d, "local"), _endpoint(d, "remote")
    assert local is not None and remote is not None
    sock = _get(d, "sock", "sock", optional=True) or ""
    if kind == "state":
        old, new = _linux_state(d, "old"), _linux_state(d, "new")
        assert old is not None and new is not None
        return StateChange(ts=ts, cpu=cpu, local=local, remote=remote, old=old, new=new, sock=sock)
    if kind == "probe":
        n = {k: _get(d, k, "int") for k in ("data_len", "snd_nxt", "snd_una", "cwnd", "ssthresh", "snd_wnd",
                                             "srtt_us", "rcv_wnd")}
        return Probe(ts=ts, cpu=cpu, local=local, remote=remote, sock=sock, **n)
    if kind == "retransmit":
        return Retransmit(ts=ts, cpu=cpu, local=local, remote=remote, state=_linux_state(d, "state", True),
                          synack=bool(_get(d, "synack", "bool", optional=True)), sock=sock)
    return Reset(ts=ts, cpu=cpu, local=local, remote=remote, sent=_get(d, "sent", "bool"),
                 reason=_get(d, "reason", "token", optional=True), state=_linux_state(d, "state", True), sock=sock)


def _header(d: Mapping[str, Any]) -> dict[str, Any]:
    version = _get(d, "version", "int", hi=1000)
    if version > FORMAT_VERSION:
        raise _Bad(f"format version {version}: this hsviz reads version {FORMAT_VERSION}")
    sync = d.get("sync")
    clock = None
    if sync is not None:
        if not isinstance(sync, Mapping):
            raise _Bad('"sync" must be an object')
        drift = _get(sync, "drift", "num", lo=-1e6, hi=1e6, optional=True)
        clock = ClockSync(_get(sync, "clock", "token"), _get(sync, "offset", "num", lo=-_TS_MAX, hi=_TS_MAX),
                          _get(sync, "uncertainty", "num", hi=1e6), drift,
                          _get(sync, "end_uncertainty", "num", hi=1e6, optional=True))
    names = []
    for key in ("recorded", "missing"):
        value = d.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and re.match(r"^\w+:\w+$", v)
                                                   for v in value) or len(value) > 64:
            raise _Bad(f'"{key}" must be a list of tracepoint names (system:event)')
        names.append(tuple(value))
    return {"port": _get(d, "port", "int", hi=65535), "sync": clock, "lost": _get(d, "lost", "int", hi=2**53),
            "recorded": names[0], "missing": names[1],
            "unattributed_drops": _get(d, "unattributed_drops", "int", hi=2**53, optional=True) or 0}


def parse_kernel_jsonl(lines: Iterable[str], name: str = "kernel.jsonl") -> KernelLog:
    """A KernelLog from the lines of an ``X.kernel.jsonl``.  Blank lines and records of
    other types are skipped; the ``"trace"`` header must come first.  Raises
    KernelFileError ``NAME: line N: reason`` for the first bad line, whatever it
    holds (huge numbers, deep nesting, lone surrogates, …)."""
    header: dict[str, Any] | None = None
    events: list[KernelEvent] = []
    for n, line in enumerate(lines, 1):
        if len(line) > _MAX_LINE:
            raise KernelFileError(f"{name}: line {n}: longer than {_MAX_LINE} characters")
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KernelFileError(f"{name}: line {n}: not JSON ({exc.msg})") from None
        except RecursionError:
            raise KernelFileError(f"{name}: line {n}: nested too deeply") from None
        except ValueError as exc:  # an integer with more digits than Python converts
            raise KernelFileError(f"{name}: line {n}: {str(exc).split(';')[0]}") from None
        try:
            if not isinstance(d, dict):
                raise _Bad("not a JSON object")
            if header is None:
                if d.get("type") != "trace":
                    raise _Bad('the first record must be the "trace" header')
                header = _header(d)
                continue
            event = _event(d)
        except _Bad as exc:
            raise KernelFileError(f"{name}: line {n}: {exc}") from None
        if event is not None:
            events.append(event)
    if header is None:
        raise KernelFileError(f'{name}: empty: no "trace" header')
    return KernelLog(events=tuple(events), **header)


def read_kernel_jsonl(path: str | os.PathLike[str]) -> KernelLog:
    """Read an ``X.kernel.jsonl`` (KernelFileError with one line when it is unusable)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            log = parse_kernel_jsonl(fh, str(path))
    except UnicodeDecodeError:
        raise KernelFileError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise os_error(exc, path, "read", KernelFileError) from None
    return replace(log, path=path)
