"""Connections to origin servers, and the idle ones kept for reuse.

An ``Upstream`` is a non-blocking TCP socket with an output buffer.  Its owner
(a transaction) gets callbacks for connect, data and close; when the owner
is done with a persistent connection it ``release``\\s it into the
``UpstreamPool``, keyed by (host, port), where it waits at most
``pconn_timeout``.  An idle connection that becomes readable has either been
closed by the origin or sent bytes nobody asked for: both end it.

How many idle connections to keep: as squid, as many as the traffic left,
per origin and in all, while descriptors are plentiful (``descriptors_short``
is squid's ``fdUsageHigh``).  A fixed cap per origin below the number of
concurrent clients makes every request past it open a new connection and close
another: at 200 keep-alive clients and a cap of 64, a quarter of the requests
paid a connect, and the worker 45% more CPU per request.  When the process is
out of descriptors all the same, the idle connections give way: to a client
being accepted or passed by the kid, a new origin connection or a tunnel's
pipes (``with_room``; a passed socket in ``ProxyServer.can_receive_passed``).
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from typing import TYPE_CHECKING, Protocol

from labsquid.eventloop import ERROR, NO_DESCRIPTORS, READ, WRITE, EventLoop, is_would_block

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from labsquid.http import ResponseReader
    from labsquid.stats import Row

    _T = TypeVar("_T")

READ_SIZE = 65536
# squid's RESERVED_FD: descriptors kept back for what must not fail.  It
# pools an idle connection only while more than twice this many are free.
RESERVED_FDS = 100
# RLIMIT_NOFILE is read again after this many seconds (prlimit can change it
# from outside), not at every release.
FD_LIMIT_TTL = 1.0


class UpstreamHandler(Protocol):
    """What an ``Upstream`` tells its owner (a transaction)."""

    def upstream_connected(self, up: Upstream) -> None: ...
    def upstream_failed(self, up: Upstream, err: int) -> None: ...
    def upstream_data(self, up: Upstream, data: bytes) -> None: ...
    def upstream_eof(self, up: Upstream) -> None: ...
    def upstream_drained(self, up: Upstream) -> None: ...


class Upstream:
    def __init__(self, loop: EventLoop, key: tuple[str, int], address: str,
                 sock: socket.socket | None = None, stats: Row | None = None) -> None:
        """A new connection to ``address``, or ``sock``, one already connected
        (a tunnel's, handed over on a reload).  ``stats``: the serving
        process's counters, for the bytes sent and read here (a tunnel counts
        its own)."""
        self.loop = loop
        self.stats = stats
        self.key = key
        self.address = address
        self.connected = sock is not None
        if sock is None:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock = sock
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = self.sock.fileno()
        self.handler: UpstreamHandler | None = None
        self.closed = False
        self.reading = True
        self.out = bytearray()
        self.requests = 0  # served on this connection; >0 means it is a reused one
        self.idle_deadline = loop.deadline()  # pconn_timeout while in the pool
        self._pool: UpstreamPool | None = None
        # The transaction's response parser, kept with the connection for the next.
        self.reader: ResponseReader | None = None

    # -- connecting ---------------------------------------------------------
    def connect(self, port: int, handler: UpstreamHandler) -> None:
        self.handler = handler
        err = self.sock.connect_ex((self.address, port))
        if err not in (0, errno.EINPROGRESS):
            self.loop.call_soon(lambda: self._fail(err))
            return
        self.loop.add(self.fd, WRITE, self._on_event)

    def _fail(self, err: int) -> None:
        handler = self.handler
        self.close()
        if handler is not None:
            handler.upstream_failed(self, err)

    # -- I/O -----------------------------------------------------------------
    def _mask(self) -> int:
        return (READ if self.reading else 0) | (WRITE if self.out else 0)

    def _on_event(self, mask: int) -> None:
        if not self.connected:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(err)
                return
            self.connected = True
            self.loop.modify(self.fd, self._mask())
            if self.handler is not None:
                self.handler.upstream_connected(self)
            return
        if mask & WRITE and self.out:
            self._write()
        if self.closed:
            return
        if mask & (READ | ERROR) and self.reading:
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except OSError as exc:
            if is_would_block(exc):
                return
            data = b""
        if self.handler is None:
            self.close()  # idle in the pool: the origin closed or spoke out of turn
            return
        if data:
            if self.stats is not None:
                self.stats.add("server_bytes_in", len(data))
            self.handler.upstream_data(self, data)
        else:
            self.reading = False
            if not self.closed:
                self.loop.modify(self.fd, self._mask())
            self.handler.upstream_eof(self)

    def push_ack(self) -> None:
        """Acknowledge what was read now, not when the delayed-ACK timer
        fires: an origin that writes its head and then its body without
        TCP_NODELAY holds the body back (Nagle) until the head is ACKed,
        40 ms on Linux once the connection is in its request-reply rhythm."""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.stats is not None:
            self.stats.add("server_bytes_out", len(data))
        if not self.out and self.connected:
            try:
                sent = self.sock.send(data)
            except OSError as exc:
                if not is_would_block(exc):
                    self.loop.call_soon(self._eof_from_error)
                    return
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self.out += data
        if self.connected:
            self.loop.modify(self.fd, self._mask())

    def _write(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except OSError as exc:
            if is_would_block(exc):
                return
            self._eof_from_error()
            return
        del self.out[:sent]
        self.loop.modify(self.fd, self._mask())
        if not self.out and self.handler is not None:
            self.handler.upstream_drained(self)

    def _eof_from_error(self) -> None:
        if self.closed:
            return
        handler = self.handler
        self.reading = False
        if handler is not None:
            handler.upstream_eof(self)

    def pause_reading(self, paused: bool) -> None:
        if self.closed or self.reading != paused:
            return
        self.reading = not paused
        self.loop.modify(self.fd, self._mask())

    @property
    def buffered(self) -> int:
        return len(self.out)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.idle_deadline.close()
        if self._pool is not None:
            self._pool.forget(self)
        self.loop.remove(self.fd)
        self.sock.close()
        self.handler = None


class UpstreamPool:
    """Idle persistent connections to origins (squid's pconn pool)."""

    def __init__(self, loop: EventLoop, idle_timeout: float = 60.0) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        # Per origin, in release order (a dict for O(1) forget): the newest
        # is taken first, so the older ones reach pconn_timeout and close.
        self._idle: dict[tuple[str, int], dict[Upstream, None]] = {}
        self.reused = 0
        self._fd_limit = 0
        self._fd_limit_read = float("-inf")  # loop.now when it was read
        # Descriptors this process holds that its loop does not watch: the
        # pipes of CONNECT tunnels (``labsquid.proxy.tunnel``), four each.
        self.unwatched_fds = 0

    def take(self, key: tuple[str, int]) -> Upstream | None:
        conns = self._idle.get(key)
        up = None
        while conns:
            up = conns.popitem()[0]
            up.idle_deadline.clear()
            up._pool = None
            if not up.closed:
                self.reused += 1
                break
            up = None
        if conns is not None and not conns:
            del self._idle[key]  # no entry left behind for every origin ever seen
        return up

    def release(self, up: Upstream) -> None:
        if up.closed or up.out or not up.reading:
            up.close()
            return
        if self.descriptors_short():
            up.close()
            return
        conns = self._idle.setdefault(up.key, {})
        up.handler = None
        up._pool = self
        up.idle_deadline.set(self.idle_timeout, up.close)
        up.loop.modify(up.fd, READ)
        conns[up] = None

    def descriptors_short(self) -> bool:
        """squid's ``fdUsageHigh``: fewer than twice the reserve free, or fewer
        free than a quarter of those in use.  In use is what the loop watches
        (clients, origins, the kid's socket) and the tunnels' pipes; the few
        others (stdio, the epoll set, shared memory) come out of the reserve."""
        if self.loop.now - self._fd_limit_read >= FD_LIMIT_TTL:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self._fd_limit = soft if soft != resource.RLIM_INFINITY else 1 << 30
            self._fd_limit_read = self.loop.now
        in_use = self.loop.watched_count() + self.unwatched_fds
        free = self._fd_limit - in_use
        return free < 2 * min(RESERVED_FDS, self._fd_limit // 4) or free < in_use // 4

    def forget(self, up: Upstream) -> None:
        conns = self._idle.get(up.key)
        if conns is not None:
            conns.pop(up, None)
            if not conns:
                del self._idle[up.key]
        up._pool = None

    def close_all(self) -> int:
        """Close every idle connection; how many there were."""
        closed = 0
        for conns in list(self._idle.values()):
            for up in list(conns):
                up.close()
                closed += 1
        self._idle.clear()
        return closed

    def count(self) -> int:
        return sum(len(c) for c in self._idle.values())

    def with_room(self, make: Callable[[], _T]) -> _T:
        """``make()`` (it opens descriptors).  Out of descriptors, the idle
        connections give way and it is tried once more; then the OSError is
        the caller's."""
        try:
            return make()
        except OSError as exc:
            if exc.errno not in NO_DESCRIPTORS or not self.close_all():
                raise
        return make()


def connect_error_text(err: int) -> str:
    return f"({err}) {errno.errorcode.get(err, '?')}: {os.strerror(err)}"
