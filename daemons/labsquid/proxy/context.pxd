# What a serving process's connections share, as an extension type for the
# compiled build (see eventloop.pxd).

from labsquid.eventloop cimport EventLoop
from labsquid.proxy.upstream cimport UpstreamPool

cdef class ServeContext:
    cdef public EventLoop loop
    cdef public object log_out
    cdef public list _lines
    cdef public Py_ssize_t _lines_size
    cdef public object stats
    cdef public object all_stats
    cdef public double started
    cdef public object resolver
    cdef public UpstreamPool upstreams
    cdef public list _writers
    cdef public bint _turn_end_due
    cdef public bint _log_blocked
    cdef public object config
    cdef public object access
    cdef public bint purge_enabled
    cdef public object hostname
    cdef public object version
    cdef public object policy
    cdef public object log_format
    cdef public list log_formats
    cdef public object log_targets
    cdef public bint log_headers
    cdef public dict client_connections
    cdef public dict port_names
    cpdef write_at_turn_end(self, client)
    cpdef end_turn_soon(self)
    cpdef log(self, line, service_us, http_status, bint counted=*)
    cpdef log_line(self, line, index=*)
    cpdef bint hand_over_lines(self)
