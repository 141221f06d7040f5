"""The cache manager as squid's own tools read it.

``squidclient mgr:info`` asks for ``cache_object://HOST/info``, squid's
manager scheme, not for the ``/squid-internal-mgr/`` path, and so does
``cachemgr.cgi``, which turns the pages into HTML.  These tests run both
(Debian's squidclient and squid-cgi, installed by packaging/setup.sh) and
raw requests, and compare with what squid 5.7 answered the same requests
here.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import time
from types import SimpleNamespace

import pytest

from labsquid.config import parse_text
from labsquid.http import Headers
from labsquid.proxy import mgr
from labsquid.proxy.replies import manager_request
from labsquid.stats import SERVICE_BINS, Stats, segment_path
from support.origin import (
    EchoServer,
    RawClient,
    fetch,
    module_origin,
    open_tunnel,
    parse_squid_line,
    recv_exactly,
)
from support.service import DEFAULT_RULES, Labsquid, free_port, wait_for

pytestmark = pytest.mark.slow

PAGES = [("menu", " info "), ("info", "Number of HTTP requests received"),
         ("service_times", "\tHTTP Requests (All):  50%   "),
         ("counters", "client_http.requests ="), ("5min", "client_http.requests = "),
         ("60min", "client_http.all_median_svc_time = "), ("pool", "dispatch: notify")]


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()


@pytest.fixture(scope="module")
def echo():
    with EchoServer() as server:
        yield server


@pytest.fixture(scope="module")
def labsquid(tmp_path_factory, echo):
    second = free_port()
    # On the second port, squid's manager scheme is refused by the proto
    # acl, while the http path to the same pages is not.  Tunnels may go
    # to the echo server.
    rules = (f"acl second localport {second}\nacl objectscheme proto cache_object\n"
             f"http_access deny objectscheme second\nacl SSL_ports port {echo.port}\n"
             f"{DEFAULT_RULES}")
    instance = Labsquid(tmp_path_factory.mktemp("ls"), rules=rules, dispatch="notify",
                        pool_size=2, extra=f"http_port 127.0.0.1:{second}\n").start()
    instance.second = second
    try:
        yield instance
    finally:
        if instance.proc is not None and instance.proc.poll() is None:
            instance.kill_tree()


def squidclient(port: int, action: str) -> bytes:
    done = subprocess.run(["squidclient", "-h", "127.0.0.1", "-p", str(port), f"mgr:{action}"],
                          capture_output=True, timeout=10, check=True)
    return done.stdout


def ask(port: int, method: str, url: str, source: str = "127.0.0.1", fields: str = ""):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                    source_address=(source, 0))
    c = RawClient.__new__(RawClient)
    c.sock, c.buf = sock, b""
    with c:
        c.send(f"{method} {url} HTTP/1.1\r\nHost: h\r\n{fields}Connection: close\r\n\r\n"
               .encode())
        return c.read_response(method)


def line_for(ls: Labsquid, method: str, url: str, status: int) -> dict[str, str]:
    needles = (f"/{status} ", f" {method} {url} ")
    found = wait_for(lambda: [x for x in ls.access_lines() if all(n in x for n in needles)],
                     timeout=5, what=f"the {status} line of {method} {url}")
    assert len(found) == 1, found
    return parse_squid_line(found[0])


@pytest.mark.parametrize("action, expect", PAGES)
def test_squidclient_reads_every_page(labsquid, action, expect):
    reply = squidclient(labsquid.port, action)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert expect in body.decode()
    fields = line_for(labsquid, "GET", f"cache_object://127.0.0.1/{action}", 200)
    assert (fields["tag"], fields["size"], fields["hier"], fields["peer"], fields["mime"]) \
        == ("TCP_MISS", str(len(reply)), "HIER_NONE", "-", "text/plain")


CACHEMGR_CGI = "/usr/lib/cgi-bin/cachemgr.cgi"


def cachemgr_cgi(folder, port: int, operation: str,
                 login: str = "&user_name=&auth=") -> tuple[bytes, bytes]:
    """Run the CGI as a web server would; it reads cachemgr.conf (the
    targets it may ask) from its working folder first.  Returns its head
    and its HTML."""
    (folder / "cachemgr.conf").write_text(f"127.0.0.1:{port}\n")
    env = {"PATH": os.environ["PATH"], "REQUEST_METHOD": "GET",
           "SCRIPT_NAME": "/cgi-bin/cachemgr.cgi",
           "QUERY_STRING": f"host=127.0.0.1&port={port}&operation={operation}{login}"}
    done = subprocess.run([CACHEMGR_CGI], cwd=folder, env=env, capture_output=True,
                          timeout=10, check=True)
    head, _, html = done.stdout.partition(b"\r\n\r\n")
    return head, html


@pytest.mark.parametrize("operation, expect", [
    ("menu", b"operation=counters&auth=\">Traffic and Resource Counters</A>"),
    ("info", b"Number of HTTP requests received"),
    ("counters", b"server.all.kbytes_out = "),
    ("pool", b"dispatch: notify"),
])
def test_cachemgr_cgi_shows_every_page_whole(labsquid, tmp_path, operation, expect):
    head, html = cachemgr_cgi(tmp_path, labsquid.port, operation)
    assert head.startswith(b"Status: 200 ")
    # It passes our fields on over its own HTML: a length of the text page
    # would cut the HTML short in the browser.
    assert b"Content-Length" not in head
    assert expect in html
    assert html.rstrip().endswith(b"</HTML>")


def test_a_page_to_http10_ends_with_the_connection_as_squids(labsquid):
    with RawClient(labsquid.port) as c:
        c.send(b"GET cache_object://127.0.0.1/menu HTTP/1.0\r\n\r\n")
        data = c.read_until_close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length:" not in head and b"\r\nConnection: close" in head
    assert body.startswith(b" index ") and body.endswith(b"\tpublic\n")


def test_a_page_carries_squids_fields(labsquid):
    resp = ask(labsquid.port, "GET", "cache_object://127.0.0.1/info")
    assert resp.status == 200
    assert resp.header("Content-Type") == "text/plain;charset=utf-8"
    assert resp.header("Server").startswith("labsquid")
    assert resp.header("Mime-Version") == "1.0"
    assert resp.header("Expires") == resp.header("Last-Modified") == resp.header("Date")
    assert resp.header("X-Cache").startswith("MISS from ")
    assert resp.header("X-Cache-Lookup").startswith("MISS from ")
    assert resp.header("Via").startswith("1.1 ")
    assert int(resp.header("Content-Length")) == len(resp.body)


def test_menu_lines_are_laid_out_as_squids(labsquid):
    body = ask(labsquid.port, "GET", "cache_object://127.0.0.1/menu").body.decode()
    lines = body.splitlines()
    assert [line.split("\t")[0].strip() for line in lines] == \
        ["index", "menu", "info", "service_times", "counters", "5min", "60min", "pool"]
    for line in lines:
        # squid's " %-22s\t%-32s\t%s"
        assert re.fullmatch(r" [a-z0-9_]{1,22} *\t.{32,}\tpublic", line), line
        assert line.index("\t") == 23, line


@pytest.mark.parametrize("url, status, expect", [
    # the host names no origin: squid 5.7 answers any (and any port)
    ("cache_object://example.com/info", 200, "Number of HTTP requests received"),
    # scheme in any case; squid's @password and a query name no page
    ("CACHE_OBJECT://127.0.0.1:9999/counters@secret?x=1", 200, "client_http.requests ="),
    ("cache_object://127.0.0.1/", 200, "\tCache Manager Menu"),
    ("cache_object://127.0.0.1", 200, "\tCache Manager Menu"),
    ("cache_object://127.0.0.1/nosuch", 404, "ERR_INVALID_URL"),
    ("cache_object:///info", 400, "ERR_INVALID_URL"),
])
def test_cache_object_urls_read_as_squids(labsquid, url, status, expect):
    resp = ask(labsquid.port, "GET", url)
    assert resp.status == status
    assert expect in resp.body.decode()


def test_head_has_the_pages_length_and_no_body(labsquid):
    full = ask(labsquid.port, "GET", "cache_object://127.0.0.1/menu")
    head = ask(labsquid.port, "HEAD", "cache_object://127.0.0.1/menu")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == full.header("Content-Length")


def test_an_origins_host_and_port_never_reach_the_origin(labsquid, origin):
    before = len(origin.heads)
    resp = ask(labsquid.port, "GET", f"cache_object://127.0.0.1:{origin.port}/info")
    assert resp.status == 200 and b"Number of HTTP requests received" in resp.body
    assert len(origin.heads) == before


def test_only_localhost_may_ask(labsquid):
    url = "cache_object://127.0.0.1/info"
    resp = ask(labsquid.port, "GET", url, source="127.0.0.3")
    assert resp.status == 403 and resp.header("X-Squid-Error") == "ERR_ACCESS_DENIED 0"
    assert b"Number of HTTP requests" not in resp.body
    tags = wait_for(lambda: [f["tag"] for f in map(parse_squid_line, labsquid.access_lines())
                             if f["client"] == "127.0.0.3" and f["url"] == url],
                    timeout=5, what="the denial's line")
    assert tags == ["TCP_DENIED"]


def test_proto_cache_object_matches_the_scheme_not_the_path(labsquid):
    reply = squidclient(labsquid.second, "info")
    assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"X-Squid-Error: ERR_ACCESS_DENIED 0\r\n" in reply
    path = ask(labsquid.second, "GET",
               f"http://127.0.0.1:{labsquid.second}/squid-internal-mgr/info")
    assert path.status == 200 and b"Number of HTTP requests received" in path.body


def counters(port: int) -> dict[str, float]:
    body = ask(port, "GET", "cache_object://127.0.0.1/counters").body.decode()
    return {name: float(value.split()[0])
            for name, _, value in (line.partition(" = ") for line in body.splitlines())}


def test_counters_carry_squids_keys(labsquid):
    names = list(counters(labsquid.port))
    # what netdata's and squid-exporter's squid collectors read, among others
    for name in ("client_http.requests", "client_http.hits", "client_http.errors",
                 "client_http.kbytes_in", "client_http.kbytes_out",
                 "client_http.hit_kbytes_out", "server.all.requests", "server.all.errors",
                 "server.all.kbytes_in", "server.all.kbytes_out", "server.http.requests",
                 "server.ftp.requests", "server.other.kbytes_out", "icp.pkts_sent",
                 "cd.kbytes_recv", "unlink.requests", "cpu_time", "wall_time",
                 "swap.files_cleaned"):
        assert name in names, name
    assert names.index("server.http.requests") < names.index("server.other.requests") \
        < names.index("icp.pkts_sent") < names.index("cpu_time") < names.index("swap.outs")


def test_counters_add_up_relayed_http_and_tunnels(labsquid, origin, echo):
    """Kilobytes on both sides, as squid counts them: relayed HTTP is
    ``server.http``, a tunnel ``server.other`` (counted while it is open),
    both ``server.all``; the client side has both.  The origin-side figures
    see nothing else; the client side also sees the manager pages read."""
    kib = 1024
    before = counters(labsquid.port)
    body = os.urandom(300 * kib)
    with RawClient(labsquid.port) as c:
        c.send(b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
               % (origin.url("/echo").encode(), len(body)) + body)
        assert c.read_response("POST").body == body
    sock, rest = open_tunnel(labsquid.port, f"127.0.0.1:{echo.port}")
    with sock:
        payload = os.urandom(200 * kib)
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload), rest) == payload
        reads = 0

        def grown() -> dict[str, float] | None:
            nonlocal reads
            reads += 1
            now = counters(labsquid.port)
            return now if (now["server.other.kbytes_in"] - before["server.other.kbytes_in"]
                           >= 200 and now["client_http.kbytes_out"]
                           - before["client_http.kbytes_out"] >= 500) else None
        now = wait_for(grown, timeout=5, what="the tunnel's bytes in the counters")
    delta = {name: now[name] - before[name] for name in now}
    assert delta["server.http.requests"] == 1 and delta["server.other.requests"] == 1
    assert delta["server.all.requests"] == 2
    assert 300 <= delta["server.http.kbytes_out"] <= 301  # the body and its head
    assert 300 <= delta["server.http.kbytes_in"] <= 301
    assert delta["server.other.kbytes_out"] == delta["server.other.kbytes_in"] == 200
    assert 500 <= delta["server.all.kbytes_out"] <= 502
    assert 500 <= delta["server.all.kbytes_in"] <= 502
    # each manager page read is a small request and about 2.5 KiB out
    assert 500 <= delta["client_http.kbytes_in"] <= 502 + reads
    assert 500 <= delta["client_http.kbytes_out"] <= 502 + 3 * reads
    assert delta["server.all.errors"] == delta["server.ftp.requests"] == 0


@pytest.mark.parametrize("path, scheme, action, password", [
    ("/squid-internal-mgr/info", "http", "info", None),
    ("/squid-internal-mgr/", "http", "menu", None),
    ("/squid-internal-mgr/pool?x=1", "http", "pool", None),
    ("/info", "cache_object", "info", None),
    ("/", "cache_object", "menu", None),
    ("/counters@secret", "cache_object", "counters", "secret"),
    ("/info@pw?a=b", "cache_object", "info", "pw"),
    ("/@pw", "cache_object", "menu", "pw"),
    ("/info@", "cache_object", "info", ""),
    ("/squid-internal-mgr/info@pw", "http", "info", "pw"),
])
def test_manager_request(path, scheme, action, password):
    assert manager_request(path, scheme) == (action, password)


# -- cachemgr_passwd, side by side with squid 5.7 and the same lines --------

PASSWORDS = ("cachemgr_passwd secret info counters\n"
             "cachemgr_passwd none menu\n"
             "cachemgr_passwd disable pool\n"
             "cachemgr_passwd other all\n")


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    instance = Labsquid(tmp_path_factory.mktemp("pw"), dispatch="notify", pool_size=1,
                        extra=PASSWORDS).start()
    try:
        yield instance
    finally:
        instance.stop()


def test_protection_follows_squids_first_matching_line():
    entries = parse_text(PASSWORDS, "t.conf").cachemgr_passwd
    assert [mgr.password_for(a, entries) for a in ("info", "menu", "pool", "index")] \
        == ["secret", "none", "disable", "other"]
    assert [mgr.protection(a, entries) for a in ("info", "menu", "pool", "index")] \
        == ["protected", "public", "disabled", "protected"]
    assert mgr.password_for("info", ()) is None and mgr.protection("info", ()) == "public"


def test_offered_password_prefers_a_basic_pair_to_the_url():
    def headers(*lines: str) -> Headers:
        return Headers([line.split(": ", 1) for line in lines])
    assert mgr.offered_password(headers(basic("u:p:q").strip()), "url") == "p:q"
    # the scheme in any case, an empty user
    lowercase = "authorization: basic " + base64.b64encode(b":pw").decode()
    assert mgr.offered_password(headers(lowercase), None) == "pw"
    assert mgr.offered_password(headers(basic("nopair").strip()), "url") == "url"
    assert mgr.offered_password(headers("Authorization: Digest x"), None) is None
    assert mgr.offered_password(None, "url") == "url"


def basic(user_password: str) -> str:
    return f"Authorization: Basic {base64.b64encode(user_password.encode()).decode()}\r\n"


def test_squidclient_needs_the_password_of_a_protected_page(protected):
    for action, event in (("info", "cache_manager_password_needed"),
                          ("info@wrong", "cache_manager_password_incorrect")):
        reply = squidclient(protected.port, action)
        head, _, page = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert b"\r\nWWW-Authenticate: Basic realm=\"info\"\r\n" in head
        assert b"\r\nX-Squid-Error: ERR_CACHE_MGR_ACCESS_DENIED 0\r\n" in head
        assert b"\r\nX-Cache-Lookup: MISS from " in head
        assert b"Cache Manager Access Denied" in page and b"Number of HTTP" not in page
        fields = line_for(protected, "GET", f"cache_object://127.0.0.1/{action}", 401)
        assert (fields["tag"], fields["size"], fields["mime"]) \
            == ("TCP_MISS", str(len(reply)), "text/html")
        # squid's cache.log line: who asked for what, without the password
        wait_for(lambda event=event: event in protected.stderr_text(), timeout=5, what=event)
    assert "wrong" not in protected.stderr_text()
    reply = squidclient(protected.port, "info@secret")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Number of HTTP requests received" in reply


@pytest.mark.parametrize("action, status", [
    ("info@other", 401),  # the first line naming info says "secret"
    ("counters@secret", 200),
    ("index@other", 200),  # "all" on the last line
    ("index", 401),
    ("menu", 200),  # "none"
    ("menu@anything", 200),
    ("pool", 404),  # "disable": no such page, whatever the password
    ("pool@other", 404),
    ("nosuch@other", 404),
])
def test_the_first_line_naming_an_action_decides(protected, action, status):
    resp = ask(protected.port, "GET", f"cache_object://127.0.0.1/{action}")
    assert resp.status == status
    if status == 404:
        assert resp.header("X-Squid-Error") == "ERR_INVALID_URL 0"
        assert resp.header("WWW-Authenticate") is None


def test_the_menu_says_what_each_action_needs(protected):
    body = ask(protected.port, "GET", "cache_object://127.0.0.1/menu").body.decode()
    assert {line.split("\t")[0].strip(): line.split("\t")[2] for line in body.splitlines()} \
        == {"index": "protected", "menu": "public", "info": "protected",
            "service_times": "protected", "counters": "protected", "5min": "protected",
            "60min": "protected", "pool": "disabled"}


@pytest.mark.parametrize("url, fields, status", [
    # the http path takes the password from an Authorization field (curl -u)
    ("http://127.0.0.1:{port}/squid-internal-mgr/info", basic("admin:secret"), 200),
    ("http://127.0.0.1:{port}/squid-internal-mgr/info", basic("admin:wrong"), 401),
    ("http://127.0.0.1:{port}/squid-internal-mgr/info", "", 401),
    # a field with a user:password pair wins over the URL's @password
    ("cache_object://127.0.0.1/info@wrong", basic("admin:secret"), 200),
    ("cache_object://127.0.0.1/info@secret", basic("admin:wrong"), 401),
    # one without a pair, or not Basic, is passed over
    ("cache_object://127.0.0.1/info@secret", basic("nocolon"), 200),
    ("cache_object://127.0.0.1/info@secret", "Authorization: Basic !!!\r\n", 200),
    ("cache_object://127.0.0.1/info@secret", "Authorization: Bearer x:y\r\n", 200),
    ("cache_object://127.0.0.1/info", basic("nocolon"), 401),
])
def test_an_authorization_field_carries_the_password(protected, url, fields, status):
    resp = ask(protected.port, "GET", url.format(port=protected.port), fields=fields)
    assert resp.status == status
    assert (b"Number of HTTP requests received" in resp.body) == (status == 200)


def test_cachemgr_cgi_logs_in_with_the_password(protected, tmp_path):
    head, html = cachemgr_cgi(tmp_path, protected.port, "info",
                              "&user_name=admin&passwd=secret")
    assert head.startswith(b"Status: 200 ")
    assert b"Number of HTTP requests received" in html
    head, html = cachemgr_cgi(tmp_path, protected.port, "info",
                              "&user_name=admin&passwd=wrong")
    assert b" 401 Unauthorized" in head.partition(b"\r\n")[0]
    assert b"Number of HTTP requests received" not in html


# -- 5min, 60min and service_times -------------------------------------------

def test_percentile_interpolates_within_a_bin():
    bins = [0] * SERVICE_BINS
    assert mgr.percentile(bins, 0.5) == 0.0
    bins[11] = 4  # four requests of [1024, 2048) µs
    assert mgr.percentile(bins, 0.5) == pytest.approx(1536e-6)
    assert mgr.percentile(bins, 1.0) == pytest.approx(2048e-6)
    bins[1] = 4  # and four of [1, 2)
    assert mgr.percentile(bins, 0.25) == pytest.approx(1.5e-6)
    assert mgr.percentile(bins, 0.75) == pytest.approx(1536e-6)


def test_a_window_starts_at_the_newest_sample_old_enough(tmp_path):
    stats = Stats("kid", path=str(tmp_path / "labsquid-test"))
    ctx = SimpleNamespace(all_stats=stats, stats=stats.own, started=0)
    now = time.time()
    try:
        for minutes_ago in (70, 61, 30, 4, 1):
            stats.own.count_request(service_us=1000, error=False)
            stats.take_sample(now - 60 * minutes_ago, cpu_us=0)
        stats.own.count_request(service_us=1000, error=False)
        for minutes, expected in ((5, 30), (60, 61), (2, 4)):
            end, (start,) = mgr._windows(ctx, minutes)
            assert start["time_us"] == int((now - 60 * expected) * 1e6), minutes
            assert end["requests"] - start["requests"] == {30: 3, 61: 4, 4: 2}[expected]
    finally:
        stats.close()
    # with no sample old enough, the oldest kept
    stats = Stats("kid", path=str(tmp_path / "labsquid-test2"))
    ctx = SimpleNamespace(all_stats=stats, stats=stats.own, started=0)
    try:
        stats.take_sample(now - 90, cpu_us=0)
        stats.take_sample(now - 30, cpu_us=0)
        assert mgr._windows(ctx, 5)[1][0]["time_us"] == int((now - 90) * 1e6)
    finally:
        stats.close()


def figures(port: int, action: str) -> dict[str, float]:
    body = ask(port, "GET", f"cache_object://127.0.0.1/{action}").body.decode()
    return {name: float(value.split()[0].removesuffix("/sec").removesuffix("%"))
            for name, _, value in (line.partition(" = ") for line in body.splitlines())}


def test_5min_counts_what_the_counters_count(labsquid, origin):
    """Younger than five minutes, the instance's windows start at the kid's
    first sample: rate times wall time is every request so far."""
    reader = Stats("test", segment_path(labsquid.kid().pid), create=False)
    try:  # the kid's sample of its start, before any request
        first = reader.samples()[-1]
        assert (first["requests"], first["bytes_out"]) == (0, 0)
    finally:
        reader.close()
    for _ in range(5):
        assert fetch(labsquid.port, "GET", origin.url("/five"))[0].status == 200
    for action in ("5min", "60min"):
        window = figures(labsquid.port, action)
        total = figures(labsquid.port, "counters")["client_http.requests"]
        # the counters page counts the 5min request, not itself
        assert round(window["client_http.requests"] * window["wall_time"]) == total - 1
        assert window["server.http.requests"] > 0 and window["client_http.kbytes_out"] > 0
        assert 0 < window["client_http.all_median_svc_time"] < 5
        assert window["cpu_time"] > 0 and window["icp.pkts_sent"] == 0


def test_service_times_are_laid_out_as_squids(labsquid, origin):
    for _ in range(5):
        assert fetch(labsquid.port, "GET", origin.url("/times"))[0].status == 200
    body = ask(labsquid.port, "GET", "cache_object://127.0.0.1/service_times").body.decode()
    head, *lines = body.splitlines()
    assert head == "Service Time Percentiles            5 min    60 min:"
    assert len(lines) == 7 * 19
    parsed = []
    for line in lines:
        m = re.fullmatch(r"\t(.{21})([ \d]{3})%   (\d\.\d{5})  (\d\.\d{5})", line)
        assert m, line
        parsed.append((m[1].strip(), int(m[2]), float(m[3]), float(m[4])))
    assert [p for _, p, _, _ in parsed[:19]] == list(range(5, 100, 5))
    http = [five for label, _, five, _ in parsed if label == "HTTP Requests (All):"]
    assert http == sorted(http) and http[-1] > 0
    assert http == [five for label, _, five, _ in parsed if label == "Cache Misses:"]
    assert all(five == sixty == 0 for label, _, five, sixty in parsed
               if label not in ("HTTP Requests (All):", "Cache Misses:"))
    # info's medians are the 50% lines
    info = ask(labsquid.port, "GET", "cache_object://127.0.0.1/info").body.decode()
    medians = info.partition("Median Service Times (seconds)  5 min    60 min:\n")[2]
    assert medians.startswith("\tHTTP Requests (All):   "), info
    five = float(medians.split()[3])
    assert five > 0 and "\tICP Queries:           0.00000  0.00000\n" in medians
