"""Starting a real labsquid for a test, and looking at it the way a user would.

``Labsquid`` writes a config into the test's folder (a port picked free, PID
file and logs beside it), starts ``python -m labsquid -f CONF --foreground
-sYC`` as a real process tree, and waits until the port answers and the tree
is complete.  Nothing is mocked: the tests then talk to it with sockets,
``http.client`` and ``curl``, signal it, and read its files and ``/proc``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

DEFAULT_RULES = """\
acl SSL_ports port 443
acl Safe_ports port 80 21 443 70 210 1025-65535 280 488 591 777
acl CONNECT method CONNECT
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow localhost manager
http_access deny manager
http_access allow localhost
http_access deny all
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_sockets(port: int) -> list[str]:
    """The listening TCP sockets on ``port``, as ``ss -ltn`` lists them (one line each)."""
    out = subprocess.run(["ss", "-ltn", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if "LISTEN" in line]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = ""):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Labsquid:
    def __init__(self, folder: Path, *, dispatch: str = "serial", pool_size: int | str = 2,
                 extra: str = "", rules: str = DEFAULT_RULES, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.conf = folder / "labsquid.conf"
        self.pidfile = folder / "labsquid.pid"
        self.access_log = folder / "logs" / "access.log"
        self.cache_log = folder / "logs" / "cache.log"
        self.stderr_path = folder / "stderr.log"
        self.proc: subprocess.Popen | None = None
        self.dispatch = dispatch
        self.pool_size = pool_size
        self.write_config(extra=extra, rules=rules)

    def config_text(self, extra: str = "", rules: str = DEFAULT_RULES) -> str:
        return (
            f"http_port 127.0.0.1:{self.port}\n"
            f"pid_filename {self.pidfile}\n"
            f"cache_log {self.cache_log}\n"
            f"access_log daemon:{self.access_log} squid\n"
            f"pool_dispatch {self.dispatch}\n"
            f"pool_size {self.pool_size}\n"
            "shutdown_lifetime 2 seconds\n"
            "visible_hostname labsquid.test\n"
            f"{rules}{extra}\n"
        )

    def write_config(self, extra: str = "", rules: str = DEFAULT_RULES,
                     text: str | None = None) -> None:
        self.conf.write_text(text if text is not None else self.config_text(extra, rules))

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "labsquid", "-f", str(self.conf), *args]

    def start(self, *args: str, wait: bool = True) -> Labsquid:
        (self.folder / "logs").mkdir(exist_ok=True)
        argv = self.command(*(args or ("--foreground", "-sYC")))
        self.stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.stderr,
                                     stderr=self.stderr, cwd=self.folder)
        self.cpus_at_start = len(os.sched_getaffinity(self.proc.pid))
        if wait:
            self.wait_ready()
        return self

    def run(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        """A one-shot command against this instance (``-k rotate``, ``-k parse``…)."""
        return subprocess.run(self.command(*args), capture_output=True, text=True,
                              timeout=timeout, cwd=self.folder)

    # -- the process tree -----------------------------------------------------
    @property
    def master(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def kid(self) -> psutil.Process | None:
        kids = [p for p in self.master.children() if "--kid" in " ".join(_cmdline(p))]
        return kids[0] if kids else None

    def logfile_daemon(self, kid: psutil.Process | None = None) -> psutil.Process | None:
        kid = kid or self.kid()
        if kid is None:
            return None
        found = [p for p in kid.children() if "(logfile-daemon)" in " ".join(_cmdline(p))]
        return found[0] if found else None

    def workers(self, kid: psutil.Process | None = None) -> list[psutil.Process]:
        kid = kid or self.kid()
        if kid is None:
            return []
        return [p for p in kid.children() if "worker-" in " ".join(_cmdline(p))]

    def expected_workers(self) -> int:
        """``pool_size``; for ``auto``, the CPUs the master could run on when it
        started (it counts once)."""
        if self.pool_size == "auto":
            return self.cpus_at_start
        return self.pool_size

    def tree_complete(self) -> bool:
        try:
            kid = self.kid()
            if kid is None or self.logfile_daemon(kid) is None:
                return False
            if self.dispatch != "serial" and len(self.workers(kid)) < self.expected_workers():
                return False
            return True
        except psutil.Error:
            return False

    def listening(self) -> bool:
        """Whether the port listens.  Asked of ``ss``, not by connecting: a
        probe that connects and sends nothing is a client squid logs (as
        ``error:transaction-end-before-headers``), and so does labsquid."""
        return bool(listening_sockets(self.port))

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"labsquid exited with {self.proc.returncode}:\n"
                                     + self.stderr_text())
            return "service_ready" in self.stderr_text() and self.tree_complete() \
                and self.listening()
        wait_for(ready, timeout, what="labsquid to be ready")

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_tree()
                raise
        self.stderr.close()
        return self.proc.returncode

    def kill_tree(self) -> None:
        if self.proc is None:
            return
        try:
            procs = [self.master, *self.master.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(5)

    def access_lines(self) -> list[str]:
        lines = []
        for path in sorted(self.access_log.parent.glob(self.access_log.name + "*")):
            lines += path.read_text().splitlines()
        return lines


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []
