"""Helpers for the resource-exhaustion tests (tests/test_exhaustion.py).

Everything here is real: a labsquid started under ``prlimit`` so that its
whole tree (master, kid, logfile daemon, pool children) inherits a small
``RLIMIT_NOFILE``; floods of real TCP connections; a tmpfs mounted as the log
folder; origins that stream a huge generated body or never answer at all; and
CPU and memory read from ``/proc`` with psutil.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from support.origin import TcpServer
from support.service import Labsquid


class LimitedLabsquid(Labsquid):
    """A labsquid whose master is exec'd by ``prlimit --nofile=N:N``: the limit is
    set before Python starts, so the kid (fork+exec of the master), the logfile
    daemon and every pool child inherit it, as with ``ulimit -n N`` in a shell.

    ``privileged=False`` also takes CAP_SYS_RESOURCE out of the bounding set
    (``setpriv``), so that, root or not, the tree cannot raise its hard limit —
    as under the systemd unit, which gives no capability at all."""

    def __init__(self, folder: Path, *, nofile: int, hard: int | None = None,
                 privileged: bool = True, **kwargs: object) -> None:
        self.nofile, self.hard = nofile, hard or nofile
        self.privileged = privileged
        super().__init__(folder, **kwargs)  # type: ignore[arg-type]

    def command(self, *args: str) -> list[str]:
        drop = [] if self.privileged else ["setpriv", "--bounding-set=-sys_resource", "--"]
        return [*drop, "prlimit", f"--nofile={self.nofile}:{self.hard}", "--",
                *super().command(*args)]


def nofile_limits(proc: psutil.Process) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a running process."""
    return proc.rlimit(psutil.RLIMIT_NOFILE)


def serving(ls: Labsquid) -> list[psutil.Process]:
    """The processes that accept and serve: the kid and its pool children."""
    kid = ls.kid()
    assert kid is not None, "no kid"
    return [kid, *ls.workers(kid)]


def identity(procs: list[psutil.Process]) -> set[tuple[int, float]]:
    """(pid, start time) of each process: a restarted one shows as a new pair."""
    return {(p.pid, p.create_time()) for p in procs}


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """user + system CPU time of ``procs`` so far."""
    total = 0.0
    for p in procs:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def cpu_share(procs: list[psutil.Process], seconds: float) -> float:
    """The share of one core ``procs`` used together over the next ``seconds``."""
    before, began = cpu_seconds(procs), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(procs) - before) / (time.monotonic() - began)


def rss(procs: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in procs)


def request_bytes(url: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {url} HTTP/1.1\r\nHost: h\r\n{extra}\r\n".encode()


class Flood:
    """``count`` client connections opened as fast as possible (non-blocking
    connects: the ones the proxy cannot take wait in its listen backlog) and
    held without sending anything until ``close``."""

    def __init__(self, port: int, count: int) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            self.socks.append(s)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()


def read_status(sock: socket.socket, deadline: float) -> int | str:
    """Read until a status line arrives (or the peer closes, or ``deadline``);
    returns the status code, or what happened instead."""
    data = b""
    while b"\r\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            return "timeout"
        except ConnectionResetError:
            return "reset"
        if not chunk:
            return "closed"
        data += chunk
    return int(data.split(b" ", 2)[1])


# -- a tmpfs as the log folder --------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` (root only); always unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                    "labsquid-test", str(path)], check=True, capture_output=True, text=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path, leave: int) -> None:
    """Write ``path`` until its file system is full, then give back ``leave`` bytes."""
    block = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                if os.write(fd, block) == 0:
                    break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)


# -- origins that misbehave ----------------------------------------------------

@dataclass
class StreamedConnection:
    sent: int = 0
    ended_at: float | None = None  # time.monotonic() when a send failed or all was sent
    error: str = ""


class StreamingOrigin(TcpServer):
    """Answers every request with ``size`` bytes of generated data (one 64 KiB
    buffer sent over and over, so nothing of that size is ever held), one
    thread per connection, and records how far each transfer got."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.transfers: list[StreamedConnection] = []
        super().__init__(backlog=16)

    def handle(self, conn: socket.socket) -> None:
        record = StreamedConnection()
        self.transfers.append(record)
        chunk = memoryview(b"g" * 65536)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    record.ended_at, record.error = time.monotonic(), "no request"
                    return
                head += data
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % self.size)
                while record.sent < self.size:
                    n = conn.send(chunk[: min(len(chunk), self.size - record.sent)])
                    record.sent += n
            except OSError as exc:
                record.error = errno.errorcode.get(exc.errno or 0, repr(exc))
            record.ended_at = time.monotonic()


class SilentOrigin(TcpServer):
    """Accepts connections, reads what comes, never answers; remembers when the
    proxy closed each one (its end of the read returned EOF or a reset)."""

    def __init__(self) -> None:
        self.closed_by_proxy = 0
        super().__init__(backlog=256)

    def handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
        with self._lock:
            self.closed_by_proxy += 1
