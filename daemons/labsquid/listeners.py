"""Listening sockets: bound once by the master, inherited by every kid.

The master binds (it may be root, for ports below 1024) or takes the sockets
systemd passed (``LISTEN_FDS``, socket activation), and hands them to each kid
it starts by inheritance, naming them in ``LABSQUID_LISTEN_FDS``.  A kid that
dies or reconfigures never closes them, so unlike squid no connection is
refused while labsquid restarts a kid or re-reads its config.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labsquid.eventloop import EventLoop

LISTEN_ENV = "LABSQUID_LISTEN_FDS"
BACKLOG = 1024
SD_LISTEN_FDS_START = 3


@dataclass(frozen=True)
class PortSpec:
    host: str  # "" for every address
    port: int
    reuseport: bool = False  # one of several SO_REUSEPORT sockets on this address

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host or '*'}:{self.port}"


def bind(spec: PortSpec, reuseport: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((spec.host, spec.port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def address_of(sock: socket.socket) -> PortSpec:
    host, port = sock.getsockname()[:2]
    return PortSpec("" if host in ("0.0.0.0", "::") else host, port)


def systemd_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation, if they are meant for us."""
    try:
        if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
            return []
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def open_all(specs: list[PortSpec], inherited: list[socket.socket] | None = None, *,
             serve_unnamed: list[socket.socket] | None = None) -> list[socket.socket]:
    """One socket per spec: an inherited one with the same address, else a new bind.

    Inherited sockets no spec names are served too (systemd's), or with
    ``serve_unnamed`` only those of them it lists (a reload keeps systemd's
    but drops the ports the old config had).

    ``reuseport`` specs of one address are bound as a SO_REUSEPORT group, where
    the kernel spreads connections itself. An inherited socket of that address
    (systemd's, without SO_REUSEPORT) cannot join a group: it is shared instead.
    """
    pool = list(inherited or [])
    result: list[socket.socket] = []
    for spec in specs:
        match = next((s for s in pool if _same(address_of(s), spec)), None)
        if match is not None:
            pool.remove(match)
            result.append(match)
            continue
        try:
            result.append(bind(spec, reuseport=spec.reuseport))
        except OSError as exc:
            first = next((s for s in result if _same(address_of(s), spec)), None)
            if not spec.reuseport or first is None:
                for sock in result:
                    if sock not in (inherited or []):
                        sock.close()
                where = f"{spec.host or '*'}:{spec.port}"
                raise OSError(exc.errno, f"{where}: {exc.strerror}") from exc
            result.append(first.dup())  # the same socket, shared, for this child too
    for extra in pool:  # activation sockets the config does not name: still serve them
        if serve_unnamed is None or extra in serve_unnamed:
            result.append(extra)
    return result


def _same(a: PortSpec, b: PortSpec) -> bool:
    return a.port == b.port and (a.host == b.host or {a.host, b.host} <= {"", "0.0.0.0", "::"})


def export(socks: list[socket.socket]) -> dict[str, str]:
    """Environment naming the fds a kid inherits."""
    return {LISTEN_ENV: ",".join(str(s.fileno()) for s in socks)}


def inherit() -> list[socket.socket]:
    """The kid's side of ``export``."""
    value = os.environ.pop(LISTEN_ENV, "")
    socks = []
    for item in filter(None, value.split(",")):
        fd = int(item)
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def stop_listening(loop: EventLoop, socks: list[socket.socket]) -> None:
    """A draining process lets go of its copies of the listening sockets at
    once: the master's (and the next kid's) keep a configured port open,
    and a port a reload dropped closes now, not when the last request of
    the old kid ends."""
    for sock in socks:
        loop.remove(sock.fileno())
        sock.close()
