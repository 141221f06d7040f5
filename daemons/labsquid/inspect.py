"""``labsquid -k status``: the live process tree, as ps and lsof would piece it together.

For the instance named by the PID file it prints every process — role, pid,
title, state, client connections — and each one's IPC file descriptors: the
socketpairs with the process and fd at the other end, the listening sockets,
the log file, the shared-memory segment.  Everything is read from ``/proc``
(through psutil) and from ``ss -x`` for the peers of unix sockets; nothing
is asked of labsquid itself, so it works on a hung instance too.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field

import psutil


@dataclass
class FdInfo:
    fd: int
    kind: str  # "socketpair", "listen", "tcp", "file", "pipe", "other"
    text: str


@dataclass
class ProcInfo:
    role: str
    pid: int
    ppid: int
    title: str
    state: str
    user: str
    connections: int
    fds: list[FdInfo] = field(default_factory=list)
    shm: list[str] = field(default_factory=list)


def tcp_connections(p: psutil.Process) -> list:
    """``net_connections`` (psutil >= 6) or ``connections`` (Debian 12's psutil 5.9)."""
    method = getattr(p, "net_connections", None) or p.connections
    return method(kind="tcp")


def role_of(title: str) -> str:
    if title.startswith("(logfile-daemon)"):
        return "logfile-daemon"
    if " worker-" in title.split(")")[0]:
        return "worker"
    if "--kid" in title:
        return "kid"
    return "master"


def _unix_peers() -> dict[int, int]:
    """inode → peer inode for every connected unix socket (from ``ss -x``)."""
    try:
        out = subprocess.run(["ss", "-x", "-a", "-n"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    peers = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        # Netid State Recv-Q Send-Q Local-Address Port Peer-Address Port
        if len(parts) >= 8 and parts[5].isdigit() and parts[7].isdigit():
            peers[int(parts[5])] = int(parts[7])
    return peers


def _socket_types() -> dict[int, str]:
    types = {}
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                kind = {"0001": "STREAM", "0002": "DGRAM", "0005": "SEQPACKET"}.get(parts[4], "?")
                types[int(parts[6])] = kind
    except OSError:
        pass
    return types


_SOCKET = re.compile(r"socket:\[(\d+)\]")


def collect(master_pid: int) -> list[ProcInfo]:
    master = psutil.Process(master_pid)
    procs = [master, *master.children(recursive=True)]
    owner: dict[int, tuple[int, int, str]] = {}  # socket inode → (pid, fd, role)
    infos: list[ProcInfo] = []
    links: dict[int, dict[int, str]] = {}
    for p in procs:
        try:
            title = " ".join(p.cmdline()).strip()
            info = ProcInfo(role_of(title), p.pid, p.ppid(), title, p.status(), p.username(),
                            0)
            conns = tcp_connections(p)
        except psutil.Error:
            continue
        info.connections = sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED)
        listen_fds = {c.fd: c for c in conns if c.status == psutil.CONN_LISTEN}
        tcp_fds = {c.fd for c in conns if c.status != psutil.CONN_LISTEN}
        fd_links = {}
        for name in sorted(os.listdir(f"/proc/{p.pid}/fd"), key=int):
            fd = int(name)
            try:
                target = os.readlink(f"/proc/{p.pid}/fd/{fd}")
            except OSError:
                continue
            fd_links[fd] = target
            m = _SOCKET.fullmatch(target)
            if m:
                owner[int(m.group(1))] = (p.pid, fd, info.role)
            if fd in listen_fds:
                a = listen_fds[fd].laddr
                info.fds.append(FdInfo(fd, "listen", f"TCP {a.ip}:{a.port} (LISTEN)"))
            elif fd in tcp_fds:
                continue  # client/origin connections: counted, not listed
            elif target.startswith("/") and not target.startswith("/dev/pts"):
                info.fds.append(FdInfo(fd, "file", target))
            elif target.startswith("pipe:"):
                info.fds.append(FdInfo(fd, "pipe", f"{target} {_pipe_end(p.pid, fd)}"))
        links[p.pid] = fd_links
        try:
            info.shm = sorted({m.path for m in p.memory_maps(grouped=True)
                               if m.path.startswith("/dev/shm/")})
        except psutil.Error:
            pass
        infos.append(info)
    peers, types = _unix_peers(), _socket_types()
    # A pipe's two ends share one inode: name the process holding the other
    # end (a pool child's access-log pipe to the kid, for one).
    pipe_ends: dict[str, list[tuple[int, int, str]]] = {}
    for info in infos:
        for fd, target in links[info.pid].items():
            if target.startswith("pipe:"):
                pipe_ends.setdefault(target, []).append((info.pid, fd, info.role))
    for info in infos:
        for f in info.fds:
            if f.kind == "pipe":
                target = f.text.split()[0]
                others = [e for e in pipe_ends.get(target, []) if e[:2] != (info.pid, f.fd)]
                f.text += "".join(f" <-> {role} {pid} fd {fd}" for pid, fd, role in others) \
                    or " <-> no peer in the tree"
    for info in infos:
        for fd, target in links[info.pid].items():
            m = _SOCKET.fullmatch(target)
            if not m or any(f.fd == fd for f in info.fds):
                continue
            inode = int(m.group(1))
            if inode not in types:
                continue  # a TCP socket
            peer = owner.get(peers.get(inode, -1))
            where = f"{peer[2]} {peer[0]} fd {peer[1]}" if peer else "no peer in the tree"
            info.fds.append(FdInfo(fd, "socketpair",
                                   f"unix {types[inode]} socket:[{inode}] <-> {where}"))
        info.fds.sort(key=lambda f: f.fd)
    return infos


def _pipe_end(pid: int, fd: int) -> str:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as fdinfo:
            flags = next((int(line.split()[1], 8) for line in fdinfo
                          if line.startswith("flags:")), 0)
    except (OSError, ValueError):
        return "(end unknown)"
    return "(write end)" if flags & os.O_WRONLY else "(read end)"


def render(infos: list[ProcInfo]) -> str:
    lines = []
    depth = {}
    for info in infos:
        depth[info.pid] = depth.get(info.ppid, -1) + 1
        indent = "   " * depth[info.pid]
        lines.append(f"{indent}{info.role} {info.pid} [{info.state}, {info.user}, "
                     f"{info.connections} connections] {info.title}")
        for f in info.fds:
            lines.append(f"{indent}    fd {f.fd:<3} {f.kind:<10} {f.text}")
        for path in info.shm:
            lines.append(f"{indent}    mmap       shm        {path}")
    return "\n".join(lines) + "\n"
