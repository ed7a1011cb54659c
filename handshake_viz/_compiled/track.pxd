# Declarations for the compiled copy of handshake_viz/track.py (see __init__.py).
cimport cython

from .seqanalysis cimport analysis_names, analyze, scaled_window
from .seqnum cimport seq_ge as _seq_ge, seq_gt as _seq_gt

from .tcpstate cimport after_segment, initial_states, is_acceptable
from .tracked cimport TrackedConn, TrackedFlow
from .zeek cimport ZeekEndpoint, ZeekView

cdef long long HALF, MASK, UNSET
cdef int ACK, FIN, RST, SYN, A_DUPLICATE
cdef double DUPLICATE_WINDOW, ZEEK_INACTIVITY
cdef object _ACK, _DATA, _PIGGYBACK, _IN_DATA, C2S, _Z_INACTIVE, _Z_CLOSED, _Z_RESET
cdef tuple _NO_ANALYSIS, ANALYSIS_BITS, ZEEK_IGNORES
cdef int GOOD

cpdef bint _ready(TrackedFlow fwd, TrackedFlow rev)
cpdef bint _zeek_steady(ZeekEndpoint end)
cpdef bint _looks_like_server(int sport, int dport, frozenset likely)

cdef class Sink:
    cpdef object segment(self, TrackedConn conn, TrackedFlow fwd, long long frame, double ts,
                         str src, int sport, str dst, int dport, long long seq, long long ack,
                         long long rel_seq, object rel_ack, long long length, int flags, int win,
                         object label, object phase, int bits, bytes payload, bytes raw_options,
                         int ip_version)

cdef class Tracker:
    cdef frozenset _likely
    cdef object _make
    cdef public Sink _sink
    cdef dict _flows
    cdef readonly dict _conns  # (readonly: for tests and measurements)
    cdef long long _count
    cdef object _store
    cdef long long _keep
    cdef object _finished
    cdef bint _stored

    @cython.locals(fwd=TrackedFlow)
    cpdef object feed_fields(self, long long frame, double ts, str src, int sport, str dst, int dport,
                             long long seq, long long ack, int flags, int win, long long length,
                             bytes payload=*, bytes raw_options=*, int ip_version=*, int ip_id=*)
    @cython.locals(fwd=TrackedFlow)
    cpdef object feed_checked(self, long long frame, double ts, str src, int sport, str dst,
                              int dport, long long seq, long long ack, int flags, int win,
                              long long length, bytes payload, bytes raw_options, int ip_version,
                              int ip_id, int checksum)
    cpdef TrackedFlow _reused(self, TrackedFlow fwd, long long frame, double ts, str src, int sport,
                              str dst, int dport, long long seq, int flags, int ip_version)
    @cython.locals(conn=TrackedConn, guessed=bint, client_is_src=bint)
    cpdef TrackedFlow _open(self, long long frame, double ts, str src, int sport, str dst,
                            int dport, int flags, int ip_version)
    cpdef _enter(self, TrackedConn conn)
    @cython.locals(old=TrackedConn)
    cpdef _finished_now(self, TrackedConn conn)
    @cython.locals(conn=TrackedConn)
    cpdef TrackedFlow _restore(self, str src, int sport, str dst, int dport)
    @cython.locals(conn=TrackedConn, rev=TrackedFlow, last_ts=double, rel_seq=cython.longlong,
                   window=cython.longlong, bits=int, data_rel_end=cython.longlong, sink=Sink)
    cpdef object _feed(self, TrackedFlow fwd, long long frame, double ts, str src, int sport,
                       str dst, int dport, long long seq, long long ack, int flags, int win,
                       long long length, bytes payload, bytes raw_options, int ip_version,
                       int ip_id, int checksum)
    @cython.locals(nextseq=cython.longlong, rev=TrackedFlow, conn=TrackedConn, zeek=ZeekView,
                   lastack=cython.longlong, end=cython.longlong, rev_lastack=cython.longlong,
                   rev_max=cython.longlong, zend=ZeekEndpoint, zpeer=ZeekEndpoint,
                   last_seq=cython.longlong, zadvance=bint, captured=cython.longlong,
                   zcontig=cython.longlong, peer_contig=cython.longlong, base=cython.longlong,
                   rev_base=cython.longlong, highest_ack=cython.longlong,
                   rel_seq=cython.longlong, rel_ack=cython.longlong, scale=int,
                   data_rel_end=cython.longlong, sink=Sink)
    cpdef object _steady(self, TrackedFlow fwd, long long frame, double ts, str src, int sport,
                         str dst, int dport, long long seq, long long ack, int flags, int win,
                         long long length, bytes payload, bytes raw_options, int ip_version,
                         int ip_id=*)
    @cython.locals(acks_new=bint, acks_syn=bint, acks_fin=bint, end=cython.longlong)
    cpdef tuple _label(self, TrackedConn conn, TrackedFlow fwd, TrackedFlow rev, int flags,
                       long long seq, long long ack, long long length)
