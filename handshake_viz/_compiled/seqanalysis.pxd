# Declarations for the compiled copy of handshake_viz/seqanalysis.py (see __init__.py).
cimport cython

from .seqnum cimport seq_ge as _seq_ge, seq_gt as _seq_gt, seq_lt as _seq_lt

cdef long long MASK, UNSET
cdef int ACK, FIN, RST, SYN
cdef int A_ACK_LOST, A_BAD_CHECKSUM, A_DUPACK, A_DUPLICATE, A_FAST, A_KA, A_KA_ACK, A_LOST
cdef int A_OFFLOADED, A_OOO, A_RETRANS, A_SPURIOUS, A_WFULL, A_WUPD, A_ZWIN, A_ZWP, A_ZWP_ACK
cdef dict _NAMES_CACHE

cdef class SeqFlow:
    cdef public long long nextseq
    cdef public double nextseq_time
    cdef public long long maxseqtobeacked
    cdef public long long lastack
    cdef public double lastack_time
    cdef public int dupacks
    cdef public long long window
    cdef public int win_scale
    cdef public int last_flags

cpdef tuple analysis_names(int bits)

@cython.locals(shift=int, i=Py_ssize_t, n=Py_ssize_t, kind=int, size=int)
cpdef object window_scale(bytes raw)

@cython.locals(scale=int)
cpdef long long scaled_window(SeqFlow fwd, SeqFlow rev, int flags, long long win, bytes raw_options)

@cython.locals(bits=int, nextseq=cython.longlong, ctl=int, skip_to_fwd_done=bint, same=bint,
               not_advanced=bint, end=cython.longlong)
cpdef int analyze(SeqFlow fwd, SeqFlow rev, int flags, long long seq, long long ack,
                  long long seglen, double ts, long long window, object first_rtt)
