# Declarations for the compiled copy of handshake_viz/zeek.py (see __init__.py).
cimport cython

from .seqnum cimport seq_gt as _seq_gt

cdef long long HALF, MASK, UNSET, _TOO_LARGE
cdef int ACK, FIN, RST, SYN
cdef object Z_INACTIVE, Z_SYN_SENT, Z_SYN_ACK_SENT, Z_PARTIAL, Z_ESTABLISHED, Z_CLOSED, Z_RESET

cdef class ZeekEndpoint:
    cdef public object state, prev_state  # EndpointState members
    cdef public object start_seq  # int or None, as the other Optional fields
    cdef public str seen
    cdef public object last_syn, last_fin, last_rst
    cdef public long long last_seq
    cdef public long long rxmits, gaps, zero_windows
    cdef public long long contig
    cdef public tuple blocks
    cdef public long long missed, wraps, ack_beyond, fins, pkts, bad_checksums
    cdef public bint did_close

    cpdef set_state(self, object state)
    cpdef reset(self)
    cpdef object size(self)

cdef class ZeekView:
    cdef public bint orig_is_client
    cdef public str history
    cdef public tuple ends
    cdef public frozenset likely
    cdef public double first_ts, last_ts
    cdef public object syn_ts
    cdef public bint closed, h_first
    cdef public list rows

    cpdef _start(self, bint first_is_client, int flags, int sport, int dport, double ts)
    cpdef _end(self)
    @cython.locals(o=ZeekEndpoint, r=ZeekEndpoint)
    cpdef tuple row(self)
    @cython.locals(o=ZeekEndpoint, r=ZeekEndpoint)
    cpdef bint _gone(self, int flags, long long seq, double ts)
    cpdef _letter(self, bint is_client, str code)
    @cython.locals(end=ZeekEndpoint)
    cpdef bint _check(self, bint is_client, str code)
    cpdef _scaled(self, bint is_client, str code, long long count)
    cpdef _flip(self)
    @cython.locals(end=ZeekEndpoint, peer=ZeekEndpoint, o=ZeekEndpoint, r=ZeekEndpoint,
                   seg_len=cython.longlong, end_seq=cython.longlong, delta=cython.longlong,
                   delta_signed=cython.longlong, data_seq=cython.longlong, stop=cython.longlong,
                   bits=int, start=cython.longlong, rel=cython.longlong, beyond=cython.longlong,
                   hole=cython.longlong, peer_fin=int)
    cpdef feed(self, bint from_client, int flags, long long seq, long long ack, long long length,
               long long captured, long long win, double ts, int sport, int dport,
               bint bad_checksum=*)
    @cython.locals(is_orig=bint, do_close=bint, orig_end=ZeekEndpoint, st=object)
    cpdef _state_machine(self, bint from_client, int flags, long long seq, long long length,
                         double ts, ZeekEndpoint end, ZeekEndpoint peer)
    @cython.locals(o_inactive=bint, r_inactive=bint)
    cpdef str conn_state(self, long long orig_bytes, long long resp_bytes)
