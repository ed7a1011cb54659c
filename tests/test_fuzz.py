"""Property-based fuzzing of what hsviz reads from other people: capture files (pcap,
pcapng), strace logs and calls.jsonl files.

The property is the CLI's promise: a file either works or raises one of the
project's own errors (``HsvizError``: one line, exit status 2) -- never another
exception, never a hang.  Inputs are built from valid files and then mutated where
parsers go wrong (caplen, wire length, IHL, TCP data offset, option lengths, block
lengths, link types, timestamp resolutions and values, JSON numbers and nesting),
plus plain random bytes and text.

Every input that ever failed is kept under ``tests/data/fuzz/<target>/`` and read
again by :func:`test_kept_inputs` on every run; a new failure is written there by
:func:`_keep` before the test fails, to be committed with its fix.

Budget: CI runs each property for ``HSVIZ_FUZZ_EXAMPLES`` examples (default 300,
about a minute for the whole file on the project's machine).  A longer run, as the
README says: ``HSVIZ_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from handshake_viz import pipeline, report  # noqa: E402
from handshake_viz.analyze import analyze_file  # noqa: E402
from handshake_viz.decode import header_length  # noqa: E402
from handshake_viz.errors import HsvizError  # noqa: E402
from handshake_viz.pcapio import copy_to_pcapng  # noqa: E402
from handshake_viz.text import safe_text  # noqa: E402
from handshake_viz.trace import parse_strace, read_calls_jsonl  # noqa: E402

KEPT = Path(__file__).parent / "data" / "fuzz"
EXAMPLES = int(os.environ.get("HSVIZ_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# In memory where there is a tmpfs: a file system's rename costs more than a check.
_WORK = Path(tempfile.mkdtemp(prefix="hsviz-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)


def _keep(target: str, data: bytes) -> Path:
    """Save an input that failed, named by its hash, for the regression test."""
    path = KEPT / target / (hashlib.sha1(data).hexdigest()[:16] + ".bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _holds(target: str, data: bytes, check: Callable[[bytes], None]) -> None:
    """``check(data)`` may raise HsvizError, nothing else; else keep the input and fail."""
    try:
        check(data)
    except HsvizError as exc:
        str(exc).encode("utf-8")  # one printable line
        assert "\n" not in str(exc)
    except Exception as exc:
        kept = _keep(target, data)
        raise AssertionError(f"{type(exc).__name__}: {exc} (input kept in {kept})") from exc


# ---------------------------------------------------------------------------- checks


def _check_capture(data: bytes) -> None:
    """What analyze, plot, export and hv.load do with a capture file."""
    path = _WORK / "x.pcap"
    path.write_bytes(data)
    out = io.StringIO()
    try:
        analyze_file(str(path), "jsonl", jobs=1, write=out.write, warn=lambda w: None)
    except HsvizError:
        pass
    try:
        trace = pipeline.load(path, calls=[])
    except HsvizError:
        pass
    else:
        for line in report.trace_lines(trace, "ladder"):
            line.encode("utf-8")
    copy_to_pcapng(path, _WORK / "x.pcapng", {1: ["a comment"]}, cut=header_length)


def _check_strace(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    got = parse_strace(text.splitlines(keepends=True))
    for call in got.calls:
        safe_text(report.format_call(call)).encode("utf-8")


def _check_calls(data: bytes) -> None:
    path = _WORK / "x.calls.jsonl"
    path.write_bytes(data)
    for call in read_calls_jsonl(path):
        line = report.format_call(call, call.start)
        assert "\x1b" not in line
        line.encode("utf-8")


CHECKS = {"capture": _check_capture, "strace": _check_strace, "calls": _check_calls}


# ---------------------------------------------------------------------------- capture inputs

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)


@st.composite
def tcp_options(draw: st.DrawFn) -> bytes:
    """TCP options, well-formed or not: kinds, lengths that lie, cut lists."""
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 34, 254, draw(u8)]))
        if kind in (0, 1):
            out += bytes([kind])
            continue
        length = draw(st.one_of(st.sampled_from([2, 3, 4, 6, 8, 10, 18, 34]), u8))
        out += bytes([kind, length]) + draw(st.binary(max_size=max(0, min(length, 40) - 2)))
    return out[:40]


@st.composite
def ip_tcp(draw: st.DrawFn) -> bytes:
    """An IPv4 or IPv6 packet carrying TCP or UDP with lying header fields."""
    opts = draw(tcp_options())
    opts += b"\0" * (-len(opts) % 4)
    doff = draw(st.one_of(st.just(5 + len(opts) // 4), st.integers(0, 15)))
    payload = draw(st.binary(max_size=64))
    proto = draw(st.sampled_from([6, 6, 6, 17, 1, draw(u8)]))
    if proto == 17:
        l4 = struct.pack("!HHHH", draw(u16), draw(u16), draw(st.one_of(st.just(8 + len(payload)), u16)), 0)
    else:
        l4 = struct.pack("!HHIIBBHHH", draw(u16), draw(u16), draw(u32), draw(u32), doff << 4, draw(u8),
                         draw(u16), 0, 0) + opts
    body = l4 + payload
    if draw(st.booleans()):
        ip_opts = draw(st.binary(max_size=40))
        ip_opts += b"\0" * (-len(ip_opts) % 4)
        ihl = draw(st.one_of(st.just(5 + len(ip_opts) // 4), st.integers(0, 15)))
        total = draw(st.one_of(st.just(20 + len(ip_opts) + len(body)), u16))
        frag = draw(st.one_of(st.just(0x4000), u16))
        head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0, frag, 64, proto, 0,
                           b"\x7f\0\0\1", b"\x7f\0\0\2")
        return head + ip_opts + body
    ext = b""
    nh = proto
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from([0, 43, 44, 51, 60]))
        ext = bytes([nh, draw(st.integers(0, 3))]) + draw(st.binary(min_size=6, max_size=6)) + ext
        nh = kind
    plen = draw(st.one_of(st.just(len(ext) + len(body)), u16))
    head = struct.pack("!IHBB16s16s", 0x60000000, plen, nh, 64, b"\0" * 15 + b"\1", b"\0" * 15 + b"\1")
    return head + ext + body


@st.composite
def frames(draw: st.DrawFn, linktype: int) -> bytes:
    ip = draw(ip_tcp())
    version = ip[0] >> 4
    if linktype == 1:
        ethertype = draw(st.sampled_from([0x0800 if version == 4 else 0x86DD, 0x8100, 0x0806, draw(u16)]))
        vlan = b"\x00\x01" + struct.pack("!H", 0x0800 if version == 4 else 0x86DD) if ethertype == 0x8100 else b""
        return b"\0" * 12 + struct.pack("!H", ethertype) + vlan + ip
    if linktype in (0, 108):
        return struct.pack("<I" if linktype == 0 else ">I", 2 if version == 4 else draw(st.sampled_from([10, 24, 30]))) + ip
    if linktype == 113:
        return b"\0" * 14 + struct.pack("!H", 0x0800 if version == 4 else 0x86DD) + ip
    if linktype == 276:
        return struct.pack("!H", 0x0800 if version == 4 else 0x86DD) + b"\0" * 18 + ip
    return ip


LINKTYPES = st.sampled_from([1, 1, 1, 0, 101, 108, 113, 228, 229, 276, 12, 9, 0xFFFF])


@st.composite
def pcap_files(draw: st.DrawFn) -> bytes:
    linktype = draw(LINKTYPES)
    order = draw(st.sampled_from(["<", ">"]))
    magic = draw(st.sampled_from([0xA1B2C3D4, 0xA1B23C4D]))
    snaplen = draw(st.one_of(st.just(262144), u32))
    out = struct.pack(order + "IHHiIII", magic, 2, draw(st.sampled_from([4, 4, draw(u16)])), 0, 0, snaplen,
                      linktype)
    for _ in range(draw(st.integers(0, 12))):
        frame = draw(frames(linktype))
        caplen = draw(st.one_of(st.just(len(frame)), st.just(len(frame)), u32, st.integers(0, len(frame) + 8)))
        wire = draw(st.one_of(st.just(len(frame)), st.just(caplen), u32))
        ts = draw(st.one_of(st.integers(1_700_000_000, 1_700_000_100), u32))
        out += struct.pack(order + "IIII", ts, draw(st.integers(0, 1_000_000) | u32), caplen & 0xFFFFFFFF,
                           wire) + frame
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return out


def _block(order: str, btype: int, body: bytes, length: int | None = None) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body) if length is None else length
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


@st.composite
def pcapng_files(draw: st.DrawFn) -> bytes:
    order = draw(st.sampled_from(["<", ">"]))

    def lie(n: int) -> int | None:
        return draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from([0, 4, 12, 13, n + 4, 1 << 30]),
                              u32))

    out = _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    linktypes = []
    for _ in range(draw(st.integers(1, 3))):
        lt = draw(LINKTYPES)
        linktypes.append(lt)
        opts = b""
        if draw(st.booleans()):
            opts += struct.pack(order + "HH", 9, 1) + bytes([draw(u8)]) + b"\0\0\0"
        if draw(st.booleans()):
            opts += struct.pack(order + "HHq", 14, 8, draw(st.integers(-(1 << 40), 1 << 40)))
        opts += struct.pack(order + "HH", 0, 0)
        body = struct.pack(order + "HHI", lt, 0, draw(st.one_of(st.just(0), u32))) + opts
        out += _block(order, 1, body, lie(len(body)))
    for _ in range(draw(st.integers(0, 10))):
        iface = draw(st.integers(0, len(linktypes)))
        frame = draw(frames(linktypes[min(iface, len(linktypes) - 1)]))
        caplen = draw(st.one_of(st.just(len(frame)), st.just(len(frame)), u32))
        kind = draw(st.sampled_from([6, 6, 6, 3, 2, draw(u32)]))
        ts = draw(st.one_of(st.integers(0, 1 << 60), st.just(1_700_000_000_000_000)))
        if kind == 3:
            body = struct.pack(order + "I", draw(st.one_of(st.just(len(frame)), u32))) + frame
        elif kind == 2:
            body = struct.pack(order + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, caplen, len(frame)) + frame
        else:
            body = struct.pack(order + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, caplen,
                               draw(st.one_of(st.just(len(frame)), u32))) + frame
            if draw(st.booleans()):
                body += b"\0" * (-len(body) % 4) + struct.pack(order + "HH", 1, 5) + b"hello\0\0\0"
        out += _block(order, kind, body, lie(len(body)))
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return out


@FUZZ
@given(pcap_files())
def test_pcap_files_never_crash(data: bytes) -> None:
    _holds("capture", data, _check_capture)


@FUZZ
@given(pcapng_files())
def test_pcapng_files_never_crash(data: bytes) -> None:
    _holds("capture", data, _check_capture)


@FUZZ
@given(st.one_of(pcap_files(), pcapng_files()), st.data())
def test_mutated_captures_never_crash(data: bytes, draw: st.DataObject) -> None:
    """Random bytes flipped, cut or inserted anywhere in a well-formed capture."""
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 8))):
        if not buf:
            break
        at = draw.draw(st.integers(0, len(buf) - 1))
        what = draw.draw(st.sampled_from(["flip", "cut", "insert"]))
        if what == "flip":
            buf[at] = draw.draw(u8)
        elif what == "cut":
            del buf[at: at + draw.draw(st.integers(1, 16))]
        else:
            buf[at:at] = draw.draw(st.binary(min_size=1, max_size=16))
    _holds("capture", bytes(buf), _check_capture)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    for target in ("capture", "strace", "calls"):
        _holds(target, data, CHECKS[target])
    _holds("capture", b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(8) + b"\xff\xff\x00\x00\x01\x00\x00\x00" + data,
           _check_capture)


# ---------------------------------------------------------------------------- strace and calls inputs

_STRACE_LINES = [
    '1234  1795321482.954644 recvfrom(3<TCP:[127.0.0.1:43798->127.0.0.1:38483]>, "ping 0\\n", 4096, 0, NULL, '
    'NULL) = 7 <0.000008>',
    "2230  1795321486.644068 socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<TCP:[307063]> <0.000031>",
    "2230  1795321486.644100 connect(3<TCP:[307063]>, {sa_family=AF_INET, sin_port=htons(8080), "
    'sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED (Connection refused) <0.000100>',
    "2059  1795321482.136443 close(3<TCP:[127.0.0.1:42855]>) = 0 <0.000138>",
    "[pid  2082] 1795321482.954600 accept4(3<TCP:[127.0.0.1:38483]>,  <unfinished ...>",
    "[pid  2082] 1795321482.954700 <... accept4 resumed>{sa_family=AF_INET, sin_port=htons(43798), "
    'sin_addr=inet_addr("127.0.0.1")}, [16], SOCK_CLOEXEC) = 4<TCP:[127.0.0.1:38483->127.0.0.1:43798]> <0.0001>',
    "2082  1795321482.955 poll([{fd=4<TCP:[127.0.0.1:38483->127.0.0.1:43798]>, events=POLLIN}], 1, -1) = 1 "
    "([{fd=4, revents=POLLIN}]) <0.00001>",
    "2082  1795321482.956 +++ exited with 0 +++",
    "2082  1795321482.957 --- SIGCHLD {si_signo=SIGCHLD} ---",
    "strace: Process 2082 attached",
]


@st.composite
def strace_logs(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.sampled_from(_STRACE_LINES), max_size=12))
    out = []
    for line in lines:
        if draw(st.booleans()):
            at = draw(st.integers(0, len(line)))
            piece = draw(st.one_of(st.sampled_from(["9" * 5000, "(" * 300, "<", ">", "\"", "\\", "\x1b[2J",
                                                    "[pid ", " = ", "{", "}", "<... ", " resumed>", "\ud800"]),
                                   st.text(max_size=8)))
            line = line[:at] + piece + line[at + draw(st.integers(0, 8)):]
        out.append(line)
    return "\n".join(out).encode("utf-8", errors="surrogatepass")


@FUZZ
@given(strace_logs())
def test_strace_logs_never_crash(data: bytes) -> None:
    _holds("strace", data, _check_strace)


_NUMBERS = st.one_of(st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False),
                     st.sampled_from(["1" * 400, "9" * 5000, "1e999", "-0", "NaN", "Infinity"]))


@st.composite
def call_logs(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        record: dict[str, object] = {"pid": 10, "tid": 11, "fd": 3, "call": "connect", "start": 1795321482.1,
                                     "end": 1795321482.2, "ret": 0, "errno": None, "args": "3, {...}, 16",
                                     "local": {"ip": "127.0.0.1", "port": 40000},
                                     "remote": {"ip": "::1", "port": 8080}, "frames": [1, 2], "conn": 0}
        for key in draw(st.lists(st.sampled_from(sorted(record)), max_size=4)):
            record[key] = draw(st.one_of(_NUMBERS, st.text(max_size=12), st.none(), st.booleans(),
                                         st.lists(st.integers(), max_size=3),
                                         st.dictionaries(st.sampled_from(["ip", "port"]), st.text(max_size=4)
                                                         | st.integers())))
        text = json.dumps(record)
        for token in ("1795321482.1", "10", "0"):
            if draw(st.booleans()):
                text = text.replace(token, draw(st.sampled_from(["1" * 400, "9" * 5000, "1e999", "-1"])), 1)
        if draw(st.booleans()):
            depth = draw(st.integers(1, 3000))
            text = text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
        lines.append(text)
    return "\n".join(lines).encode("utf-8", errors="surrogatepass")


@FUZZ
@given(call_logs())
def test_calls_jsonl_never_crash(data: bytes) -> None:
    _holds("calls", data, _check_calls)


# ---------------------------------------------------------------------------- kept inputs


def _kept() -> list[Path]:
    return sorted(p for p in KEPT.glob("*/*.bin") if p.parent.name in CHECKS)


@pytest.mark.parametrize("path", _kept(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kept_inputs(path: Path) -> None:
    """Every input that ever failed, still handled."""
    check = CHECKS[path.parent.name]
    try:
        check(path.read_bytes())
    except HsvizError:
        pass
