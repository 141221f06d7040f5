"""The kid: ``(labsquid-1) --kid labsquid-1 …``, squid's worker process.

It inherits the listening sockets from the master, drops privileges, starts
the logfile daemon (the only writer of access.log) and serves: either itself
(``pool_dispatch serial``, the notes' blocking-handler baseline made
non-blocking) or through the epoll process pool (``labsquid.pool``).

Signals arrive through the event loop and each has a named handler:

* ``handle_term`` — stop accepting, let in-flight work finish for at most
  ``shutdown_lifetime``, flush the access log, exit 0.  A second TERM, or
  ``handle_int``, cuts the wait short (the log is still flushed).
* ``handle_hup`` — re-read the config; a broken one is refused and logged and
  everything keeps running unchanged.  The listening sockets stay open.
* ``handle_usr1`` — rotate the access log, once.
* ``handle_chld`` — reap: the logfile daemon is restarted, pool children are
  replaced; nothing here is fatal.
"""

from __future__ import annotations

import gc
import json
import os
import pwd
import resource
import signal
import socket
import time
from collections.abc import Callable

import structlog

from labsquid import log as logsetup
from labsquid import process
from labsquid.access_logs import CLOSE_LIMIT as LOGGER_CLOSE_LIMIT
from labsquid.access_logs import AccessLogs
from labsquid.config import Config, ConfigError
from labsquid.eventloop import EventLoop, bind_signal_handlers
from labsquid.ipc import Channel, Kind
from labsquid.pool import make_engine
from labsquid.settings import CPUS_ENV, adopt_usable_cpus, load_config
from labsquid.stats import (
    CARRY_ENV,
    SAMPLE_INTERVAL,
    Stats,
    carry_over,
    pool_cpu_seconds,
    remove_stale_segments,
)

log = structlog.get_logger()


class Kid:
    def __init__(self, config: Config, listeners: list[socket.socket],
                 control: socket.socket | None, name: str = "labsquid-1",
                 config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        # Relative names in the config mean this folder, on a reload too (run()
        # leaves it for /).
        self.start_folder = os.getcwd()
        self.name = name
        self.listeners = listeners
        self.loop = EventLoop()
        self.control: Channel | None = None
        self._control_sock = control
        self.logs = AccessLogs(self.loop, self._log_room)
        self.logs.on_retired_gone = self._logs_closed
        self.stats: Stats = None  # type: ignore[assignment]  # made in run(), as the final user
        self.engine = None
        self.stopping = False
        self.exit_code = 0
        self.started = time.monotonic()
        self.reconfigures = 0
        self._drained_once = False
        self.on_ready: Callable[[], None] | None = None  # -N: the notifier's READY=1

    # -- start --------------------------------------------------------------
    def run(self) -> int:
        drop_privileges(self.config)
        os.chdir("/")  # paths are absolute; the start folder may be closed to us now
        # Created as the user that will unlink it at exit (/dev/shm is sticky).
        stale = remove_stale_segments()
        if stale:
            log.info("stale_stats_segments_removed", kid_pids=stale)
        self.stats = Stats(self.name)
        previous = os.environ.pop(CARRY_ENV, None)
        if previous and previous.isdecimal() and not carry_over(self.stats, int(previous)):
            log.warning("stats_carry_over_failed")
        bind_signal_handlers(self.loop, self, ("term", "int", "hup", "usr1", "chld"))
        if self._control_sock is not None:
            self.control = Channel(self.loop, self._control_sock, self._on_control,
                                   self._on_master_gone)
        self.logs.configure(self.config)
        self.engine = make_engine(self)
        self.engine.start()
        self._take_sample()
        log.info("kid_started", kid=self.name, dispatch=self.config.pool_dispatch,
                 listening=[_sockname(s) for s in self.listeners])
        # As in a pool child: what start-up built lives as long as the process,
        # so the collector's full passes only walk what serving creates (in
        # serial mode the kid serves).
        gc.freeze()
        self.loop.run()
        self.loop.close()
        self.stats.close()
        log.info("kid_exiting", code=self.exit_code)
        return self.exit_code

    def _take_sample(self) -> None:
        """This minute's totals, for the cache manager's 5min, 60min and
        service_times pages (``Stats.take_sample``); the next in a minute."""
        self.stats.take_sample(time.time(), int(pool_cpu_seconds(self.stats.rows()) * 1e6))
        self.loop.call_later(SAMPLE_INTERVAL, self._take_sample)

    def engine_ready(self) -> None:
        """Called by the engine when every part serves: tell the master."""
        self.send_status(ready=True)
        if self.on_ready is not None:
            self.on_ready()

    def send_status(self, **extra: object) -> None:
        if self.control is None:
            return
        figures = {"kid_pid": os.getpid(), **self.stats.summary(), **extra}
        if self.engine is not None:
            figures.update(self.engine.status())
        self.control.send(Kind.STATUS, json.dumps(figures).encode())

    def write_access_lines(self, chunk: bytes, ids: list[int]) -> None:
        """Lines of a serving process (a pool child, or the kid's own in
        serial mode), each ending in a newline, in one go; ``ids``: the files
        of the configuration they were made with (``AccessLogs.ids``)."""
        self.logs.write_lines(chunk, ids)

    def log_budget(self) -> int | None:
        """Bytes of access-log lines the kid may take in now; None: no bound.
        At 0 the caller leaves lines where they are and calls ``want_log_room``."""
        return self.logs.budget()

    def want_log_room(self) -> None:
        self.logs.want_room()

    def _log_room(self) -> None:
        # The logfile daemon caught up (or a new logger started): lines left
        # waiting may come in now.
        if self.engine is not None:
            self.engine.log_room()

    # -- signals ------------------------------------------------------------
    def handle_term(self, _signum: int) -> None:
        if self.stopping:
            log.warning("second_term_exiting_now")
            self._finish_now()
            return
        self.stopping = True
        lifetime = self.config.shutdown_lifetime
        log.info("shutdown_started", shutdown_lifetime=lifetime)
        assert self.engine is not None
        self.engine.shutdown(lifetime, on_drained=self._drained)

    def handle_int(self, _signum: int) -> None:
        log.info("interrupt_exiting_now")
        self.stopping = True
        self._finish_now()

    def handle_hup(self, _signum: int) -> None:
        if self.stopping:
            return
        try:
            new = load_config(self.config_path, base=self.start_folder)
        except ConfigError as exc:
            log.error("reconfigure_refused", problems=[str(p) for p in exc.problems])
            self.send_status(reconfigured=False)
            return
        self.config = new
        self.reconfigures += 1
        self.logs.configure(new)
        self._log_room()  # a new file's logger has room for lines held back
        assert self.engine is not None
        self.engine.reconfigure(new)
        self._close_held_logs()
        log.info("reconfigured", generation=self.reconfigures)
        self.send_status(reconfigured=True)

    def _close_held_logs(self) -> None:
        # The files a reload dropped close once the children of the
        # configurations that named them are gone.
        if self.logs.held and not (self.engine and self.engine.has_older_children()):
            self.logs.close_held()

    def handle_usr1(self, _signum: int) -> None:
        # The master has renamed cache_log already: follow it, then the pool.
        if os.environ.get(logsetup.CACHE_LOG_ENV) and self.engine is not None:
            logsetup.reopen_cache_log()
            self.engine.signal_children(signal.SIGUSR1)
        self.logs.rotate()

    def handle_chld(self, _signum: int) -> None:
        for pid, status in process.reap():
            text, _code, _sig = process.describe_status(status)
            owner = self.logs.owner(pid)
            if owner is not None:
                owner.daemon_exited(text)
            elif self.engine is not None and self.engine.child_exited(pid, status):
                pass
            else:
                log.debug("reaped_unknown_child", child_pid=pid, status=text)
        self._close_held_logs()
        # What the reaped ones used stays in the pool's CPU time (cache manager).
        spent = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.stats.own.set("reaped_cpu_us", int((spent.ru_utime + spent.ru_stime) * 1e6))

    # -- control channel ----------------------------------------------------
    def _on_control(self, kind: bytes, payload: bytes, _fds: list[int]) -> None:
        if kind == Kind.PING:
            # Answered from the loop itself: a hung loop means no PONG, and
            # then no WATCHDOG=1 from the master.
            self.control.send(Kind.PONG, payload)  # type: ignore[union-attr]
            self.send_status()

    def _on_master_gone(self) -> None:
        self.control = None
        if not self.stopping:
            log.warning("master_gone_shutting_down")
            self.handle_term(signal.SIGTERM)

    # -- stopping -----------------------------------------------------------
    def _drained(self) -> None:
        if self._drained_once:
            return
        self._drained_once = True
        log.info("connections_drained")
        self._close_logger()

    def _finish_now(self) -> None:
        assert self.engine is not None
        self.engine.abort(self._drained)

    def _close_logger(self) -> None:
        self.logs.close(on_idle=self._logs_closed)
        if not self._logs_closed():
            self.loop.call_later(LOGGER_CLOSE_LIMIT, self._logger_timeout)

    def _logs_closed(self) -> bool:
        """At exit: stop once every logger is done, the current ones and any a
        reload retired (their lines are as much owed as the current ones)."""
        done = self._drained_once and self.logs.closed
        if done:
            self.loop.stop()
        return done

    def _logger_timeout(self) -> None:
        log.error("access_log_flush_timeout", limit=LOGGER_CLOSE_LIMIT)
        self.logs.kill_now()
        self.loop.stop()


def drop_privileges(config: Config) -> None:
    """As root with ``cache_effective_user``: become that user (sockets are bound already)."""
    user = config.cache_effective_user
    if os.geteuid() != 0 or not user:
        return
    pw = pwd.getpwnam(user)
    gid = pw.pw_gid
    if config.cache_effective_group:
        import grp

        gid = grp.getgrnam(config.cache_effective_group).gr_gid
    os.initgroups(pw.pw_name, gid)
    os.setgid(gid)
    os.setuid(pw.pw_uid)
    log.info("privileges_dropped", user=user, uid=pw.pw_uid, gid=gid)


def _sockname(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def kid_main(config_path: str | None, name: str, level: str) -> int:
    from labsquid import listeners

    logsetup.configure("kid", level)
    control_fd = os.environ.pop("LABSQUID_CONTROL_FD", None)
    adopt_usable_cpus(os.environ.pop(CPUS_ENV, None))
    control = None
    if control_fd is not None:
        fd = int(control_fd)
        os.set_inheritable(fd, False)
        control = socket.socket(fileno=fd)
    socks = listeners.inherit()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.critical("config_error", problem=str(problem))
        return 2
    return Kid(config, socks, control, name, config_path).run()
