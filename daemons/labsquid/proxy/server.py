"""Accepting and tracking client connections in one serving process.

A ``ProxyServer`` lives in every process that serves HTTP: the kid in
``serial`` mode, each pool child otherwise.  It can get connections three
ways, matching the pool's dispatch modes:

* ``listen(sock)`` — watch a listening socket itself (serial, shared with
  ``EPOLLEXCLUSIVE``, reuseport);
* ``accept_burst(sock)`` — woken by the kid (notify): accept **until EAGAIN**.
  One accept per wake-up is the notes' experiment-7 bug: connections that
  arrive together leave all but one stranded in the backlog;
* ``adopt(sock)`` — a connected socket received with ``SCM_RIGHTS`` (passfd; or,
  in any mode, one an old child handed over at a reload, see ``drain``).

Out of file descriptors (``DescriptorShortage``): when accept fails with
EMFILE and the like, accepting pauses for ``FD_PAUSE`` instead of spinning
(epoll would report a level-triggered listener readable forever) and is then
retried — by watching the listeners again, or, in notify mode, by running the
interrupted burst again (the kid's edge-triggered wake-up will not come again
for connections already queued).  In passfd mode the kernel would drop a
passed socket it cannot install (``MSG_CTRUNC``), so a child with no free
descriptor stops reading its channel and asks the kid (``NOFDS``) to hold new
ones back in the backlog until its ``READY``.  Each episode is logged twice:
when it starts and when accepting works again, with its counts.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from labsquid.eventloop import NO_DESCRIPTORS, EventLoop, Timer
from labsquid.ipc import close_fds
from labsquid.proxy.client import ClientConnection
from labsquid.proxy.context import ServeContext
from labsquid.proxy.tunnel import resume_tunnel

log = structlog.get_logger()

ACCEPT_BATCH = 64  # per readiness event in level-triggered modes, so one port cannot starve others
FD_PAUSE = 0.25  # seconds without trying to accept once no descriptor is free
# accept() errors that mean "no descriptor (or kernel memory) for a new socket".
# Descriptors one more connection may need: the client's socket, its upstream,
# a DNS query, and one spare.
FD_HEADROOM = 4


class DescriptorShortage:
    """One out-of-descriptors episode at a time, logged once when it starts and
    once when it ends, never per attempt (a flood makes thousands of them).

    ``fail`` counts an attempt that found no free descriptor; the first one of
    an episode logs ``accept_failed_no_descriptors``.  It also starts a pause of
    ``FD_PAUSE`` seconds (``paused``) during which the owner does not try again;
    ``on_resume`` runs when it is over.  ``succeeded`` (connections were taken,
    and the attempt that took them did not fail) ends the episode only if the
    pause is over, and only once ``FD_PAUSE`` more seconds pass without a new
    failure: right after descriptors free up, a backlog of waiting connections
    can take them all again at once, and that is still the same episode, not a
    recovery followed by a new one.
    """

    def __init__(self, loop: EventLoop, on_resume: Callable[[], None]) -> None:
        self.loop = loop
        self.on_resume = on_resume
        self.failures = 0  # attempts that failed in the current episode
        self.began: float | None = None  # time.monotonic() when it started
        self._worked: float | None = None  # when connections were taken again
        self._pause: Timer | None = None
        self._settle: Timer | None = None

    @property
    def paused(self) -> bool:
        return self._pause is not None

    def fail(self, error: str | None, connections: int) -> bool:
        """Count a failed attempt and pause; True when this started a pause."""
        self.failures += 1
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        if self.began is None:
            self.began = time.monotonic()
            log.error("accept_failed_no_descriptors", error=error, connections=connections,
                      limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if self._pause is not None:
            return False
        self._pause = self.loop.call_later(FD_PAUSE, self._resume)
        return True

    def succeeded(self) -> None:
        if self.began is None or self._pause is not None or self._settle is not None:
            return
        self._worked = time.monotonic()
        self._settle = self.loop.call_later(FD_PAUSE, self._recovered)

    def cancel(self) -> None:
        for timer in (self._pause, self._settle):
            if timer is not None:
                timer.cancel()
        self._pause = self._settle = None

    def _resume(self) -> None:
        self._pause = None
        self.on_resume()

    def _recovered(self) -> None:
        self._settle = None
        assert self.began is not None and self._worked is not None
        log.warning("accept_recovered", failed_attempts=self.failures,
                    seconds=round(self._worked - self.began, 3))
        self.began, self.failures = None, 0


def spare_descriptors(count: int) -> bool:
    """Whether ``count`` more descriptors can be opened right now (opened and closed)."""
    held: list[int] = []
    try:
        for _ in range(count):
            held.append(os.dup(2))
        return True
    except OSError:
        return False
    finally:
        for fd in held:
            os.close(fd)


class ProxyServer:
    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx
        self.loop: EventLoop = ctx.loop
        self.connections: set[ClientConnection] = set()
        self.listening: list[socket.socket] = []
        self.accepting = True
        self._drain_cb: Callable[[], None] | None = None
        self._drain_timer: Timer | None = None
        self.fds = DescriptorShortage(self.loop, self._resume_after_fd_pause)
        # notify: listeners whose burst ran out of descriptors, accepted again
        # when the pause ends.
        self._retry: list[socket.socket] = []
        self.full = False
        self._listen_masks: dict[int, int] = {}
        # Called when room frees up after being full (notify/passfd children
        # tell the kid, whose wake-ups they may have ignored meanwhile).
        self.on_capacity: Callable[[], None] | None = None
        # passfd: called with True when no descriptor is free for the sockets
        # the kid passes (stop reading them; the kid must hold new ones back),
        # and with False once ``fd_reserve`` descriptors are free again.
        self.on_fd_shortage: Callable[[bool], None] | None = None
        self.fd_reserve = FD_HEADROOM

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
        if self.fds.paused:
            # notify: the kid's wake-up came while we are out of descriptors;
            # the burst runs when the pause ends.
            self._retry_after_pause(sock)
            return 0
        accepted = 0
        while accepted < limit and self.accepting:
            if len(self.connections) >= self.ctx.config.pool_max_connections:
                self._pause_for_capacity()
                break
            try:
                # Out of descriptors, idle origin connections give way to a client.
                conn, addr = self.ctx.upstreams.with_room(sock.accept)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in NO_DESCRIPTORS:
                    self._out_of_fds(exc, sock)
                    break
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            accepted += 1
            self.adopt(conn, addr)
        if accepted:
            self.fds.succeeded()  # ends an episode only if this burst did not fail
        return accepted

    # -- passfd: sockets passed by the kid -----------------------------------
    def adopt_passed(self, conn: socket.socket, requests: int = 0,
                     opened: float | None = None) -> None:
        """A socket the kid passed arrived whole."""
        self.adopt(conn, requests=requests, opened=opened)
        self.fds.succeeded()

    def can_receive_passed(self) -> bool:
        """Before reading the next message from the kid: is a descriptor free for
        the socket it may carry?  The kernel installs a passed socket when the
        message is read, and when none is free it closes the socket for good
        (below): not reading leaves it waiting in the channel instead, and the
        kid, whose channel then fills up, leaves the next ones in its backlog.
        Idle origin connections give way first, as they do for accept."""
        if not self.accepting:
            return True  # stopping: what it carries is closed unread anyway
        if self.fds.paused:
            return False
        if spare_descriptors(1) or (self.ctx.upstreams.close_all() and spare_descriptors(1)):
            return True
        self._passed_shortage(os.strerror(errno.EMFILE))
        return False

    def passed_socket_dropped(self) -> None:
        """The kernel could not install a socket the kid passed us (the message
        arrived with ``MSG_CTRUNC``): we are out of descriptors after all.

        That connection is lost: the kernel closed the only descriptor left for
        it, so its client sees a reset (or an EOF), and nothing here can bring
        it back.  What we can do is stop reading and ask the kid to hand us
        nothing more until we have room, so the next connections wait in the
        backlog instead of being dropped the same way.
        """
        self._passed_shortage("a socket passed by the kid was dropped for want of a "
                              "descriptor (MSG_CTRUNC)")

    def _passed_shortage(self, error: str) -> None:
        if self.fds.fail(error, len(self.connections)) and self.on_fd_shortage is not None:
            self.on_fd_shortage(True)  # the kid holds new ones back until our READY

    def adopt(self, conn: socket.socket, addr: tuple | None = None, requests: int = 0,
              opened: float | None = None) -> ClientConnection:
        """Serve a connected socket; ``requests``: how many it carried before it
        was moved here by a reload (0: a new connection), and ``opened``: when
        it was accepted (``loop.now``'s clock; None: now)."""
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = ClientConnection(self.ctx, conn, addr or conn.getpeername(), self._closed)
        client.requests = requests
        if opened is not None:
            client.opened = opened
        self.connections.add(client)
        counts = self.ctx.client_connections
        counts[client.peer_ip] = counts.get(client.peer_ip, 0) + 1
        self.ctx.stats.add("active", 1)
        if len(self.connections) >= self.ctx.config.pool_max_connections:
            self._pause_for_capacity()  # (passfd: also marks us full, so we report room later)
        client.start()
        return client

    def adopt_tunnel(self, conn: socket.socket, origin: socket.socket,
                     moved: dict[str, Any]) -> None:
        """A CONNECT tunnel an old child handed over on a reload: its client
        connection, its origin socket, and its state (``Tunnel.hand_over``)."""
        client = self.adopt(conn, requests=moved["requests"], opened=moved["opened"])
        resume_tunnel(client, origin, moved["tunnel"])

    def _pause_for_capacity(self) -> None:
        """At ``pool_max_connections``: stop watching the listeners (level-triggered
        readiness would otherwise wake us in a loop) until a connection ends.
        The waiting connections stay in the kernel's backlog."""
        if not self.full:
            self.full = True
            for sock in self.listening:
                self._watch(sock, False)

    def _out_of_fds(self, exc: OSError, sock: socket.socket) -> None:
        if self.fds.fail(exc.strerror, len(self.connections)):
            for listener in self.listening:
                self._watch(listener, False)
        self._retry_after_pause(sock)

    def _retry_after_pause(self, sock: socket.socket) -> None:
        # A listener we watch ourselves is retried by watching it again (it is
        # level-triggered). One the kid woke us for (notify) is not: the kid
        # watches it edge-triggered, so for the connections already queued no
        # new wake-up comes, and they would be stranded.  We run that burst
        # again ourselves when the pause ends, rather than asking the kid for a
        # new ACCEPT (with READY): only we know when our pause is over, it takes
        # no round trip, and a child that is still out of descriptors would
        # otherwise bounce READY/ACCEPT with the kid.  Arrivals meanwhile still
        # wake the children in turn, and a sibling with descriptors to spare
        # drains the whole backlog (it accepts until EAGAIN).
        if sock not in self.listening and sock not in self._retry:
            self._retry.append(sock)

    def _resume_after_fd_pause(self) -> None:
        if not self.accepting:
            self._retry.clear()
            return
        if self.on_fd_shortage is not None:
            # passfd: nothing to accept; see whether descriptors are free again
            # before reading and inviting more (an attempt that finds none counts).
            if not spare_descriptors(self.fd_reserve):
                self.fds.fail(os.strerror(errno.EMFILE), len(self.connections))
                return
            self.on_fd_shortage(False)
        if not self.full:
            for sock in self.listening:
                self._watch(sock, True)
        retry, self._retry = self._retry, []
        for sock in retry:
            self.accept_burst(sock)

    # -- connections ending -------------------------------------------------
    def _closed(self, client: ClientConnection) -> None:
        if client in self.connections:
            self.connections.discard(client)
            counts = self.ctx.client_connections
            left = counts.get(client.peer_ip, 1) - 1
            if left:
                counts[client.peer_ip] = left
            else:
                counts.pop(client.peer_ip, None)
            self.ctx.stats.add("active", -1)
        if self.full and len(self.connections) < self.ctx.config.pool_max_connections:
            self.full = False
            if self.accepting and not self.fds.paused:
                for sock in self.listening:
                    self._watch(sock, True)
            if self.on_capacity is not None:
                self.on_capacity()
        if self._drain_cb is not None and not self.connections:
            self._finish_drain()

    # -- stopping -----------------------------------------------------------
    def stop_accepting(self) -> None:
        self.accepting = False
        self.fds.cancel()
        self._retry.clear()
        for sock in self.listening:
            self.loop.remove(sock.fileno())
        self.listening.clear()

    def drain(self, lifetime: float | None, on_drained: Callable[[], None],
              hand_over: Callable[[list[int], dict[str, Any]], bool] | None = None) -> None:
        """Let in-flight requests finish (idle connections close now), then call back;
        what is still open after ``lifetime`` seconds is cut (None: no bound).

        With ``hand_over(fds, state)`` (a reload), connections are not closed
        but handed over, each when it is between requests (``ClientConnection``),
        a CONNECT tunnel when no byte of it waits in our pipes (``Tunnel``);
        it returns False when the sockets could not go, which then close.
        """
        self.stop_accepting()
        self._drain_cb = on_drained
        move = None
        if hand_over is not None:
            def move(client: ClientConnection, extra_fds: tuple[int, ...] = (),
                     tunnel: dict[str, Any] | None = None) -> bool:
                fds = [client.sock.detach(), *extra_fds]
                state: dict[str, Any] = {"requests": client.requests, "opened": client.opened}
                if tunnel is not None:
                    state["tunnel"] = tunnel
                if hand_over(fds, state):
                    return True
                close_fds(fds)
                return False
        for client in list(self.connections):
            client.shutdown_when_idle(move)
        if not self.connections:
            self.loop.call_soon(self._finish_drain)
        elif lifetime is not None:
            self._drain_timer = self.loop.call_later(lifetime, self._drain_expired)

    def bound_drain(self, lifetime: float) -> None:
        """A drain without a bound (a reload's) gets one: a shutdown came meanwhile."""
        if self._drain_cb is not None and self._drain_timer is None and self.connections:
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
