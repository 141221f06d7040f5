"""The one event loop every labsquid process runs.

Theory of operation
-------------------
Each process (master, kid, pool child, and the kid in ``-N`` mode) is a single
thread blocked in ``epoll_wait``.  Everything that can happen to it arrives as
readiness on a file descriptor:

* sockets and socketpairs, registered with a callback per fd;
* signals: a C-level handler writes the signal number as one byte to a
  socketpair (``signal.set_wakeup_fd``); the loop reads those bytes and calls
  the handler registered for each number *from the loop*, never from the
  signal handler itself (the "unified event source" of the notes);
* timers: a heap of deadlines; ``epoll_wait``'s timeout is the nearest one.
  ``call_later`` makes a one-shot ``Timer``; a connection's timeouts use one
  re-armable ``Deadline`` instead, because a proxy re-arms them several times
  per request: moving a deadline later is an attribute write, and the heap
  entry is re-pushed only when it comes due early (squid checks its
  connection timeouts lazily for the same reason).

Callbacks run one at a time, to completion, in the loop's thread, so no state
needs locking.  ``call_soon`` work (a pool child's client writes and log
lines, which wait for the end of the callback that made them) runs once the
turn's fd callbacks are done, and also after every ``READY_EVERY`` of them: a
turn at 200 busy connections lasts milliseconds, and work made early in it
must not wait for all of it.  A callback that raises is logged and the loop
goes on: one bad connection must never take the process down.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger()

READ = select.EPOLLIN | select.EPOLLRDHUP
WRITE = select.EPOLLOUT
ERROR = select.EPOLLERR | select.EPOLLHUP
# fd callbacks between two runs of the call_soon work within one turn: about
# 0.6 ms of a pool child's callbacks at most (see the module docstring).
READY_EVERY = 16

FdCallback = Callable[[int], None]  # receives the epoll event mask


class Timer:
    """A pending call; ``cancel()`` makes it a no-op (lazy removal from the heap)."""

    __slots__ = ("when", "callback", "cancelled", "_loop")

    def __init__(self, when: float, callback: Callable[[], Any], loop: EventLoop) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            # Let go of the callback now: it may hold a whole connection,
            # which must not live on until the deadline of a dead timer.
            self.callback = _nothing
            self._loop._timer_cancelled()


class Deadline:
    """One connection's re-armable timeout: ``set(delay, callback)``, ``clear()``.

    At most a few heap entries exist per deadline (``_entries``, their times):
    ``set`` pushes only when no entry is due at or before the new time, and an
    entry that comes due while the deadline has moved later is pushed again at
    the new time.  ``close()`` when the connection ends, so its stale entries
    count toward the heap's compaction.
    """

    __slots__ = ("when", "callback", "_entries", "_loop", "closed")

    def __init__(self, loop: EventLoop) -> None:
        self.when: float | None = None
        self.callback: Callable[[], Any] | None = None
        self._entries: list[float] = []
        self._loop = loop
        self.closed = False

    def set(self, delay: float, callback: Callable[[], Any]) -> None:
        when = self._loop.now + delay
        self.when = when
        self.callback = callback
        entries = self._entries
        # Entries are only ever added below the earliest one, and the heap
        # hands them back earliest first: the list is decreasing, its last
        # entry the earliest.
        if not entries or entries[-1] > when:
            entries.append(when)
            self._loop._push(when, self)

    def clear(self) -> None:
        self.when = None
        self.callback = None

    @property
    def armed(self) -> bool:
        return self.when is not None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.when = None
            self.callback = None
            if self._entries:
                self._loop._timer_cancelled(len(self._entries))


class EventLoop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        os.set_inheritable(self._epoll.fileno(), False)
        self._callbacks: dict[int, FdCallback] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[tuple[float, int, Timer | Deadline]] = []
        # The time at the start of this turn's callbacks: what deadlines are
        # measured from (a turn lasts microseconds to a few milliseconds).
        self.now = time.monotonic()
        self._cancelled = 0  # cancelled timers still in the heap (roughly)
        self._seq = itertools.count()
        self._running = False
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._signal_rx: socket.socket | None = None
        self._signal_tx: socket.socket | None = None
        self._ready_calls: list[Callable[[], Any]] = []

    # -- file descriptors ---------------------------------------------------
    def add(self, fd: int, mask: int, callback: FdCallback) -> None:
        self._epoll.register(fd, mask)
        self._callbacks[fd] = callback
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        if self._masks.get(fd) != mask:
            self._epoll.modify(fd, mask)
            self._masks[fd] = mask

    def remove(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            del self._masks[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed: the kernel dropped it from the set

    def watching(self, fd: int) -> bool:
        return fd in self._callbacks

    def watched_count(self) -> int:
        """How many descriptors the loop watches."""
        return len(self._callbacks)

    # -- timers -------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, self)
        self._push(timer.when, timer)
        return timer

    def deadline(self) -> Deadline:
        """A re-armable timeout (see ``Deadline``); one per connection."""
        return Deadline(self)

    def _push(self, when: float, entry: Timer | Deadline) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), entry))

    def _timer_cancelled(self, count: int = 1) -> None:
        # Cancelled timers stay in the heap until their deadline; with
        # timeouts of minutes that would be millions of dead entries under
        # load, so the heap is compacted once they dominate.
        self._cancelled += count
        if self._cancelled > 1024 and self._cancelled * 2 > len(self._timers):
            self._timers = [entry for entry in self._timers if not _dead(entry[2])]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` once the current callback is done: after at most
        ``READY_EVERY`` more fd callbacks, and before waiting again."""
        self._ready_calls.append(callback)

    # -- signals ------------------------------------------------------------
    def add_signal_handler(self, signum: int, handler: Callable[[int], None]) -> None:
        """Deliver ``signum`` to ``handler(signum)`` from inside the loop."""
        if self._signal_rx is None:
            self._signal_rx, self._signal_tx = socket.socketpair()
            for s in (self._signal_rx, self._signal_tx):
                s.setblocking(False)
            signal.set_wakeup_fd(self._signal_tx.fileno(), warn_on_full_buffer=False)
            self.add(self._signal_rx.fileno(), READ, self._read_signals)
        self._signal_handlers[signum] = handler
        # A Python-level handler must exist for the C handler to write the
        # wakeup byte; it does nothing itself.
        signal.signal(signum, _ignore_in_handler)

    def _read_signals(self, _mask: int) -> None:
        assert self._signal_rx is not None
        try:
            data = self._signal_rx.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                self._guard(handler, signum)

    def close_signals(self) -> None:
        """Restore default dispositions; used by a child right after fork."""
        for signum in self._signal_handlers:
            signal.signal(signum, signal.SIG_DFL)
        self._signal_handlers.clear()
        signal.set_wakeup_fd(-1)
        if self._signal_rx is not None:
            self.remove(self._signal_rx.fileno())
            self._signal_rx.close()
            assert self._signal_tx is not None
            self._signal_tx.close()
            self._signal_rx = self._signal_tx = None

    # -- running ------------------------------------------------------------
    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            self.run_once()

    def run_once(self, max_wait: float | None = None) -> None:
        timeout = self._next_timeout()
        if max_wait is not None:
            timeout = max_wait if timeout < 0 else min(timeout, max_wait)
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            events = []
        self.now = time.monotonic()
        # _guard written out: these two loops run for every event.
        callbacks = self._callbacks
        since_ready = 0
        for fd, mask in events:
            callback = callbacks.get(fd)
            if callback is not None:  # an earlier callback may have removed it
                try:
                    callback(mask)
                except Exception:
                    _log_failure(callback)
            since_ready += 1
            if since_ready == READY_EVERY:
                since_ready = 0
                self._run_ready()
        self._run_timers()
        self._run_ready()

    def _run_ready(self) -> None:
        while self._ready_calls:
            calls, self._ready_calls = self._ready_calls, []
            for call in calls:
                try:
                    call()
                except Exception:
                    _log_failure(call)

    def _next_timeout(self) -> float:
        if self._ready_calls:
            return 0
        while self._timers and _dead(self._timers[0][2]):
            _, _, entry = heapq.heappop(self._timers)
            if type(entry) is Deadline:
                entry._entries.clear()  # closed: it will not be set again
            self._cancelled = max(0, self._cancelled - 1)
        if not self._timers:
            return -1
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_timers(self) -> None:
        now = self.now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, entry = heapq.heappop(timers)
            if type(entry) is Deadline:
                self._deadline_due(entry, at, now)
            elif entry.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
            else:
                entry.cancelled = True  # fired: a later cancel() is a no-op
                self._guard(entry.callback)

    def _deadline_due(self, deadline: Deadline, at: float, now: float) -> None:
        entries = deadline._entries
        if entries and entries[-1] == at:
            entries.pop()
        if deadline.closed:
            self._cancelled = max(0, self._cancelled - 1)
            return
        when = deadline.when
        if when is None:
            return  # cleared; a later set() pushes again
        if when <= now:
            callback = deadline.callback
            deadline.when = deadline.callback = None
            assert callback is not None
            self._guard(callback)
        elif not entries or entries[-1] > when:
            entries.append(when)  # moved later meanwhile: wait again
            self._push(when, deadline)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            _log_failure(fn)

    def abandon(self) -> None:
        """In a forked child: drop the parent's loop without touching its epoll set.

        The epoll instance is shared with the parent after fork; an
        ``epoll_ctl(DEL)`` here would remove the parent's registrations, so
        only our references are closed.
        """
        if self._signal_rx is not None:
            assert self._signal_tx is not None
            self._signal_rx.close()
            self._signal_tx.close()
            self._signal_rx = self._signal_tx = None
        self._signal_handlers.clear()
        self._callbacks.clear()
        self._masks.clear()
        self._timers.clear()
        self._ready_calls.clear()
        self._epoll.close()

    def close(self) -> None:
        self.close_signals()
        self._callbacks.clear()
        self._masks.clear()
        self._epoll.close()


def _log_failure(fn: Callable[..., Any]) -> None:
    """A callback raised: log it with its traceback (we are in its ``except``)."""
    log.exception("callback_failed", callback=getattr(fn, "__qualname__", repr(fn)))


def _nothing() -> None:
    pass


def _dead(entry: Timer | Deadline) -> bool:
    return entry.closed if type(entry) is Deadline else entry.cancelled  # type: ignore[union-attr]


def bind_signal_handlers(loop: EventLoop, owner: object, names: tuple[str, ...]) -> None:
    """gunicorn's arbiter convention: SIGTERM goes to ``owner.handle_term`` and so on.

    SIGPIPE is ignored in every role: a peer that went away shows up as an
    EPIPE from ``send``, handled where it happens.
    """
    for name in names:
        loop.add_signal_handler(getattr(signal, "SIG" + name.upper()),
                                getattr(owner, "handle_" + name))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _ignore_in_handler(signum: int, frame: object) -> None:
    """The real work happens in the loop; see ``EventLoop.add_signal_handler``."""


def is_would_block(exc: OSError) -> bool:
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


# What accept(), socket() and pipe() fail with when the process (or the
# system) has no descriptor, or no memory for one, to give.
NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
