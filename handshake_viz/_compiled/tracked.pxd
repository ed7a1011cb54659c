# Declarations for the compiled copy of handshake_viz/tracked.py (see __init__.py).
from .seqanalysis cimport SeqFlow
from .zeek cimport ZeekEndpoint, ZeekView

cdef long long UNSET

cdef class TrackedConn

cdef class TrackedFlow(SeqFlow):
    cdef public object dir, state  # Direction and TcpState members
    cdef public TrackedConn conn
    cdef public TrackedFlow peer
    cdef public ZeekEndpoint zeek
    cdef public long long base, syn_seq, fin_end
    cdef public bint fin_acked, syn_acked
    cdef public long long highest_ack
    cdef public long long data_end
    cdef public bint ready

cdef class TrackedConn:
    cdef public long long index
    cdef public tuple client, server
    cdef public bint roles_guessed
    cdef public TrackedFlow c2s, s2c
    cdef public double first_ts, last_ts
    cdef public long long segments
    cdef public ZeekView zeek
    cdef public object syn_time, first_rtt  # float or None
    cdef public int ip_version
    cdef public bint closed, handshake_acked, queued
    cdef public TrackedFlow last_flow
    cdef public long long last_seq, last_ack
    cdef public int last_flags, last_win
    cdef public long long last_length
    cdef public bytes last_payload, last_options
    cdef public int last_ip_id

    cpdef tuple summary_fields(self)
