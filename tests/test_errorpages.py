"""squid-style error replies: header set, templates, escaping."""

from __future__ import annotations

import email.utils
import re
from importlib import resources

import pytest

from labsquid.errorpages import DEFAULT_STATUS, render_error

NOW = 1648893999.75  # Sat, 02 Apr 2022 10:06:39 GMT


def render(code: str = "ERR_INVALID_URL", **kw: object):
    args: dict = dict(
        status=DEFAULT_STATUS.get(code, 500), method="GET", url="http://example.com/x",
        client_addr="192.0.2.7", hostname="proxy.example", now=NOW,
    )
    args.update(kw)
    return render_error(code, **args)


def test_headers_are_squids_set_in_squids_order() -> None:
    status, headers, body = render("ERR_ACCESS_DENIED", status=403)
    assert status == 403
    assert headers == [
        (b"Server", b"labsquid/0.1.0"),
        (b"Mime-Version", b"1.0"),
        (b"Date", b"Sat, 02 Apr 2022 10:06:39 GMT"),
        (b"Content-Type", b"text/html;charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        (b"X-Squid-Error", b"ERR_ACCESS_DENIED 0"),
        (b"Vary", b"Accept-Language"),
        (b"Content-Language", b"en"),
        (b"X-Cache", b"MISS from proxy.example"),
        (b"Via", b"1.1 proxy.example (labsquid/0.1.0)"),
        (b"Connection", b"close"),
    ]


def test_a_reply_that_keeps_the_connection_says_so() -> None:
    headers = render("ERR_ACCESS_DENIED", status=403, keep_alive=True)[1]
    assert headers[-1] == (b"Connection", b"keep-alive")


def test_x_cache_lookup_when_the_port_is_known() -> None:
    headers = dict(render(http_port=3128)[1])
    assert headers[b"X-Cache-Lookup"] == b"NONE from proxy.example:3128"
    assert b"X-Cache-Lookup" not in dict(render()[1])


def test_x_cache_lookup_is_a_miss_once_the_request_was_on_its_way() -> None:
    """squid 5.7: NONE for a denial or a bad request, MISS for a failed connect."""
    headers = dict(render("ERR_CONNECT_FAIL", http_port=3128, looked_up=True)[1])
    assert headers[b"X-Cache-Lookup"] == b"MISS from proxy.example:3128"


def test_x_squid_error_carries_errno() -> None:
    headers = dict(render("ERR_CONNECT_FAIL", errno=111)[1])
    assert headers[b"X-Squid-Error"] == b"ERR_CONNECT_FAIL 111"


def test_status_is_the_callers_choice() -> None:
    assert render("ERR_INVALID_REQ", status=431)[0] == 431


def test_suppressed_version_string() -> None:
    _, headers, body = render(version_string=None)
    assert dict(headers)[b"Server"] == b"labsquid"
    assert dict(headers)[b"Via"] == b"1.1 proxy.example (labsquid)"
    assert b"(labsquid)</p>" in body
    assert b"0.1.0" not in body


@pytest.mark.parametrize("now", [0.0, 951782400.0, NOW, 4102444799.999])
def test_date_is_imf_fixdate(now: float) -> None:
    date = dict(render(now=now)[1])[b"Date"].decode()
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date)
    assert email.utils.parsedate_to_datetime(date).timestamp() == int(now)


@pytest.mark.parametrize("code", sorted(DEFAULT_STATUS))
def test_every_template_renders(code: str) -> None:
    status, headers, body = render(code, errno=110, error_detail="detail-text")
    assert status == DEFAULT_STATUS[code]
    assert int(dict(headers)[b"Content-Length"]) == len(body)
    page = body.decode("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>ERROR: The requested URL could not be retrieved</title>" in page
    assert "http://example.com/x" in page
    assert 'href="mailto:webmaster"' in page
    assert "Generated Sat, 02 Apr 2022 10:06:39 GMT by proxy.example (labsquid/0.1.0)" in page
    assert f"<!-- {code} -->" in page
    assert "%" not in page.replace("100%", "")  # every code was substituted


def test_templates_use_only_supported_codes() -> None:
    folder = resources.files("labsquid").joinpath("data", "errors")
    for code in DEFAULT_STATUS:
        used = set(re.findall(r"%(.)", folder.joinpath(code).read_text(encoding="utf-8")))
        assert used <= set("cDeEhHiMsTuUwWxzl%"), (code, used)


def test_default_statuses() -> None:
    assert DEFAULT_STATUS["ERR_PROTOCOL_UNKNOWN"] == 400
    assert DEFAULT_STATUS["ERR_UNSUP_REQ"] == 501
    assert DEFAULT_STATUS["ERR_TOO_BIG"] == 413
    assert DEFAULT_STATUS["ERR_READ_TIMEOUT"] == 504
    assert DEFAULT_STATUS["ERR_REQUEST_START_TIMEOUT"] == 408
    assert DEFAULT_STATUS["ERR_UNSUP_HTTPVERSION"] == 505
    assert DEFAULT_STATUS["ERR_CACHE_MGR_ACCESS_DENIED"] == 401
    assert len(DEFAULT_STATUS) == 19


def test_hostile_url_stays_text() -> None:
    url = 'http://x/"><script>alert(1)</script>&'
    body = render(url=url)[2].decode()
    assert "<script>" not in body
    assert "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in body


def test_url_is_never_a_link() -> None:
    body = render(url="javascript:alert(1)")[2].decode()
    assert 'href="javascript' not in body
    assert "<code>javascript:alert(1)</code>" in body


def test_every_substituted_value_is_escaped() -> None:
    evil = "<xss>&'\""
    body = render(
        "ERR_DNS_FAIL", method=evil, client_addr=evil, error_detail=evil, cache_admin=evil,
        url="http://h<xss>/", hostname="h<xss>",
    )[2].decode()
    assert "<xss>" not in body
    assert body.count("&lt;xss&gt;&amp;&#x27;&quot;") == 3  # detail, admin twice
    assert "http://h&lt;xss&gt;/" in body and "by h&lt;xss&gt; (" in body


def test_control_characters_in_values_are_shown_not_sent() -> None:
    body = render(url="http://h/\x1b[2J\x00")[2].decode()
    assert "\x1b" not in body and "\x00" not in body
    assert "http://h/\\x1b[2J\\x00" in body


def test_errno_and_dns_text() -> None:
    assert "(111) Connection refused" in render("ERR_CONNECT_FAIL", errno=111)[2].decode()
    assert "[No Error]" in render("ERR_READ_ERROR")[2].decode()
    dns = render("ERR_DNS_FAIL", url="http://nx.example:81/", error_detail="Name error")
    page = dns[2].decode()
    assert "<q>nx.example</q>" in page and "<i>Name error</i>" in page
    assert "<i>[unknown]</i>" in render("ERR_DNS_FAIL")[2].decode()


def test_method_and_client_address_appear() -> None:
    page = render("ERR_UNSUP_REQ", method="BREW")[2].decode()
    assert "<code>BREW</code>" in page
    assert "192.0.2.7" in render("ERR_ACCESS_DENIED")[2].decode()


@pytest.mark.parametrize("code", ["ERR_NO_SUCH_PAGE", "errorpage.css", "../x", "ERR_A/../B"])
def test_unknown_codes_are_refused(code: str) -> None:
    with pytest.raises(ValueError):
        render(code)


@pytest.mark.parametrize("field", ["hostname", "version_string"])
def test_header_injection_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        render(**{field: "x\r\nSet-Cookie: a=b"})
