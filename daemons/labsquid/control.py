"""``-k`` commands and ``-z``: acting on an instance from the outside."""

from __future__ import annotations

import os
import pwd
import sys

from labsquid.config import Config
from labsquid.pidfile import read_running_pid


def send_signal(config: Config, command: str, signum: int) -> int:
    """squid's ``-k``: signal the PID in the PID file (``check`` sends signal 0)."""
    path = config.pid_filename
    if not path:
        print("labsquid: no pid_filename configured; cannot find the running instance",
              file=sys.stderr)
        return 1
    pid = read_running_pid(path)
    if pid is None:
        print(f"labsquid: ERROR: No running copy (no live instance holds {path})",
              file=sys.stderr)
        return 1
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        print(f"labsquid: ERROR: No running copy (PID {pid} from {path} is gone)",
              file=sys.stderr)
        return 1
    except PermissionError:
        print(f"labsquid: ERROR: not allowed to signal PID {pid}", file=sys.stderr)
        return 1
    if command == "check":
        print(f"labsquid is running: PID {pid}")
    return 0


def show_status(config: Config) -> int:
    """``-k status``: the live tree, read from /proc (see ``labsquid.inspect``)."""
    from labsquid import inspect

    pid = read_running_pid(config.pid_filename) if config.pid_filename else None
    if pid is None:
        print("labsquid: ERROR: No running copy", file=sys.stderr)
        return 1
    print(inspect.render(inspect.collect(pid)), end="")
    return 0


def config_dirs(config: Config) -> list[str]:
    """Every directory the config names for files labsquid writes."""
    paths = [config.pid_filename, config.cache_log]
    paths += [entry.path for entry in config.access_log if entry.module in ("daemon", "stdio")]
    dirs = []
    for path in paths:
        if path:
            d = os.path.dirname(os.path.abspath(path))
            if d not in dirs:
                dirs.append(d)
    return dirs


def create_dirs(config: Config, quiet: bool = False) -> int:
    """squid's ``-z``: create missing directories, owned by the effective user."""
    owner = None
    if os.geteuid() == 0 and config.cache_effective_user:
        pw = pwd.getpwnam(config.cache_effective_user)
        owner = (pw.pw_uid, pw.pw_gid)
    for d in config_dirs(config):
        if not os.path.isdir(d):
            os.makedirs(d, exist_ok=True)
            if owner is not None:
                os.chown(d, *owner)
            if not quiet:
                print(f"labsquid: created {d}")
    return 0
