"""Client-side timeouts and limits: request_timeout, client_lifetime, pool_max_connections."""

from __future__ import annotations

import socket
import time

import pytest

from support.origin import RawClient, module_labsquid, parse_squid_line
from support.service import wait_for

pytestmark = pytest.mark.slow


def started(ls):
    """Start with a short readiness deadline: a broken mode fails in 5 s, not 15."""
    ls.start(wait=False)
    ls.wait_ready(timeout=5)
    return ls


@pytest.fixture(scope="module")
def timeouts(tmp_path_factory):
    """One instance for the client-timer tests (they hold their own connections)."""
    yield from module_labsquid(tmp_path_factory,
                               extra="request_timeout 1 second\nclient_lifetime 2 seconds")


def get(origin, path: str) -> bytes:
    return f"GET {origin.url(path)} HTTP/1.1\r\nHost: h\r\n\r\n".encode()


def test_request_timeout_half_sent_head(timeouts, origin):
    ls = timeouts
    with RawClient(ls.port, timeout=4) as c:
        t0 = time.monotonic()
        c.send(f"GET {origin.url('/id/half')} HTTP/1.1\r\nHost: h\r\nX-Half".encode())
        try:
            resp = c.read_response()
        except (EOFError, ConnectionResetError):
            resp = None
        elapsed = time.monotonic() - t0
        if resp is not None:
            assert resp.status == 408
            assert resp.header("X-Squid-Error").split()[0] == "ERR_REQUEST_START_TIMEOUT"
            assert c.closed_by_peer()
    assert 0.8 <= elapsed < 3, elapsed
    assert origin.heads == []


def test_request_timeout_new_connection_that_sends_nothing(timeouts):
    """Closed unanswered, and logged as squid 5.7 logs it when its
    request_start_timeout closes such a connection."""
    ls = timeouts
    before = len(ls.access_lines())
    with RawClient(ls.port, timeout=4) as c:
        t0 = time.monotonic()
        assert c.closed_by_peer()
        assert 0.8 <= time.monotonic() - t0 < 3
    new = wait_for(lambda: ls.access_lines()[before:], timeout=5, what="its line")
    assert [line.split()[3:] for line in new] == [
        ["NONE_NONE/000", "0", "-", "error:transaction-end-before-headers", "-", "HIER_NONE/-",
         "-"]]


def test_request_timeout_trickled_head(timeouts, origin):
    """A client sending a byte every 0.2 s still has only request_timeout for the head."""
    ls = timeouts
    data = get(origin, "/id/trickle")
    with RawClient(ls.port, timeout=1) as c:
        t0 = time.monotonic()
        ended_at = None
        try:
            for byte in data[:-2]:
                c.send(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - t0 > 2.5:
                    break
                c.sock.setblocking(False)
                try:
                    if c.sock.recv(1, socket.MSG_PEEK) is not None:
                        ended_at = time.monotonic()
                        break
                except BlockingIOError:
                    pass
                finally:
                    c.sock.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            ended_at = time.monotonic()
        assert ended_at is not None and ended_at - t0 < 2.0, \
            "request_timeout counts from the first byte of the head"
    assert origin.heads == []


def test_client_lifetime_closes_a_busy_keepalive_connection(timeouts, origin):
    ls = timeouts
    with RawClient(ls.port, timeout=4) as c:
        t0 = time.monotonic()
        served = 0
        with pytest.raises((EOFError, ConnectionResetError, BrokenPipeError)):
            while time.monotonic() - t0 < 4:
                c.send(get(origin, "/id/life"))
                assert c.read_response().status == 200
                served += 1
                time.sleep(0.1)
        assert 1.8 <= time.monotonic() - t0 < 3
        assert served >= 5


def test_client_lifetime_cuts_a_long_response(make_labsquid, origin):
    ls = started(make_labsquid(extra="client_lifetime 1 second"))
    with RawClient(ls.port, timeout=4) as c:
        t0 = time.monotonic()
        c.send(get(origin, "/slow/3"))
        assert c.closed_by_peer()
        assert time.monotonic() - t0 < 2.5
    line = wait_for(lambda: [x for x in ls.access_lines() if "/slow/3" in x], timeout=3)[0]
    assert parse_squid_line(line)["tag"].endswith("_ABORTED")


def _held(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        socks.append(s)
    return socks


def _answers(origin, s: socket.socket, path: str, timeout: float) -> bool:
    s.settimeout(timeout)
    s.sendall(get(origin, path))
    try:
        return s.recv(12).startswith(b"HTTP/1.1 200")
    except TimeoutError:
        return False


@pytest.mark.parametrize("dispatch", [
    "serial",
    "notify",
    "passfd",
    "shared",
])
def test_pool_max_connections(make_labsquid, origin, dispatch):
    ls = started(make_labsquid(dispatch=dispatch, pool_size=1,
                       extra="pool_max_connections 2"))
    held = _held(ls.port, 2)
    for s in held:  # both are being served
        assert _answers(origin, s, "/id/held", 3)
    waiting = socket.create_connection(("127.0.0.1", ls.port), timeout=3)
    assert not _answers(origin, waiting, "/id/third", 0.5), "a third connection was served"
    held[0].close()
    waiting.settimeout(2)
    assert waiting.recv(12).startswith(b"HTTP/1.1 200"), \
        "the waiting connection is served once a slot frees"
    for s in (*held[1:], waiting):
        s.close()


@pytest.mark.parametrize("dispatch", ["serial", "shared"])
def test_pool_max_connections_does_not_spin(make_labsquid, origin, dispatch):
    ls = started(make_labsquid(dispatch=dispatch, pool_size=1, extra="pool_max_connections 1"))
    held = _held(ls.port, 1)
    assert _answers(origin, held[0], "/id/held", 3)
    waiting = socket.create_connection(("127.0.0.1", ls.port), timeout=3)
    server = ls.kid() if dispatch == "serial" else ls.workers()[0]
    before = sum(server.cpu_times()[:2])
    time.sleep(1.0)
    cpu = sum(server.cpu_times()[:2]) - before
    waiting.close()
    held[0].close()
    assert cpu < 0.08, f"the full server spins on the readable listening socket: {cpu:.2f}s CPU/s"

