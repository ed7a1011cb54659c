# Declarations for the compiled copy of handshake_viz/spill.py (see __init__.py).
from .tracked cimport TrackedConn, TrackedFlow
from .zeek cimport ZeekEndpoint, ZeekView

cpdef tuple _flow_values(TrackedFlow f)
cpdef tuple _end_values(ZeekEndpoint e)
cpdef tuple _conn_values(TrackedConn c)
cpdef tuple _last_values(TrackedConn c)
cpdef tuple _view_values(ZeekView z)
