"""Chaos under load: client threads with unique request ids, a seeded fault driver,
and samples of a process's descriptors and memory.

``Clients`` runs a few threads, each sending requests through the proxy on a
fresh connection, every one with a unique id in its URL (``/id/<thread>-<n>``),
and records what each request got: a 200 with the origin's body, another
status, or an exception.  ``ChaosDriver`` does something nasty to a running
``Labsquid`` at random moments (``random.Random(seed)``) and keeps a timeline,
so a failure can be set beside the event that preceded it.

The driver's actions are its methods named in ``weights``: a flavour for another
setting (``tests/test_chaos_systemd.py`` reloads with ``systemctl reload`` and
rotates with ``logrotate``) subclasses it, adds its own methods and weights, and
may watch the service after each event in ``after_event``.  ``settled`` and the
driver only need a ``ProcessTree``: a ``Labsquid``, or the same tree seen from
elsewhere (a systemd unit's processes, by their host PIDs).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import psutil

from support.origin import OriginServer
from support.service import Labsquid, wait_for

# What a client sees when the process holding its connection is killed: the
# kernel closes the socket (FIN, or RST when our request was still unread).
CUT_OFF = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
           http.client.RemoteDisconnected, http.client.IncompleteRead)


class QuietOrigin(OriginServer):
    """The test origin, without a traceback on stderr each time a killed pool child
    leaves its upstream connection reset (that is the point of the exercise)."""

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Outcome:
    url: str
    started: float  # time.monotonic()
    ended: float
    status: int | None = None  # None: no response (see ``error``)
    error: BaseException | None = None
    body_ok: bool = False
    via: str | None = None  # the response's Via field: names the config's visible_hostname

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body_ok

    @property
    def cut_off(self) -> bool:
        """The connection was reset or hit EOF before the response was whole."""
        return isinstance(self.error, CUT_OFF)

    @property
    def http_error(self) -> bool:
        """A whole response came back, but not the origin's 200 for this id."""
        return self.error is None and not self.ok


class Clients:
    """``count`` threads, each sending one request per fresh connection until stopped.

    ``thread_setup``, when given, runs first in each thread: e.g. to move the thread
    into a container's network namespace, where the proxy's port is."""

    def __init__(self, proxy_port: int, origin, count: int = 4, timeout: float = 20.0,
                 thread_setup: Callable[[], object] | None = None) -> None:
        self.proxy_port, self.origin, self.timeout = proxy_port, origin, timeout
        self.thread_setup = thread_setup
        self.outcomes: list[list[Outcome]] = [[] for _ in range(count)]
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                         name=f"chaos-client-{i}") for i in range(count)]

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(self.timeout + 10)
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"client threads still stuck in a request: {alive}"

    def _run(self, index: int) -> None:
        if self.thread_setup is not None:
            self.thread_setup()
        n = 0
        record = self.outcomes[index]
        while not self._stop.is_set():
            n += 1
            path = f"/id/{index}-{n}"
            record.append(self.one(self.origin.url(path), path))

    def one(self, url: str, path: str) -> Outcome:
        out = Outcome(url, time.monotonic(), 0.0)
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=self.timeout)
        try:
            conn.request("GET", url)
            resp = conn.getresponse()
            out.status = resp.status
            out.via = resp.getheader("Via")
            body = resp.read()
            out.body_ok = body == f"path {path}\n".encode()
        except Exception as exc:  # noqa: BLE001 - every failure is recorded
            out.error = exc
        finally:
            conn.close()
            out.ended = time.monotonic()
        return out

    # -- what happened ----------------------------------------------------------
    def all(self) -> list[Outcome]:
        return [o for per_thread in self.outcomes for o in per_thread]

    def answered(self) -> int:
        return sum(1 for per_thread in self.outcomes for o in per_thread if o.ok)


class ProcessTree(Protocol):
    """What ``settled`` and ``ChaosDriver`` look at: the master, its kid, the kid's
    logfile daemon and pool workers (``Labsquid`` is one; the hup and usr1 actions
    also need its ``write_config`` and ``signal``)."""

    pool_size: int

    @property
    def master(self) -> psutil.Process: ...

    def kid(self) -> psutil.Process | None: ...

    def logfile_daemon(self, kid: psutil.Process | None = None) -> psutil.Process | None: ...

    def workers(self, kid: psutil.Process | None = None) -> list[psutil.Process]: ...


@dataclass
class Sample:
    fds: int
    rss: int

    @classmethod
    def of(cls, proc: psutil.Process) -> Sample:
        return cls(proc.num_fds(), proc.memory_info().rss)

    def __str__(self) -> str:
        return f"{self.fds} fds, {self.rss / 2**20:.1f} MiB"


def settled(ls: ProcessTree, timeout: float = 30.0) -> tuple[psutil.Process, psutil.Process]:
    """Wait until the tree is whole and quiet: the daemon, exactly ``pool_size``
    workers (no draining generation left, no respawn pending) and a kid whose
    descriptor count holds still for half a second.  Returns (master, kid)."""
    def whole() -> psutil.Process | None:
        try:
            kid = ls.kid()
            if kid is None or ls.logfile_daemon(kid) is None:
                return None
            workers = ls.workers(kid)
            if len(workers) != ls.pool_size or len(kid.children()) != ls.pool_size + 1:
                return None
            return kid
        except psutil.Error:
            return None

    def quiet() -> psutil.Process | None:
        kid = whole()
        if kid is None:
            return None
        try:
            before = Sample.of(kid).fds, Sample.of(ls.master).fds
            time.sleep(0.5)
            after = Sample.of(kid).fds, Sample.of(ls.master).fds
        except psutil.Error:
            return None
        return kid if before == after and whole() is not None else None

    kid = wait_for(quiet, timeout, interval=0.1, what="the tree to settle")
    return ls.master, kid


def events(ls: Labsquid, name: str) -> list[dict]:
    """The structured log events called ``name`` in the instance's stderr."""
    found = []
    for line in ls.stderr_text().splitlines():
        if f'"{name}"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


@dataclass
class ChaosDriver:
    ls: ProcessTree  # a Labsquid for the hup and usr1 actions
    good_config: str
    broken_config: str
    seed: int
    gap: tuple[float, float] = (0.3, 0.8)
    weights: dict[str, int] = field(default_factory=lambda: {
        "kill_worker": 3, "kill_logfile_daemon": 2, "hup": 3, "usr1": 2})
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    seen: set[tuple[int, float]] = field(default_factory=set)  # (pid, create_time)
    worker_kills: list[tuple[float, float]] = field(default_factory=list)  # before, after

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._next_hup_good = True
        self._reloads_expected = 0

    def note_tree(self) -> None:
        """Remember every process of the tree, to check at the end that none is left."""
        try:
            for p in [self.ls.master, *self.ls.master.children(recursive=True)]:
                try:
                    self.seen.add((p.pid, p.create_time()))
                except psutil.Error:
                    pass
        except psutil.Error:
            pass

    def run(self, duration: float) -> None:
        end = time.monotonic() + duration
        self.note_tree()
        names, weights = zip(*self.weights.items(), strict=True)
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(*self.gap))
            action = self.rng.choices(names, weights)[0]
            detail = getattr(self, action)()
            self.timeline.append((time.monotonic(), action, detail))
            self.note_tree()
            self.after_event(action, detail)
        self.finish_reloads()

    def after_event(self, action: str, detail: str) -> None:
        """Called after each event; a flavour may look at the service here."""

    # -- the events -------------------------------------------------------------
    def kill_worker(self) -> str:
        workers = self.ls.workers()
        if not workers:
            self.counts["kill_worker_none"] += 1
            return "no worker to kill"
        victim = self.rng.choice(sorted(workers, key=lambda p: p.pid))
        before = time.monotonic()
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return f"worker {victim.pid} already gone"
        self.worker_kills.append((before, time.monotonic()))
        self.counts["kill_worker"] += 1
        return f"SIGKILL worker {victim.pid}"

    def kill_logfile_daemon(self) -> str:
        daemon = self.ls.logfile_daemon()
        if daemon is None:
            self.counts["kill_logfile_daemon_none"] += 1
            return "no logfile daemon to kill"
        try:
            daemon.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return f"logfile daemon {daemon.pid} already gone"
        self.counts["kill_logfile_daemon"] += 1
        return f"SIGKILL logfile daemon {daemon.pid}"

    def hup(self) -> str:
        # The kid re-reads the file after the master validated it: do not
        # rewrite it under a reload the kid has not done yet.
        self.finish_reloads()
        good, self._next_hup_good = self._next_hup_good, not self._next_hup_good
        self.ls.write_config(text=self.good_config if good else self.broken_config)
        self.ls.signal(signal.SIGHUP)
        if good:
            self._reloads_expected += 1
            self.counts["hup_good"] += 1
            return "SIGHUP, good config"
        self.counts["hup_broken"] += 1
        return "SIGHUP, broken config"

    def usr1(self) -> str:
        self.ls.signal(signal.SIGUSR1)
        self.counts["usr1"] += 1
        return "SIGUSR1"

    def finish_reloads(self, timeout: float = 15.0) -> None:
        wait_for(lambda: len(events(self.ls, "reconfigured")) >= self._reloads_expected,
                 timeout, interval=0.05, what=f"{self._reloads_expected} reloads by the kid")

    # -- afterwards -------------------------------------------------------------
    def left_running(self) -> list[str]:
        """Processes of the tree seen during the run that still exist (zombies included)."""
        left = []
        for pid, created in sorted(self.seen):
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    left.append(f"{pid} {p.status()} {' '.join(p.cmdline()) or p.name()}")
            except psutil.Error:
                pass
        return left

    def killed_during(self, outcome: Outcome) -> bool:
        """Was a pool child killed while this request was in flight?"""
        return any(before <= outcome.ended and outcome.started <= after
                   for before, after in self.worker_kills)

    def event_before(self, moment: float) -> str:
        """The last chaos event at or before ``moment`` (to explain a failure)."""
        previous = [(t, a, d) for t, a, d in self.timeline if t <= moment]
        if not previous:
            return "none"
        t, _action, detail = previous[-1]
        return f"{detail} ({moment - t:.3f}s before)"


def chaos_seed() -> int:
    """``CHAOS_SEED`` from the environment, or a fresh random one; printed for a replay."""
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nchaos seed: {seed} (replay with CHAOS_SEED={seed})")
    return seed


def holder_of(ls: Labsquid, client_port: int) -> psutil.Process | None:
    """The pool child holding the proxy's end of the connection from ``client_port``."""
    for worker in ls.workers():
        try:
            # net_connections from psutil 6; Debian 12's psutil 5.9 calls it connections.
            conns = (getattr(worker, "net_connections", None) or worker.connections)("tcp")
        except psutil.Error:
            continue
        if any(c.raddr and c.raddr.port == client_port for c in conns):
            return worker
    return None


def shm_segment(kid_pid: int) -> str:
    return os.path.join("/dev/shm", f"labsquid-{kid_pid}")
