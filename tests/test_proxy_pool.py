"""Every dispatch mode under concurrent clients; workers killed and reloaded under load."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import proof
from support.origin import RawClient, fetch, manager_page
from support.service import free_port, listening_sockets, wait_for

pytestmark = pytest.mark.slow

MODES = ["serial", "notify", "passfd", "shared", "reuseport"]


def started(ls):
    ls.start(wait=False)
    ls.wait_ready(timeout=5)
    return ls


def one(port: int, url: str) -> bytes:
    _resp, body = fetch(port, "GET", url, timeout=5)
    return body


@pytest.mark.parametrize("dispatch", MODES)
def test_burst_of_50_concurrent_requests(make_labsquid, origin, dispatch):
    ls = started(make_labsquid(dispatch=dispatch, pool_size=2))
    urls = [origin.url(f"/id/{i}") for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        bodies = list(pool.map(lambda u: one(ls.port, u), urls))
    assert bodies == [f"path /id/{i}\n".encode() for i in range(50)]
    wait_for(lambda: len(ls.access_lines()) >= 50, timeout=5, what="50 access.log lines")


@pytest.mark.parametrize("dispatch", MODES)
def test_simultaneous_connections_never_stranded(make_labsquid, origin, dispatch):
    """The notes' experiment 7: two clients connecting at the same instant, 30 times."""
    ls = started(make_labsquid(dispatch=dispatch, pool_size=2))
    request = f"GET {origin.url('/id/x')} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    for _round in range(30):
        barrier = threading.Barrier(2)
        results: list[object] = []

        def client(barrier=barrier, results=results):
            barrier.wait()
            t0 = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", ls.port), timeout=2) as s:
                    s.sendall(request.encode())
                    data = s.recv(15)
                results.append((data, time.monotonic() - t0))
            except OSError as exc:
                results.append(exc)

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert len(results) == 2
        for r in results:
            assert isinstance(r, tuple) and r[0] == b"HTTP/1.1 200 OK", (_round, results)
            assert r[1] < 2


class Traffic:
    """A thread doing requests in a loop on fresh connections, counting outcomes."""

    def __init__(self, port: int, url: str) -> None:
        self.port, self.url = port, url
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                resp, body = fetch(self.port, "GET", self.url, timeout=3)
                if resp.status == 200 and body.startswith(b"path "):
                    self.ok += 1
                else:
                    self.failed.append(f"{resp.status} {body[:60]!r}")
            except Exception as exc:  # noqa: BLE001 - OSError and http.client's errors
                self.failed.append(f"{exc!r} after {time.monotonic() - t0:.2f}s")

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def more(self, n: int = 5) -> None:
        start = self.ok
        try:
            wait_for(lambda: self.ok >= start + n, timeout=8, what=f"{n} more requests")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; ok={self.ok} failed={self.failed}") from None


@pytest.mark.parametrize("dispatch", ["notify", "reuseport"])
def test_killed_worker_is_replaced_others_keep_serving(make_labsquid, origin, dispatch):
    ls = started(make_labsquid(dispatch=dispatch, pool_size=2))
    workers = ls.workers()
    victim = workers[0]
    with Traffic(ls.port, origin.url("/id/k")) as traffic:
        traffic.more(10)
        victim.kill()
        victim.wait(3)
        traffic.more(20)
        wait_for(lambda: len(ls.workers()) == 2 and victim.pid not in
                 {w.pid for w in ls.workers()}, timeout=5, what="a replacement worker")
        traffic.more(10)
    # The one request in flight on the victim may fail; any other failure is a loss.
    proof.record("fault", "kill -9 pool child under load", 1, max(0, len(traffic.failed) - 1),
                 unit="requests", detail="a replacement worker starts, the other keeps "
                 "serving; at most the request in flight on the victim fails")
    assert len(traffic.failed) <= 1, traffic.failed  # at most the one in flight on the victim
    titles = sorted(" ".join(w.cmdline()).strip() for w in ls.workers())
    assert titles == ["(labsquid-1 worker-1)", "(labsquid-1 worker-2)"]


@pytest.mark.parametrize("dispatch", ["notify", "reuseport"])
def test_reconfigure_under_load_loses_nothing(make_labsquid, origin, dispatch):
    ls = started(make_labsquid(dispatch=dispatch, pool_size=2))
    refused: list[str] = []
    stop = threading.Event()

    def connector():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", ls.port), timeout=2):
                    pass
            except OSError as exc:
                refused.append(repr(exc))
            time.sleep(0.005)

    knocker = threading.Thread(target=connector, daemon=True)
    knocker.start()
    seen = {w.pid for w in ls.workers()}
    hups = 0
    try:
        with Traffic(ls.port, origin.url("/id/hup")) as traffic:
            traffic.more(5)
            for _ in range(5):
                current = {w.pid for w in ls.workers()}
                ls.signal(signal.SIGHUP)
                hups += 1
                wait_for(lambda c=current: len(ls.workers()) == 2 and
                         not ({w.pid for w in ls.workers()} & c),
                         timeout=5, what="a new generation of workers")
                new = {w.pid for w in ls.workers()}
                assert not new & seen, "new workers have new pids"
                seen |= new
                traffic.more(5)
    finally:
        stop.set()
        knocker.join(5)
    proof.record("fault", "SIGHUP under load (new generation of workers)", hups,
                 len(traffic.failed) + len(refused), unit="requests/connections",
                 detail="no request fails and the listening socket refuses no connection "
                        "while the workers are replaced")
    assert traffic.failed == []
    assert refused == [], "the listening socket refused a connection during reload"


@pytest.mark.parametrize("dispatch", ["notify", "reuseport"])
def test_pool_size_auto_counts_the_cpus_it_may_run_on(make_labsquid, origin, dispatch):
    """``pool_size auto`` under ``taskset -c N`` is one child, not one per CPU in
    the machine; unpinned it is one per CPU.  reuseport shows that the master
    (which binds a socket per child) and the kid count alike."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to tell pinned from unpinned")
    unpinned = started(make_labsquid(dispatch=dispatch, pool_size="auto"))
    assert len(unpinned.workers(unpinned.kid())) == len(cpus)
    assert len(listening_sockets(unpinned.port)) == (len(cpus) if dispatch == "reuseport" else 1)
    assert unpinned.stop() == 0

    os.sched_setaffinity(0, {min(cpus)})  # inherited by the tree started now
    try:
        pinned = started(make_labsquid(dispatch=dispatch, pool_size="auto"))
    finally:
        os.sched_setaffinity(0, cpus)
    assert len(pinned.workers(pinned.kid())) == 1
    assert len(listening_sockets(pinned.port)) == 1
    assert one(pinned.port, origin.url("/pinned")) == b"path /pinned\n"
    assert pinned.stop() == 0


def test_a_restarted_kid_sizes_the_pool_as_its_master_did(make_labsquid, origin):
    """reuseport: the master bound a socket per CPU it could run on.  A kid
    restarted after the master's affinity shrank (``taskset -p``) still runs a
    child per socket: none is left without a reader, every connection is served."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to shrink the affinity")
    ls = started(make_labsquid(dispatch="reuseport", pool_size="auto"))
    old_kid = ls.kid()
    os.sched_setaffinity(ls.master.pid, {min(cpus)})
    old_kid.send_signal(signal.SIGKILL)

    def new_kid_serving():
        kid = ls.kid()
        return kid is not None and kid.pid != old_kid.pid and len(ls.workers(kid)) >= len(cpus)

    wait_for(new_kid_serving, timeout=15, what=f"a new kid with {len(cpus)} children")
    assert len(ls.workers(ls.kid())) == len(cpus)
    assert len(listening_sockets(ls.port)) == len(cpus)
    for i in range(40):  # fresh connections: the kernel spreads them over every socket
        assert one(ls.port, origin.url(f"/after/{i}")) == f"path /after/{i}\n".encode()
    assert ls.stop() == 0



@pytest.mark.parametrize("dispatch", MODES)
def test_activation_sockets_the_config_does_not_name_are_served(make_labsquid, origin,
                                                                dispatch):
    """Started by ``systemd-socket-activate`` with the configured port and one
    more: both are served by every mode.  In reuseport mode the configured
    port's activation socket cannot join a SO_REUSEPORT group (the children
    share it), and the extra socket sits beside the groups; a child per
    group member must not leave it without a reader."""
    ls = make_labsquid(dispatch=dispatch, pool_size=2)
    extra = free_port()
    plain = ls.command
    ls.command = lambda *args: ["systemd-socket-activate", "-l", f"127.0.0.1:{ls.port}",
                                "-l", f"127.0.0.1:{extra}", *plain(*args)]
    ls.start(wait=False)
    wait_for(lambda: listening_sockets(extra), timeout=5, what="systemd-socket-activate")
    # The first connection makes systemd-socket-activate exec labsquid; it
    # waits in the backlog until a child serves it.
    assert fetch(extra, "GET", origin.url("/first"), timeout=15)[1] == b"path /first\n"
    ls.wait_ready(timeout=10)
    assert len(listening_sockets(ls.port)) == 1  # the inherited one, shared
    for i in range(20):  # fresh connections on both ports
        for port in (extra, ls.port):
            assert one(port, origin.url(f"/{port}/{i}")) == f"path /{port}/{i}\n".encode()
    assert ls.stop() == 0


def test_manager_figures_are_the_pools_and_survive_a_reload(make_labsquid, origin):
    """Server requests are counted where they are sent, not copied from the
    client count; the kid is not a serving process; a reload (a new
    generation of children) takes nothing from the totals."""
    ls = started(make_labsquid(dispatch="notify", pool_size=2))
    for i in range(3):
        assert one(ls.port, origin.url(f"/id/{i}")) == f"path /id/{i}\n".encode()
    for _ in range(4):  # denied (port 9): client requests that never reach a server
        resp, _ = fetch(ls.port, "GET", "http://127.0.0.1:9/")
        assert resp.status == 403
    for i in range(200):  # CPU the old generation takes with it when it exits
        one(ls.port, origin.url(f"/id/cpu-{i}"))
    counters = manager_page(ls.port, "counters")
    assert counters["server.all.requests"] == counters["server.http.requests"] == "203"
    assert int(counters["client_http.requests"]) == 207
    info = manager_page(ls.port, "info")
    assert info["Number of serving processes"] == "2"
    assert "slot 0 is the kid" in fetch(ls.port, "GET", f"http://127.0.0.1:{ls.port}"
                                        "/squid-internal-mgr/pool")[1].decode()
    old = {w.pid for w in ls.workers()}
    ls.signal(signal.SIGHUP)
    wait_for(lambda: old.isdisjoint(w.pid for w in ls.workers()) and len(ls.workers()) == 2,
             what="a new generation of children")
    after = manager_page(ls.port, "counters")
    assert after["server.all.requests"] == "203"
    assert int(after["client_http.requests"]) >= 207 + 2  # and the two manager pages
    assert float(after["cpu_time"]) >= float(counters["cpu_time"]), "CPU time went back"


def test_a_request_that_starts_while_draining_is_answered_with_connection_close(
        make_labsquid, origin):
    """Two connections accepted before a shutdown, each with half a request
    head: the child still answers them (they are not idle), a forwarded
    response and one of its own error pages, and both say ``Connection:
    close``: the connection ends with that answer.  (A reload moves such
    connections on instead: test_proxy_reload_connections.py.)"""
    ls = started(make_labsquid(dispatch="notify", pool_size=1))
    forwarded, denied = origin.url("/id/after-the-stop"), "http://127.0.0.1:9/denied"
    with RawClient(ls.port) as fwd, RawClient(ls.port) as deny:
        fwd.send(f"GET {forwarded} HTTP/1.1\r\n".encode())
        deny.send(f"GET {denied} HTTP/1.1\r\n".encode())
        time.sleep(0.3)  # both accepted and read by the child
        ls.signal(signal.SIGTERM)
        wait_for(lambda: "shutdown_started" in ls.stderr_text(), timeout=5,
                 what="the shutdown")
        fwd.send(b"Host: h\r\n\r\n")
        deny.send(b"Host: h\r\n\r\n")
        for client, status in ((fwd, 200), (deny, 403)):
            resp = client.read_response()
            assert (resp.status, resp.header("Connection")) == (status, "close")
            assert client.closed_by_peer()


def test_a_response_finished_while_draining_says_connection_close(make_labsquid, origin):
    """A keep-alive client whose request is in flight at a shutdown: its
    child answers, and says ``Connection: close`` so that the client does not
    send its next request into a connection about to close.  (At a reload the
    answer stays keep-alive and the connection moves on.)"""
    ls = started(make_labsquid(dispatch="notify", pool_size=2))
    with RawClient(ls.port) as c:
        c.send(f"GET {origin.url('/slow/1')} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        wait_for(lambda: any("/slow/1" in h for h in origin.heads), timeout=5,
                 what="the slow request at the origin")
        ls.signal(signal.SIGTERM)
        wait_for(lambda: "shutdown_started" in ls.stderr_text(), timeout=5,
                 what="the shutdown")
        resp = c.read_response()
        assert (resp.status, resp.header("Connection")) == (200, "close")
        assert c.closed_by_peer()
