# Declarations for the compiled copy of handshake_viz/spill.py (see __init__.py).
cimport cython

from .tracked cimport TrackedConn, TrackedFlow
from .zeek cimport ZeekEndpoint, ZeekView

cpdef tuple _flow_values(TrackedFlow f)
cpdef tuple _end_values(ZeekEndpoint e)
cpdef tuple _conn_values(TrackedConn c)
cpdef tuple _last_values(TrackedConn c)
cpdef tuple _view_values(ZeekView z)

cdef long long _BLOOM_BITS, _BLOOM_MASK, _WRITE

cdef class FileStore:
    cdef object _file, _where, _length, _owners
    cdef int _fd
    cdef long long _written
    cdef bytearray _buffer, _bloom, _hashes

    @cython.locals(h=Py_hash_t, one=cython.longlong, two=cython.longlong, bloom=bytearray,
                   encoded=bytes, record=bytes)
    cpdef put(self, long long conn, str key, bytes state)
    cpdef _flush(self)
    cpdef object _record(self, long long conn)
    cpdef object get(self, long long conn)
    @cython.locals(h=Py_hash_t, one=cython.longlong, two=cython.longlong, bloom=bytearray,
                   i=Py_ssize_t, hashes=bytearray, low=bytes)
    cpdef object find(self, str key)
