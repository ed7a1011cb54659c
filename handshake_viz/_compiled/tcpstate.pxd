# Declarations for the compiled copy of handshake_viz/tcpstate.py (see __init__.py).
cimport cython

cdef long long HALF, MASK, UNSET
cdef int ACK, FIN, RST, SYN
cdef dict _SEND, _RECV, _EVENTS

cpdef tuple initial_states(int flags)

@cython.locals(last=cython.longlong)
cpdef bint is_acceptable(long long seq, long long seg_len, object rcv_nxt)

@cython.locals(key=int, found=tuple, sent=tuple, received=tuple, table=dict)
cpdef tuple after_segment(object sender, object receiver, int flags, bint acks_syn, bint syn_acked,
                          bint acks_fin, bint peer_fin_unacked, bint acceptable)
