"""A pool child: ``(labsquid-1 worker-N)``, one epoll loop serving HTTP.

Forked from the kid, it first lets go of everything that belongs to the kid
(its epoll set, signal socketpair, the logfile daemon's socket, its sibling's
channels, the control channel to the master), so that, for instance, the
logfile daemon sees EOF when the kid closes its end.  Then it builds its own
loop and serves connections the way ``pool_dispatch`` says (see
``labsquid.pool``).

Signals: TERM — stop accepting, finish in-flight requests (``shutdown_lifetime``),
exit; INT — close everything now.  Either way the access-log lines already
produced reach the kid before exit.  HUP and USR1 are the kid's business.
A reload's ``STOP`` is TERM without the closing: each client connection goes
back to the kid (``MOVE``), socket and all, as soon as it is between
requests, for the new generation to serve; a CONNECT tunnel goes with its
origin socket once nothing of it waits in our pipes.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from typing import TYPE_CHECKING

import structlog

from labsquid import log as logsetup
from labsquid.eventloop import EventLoop, bind_signal_handlers
from labsquid.ipc import (
    PASSFD_IN_FLIGHT,
    STOP_MOVE,
    Channel,
    Kind,
    LogStream,
    close_fds,
    moved_payload,
    parse_moved,
)
from labsquid.listeners import stop_listening
from labsquid.pacing import Pacer
from labsquid.process import set_title
from labsquid.proxy.context import ServeContext
from labsquid.proxy.server import FD_HEADROOM, ProxyServer
from labsquid.stats import STATE_SERVING, STATE_STOPPING

if TYPE_CHECKING:
    from labsquid.kid import Kid

log = structlog.get_logger()

LOG_WAKE_INTERVAL = 0.05  # lines reach the kid within this, in batches (pool.LOG_COLLECT_GAP)


class Worker:
    def __init__(self, kid: Kid, slot: int, generation: int, channel_sock: socket.socket,
                 socks: list[socket.socket], row: int, log_fd: int) -> None:
        self.slot = slot
        self.mode = kid.config.pool_dispatch
        self.socks = socks
        self.loop = EventLoop()
        self.stats_row = kid.stats.claim(row, generation)
        self.channel = Channel(self.loop, channel_sock, self._on_message, self._on_kid_gone,
                               on_truncated=self._on_truncated)
        # Access-log lines go on a stream of their own, which the kid empties
        # on its schedule after a LOGS wake-up on the main channel.
        self.log_stream = LogStream(self.loop, log_fd)
        self._wake_pacer = Pacer(LOG_WAKE_INTERVAL)
        self.ctx = ServeContext(self.loop, kid.config, self._send_lines, self.stats_row,
                                kid.stats)
        self.log_stream.on_sent_all = self._log_stream_emptied
        self.server = ProxyServer(self.ctx)
        self.server.on_capacity = self._has_room
        if self.mode == "passfd":
            self.channel.may_read = self.server.can_receive_passed
            self.server.on_fd_shortage = self._fd_shortage
            # Room for a full window of passed sockets, and for serving one more.
            self.server.fd_reserve = PASSFD_IN_FLIGHT + FD_HEADROOM
        self.stopping = False
        self.moving = False  # stopping for a reload: connections move on (MOVE)
        self.lifetime = kid.config.shutdown_lifetime

    def run(self) -> int:
        bind_signal_handlers(self.loop, self, ("term", "int", "usr1"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the kid's business
        if self.mode == "shared":
            for sock in self.socks:
                self.server.listen(sock, exclusive=True)
        elif self.mode == "reuseport":
            for sock in self.socks:
                self.server.listen(sock)
        self.stats_row.set("state", STATE_SERVING)
        self.channel.send(Kind.READY)
        # Everything built so far (modules, config, compiled rules) lives as
        # long as the process: out of the collector's sight, full collections
        # only walk what serving creates.
        gc.freeze()
        self.loop.run()
        self.ctx.hand_over_lines()
        self.log_stream.flush_blocking()
        self.channel.flush_blocking()
        return 0

    # -- access-log lines go to the kid in batches, once per loop turn --------
    # ...and before that turn's client writes (ServeContext.hand_over_lines).
    def _send_lines(self, chunk: bytes) -> bool:
        """Hand a chunk of lines to the kernel; False while some could not go
        (the kid is not emptying the log stream): the caller holds client
        writes back until ``_log_stream_emptied``."""
        if chunk:
            self.log_stream.send(chunk)
            if self.log_stream.backlog:
                # The pipe is full (~1 MiB unread): ask the kid to empty it now.
                self.channel.send(Kind.LOGS, b"!")
            else:
                delay = self._wake_pacer.lines_written(self.loop.now)
                if delay == 0.0:
                    self.channel.send(Kind.LOGS)
                elif delay is not None:
                    self.loop.call_later(delay, self._deferred_wake)
        return not self.log_stream.backlog

    def _deferred_wake(self) -> None:
        self._wake_pacer.timer_fired(self.loop.now)
        self.channel.send(Kind.LOGS)

    def _log_stream_emptied(self) -> None:
        self.ctx.log_unblocked()

    # -- telling the kid whether to send us connections -----------------------
    def _has_room(self) -> None:
        # Below pool_max_connections again.  passfd, out of descriptors: the
        # READY waits for the end of the pause (ProxyServer._resume_after_fd_pause).
        if not (self.mode == "passfd" and self.server.fds.paused):
            self.channel.send(Kind.READY)

    def _fd_shortage(self, short: bool) -> None:
        # Out of descriptors: read no more passed sockets (they would be
        # dropped), and NOFDS tells the kid to hand us none until our READY.
        if short:
            self.channel.pause_reading()
            self.channel.send(Kind.NOFDS)
        else:
            self.channel.resume_reading()
            self.channel.send(Kind.READY)

    # -- messages from the kid ----------------------------------------------
    def _on_message(self, kind: bytes, payload: bytes, fds: list[int]) -> None:
        if kind == Kind.ACCEPT:
            index = payload[0] if payload else 0
            if not self.stopping and index < len(self.socks):
                self.server.accept_burst(self.socks[index])
        elif kind == Kind.CONN:
            # A new connection (passfd), or one moved from an old child.
            moved = parse_moved(payload)
            if self.moving:  # a reload came meanwhile: on to the newest children
                if not self._move_out(fds, moved):
                    close_fds(fds)
            elif self.stopping:
                close_fds(fds)
            elif "tunnel" in moved:
                self._adopt_tunnel(fds, moved)
            else:
                for fd in fds:
                    self._adopt(fd, moved)
        elif kind == Kind.STOP:
            self._stop(move=payload == STOP_MOVE)
        else:
            close_fds(fds)

    def _on_truncated(self, kind: bytes) -> None:
        """The kernel dropped descriptors attached to a message: only CONN carries any."""
        if kind == Kind.CONN and not self.stopping:
            self.server.passed_socket_dropped()
        elif kind != Kind.CONN:
            log.warning("ipc_descriptors_dropped", kind=kind.decode("latin-1"))

    def _on_kid_gone(self) -> None:
        if not self.stopping:
            log.warning("kid_gone_worker_stopping", worker=self.slot)
            self.handle_term(signal.SIGTERM)

    # -- stopping -----------------------------------------------------------
    def handle_usr1(self, _signum: int) -> None:
        """From the kid after a rotation: cache_log is a new file now."""
        logsetup.reopen_cache_log()

    def handle_term(self, _signum: int) -> None:
        self._stop(move=False)

    def _stop(self, move: bool) -> None:
        """A reload's STOP (``move``): requests in flight finish however long they
        take, as over squid's reconfigure (each still has its own timeouts and
        ``client_lifetime``); a shutdown cuts them at ``shutdown_lifetime``."""
        if self.stopping:
            if not move:  # TERM after a reload's STOP: the shutdown's bound applies
                self.server.bound_drain(self.lifetime)
            return
        self.stopping = True
        self.moving = move
        self.stats_row.set("state", STATE_STOPPING)
        self.server.drain(None if move else self.lifetime, self.loop.stop,
                          self._move_out if move else None)
        stop_listening(self.loop, self.socks)

    def _move_out(self, fds: list[int], moved: dict) -> bool:
        """A client connection (or a tunnel's two sockets) for the next
        generation, through the kid."""
        moved.setdefault("opened", self.loop.now)
        return self.channel.send(Kind.MOVE, moved_payload(moved), fds, bounded=False)

    def _adopt(self, fd: int, moved: dict) -> None:
        sock = socket.socket(fileno=fd)
        try:
            self.server.adopt_passed(sock, moved.get("requests", 0), moved.get("opened"))
        except OSError as exc:  # reset meanwhile: getpeername finds no peer
            sock.close()
            log.debug("passed_connection_gone", error=exc.strerror)

    def _adopt_tunnel(self, fds: list[int], moved: dict) -> None:
        if len(fds) != 2:  # the kernel dropped one (MSG_CTRUNC): nothing to go on with
            close_fds(fds)
            return
        client, origin = (socket.socket(fileno=fd) for fd in fds)
        try:
            self.server.adopt_tunnel(client, origin, moved)
        except OSError as exc:  # reset meanwhile
            client.close()
            origin.close()
            log.debug("passed_connection_gone", error=exc.strerror)

    def handle_int(self, _signum: int) -> None:
        self.stopping = True
        self.server.stop_accepting()
        self.server.close_all()
        stop_listening(self.loop, self.socks)
        self.loop.stop()


def child_main(kid: Kid, slot: int, generation: int, channel_sock: socket.socket,
               socks: list[socket.socket], row: int, log_fd: int) -> int:
    """Entry point right after ``fork`` in the kid; returns the exit status."""
    keep = {0, 1, 2, channel_sock.fileno(), log_fd, *(s.fileno() for s in socks)}
    kid.loop.abandon()
    _close_all_but(keep)
    logsetup.rebind(f"worker-{slot}")
    set_title(f"({kid.name} worker-{slot})")
    return Worker(kid, slot, generation, channel_sock, socks, row, log_fd).run()


def _close_all_but(keep: set[int]) -> None:
    """Close every inherited fd the child has no business holding.

    The Python objects that owned them stay referenced (by the kid object in
    our frame) and are never used or collected in this process, so no stale
    object can later close a reused fd number.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own fd, already gone
