"""Access-log formats: squid's native line byte for byte, built-ins, every code."""

from __future__ import annotations

import dataclasses
import time

import pytest

from labsquid.accesslog import (
    AccessRecord,
    LogFormatError,
    builtin_formats,
    compile_logformat,
)

NATIVE = compile_logformat(builtin_formats()["squid"])
T0 = 1648951600.990  # Sun, 03 Apr 2022 02:06:40.990 UTC


def record(**changes: object) -> AccessRecord:
    base = AccessRecord(
        start_time=T0 - 0.003,
        duration_ms=3,
        client_addr="127.0.0.1",
        client_port=40512,
        local_addr="127.0.0.1",
        local_port=3128,
        log_tag="TCP_MISS",
        http_status=200,
        reply_size=512,
        request_size=80,
        method="GET",
        url="http://127.0.0.1:8080/",
        hierarchy="HIER_DIRECT",
        peer_addr="127.0.0.1",
        mime_type="text/plain",
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --- squid native ---------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {},
            "1648951600.990      3 127.0.0.1 TCP_MISS/200 512 GET "
            "http://127.0.0.1:8080/ - HIER_DIRECT/127.0.0.1 text/plain",
        ),
        (  # telnet "hello": nothing parsed, nothing forwarded, status 0
            dict(
                start_time=1648951600.0, duration_ms=0, log_tag="NONE_NONE", http_status=0,
                reply_size=0, method="NONE", url="error:invalid-request",
                hierarchy="HIER_NONE", peer_addr=None, mime_type=None,
            ),
            "1648951600.000      0 127.0.0.1 NONE_NONE/000 0 NONE "
            "error:invalid-request - HIER_NONE/- -",
        ),
        (  # long tunnel: %6tr grows instead of truncating
            dict(
                start_time=1648950366.5, duration_ms=1234567, client_addr="192.168.1.5",
                log_tag="TCP_TUNNEL", reply_size=4841, method="CONNECT",
                url="example.com:443", peer_addr="93.184.216.34", mime_type=None,
            ),
            "1648951601.067 1234567 192.168.1.5 TCP_TUNNEL/200 4841 CONNECT "
            "example.com:443 - HIER_DIRECT/93.184.216.34 -",
        ),
        (  # authenticated user, denied with an error page
            dict(
                user="alice", log_tag="TCP_DENIED", http_status=403, reply_size=3917,
                hierarchy="HIER_NONE", peer_addr=None,
                mime_type="text/html;charset=utf-8", error_code="ERR_ACCESS_DENIED",
            ),
            "1648951600.990      3 127.0.0.1 TCP_DENIED/403 3917 GET "
            "http://127.0.0.1:8080/ alice HIER_NONE/- text/html",
        ),
        (  # width 6 is a minimum: 5 digits get one space
            dict(duration_ms=12345, start_time=T0 - 12.345),
            "1648951600.990  12345 127.0.0.1 TCP_MISS/200 512 GET "
            "http://127.0.0.1:8080/ - HIER_DIRECT/127.0.0.1 text/plain",
        ),
    ],
)
def test_native_line_is_byte_exact(changes: dict, line: str) -> None:
    assert NATIVE.render(record(**changes)) == line


def test_timestamp_is_end_of_transaction_unless_given() -> None:
    # squid stamps the line when it logs it: start + duration.
    assert NATIVE.render(record(start_time=100.5, duration_ms=250)).startswith("100.750    250 ")
    assert NATIVE.render(record(log_time=200.0)).startswith("200.000      3 ")


def test_subsecond_does_not_lose_a_millisecond_to_float_error() -> None:
    # 0.29 * 1000 == 289.99999999999997 in binary floating point.
    assert NATIVE.render(record(log_time=1.29)).startswith("1.290 ")


def test_native_user_names_cannot_split_the_field() -> None:
    line = NATIVE.render(record(user="bob smith%[x]"))
    assert " bob%20smith%25%5bx%5d HIER_DIRECT/" in line


def test_native_user_falls_back_to_external_then_ident() -> None:
    assert " ext HIER" in NATIVE.render(record(external_user="ext", ident_user="id"))
    assert " id HIER" in NATIVE.render(record(ident_user="id"))


def test_native_mime_type_is_media_type_only() -> None:
    line = NATIVE.render(record(mime_type="text/html; charset=utf-8"))
    assert line.endswith(" text/html")


# --- other built-ins ------------------------------------------------------


def test_builtin_definitions_match_squid() -> None:
    formats = builtin_formats()
    assert set(formats) == {"squid", "common", "combined", "referrer", "useragent"}
    assert formats["common"] == '%>a %[ui %[un [%tl] "%rm %ru HTTP/%rv" %>Hs %<st %Ss:%Sh'
    formats["squid"] = "changed"
    assert builtin_formats()["squid"].startswith("%ts.%03tu")


def test_common(utc: None) -> None:
    line = compile_logformat(builtin_formats()["common"]).render(record(user="alice"))
    assert line == (
        '127.0.0.1 - alice [03/Apr/2022:02:06:40 +0000] '
        '"GET http://127.0.0.1:8080/ HTTP/1.1" 200 512 TCP_MISS:HIER_DIRECT'
    )


def test_combined(utc: None) -> None:
    rec = record(referer="http://a.example/", user_agent='curl/8.0 "x"')
    line = compile_logformat(builtin_formats()["combined"]).render(rec)
    assert line == (
        '127.0.0.1 - - [03/Apr/2022:02:06:40 +0000] '
        '"GET http://127.0.0.1:8080/ HTTP/1.1" 200 512 '
        '"http://a.example/" "curl/8.0 \\"x\\"" TCP_MISS:HIER_DIRECT'
    )


def test_combined_missing_headers_are_quoted_dashes(utc: None) -> None:
    line = compile_logformat(builtin_formats()["combined"]).render(record())
    assert ' 200 512 "-" "-" TCP_MISS:HIER_DIRECT' in line


def test_referrer_and_useragent(utc: None) -> None:
    rec = record(referer="http://a.example/x y", user_agent="Mozilla/5.0 (X11)")
    referrer = compile_logformat(builtin_formats()["referrer"]).render(rec)
    assert referrer == "1648951600.990 127.0.0.1 http://a.example/x%20y http://127.0.0.1:8080/"
    agent = compile_logformat(builtin_formats()["useragent"]).render(rec)
    assert agent == '127.0.0.1 [03/Apr/2022:02:06:40 +0000] "Mozilla/5.0 (X11)"'


def test_local_time_carries_the_utc_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "XYZ-05:30")  # POSIX: five and a half hours east
    time.tzset()
    try:
        assert compile_logformat("%tl").render(record()) == "03/Apr/2022:07:36:40 +0530"
        assert compile_logformat("%tg").render(record()) == "03/Apr/2022:02:06:40"
    finally:
        monkeypatch.undo()
        time.tzset()


# --- every code -----------------------------------------------------------

RICH = record(
    start_time=1648951600.25,
    duration_ms=740,
    client_fqdn="client.example",
    peer_port=8080,
    peer_host="origin.example",
    peer_status=304,
    user="alice",
    ident_user="identd",
    external_user="ext",
    url="http://127.0.0.1:8080/a/b?q=1",
    error_code="ERR_READ_TIMEOUT",
    error_detail="WITH_SERVER",
    request_headers=(("Host", "127.0.0.1:8080"), ("Accept", "a/b"), ("Accept", "c/d")),
    reply_headers=(("Cache-Control", "max-age=60, private"), ("Server", "x")),
)


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ("%ts", "1648951600"),
        ("%tu", "990"),
        ("%03tu", "990"),
        ("%.6tu", "990000"),
        ("%tg", "03/Apr/2022:02:06:40"),
        ("%{%Y-%m-%d}tg", "2022-04-03"),
        ("%tg{%H}", "02"),
        ("%tS", "1648951600.250"),
        ("%.1tS", "1648951600.2"),
        ("%tr", "740"),
        ("%6tr", "   740"),
        ("%.3tr", "740.000"),
        ("%>a", "127.0.0.1"),
        ("%>p", "40512"),
        ("%>A", "client.example"),
        ("%<a", "127.0.0.1"),
        ("%<p", "8080"),
        ("%<A", "origin.example"),
        ("%la", "127.0.0.1"),
        ("%lp", "3128"),
        ("%>la:%>lp", "127.0.0.1:3128"),
        ("%ru", "http://127.0.0.1:8080/a/b?q=1"),
        ("%>ru", "http://127.0.0.1:8080/a/b?q=1"),
        ("%rm %>rm", "GET GET"),
        ("%rp", "/a/b?q=1"),
        ("%>rp", "/a/b?q=1"),
        ("%rv %>rv", "1.1 1.1"),
        ("%>Hs", "200"),
        ("%<Hs", "304"),
        ("%Ss", "TCP_MISS"),
        ("%Sh", "HIER_DIRECT"),
        ("%mt", "text/plain"),
        ("%st", "592"),
        ("%<st", "512"),
        ("%>st", "80"),
        ("%un", "alice"),
        ("%ul", "alice"),
        ("%ue", "ext"),
        ("%ui", "identd"),
        ("%[un", "alice"),
        ("%{Host}>h", "127.0.0.1:8080"),
        ("%>h{Host}", "127.0.0.1:8080"),
        ("%{Accept}>h", "a/b,%20c/d"),
        ('%"{Accept}>h', "a/b, c/d"),
        ("%{Cache-Control:max-age}<h", "60"),
        ("%{Cache-Control:;private}<h", "-"),
        ("%{Server}<h", "x"),
        ("%[<h", "Cache-Control: max-age=60, private\\r\\nServer: x\\r\\n"),
        ("%{X-Missing}>h", "-"),
        ("%err_code %err_detail", "ERR_READ_TIMEOUT WITH_SERVER"),
        ("%http::>a", "127.0.0.1"),
        ("100%%", "100%"),
    ],
)
def test_code(fmt: str, out: str, utc: None) -> None:
    assert compile_logformat(fmt).render(RICH) == out


@pytest.mark.parametrize(
    ("fmt", "changes", "out"),
    [
        ("%>A", {}, "127.0.0.1"),  # no reverse lookup: squid prints the address
        ("%<p %<A %<Hs", {}, "- - -"),
        ("%un %ul %ue %ui", {}, "- - - -"),
        ("%err_code/%err_detail", {}, "-/-"),
        ("%rp", {"url": "example.com:443"}, "-"),
        ("%rp", {"url": "http://example.com"}, "/"),
        ("%rm %ru", {"method": "", "url": ""}, "- -"),
        ("%mt", {"mime_type": ""}, "-"),
        ("%03>Hs", {"http_status": 0}, "000"),
        ("%>Hs", {"http_status": 0}, "0"),  # a number, never missing
        ("%<st", {"reply_size": 0}, "0"),
        ("%<Hs", {"peer_status": 0}, "-"),
        ("%{Referer}>h", {"referer": "r"}, "r"),
        ("%{User-Agent}>h", {"user_agent": "ua"}, "ua"),
        ("%{referer}>h", {"referer": "x", "request_headers": (("Referer", "h"),)}, "h"),
    ],
)
def test_missing_and_fallback_values(fmt: str, changes: dict, out: str) -> None:
    assert compile_logformat(fmt).render(record(**changes)) == out


# --- widths and modifiers -------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ("[%12>a]", "[   127.0.0.1]"),
        ("[%-12>a]", "[127.0.0.1   ]"),
        ("[%.3Ss]", "[TCP]"),
        ("[%6.3Ss]", "[   TCP]"),
        ("[%-6.3Ss]", "[TCP   ]"),
        ("[%05>Hs]", "[00200]"),
        ("[%-5>Hs]", "[200  ]"),
        ("[%.1>Hs]", "[200]"),  # max width never cuts numbers
        ("[%5<Hs]", "[-]"),  # a missing value is a bare dash, unpadded
        ("[%08.3tS]", "[1648951600.987]"),
        ("[%016.3tS]", "[001648951600.987]"),
        ("%%%>a%%", "%127.0.0.1%"),
        ("%-5%|", "%    |"),
    ],
)
def test_width_and_alignment(fmt: str, out: str) -> None:
    assert compile_logformat(fmt).render(record()) == out


def test_literal_quotes_and_brackets_switch_the_default_encoding() -> None:
    rec = record(method="G T", user="a b")
    assert compile_logformat("%rm").render(rec) == "G%20T"
    assert compile_logformat('"%rm"').render(rec) == '"G T"'
    assert compile_logformat('"%rm" %rm').render(rec) == '"G T" G%20T'
    assert compile_logformat("[%rm] %rm").render(rec) == "[G T] G%20T"
    assert compile_logformat("[%ul]").render(rec) == "[a%20b]"  # user names: one word
    assert compile_logformat('"[%rm"').render(rec) == '"[G T"'  # [ inside quotes is text


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ("%>ru", "http://h/a%20b%41"),  # squid's default: keep existing escapes
        ("%#>ru", "http://h/a%20b%2541"),
        ('%">ru', "http://h/a b%41"),
        ("%'>ru", "http://h/a b%41"),
        ("%/>ru", '"http://h/a b%41"'),
        ("%[>ru", "http://h/a b%2541"),
        ("%ru", "http://h/ab%41"),  # the log URL: whitespace stripped, like squid
        ('%"ru', "http://h/ab%41"),
    ],
)
def test_quoting_modifiers(fmt: str, out: str) -> None:
    assert compile_logformat(fmt).render(record(url="http://h/a b%41")) == out


# --- errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "problem"),
    [
        ("%", "without a format code"),
        ("abc %", "without a format code"),
        ("%zz", "unknown format code '%zz'"),
        ("%[", "without a format code"),
        ('%"', "without a format code"),
        ("%{Referer>h", "unterminated '{'"),
        ("%>h{Referer", "unterminated '{'"),
        ("%{}>h", "missing header name"),
        ("%{:x}>h", "missing header name"),
        ("%.>a", "maximum width"),
        ("%{x}>a", "takes no {argument}"),
        ("%ts\n", "control character"),
        ("%-", "without a format code"),
    ],
)
def test_bad_formats(fmt: str, problem: str) -> None:
    with pytest.raises(LogFormatError, match=problem.replace("{", r"\{").replace("[", r"\[")):
        compile_logformat(fmt)


def test_error_names_the_column() -> None:
    with pytest.raises(LogFormatError, match="column 5 "):
        compile_logformat("%ts %Q")


def test_repr_and_definition() -> None:
    fmt = compile_logformat("%>a")
    assert fmt.definition == "%>a"
    assert repr(fmt) == "LogFormat('%>a')"
