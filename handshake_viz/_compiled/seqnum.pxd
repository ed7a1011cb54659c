# Declarations for the compiled copy of handshake_viz/seqnum.py (see __init__.py).
cpdef bint seq_gt(long long a, long long b)
cpdef bint seq_lt(long long a, long long b)
cpdef bint seq_ge(long long a, long long b)
