# The loop's classes as extension types, for the compiled build (setup.py).
# Fields live in the object instead of a __dict__, and the methods below
# are called directly by compiled code that knows the type: the pool
# child's request path does both for every event.  The .py stays the
# truth: Python never imports this file (labsquid/_native.py only checks
# that it is unchanged since the build).

cdef class Timer:
    cdef public object when
    cdef public object callback
    cdef public bint cancelled
    cdef public EventLoop _loop

cdef class Deadline:
    cdef public object when
    cdef public object callback
    cdef public list _entries
    cdef public EventLoop _loop
    cdef public bint closed
    cpdef set(self, delay, callback)
    cpdef clear(self)

cdef class EventLoop:
    cdef public object _epoll
    cdef public dict _callbacks
    cdef public dict _masks
    cdef public list _timers
    cdef public double now
    cdef public Py_ssize_t _cancelled
    cdef public object _seq
    cdef public bint _running
    cdef public dict _signal_handlers
    cdef public object _signal_rx
    cdef public object _signal_tx
    cdef public list _ready_calls
    cpdef add(self, fd, mask, callback)
    cpdef modify(self, fd, mask)
    cpdef remove(self, fd)
    cpdef call_soon(self, callback)
    cpdef _push(self, when, entry)
    cpdef _run_ready(self)
    cpdef _run_timers(self)
    cpdef double _next_timeout(self)
