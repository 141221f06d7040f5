"""Where the config comes from, and what the processes read off it.

``labsquid`` without ``-f`` reads ``/etc/labsquid/labsquid.conf``; when that
file does not exist (a developer's checkout), it runs the embedded default:
loopback port 3128, PID file and logs under ``var/`` in the current folder.
"""

from __future__ import annotations

import dataclasses
import os

from labsquid.config import EMBEDDED_DEFAULT, Config, load, parse_text
from labsquid.listeners import PortSpec

DEFAULT_CONFIG = "/etc/labsquid/labsquid.conf"


def config_path(explicit: str | None) -> str | None:
    """The file to read, or None for the embedded default.

    Absolute: the kid reads it again on every reload from ``/`` (see
    ``absolute_paths``), so ``-f labsquid.conf`` must mean the starting folder's."""
    if explicit:
        return os.path.abspath(explicit)
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def load_config(path: str | None, base: str | None = None) -> Config:
    """The config at ``path`` (None: the embedded default), its relative file
    names made absolute against ``base`` (default: the current folder)."""
    config = load(path) if path else parse_text(EMBEDDED_DEFAULT, "<embedded default>")
    return absolute_paths(config, base or os.getcwd())


def absolute_paths(config: Config, base: str) -> Config:
    """Relative file names, resolved against the starting folder ``base``.

    The kid works from ``/`` (an unprivileged user may not be able to enter
    the folder it was started from), so nothing may depend on the cwd later:
    on a reload it passes the folder it started in.
    """
    def fix(path: str | None) -> str | None:
        return os.path.normpath(os.path.join(base, path)) if path else path

    logs = tuple(dataclasses.replace(e, path=fix(e.path)) for e in config.access_log)
    return dataclasses.replace(
        config, pid_filename=fix(config.pid_filename), cache_log=fix(config.cache_log),
        access_log=logs, hosts_file=fix(config.hosts_file))


def port_specs(config: Config) -> list[PortSpec]:
    """The listening sockets the master opens for this config.

    ``pool_dispatch reuseport`` needs one SO_REUSEPORT socket per pool child and
    port (child *i* gets socket *i* of each port, see ``pool.listener_groups``);
    the master binds them all, so children need no privileges to bind.
    """
    if config.pool_dispatch != "reuseport":
        return [PortSpec(p.host or "", p.port) for p in config.http_port]
    return [PortSpec(p.host or "", p.port, reuseport=True)
            for p in config.http_port for _ in range(pool_size(config))]


def pool_size(config: Config) -> int:
    """``pool_size``; for ``auto``, one child per CPU this process may run on
    (what ``taskset`` or a cpuset allows, as nginx counts for
    ``worker_processes auto``), not per CPU in the machine."""
    return config.pool_size or usable_cpus()


CPUS_ENV = "LABSQUID_USABLE_CPUS"  # the master's count, for the kid it starts
_usable_cpus: int | None = None


def usable_cpus() -> int:
    """CPUs this process may run on, counted once.  The master counts and every
    kid it starts takes that figure (``adopt_usable_cpus``): an affinity changed
    later (``taskset -p``) must not make a reload or a restarted kid size the
    pool differently from the sockets the master bound for it (reuseport)."""
    global _usable_cpus
    if _usable_cpus is None:
        _usable_cpus = len(os.sched_getaffinity(0)) or 1
    return _usable_cpus


def adopt_usable_cpus(value: str | None) -> None:
    """The kid's side: its master's count (``CPUS_ENV``), when it passed one."""
    global _usable_cpus
    if value is not None and value.isdecimal() and int(value) > 0:
        _usable_cpus = int(value)
