"""access.log lines of real transactions, byte-exact in squid's native format.

``%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt``: the reply size
is every byte the client received (head and body as sent on the wire).
"""

from __future__ import annotations

import time

import pytest

from support import proof
from support.origin import RawClient, module_labsquid, module_origin, parse_squid_line
from support.service import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labsquid(tmp_path_factory):
    yield from module_labsquid(tmp_path_factory)


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()


def exchange(ls, method: str, url: str, body: bytes = b"") -> tuple[bytes, float, float]:
    """One request on a fresh connection; returns all bytes received and the time bounds."""
    t0 = time.time()
    with RawClient(ls.port) as c:
        length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        c.send(f"{method} {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n{length}\r\n"
               .encode() + body)
        data = c.read_until_close()
    return data, t0, time.time()


def line_for(ls, method: str, url: str) -> tuple[str, dict[str, str]]:
    needle = f" {method} {url} "

    def find():
        found = [x for x in ls.access_lines() if needle in x]
        return found if found else None
    found = wait_for(find, timeout=5, what=f"the line of {method} {url}")
    assert len(found) == 1, found
    return found[0], parse_squid_line(found[0])


def test_get_line_byte_exact(labsquid, origin):
    url = origin.url("/bytes/100")
    data, t0, t1 = exchange(labsquid, "GET", url)
    assert data.endswith(b"\r\n\r\n" + b"x" * 100)
    line, f = line_for(labsquid, "GET", url)
    assert line.endswith(f" 127.0.0.1 TCP_MISS/200 {len(data)} GET {url} - "
                         "HIER_DIRECT/127.0.0.1 text/plain")
    stamp = float(f"{f['ts']}.{f['ms']}")
    assert int(t0) - 0.001 <= stamp <= t1 + 0.001
    assert len(f["elapsed"]) >= 6, "%6tr is right-aligned in 6 columns"
    assert 0 <= int(f["elapsed"]) <= (t1 - t0) * 1000 + 5


@pytest.mark.parametrize("path, method, mime", [
    ("/chunked/5000", "GET", "application/octet-stream"),
    ("/close/3000", "GET", "text/plain"),
    ("/bytes/2000", "HEAD", "text/plain"),
    ("/status/204", "GET", "text/plain"),
    ("/status/404", "GET", "text/plain"),
])
def test_reply_size_is_what_the_client_received(labsquid, origin, path, method, mime):
    url = origin.url(path)
    data, _t0, _t1 = exchange(labsquid, method, url)
    status = data.split(b" ", 2)[1].decode()
    _line, f = line_for(labsquid, method, url)
    assert (f["tag"], f["status"], f["size"], f["mime"], f["user"]) == \
        ("TCP_MISS", status, str(len(data)), mime, "-")


def test_post_line(labsquid, origin):
    url = origin.url("/echo?post")
    data, _t0, _t1 = exchange(labsquid, "POST", url, body=b"p" * 777)
    _line, f = line_for(labsquid, "POST", url)
    assert (f["tag"], f["status"], f["size"]) == ("TCP_MISS", "200", str(len(data)))


def test_keep_alive_requests_each_logged(labsquid, origin):
    with RawClient(labsquid.port) as c:
        sizes = []
        for i in range(3):
            c.send(f"GET {origin.url(f'/id/ka{i}')} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            resp = c.read_response()
            sizes.append(len(resp.raw_head) + len(resp.body))
    for i in range(3):
        _line, f = line_for(labsquid, "GET", origin.url(f"/id/ka{i}"))
        assert f["size"] == str(sizes[i])


@pytest.mark.parametrize("path", ["/a%0aFAKE", "/a%0d%0a1.000%200%206.6.6.6%20TCP_HIT/200",
                                  "/q?x=%22%20%00", "/%25%0A"])
def test_escaped_url_cannot_forge_a_line(labsquid, origin, path):
    url = origin.url(path)
    before = len(labsquid.access_lines())
    exchange(labsquid, "GET", url)
    _line, f = line_for(labsquid, "GET", url)
    lines = labsquid.access_lines()
    proof.record("security", "log forging: percent-encoded CR LF in a URL", 1,
                 int(f["url"] != url or len(lines) != before + 1), unit="lines forged",
                 detail="the URL is logged still encoded, as one line (end to end)")
    assert f["url"] == url
    assert len(lines) == before + 1
    for line in lines:
        parse_squid_line(line)


def test_raw_control_bytes_in_url_rejected_not_logged_raw(labsquid, origin):
    before = len(labsquid.access_lines())
    with RawClient(labsquid.port) as c:
        c.send(b"GET http://127.0.0.1:%d/a\x0bb\x7f HTTP/1.1\r\nHost: h\r\n\r\n" % origin.port)
        resp = c.read_response()
    wait_for(lambda: len(labsquid.access_lines()) > before, timeout=5)
    raw = [line for line in labsquid.access_lines() if "\x0b" in line or "\x7f" in line]
    proof.record("security", "log forging: raw control bytes in a URL", 1,
                 int(resp.status != 400) + len(raw), unit="requests/lines",
                 detail="400, and no access.log line holds the raw bytes (end to end)")
    assert resp.status == 400
    for line in labsquid.access_lines():
        parse_squid_line(line)
        assert "\x0b" not in line and "\x7f" not in line


def test_every_line_parses(labsquid):
    lines = labsquid.access_lines()
    assert lines
    for line in lines:
        parse_squid_line(line)
