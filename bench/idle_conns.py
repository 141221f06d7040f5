"""10,000 idle keep-alive client connections through labsquid: are they all
served, kept, and what does each one cost in memory?

    .venv/bin/python bench/idle_conns.py                  # 10,000 connections
    .venv/bin/python bench/idle_conns.py --count 2000 --json

It starts a small origin (asyncio, in a thread of this process) and a real
labsquid (``python -m labsquid -f CONF --foreground -sYC``, ``pool_dispatch``
notify with 2 pool children by default), with the open-file limit raised to
the hard limit for both labsquid and this client.  Then:

1. warm-up: one batch of connections, one request each, closed again;
   memory of the serving processes (kid + pool children) is read: *before*;
2. opens ``--count`` connections in batches of ``--batch`` (non-blocking
   connects, one epoll loop), makes **one keep-alive request** on each, checks
   the 200 and its body, and keeps every connection open and idle;
3. after ``--settle`` seconds, reads memory again: *after*; checks every
   connection is still open (a non-blocking ``MSG_PEEK`` that would block);
4. with ``--reload``: sends SIGHUP and times how long the old pool children
   take to hand every connection over to the new ones and exit; checks again
   that every connection is still open (a reload closes none);
5. sends a second request on ``--sample`` random connections: all must get 200.

Memory is RSS and USS (``psutil.memory_full_info``: pages only that process
holds, so what the forked children share with the kid is not counted twice),
summed over the kid and its pool children.  Per idle connection = (after -
before) / count.  Kernel socket buffers are not in either figure.

labsquid settings that matter here: ``pool_max_connections`` (4096 per pool
child by default: raised to ``count``, so a child is never full);
``client_persistent_connections`` is on by default; an idle keep-alive client
connection is closed after ``client_idle_pconn_timeout`` (squid's default,
2 minutes), so the whole run must stay well inside that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BODY = b"idle-bench\n"


def log(msg: str) -> None:
    print(f"[idle_conns {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    """Soft open-file limit up to the hard one (no privilege needed); returns it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the origin: one short keep-alive reply per request ------------------------

class Origin:
    def __init__(self) -> None:
        self.port = 0
        self.requests = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0, backlog=1024))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(BODY), BODY))
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


# -- labsquid -----------------------------------------------------------------

class Proxy:
    def __init__(self, folder: Path, count: int, dispatch: str, pool_size: int,
                 python: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.pool_size = pool_size if dispatch != "serial" else 0
        (folder / "logs").mkdir()
        self.conf = folder / "labsquid.conf"
        self.conf.write_text(
            f"http_port 127.0.0.1:{self.port}\n"
            f"pid_filename {folder}/labsquid.pid\n"
            f"cache_log {folder}/logs/cache.log\n"
            f"access_log daemon:{folder}/logs/access.log squid\n"
            f"pool_dispatch {dispatch}\n"
            f"pool_size {max(pool_size, 1)}\n"
            f"pool_max_connections {count + 100}\n"
            "client_persistent_connections on\n"
            "shutdown_lifetime 1 second\n"
            "http_access allow localhost\n"
            "http_access deny all\n")
        self.stderr = open(folder / "stderr.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python, "-m", "labsquid", "-f", str(self.conf), "--foreground", "-sYC"],
            stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr, cwd=folder,
            preexec_fn=raise_nofile)  # inherited by the kid and the pool children
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"labsquid exited {self.proc.returncode}: "
                                   + (self.folder / "stderr.log").read_text()[-2000:])
            text = (self.folder / "stderr.log").read_text(errors="replace")
            kid = self.kid()
            if ("service_ready" in text and kid is not None
                    and len(self.workers(kid)) >= self.pool_size):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("labsquid did not become ready")
            time.sleep(0.05)

    def kid(self) -> psutil.Process | None:
        for p in psutil.Process(self.proc.pid).children():
            if "--kid" in " ".join(p.cmdline()):
                return p
        return None

    def workers(self, kid: psutil.Process) -> list[psutil.Process]:
        return [p for p in kid.children() if "worker-" in " ".join(p.cmdline())]

    def serving(self) -> list[psutil.Process]:
        kid = self.kid()
        assert kid is not None
        return [kid, *self.workers(kid)]

    def clients_of(self, proc: psutil.Process) -> int:
        """Established client connections that ``proc`` holds."""
        # net_connections from psutil 6; Debian 12's psutil 5.9 calls it connections.
        conns = (getattr(proc, "net_connections", None) or proc.connections)("tcp")
        return sum(1 for c in conns if c.laddr and c.laddr.port == self.port
                   and c.status == psutil.CONN_ESTABLISHED)

    def memory(self) -> tuple[int, int]:
        """(RSS, USS) summed over the kid and its pool children."""
        rss = uss = 0
        for p in self.serving():
            info = p.memory_full_info()
            rss += info.rss
            uss += info.uss
        return rss, uss

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            for p in [psutil.Process(self.proc.pid),
                      *psutil.Process(self.proc.pid).children(recursive=True)]:
                p.kill()
            code = self.proc.wait(5)
        self.stderr.close()
        return code


# -- the client: many connections, one epoll loop --------------------------------

class Conn:
    __slots__ = ("sock", "buf", "status", "body_ok", "want")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.status = 0
        self.body_ok = False
        self.want = b""  # the request still to send


def _complete(conn: Conn) -> bool:
    """True once a whole response is in ``buf`` (status and body checked)."""
    head, sep, rest = conn.buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(rest) < length:
        return False
    conn.status = int(head.split(b" ", 2)[1])
    conn.body_ok = rest[:length] == BODY
    conn.buf = rest[length:]
    return True


def exchange(conns: list[Conn], requests: list[bytes], port: int | None,
             timeout: float) -> None:
    """Connect (when ``port`` is given), send one request on each, read one
    response on each; the connections stay open."""
    ep = select.epoll()
    by_fd: dict[int, Conn] = {}
    for conn, req in zip(conns, requests, strict=True):
        conn.want, conn.status, conn.body_ok = req, 0, False
        if port is not None:
            conn.sock.connect_ex(("127.0.0.1", port))
        by_fd[conn.sock.fileno()] = conn
        ep.register(conn.sock.fileno(), select.EPOLLOUT)
    left = len(conns)
    deadline = time.monotonic() + timeout
    try:
        while left and time.monotonic() < deadline:
            for fd, mask in ep.poll(0.5):
                conn = by_fd[fd]
                try:
                    if mask & select.EPOLLOUT and conn.want:
                        conn.want = conn.want[conn.sock.send(conn.want):]
                        if not conn.want:
                            ep.modify(fd, select.EPOLLIN)
                        continue
                    data = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    conn.status = -1  # closed or reset before a whole response
                else:
                    conn.buf += data
                    if not _complete(conn):
                        continue
                ep.unregister(fd)
                left -= 1
    finally:
        ep.close()


def still_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read and no EOF: open and idle
    except OSError:
        return False


@dataclass
class Result:
    count: int
    dispatch: str
    pool_size: int  # 0 in serial mode: the kid serves
    served: int  # first request answered 200 with the right body
    still_open: int  # after the idle period
    sample: int
    sample_served: int  # second request on a random sample
    rss_before: int
    rss_after: int
    uss_before: int
    uss_after: int
    rss_per_conn: float
    uss_per_conn: float
    connections_per_process: list[int]
    open_seconds: float  # time to open and serve all of them
    reload_seconds: float | None  # --reload: SIGHUP until only new pool children are left
    open_after_reload: int | None  # --reload: connections still open then
    connections_per_new_process: list[int] | None  # --reload: as moved to the new children
    total_seconds: float
    origin_requests: int
    proxy_exit: int


def run(count: int, batch: int, sample: int, settle: float, dispatch: str, pool_size: int,
        python: str = sys.executable, reload: bool = False) -> Result:
    began = time.monotonic()
    hard = raise_nofile()
    if hard < count + 200:
        raise SystemExit(f"open-file hard limit {hard} is too low for {count} connections")
    origin = Origin()
    folder = Path(tempfile.mkdtemp(prefix="labsquid-idle-"))
    proxy = Proxy(folder, count, dispatch, pool_size, python)
    conns: list[Conn] = []
    try:
        def url(tag: str) -> bytes:
            return (f"GET http://127.0.0.1:{origin.port}/idle/{tag} HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:{origin.port}\r\n\r\n").encode()

        def new_conns(n: int) -> list[Conn]:
            made = []
            for _ in range(n):
                s = socket.socket()
                s.setblocking(False)
                made.append(Conn(s))
            return made

        # 1. warm-up, then the baseline
        warm = new_conns(min(batch, count))
        exchange(warm, [url(f"warm{i}") for i in range(len(warm))], proxy.port, 30)
        for c in warm:
            c.sock.close()
        time.sleep(1.0)
        rss_before, uss_before = proxy.memory()
        log(f"labsquid up ({dispatch}, pool {pool_size}), baseline RSS "
            f"{rss_before / 2**20:.1f} MiB, USS {uss_before / 2**20:.1f} MiB")

        # 2. open them all, one request each, keep them
        opened_at = time.monotonic()
        for start in range(0, count, batch):
            group = new_conns(min(batch, count - start))
            exchange(group, [url(str(start + i)) for i in range(len(group))], proxy.port, 60)
            conns += group
        open_seconds = time.monotonic() - opened_at
        served = sum(1 for c in conns if c.status == 200 and c.body_ok)
        log(f"{len(conns)} connections opened, {served} served, in {open_seconds:.1f}s")

        # 3. idle
        time.sleep(settle)
        rss_after, uss_after = proxy.memory()
        kid = proxy.kid()
        assert kid is not None
        per_process = [proxy.clients_of(p) for p in proxy.workers(kid) or [kid]]
        open_now = sum(1 for c in conns if still_open(c.sock))
        log(f"after {settle:.0f}s idle: {open_now} still open, RSS {rss_after / 2**20:.1f} MiB, "
            f"USS {uss_after / 2**20:.1f} MiB; tcp sockets per pool child {per_process}")

        # 4. a reload: every connection moves to the new generation
        reload_seconds = open_after_reload = per_new = None
        if reload:
            reload_seconds, per_new = reload_and_wait(proxy, count)
            open_after_reload = sum(1 for c in conns if still_open(c.sock))
            log(f"reload: done after {reload_seconds} s, {open_after_reload} still open; "
                f"tcp sockets per new pool child {per_new}")

        # 5. a second request on a sample
        picked = random.Random(1).sample(conns, min(sample, len(conns)))
        exchange(picked, [url(f"again{i}") for i in range(len(picked))], None, 30)
        sample_served = sum(1 for c in picked if c.status == 200 and c.body_ok)
        log(f"second request: {sample_served}/{len(picked)} served")
    finally:
        for c in conns:
            c.sock.close()
        code = proxy.stop()
        origin.stop()
    return Result(
        count=count, dispatch=dispatch, pool_size=proxy.pool_size, served=served,
        still_open=open_now, sample=len(picked), sample_served=sample_served,
        rss_before=rss_before, rss_after=rss_after, uss_before=uss_before,
        uss_after=uss_after, rss_per_conn=(rss_after - rss_before) / count,
        uss_per_conn=(uss_after - uss_before) / count, connections_per_process=per_process,
        open_seconds=round(open_seconds, 2), reload_seconds=reload_seconds,
        open_after_reload=open_after_reload, connections_per_new_process=per_new,
        total_seconds=round(time.monotonic() - began, 2),
        origin_requests=origin.requests, proxy_exit=code)


def reload_and_wait(proxy: Proxy, count: int, timeout: float = 30.0
                    ) -> tuple[float | None, list[int]]:
    """SIGHUP; (seconds until only new pool children are left and they hold
    ``count`` connections, or None if that did not happen within ``timeout``;
    the connections each new child holds then)."""
    kid = proxy.kid()
    assert kid is not None
    old = {p.pid for p in proxy.workers(kid)}
    log_file = proxy.folder / "stderr.log"
    reloads = log_file.read_text(errors="replace").count('"reconfigured"')
    began = time.monotonic()
    proxy.proc.send_signal(signal.SIGHUP)
    while not proxy.pool_size:  # serial: the kid reconfigures in place
        if log_file.read_text(errors="replace").count('"reconfigured"') > reloads:
            return round(time.monotonic() - began, 2), [proxy.clients_of(kid)]
        if time.monotonic() - began > timeout:
            return None, [proxy.clients_of(kid)]
        time.sleep(0.02)
    while True:
        pids = [p for p in proxy.workers(kid) if p.pid not in old]
        left = [p for p in proxy.workers(kid) if p.pid in old]
        if not left and len(pids) >= proxy.pool_size:
            held = [proxy.clients_of(p) for p in pids]
            if sum(held) >= count:
                return round(time.monotonic() - began, 2), held
        if time.monotonic() - began > timeout:  # reported as not done: None
            log(f"after {timeout:.0f}s: old children {[p.pid for p in left]} still there, "
                f"new ones hold {[proxy.clients_of(p) for p in pids]}")
            return None, [proxy.clients_of(p) for p in pids]
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500,
                        help="connections opened and served at a time (under the backlog)")
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--dispatch", default="notify")
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--reload", action="store_true",
                        help="reload while they are idle: every one must stay open")
    args = parser.parse_args()
    if not os.path.exists(args.python):
        args.python = sys.executable
    result = run(args.count, args.batch, args.sample, args.settle, args.dispatch,
                 args.pool_size, args.python, args.reload)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"{result.served}/{result.count} connections served, {result.still_open} still "
              f"open after idling, second request {result.sample_served}/{result.sample}; "
              f"memory per idle connection: RSS {result.rss_per_conn / 1024:.1f} KiB, "
              f"USS {result.uss_per_conn / 1024:.1f} KiB ({result.dispatch}, kid + "
              f"{result.pool_size} pool children: RSS {result.rss_before / 2**20:.1f} -> "
              f"{result.rss_after / 2**20:.1f} MiB); {result.total_seconds:.0f}s")
        if result.reload_seconds is not None:
            where = ("kept by the kid, which reconfigures in place" if not result.pool_size
                     else f"moved to the new pool children {result.connections_per_new_process}")
            print(f"reload: {result.open_after_reload}/{result.count} still open, {where}, "
                  f"in {result.reload_seconds} s")
    ok = (result.served == result.count == result.still_open
          and result.sample_served == result.sample
          and result.open_after_reload in (None, result.count)
          and (result.reload_seconds is not None or result.open_after_reload is None))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
