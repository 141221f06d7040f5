"""A reload closes no client connection and cuts no request: connections move to the new workers.

squid reconfigures in place: requests in flight finish, and an idle connection
stays open (until squid's next answer on it, which says close).  labsquid starts
a new generation of pool children instead; the old ones finish what they
serve, hand every client connection back to the kid as soon as it is between
requests, and the kid passes it to a new child.  A keep-alive client never
sees a close, so it never has to retry (or lose) a request sent just as the
old child was leaving.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest

from support import proof
from support.chaos import holder_of
from support.origin import EchoServer, RawClient, open_tunnel, parse_squid_line, recv_exactly
from support.service import wait_for

pytestmark = pytest.mark.slow

POOL_MODES = ["notify", "passfd", "shared", "reuseport"]


def _get(client: RawClient, url: str):
    client.send(f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    return client.read_response()


def _reload(ls) -> set[int]:
    """SIGHUP, then wait until only a new generation of workers is left; its pids."""
    old = {w.pid for w in ls.workers()}
    ls.signal(signal.SIGHUP)

    def new_generation() -> set[int]:
        pids = {w.pid for w in ls.workers()}
        return pids if len(pids) == ls.pool_size and not pids & old else set()
    return wait_for(new_generation, timeout=10, what="only new workers")


def _port(client: RawClient) -> int:
    return client.sock.getsockname()[1]


@pytest.mark.parametrize("dispatch", POOL_MODES)
def test_idle_keep_alive_connections_survive_reloads(make_labsquid, origin, dispatch):
    ls = make_labsquid(dispatch=dispatch, pool_size=2).start()
    clients = [RawClient(ls.port) for _ in range(4)]
    try:
        for i, c in enumerate(clients):
            resp = _get(c, origin.url(f"/id/before-{i}"))
            assert resp.status == 200 and resp.body == f"path /id/before-{i}\n".encode()
            assert resp.header("Connection") != "close"
        for round_ in range(2):  # moved once, then moved again
            new = _reload(ls)
            for i, c in enumerate(clients):
                # The same socket, served by a child of the new generation.
                holder = wait_for(lambda c=c: holder_of(ls, _port(c)), timeout=5,
                                  what="a worker holding the connection")
                assert holder.pid in new
                resp = _get(c, origin.url(f"/id/after-{round_}-{i}"))
                assert resp.status == 200
                assert resp.body == f"path /id/after-{round_}-{i}\n".encode()
                assert resp.header("Connection") != "close"
    finally:
        for c in clients:
            c.close()
    wanted = {origin.url(f"/id/{r}-{i}") for r in ("before", "after-0", "after-1")
              for i in range(4)}
    wait_for(lambda: wanted <= {line.split()[6] for line in ls.access_lines()}, timeout=5,
             what="a line for every request")
    assert ls.stop() == 0


@pytest.mark.parametrize("dispatch", ["notify", "passfd"])
def test_a_request_in_flight_over_a_reload_is_answered_and_its_connection_kept(
        make_labsquid, origin, dispatch):
    """The old child answers it (keep-alive, as asked), then hands the connection over."""
    ls = make_labsquid(dispatch=dispatch, pool_size=2).start()
    with RawClient(ls.port) as c:
        c.send(f"GET {origin.url('/slow/1')} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        time.sleep(0.3)  # at the origin now
        old_holder = holder_of(ls, _port(c))
        assert old_holder is not None
        new = _reload_while_old_serves(ls, old_holder.pid)
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header("Connection") != "close"
        wait_for(lambda: _gone(old_holder), timeout=10, what="the old worker to exit")
        resp = _get(c, origin.url("/id/next"))
        assert resp.status == 200 and resp.body == b"path /id/next\n"
        assert holder_of(ls, _port(c)).pid in new
    assert ls.stop() == 0


def test_a_head_half_sent_at_a_reload_is_answered_and_its_connection_moved(
        make_labsquid, origin):
    """Accepted before the reload with half a request head: the old child
    answers it (keep-alive), then the connection moves on."""
    ls = make_labsquid(dispatch="notify", pool_size=1).start()
    with RawClient(ls.port) as c:
        c.send(f"GET {origin.url('/id/half')} HTTP/1.1\r\n".encode())
        time.sleep(0.3)  # accepted and read by the child
        old = {w.pid for w in ls.workers()}
        ls.signal(signal.SIGHUP)
        wait_for(lambda: '"reconfigured"' in ls.stderr_text(), timeout=5, what="the reload")
        c.send(b"Host: h\r\n\r\n")
        resp = c.read_response()
        assert resp.status == 200 and resp.header("Connection") == "keep-alive"
        resp = _get(c, origin.url("/id/next"))
        assert resp.status == 200 and resp.body == b"path /id/next\n"
        holder = holder_of(ls, _port(c))
        assert holder is not None and holder.pid not in old
    assert ls.stop() == 0


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _reload_while_old_serves(ls, old_pid: int) -> set[int]:
    """SIGHUP; the new workers' pids once they are up (the old one is still busy)."""
    ls.signal(signal.SIGHUP)

    def new_workers() -> set[int]:
        pids = {w.pid for w in ls.workers() if "worker-" in " ".join(w.cmdline())}
        fresh = pids - {old_pid}
        return fresh if len(fresh) >= ls.pool_size and old_pid in pids else set()
    return wait_for(new_workers, timeout=10, what="the new generation beside the old worker")


def _slow_request(ls, origin, client: RawClient, path: str) -> psutil.Process:
    """Send a request for ``path`` (``/slow/S``); once the origin has it, the
    pool child serving it."""
    client.send(f"GET {origin.url(path)} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    wait_for(lambda: any(path in h for h in origin.heads), timeout=5,
             what="the slow request at the origin")
    holder = holder_of(ls, _port(client))
    assert holder is not None
    return holder


def test_a_reload_cuts_no_request_that_outlasts_shutdown_lifetime(make_labsquid, origin):
    """squid's reconfigure lets a request in flight finish however long it takes
    (checked: 6 s with ``shutdown_lifetime 2 seconds``); so does a reload here.
    The old child answers it whole, then hands its connection over."""
    ls = make_labsquid(dispatch="notify", pool_size=2).start()  # shutdown_lifetime 2 seconds
    with RawClient(ls.port, timeout=15) as c:
        old = _slow_request(ls, origin, c, "/slow/4")
        ls.signal(signal.SIGHUP)
        resp = c.read_response()
        assert resp.status == 200 and resp.header("Connection") == "keep-alive"
        wait_for(lambda: _gone(old), timeout=10, what="the old worker to exit")
        assert _get(c, origin.url("/id/after")).status == 200
    assert any("/slow/4" in line.split()[6] and "TCP_MISS/200" in line
               for line in ls.access_lines())
    assert ls.stop() == 0


def test_a_shutdown_during_a_reloads_drain_still_ends_in_shutdown_lifetime(
        make_labsquid, origin):
    """The reload put no bound on the old child's request; the shutdown that
    follows does: labsquid exits within shutdown_lifetime (2 s) and a little."""
    ls = make_labsquid(dispatch="notify", pool_size=2).start()
    with RawClient(ls.port, timeout=30) as c:
        old = _slow_request(ls, origin, c, "/slow/20")
        _reload_while_old_serves(ls, old.pid)
        began = time.monotonic()
        assert ls.stop() == 0
        assert time.monotonic() - began < 6, "the old child's request was not cut in time"


def test_a_moved_connection_keeps_the_idle_timeout_of_a_kept_alive_one(make_labsquid, origin):
    """Moved between requests, it waits client_idle_pconn_timeout, not request_timeout."""
    ls = make_labsquid(dispatch="notify", pool_size=2,
                       extra="client_idle_pconn_timeout 1 second\nrequest_timeout 1 minute\n")
    ls.start()
    with RawClient(ls.port) as c:
        assert _get(c, origin.url("/id/one")).status == 200
        _reload(ls)
        wait_for(lambda: holder_of(ls, _port(c)), timeout=5, what="the new holder")
        t0 = time.monotonic()
        assert c.closed_by_peer()
        assert time.monotonic() - t0 < 5
    assert ls.stop() == 0


def test_a_moved_connection_keeps_its_client_lifetime(make_labsquid, origin):
    """client_lifetime counts from the accept, not from the move: a reload
    does not give a connection a new lease of life."""
    ls = make_labsquid(dispatch="passfd", pool_size=2, extra="client_lifetime 4 seconds\n")
    ls.start()
    with RawClient(ls.port, timeout=10) as c:
        opened = time.monotonic()
        assert _get(c, origin.url("/id/one")).status == 200
        time.sleep(2)
        new = _reload(ls)
        holder = wait_for(lambda: holder_of(ls, _port(c)), timeout=5, what="the new holder")
        assert holder.pid in new
        assert c.closed_by_peer()
        lasted = time.monotonic() - opened
    # From the move it would be 6 s or more.
    assert 3.5 < lasted < 5.3, f"closed {lasted:.1f}s after it was opened"
    assert ls.stop() == 0


def test_a_moved_connection_that_never_sent_a_request_is_logged_once(make_labsquid, origin):
    """Its new holder logs it when it ends, as squid logs a connection that
    sent nothing; the old one, which handed it over, does not.  One moved
    after its request adds no line."""
    ls = make_labsquid(dispatch="notify", pool_size=2).start()
    silent = socket.create_connection(("127.0.0.1", ls.port), timeout=5)
    served = RawClient(ls.port)
    assert _get(served, origin.url("/id/served")).status == 200
    wait_for(lambda: holder_of(ls, silent.getsockname()[1]), timeout=5, what="its first holder")
    new = _reload(ls)
    for port in (silent.getsockname()[1], _port(served)):
        holder = wait_for(lambda p=port: holder_of(ls, p), timeout=5, what="the new holder")
        assert holder.pid in new
    silent.close()
    served.close()
    marker = origin.url("/id/marker")
    with RawClient(ls.port) as c:
        assert _get(c, marker).status == 200
    lines = wait_for(lambda: (found := ls.access_lines())
                     and sum("transaction-end-before-headers" in x for x in found) >= 1
                     and any(marker in x for x in found) and found,
                     timeout=5, what="the silent connection's line and the marker's")
    # Had the old holder logged it too, on handing it over, that line would
    # be in already: it came before the marker was asked for.
    urls = [line.split()[6] for line in ls.access_lines()]
    assert urls.count("error:transaction-end-before-headers") == 1, lines
    assert sorted(urls) == sorted([origin.url("/id/served"), marker,
                                   "error:transaction-end-before-headers"])
    assert ls.stop() == 0


def test_a_connection_that_asked_to_close_is_closed_not_moved(make_labsquid, origin):
    ls = make_labsquid(dispatch="notify", pool_size=2).start()
    with RawClient(ls.port) as c:
        c.send(f"GET {origin.url('/slow/1')} HTTP/1.1\r\nHost: h\r\n"
               "Connection: close\r\n\r\n".encode())
        time.sleep(0.3)
        ls.signal(signal.SIGHUP)
        resp = c.read_response()
        assert resp.status == 200 and resp.header("Connection") == "close"
        assert c.closed_by_peer()
    assert ls.stop() == 0


@pytest.mark.parametrize("dispatch", ["notify", "reuseport"])
def test_reloads_under_keep_alive_load_close_no_connection(make_labsquid, origin, dispatch):
    """Four clients, each sending request after request on one connection,
    through ten reloads: every request is answered on the connection it was
    sent on, including those sent just as an old worker was handing it over."""
    ls = make_labsquid(dispatch=dispatch, pool_size=2).start()
    stop = threading.Event()
    answered = [0] * 4
    failures: list[str] = []

    def client(index: int) -> None:
        with RawClient(ls.port) as c:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    resp = _get(c, origin.url(f"/id/{index}-{n}"))
                except OSError as exc:  # EOFError too: the proxy closed it
                    failures.append(f"client {index} request {n}: {exc!r}")
                    return
                if resp.status != 200 or resp.body != f"path /id/{index}-{n}\n".encode():
                    failures.append(f"client {index} request {n}: {resp.status}")
                    return
                answered[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: min(answered) > 10, timeout=10, what="traffic on every connection")
        for _ in range(10):
            _reload(ls)
            before = list(answered)
            wait_for(lambda b=before: failures or all(a > b[i] + 5 for i, a in enumerate(answered)),
                     timeout=10, what="every connection to be served after the reload")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    proof.record("fault", "SIGHUP under keep-alive clients (connections moved)", 10,
                 len(failures), unit="requests/connections",
                 detail="4 clients sending request after request on one connection each; "
                        "no request fails and no connection is closed across the reloads")
    assert failures == []
    assert min(answered) > 60
    assert ls.stop() == 0


def _slow_reader(port: int, url: str) -> socket.socket:
    """A connection with a tiny receive window that asked for ``url`` with
    ``Connection: close`` and reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    return sock


def _kernel_holds(proxy_port: int, client: socket.socket) -> int:
    """How many reply bytes the kernel has taken from the proxy for ``client``
    (the proxy's Send-Q, as ``ss`` shows it, and the client's Recv-Q)."""
    client_port = client.getsockname()[1]
    out = subprocess.run(["ss", "-tnH", f"( sport = :{proxy_port} and dport = :{client_port} ) "
                          f"or ( sport = :{client_port} and dport = :{proxy_port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(f[1]) + int(f[2]) for f in (line.split() for line in out.splitlines()))


def test_an_answer_still_going_out_at_a_reload_closes_as_it_said(make_labsquid, origin):
    """A reply that says ``Connection: close``, read whole from the origin but
    still in the proxy's buffer when the reload comes (its client reads
    slowly): once it is out, the connection closes, as announced.  Moved
    instead, it would wait for a request its client will never send."""
    ls = make_labsquid(dispatch="notify", pool_size=2).start()
    # How much the kernel buffers for a reader this slow: the reply must be a
    # little more (below the proxy's HIGH_WATER), so that its end waits in the
    # proxy after the whole reply was read from the origin.
    with _slow_reader(ls.port, origin.url("/bytes/8000000")) as probe:
        time.sleep(0.5)
        capacity = _kernel_holds(ls.port, probe)
    assert capacity > 0
    size = capacity + 128 * 1024
    with _slow_reader(ls.port, origin.url(f"/bytes/{size}")) as sock:
        time.sleep(0.5)  # the whole reply is read from the origin, its end waits in the proxy
        assert _kernel_holds(ls.port, sock) < size
        ls.signal(signal.SIGHUP)
        wait_for(lambda: '"reconfigured"' in ls.stderr_text(), timeout=5, what="the reload")
        time.sleep(0.3)  # the old child has its STOP
        received = b""
        while chunk := sock.recv(65536):  # a timeout here: never closed
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert len(body) == size
    assert ls.stop() == 0


# -- CONNECT tunnels ----------------------------------------------------------------

@pytest.fixture
def echo():
    with EchoServer() as server:
        yield server


def _open_tunnel(ls, echo) -> socket.socket:
    sock, rest = open_tunnel(ls.port, f"127.0.0.1:{echo.port}", headers="User-Agent: t/1\r\n")
    assert rest == b""  # the echo server speaks only when spoken to
    return sock


def _echoed(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    return recv_exactly(sock, len(message))


def _tunnel_lines(ls, echo) -> list[dict[str, str]]:
    return [parse_squid_line(x) for x in ls.access_lines()
            if f" CONNECT 127.0.0.1:{echo.port} " in x]


REPLY_200 = len(b"HTTP/1.1 200 Connection established\r\n\r\n")


@pytest.mark.parametrize("dispatch", ["notify", "passfd"])
def test_a_tunnel_moves_to_the_new_workers_and_goes_on(make_labsquid, echo, dispatch):
    """The old child hands a quiet tunnel over, both sockets, and exits
    (before, it stayed for as long as the tunnel lasted: `_reload` waits for
    the old ones to be gone).  The new holder writes its one line, with every
    byte sent to the client on both sides of the reload."""
    ls = make_labsquid(dispatch=dispatch, pool_size=2, extra=f"acl SSL_ports port {echo.port}\n")
    ls.start()
    with _open_tunnel(ls, echo) as sock:
        assert _echoed(sock, b"before the reload\n") == b"before the reload\n"
        time.sleep(0.5)
        for round_ in range(2):
            new = _reload(ls)
            holder = wait_for(lambda: holder_of(ls, sock.getsockname()[1]), timeout=5,
                              what="the tunnel's new holder")
            assert holder.pid in new
            message = f"after reload {round_}\n".encode()
            assert _echoed(sock, message) == message
        assert _tunnel_lines(ls, echo) == [], "logged before it ended"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
    lines = wait_for(lambda: _tunnel_lines(ls, echo), timeout=5, what="the tunnel's line")
    assert len(lines) == 1, lines
    sent = REPLY_200 + len(b"before the reload\n") + 2 * len(b"after reload 0\n")
    assert (lines[0]["tag"], lines[0]["status"], lines[0]["size"], lines[0]["hier"],
            lines[0]["peer"]) == ("TCP_TUNNEL", "200", str(sent), "HIER_DIRECT", "127.0.0.1")
    # Its time counts from the CONNECT, not from the last move.
    assert int(lines[0]["elapsed"]) >= 500, lines[0]
    assert ls.stop() == 0


def test_a_tunnel_streaming_through_a_reload_loses_no_byte(make_labsquid, echo):
    """Bytes keep flowing both ways while the tunnel moves: what waited in the
    old child's pipes reaches its side first, what comes next waits in the
    kernel for the new holder."""
    ls = make_labsquid(dispatch="notify", pool_size=2, extra=f"acl SSL_ports port {echo.port}\n")
    ls.start()
    payload = os.urandom(4 * 1024 * 1024)
    received = bytearray()
    with _open_tunnel(ls, echo) as sock:
        def reader() -> None:
            while len(received) < len(payload):
                data = sock.recv(262144)
                if not data:
                    return
                received.extend(data)

        thread = threading.Thread(target=reader)
        thread.start()
        reloaded = threading.Event()

        def reload_midway() -> None:
            _reload(ls)
            reloaded.set()

        for offset in range(0, len(payload), 65536):
            sock.sendall(payload[offset:offset + 65536])
            if offset == len(payload) // 4:
                threading.Thread(target=reload_midway).start()
            time.sleep(0.002)
        assert reloaded.wait(15), "the old workers did not leave"
        thread.join(timeout=20)
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest(), \
            f"{len(received)} of {len(payload)} bytes came back"
        holder = wait_for(lambda: holder_of(ls, sock.getsockname()[1]), timeout=5,
                          what="the tunnel's holder")
        assert holder.pid in {w.pid for w in ls.workers()}
    lines = wait_for(lambda: _tunnel_lines(ls, echo), timeout=5, what="the tunnel's line")
    assert [x["size"] for x in lines] == [str(REPLY_200 + len(payload))]
    assert ls.stop() == 0


def test_a_tunnel_that_cannot_go_quiet_stays_and_a_shutdown_still_ends_it(make_labsquid, echo):
    """A client that stops reading keeps bytes in the tunnel's pipe, so it
    cannot be handed over: the old child keeps it and serves on, and a
    shutdown still ends it within shutdown_lifetime, logged."""
    ls = make_labsquid(dispatch="notify", pool_size=2,
                       extra=f"acl SSL_ports port {echo.port}\nshutdown_lifetime 2 seconds\n")
    ls.start()
    sock = _open_tunnel(ls, echo)
    sent = [0]

    def flood() -> None:  # never reads: the echoes fill the kernel, then the pipe
        chunk = b"x" * 65536
        try:
            while sent[0] < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass

    sock.settimeout(None)
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()

    def stalled() -> bool:
        before = sent[0]
        time.sleep(0.3)
        return before == sent[0] > 0

    wait_for(stalled, timeout=20, what="the flood to stall")
    old = {w.pid for w in ls.workers()}
    holder = holder_of(ls, sock.getsockname()[1])
    assert holder is not None and holder.pid in old
    ls.signal(signal.SIGHUP)
    wait_for(lambda: len({w.pid for w in ls.workers()} - old) == ls.pool_size, timeout=10,
             what="a new generation")
    time.sleep(1)
    assert holder_of(ls, sock.getsockname()[1]).pid == holder.pid  # it stayed
    began = time.monotonic()
    assert ls.stop() == 0
    assert time.monotonic() - began < 6, "the shutdown waited for the tunnel"
    sock.close()
    lines = _tunnel_lines(ls, echo)
    assert [x["tag"] for x in lines] == ["TCP_TUNNEL"], lines
