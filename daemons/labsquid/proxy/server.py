"""Accepting and tracking client connections in one serving process.

A ``ProxyServer`` lives in every process that serves HTTP: the kid in
``serial`` mode, each pool child otherwise.  It can get connections three
ways, matching the pool's dispatch modes:

* ``listen(sock)`` — watch a listening socket itself (serial, shared with
  ``EPOLLEXCLUSIVE``, reuseport);
* ``accept_burst(sock)`` — woken by the kid (notify): accept **until EAGAIN**.
  One accept per wake-up is the notes' experiment-7 bug: connections that
  arrive together leave all but one stranded in the backlog;
* ``adopt(sock)`` — a connected socket received with ``SCM_RIGHTS`` (passfd).

When accept fails for want of file descriptors, the listening sockets are
paused for a moment instead of spinning (epoll would report them readable
forever), and the condition is logged once per episode with a count.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Callable

import structlog

from labsquid.eventloop import EventLoop, Timer
from labsquid.proxy.client import ClientConnection
from labsquid.proxy.context import ServeContext

log = structlog.get_logger()

ACCEPT_BATCH = 64  # per readiness event in level-triggered modes, so one port cannot starve others
FD_PAUSE = 0.25


class ProxyServer:
    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx
        self.loop: EventLoop = ctx.loop
        self.connections: set[ClientConnection] = set()
        self.listening: list[socket.socket] = []
        self.accepting = True
        self._drain_cb: Callable[[], None] | None = None
        self._drain_timer: Timer | None = None
        self._fd_pause: Timer | None = None
        self._fd_failures = 0
        self.full = False
        self._listen_masks: dict[int, int] = {}
        # Called when room frees up after being full (notify/passfd children
        # tell the kid, whose wake-ups they may have ignored meanwhile).
        self.on_capacity: Callable[[], None] | None = None

    # -- getting connections ------------------------------------------------
    def listen(self, sock: socket.socket, exclusive: bool = False) -> None:
        # Plain EPOLLIN: EPOLLEXCLUSIVE refuses EPOLLRDHUP (EINVAL), and a
        # listening socket has no peer to hang up anyway.
        mask = select.EPOLLIN | (select.EPOLLEXCLUSIVE if exclusive else 0)
        self.listening.append(sock)
        self._listen_masks[sock.fileno()] = mask
        self._watch(sock, True)

    def _watch(self, sock: socket.socket, on: bool) -> None:
        """Start or stop watching a listener (remove/add, not modify: an
        EPOLLEXCLUSIVE registration cannot be modified)."""
        fd = sock.fileno()
        if on and not self.loop.watching(fd):
            self.loop.add(fd, self._listen_masks[fd],
                          lambda _m, s=sock: self.accept_burst(s, ACCEPT_BATCH))
        elif not on:
            self.loop.remove(fd)

    def accept_burst(self, sock: socket.socket, limit: int = 1 << 30) -> int:
        """Accept until EAGAIN (or ``limit``); returns how many were accepted."""
        accepted = 0
        while accepted < limit and self.accepting:
            if len(self.connections) >= self.ctx.config.pool_max_connections:
                self._pause_for_capacity()
                break
            try:
                conn, addr = sock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_fds(exc)
                    break
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            accepted += 1
            self.adopt(conn, addr)
        if accepted and self._fd_failures:
            log.warning("accept_recovered", failed_attempts=self._fd_failures)
            self._fd_failures = 0
        return accepted

    def adopt(self, conn: socket.socket, addr: tuple | None = None) -> None:
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = ClientConnection(self.ctx, conn, addr or conn.getpeername(), self._closed)
        self.connections.add(client)
        self.ctx.stats.add("active", 1)
        if len(self.connections) >= self.ctx.config.pool_max_connections:
            self._pause_for_capacity()  # (passfd: also marks us full, so we report room later)
        client.start()

    def _pause_for_capacity(self) -> None:
        """At ``pool_max_connections``: stop watching the listeners (level-triggered
        readiness would otherwise wake us in a loop) until a connection ends.
        The waiting connections stay in the kernel's backlog."""
        if not self.full:
            self.full = True
            for sock in self.listening:
                self._watch(sock, False)

    def _out_of_fds(self, exc: OSError) -> None:
        self._fd_failures += 1
        if self._fd_failures == 1:
            log.error("accept_failed_no_descriptors", error=exc.strerror,
                      connections=len(self.connections))
        if self._fd_pause is None:
            for sock in self.listening:
                self._watch(sock, False)
            self._fd_pause = self.loop.call_later(FD_PAUSE, self._resume_listening)

    def _resume_listening(self) -> None:
        self._fd_pause = None
        if self.accepting and not self.full:
            for sock in self.listening:
                self._watch(sock, True)

    # -- connections ending -------------------------------------------------
    def _closed(self, client: ClientConnection) -> None:
        if client in self.connections:
            self.connections.discard(client)
            self.ctx.stats.add("active", -1)
        if self.full and len(self.connections) < self.ctx.config.pool_max_connections:
            self.full = False
            if self.accepting and self._fd_pause is None:
                for sock in self.listening:
                    self._watch(sock, True)
            if self.on_capacity is not None:
                self.on_capacity()
        if self._drain_cb is not None and not self.connections:
            self._finish_drain()

    # -- stopping -----------------------------------------------------------
    def stop_accepting(self) -> None:
        self.accepting = False
        for sock in self.listening:
            self.loop.remove(sock.fileno())
        self.listening.clear()

    def drain(self, lifetime: float, on_drained: Callable[[], None]) -> None:
        """Let in-flight requests finish (idle connections close now), then call back."""
        self.stop_accepting()
        self._drain_cb = on_drained
        for client in list(self.connections):
            client.shutdown_when_idle()
        if not self.connections:
            self.loop.call_soon(self._finish_drain)
        else:
            self._drain_timer = self.loop.call_later(lifetime, self._drain_expired)

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if self.connections:
            log.warning("shutdown_lifetime_expired", closing=len(self.connections))
        self.close_all()

    def _finish_drain(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        callback, self._drain_cb = self._drain_cb, None
        if callback is not None:
            callback()

    def close_all(self) -> None:
        for client in list(self.connections):
            client.abort("shutdown")
        if not self.connections and self._drain_cb is not None:
            self._finish_drain()
