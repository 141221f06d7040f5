# A client connection as an extension type for the compiled build (see
# eventloop.pxd).

from labsquid.eventloop cimport EventLoop, Deadline
from labsquid.http._readers cimport RequestReader
from labsquid.proxy.context cimport ServeContext

cdef class ClientConnection:
    cdef public ServeContext ctx
    cdef public EventLoop loop
    cdef public object sock
    cdef public int fd
    cdef public object peer_ip
    cdef public object peer_port
    cdef public object peer_address
    cdef public object local_ip
    cdef public object local_port
    cdef public object port_name
    cdef public RequestReader reader
    cdef public bytearray out
    cdef public bint reading
    cdef public bint closed
    cdef public bint eof
    cdef public bint closing
    cdef public object txn
    cdef public Py_ssize_t requests
    cdef public Py_ssize_t bytes_in
    cdef public bint had_transaction
    cdef public double opened
    cdef public object _on_closed
    cdef public bint _shutdown
    cdef public object _hand_over
    cdef public bint _moving
    cdef public Deadline timeout
    cdef public object _lifetime
    cdef public object on_drain
    cpdef _arm(self, delay, callback)
    cpdef _disarm(self)
    cpdef _on_event(self, int mask)
    cpdef _read(self)
    cpdef int _mask(self)
    cpdef _update(self)
    cpdef process(self)
    cpdef Py_ssize_t write(self, data)
    cpdef turn_ended(self)
    cpdef _flush(self)
    cpdef pause_reading(self, paused)
    cpdef transaction_done(self, txn, keep_alive)
    cpdef _next_cycle(self)
