"""The master: ``labsquid --foreground -sYC``, squid's parent process.

It holds the PID file and the listening sockets, starts the kid
(``(labsquid-1) --kid labsquid-1 …``, a fork+exec of labsquid itself) and
keeps it alive, and is the only process that speaks to systemd.

Restart policy (squid's): a kid that exits 0, or that was stopped by TERM or
INT, is not restarted and the master exits with it.  Any other death restarts
it; one that lived under ``FAST_FAILURE`` seconds is a fast failure, and after
``MAX_FAST_FAILURES`` in a row the master gives up.

Signals, each with a named handler run from the loop: HUP re-reads the config
(a broken one is refused here already, and the kid keeps running) then passes
HUP on; USR1 passes on; TERM and INT pass on and the master exits when the kid
has; CHLD reaps.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import sys
import time

import structlog

from labsquid import listeners, process, stats
from labsquid import log as logsetup
from labsquid.config import Config, ConfigError
from labsquid.eventloop import EventLoop, Timer, bind_signal_handlers
from labsquid.ipc import Channel, Kind, channel_pair
from labsquid.notify import Notifier
from labsquid.pidfile import PidFile
from labsquid.settings import CPUS_ENV, load_config, port_specs, usable_cpus

log = structlog.get_logger()

FAST_FAILURE = 10.0
MAX_FAST_FAILURES = 5
HEARTBEAT_INTERVAL = 1.0


def _ports(config: Config) -> list[tuple[str, int, bool]]:
    """The listening sockets a config asks for, in no particular order:
    reordering http_port lines is no reason to replace the kid."""
    return sorted((p.host, p.port, p.reuseport) for p in port_specs(config))


class Master:
    def __init__(self, config: Config, config_path: str | None, kid_args: list[str],
                 pidfile: PidFile | None, notifier: Notifier) -> None:
        self.config = config
        self.config_path = config_path
        self.kid_args = kid_args
        self.pidfile = pidfile
        self.notifier = notifier
        self.loop = EventLoop()
        self.listeners: list[socket.socket] = []
        self.kid_pid: int | None = None
        self.kid_started = 0.0
        self.kid_channel: Channel | None = None
        self.kid_name = "labsquid-1"
        self.fast_failures = 0
        self.stopping: int | None = None  # the signal we are stopping on
        self.exit_code = 0
        self.ready = False
        self.last_pong = time.monotonic()
        self.status: dict[str, object] = {}
        self._heartbeat: Timer | None = None
        self._reload_pending = False
        self.activated: list[socket.socket] = []  # systemd's sockets, always served
        self._retired: dict[int, Channel] = {}  # kids replaced on a port change, draining

    def run(self, socks: list[socket.socket], activated: list[socket.socket]) -> int:
        """Serve ``socks`` (opened for this config; ``activated``: those of
        them systemd passed) until stopped."""
        bind_signal_handlers(self.loop, self, ("term", "int", "hup", "usr1", "chld"))
        self.activated = activated
        self.listeners = socks
        log.info("master_started", listening=[str(listeners.address_of(s))
                                              for s in self.listeners])
        self.start_kid()
        self._heartbeat = self.loop.call_later(HEARTBEAT_INTERVAL, self._beat)
        self.loop.run()
        self.loop.close()
        for sock in self.listeners:
            sock.close()
        log.info("master_exiting", code=self.exit_code)
        return self.exit_code

    # -- the kid ------------------------------------------------------------
    def start_kid(self, stats_from: int | None = None) -> None:
        """``stats_from``: the pid of a draining kid whose counters it continues."""
        ours, theirs = channel_pair()
        env = dict(os.environ)
        carried: list[int] = []
        if stats_from is not None:
            try:
                carried.append(os.open(stats.segment_path(stats_from),
                                       os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
                env[stats.CARRY_ENV] = str(carried[0])
            except OSError:
                pass  # the figures start from 0, as after a crash
        env.update(listeners.export(self.listeners))
        env["LABSQUID_CONTROL_FD"] = str(theirs.fileno())
        env[CPUS_ENV] = str(usable_cpus())
        argv = [sys.executable, "-m", "labsquid", "--kid", self.kid_name, *self.kid_args]
        pass_fds = [theirs.fileno(), *(s.fileno() for s in self.listeners), *carried]
        self.kid_pid = process.spawn(argv, pass_fds=pass_fds, env=env)
        for fd in carried:
            os.close(fd)
        theirs.close()
        self.kid_started = time.monotonic()
        self.last_pong = self.kid_started
        self.kid_channel = Channel(self.loop, ours, self._on_kid_message, self._on_kid_gone)
        log.info("kid_spawned", kid=self.kid_name, kid_pid=self.kid_pid)

    def _on_kid_message(self, kind: bytes, payload: bytes, _fds: list[int]) -> None:
        if kind == Kind.PONG:
            self.last_pong = time.monotonic()
        elif kind == Kind.STATUS:
            try:
                self.status = json.loads(payload)
            except ValueError:
                return
            if self.status.get("ready") and not self.ready:
                self.ready = True
                self.notifier.ready(self._status_line())
                log.info("service_ready", kid_pid=self.kid_pid)
            if "reconfigured" in self.status and self._reload_pending:
                self._reload_pending = False
                self.notifier.ready(self._status_line())
            elif self.ready:
                self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        s = self.status
        return (f"kid {self.kid_pid}: {s.get('children', 0)} children, "
                f"{s.get('connections', 0)} connections, {s.get('requests', 0)} requests, "
                f"{s.get('rps', 0)} req/s")

    def _on_kid_gone(self) -> None:
        self.kid_channel = None

    def _beat(self) -> None:
        self._heartbeat = self.loop.call_later(HEARTBEAT_INTERVAL, self._beat)
        if self.kid_channel is not None:
            self.kid_channel.send(Kind.PING)
        # Feed the watchdog only while the kid answers: a hung kid stops the
        # WATCHDOG=1 stream and systemd restarts the unit.
        limit = max(3 * HEARTBEAT_INTERVAL, self.notifier.watchdog_interval())
        if self.ready and time.monotonic() - self.last_pong < limit:
            self.notifier.watchdog()

    def kid_exited(self, status: int) -> None:
        text, code, sig = process.describe_status(status)
        lived = time.monotonic() - self.kid_started
        self.kid_pid = None
        if self.kid_channel is not None:
            self.kid_channel.close()
        if self.stopping is not None or code == 0 or sig in (signal.SIGTERM, signal.SIGINT):
            log.info("kid_exited", status=text, exit_code=code, signal=sig, lived=round(lived, 3))
            self.exit_code = 0 if (code == 0 or sig is not None) else code or 1
            self.loop.stop()
            return
        if lived < FAST_FAILURE:
            self.fast_failures += 1
        else:
            self.fast_failures = 0
        log.error("kid_died", status=text, exit_code=code, signal=sig, lived=round(lived, 3),
                  fast_failures=self.fast_failures)
        if self.fast_failures >= MAX_FAST_FAILURES:
            log.critical("giving_up", reason="Exiting due to repeated, frequent failures",
                         fast_failures=self.fast_failures)
            print("FATAL: labsquid: Exiting due to repeated, frequent failures", file=sys.stderr)
            self.exit_code = 1
            self.loop.stop()
            return
        self.ready = False
        self.notifier.status(f"restarting kid after it {text}")
        self.start_kid()

    # -- signals ------------------------------------------------------------
    def handle_chld(self, _signum: int) -> None:
        for pid, status in process.reap():
            stats.remove_segment(pid)  # left behind by a kid that was killed
            if pid == self.kid_pid:
                self.kid_exited(status)
            elif pid in self._retired:
                self._retired.pop(pid).close()
                log.info("retired_kid_exited", kid_pid=pid,
                         status=process.describe_status(status)[0])

    def handle_term(self, signum: int) -> None:
        self._stop(signal.SIGTERM if self.stopping is None else signal.SIGINT)

    def handle_int(self, _signum: int) -> None:
        self._stop(signal.SIGINT)

    def _stop(self, signum: int) -> None:
        first = self.stopping is None
        self.stopping = signum
        if first:
            self.notifier.stopping()
            lifetime = self.config.shutdown_lifetime
            # Tell systemd a long drain is expected, so it does not SIGKILL us early.
            self.notifier.extend_timeout(lifetime + 15)
            log.info("master_stopping", signal=signal.Signals(signum).name)
        for pid in self._retired:  # still draining after a port change
            os.kill(pid, signum)
        if self.kid_pid is None:
            self.loop.stop()
            return
        os.kill(self.kid_pid, signum)

    def handle_hup(self, _signum: int) -> None:
        if self.stopping is not None:
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reconfigure_refused", problem=str(problem))
            self.notifier.ready(self._status_line())
            return
        for warning in new.warnings:
            log.warning("config_directive_ignored", problem=str(warning))
        if _ports(self.config) != _ports(new):
            self._rebind(new)  # takes the new config only if it could bind
            return
        self.config = new
        if self.kid_pid is not None:
            self._reload_pending = True
            os.kill(self.kid_pid, signal.SIGHUP)
        else:
            self.notifier.ready(self._status_line())

    def _rebind(self, new: Config) -> None:
        """http_port changed: open the new set, then replace the kid gracefully."""
        try:
            # A port the new config drops is closed, unless systemd passed it:
            # systemd keeps listening there, so it must still be served.
            fresh = listeners.open_all(port_specs(new), self.listeners,
                                       serve_unnamed=self.activated)
        except OSError as exc:
            # The old config stays, so the next reload tries these ports again.
            log.error("reconfigure_bind_failed", error=str(exc))
            self.notifier.ready(self._status_line())
            return
        self.config = new
        for sock in self.listeners:
            if sock not in fresh:
                sock.close()
        self.listeners = fresh
        old_pid = self.kid_pid
        log.info("ports_changed_replacing_kid", listening=[str(listeners.address_of(s))
                                                           for s in fresh])
        self.kid_pid = None
        old_channel, self.kid_channel = self.kid_channel, None
        self.ready = False
        self.start_kid(stats_from=old_pid)  # before the old kid's exit unlinks its figures
        if old_pid is not None and old_channel is not None:
            # Kept open: its EOF would tell the old kid its master died, and
            # a SIGTERM after that would be its second (exit at once).  One
            # SIGTERM lets it finish its requests within shutdown_lifetime.
            old_channel.detach()
            self._retired[old_pid] = old_channel
            os.kill(old_pid, signal.SIGTERM)
        elif old_channel is not None:
            old_channel.close()

    def handle_usr1(self, _signum: int) -> None:
        """``-k rotate``: cache_log here (squid rotates it too, by
        ``logfile_rotate``), access.log in the kid."""
        path = os.environ.get(logsetup.CACHE_LOG_ENV)
        if path:
            from labsquid.logfile_daemon import rotate_files

            rotate_files(path, self.config.logfile_rotate)  # quiet about what is missing
            if logsetup.reopen_cache_log():
                self._give_to_effective_user(path)
                log.info("cache_log_rotated", path=path,
                         logfile_rotate=self.config.logfile_rotate)
        # access.log rotates whatever became of cache_log.
        if self.kid_pid is not None:
            os.kill(self.kid_pid, signal.SIGUSR1)

    def _give_to_effective_user(self, path: str) -> None:
        """A file we create as root for the kid and its children to reopen
        belongs to cache_effective_user, as the first one did (-z, start)."""
        user = self.config.cache_effective_user
        if os.geteuid() != 0 or not user:
            return
        try:
            pw = pwd.getpwnam(user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        except (KeyError, OSError) as exc:
            log.warning("cache_log_chown_failed", path=path, user=user, error=str(exc))
