"""Every acl type decides real requests through the proxy (http_access)."""

from __future__ import annotations

import socket
import time

import psutil
import pytest

from support import proof
from support.origin import RawClient, module_origin, parse_squid_line
from support.service import Labsquid, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()


@pytest.fixture(scope="module")
def ports():
    return {"second": free_port(), "blocked": free_port(), "third": free_port()}


# squid's day letters, by time.localtime's tm_wday (Monday 0)
DAY_LETTERS = "MTWHFAS"


def today_letter() -> str:
    return DAY_LETTERS[time.localtime().tm_wday]


@pytest.fixture(scope="module")
def labsquid(tmp_path_factory, origin, ports):
    folder = tmp_path_factory.mktemp("ls")
    hosts = folder / "hosts"
    hosts.write_text("127.0.0.1 okhost.test\n127.0.0.2 dsthost.test\n")
    rules = f"""\
acl SSL_ports port 443
acl Safe_ports port 80 21 443 70 210 1025-65535 280 488 591 777
acl CONNECT method CONNECT
acl badsrc src 127.0.0.2
acl goodsrc src 127.0.0.3
acl badmethod method PATCH
acl baddomain dstdomain .denied.test
acl badregex url_regex -i /forbidden/
acl baddst dst 127.0.0.2
acl badport port {ports['blocked']}
acl second localport {ports['second']}
acl isproto proto HTTP
acl protopath urlpath_regex ^/proto-check
acl purgers method purge
acl badagent browser -i ^evilbot
acl blockheader req_header X-Block -i ^yes$
acl timetoday urlpath_regex ^/id/time-today
acl timeother urlpath_regex ^/id/time-other
acl today time {today_letter()} 00:00-24:00
acl otherdays time {DAY_LETTERS.replace(today_letter(), "")}
acl crowd src 127.0.0.4
acl secondname myportname 127.0.0.1:{ports['second']}
acl secondpath urlpath_regex ^/id/second-by-name
acl thirdname myportname third
acl thirdpath urlpath_regex ^/id/third-denied
acl many maxconn 2
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow localhost manager
http_access deny manager
http_access deny badsrc
http_access deny badmethod
http_access deny baddomain
http_access deny badregex
http_access deny badport
http_access deny thirdname thirdpath
http_access allow secondname secondpath
http_access deny second
http_access deny isproto protopath
http_access deny baddst
http_access deny badagent
http_access deny blockheader
http_access deny timetoday today
http_access deny timeother otherdays
http_access deny crowd many
http_access allow crowd
http_access allow localhost
http_access allow goodsrc
http_access deny all
"""
    extra = (f"http_port 127.0.0.1:{ports['second']}\n"
             f"http_port 127.0.0.1:{ports['third']} name=third\nhosts_file {hosts}\n")
    instance = Labsquid(folder, rules=rules, extra=extra).start()
    instance.config_day = today_letter()  # what its time acls were written for
    yield instance
    if instance.proc is not None and instance.proc.poll() is None:
        instance.kill_tree()


def ask(port: int, method: str, url: str, source: str = "127.0.0.1", body: bytes = b"",
        headers: str = ""):
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    c = RawClient.__new__(RawClient)
    c.sock, c.buf = sock, b""
    with c:
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        c.send(f"{method} {url} HTTP/1.1\r\nHost: h\r\n{headers}{length}\r\n".encode() + body)
        return c.read_response(method)


def denied(resp) -> bool:
    return resp.status == 403 and resp.header("X-Squid-Error") == "ERR_ACCESS_DENIED 0"


def test_src(labsquid, origin):
    url = origin.url("/id/src")
    assert denied(ask(labsquid.port, "GET", url, source="127.0.0.2"))
    assert ask(labsquid.port, "GET", url, source="127.0.0.3").status == 200
    assert ask(labsquid.port, "GET", url).status == 200


def test_method(labsquid, origin):
    assert denied(ask(labsquid.port, "PATCH", origin.url("/echo"), body=b"x"))
    assert ask(labsquid.port, "PUT", origin.url("/echo"), body=b"x").status == 200


def test_dstdomain(labsquid):
    assert denied(ask(labsquid.port, "GET", "http://www.denied.test/"))
    assert denied(ask(labsquid.port, "GET", "http://denied.test/"))


def test_url_regex(labsquid, origin):
    assert denied(ask(labsquid.port, "GET", origin.url("/id/FORBIDDEN/x")))
    assert ask(labsquid.port, "GET", origin.url("/id/allowed/x")).status == 200


def test_port(labsquid, ports):
    resp = ask(labsquid.port, "GET", f"http://127.0.0.1:{ports['blocked']}/")
    assert denied(resp), "denied before any connect attempt (else 503)"


def test_localport(labsquid, origin, ports):
    assert denied(ask(ports["second"], "GET", origin.url("/id/lp")))
    assert ask(labsquid.port, "GET", origin.url("/id/lp")).status == 200


def test_myportname(labsquid, origin, ports):
    """A port's name is its ``name=``, or the port as written (squid 5.7's
    default, checked here)."""
    assert denied(ask(ports["third"], "GET", origin.url("/id/third-denied")))
    assert ask(ports["third"], "GET", origin.url("/id/third-other")).status == 200
    assert ask(labsquid.port, "GET", origin.url("/id/third-denied")).status == 200
    # The second port denies everything (localport) but what its name allows first.
    assert ask(ports["second"], "GET", origin.url("/id/second-by-name")).status == 200
    assert denied(ask(ports["second"], "GET", origin.url("/id/second-other")))


def test_proto(labsquid, origin):
    assert denied(ask(labsquid.port, "GET", origin.url("/proto-check")))


def test_dst_by_address_and_by_name(labsquid, origin):
    assert denied(ask(labsquid.port, "GET", f"http://127.0.0.2:{origin.port}/id/d"))
    assert denied(ask(labsquid.port, "GET", f"http://dsthost.test:{origin.port}/id/d"))
    resp = ask(labsquid.port, "GET", f"http://okhost.test:{origin.port}/id/ok")
    assert resp.status == 200 and resp.body == b"path /id/ok\n"


def test_browser(labsquid, origin):
    url = origin.url("/id/agent")
    assert denied(ask(labsquid.port, "GET", url, headers="User-Agent: EvilBot/2.0\r\n"))
    assert ask(labsquid.port, "GET", url, headers="User-Agent: curl/7.88\r\n").status == 200
    assert ask(labsquid.port, "GET", url).status == 200  # no User-Agent: no match


def test_req_header(labsquid, origin):
    url = origin.url("/id/header")
    assert denied(ask(labsquid.port, "GET", url, headers="x-block: YES\r\n"))
    assert ask(labsquid.port, "GET", url, headers="X-Block: no\r\n").status == 200
    # squid's getByName joins a header's fields with ", ": "yes, no" is not ^yes$.
    two = "X-Block: yes\r\nX-Block: no\r\n"
    assert ask(labsquid.port, "GET", url, headers=two).status == 200


def test_time_on_the_local_clock(labsquid, origin):
    """``today`` names this day of the week, ``otherdays`` the other six."""
    on_today = ask(labsquid.port, "GET", origin.url("/id/time-today"))
    on_other = ask(labsquid.port, "GET", origin.url("/id/time-other"))
    if today_letter() != labsquid.config_day:
        pytest.skip("midnight passed since the instance started")
    assert denied(on_today)
    assert on_other.status == 200


def test_maxconn_counts_the_clients_open_connections(labsquid, origin):
    """A third connection from 127.0.0.4 is one more than ``maxconn 2``;
    once one of the first two closes, it is served again."""
    url = origin.url("/id/maxconn")
    held = []
    for _ in range(2):
        sock = socket.socket()
        sock.settimeout(5)
        sock.bind(("127.0.0.4", 0))
        sock.connect(("127.0.0.1", labsquid.port))
        client = RawClient.__new__(RawClient)
        client.sock, client.buf = sock, b""
        client.send(f"GET {url} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert client.read_response().status == 200  # two open: not more than 2
        held.append(client)
    assert denied(ask(labsquid.port, "GET", url, source="127.0.0.4"))
    assert ask(labsquid.port, "GET", url, source="127.0.0.3").status == 200  # its own count
    held.pop().close()
    wait_for(lambda: ask(labsquid.port, "GET", url, source="127.0.0.4").status == 200,
             timeout=5, what="a connection fewer")
    held[0].close()


def test_denied_requests_never_reach_the_origin(labsquid, origin):
    before = len(origin.heads)
    answers = [ask(labsquid.port, "GET", origin.url("/id/forbidden/")),
               ask(labsquid.port, "GET", origin.url("/id/x"), source="127.0.0.2")]
    proof.record("security", "denied requests reaching the origin", len(answers),
                 len(origin.heads) - before, unit="requests",
                 detail="requests denied by url_regex and src never reach the origin")
    assert len(origin.heads) == before
    line = wait_for(lambda: [x for x in labsquid.access_lines() if "127.0.0.2 " in x],
                    timeout=5)[-1]
    fields = parse_squid_line(line)
    assert (fields["client"], fields["tag"], fields["status"]) == \
        ("127.0.0.2", "TCP_DENIED", "403")


def test_purge_is_answered_by_the_proxy_and_never_sent_on(labsquid, origin):
    """A method acl naming PURGE (any case) turns squid's PURGE on; once
    http_access allows it, the proxy answers it itself.  labsquid caches
    nothing, so it answers as squid 5.7 does for an object it does not have."""
    before = len(origin.heads)
    resp = ask(labsquid.port, "PURGE", origin.url("/id/purged"))
    assert resp.status == 404 and resp.body == b""
    assert resp.header("Content-Length") == "0"
    assert resp.header("X-Cache-Lookup").startswith("NONE from ")
    assert resp.header("Via").startswith("1.1 ")
    assert len(origin.heads) == before
    line = wait_for(lambda: [x for x in labsquid.access_lines() if "/id/purged" in x],
                    timeout=5)[-1]
    fields = parse_squid_line(line)
    assert (fields["tag"], fields["status"], fields["method"], fields["hier"], fields["mime"]) \
        == ("TCP_MISS", "404", "PURGE", "HIER_NONE", "-")


@pytest.mark.parametrize("action, expect", [
    ("menu", "info"), ("info", "Number of HTTP requests received"),
    ("counters", "client_http.requests ="), ("pool", "dispatch: serial")])
def test_manager_from_localhost(labsquid, action, expect):
    url = f"http://127.0.0.1:{labsquid.port}/squid-internal-mgr/{action}"
    resp = ask(labsquid.port, "GET", url)
    assert resp.status == 200
    assert resp.header("Content-Type").startswith("text/plain")
    assert expect in resp.body.decode()


def test_manager_origin_form(labsquid):
    resp = ask(labsquid.port, "GET", "/squid-internal-mgr/menu")
    assert resp.status == 200 and "counters" in resp.body.decode()


def test_manager_denied_from_elsewhere(labsquid):
    url = f"http://127.0.0.1:{labsquid.port}/squid-internal-mgr/info"
    resp = ask(labsquid.port, "GET", url, source="127.0.0.3")
    proof.record("security", "cache manager from a host other than localhost", 1,
                 int(not denied(resp) or b"Number of HTTP requests" in resp.body),
                 unit="requests answered", detail="403 ERR_ACCESS_DENIED; nothing of the "
                 "report in the body")
    assert denied(resp)
    assert b"Number of HTTP requests" not in resp.body


def test_manager_unknown_action(labsquid):
    url = f"http://127.0.0.1:{labsquid.port}/squid-internal-mgr/nonsense"
    resp = ask(labsquid.port, "GET", url)
    assert resp.status == 404


def test_no_http_access_lines_denies_everything(make_labsquid, origin):
    ls = make_labsquid(rules="").start()
    resp = ask(ls.port, "GET", origin.url("/id/x"))
    proof.record("security", "no http_access line at all", 1, int(not denied(resp)),
                 unit="requests allowed", detail="with no rules the proxy denies everything")
    assert denied(resp)


def test_manager_path_on_another_origin_is_forwarded(labsquid, origin):
    """Only this proxy's own host:port is the cache manager; an origin's path is its own."""
    resp = ask(labsquid.port, "GET", origin.url("/squid-internal-mgr/info"))
    assert resp.status == 200
    assert resp.body == b"path /squid-internal-mgr/info\n"


def _failures(ls) -> list[str]:
    text = ls.stderr_text() + (ls.cache_log.read_text() if ls.cache_log.exists() else "")
    return [line for line in text.splitlines() if "callback_failed" in line or "Traceback" in line]


def test_a_denial_and_manager_pages_keep_the_connection_as_squids_do(labsquid, origin):
    """Answered before their request was read to its end, they leave the
    requests pipelined behind them to be served, in order."""
    mgr = f"http://127.0.0.1:{labsquid.port}/squid-internal-mgr/"
    urls = ["http://www.denied.test/", mgr + "menu", mgr + "nonsense", origin.url("/id/after")]
    with RawClient(labsquid.port) as c:
        c.send(b"".join(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % u.encode() for u in urls))
        replies = [c.read_response() for _ in urls]
    assert [r.status for r in replies] == [403, 200, 404, 200]
    assert [r.header("Connection") for r in replies[:3]] == ["keep-alive"] * 3
    assert replies[3].body == b"path /id/after\n"
    assert _failures(labsquid) == []


def test_a_refused_request_with_a_body_or_a_bad_url_closes_the_connection(labsquid, origin):
    follow = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/id/never").encode()
    before = len(origin.heads)
    for request in (b"POST http://www.denied.test/ HTTP/1.1\r\nHost: h\r\n"
                    b"Content-Length: 5\r\n\r\nhello",
                    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"):
        with RawClient(labsquid.port) as c:
            c.send(request + follow)
            reply = c.read_response()
            assert reply.status in (403, 400)
            assert reply.header("Connection") == "close"
            assert c.closed_by_peer()
    assert origin.heads[before:] == []
    assert _failures(labsquid) == []


def test_a_head_answered_by_the_proxy_has_no_body(labsquid, origin):
    """Its Content-Length, but not its bytes: on a kept connection they would
    be read as the next response."""
    mgr = f"http://127.0.0.1:{labsquid.port}/squid-internal-mgr/"
    urls = ["http://www.denied.test/", mgr + "info", mgr + "nonsense"]
    with RawClient(labsquid.port) as c:
        c.send(b"".join(b"HEAD %s HTTP/1.1\r\nHost: h\r\n\r\n" % u.encode() for u in urls)
               + b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/id/after-head").encode())
        heads = [c.read_response("HEAD") for _ in urls]
        after = c.read_response()
    assert [r.status for r in heads] == [403, 200, 404]
    assert all(r.body == b"" and int(r.header("Content-Length")) > 0 for r in heads)
    assert (after.status, after.body) == (200, b"path /id/after-head\n")


def test_pipelined_denials_to_a_client_that_does_not_read_stay_bounded(labsquid):
    """Each denial is a 1.7 KB page for a 60-byte request, with nothing
    upstream to hold back: the proxy stops parsing while 256 KB of them
    wait, so a client that never reads cannot grow its memory (it grew by
    hundreds of MB); everything is answered, in order, once it reads."""
    server = psutil.Process(labsquid.proc.pid).children()[0]  # serial: the kid serves
    before = server.memory_info().rss
    request = b"GET http://www.denied.test/ HTTP/1.1\r\nHost: h\r\n\r\n"
    with socket.create_connection(("127.0.0.1", labsquid.port)) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        c.settimeout(1.0)
        payload = memoryview(request * 40_000)  # 2 MB; 68 MB of pages if all were answered
        total = 0
        try:
            while total < len(payload):
                total += c.send(payload[total:total + 65536])
        except TimeoutError:
            pass  # the proxy stopped reading: what it holds is bounded
        grown = server.memory_info().rss - before
        complete = total // len(request)
        c.settimeout(2)
        data = bytearray()
        try:
            while chunk := c.recv(1 << 20):
                data += chunk
        except TimeoutError:
            pass  # all there is
    assert data.count(b"HTTP/1.1 403 ") == complete
    assert grown < 16 << 20, f"the server grew by {grown >> 20} MB"
    assert total < len(payload), "the proxy read every request: nothing held it back"
