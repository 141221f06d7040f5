# The readers as extension types for the compiled build (see eventloop.pxd).

cdef class _Reader:
    cdef public object max_header_size
    cdef public object max_body_size
    cdef public object max_headers
    cdef public bytearray _buf
    cdef public bint _eof
    cdef public int _state
    cdef public object _decoder
    cdef public Py_ssize_t _scan
    cdef public object _start
    cdef public object _head_line
    cdef public object _error
    cpdef feed(self, data)
    cpdef bint has_trailing_data(self)
    cpdef next_event(self)
    cpdef _next_head(self)
    cpdef _extract_head(self)
    cpdef _check_start_line(self, Py_ssize_t eol)
    cpdef _check_prefix(self, prefix)
    cpdef _parse_start_line(self, line)
    cpdef _parse_head(self, head)
    cpdef _start_body(self, framing)

cdef class RequestReader(_Reader):
    cpdef _next_head(self)
    cpdef _check_prefix(self, prefix)
    cpdef _parse_start_line(self, line)

cdef class ResponseReader(_Reader):
    cdef public object request_method
    cpdef _next_head(self)
    cpdef _check_prefix(self, prefix)
    cpdef _parse_start_line(self, line)
