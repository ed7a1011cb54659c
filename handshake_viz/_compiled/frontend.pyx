# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled front end: what feeds the compiled tracker and writes what it made.

The tracker's rules are compiled from their Python source (``track.py`` and the modules
beside it, typed by the ``.pxd`` files here).  This file is the rest of the per-packet
loop, written for Cython alone because the Python versions are built on ``struct``
and ``%``-formatting, which compiled code cannot make fast:

* ``Walk._pcap``: the record walk over a pcap file (``pcapio.CaptureFile._pcap_positions``,
  its messages and counts the same; a plain file is mapped, not read), and ``Walk._records``
  for pcapng (the Python walk's ``positions``, each frame decoded here);
* ``Walk._frame``: the decoder's fast path (Ethernet, IPv4 without options,
  unfragmented TCP: ``decode._decode``'s first test, the same fields); every other
  frame goes to ``decode._decode`` itself;
* the sinks the tracker hands each segment to (``track.Sink``): :class:`Count`
  (``--summary``), :class:`JsonLines` (``report.segment_lines``'s lines),
  :class:`Ladder` (``report.format_segment``'s lines, held back as
  ``hindsight.Settler`` holds them) and :class:`Keep` (Segment records, for
  ``pipeline.load``).

tests/test_differential.py holds the whole to the Python modules it stands for.
"""

from cpython.bytearray cimport (PyByteArray_AS_STRING, PyByteArray_FromStringAndSize,
                                PyByteArray_GET_SIZE, PyByteArray_Resize)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.string cimport memcpy, memmove, strlen

from .seqanalysis cimport analysis_names
from .track cimport Sink, Tracker
from .tracked cimport TrackedConn, TrackedFlow

from handshake_viz import decode as _decode_module
from handshake_viz import hindsight as _hindsight
from handshake_viz import report as _report
from handshake_viz.checksum import tcp_checksum as _tcp_checksum
from handshake_viz.errors import CaptureFileError, HsvizError
from handshake_viz.model import Direction
from handshake_viz.pcapio import CHUNK, MAX_CAPLEN, _why

from handshake_viz._compiled.track import _make_segment

import io
import mmap
import os
import stat
import zlib

cdef extern from "Python.h":
    char *PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int *ptype) except NULL
    int Py_DTSF_ADD_DOT_0
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

cdef extern from *:
    const char *HSVIZ_SOURCES_DIGEST
    const char *HSVIZ_CYTHON_VERSION

#: The digest of the sources this was built from (``_build.sources_digest``).
SOURCES_DIGEST = HSVIZ_SOURCES_DIGEST.decode()
#: The Cython that built it.
CYTHON_VERSION = HSVIZ_CYTHON_VERSION.decode()

cdef object C2S = Direction.C2S
cdef int FIN = 0x01, SYN = 0x02, RST = 0x04, ACK = 0x10
cdef object _py_decode = _decode_module._decode
cdef object _pair4 = _decode_module._pair4
cdef tuple _FLAG_TEXT = tuple(_report._FLAG_TEXT)


# ----------------------------------------------------------------------------------------
# Text in a growing buffer
# ----------------------------------------------------------------------------------------

cdef struct Buf:
    char *data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _grow(Buf *b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 1 << 16
    while cap < b.size + need:
        cap *= 2
    cdef char *data = <char *>PyMem_Realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef inline int _put(Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.size + n > b.cap:
        _grow(b, n)
    memcpy(b.data + b.size, s, n)
    b.size += n
    return 0


cdef inline int _puts(Buf *b, const char *s) except -1:
    return _put(b, s, strlen(s))


cdef inline int _put_text(Buf *b, str s) except -1:
    cdef Py_ssize_t n
    cdef const char *data = PyUnicode_AsUTF8AndSize(s, &n)
    return _put(b, data, n)


cdef inline int _put_int(Buf *b, long long v, int width=0) except -1:
    """``str(v)``, right-aligned in ``width`` characters (``f"{v:>{width}}"``)."""
    cdef char tmp[24]
    cdef int i = 24
    cdef unsigned long long u = <unsigned long long>(-v) if v < 0 else <unsigned long long>v
    while True:
        i -= 1
        tmp[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        tmp[i] = 45
    while 24 - i < width:
        _put(b, " ", 1)
        width -= 1
    return _put(b, tmp + i, 24 - i)


cdef int _put_double(Buf *b, double v, char code, int precision, int width) except -1:
    """``repr(v)`` (code ``r``) or ``format(v, f">{width}.{precision}f")`` (code ``f``):
    Python's own conversion, so the digits are Python's."""
    cdef char *s = PyOS_double_to_string(v, code, precision, Py_DTSF_ADD_DOT_0 if code == b'r' else 0, NULL)
    cdef Py_ssize_t n = strlen(s)
    try:
        while width > n:
            _put(b, " ", 1)
            width -= 1
        _put(b, s, n)
    finally:
        PyMem_Free(s)
    return 0


cdef int _pad(Buf *b, Py_ssize_t start, Py_ssize_t width) except -1:
    """Pad what was written since ``start`` with spaces to ``width`` characters (ASCII)."""
    cdef Py_ssize_t n = b.size - start
    while n < width:
        _put(b, " ", 1)
        n += 1
    return 0


cdef str _take(Buf *b):
    text = PyUnicode_DecodeUTF8(b.data, b.size, NULL)
    b.size = 0
    return text


# ----------------------------------------------------------------------------------------
# Sinks: what the tracker hands each segment to
# ----------------------------------------------------------------------------------------

cdef class Output(Sink):
    """A sink with text for the caller (``take``), and what it does with a UDP datagram."""

    cdef Buf out
    cdef bint filtered
    cdef long long want

    def __cinit__(self):
        self.out.data = NULL
        self.out.size = self.out.cap = 0

    def __dealloc__(self):
        PyMem_Free(self.out.data)

    def _want(self, want):
        self.filtered = want is not None
        self.want = -1 if want is None else want

    cpdef bint pending(self):
        return self.out.size > 0

    def take(self):
        """The text made since the last call ("" if none)."""
        return _take(&self.out)

    def datagram(self, d):
        """A UDP datagram (what ``FlowTracker.feed_fields`` made), in capture order."""


cdef class Count(Output):
    """``hsviz analyze --summary``: the tracker's counts are all that is wanted."""

    cpdef object segment(self, TrackedConn conn, TrackedFlow fwd, long long frame, double ts,
                         str src, int sport, str dst, int dport, long long seq, long long ack,
                         long long rel_seq, object rel_ack, long long length, int flags, int win,
                         object label, object phase, int bits, bytes payload, bytes raw_options,
                         int ip_version):
        return True


cdef enum:
    TAILS = 256  # tail texts cached by their key's identities

cdef class JsonLines(Output):
    """``report.segment_lines``'s lines (and ``datagram_jsonl``'s), each ending in a newline."""

    cdef dict _tails  # keeps the tail texts alive; the cache below points into it
    cdef PyObject *_tail_key[TAILS][4]
    cdef int _tail_bits[TAILS]
    cdef PyObject *_tail_text[TAILS]

    def __init__(self, want=None):
        self._want(want)
        self._tails = {}

    cdef bytes _tail(self, object label, object phase, int bits, object client, object server):
        """The line's end (label, phase, analysis, states), as report makes it."""
        cdef size_t h = ((<size_t><PyObject *>label >> 4) * 3 + (<size_t><PyObject *>phase >> 4) * 5
                         + (<size_t><PyObject *>client >> 4) * 7 + (<size_t><PyObject *>server >> 4) * 11
                         + <size_t>bits * 13) % TAILS
        if (self._tail_text[h] != NULL and self._tail_bits[h] == bits
                and self._tail_key[h][0] == <PyObject *>label and self._tail_key[h][1] == <PyObject *>phase
                and self._tail_key[h][2] == <PyObject *>client and self._tail_key[h][3] == <PyObject *>server):
            return <bytes>self._tail_text[h]
        key = (label, phase, bits, client, server)
        text = self._tails.get(key)
        if text is None:
            tail = _report._TAILS.get((label, phase, analysis_names(bits), client, server))
            if tail is None:
                tail = _report._segment_tail((label, phase, analysis_names(bits), client, server))
            text = self._tails[key] = tail.encode()
        # (enum members and the dict's values live as long as this sink)
        self._tail_key[h][0] = <PyObject *>label
        self._tail_key[h][1] = <PyObject *>phase
        self._tail_key[h][2] = <PyObject *>client
        self._tail_key[h][3] = <PyObject *>server
        self._tail_bits[h] = bits
        self._tail_text[h] = <PyObject *>text
        return <bytes>text

    cpdef object segment(self, TrackedConn conn, TrackedFlow fwd, long long frame, double ts,
                         str src, int sport, str dst, int dport, long long seq, long long ack,
                         long long rel_seq, object rel_ack, long long length, int flags, int win,
                         object label, object phase, int bits, bytes payload, bytes raw_options,
                         int ip_version):
        if self.filtered and conn.index != self.want:
            return True
        cdef Buf *b = &self.out
        cdef const unsigned char *o
        cdef bytes tail = self._tail(label, phase, bits, conn.c2s.state, conn.s2c.state)
        _puts(b, '{"type": "segment", "frame": ')
        _put_int(b, frame)
        _puts(b, ', "ts": ')
        _put_double(b, ts, b'r', 0, 0)
        _puts(b, ', "conn": ')
        _put_int(b, conn.index)
        _puts(b, ', "src": "')
        _put_text(b, src)
        _puts(b, '", "sport": ')
        _put_int(b, sport)
        _puts(b, ', "dst": "')
        _put_text(b, dst)
        _puts(b, '", "dport": ')
        _put_int(b, dport)
        _puts(b, ', "dir": "c2s", "seq": ' if fwd.dir is C2S else ', "dir": "s2c", "seq": ')
        _put_int(b, seq)
        _puts(b, ', "ack": ')
        _put_int(b, ack)
        _puts(b, ', "rel_seq": ')
        _put_int(b, rel_seq)
        _puts(b, ', "rel_ack": ')
        if rel_ack is None:
            _puts(b, "null")
        else:
            _put_int(b, rel_ack)
        _puts(b, ', "len": ')
        _put_int(b, length)
        _puts(b, ', "flags": "')
        if 0 <= flags < 256:
            _put_text(b, <str>_FLAG_TEXT[flags])
        else:
            _put_text(b, _report.flag_letters(flags))
        _puts(b, '", "win": ')
        _put_int(b, win)
        _puts(b, ', "options": ')
        o = <const unsigned char *>PyBytes_AS_STRING(raw_options)
        if PyBytes_GET_SIZE(raw_options) == 12 and o[0] == 1 and o[1] == 1 and o[2] == 8 and o[3] == 10:
            _puts(b, '{"ts_val": ')
            _put_int(b, (<long long>o[4] << 24) | (o[5] << 16) | (o[6] << 8) | o[7])
            _puts(b, ', "ts_ecr": ')
            _put_int(b, (<long long>o[8] << 24) | (o[9] << 16) | (o[10] << 8) | o[11])
            _puts(b, '}, ')
        else:
            _put_text(b, _report.options_json(raw_options))
            _puts(b, ', ')
        _put(b, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail))
        _put(b, "\n", 1)
        return True

    def datagram(self, d):
        if not self.filtered:
            _put_text(&self.out, _report.datagram_jsonl(d))
            _put(&self.out, "\n", 1)


cdef enum:
    LADDER_BATCH = 4096  # lines the sink gathers before it hands them to the LadderSpill

cdef int _append(bytearray into, const char *data, Py_ssize_t n) except -1:
    """``into += data[:n]``, without a bytes object in between."""
    cdef Py_ssize_t have = PyByteArray_GET_SIZE(into)
    PyByteArray_Resize(into, have + n)  # (grows the allocation by an eighth or more)
    memcpy(PyByteArray_AS_STRING(into) + have, data, n)
    return 0


cdef class Ladder(Output):
    """``report.format_segment``'s lines, UTF-8 and newline-ended, added to ``ladders``
    (``analyze.LadderSpill``) per connection as ``hsviz analyze`` adds them, with no
    Python object per line.  A connection whose first segments are the client's SYNs is
    held back until its answer, as ``hindsight.Settler`` holds it: when the answer is a
    refusing RST (the one case ``hindsight.settle`` changes) the held segments go through
    Python (``hindsight.settle``, ``report.format_segment``); otherwise the lines made
    when they arrived are let go as they were.  Lines reach ``ladders`` in batches
    (``LadderSpill.extend``); :meth:`release` hands over the last."""

    cdef object _ladders, _flow_add
    cdef dict held  # connection -> its held SYNs (Segments, for a refusal)
    cdef dict _held_lines  # connection -> the held SYNs' lines
    cdef dict _flow_starts
    cdef dict _analysis
    cdef dict _batch  # connection -> its lines not yet handed over (a bytearray)
    cdef Py_ssize_t _batch_lines, _batch_bytes
    cdef Buf _text  # one line (not ``out``: that is text for the caller, and a ladder has none)

    def __dealloc__(self):
        PyMem_Free(self._text.data)

    def __init__(self, ladders, flow_ladders, want=None):
        self._want(want)
        self._ladders = ladders
        self._flow_add = flow_ladders.add
        self.held = {}
        self._held_lines = {}
        self._flow_starts = {}
        self._analysis = {}
        self._batch = {}

    cdef int _add(self, long long index, const char *data, Py_ssize_t n) except -1:
        lines = self._batch.get(index)
        if lines is None:
            self._batch[index] = PyByteArray_FromStringAndSize(data, n)
        else:
            _append(<bytearray>lines, data, n)
        self._batch_bytes += n
        self._batch_lines += 1
        if self._batch_lines >= LADDER_BATCH:
            self._hand_over()
        return 0

    cdef _hand_over(self):
        if self._batch_lines:
            self._ladders.extend(self._batch, self._batch_bytes)
            self._batch = {}
            self._batch_lines = self._batch_bytes = 0

    cpdef object segment(self, TrackedConn conn, TrackedFlow fwd, long long frame, double ts,
                         str src, int sport, str dst, int dport, long long seq, long long ack,
                         long long rel_seq, object rel_ack, long long length, int flags, int win,
                         object label, object phase, int bits, bytes payload, bytes raw_options,
                         int ip_version):
        cdef long long index = conn.index
        if self.filtered and index != self.want:
            return True
        cdef bint opening = fwd.dir is C2S and flags & SYN and not flags & ACK
        cdef list held = None
        if self.held:
            held = self.held.get(index)
        if held is None and not (opening and conn.segments == 1):
            self._line(conn, fwd, frame, ts, rel_seq, rel_ack, length, flags, label, bits)
            self._add(index, self._text.data, self._text.size)
            return True
        cdef bint refusal = not opening and fwd.dir is not C2S and flags & RST and not flags & SYN
        if opening or refusal:  # kept as a Segment: a refusal rewrites the held SYNs' states
            seg = _make_segment(frame, ts, index, fwd.dir, src, sport, dst, dport, seq, ack,
                                rel_seq, rel_ack, length, flags, win, label, phase,
                                analysis_names(bits), conn.c2s.state, conn.s2c.state, payload,
                                raw_options, ip_version)
        if held is None:  # a connection's first segment, the client's SYN
            self.held[index] = [seg]
            self._line(conn, fwd, frame, ts, rel_seq, rel_ack, length, flags, label, bits)
            self._held_lines[index] = PyByteArray_FromStringAndSize(self._text.data, self._text.size)
            return True
        if opening:  # the SYN again, still unanswered
            held.append(seg)
            self._line(conn, fwd, frame, ts, rel_seq, rel_ack, length, flags, label, bits)
            _append(<bytearray>self._held_lines[index], self._text.data, self._text.size)
            return True
        del self.held[index]
        lines = self._held_lines.pop(index)
        if refusal:
            held.append(seg)
            self._released(index, _hindsight.settle(held))
            return True
        self._add(index, PyByteArray_AS_STRING(lines), PyByteArray_GET_SIZE(lines))
        self._line(conn, fwd, frame, ts, rel_seq, rel_ack, length, flags, label, bits)
        self._add(index, self._text.data, self._text.size)
        return True

    def _released(self, index, segments):
        t0 = segments[0].ts
        for s in segments:
            line = (_report.format_segment(s, t0) + "\n").encode()
            self._add(index, line, len(line))

    def release(self):
        """The connections still held (SYNs never answered), as they are, in order; then
        every line not yet handed to ``ladders``."""
        for index in sorted(self.held):
            del self.held[index]
            lines = self._held_lines.pop(index)
            self._add(index, PyByteArray_AS_STRING(lines), PyByteArray_GET_SIZE(lines))
        self._hand_over()

    cdef _line(self, TrackedConn conn, TrackedFlow fwd, long long frame, double ts,
               long long rel_seq, object rel_ack, long long length, int flags, object label,
               int bits):
        """The segment's line, UTF-8 with its newline, in ``self._text``."""
        cdef Buf *b = &self._text
        cdef Py_ssize_t start
        b.size = 0
        # f"{frame:>7} {ms:>10.3f} ms  {arrow} {label:<9} {flags:<4} {detail:<34} {states}{analysis}"
        _put_int(b, frame, 7)
        _put(b, " ", 1)
        _put_double(b, (ts - conn.first_ts) * 1000.0, b'f', 3, 10)
        _puts(b, " ms  \xe2\x86\x92 " if fwd.dir is C2S else " ms  \xe2\x86\x90 ")
        start = b.size
        _put_text(b, <str>label)  # (a Word is a str: its text is its value)
        _pad(b, start, 9)
        _put(b, " ", 1)
        start = b.size
        _put_text(b, <str>_FLAG_TEXT[flags] if 0 <= flags < 256 else _report.flag_letters(flags))
        _pad(b, start, 4)
        _put(b, " ", 1)
        start = b.size
        _puts(b, "seq=")
        _put_int(b, rel_seq)
        if length:
            _put(b, ":", 1)
            _put_int(b, (rel_seq + length) & 0xFFFFFFFF)
        if rel_ack is not None:
            _puts(b, " ack=")
            _put_int(b, rel_ack)
        _puts(b, " len=")
        _put_int(b, length)
        _pad(b, start, 34)
        _put(b, " ", 1)
        cdef str client = <str>conn.c2s.state
        cdef Py_ssize_t n = len(client)
        while n < 12:
            _put(b, " ", 1)
            n += 1
        _put_text(b, client)
        _puts(b, " | ")
        start = b.size
        _put_text(b, <str>conn.s2c.state)
        _pad(b, start, 12)
        if bits:
            text = self._analysis.get(bits)
            if text is None:
                text = self._analysis[bits] = "  [" + ", ".join([a.value for a in analysis_names(bits)]) + "]"
            _put_text(b, text)
        _put(b, "\n", 1)

    def datagram(self, d):
        if not self.filtered:
            t0 = self._flow_starts.setdefault(d.flow, d.ts)
            self._flow_add(d.flow, _report.format_datagram(d, t0))


cdef class Keep(Output):
    """The Segment records of the connections in ``wanted`` (all if None) and every UDP
    datagram, in capture order: what ``pipeline.load`` keeps."""

    cdef object wanted
    cdef public list segments, datagrams

    def __init__(self, wanted=None):
        self.wanted = wanted
        self.segments = []
        self.datagrams = []

    cpdef object segment(self, TrackedConn conn, TrackedFlow fwd, long long frame, double ts,
                         str src, int sport, str dst, int dport, long long seq, long long ack,
                         long long rel_seq, object rel_ack, long long length, int flags, int win,
                         object label, object phase, int bits, bytes payload, bytes raw_options,
                         int ip_version):
        if self.wanted is not None and conn.index not in self.wanted:
            return True
        seg = _make_segment(frame, ts, conn.index, fwd.dir, src, sport, dst, dport, seq, ack,
                            rel_seq, rel_ack, length, flags, win, label, phase, analysis_names(bits),
                            conn.c2s.state, conn.s2c.state, payload, raw_options, ip_version)
        self.segments.append(seg)
        return seg

    def datagram(self, d):
        self.datagrams.append(d)


# ----------------------------------------------------------------------------------------
# The walk
# ----------------------------------------------------------------------------------------

class _Fields(tuple):
    """Packet's fields, as the general decoder's ``make`` returns them here (a type of its
    own, so that nothing a ``make_udp`` returns is taken for them)."""

    __slots__ = ()


def _collect(*fields):
    return _Fields(fields)


cdef enum:
    PAIRS = 4096  # address pairs cached

cdef enum:
    STEP = 256 << 10  # bytes of a mapped file between two hand-overs of the walk's text


def _mapped(stream):
    """A read-only map of the plain file under ``stream`` (an unbuffered ``FileIO``, as
    ``pcapio.open_file`` opens a path), or None: a pipe, a gzip stream, an empty or
    unmappable file are read instead."""
    if type(stream) is not io.FileIO:
        return None
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size < 24:
            return None
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


cdef Py_ssize_t _let_go(object mapped, object stream, Py_ssize_t pos, Py_ssize_t released) except -1:
    """The mapped pages before ``pos`` are let go (they stay in the page cache, out of
    the process's memory), and the file's offset is set to ``pos`` (the progress line
    reads it); returns where the pages let go end."""
    cdef Py_ssize_t upto = pos & ~(<Py_ssize_t>mmap.PAGESIZE - 1)
    if mapped is not None and upto > released:
        try:
            mapped.madvise(mmap.MADV_DONTNEED, released, upto - released)
        except (OSError, ValueError, AttributeError):
            pass
        released = upto
        try:
            os.lseek(stream.fileno(), pos, os.SEEK_SET)
        except (OSError, ValueError):
            pass
    return released


cdef class Walk:
    """Decode a capture's frames and feed the TCP segments to ``tracker``, which hands
    them to ``sink``; UDP datagrams go to ``make_udp`` (``FlowTracker.feed_fields``),
    and what it returns to ``sink.datagram``.  With ``verify`` every TCP checksum is
    verified (``checksum.tcp_checksum``) and counted in ``tally``."""

    cdef Tracker tracker
    cdef Output sink
    cdef object make_udp
    cdef bint verify
    cdef public list tally
    cdef long long udp
    # Ethernet/IPv4 address pairs, by their 8 bytes: decode's strings, cached here
    cdef unsigned long long _pair_key[PAIRS]
    cdef list _pairs

    def __init__(self, Tracker tracker, Output sink, make_udp=None, verify=False, tally=None):
        self.tracker = tracker
        self.sink = sink
        tracker._sink = sink
        self.make_udp = make_udp
        self.verify = verify
        self.tally = tally
        self._pairs = [None] * PAIRS

    def close(self):
        """Detach the sink from the tracker (whose summaries stay usable)."""
        self.tracker._sink = None

    cdef tuple _pair(self, const unsigned char *raw):
        cdef unsigned long long key = 0
        cdef int i
        for i in range(8):
            key = key << 8 | raw[i]
        cdef size_t slot = <size_t>((key * <unsigned long long>0x9E3779B97F4A7C15) >> 52)
        pair = self._pairs[slot]
        if pair is not None and self._pair_key[slot] == key:
            return <tuple>pair
        pair = _pair4(PyBytes_FromStringAndSize(<const char *>raw, 8))
        self._pairs[slot] = pair
        self._pair_key[slot] = key
        return <tuple>pair

    cdef int _frame(self, int lt, object buf, const unsigned char *base, Py_ssize_t start,
                    Py_ssize_t end, long long frame, double ts, long long extra) except -2:
        """One frame, ``base[start:end]`` of ``buf`` (bytes, or the walk's bytearray): 1
        decoded (and fed), 0 skipped, -1 malformed (``pcapio.CaptureFile.walk``'s counts)."""
        cdef const unsigned char *p = base + start
        cdef long long tot, doff, length, seq, ack
        cdef Py_ssize_t t, pl, q
        cdef int ipid, sport, dport, flags, win
        cdef tuple pair
        cdef bytes options, payload
        if lt == 1 and end - start >= 54:
            # decode's fast path: Ethernet, IPv4 without options, unfragmented TCP
            tot = p[16] << 8 | p[17]
            if (p[12] == 0x08 and p[13] == 0 and p[14] == 0x45 and p[23] == 6
                    and not ((p[20] << 8 | p[21]) & 0x3FFF) and 40 <= tot <= end - start - 14 + extra):
                doff = (p[46] >> 2) & 0x3C
                length = tot - 20 - doff
                if doff >= 20 and length >= 0:
                    t = start + 54
                    pl = start + 34 + doff
                    q = pl + length
                    if q > end:
                        q = end
                    if doff > 20:
                        options = PyBytes_FromStringAndSize(<const char *>base + t, (pl if pl < end else end) - t)
                    else:
                        options = b""
                    pair = self._pair(p + 26)
                    ipid = p[18] << 8 | p[19]
                    sport = p[34] << 8 | p[35]
                    dport = p[36] << 8 | p[37]
                    seq = (<long long>p[38] << 24) | (p[39] << 16) | (p[40] << 8) | p[41]
                    ack = (<long long>p[42] << 24) | (p[43] << 16) | (p[44] << 8) | p[45]
                    flags = p[47]
                    win = p[48] << 8 | p[49]
                    payload = PyBytes_FromStringAndSize(<const char *>base + pl, q - pl) if q > pl else b""
                    if self.verify:
                        status = self._checksum(lt, buf, base, start, end, extra)
                        self.tracker.feed_checked(frame, ts, <str>pair[0], sport, <str>pair[1], dport,
                                                  seq, ack, flags, win, length, payload, options, 4,
                                                  ipid, status)
                    else:
                        self.tracker.feed_fields(frame, ts, <str>pair[0], sport, <str>pair[1], dport,
                                                 seq, ack, flags, win, length, payload, options, 4, ipid)
                    return 1
        if type(buf) is not bytes:  # the Python decoder's slices must be bytes
            buf = PyBytes_FromStringAndSize(<const char *>base + start, end - start)
            start, end = 0, end - start
        r = _py_decode(lt, buf, start, end, frame, ts, extra, _collect, self.make_udp)
        if r is None:
            return 0
        if r is False:
            return -1
        if type(r) is _Fields:
            if self.verify:
                (<object>self.tracker).feed_checked(*r, self._checksum(lt, buf, base, start, end, extra))
            else:
                (<object>self.tracker).feed_fields(*r)
            return 1
        self.udp += 1
        self.sink.datagram(r)
        return 1

    cdef int _checksum(self, int lt, object buf, const unsigned char *base, Py_ssize_t start,
                       Py_ssize_t end, long long extra) except -1:
        """The segment's checksum status (``checksum.tcp_checksum``), counted."""
        if type(buf) is not bytes:
            buf = PyBytes_FromStringAndSize(<const char *>base + start, end - start)
            start, end = 0, end - start
        status = _tcp_checksum(lt, buf, start, end, extra)
        self.tally[status] += 1
        return status

    def run(self, reader):
        """Walk ``reader`` (an open ``decode.CaptureReader``) to its end; yields the sink's
        text now and then (``""`` never).  A file error is raised after the text of the
        records before it was yielded, as the Python path does."""
        self.udp = 0
        try:
            if reader.format == "pcap":
                yield from self._pcap(reader)
            else:
                yield from self._records(reader)
        except HsvizError:
            if self.sink.pending():
                yield self.sink.take()
            raise
        finally:
            reader.stats.udp += self.udp
        if self.sink.pending():
            yield self.sink.take()

    def _records(self, reader):
        """Any capture but a pcap file: ``pcapio.CaptureFile.positions``' records, each
        frame decoded here (the counts as ``CaptureFile.walk`` keeps them)."""
        cdef long long n = 0, nok = 0, nbad = 0
        cdef int r
        cdef bytes data
        positions = reader.positions()
        try:
            for lt, buf, start, end, frame, ts, extra in positions:
                data = buf
                r = self._frame(lt, data, <const unsigned char *>PyBytes_AS_STRING(data), start, end,
                                frame, ts, extra)
                if r > 0:
                    nok += 1
                elif r < 0:
                    nbad += 1
                n += 1
                if n & 1023 == 0 and self.sink.pending():
                    yield self.sink.take()
        finally:
            positions.close()
            reader.stats.count(nok, nbad)

    def _pcap(self, reader):
        """``pcapio.CaptureFile._pcap_positions``, compiled: the same records, counts, warnings
        and errors.  A regular file is mapped (:func:`_mapped`: no copy of it is made,
        and the pages behind the walk are let go every chunk, so that memory stays
        flat); anything else is read into one buffer (``readinto``) instead of a new
        bytes object a chunk."""
        name = reader.name
        stats = reader.stats
        head = reader._start()
        stream = reader._stream
        mapped = _mapped(stream)
        cdef bytearray buf = None
        cdef const unsigned char[::1] view
        cdef const unsigned char *base
        cdef Py_ssize_t pos = 24, blen, start, end, released = 0
        # (mapped, the walk hands its text over, counts and lets pages go every STEP
        # bytes: a quarter of a chunk keeps the text's buffers small)
        cdef Py_ssize_t mark = STEP if mapped is not None else PY_SSIZE_T_MAX
        if mapped is not None:
            view = mapped
            base = &view[0]
            blen = len(mapped)
        else:
            buf = bytearray(max(2 * CHUNK, len(head)))
            buf[:len(head)] = head
            base = <const unsigned char *>PyByteArray_AS_STRING(buf)
            blen = len(head)
        cdef int lt = reader.linktypes[0]
        cdef bint big = reader._order == ">"
        cdef double units = reader._units
        cdef long long maxcap = max(MAX_CAPLEN, reader.snaplen)
        cdef long long frame = 0, nok = 0, nskip = 0, nbad = 0, ncut = 0, extra
        cdef unsigned long long sec, frac, caplen, wirelen
        cdef const unsigned char *h
        cdef int r
        del head
        progress = getattr(reader, "progress", None)
        try:
            while True:
                if pos >= mark:
                    mark = pos + STEP
                    if self.sink.pending():
                        yield self.sink.take()
                    stats.set(frame, nok, nskip, nbad, ncut)
                    released = _let_go(mapped, stream, pos, released)
                    if progress is not None:
                        progress(frame)
                if blen - pos < 16:
                    if self.sink.pending():
                        yield self.sink.take()
                    if mapped is None:
                        blen = self._fill(reader, stream, buf, pos, blen, CHUNK)
                        pos = 0
                        base = <const unsigned char *>PyByteArray_AS_STRING(buf)
                    stats.set(frame, nok, nskip, nbad, ncut)
                    if progress is not None:
                        progress(frame)
                    if blen - pos < 16:
                        if blen - pos:
                            stats.warnings.append(
                                f"{name}: record {frame + 1} header truncated: {blen - pos} of 16 bytes")
                        return
                h = base + pos
                if big:
                    sec = (<unsigned long long>h[0] << 24) | (h[1] << 16) | (h[2] << 8) | h[3]
                    frac = (<unsigned long long>h[4] << 24) | (h[5] << 16) | (h[6] << 8) | h[7]
                    caplen = (<unsigned long long>h[8] << 24) | (h[9] << 16) | (h[10] << 8) | h[11]
                    wirelen = (<unsigned long long>h[12] << 24) | (h[13] << 16) | (h[14] << 8) | h[15]
                else:
                    sec = (<unsigned long long>h[3] << 24) | (h[2] << 16) | (h[1] << 8) | h[0]
                    frac = (<unsigned long long>h[7] << 24) | (h[6] << 16) | (h[5] << 8) | h[4]
                    caplen = (<unsigned long long>h[11] << 24) | (h[10] << 16) | (h[9] << 8) | h[8]
                    wirelen = (<unsigned long long>h[15] << 24) | (h[14] << 16) | (h[13] << 8) | h[12]
                if <long long>caplen > maxcap:
                    raise CaptureFileError(
                        f"{name}: record {frame + 1}: captured length {caplen} is larger "
                        f"than {maxcap} bytes (corrupt file?)")
                start = pos + 16
                end = start + <Py_ssize_t>caplen
                if end > blen:
                    if self.sink.pending():
                        yield self.sink.take()
                    if mapped is None:
                        blen = self._fill(reader, stream, buf, pos, blen, max(CHUNK, end - blen))
                        pos = 0
                        base = <const unsigned char *>PyByteArray_AS_STRING(buf)
                        start, end = 16, 16 + <Py_ssize_t>caplen
                    stats.set(frame, nok, nskip, nbad, ncut)
                    if progress is not None:
                        progress(frame)
                    if end > blen:
                        stats.warnings.append(
                            f"{name}: record {frame + 1} truncated: {blen - start} of {caplen} bytes")
                        return
                frame += 1
                pos = end
                if wirelen > caplen:
                    ncut += 1
                    extra = <long long>(wirelen - caplen)
                else:
                    extra = 0
                r = self._frame(lt, buf, base, start, end, frame, <double>sec + <double>frac / units, extra)
                if r > 0:
                    nok += 1
                elif r == 0:
                    nskip += 1
                else:
                    nbad += 1
        finally:
            stats.set(frame, nok, nskip, nbad, ncut)
            if mapped is not None:
                view = None
                mapped.close()

    cdef Py_ssize_t _fill(self, reader, stream, bytearray buf, Py_ssize_t pos, Py_ssize_t blen,
                          Py_ssize_t size) except -1:
        """``CaptureFile._refill`` into ``buf``: the unread rest moved to the front, then up
        to ``size`` more bytes of the file (fewer only at its end), read at most ``CHUNK``
        at a time so that memory follows what the file holds; returns the bytes in
        ``buf``.  The same errors as ``CaptureFile._read_at_least``."""
        cdef Py_ssize_t keep = blen - pos, got = 0, n
        cdef char *data = PyByteArray_AS_STRING(buf)
        if keep:
            memmove(data, data + pos, keep)
        while got < size:
            want = min(size - got, CHUNK)
            if keep + got + want > len(buf):
                buf.extend(bytes(keep + got + want - len(buf)))
            with memoryview(buf) as view:
                try:
                    n = stream.readinto(view[keep + got : keep + got + want])
                except (OSError, EOFError, ValueError, zlib.error) as exc:  # ValueError: closed
                    raise CaptureFileError(f"{reader.name}: read error: {_why(exc)}") from None
            if not n:
                break
            got += n
        return keep + got
