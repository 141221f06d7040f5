# A transaction as an extension type for the compiled build (see
# eventloop.pxd). ``txn.client`` is typed, ``client.txn`` is not: the two
# declarations cannot cimport each other.

from labsquid.http._readers cimport ResponseReader
from labsquid.proxy.client cimport ClientConnection
from labsquid.proxy.context cimport ServeContext
from labsquid.proxy.upstream cimport Upstream

cdef class Transaction:
    cdef public object url
    cdef public object scheme
    cdef public object host
    cdef public object port
    cdef public object path
    cdef public object log_tag
    cdef public object status
    cdef public object hierarchy
    cdef public object peer
    cdef public object mime
    cdef public object error_code
    cdef public object reply_size
    cdef public bint body_done
    cdef public object body_framing
    cdef public Upstream upstream
    cdef public ResponseReader resp_reader
    cdef public bint head_sent
    cdef public object client_framing
    cdef public bint client_keep_alive
    cdef public bint upstream_reusable
    cdef public bint finished
    cdef public bint retried
    cdef public bint ack_pushed
    cdef public object tunnel
    cdef public object authority
    cdef public ClientConnection client
    cdef public ServeContext ctx
    cdef public object req
    cdef public double started
    cdef public object method
    cdef public bint wants_body
    cdef public list pending_body
    cdef public list addresses
    cpdef start(self)
    cpdef authorize(self, dst)
    cpdef access_context(self, dst)
    cpdef bint is_manager(self)
    cpdef resolve(self, then)
    cpdef connect(self)
    cpdef _attach(self, Upstream up)
    cpdef upstream_connected(self, Upstream up)
    cpdef request_data(self, data)
    cpdef _send_body(self, data)
    cpdef request_end(self)
    cpdef _end_body(self)
    cpdef upstream_data(self, Upstream up, data)
    cpdef _pump_response(self)
    cpdef _response_head(self, resp)
    cpdef _response_data(self, data)
    cpdef _to_client(self, data)
    cpdef _response_end(self, reader)
    cpdef finish(self, keep_alive)
    cpdef _log(self)
    cpdef _arm(self, delay, callback)
    cpdef _disarm(self)
    cpdef _drop_upstream(self)
    cpdef _authority(self)
