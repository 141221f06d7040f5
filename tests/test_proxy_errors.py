"""squid's error pages from a real proxy: status, X-Squid-Error, and the access.log line.

The machine's resolver matters for ERR_DNS_FAIL: ``.invalid`` never resolves
(RFC 6761), and ``dns_timeout 2 seconds`` bounds the wait when the name
server in /etc/resolv.conf does not answer at all.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from support.origin import (
    RawClient,
    close_listener,
    fetch,
    manager_page,
    module_labsquid,
    module_origin,
    parse_squid_line,
    raw_exchange,
)
from support.service import DEFAULT_RULES, free_port, wait_for

pytestmark = pytest.mark.slow

RULES = "acl blocked dstdomain .blocked.test\nhttp_access deny blocked\n" + DEFAULT_RULES
EXTRA = """\
dns_timeout 2 seconds
read_timeout 1 second
request_header_max_size 1 KB
request_body_max_size 10 KB
"""


@pytest.fixture(scope="module")
def labsquid(tmp_path_factory):
    yield from module_labsquid(tmp_path_factory, rules=RULES, extra=EXTRA)


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()


def last_line(ls, contains: str) -> dict[str, str]:
    def find():
        for line in reversed(ls.access_lines()):
            if contains in line:
                return parse_squid_line(line)
        return None
    return wait_for(find, timeout=5, what=f"an access.log line with {contains!r}")


def assert_error_page(resp, status: int, code: str) -> None:
    assert resp.status == status, (resp.status, resp.raw_head)
    assert resp.header("X-Squid-Error").split(" ")[0] == code
    assert resp.header("Content-Type").startswith("text/html")
    assert int(resp.header("Content-Length")) == len(resp.body)
    assert code.encode() in resp.body


def test_telnet_hello_is_protocol_unknown(labsquid):
    with RawClient(labsquid.port) as c:
        c.send(b"hello\r\n")
        resp = c.read_response()
        assert_error_page(resp, 400, "ERR_PROTOCOL_UNKNOWN")
        assert resp.header("X-Squid-Error") == "ERR_PROTOCOL_UNKNOWN 0"
        # squid 5.7: no cache lookup was made for a request it could not read.
        assert resp.header("X-Cache-Lookup") == f"NONE from labsquid.test:{labsquid.port}"
        assert c.closed_by_peer(), "the connection closes after an unparseable request"
    line = last_line(labsquid, "error:invalid-request")
    # squid 5.7 logs the word the line starts with as the method: "hello".
    assert (line["tag"], line["status"], line["method"]) == ("NONE_NONE", "400", "hello")
    assert int(line["size"]) == len(resp.raw_head) + len(resp.body)


@pytest.mark.parametrize("target", ["http://bad host/", "http://exa mple/", "http:///x",
                                    "http://a_b^c/", "http://[zz/", "http://h:99999/"])
def test_invalid_url(labsquid, origin, target):
    before = len(origin.heads)
    resp = raw_exchange(labsquid.port, f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert_error_page(resp, 400, "ERR_INVALID_URL")
    assert len(origin.heads) == before


def test_connect_refused(labsquid):
    port = free_port()  # bound then closed: nothing listens there
    url = f"http://127.0.0.1:{port}/refused"
    resp = raw_exchange(labsquid.port, f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert_error_page(resp, 503, "ERR_CONNECT_FAIL")
    assert resp.header("X-Squid-Error") == "ERR_CONNECT_FAIL 111"
    # squid 5.7: the request was looked up (a miss) before the connect failed.
    assert resp.header("X-Cache-Lookup") == f"MISS from labsquid.test:{labsquid.port}"
    line = last_line(labsquid, url)
    # squid 5.7: TCP_MISS/503 … HIER_DIRECT/127.0.0.1 text/html
    assert (line["tag"], line["status"], line["hier"], line["peer"]) == \
        ("TCP_MISS", "503", "HIER_DIRECT", "127.0.0.1")
    assert int(line["size"]) == len(resp.raw_head) + len(resp.body)


def test_unknown_host(labsquid):
    url = "http://no-such-host.invalid/x"
    resp = raw_exchange(labsquid.port, f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert_error_page(resp, 503, "ERR_DNS_FAIL")
    line = last_line(labsquid, url)
    assert (line["tag"], line["status"], line["hier"], line["peer"]) == \
        ("TCP_MISS", "503", "HIER_NONE", "-")


def test_read_timeout(labsquid, origin):
    url = origin.url("/slow/3")
    resp = raw_exchange(labsquid.port, f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert_error_page(resp, 504, "ERR_READ_TIMEOUT")
    line = last_line(labsquid, url)
    assert (line["tag"], line["status"]) == ("TCP_MISS", "504")
    assert 900 <= int(line["elapsed"]) < 2500


def test_access_denied(labsquid, origin):
    url = "http://www.blocked.test/secret"
    resp = raw_exchange(labsquid.port, f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert_error_page(resp, 403, "ERR_ACCESS_DENIED")
    line = last_line(labsquid, url)
    assert (line["tag"], line["status"], line["hier"]) == ("TCP_DENIED", "403", "HIER_NONE")


def test_request_header_too_big(labsquid, origin):
    before = len(origin.heads)
    big = "X-Big: " + "a" * 2000 + "\r\n"
    resp = raw_exchange(labsquid.port,
                        f"GET {origin.url('/id/big')} HTTP/1.1\r\nHost: h\r\n{big}\r\n".encode())
    assert resp.status in (413, 431)
    assert resp.header("X-Squid-Error").split()[0] == "ERR_TOO_BIG"
    assert len(origin.heads) == before
    line = last_line(labsquid, f"NONE_NONE/{resp.status} ")
    assert int(line["size"]) == len(resp.raw_head) + len(resp.body)
    # squid 5.7's line for it: NONE_NONE/431 3630 GET error:request-too-large ...
    assert (line["method"], line["url"]) == ("GET", "error:request-too-large")


def test_a_head_refused_after_its_request_line_logs_method_and_url(labsquid, origin):
    """squid 5.7 (checked here) logs ``NONE_NONE/400 … GET http://…/ -
    HIER_NONE/- text/html``: the request line parsed, the fields did not."""
    url = origin.url("/id/bad-field")
    resp = raw_exchange(labsquid.port,
                        f"GET {url} HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n".encode())
    assert_error_page(resp, 400, "ERR_INVALID_REQ")
    line = last_line(labsquid, f" {url} ")
    assert (line["tag"], line["status"], line["method"], line["hier"]) == \
        ("NONE_NONE", "400", "GET", "HIER_NONE")


@pytest.mark.parametrize("request_line, status, code, method, url", [
    # Each as squid 5.7 logs it (observed here): the method it read, and the
    # URL once the line parsed.
    ("GET {url} HTTP/2.0", 505, "ERR_UNSUP_HTTPVERSION", "GET", "{url}"),
    # ... but never a password: the userinfo is left out, as from any log URL
    ("GET http://alice:secret@h.test/x HTTP/2.0", 505, "ERR_UNSUP_HTTPVERSION", "GET",
     "http://h.test/x"),
    ("GET {url}\x01 HTTP/1.1", 400, "ERR_INVALID_REQ", "GET", "error:invalid-request"),
    ("GET {url}" + "a" * 3000 + " HTTP/1.1", 414, "ERR_TOO_BIG", "GET", "error:request-too-large"),
    ("hello world", 400, "ERR_PROTOCOL_UNKNOWN", "hello", "error:invalid-request"),
    ("B" * 40 + " {url} HTTP/1.1", 400, "ERR_PROTOCOL_UNKNOWN", "B" * 32, "error:invalid-request"),
])
def test_a_refused_request_line_logs_the_method_squid_reads(labsquid, origin, request_line,
                                                             status, code, method, url):
    target = origin.url("/id/refused-line")
    head = request_line.format(url=target) + "\r\nHost: h\r\n\r\n"
    before = len(labsquid.access_lines())
    resp = raw_exchange(labsquid.port, head.encode("latin-1"))
    assert_error_page(resp, status, code)
    new = wait_for(lambda: labsquid.access_lines()[before:], timeout=5, what="its line")
    assert len(new) == 1, new
    line = parse_squid_line(new[0])
    assert (line["tag"], line["status"]) == ("NONE_NONE", str(status))
    assert (line["method"], line["url"]) == (method, url.format(url=target))


def test_request_body_too_big_content_length(labsquid, origin):
    before = len(origin.heads)
    resp, body = fetch(labsquid.port, "POST", origin.url("/echo"), body=b"b" * 20000)
    assert resp.status == 413
    assert resp.getheader("X-Squid-Error").split()[0] == "ERR_TOO_BIG"
    assert len(origin.heads) == before


def test_request_body_too_big_chunked(labsquid, origin):
    before = len(origin.heads)
    url = origin.url("/echo")
    chunk = b"%x\r\n%s\r\n" % (4000, b"q" * 4000)
    with RawClient(labsquid.port) as c:
        c.send(f"POST {url} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
               + chunk * 4 + b"0\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 413
    assert resp.header("X-Squid-Error").split()[0] == "ERR_TOO_BIG"
    assert len(origin.heads) == before


def test_request_body_at_the_limit_passes(labsquid, origin):
    resp, body = fetch(labsquid.port, "POST", origin.url("/echo"), body=b"b" * 10240)
    assert resp.status == 200 and body == b"b" * 10240


SMUGGLING = {
    "cl_and_te": "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl_list": "Content-Length: 5, 6\r\n\r\nhello!",
    "bad_chunk_size": "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "obs_fold": "X-Foo: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "bare_cr": "X-Foo: a\rb\r\nContent-Length: 0\r\n\r\n",
    "space_before_colon": "Content-Length : 5\r\n\r\nhello",
    "te_not_chunked": "Transfer-Encoding: gzip\r\n\r\nhello",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_never_forwarded(labsquid, origin, case):
    before = len(origin.heads)
    data = f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: h\r\n{SMUGGLING[case]}".encode()
    follow = f"GET {origin.url('/id/smuggled')} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    with RawClient(labsquid.port) as c:
        c.send(data + follow)
        resp = c.read_response()
        assert resp.status in ((400, 501) if case == "te_not_chunked" else (400,)), resp.raw_head
        assert resp.header("X-Squid-Error") is not None
        assert resp.header("Connection").lower() == "close"
        assert c.closed_by_peer(), "the proxy must not read a request after a broken one"
    assert origin.heads[before:] == []


@contextlib.contextmanager
def one_shot_origin(reply: bytes) -> Iterator[int]:
    """An origin on a free port (yielded) that takes one request, answers
    ``reply`` (raw bytes, maybe none at all) and closes."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        close_listener(srv)  # its thread may still wait in accept()


def test_zero_size_reply(make_labsquid, origin):
    """An origin that accepts and closes without a byte: 502 ERR_ZERO_SIZE_OBJECT."""
    labsquid = make_labsquid(dispatch="notify").start()
    with one_shot_origin(b"") as port:
        resp = raw_exchange(labsquid.port,
                            f"GET http://127.0.0.1:{port}/z HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
                            timeout=2)
    assert_error_page(resp, 502, "ERR_ZERO_SIZE_OBJECT")
    resp, body = fetch(labsquid.port, "GET", origin.url("/id/alive"))
    assert body == b"path /id/alive\n"


def test_a_protocol_switch_nobody_asked_for_is_a_502(labsquid, origin):
    """Upgrade is never sent on, so an origin's 101 is an invalid response:
    the client gets squid's 502 at once (it got nothing and waited), and the
    bytes after the 101 are not relayed."""
    resp = raw_exchange(labsquid.port,
                        f"GET {origin.url('/switch')} HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
                        timeout=5)
    assert_error_page(resp, 502, "ERR_INVALID_RESP")
    assert b"RAWDATA" not in resp.body
    wait_for(lambda: any("TCP_MISS/502" in line and "/switch" in line
                         for line in labsquid.access_lines()), what="its log line")


@pytest.mark.parametrize("tail", [b"ZZ\r\nxx\r\n0\r\n\r\n", b""], ids=["bad-chunk", "closed"])
def test_a_response_body_cut_early_reaches_the_client_as_far_as_it_went(labsquid, tail):
    """A bad chunk (or the origin's close) in the same read as the head: the
    head and the good chunk still reach the client, then the close, and the
    log counts exactly what the client got (it got nothing, logged as 200)."""
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" + tail
    with one_shot_origin(reply) as port:
        url = f"http://127.0.0.1:{port}/cut-{len(tail)}"
        with socket.create_connection(("127.0.0.1", labsquid.port), timeout=5) as c:
            c.sendall(f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            got = b""
            while chunk := c.recv(65536):
                got += chunk
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert got.endswith(b"\r\n\r\n5\r\nhello\r\n")  # no last chunk: visibly cut
    line = wait_for(lambda: [x for x in labsquid.access_lines() if url in x], what="its line")
    fields = parse_squid_line(line[0])
    assert (fields["tag"], fields["status"], int(fields["size"])) == \
        ("TCP_MISS_ABORTED", "200", len(got))


def test_invalid_response(make_labsquid, origin):
    labsquid = make_labsquid().start()
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello"
    with one_shot_origin(reply) as port:
        resp = raw_exchange(labsquid.port,
                            f"GET http://127.0.0.1:{port}/r HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert_error_page(resp, 502, "ERR_INVALID_RESP")


def next_request_answered(c: RawClient, origin, name: str) -> None:
    c.send(f"GET {origin.url('/id/' + name)} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert c.read_response().body == f"path /id/{name}\n".encode()


@pytest.mark.parametrize("case", ["refused", "dns", "timeout", "empty reply"])
def test_an_error_on_the_origin_side_keeps_the_client_connection(labsquid, origin, case):
    """As squid 5.7 does (checked here): the request was understood and
    read whole, so the connection serves the next one."""
    with contextlib.ExitStack() as stack:
        url = {"refused": lambda: f"http://127.0.0.1:{free_port()}/{case}",
               "dns": lambda: "http://no-such-host.invalid/keep",
               "timeout": lambda: origin.url("/slow/3"),
               "empty reply": lambda: f"http://127.0.0.1:{stack.enter_context(one_shot_origin(b''))}/"
               }[case]()
        with RawClient(labsquid.port) as c:
            c.send(f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            resp = c.read_response()
            assert resp.status in (502, 503, 504), resp.raw_head
            assert resp.header("Connection") == "keep-alive"
            next_request_answered(c, origin, f"after-{case.replace(' ', '-')}")


def test_an_origin_side_error_closes_when_the_request_is_not_read_whole(labsquid, origin):
    refused = f"http://127.0.0.1:{free_port()}/"
    with RawClient(labsquid.port) as c:  # the body came with the head: kept
        c.send(f"POST {refused} HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
               .encode())
        resp = c.read_response()
        assert (resp.status, resp.header("Connection")) == (503, "keep-alive")
        next_request_answered(c, origin, "after-post")
    with RawClient(labsquid.port) as c:  # the body is still to come: it cannot be told apart
        c.send(f"POST {refused} HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"
               .encode())
        resp = c.read_response()
        assert (resp.status, resp.header("Connection")) == (503, "close")
        assert c.closed_by_peer()
    with RawClient(labsquid.port) as c:  # HTTP/1.1 that says Proxy-Connection: close
        c.send(f"GET {refused} HTTP/1.1\r\nHost: h\r\nProxy-Connection: close\r\n\r\n"
               .encode())
        resp = c.read_response()
        assert (resp.status, resp.header("Connection")) == (503, "close")
        assert c.closed_by_peer()
    with RawClient(labsquid.port) as c:  # HTTP/1.0 without keep-alive
        c.send(f"GET {refused} HTTP/1.0\r\n\r\n".encode())
        resp = c.read_response()
        assert (resp.status, resp.header("Connection")) == (503, "close")
        assert c.closed_by_peer()


def test_a_request_error_closes_the_client_connection(labsquid):
    """An invalid URL (squid 5.7 closes too): what follows on the connection
    cannot be trusted to start a request."""
    with RawClient(labsquid.port) as c:
        c.send(b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = c.read_response()
        assert (resp.status, resp.header("Connection")) == (400, "close")
        assert c.closed_by_peer()


# squid 5.7's line (observed here) for a connection that ended before a whole
# request head, from the status on: nothing was answered.
ENDED_BEFORE_HEADERS = ["NONE_NONE/000", "0", "-", "error:transaction-end-before-headers", "-",
                        "HIER_NONE/-", "-"]


def _new_lines(ls, before: int) -> list[str]:
    return wait_for(lambda: ls.access_lines()[before:], timeout=5, what="a new access.log line")


def _lines_so_far(ls, origin, marker: str) -> int:
    """How many lines access.log has once every earlier connection's line is
    in: a request's own line is written after theirs (one serving process)."""
    url = origin.url(f"/id/{marker}")
    assert raw_exchange(ls.port, f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode()).status == 200
    lines = wait_for(lambda: [n for n, line in enumerate(ls.access_lines()) if url in line],
                     timeout=5, what=f"the line of {url}")
    return lines[-1] + 1


@pytest.mark.parametrize("sent", [b"GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: x\r\n", b"hel"],
                         ids=["half a head", "half a line"])
def test_a_connection_that_ends_inside_a_head_is_logged_and_not_answered(labsquid, origin, sent):
    """squid's half_closed_clients off (the default): a client that stops
    sending is gone, so half a head gets no 400; squid logs it all the same."""
    before = _lines_so_far(labsquid, origin, "before-" + str(len(sent)))
    with socket.create_connection(("127.0.0.1", labsquid.port), timeout=5) as sock:
        sock.sendall(sent)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b"", "answered a client that had stopped sending"
    new = _new_lines(labsquid, before)
    assert len(new) == 1, new
    assert new[0].split()[3:] == ENDED_BEFORE_HEADERS


def test_a_connection_gone_inside_a_head_is_no_request_in_the_counters(labsquid, origin):
    """squid counts a request only where there was one."""
    def requests() -> int:
        return int(manager_page(labsquid.port, "counters")["client_http.requests"])

    before = _lines_so_far(labsquid, origin, "before-counters")
    first = requests()  # counted once it is done, after its page was made
    with socket.create_connection(("127.0.0.1", labsquid.port), timeout=5) as sock:
        sock.sendall(b"GET http://127.0.0.1:9/x HTTP/1.1\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""
    wait_for(lambda: any("transaction-end-before-headers" in line
                         for line in labsquid.access_lines()[before:]), timeout=5, what="its line")
    assert requests() == first + 1  # the first counters page, not the half head


def test_a_connection_reset_inside_a_head_is_logged(labsquid, origin):
    """The same line when the client resets the connection instead."""
    before = _lines_so_far(labsquid, origin, "before-reset")
    sock = socket.create_connection(("127.0.0.1", labsquid.port), timeout=5)
    sock.sendall(b"GET http://127.0.0.1:9/x HTTP/1.1\r\nHo")
    time.sleep(0.2)  # read before the reset, as half a head
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    new = _new_lines(labsquid, before)
    assert len(new) == 1, new
    assert new[0].split()[3:] == ENDED_BEFORE_HEADERS


@pytest.mark.parametrize("ending", ["close", "reset"])
def test_a_connection_that_sent_nothing_is_logged_as_squid_logs_it(labsquid, origin, ending):
    """squid 5.7 logs a connection that ends without a byte (a TCP health
    check, a client that gave up) as one that ended inside a head; an
    ``acl ... has request`` on access_log keeps such lines out of a file."""
    before = _lines_so_far(labsquid, origin, f"before-nothing-{ending}")
    sock = socket.create_connection(("127.0.0.1", labsquid.port), timeout=5)
    if ending == "close":
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    new = _new_lines(labsquid, before)
    after = _lines_so_far(labsquid, origin, f"after-nothing-{ending}")
    assert after == before + 2, labsquid.access_lines()[before:]  # its line, the marker's
    assert new[0].split()[3:] == ENDED_BEFORE_HEADERS


def test_a_connection_closed_after_its_request_adds_no_line(labsquid, origin):
    """squid logs no such line once a request was served and nothing more came."""
    before = _lines_so_far(labsquid, origin, "before-served")
    with RawClient(labsquid.port) as c:
        c.send(f"GET {origin.url('/id/served')} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert c.read_response().status == 200
    wait_for(lambda: len(labsquid.access_lines()) > before, timeout=5, what="its line")
    # A second connection's request marks the end of what the first one logged.
    resp = raw_exchange(labsquid.port,
                        f"GET {origin.url('/id/marker')} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert resp.status == 200
    wait_for(lambda: any("/id/marker" in line for line in labsquid.access_lines()[before:]),
             timeout=5, what="the marker's line")
    urls = [parse_squid_line(line)["url"] for line in labsquid.access_lines()[before:]]
    assert urls == [origin.url("/id/served"), origin.url("/id/marker")]


def test_half_closed_clients_on_still_answers_a_client_that_stopped_sending(make_labsquid,
                                                                            origin):
    """squid's half_closed_clients on: a request whose client then shut down
    its sending side is still served."""
    ls = make_labsquid(extra="half_closed_clients on").start()
    request = f"GET {origin.url('/id/half-closed')} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", ls.port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
    assert reply.endswith(b"path /id/half-closed\n")
