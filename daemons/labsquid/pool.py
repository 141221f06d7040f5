"""The kid's epoll process pool (the notes' experiments 6 and 7), and serial mode.

Theory of operation
-------------------
``pool_dispatch`` picks how connections reach a serving process:

=========  ==================================================================
serial     no pool: the kid serves every connection in its own loop.
notify     the kid watches the listening sockets (edge-triggered) and wakes
           one child, round-robin, with an ``ACCEPT`` message; the child
           accepts until EAGAIN, so simultaneous arrivals are never stranded.
passfd     the kid accepts and sends each connection to the least-loaded
           child with ``SCM_RIGHTS`` (experiment 3).  Only while a child
           takes them at once: when its channel is full, or it said it is
           out of descriptors (``NOFDS``, until its ``READY``), connections
           wait in the kernel's backlog, never in the kid.
shared     each child waits on the inherited listening socket itself,
           registered with ``EPOLLEXCLUSIVE`` so one arrival wakes one child.
reuseport  the master bound one ``SO_REUSEPORT`` socket per child and port;
           child *i* serves socket *i*, and the kernel spreads connections.
           A socket in no such group (socket activation) is every child's.
=========  ==================================================================

Children are forked (not exec'd) from the single-threaded kid, each with its
own socketpair channel, its own epoll loop (``labsquid.worker``) and its own
row of counters in the shared-memory segment.  They send finished requests'
log lines to the kid, which alone feeds the logfile daemon.

A child that dies is replaced (with a growing delay if it keeps dying young).
On reconfigure a new generation is forked with the new config; once all of
it is ready (so that some child serves at every moment), the old one is told
to ``STOP``: it stops accepting, finishes its requests and exits.  No
listening socket is closed at any point, and no client connection either:
the old children send each one back (``MOVE``) as soon as it is between
requests (a CONNECT tunnel with its origin socket, once its pipes are
empty), and the kid passes it on (``CONN``) to the least loaded child of
the newest generation.  (squid 5.7 keeps an idle connection over a
reconfigure too, but closes it after its next answer.)
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from labsquid import process
from labsquid.config import Config
from labsquid.eventloop import NO_DESCRIPTORS, READ, Timer
from labsquid.ipc import (
    PASSFD_SNDBUF,
    STOP_MOVE,
    Channel,
    Kind,
    LogStream,
    channel_pair,
    close_fds,
    log_stream_pair,
)
from labsquid.listeners import PortSpec, address_of, stop_listening
from labsquid.serial import SerialEngine
from labsquid.settings import pool_size
from labsquid.stats import STATE_PARENT, STATE_STARTING

if TYPE_CHECKING:
    from labsquid.kid import Kid

log = structlog.get_logger()

RESPAWN_MIN, RESPAWN_MAX = 0.05, 5.0
YOUNG_DEATH = 5.0
# The least time between two collections of the children's log streams (a
# child's LOGS wake-up asks for one).  A child sends at most one wake-up per
# worker.LOG_WAKE_INTERVAL (50 ms); half that here means a child's next
# wake-up always finds a collection due and is served at once, so one child
# costs the kid one wake-up per batch, while several children's wake-ups
# still share collections.
LOG_COLLECT_GAP = 0.025


def make_engine(kid: Kid) -> SerialEngine | PoolEngine:
    if kid.config.pool_dispatch == "serial":
        return SerialEngine(kid)
    return PoolEngine(kid)


def listener_groups(config: Config, socks: list[socket.socket]) -> list[list[socket.socket]]:
    """Sockets per child slot.

    In reuseport mode the master bound ``pool_size`` sockets per address and
    child *i* takes the *i*-th of each.  Sockets counted otherwise are given to
    every child, so that none is left without a reader: one systemd passed
    that the config does not name, or a group that came out a different size.
    """
    size = max(pool_size(config), 1)
    if config.pool_dispatch != "reuseport":
        return [socks] * size
    by_address: dict[PortSpec, list[socket.socket]] = {}
    for sock in socks:
        by_address.setdefault(address_of(sock), []).append(sock)
    groups: list[list[socket.socket]] = [[] for _ in range(size)]
    for members in by_address.values():
        if len(members) == size:
            for group, sock in zip(groups, members, strict=True):
                group.append(sock)
        else:
            for group in groups:
                group.extend(members)
    return groups


@dataclass(eq=False)
class Child:
    slot: int  # 1-based worker number, as in the title "(labsquid-1 worker-N)"
    generation: int
    pid: int
    channel: Channel
    row: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    stopping: bool = False
    out_of_fds: bool = False  # passfd: it sent NOFDS; no connection for it until READY
    log_stream: LogStream = field(default=None)  # type: ignore[assignment]  # set in spawn


class PoolEngine:
    def __init__(self, kid: Kid) -> None:
        # Imported here, as in labsquid.serial: the proxy is not loaded before
        # an engine needs it.
        from labsquid.proxy.server import DescriptorShortage

        self.kid = kid
        self.loop = kid.loop
        self.children: dict[int, Child] = {}
        self.generation = 0
        self.stopping = False
        self._rr = 0
        self._deaths: dict[int, int] = {}
        self._respawns: dict[int, Timer] = {}
        self._logs_due = False
        self._last_collect = 0.0  # loop time of the last log collection
        self._log_turn = 0  # which child's log stream is read first
        # Connections moved out of old children, waiting for a ready new one:
        # (fds, payload of the CONN that will carry them: one socket, or a
        # tunnel's two).
        self._moved: deque[tuple[list[int], bytes]] = deque()
        self._retiring: list[Child] = []  # older generations, stopped once the newest is ready
        self._on_drained: Callable[[], None] | None = None
        self._drain_timer: Timer | None = None
        self._announced = False
        # passfd: the listeners are not watched while no child can take a
        # connection (_held) or while the kid itself has no descriptor (fds).
        self._held = False
        self._watched = True
        self.fds = DescriptorShortage(self.loop, self._update_listeners)

    @property
    def mode(self) -> str:
        return self.kid.config.pool_dispatch

    # -- starting -----------------------------------------------------------
    def start(self) -> None:
        self.kid.stats.own.set("state", STATE_PARENT)  # it serves through its children
        if self.mode in ("notify", "passfd"):
            for index, sock in enumerate(self.kid.listeners):
                edge = select.EPOLLET if self.mode == "notify" else 0
                self.loop.add(sock.fileno(), READ | edge,
                              lambda _m, i=index: self._on_listener(i))
        for slot in range(1, pool_size(self.kid.config) + 1):
            self.spawn(slot)

    def spawn(self, slot: int) -> None:
        from labsquid import worker

        self._respawns.pop(slot, None)
        config = self.kid.config
        groups = listener_groups(config, self.kid.listeners)
        socks = groups[(slot - 1) % len(groups)]
        row = self.kid.stats.free_row()
        # Taken before the fork: the child, once serving, writes its own
        # state, and a write of ours after the fork could land after it.
        self.kid.stats.row(row).set("state", STATE_STARTING)
        ours, theirs = channel_pair()
        log_ours, log_theirs = log_stream_pair()  # (read end, write end)
        if self.mode == "passfd":
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PASSFD_SNDBUF)
        pid = process.fork()
        if pid == 0:
            ours.close()
            os.close(log_ours)
            code = 1
            try:
                code = worker.child_main(self.kid, slot, self.generation, theirs, socks, row,
                                         log_theirs)
            except BaseException:
                log.exception("worker_crashed", worker=slot)
            finally:
                os._exit(code)
        theirs.close()
        os.close(log_theirs)
        self.kid.stats.row(row).set("pid", pid)  # the child's claim writes the same
        child = Child(slot, self.generation, pid, None, row)  # type: ignore[arg-type]
        child.channel = Channel(self.loop, ours,
                                lambda k, p, f, c=child: self._on_child_message(c, k, p, f),
                                lambda: None)
        # passfd: its channel had filled up (we stopped dispatching to it): go on.
        child.channel.on_sent_all = lambda: self._hold(False)
        # Its access-log lines come on a stream of their own, which the kid
        # does not watch: it empties it on the child's paced LOGS wake-up, so
        # a busy child costs the kid (and the logfile daemon) one wake-up per
        # batch of lines, not one per request.  The lines are in
        # the kernel meanwhile, so a child killed after answering loses none.
        # Its lines name the access_log files of the configuration it starts with.
        ids = list(self.kid.logs.ids)
        child.log_stream = LogStream(self.loop, log_ours,
                                     lambda chunk: self.kid.write_access_lines(chunk, ids))
        self.children[pid] = child
        log.debug("worker_spawned", worker=slot, worker_pid=pid, generation=self.generation)

    # -- dispatch -----------------------------------------------------------
    def _serving(self) -> list[Child]:
        return [c for c in self.children.values()
                if c.ready and not c.stopping and c.generation == self.generation]

    def _on_listener(self, index: int) -> None:
        if self.mode == "passfd":
            self._pass_connections(self.kid.listeners[index])
            return
        children = self._serving()
        if not children:
            return  # connections wait in the backlog; READY re-triggers dispatch
        if self.mode == "notify":
            # Round-robin over the children with room; a full one would ignore
            # the wake-up (it tells us with READY when it has room again).
            limit = self.kid.config.pool_max_connections
            for _ in range(len(children)):
                self._rr = (self._rr + 1) % len(children)
                child = children[self._rr]
                if self.kid.stats.row(child.row).get("active") < limit:
                    child.channel.send(Kind.ACCEPT, bytes([index]))
                    return
            return  # all full: the backlog holds them until a READY

    def _pass_connections(self, sock: socket.socket) -> None:
        """passfd: accept and hand over, while some child can take a connection now.

        When none can, the listeners are not watched (they are level-triggered:
        epoll would report them readable in a loop) and the connections wait in
        the kernel's backlog until a child says READY or its channel drains.
        """
        from labsquid.proxy.server import ACCEPT_BATCH

        accepted = 0
        while accepted < ACCEPT_BATCH:  # then back to the loop: a NOFDS may be waiting
            targets = self._takers()
            if not targets:
                self._hold(True)
                break
            target = min(targets, key=self._load)
            try:
                conn, _addr = sock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in NO_DESCRIPTORS:
                    # The kid itself is out of descriptors: stop watching for a
                    # pause rather than being woken for the same EMFILE forever.
                    self.fds.fail(exc.strerror, self._connections())
                    self._update_listeners()
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            accepted += 1
            fd = conn.detach()
            if not target.channel.send(Kind.CONN, b"", [fd]):
                os.close(fd)  # the client sees a reset rather than a hang
                log.warning("passfd_send_failed", worker=target.slot)
        if accepted:
            self.fds.succeeded()

    def _takers(self) -> list[Child]:
        """passfd: the children a connection can be handed to right now: serving,
        below pool_max_connections, not out of descriptors, and with nothing
        queued in their channel (a queued CONN would hold a descriptor in the kid:
        the backlog is where connections wait)."""
        limit = self.kid.config.pool_max_connections
        return [c for c in self._serving()
                if not c.out_of_fds and not c.channel.backlog and self._load(c) < limit]

    def _hold(self, held: bool) -> None:
        if self.mode == "passfd" and held != self._held:
            self._held = held
            self._update_listeners()

    def _update_listeners(self) -> None:
        """passfd: watch the listeners unless held or in a descriptor pause."""
        watch = not (self._held or self.fds.paused or self.stopping)
        if watch == self._watched:
            return
        self._watched = watch
        for sock in self.kid.listeners:
            if self.loop.watching(sock.fileno()):
                self.loop.modify(sock.fileno(), READ if watch else 0)

    def _load(self, child: Child) -> int:
        return self.kid.stats.row(child.row).get("active") + child.channel.backlog

    def _connections(self) -> int:
        return sum(self.kid.stats.row(c.row).get("active") for c in self._serving())

    # -- messages from children ---------------------------------------------
    def _on_child_message(self, child: Child, kind: bytes, payload: bytes,
                          fds: list[int]) -> None:
        if kind == Kind.MOVE:
            if fds:
                self._moved.append((fds, payload))
            self._place_moved()
            return
        close_fds(fds)  # only MOVE carries any; do not leak them
        if kind == Kind.LOGS:
            if payload:  # urgent: its log stream is full and it holds clients back
                self._read_logs([child])
            elif not self._logs_due:
                # Right away when the last collection is LOG_COLLECT_GAP old,
                # else when it will be: one wake-up of the kid, not this one
                # and a timer's (each stalls the children on its core).
                wait = self._last_collect + LOG_COLLECT_GAP - self.loop.now
                if wait <= 0:
                    self._collect_logs()
                else:
                    self._logs_due = True
                    self.loop.call_later(wait, self._collect_logs)
        elif kind == Kind.READY:
            child.ready = True
            child.out_of_fds = False
            self._retire_old()
            self._place_moved()
            if self.mode == "passfd":
                self._hold(False)
            if self.mode == "notify":
                # Anything that queued while no child was ready gets a wake-up.
                for index in range(len(self.kid.listeners)):
                    child.channel.send(Kind.ACCEPT, bytes([index]))
            if not self._announced and len(self._serving()) >= pool_size(self.kid.config):
                self._announced = True
                self.kid.engine_ready()
        elif kind == Kind.NOFDS:
            # passfd: the child could not install sockets we passed (it logged
            # that); until its READY it gets none, so they wait in the backlog.
            child.out_of_fds = True

    # -- children ending ----------------------------------------------------
    def _collect_logs(self) -> None:
        self._logs_due = False
        self._last_collect = self.loop.now
        self._read_logs(list(self.children.values()))

    def log_room(self) -> None:
        """The logfile queue has room again: take what waits in the pipes."""
        self._read_logs(list(self.children.values()))

    def _read_logs(self, children: list[Child]) -> None:
        # As much as the logfile queue has room for; the rest waits in the
        # pipes, and a child whose pipe fills holds its clients back, until
        # log_room().  Each time another child goes first, so that a short
        # budget is shared.
        budget = self.kid.log_budget()
        if budget is None:
            for child in children:
                child.log_stream.read_all()
            return
        self._log_turn = (self._log_turn + 1) % max(1, len(children))
        for child in children[self._log_turn:] + children[:self._log_turn]:
            if budget <= 0:
                break
            budget -= child.log_stream.read_all(limit=budget)
        if budget <= 0:
            self.kid.want_log_room()

    def signal_children(self, signum: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass  # exited; reaped in the loop

    def child_exited(self, pid: int, status: int) -> bool:
        child = self.children.pop(pid, None)
        if child is None:
            return False
        # SIGCHLD may be handled before the channel's last messages (its final
        # access-log lines) were read: take them first, all of them (over the
        # logfile queue's bound if need be, by at most one pipe: nobody is
        # left to hold them).
        child.log_stream.drain()
        child.channel.drain()
        self.kid.stats.retire(child.row)
        text, code, _sig = process.describe_status(status)
        if child.stopping or self.stopping:
            log.debug("worker_exited", worker=child.slot, status=text)
            self._check_drained()
            return True
        lived = time.monotonic() - child.started
        if child.generation < self.generation:  # retiring: its successor is starting
            log.warning("worker_died", worker=child.slot, worker_pid=pid, status=text,
                        lived=round(lived, 3), respawn_in=None)
            return True
        deaths = self._deaths.get(child.slot, 0) + 1 if lived < YOUNG_DEATH else 0
        self._deaths[child.slot] = deaths
        delay = min(RESPAWN_MAX, RESPAWN_MIN * (2 ** deaths)) if deaths else 0.0
        log.warning("worker_died", worker=child.slot, worker_pid=pid, status=text,
                    lived=round(lived, 3), respawn_in=delay)
        self._respawns[child.slot] = self.loop.call_later(delay,
                                                          lambda s=child.slot: self.spawn(s))
        return True

    def has_older_children(self) -> bool:
        """Whether a child of an earlier configuration is still running."""
        return any(c.generation < self.generation for c in self.children.values())

    # -- reconfigure and stop -----------------------------------------------
    def reconfigure(self, config: Config) -> None:
        old = [c for c in self.children.values() if not c.stopping]
        self.generation += 1
        self._announced = True  # readiness was announced once; reloads answer via STATUS
        for timer in self._respawns.values():
            timer.cancel()
        self._respawns.clear()
        for slot in range(1, pool_size(config) + 1):
            self.spawn(slot)
        self._retiring += old

    def _retire_old(self) -> None:
        """Stop the older generations once every child of the newest is ready:
        until then they serve on (in notify and passfd modes the kid sends new
        connections only to the newest, and holds them in the backlog)."""
        newest = [c for c in self.children.values() if c.generation == self.generation]
        if not self._retiring or len(newest) < pool_size(self.kid.config) \
                or not all(c.ready for c in newest):
            return
        for child in self._retiring:
            if not child.stopping and child.pid in self.children:
                self._stop_child(child, move=True)
        self._retiring.clear()

    def _stop_child(self, child: Child, move: bool = False) -> None:
        child.stopping = True
        child.channel.send(Kind.STOP, STOP_MOVE if move else b"")

    def _place_moved(self) -> None:
        """Hand the connections old children gave back to the newest ones."""
        if self.stopping:
            self._close_moved()
            return
        targets = [c for c in self._serving() if not c.out_of_fds]
        while self._moved and targets:
            fds, payload = self._moved.popleft()
            target = min(targets, key=self._load)
            if not target.channel.send(Kind.CONN, payload, fds, bounded=False):
                close_fds(fds)  # its client sees the close it would have seen before
                log.warning("moved_connection_lost", worker=target.slot)

    def _close_moved(self) -> None:
        for fds, _payload in self._moved:
            close_fds(fds)
        self._moved.clear()

    def shutdown(self, lifetime: float, on_drained: Callable[[], None]) -> None:
        self.stopping = True
        self._close_moved()
        self._retiring.clear()  # stopped below with the rest
        self._on_drained = on_drained
        stop_listening(self.kid.loop, self.kid.listeners)
        for timer in self._respawns.values():
            timer.cancel()
        self._respawns.clear()
        for child in self.children.values():
            self._stop_child(child)
            os.kill(child.pid, 15)
        self._drain_timer = self.loop.call_later(lifetime + 2.0,
                                                 lambda: self.abort(on_drained))
        self._check_drained()

    def abort(self, on_done: Callable[[], None]) -> None:
        """Children close everything now (SIGINT) but still send their last log lines."""
        self.stopping = True
        self._close_moved()
        self._on_drained = on_done
        for sock in self.kid.listeners:
            self.loop.remove(sock.fileno())
        for child in self.children.values():
            try:
                os.kill(child.pid, 2)
            except ProcessLookupError:
                pass
        self._check_drained()

    def _check_drained(self) -> None:
        if self.stopping and not self.children and self._on_drained is not None:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            callback, self._on_drained = self._on_drained, None
            callback()

    def status(self) -> dict[str, object]:
        return {"children": len([c for c in self.children.values() if not c.stopping]),
                "dispatch": self.mode, "generation": self.generation}
