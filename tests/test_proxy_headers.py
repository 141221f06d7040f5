"""What the proxy changes in relayed heads: Via, X-Forwarded-For, hop-by-hop, Host,
Max-Forwards, and squid's reason phrases, Date and X-Cache fields."""

from __future__ import annotations

import re

import pytest

from labsquid import __version__
from support.origin import RawClient, TcpServer, fetch, module_labsquid, module_origin

pytestmark = pytest.mark.slow

VIA = f"1.1 labsquid.test (labsquid/{__version__})"


@pytest.fixture(scope="module")
def labsquid(tmp_path_factory):
    yield from module_labsquid(tmp_path_factory)


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()


def head_fields(head: str) -> list[tuple[str, str]]:
    lines = head.splitlines()[1:]
    out = []
    for line in lines:
        if line:
            name, value = line.split(":", 1)
            out.append((name.lower(), value.strip()))
    return out


def values(head: str, name: str) -> list[str]:
    return [v for k, v in head_fields(head) if k == name.lower()]


def test_forwarded_for_default_on_without_a_header(labsquid, origin):
    fetch(labsquid.port, "GET", origin.url("/id/xff0"))
    assert values(origin.heads[-1], "x-forwarded-for") == ["127.0.0.1"]


def test_via_both_ways(labsquid, origin):
    resp, _ = fetch(labsquid.port, "GET", origin.url("/bytes/1"))
    assert resp.getheader("Via") == VIA
    assert values(origin.heads[-1], "via") == [VIA]


def test_via_names_the_version_received(labsquid, origin):
    """RFC 9110 §7.6.3, as squid does: an HTTP/1.0 request goes on (as 1.1)
    with "Via: 1.0 ..."; the origin answers in 1.1, and that Via says 1.1."""
    with RawClient(labsquid.port) as c:
        c.send(f"GET {origin.url('/bytes/1')} HTTP/1.0\r\n\r\n".encode())
        resp = c.read_response()
    assert values(origin.heads[-1], "via") == ["1.0" + VIA[3:]]
    assert resp.header("Via") == VIA


def test_via_appended_to_existing(labsquid, origin):
    fetch(labsquid.port, "GET", origin.url("/bytes/1"), headers={"Via": "1.0 other"})
    got = ", ".join(values(origin.heads[-1], "via"))
    assert re.fullmatch(r"1\.0 other, ?" + re.escape(VIA), got), got


class DatelessOrigin(TcpServer):
    """Answers every request with one fixed reply: no Date, its own reason phrase."""

    def handle(self, conn) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 299 Fine Thanks\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\nok")


def test_relayed_reply_head_is_squids(labsquid):
    """As squid 5.7 relays the same reply: its own reason phrase ("Unassigned"
    for a code it has no name for), a Date of its own when the origin sent
    none, and X-Cache/X-Cache-Lookup naming the host and the first http_port."""
    with DatelessOrigin() as dateless, RawClient(labsquid.port) as c:
        c.send(f"GET {dateless.url('/x')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp = c.read_response()
    assert resp.raw_head.startswith(b"HTTP/1.1 299 Unassigned\r\n")
    assert resp.body == b"ok"
    assert len(resp.all("Date")) == 1 and resp.header("Date").endswith(" GMT")
    assert resp.header("X-Cache") == "MISS from labsquid.test"
    assert resp.header("X-Cache-Lookup") == f"MISS from labsquid.test:{labsquid.port}"
    names = [k.lower() for k, _ in resp.headers]
    assert names.index("x-cache") < names.index("x-cache-lookup") < names.index("via")


def test_host_comes_from_the_uri(labsquid, origin):
    with RawClient(labsquid.port) as c:
        c.send(f"GET {origin.url('/headers')} HTTP/1.1\r\nHost: wrong.example\r\n\r\n"
               .encode())
        resp = c.read_response()
    assert resp.status == 200
    head = resp.body.decode("latin-1")
    assert head.startswith("GET /headers HTTP/1.1\r\n"), "origin-form upstream"
    assert values(head, "host") == [f"127.0.0.1:{origin.port}"]


def test_hop_by_hop_request_fields_removed(labsquid, origin):
    with RawClient(labsquid.port) as c:
        c.send(f"GET {origin.url('/headers')} HTTP/1.1\r\nHost: x\r\n"
               "Connection: keep-alive, X-Foo\r\nX-Foo: secret\r\nKeep-Alive: 300\r\n"
               "Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Bar: kept\r\n\r\n".encode())
        resp = c.read_response()
    names = {k for k, _ in head_fields(resp.body.decode("latin-1"))}
    assert "x-bar" in names
    for gone in ("x-foo", "keep-alive", "proxy-connection", "te"):
        assert gone not in names, f"{gone} forwarded upstream"
    assert values(resp.body.decode("latin-1"), "connection") in ([], ["keep-alive"])


def test_hop_by_hop_response_fields_removed(labsquid, origin):
    with RawClient(labsquid.port) as c:
        c.send(f"GET {origin.url('/hop')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp = c.read_response()
    names = {k.lower() for k, _ in resp.headers}
    assert resp.body == b"hop\n"
    assert resp.header("X-Kept") == "yes"
    for gone in ("x-secret", "keep-alive", "proxy-authenticate"):
        assert gone not in names, f"{gone} relayed to the client"
    assert [v.lower() for v in resp.all("Connection")] == ["keep-alive"]


def test_max_forwards_zero_options_answered_by_proxy(labsquid, origin):
    before = len(origin.heads)
    resp, body = fetch(labsquid.port, "OPTIONS", origin.url("/id/opt"),
                       headers={"Max-Forwards": "0"})
    assert resp.status == 200
    assert "GET" in (resp.getheader("Allow") or "")
    assert body == b""
    assert len(origin.heads) == before, "the origin was asked"


def test_max_forwards_zero_trace_echoes_the_request(labsquid, origin):
    before = len(origin.heads)
    resp, body = fetch(labsquid.port, "TRACE", origin.url("/id/trace"),
                       headers={"Max-Forwards": "0", "X-Probe": "42"})
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "message/http"
    assert body.startswith(f"TRACE {origin.url('/id/trace')} HTTP/1.1\r\n".encode())
    assert b"X-Probe: 42" in body
    assert len(origin.heads) == before


def test_max_forwards_decremented_on_options(labsquid, origin):
    resp, _ = fetch(labsquid.port, "OPTIONS", origin.url("/id/o"), headers={"Max-Forwards": "5"})
    assert resp.status == 200
    assert values(origin.heads[-1], "max-forwards") == ["4"]
    fetch(labsquid.port, "GET", origin.url("/id/g"), headers={"Max-Forwards": "0"})
    assert values(origin.heads[-1], "max-forwards") == ["0"], "GET ignores Max-Forwards"


@pytest.mark.parametrize("value", ["-1", "abc", "1x", ""])
def test_max_forwards_that_is_not_a_number_is_dropped(labsquid, origin, value):
    """squid drops it; sent on as 0 it would make the next proxy answer itself."""
    resp, _ = fetch(labsquid.port, "OPTIONS", origin.url("/id/mf"),
                    headers={"Max-Forwards": value})
    assert resp.status == 200
    assert values(origin.heads[-1], "max-forwards") == []


@pytest.mark.parametrize("mode, sent, expected", [
    ("on", "10.1.1.1", ["10.1.1.1, 127.0.0.1"]),
    ("off", "10.1.1.1", ["10.1.1.1, unknown"]),
    ("transparent", "10.1.1.1", ["10.1.1.1"]),
    ("delete", "10.1.1.1", []),
    ("truncate", "10.1.1.1, 10.2.2.2", ["127.0.0.1"]),
])
def test_forwarded_for(make_labsquid, origin, mode, sent, expected):
    ls = make_labsquid(extra=f"forwarded_for {mode}").start()
    headers = {"X-Forwarded-For": sent} if sent else {}
    resp, _ = fetch(ls.port, "GET", origin.url("/id/xff"), headers=headers)
    assert resp.status == 200
    assert values(origin.heads[-1], "x-forwarded-for") == expected


def test_via_off_and_suppressed_version(make_labsquid, origin):
    ls = make_labsquid(extra="via off").start()
    resp, _ = fetch(ls.port, "GET", origin.url("/id/v"))
    assert resp.getheader("Via") is None
    assert values(origin.heads[-1], "via") == []
    ls2 = make_labsquid(extra="httpd_suppress_version_string on").start()
    resp, _ = fetch(ls2.port, "GET", origin.url("/id/v"))
    assert resp.getheader("Via") == "1.1 labsquid.test"
