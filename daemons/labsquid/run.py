"""Starting the service: daemonise (or not), take the PID file, run the master.

Without ``--foreground`` or ``-N`` labsquid daemonises like squid: fork,
``setsid``, fork again, stdio to ``/dev/null``, structured logs to
``cache_log``.  The first parent waits (bounded) until the daemon holds the
PID file and its listening sockets, so ``labsquid`` returns non-zero when the
daemon could not start, and prints why (squid's ``FATAL:`` line) on the
terminal it was started from.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys

import structlog

from labsquid import listeners, process
from labsquid import log as logsetup
from labsquid.config import Config
from labsquid.pidfile import PidFile, PidFileError
from labsquid.settings import port_specs

log = structlog.get_logger()

DAEMON_START_WAIT = 10.0


def run_service(config: Config, path: str | None, argv: list[str],
                args: argparse.Namespace, level: str) -> int:
    status_w = None
    if not (args.foreground or args.no_daemon):
        status_w = _daemonise(config)
        if isinstance(status_w, int) and status_w < 0:
            return -status_w - 1  # we are the first parent: the daemon's start status
    logsetup.configure("master" if not args.no_daemon else "single", level)

    from labsquid.control import create_dirs

    create_dirs(config, quiet=True)  # what -z would make; a first run just works
    pidfile = None
    if config.pid_filename:
        pidfile = PidFile(config.pid_filename)
        try:
            pidfile.acquire()
        except PidFileError as exc:
            log.critical("pid_file_refused", error=str(exc))
            _fatal(status_w, str(exc))
            return 1
    try:
        activated = listeners.systemd_sockets()
        try:
            socks = listeners.open_all(port_specs(config), activated)
        except OSError as exc:
            log.critical("http_port_failed", error=str(exc))
            _fatal(status_w, f"Unable to open HTTP Socket: {exc.strerror or exc}")
            return 1
        _report(status_w, 0)
        raise_open_file_limit(config.max_filedescriptors)
        if args.no_daemon:
            return _run_single(config, path, socks)
        from labsquid.master import Master
        from labsquid.notify import Notifier

        return Master(config, path, list(argv), pidfile, Notifier()).run(socks, activated)
    finally:
        if pidfile is not None:
            pidfile.release()


def _fatal(status_fd: int | None, reason: str) -> None:
    """squid's last word: on stderr, and to the terminal a daemon started from."""
    message = f"FATAL: {reason}"
    print(message, file=sys.stderr)
    _report(status_fd, 1, message)


def raise_open_file_limit(wanted: int) -> None:
    """``max_filedescriptors``: raise RLIMIT_NOFILE to ``wanted``, as squid does at start.

    Done in the master before the kid is forked and exec'd, so the kid, the
    logfile daemon and the pool children all inherit it; it is read at start
    only (a reload does not change it; a restarted kid inherits it again).

    The limit is only ever raised: a soft limit already at ``wanted`` or above
    is left alone, without a system call (squid would lower it to the value,
    because it sizes its descriptor table from it; labsquid has no such table).
    Raising the soft limit up to the hard one needs no privilege.  Above the
    hard one it takes CAP_SYS_RESOURCE (which the systemd unit does not give):
    without it the soft limit goes as far as the hard one and a warning says
    what was applied.

    Under the unit's ``SystemCallFilter=~@resources`` this still works: with
    systemd 252 that group denies the ``setrlimit`` system call, but glibc's
    setrlimit() makes a ``prlimit64`` call, which ``@default`` allows (checked
    in a booted systemd 252).  Whatever refuses it, the failure is logged and
    the service goes on with the limit it has.
    """
    if wanted <= 0:
        return
    limit = resource.RLIMIT_NOFILE
    soft, hard = resource.getrlimit(limit)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    fits = hard == resource.RLIM_INFINITY or wanted <= hard
    try:
        resource.setrlimit(limit, (wanted, hard if fits else wanted))
        log.info("open_file_limit_raised", max_filedescriptors=wanted, soft=wanted,
                 hard=hard if fits else wanted, was=soft)
        return
    except (ValueError, OSError) as exc:  # ValueError: Python's word for EPERM here
        refused = str(exc)
    applied = soft
    if not fits and soft < hard:
        try:
            resource.setrlimit(limit, (hard, hard))
            applied = hard
        except (ValueError, OSError) as exc:
            refused += f"; raising the soft limit to the hard one: {exc}"
    log.warning("max_filedescriptors_not_applied", max_filedescriptors=wanted,
                soft=applied, hard=hard, was=soft, error=refused,
                hint="raise the hard limit (LimitNOFILE= in the systemd unit, ulimit -Hn)")


def _run_single(config: Config, path: str | None, socks: list[socket.socket]) -> int:
    """``-N``: this process is the kid too; nothing is restarted."""
    from labsquid.kid import Kid
    from labsquid.notify import Notifier

    notifier = Notifier()
    kid = Kid(config, socks, None, "labsquid", path)
    kid.on_ready = lambda: notifier.ready("serving")
    return kid.run()


def _daemonise(config: Config) -> int | None:
    """Fork into the background.

    Returns ``-(status+1)`` in the first parent, the status pipe's fd in the daemon.
    """
    read_fd, write_fd = os.pipe()
    pid = process.fork()
    if pid:
        os.close(write_fd)
        import select

        ready, _, _ = select.select([read_fd], [], [], DAEMON_START_WAIT)
        data = _read_all(read_fd) if ready else b""
        os.close(read_fd)
        code = data[0] if data else 1
        if not data:
            print("labsquid: the daemon did not report its start; see cache_log "
                  f"({config.cache_log})", file=sys.stderr)
        elif len(data) > 1:  # why it could not start
            print(data[1:].decode("utf-8", "replace"), file=sys.stderr)
        return -(code + 1)
    os.close(read_fd)
    os.setsid()
    if process.fork():
        os._exit(0)
    # stdin from /dev/null; stdout and stderr (the structured logs of the
    # master and, by inheritance, of the kid) append to cache_log.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    out = _open_cache_log(config)
    if config.cache_log:  # so that a rotation can reopen it (log.reopen_cache_log)
        os.environ[logsetup.CACHE_LOG_ENV] = os.path.abspath(config.cache_log)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    return write_fd


def _read_all(fd: int) -> bytes:
    """The daemon's status: a code byte and maybe a message, then EOF."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    return data


def _report(status_fd: int | None, code: int, message: str = "") -> None:
    if isinstance(status_fd, int) and status_fd >= 0:
        os.write(status_fd, bytes([code]) + message.encode("utf-8", "replace")[:4000])
        os.close(status_fd)


def _open_cache_log(config: Config) -> int:
    path = config.cache_log
    if not path:
        return os.open(os.devnull, os.O_WRONLY)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
