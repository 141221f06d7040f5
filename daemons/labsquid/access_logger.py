"""The kid's end of the logfile daemon: spawn it, feed it, outlive it.

squid's kid starts its logfile daemon with ``ipcCreate`` and calls
``fatal()`` when it dies.  labsquid's kid instead:

* writes through a non-blocking socket, so a slow disk never blocks the loop:
  queued lines go at most once per ``SEND_INTERVAL`` (``labsquid.pacing``),
  and epoll's ``EPOLLOUT`` is armed only while a send left bytes behind;
* keeps every line in a bounded ``LogQueue`` until the daemon acknowledges it
  was written (labsquid's ``A``/``O`` extension of squid's protocol);
* when the daemon dies, starts a new one within ``RESPAWN_DELAY`` and resends
  what was not acknowledged, skipping what the dead daemon had in fact written;
* drops no line when the queue is full (squid does, when its buffer
  overflows): the kid takes no more from the pool children's pipes than
  ``line_budget()`` allows, the children hold their clients back while their
  pipes are full, and ``on_room`` says when acknowledgements made room again.

The kid is the only writer (pool children send their lines to the kid), so a
rotation happens exactly once and lines never interleave.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import structlog

from labsquid import process
from labsquid.eventloop import ERROR, READ, WRITE, EventLoop, Timer, is_would_block
from labsquid.logfile import LogQueue, ProtocolError
from labsquid.pacing import Pacer

log = structlog.get_logger()

RESPAWN_DELAY = 0.1
RESPAWN_MAX = 5.0
YOUNG_DEATH = 2.0
# Lines go to the daemon at most once per SEND_INTERVAL, all that queued by
# then, or sooner when SEND_BATCH bytes wait.  Sending every loop turn woke the
# daemon 694-750 times a second in serial mode at 100 B c=50 (it shares the
# core with the kid), ~7 us of its CPU per request; paced, 38 times and ~1 us.
# Pool children's lines mostly arrive in collections at least
# pool.LOG_COLLECT_GAP (as long) apart, so those are sent right away; the unspaced
# reads (a child's full pipe, a dead child's last lines) may wait up to 25 ms.
SEND_INTERVAL = 0.025
SEND_BATCH = 64 * 1024
# A send that is due goes out HANDOVER_GAP later, never in the loop turn that
# queued the lines.  The daemon wakes as soon as the kid blocks, so a pool
# child's collection and the daemon's turn ran back to back: at 2 connections
# one stall of ~0.7 ms of the serving core, every 50 ms.  With the kid blocked
# for a moment in between, the serving process runs first and the stall comes
# in two parts; wrk counts a stall by its length (bench/README, "What wrk
# counts at c=2").
HANDOVER_GAP = 0.001
# How long a logfile_daemon program of the operator's choosing has to send
# labsquid's greeting (O<size>) before it is taken for one that never will:
# squid's own log_file_daemon speaks the protocol without acknowledgements.
# Without this the kid held every line (and, at the bound, every client) for
# a greeting that does not come.
GREETING_WAIT = 2.0
DROP_REPORT_INTERVAL = 1.0


def daemon_argv(program: str, path: str) -> list[str]:
    """The daemon's command line; ``internal`` means labsquid's own program."""
    if program == "internal":
        return [sys.executable, "-m", "labsquid.logfile_daemon", path]
    return [program, path]


class AccessLogger:
    def __init__(self, loop: EventLoop, path: str, program: str = "internal", *,
                 rotate_count: int = 10, buffered: bool = False,
                 max_bytes: int = 8 * 1024 * 1024) -> None:
        self.loop = loop
        self.path = path
        self.program = program
        self.rotate_count = rotate_count
        self.buffered = buffered
        self.queue = LogQueue(max_bytes=max_bytes)
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.restarts = 0
        self.young_deaths = 0
        self.started_at = 0.0
        self._respawn_timer: Timer | None = None
        self._gave_up = False  # kill_now(): lines still queued are abandoned
        self._room_wanted = False
        # on-error=drop: when the queue is full, new lines are dropped (and
        # counted) instead of holding back the pool and the other files.
        self.drop_when_full = False
        self.dropped = 0
        self._drop_reported = 0.0
        self._resumed_from: tuple[int, int, int] | None = None  # queue counters at a restart
        #: Called once room is back after ``want_room()`` (a quarter of the bound).
        self.on_room: Callable[[], None] | None = None
        self._closing = False
        self._send_scheduled = False
        self._send_pacer = Pacer(SEND_INTERVAL)
        self.on_idle: Callable[[], None] | None = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.pid = process.spawn(daemon_argv(self.program, self.path),
                                     fd_map={0: theirs.fileno(), 1: theirs.fileno(), 2: devnull})
        finally:
            os.close(devnull)
            theirs.close()
        self.started_at = time.monotonic()
        ours.setblocking(False)
        self.sock = ours
        self.loop.add(ours.fileno(), READ, self._on_event)
        if self.restarts:
            self.queue.daemon_restarted()
            q = self.queue
            self._resumed_from = (q.skipped, q.completed, q.resent)
        else:
            # Settings go first in the stream; after a restart they are resent
            # by the queue along with everything unacknowledged.
            self.queue.command("r", str(self.rotate_count))
            self.queue.command("b", "1" if self.buffered else "0")
        self._want_write()
        log.info("logfile_daemon_started", daemon_pid=self.pid, path=self.path,
                 restarts=self.restarts)
        if self.program != "internal" and not self.queue.greeted:
            self.loop.call_later(GREETING_WAIT, self._greeting_overdue)

    def _greeting_overdue(self) -> None:
        if self.sock is None or self.queue.greeted:
            return
        log.warning("logfile_daemon_without_acknowledgements", program=self.program,
                    daemon_pid=self.pid, waited=GREETING_WAIT,
                    consequence="lines are done once the daemon took them; those it "
                                "took are lost if it dies (as with squid)")
        self.queue.assume_unacknowledged()
        self._want_write()
        self._progress()

    def daemon_exited(self, status_text: str) -> None:
        """Called by the kid's reaper when ``self.pid`` exited."""
        self.pid = None
        self._drop_socket()
        if self._gave_up or self.closed:
            log.info("logfile_daemon_stopped", status=status_text)
            self._check_idle()
            return
        # Died with lines still unwritten (even while closing): a new daemon
        # takes them over.
        self.restarts += 1
        # One that dies young (it cannot open its log, say) is retried with a
        # growing delay, so a broken log path is a warning a second, not a storm.
        young = time.monotonic() - self.started_at < YOUNG_DEATH
        self.young_deaths = self.young_deaths + 1 if young else 0
        delay = min(RESPAWN_DELAY * 2 ** self.young_deaths, RESPAWN_MAX)
        log.warning("logfile_daemon_died", path=self.path, status=status_text,
                    restarts=self.restarts,
                    respawn_in=round(delay, 2))
        self._respawn_timer = self.loop.call_later(delay, self._respawn)

    def _respawn(self) -> None:
        self._respawn_timer = None
        # While closing too, as long as lines wait: close() ends in EOF only
        # once everything is acknowledged, so a replacement must write them.
        if self.pid is None and not self._gave_up and not self.closed:
            self.start()

    def close(self) -> None:
        """Shut down cleanly: EOF to the daemon once everything is acknowledged."""
        self._closing = True
        self._maybe_send_eof()

    @property
    def closed(self) -> bool:
        return self._closing and self.pid is None and self.queue.idle()

    # -- writing ------------------------------------------------------------
    def write_line(self, line: str | bytes) -> None:
        if self.drop_when_full and len(line) >= self.line_budget():
            self._drop(1)
            return
        self.queue.append(line)
        self._queued()

    def write_lines(self, chunk: bytes) -> None:
        """Several lines at once, each ending in a newline (a pool child's)."""
        if self.drop_when_full and len(chunk) > self.line_budget():
            self._drop(chunk.count(b"\n"))
            return
        self.queue.append_lines(chunk)
        self._queued()

    def _drop(self, lines: int) -> None:
        self.dropped += lines
        now = time.monotonic()
        if now - self._drop_reported >= DROP_REPORT_INTERVAL:  # a warning a second at most
            self._drop_reported = now
            log.warning("access_log_lines_dropped", path=self.path, dropped=self.dropped,
                        reason="on-error=drop and the file's queue is full")

    def line_budget(self) -> int:
        """Bytes of lines that may be taken now and stay within the bound
        (queued, they take at most twice their size)."""
        return self.queue.room // 2

    def want_room(self) -> None:
        """Someone holds lines back: call ``on_room`` when acks make room."""
        self._room_wanted = True

    def _queued(self) -> None:
        # One send for however many lines queued meanwhile (SEND_INTERVAL),
        # tried directly: epoll's EPOLLOUT is only needed when the socket is full.
        if self._send_scheduled or self.sock is None:
            return
        if self.queue.output_bytes >= SEND_BATCH:
            delay: float | None = 0.0  # even with a paced send pending
        else:
            delay = self._send_pacer.lines_written(self.loop.now)
        if delay == 0.0:
            self._send_scheduled = True
            self.loop.call_later(HANDOVER_GAP, self._send_due)
        elif delay is not None:
            self.loop.call_later(delay, self._send_paced)

    def _send_paced(self) -> None:
        self._send_pacer.timer_fired(self.loop.now)
        if self.sock is not None:
            self._send()

    def _send_due(self) -> None:
        self._send_scheduled = False
        if self.sock is not None:
            self._send()

    def set_rotate_count(self, count: int) -> None:
        self.rotate_count = count
        self.queue.command("r", str(count))
        self._want_write()

    def reconfigure(self, rotate_count: int, buffered: bool, max_bytes: int) -> None:
        """A reload kept this file: apply what it says of it now."""
        if rotate_count != self.rotate_count:
            self.set_rotate_count(rotate_count)
        if buffered != self.buffered:
            self.buffered = buffered
            self.queue.command("b", "1" if buffered else "0")
            self._want_write()
        self.queue.max_bytes = max_bytes

    def rotate(self) -> None:
        self.queue.command("R")
        self._want_write()

    def flush(self) -> None:
        self.queue.command("F")
        self._want_write()

    def _want_write(self) -> None:
        if self.sock is None:
            return
        mask = READ | WRITE if self.queue.has_output() else READ
        self.loop.modify(self.sock.fileno(), mask)

    def _on_event(self, mask: int) -> None:
        if mask & WRITE:
            self._send()
        if self.sock is not None and mask & (READ | ERROR):
            self._receive()

    def _send(self) -> None:
        assert self.sock is not None
        try:
            self.queue.write_to(self.sock.send)
        except OSError as exc:
            if not is_would_block(exc):
                return  # the daemon is gone; its exit is handled by the reaper
        self._want_write()
        if self.queue.unacknowledged:
            self._progress()

    def _receive(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            if is_would_block(exc):
                return
            data = b""
        if not data:
            # EOF: the daemon closed or died; stop watching until it is reaped.
            self.loop.remove(self.sock.fileno())
            return
        before = self.queue.last_error
        try:
            self.queue.feed(data)
        except ProtocolError as exc:
            # A daemon that speaks nonsense cannot be trusted with our lines:
            # replace it; what it did not acknowledge is resent.
            log.error("logfile_daemon_protocol_error", error=str(exc), daemon_pid=self.pid)
            if self.pid is not None:
                os.kill(self.pid, signal.SIGKILL)
            return
        error = self.queue.last_error
        if error is not None and error is not before:
            log.error("access_log_write_failed", path=self.path, errno=error.errno,
                      error=os.strerror(error.errno),
                      pending_bytes=error.pending)
        if self._resumed_from is not None and self.queue.greeted:
            self._report_resume(*self._resumed_from)
        if self.queue.has_output():
            # The daemon's greeting released what queued before it.  (Not
            # EPOLLOUT: acks would then send every few lines, unpaced.)
            self._queued()
        self._progress()

    def _progress(self) -> None:
        """Records are done (acknowledged; without acknowledgements, sent):
        room and the end of a shutdown may follow."""
        if self._room_wanted and self.queue.room >= self.queue.max_bytes // 4:
            self._room_wanted = False
            if self.on_room is not None:
                self.on_room()
        self._check_idle()

    def _report_resume(self, skipped: int, completed: int, resent: int) -> None:
        # What the replacement found on disk and what it was given: the
        # exactly-once arithmetic, visible in the journal.
        self._resumed_from = None
        q = self.queue
        log.info("logfile_daemon_resumed", daemon_pid=self.pid,
                 lines_found_written=q.skipped - skipped,
                 torn_lines_completed=q.completed - completed,
                 records_resent=q.resent - resent)

    def _maybe_send_eof(self) -> None:
        if self.sock is not None and self._closing and self.queue.idle():
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _check_idle(self) -> None:
        if self._closing:
            self._maybe_send_eof()
            if self.pid is None and self.on_idle is not None:
                self.on_idle()

    def _drop_socket(self) -> None:
        if self.sock is not None:
            self.loop.remove(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def kill_now(self) -> None:
        """Last resort (a flush that took too long): no more daemons; the one
        running still gets EOF and writes what it has."""
        self._gave_up = True
        if self._respawn_timer is not None:
            self._respawn_timer.cancel()
            self._respawn_timer = None
        self._drop_socket()
        self._check_idle()
