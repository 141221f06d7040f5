# An origin connection as an extension type for the compiled build (see
# eventloop.pxd). Typed as the loop's own classes, its calls into the loop
# are direct.

from labsquid.eventloop cimport EventLoop, Deadline

cdef class Upstream:
    cdef public EventLoop loop
    cdef public object stats
    cdef public object key
    cdef public object address
    cdef public object sock
    cdef public int fd
    cdef public object handler
    cdef public bint connected
    cdef public bint closed
    cdef public bint reading
    cdef public bytearray out
    cdef public Py_ssize_t requests
    cdef public Deadline idle_deadline
    cdef public object _pool
    cdef public object reader
    cpdef int _mask(self)
    cpdef _on_event(self, int mask)
    cpdef _read(self)
    cpdef _write(self)
    cpdef send(self, data)
    cpdef push_ack(self)
    cpdef pause_reading(self, paused)
    cpdef close(self)

cdef class UpstreamPool:
    cdef public EventLoop loop
    cdef public double idle_timeout
    cdef public dict _idle
    cdef public Py_ssize_t reused
    cdef public Py_ssize_t _fd_limit
    cdef public double _fd_limit_read
    cdef public Py_ssize_t unwatched_fds
    cpdef Upstream take(self, key)
    cpdef release(self, Upstream up)
    cpdef bint descriptors_short(self)
    cpdef forget(self, Upstream up)
