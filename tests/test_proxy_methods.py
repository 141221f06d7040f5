"""The proxy relays every method and every body framing, intact, with real clients."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time

import pytest

from support.origin import (
    RawClient,
    concurrent_fetches,
    fetch,
    manager_page,
    module_labsquid,
    module_origin,
    parse_squid_line,
    proxy_conn,
)
from support.service import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labsquid(tmp_path_factory):
    yield from module_labsquid(tmp_path_factory)


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()

MIB = 1024 * 1024


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_every_method_reaches_the_origin(labsquid, origin, method):
    body = b"payload" if method in ("POST", "PUT", "PATCH") else None
    resp, data = fetch(labsquid.port, method, origin.url("/bytes/42"), body=body)
    assert resp.status == 200
    assert resp.getheader("Content-Length") == "42"
    assert data == (b"" if method == "HEAD" else b"x" * 42)
    assert origin.heads[-1].startswith(f"{method} /bytes/42 HTTP/1.1\r\n")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_request_body_with_content_length(labsquid, origin, method):
    payload = os.urandom(5000)
    resp, data = fetch(labsquid.port, method, origin.url("/echo"), body=payload)
    assert resp.status == 200
    assert data == payload
    assert "Content-Length: 5000" in origin.heads[-1]


def test_request_body_chunked(labsquid, origin):
    pieces = [os.urandom(n) for n in (1, 1000, 70000, 3)]
    conn = proxy_conn(labsquid.port)
    conn.request("POST", origin.url("/echo"), body=iter(pieces), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == b"".join(pieces)
    conn.close()
    head = origin.heads[-1].lower()
    assert "transfer-encoding: chunked" in head and "content-length" not in head


def test_response_body_chunked(labsquid, origin):
    with RawClient(labsquid.port) as c:
        c.send(f"GET {origin.url('/chunked/20000')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp = c.read_response()
    assert resp.status == 200
    assert resp.header("Transfer-Encoding").lower() == "chunked"
    assert resp.header("Content-Length") is None
    assert resp.body == b"c" * 20000


def test_one_mib_bodies_intact_both_ways(labsquid, origin):
    payload = os.urandom(MIB)
    resp, data = fetch(labsquid.port, "PUT", origin.url("/echo"), body=payload, timeout=10)
    assert resp.status == 200
    assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
    resp, data = fetch(labsquid.port, "GET", origin.url(f"/bytes/{MIB}"), timeout=10)
    assert data == b"x" * MIB
    resp, data = fetch(labsquid.port, "GET", origin.url(f"/chunked/{MIB}"), timeout=10)
    assert data == b"c" * MIB
    resp, data = fetch(labsquid.port, "GET", origin.url(f"/close/{MIB}"), timeout=10)
    assert data == b"z" * MIB


def test_one_mib_chunked_upload(labsquid, origin):
    payload = os.urandom(MIB)
    conn = proxy_conn(labsquid.port, timeout=10)
    conn.request("POST", origin.url("/echo"),
                 body=(payload[i:i + 65536] for i in range(0, MIB, 65536)),
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.read() == payload
    conn.close()


def test_head_has_no_body(labsquid, origin):
    with RawClient(labsquid.port) as c:
        for path in ("/bytes/1000", "/chunked/1000"):
            c.send(f"HEAD {origin.url(path)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            resp = c.read_response("HEAD")
            assert resp.status == 200
        # a bodiless HEAD reply leaves nothing behind: the next reply parses cleanly
        c.send(f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp = c.read_response()
        assert resp.status == 200 and resp.body == b"xxxxx"


def test_a_lowercase_head_typed_into_telnet_is_a_head(labsquid, origin):
    """As squid reads it: "head" is HEAD (its relaxed parser), sent on in upper
    case, and an absolute URI needs no Host field: Host is written from it."""
    with RawClient(labsquid.port) as c:
        c.send(f"head {origin.url('/bytes/1000')} HTTP/1.1\r\n\r\n".encode())
        resp = c.read_response("HEAD")
        assert resp.status == 200 and resp.body == b""
        assert origin.heads[-1].startswith("HEAD /bytes/1000 HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{origin.port}" in origin.heads[-1].splitlines()
        c.send(f"GET {origin.url('/bytes/5')} HTTP/1.1\r\n\r\n".encode())
        resp = c.read_response()
        assert resp.status == 200 and resp.body == b"xxxxx"


def test_purge_without_a_purge_acl_is_refused_and_never_sent_on(labsquid, origin):
    """squid's default: PURGE is a cache command, refused (403) unless a
    method acl names it; an origin never sees it (Varnish would act on it)."""
    before = len(origin.heads)
    with RawClient(labsquid.port) as c:
        c.send(f"purge {origin.url('/bytes/7')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp = c.read_response("PURGE")
        assert resp.status == 403
        assert resp.header("X-Squid-Error") == "ERR_ACCESS_DENIED 0"
        # a refusal of a request that was understood keeps the connection
        c.send(f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert c.read_response().status == 200
    assert len(origin.heads) == before + 1 and origin.heads[-1].startswith("GET ")
    line = wait_for(lambda: [x for x in labsquid.access_lines() if "/bytes/7" in x],
                    timeout=5)[-1]
    fields = parse_squid_line(line)
    assert (fields["tag"], fields["status"], fields["method"]) == ("TCP_DENIED", "403", "PURGE")


def test_http10_client_gets_until_close_body_from_chunked_origin(labsquid, origin):
    with RawClient(labsquid.port) as c:
        c.send(f"GET {origin.url('/chunked/30000')} HTTP/1.0\r\n\r\n".encode())
        data = c.read_until_close()
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"c" * 30000


def test_keep_alive_reuses_client_and_upstream_connections(labsquid, origin):
    before = len(origin.peers)
    conn = proxy_conn(labsquid.port)
    for i in range(5):
        conn.request("GET", origin.url(f"/id/{i}"))
        resp = conn.getresponse()
        assert resp.read() == f"path /id/{i}\n".encode()
        assert resp.getheader("Connection", "").lower() != "close"
    client_port = conn.sock.getsockname()[1]
    conn.request("GET", origin.url("/id/last"))
    conn.getresponse().read()
    assert conn.sock.getsockname()[1] == client_port, "client connection was not kept"
    conn.close()
    peers = origin.peers[before:]
    assert len(peers) == 6
    assert len(set(peers)) == 1, f"upstream connections: {peers}"


def test_every_idle_upstream_connection_is_kept_for_reuse(make_labsquid, origin):
    """As squid, the pool keeps as many idle connections to one origin as the
    traffic left (while descriptors are plentiful): a second burst of as many
    concurrent requests reuses them all and opens none."""
    ls = make_labsquid().start()
    idle = "Idle upstream connections (this process)"
    burst = 80  # more than the 64 per origin labsquid used to keep
    before = len(origin.peers)
    assert concurrent_fetches(ls.port, [origin.url("/slow/1")] * burst) == [200] * burst
    first = set(origin.peers[before:])
    assert len(first) == burst, "the burst did not run concurrently"
    assert int(manager_page(ls.port, "info")[idle]) == burst

    before = len(origin.peers)
    assert concurrent_fetches(ls.port, [origin.url("/slow/1")] * burst) == [200] * burst
    second = origin.peers[before:]
    assert len(second) == burst
    assert set(second) <= first, f"{len(set(second) - first)} new upstream connections"
    assert int(manager_page(ls.port, "info")[idle]) == burst


def test_pipelined_requests_answered_in_order(labsquid, origin):
    reqs = b"".join(
        f"GET {origin.url('/id/' + name)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for name in ("a", "b", "c"))
    with RawClient(labsquid.port) as c:
        c.send(reqs)
        bodies = [c.read_response().body for _ in range(3)]
    assert bodies == [b"path /id/a\n", b"path /id/b\n", b"path /id/c\n"]


def test_pipelined_with_bodies_and_slow_first(labsquid, origin):
    reqs = (f"GET {origin.url('/slow/0.3')} HTTP/1.1\r\nHost: x\r\n\r\n"
            f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n").encode()
    with RawClient(labsquid.port) as c:
        c.send(reqs)
        bodies = [c.read_response().body for _ in range(3)]
    assert bodies == [b"slow\n", b"hello", b"xxx"]


def test_status_codes_relayed(labsquid, origin):
    for status in (201, 204, 304, 404, 500):
        resp, data = fetch(labsquid.port, "GET", origin.url(f"/status/{status}"))
        assert resp.status == status
        assert data == b""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_an_http10_client_keeps_its_connection_with_proxy_connection(labsquid, origin):
    """Old HTTP/1.0 clients ask a proxy for keep-alive with Proxy-Connection;
    squid honours it, so the second request goes on the same connection."""
    with RawClient(labsquid.port) as c:
        for i in range(2):
            c.send(b"GET %s HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n"
                   % origin.url(f"/bytes/{i + 3}").encode())
            resp = c.read_response()
            assert (resp.status, resp.body) == (200, b"x" * (i + 3))
            assert resp.header("Connection") == "keep-alive"


def test_a_204_loses_its_content_length(labsquid, origin):
    """RFC 9110 §8.6 (the origin sends Content-Length: 0): a client that
    honoured a length on a 204 would read the next response as its body."""
    with RawClient(labsquid.port) as c:
        c.send(b"".join(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url(p).encode()
                        for p in ("/status/204", "/id/next")))
        first = c.read_response()
        assert first.status == 204 and first.header("Content-Length") is None
        assert c.read_response().body == b"path /id/next\n"


def test_curl_through_the_proxy(labsquid, origin):
    proxy = f"http://127.0.0.1:{labsquid.port}"
    out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy, "-D", "-",
                          origin.url("/bytes/1234"), origin.url("/chunked/777")],
                         capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.count(b"HTTP/1.1 200") == 2
    first, second = text.split(b"HTTP/1.1 200", 2)[1:]
    assert first.endswith(b"\r\n\r\n" + b"x" * 1234)
    assert second.endswith(b"\r\n\r\n" + b"c" * 777)
    assert b"Via: 1.1 labsquid.test" in first
    out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy, "--data-binary",
                          "@-", origin.url("/echo")], input=b"q" * 100000,
                         capture_output=True, timeout=10)
    assert out.returncode == 0 and out.stdout == b"q" * 100000


def test_a_client_waiting_for_100_continue_gets_it_then_sends_its_body(labsquid, origin):
    """A client that sends 'Expect: 100-continue' holds its body until a 100
    comes (or its own timeout): the origin's 100 has to come through."""
    body = os.urandom(50_000)
    before = sum("Expect: 100-continue" in h for h in origin.heads)
    with RawClient(labsquid.port) as c:
        c.send(b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n"
               b"Expect: 100-continue\r\n\r\n" % (origin.url("/echo").encode(), len(body)))
        interim = c.read_response("POST")  # the socket's 5 s timeout if it never comes
        assert (interim.status, interim.reason) == (100, "Continue")
        c.send(body)
        final = c.read_response("POST")
    assert final.status == 200 and final.body == body
    assert sum("Expect: 100-continue" in h for h in origin.heads) == before + 1


def test_curl_sending_expect_100_continue_gets_the_100(labsquid, origin):
    out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", f"http://127.0.0.1:{labsquid.port}",
                          "-D", "-", "-H", "Expect: 100-continue", "--expect100-timeout", "30",
                          "--data-binary", "@-", origin.url("/echo")],
                         input=b"e" * 200_000, capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/1.1 100 Continue\r\n")
    assert out.stdout.endswith(b"\r\n\r\n" + b"e" * 200_000)


def test_interim_responses_reach_an_http11_client_in_order(labsquid, origin):
    with RawClient(labsquid.port) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/hints").encode())
        replies = [c.read_response() for _ in range(3)]
        assert [r.status for r in replies] == [103, 102, 200]
        assert replies[0].header("Link") == "</s.css>; rel=preload"
        assert replies[2].body == b"final\n"
        # and the connection goes on to its next request
        c.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/id/after-hints").encode())
        assert c.read_response().body == b"path /id/after-hints\n"


def test_an_http10_client_gets_no_interim_response(labsquid, origin):
    """RFC 9110 §15.2: no 1xx to an HTTP/1.0 client, which could not read it."""
    with RawClient(labsquid.port) as c:
        c.send(b"GET %s HTTP/1.0\r\n\r\n" % origin.url("/hints").encode())
        data = c.read_until_close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.count(b"HTTP/1.1 ") == 1
    assert data.endswith(b"\r\n\r\nfinal\n")


def test_no_response_waits_for_the_delayed_ack_timer(labsquid, origin):
    """The test origin (Python's http.server) writes a head, then its body,
    with Nagle on: the body waits until the head is acknowledged.  On a
    reused origin connection Linux delays that ACK by 40 ms (squid 5.7 took
    about 44 ms for each such response here); the proxy acknowledges a
    partial response at once.  A few slow answers are this machine's noise;
    the stall hit every other response before."""
    conn = proxy_conn(labsquid.port)
    stalled = []
    try:
        for i in range(20):
            began = time.monotonic()
            conn.request("GET", origin.url(f"/nagle-{i}"))
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == f"path /nagle-{i}\n".encode()
            if time.monotonic() - began >= 0.038:
                stalled.append(i)
    finally:
        conn.close()
    assert len(stalled) <= 2, stalled
