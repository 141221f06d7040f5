"""Request-target classification and authority parsing."""

from __future__ import annotations

import pytest

from labsquid.http import (
    ABSOLUTE,
    ASTERISK,
    AUTHORITY,
    ERR_INVALID_URL,
    ERR_UNSUP_REQ,
    ORIGIN,
    ProtocolError,
    Target,
    classify_target,
    parse_absolute_uri,
    parse_authority,
    parse_target,
)


@pytest.mark.parametrize(
    "method,target,form",
    [
        (b"GET", b"/", ORIGIN),
        (b"GET", b"/a/b?c=d", ORIGIN),
        (b"GET", b"http://example.com/", ABSOLUTE),
        (b"OPTIONS", b"*", ASTERISK),
        (b"OPTIONS", b"http://example.com", ABSOLUTE),
        (b"CONNECT", b"example.com:443", AUTHORITY),
        (b"CONNECT", b"[::1]:443", AUTHORITY),
        (b"CONNECT", b"10.0.0.1:22", AUTHORITY),
    ],
)
def test_classify(method: bytes, target: bytes, form: str) -> None:
    assert classify_target(method, target) == form


@pytest.mark.parametrize(
    "uri,expected",
    [
        (b"http://Example.COM/a?b#frag", ("http", "example.com", 80, b"/a?b")),
        (b"HTTP://example.com", ("http", "example.com", 80, b"/")),
        (b"http://example.com?q", ("http", "example.com", 80, b"/?q")),
        (b"http://example.com:/x", ("http", "example.com", 80, b"/x")),
        (b"http://example.com:8080", ("http", "example.com", 8080, b"/")),
        (b"https://[2001:DB8::1]:8443/x", ("https", "2001:db8::1", 8443, b"/x")),
        (b"http://user:p%40ss@example.com/", ("http", "example.com", 80, b"/")),
        (b"ftp://ftp.example.com/pub/", ("ftp", "ftp.example.com", 21, b"/pub/")),
        (b"http://127.0.0.1/", ("http", "127.0.0.1", 80, b"/")),
        (b"http://example.com./", ("http", "example.com.", 80, b"/")),
        (b"http://my_host.local/", ("http", "my_host.local", 80, b"/")),
        # squid's manager scheme, with the "_" RFC 3986 leaves out of schemes
        (b"cache_object://127.0.0.1/info", ("cache_object", "127.0.0.1", 3128, b"/info")),
        (b"CACHE_OBJECT://h:9/menu@pw", ("cache_object", "h", 9, b"/menu@pw")),
    ],
)
def test_parse_absolute_uri(uri: bytes, expected: tuple) -> None:
    t = parse_absolute_uri(uri)
    assert (t.scheme, t.host, t.port, t.path) == expected
    assert t.form == ABSOLUTE


@pytest.mark.parametrize(
    "uri",
    [
        b"http://",
        b"http:///path",
        b"http://:80/",
        b"http://a@b@c/",
        b"http://evil\\@good/",
        b"http://exa mple/",
        b"http://exa%6dple.com/",
        b"http://a..b/",
        b"http://.a/",
        b"http://" + b"a" * 64 + b".com/",
        b"http://host:65536/",
        b"http://host:0/",
        b"http://host:-1/",
        b"http://host:8o/",
        b"http://host:123456/",
        b"http://[::1/",
        b"http://[::1]x/",
        b"http://[fe80::1%25eth0]/",
        b"http://[v1.fe]/",
        b"http://[1.2.3.4]/",
        b"http://0x7f.1/",
        b"http://2130706433/",
        b"http://127.1/",
        b"http://127.000.0.1/",
        b"http://1.2.3.4.5/",
        b"1http://a/",
        b"://a/",
        b"cache_object:///info",
        b"cache_objects://a/",
        b"_http://a/",
        b"example.com/",
    ],
)
def test_invalid_uris(uri: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_absolute_uri(uri)
    assert (info.value.status, info.value.error_code) == (400, ERR_INVALID_URL)


def test_unsupported_scheme() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_absolute_uri(b"gopher://example.com/")
    assert info.value.error_code == ERR_UNSUP_REQ


def test_authority_port_rules() -> None:
    assert parse_authority(b"a.com:443") == ("a.com", 443)
    assert parse_authority(b"a.com", 80) == ("a.com", 80)
    assert parse_authority(b"a.com", 0) == ("a.com", None)
    with pytest.raises(ProtocolError):
        parse_authority(b"a.com")  # CONNECT: port required
    with pytest.raises(ProtocolError):
        parse_authority(b"a.com:")
    with pytest.raises(ProtocolError):
        parse_target(b"CONNECT", b"user@a.com:443")


@pytest.mark.parametrize("target", [b"a.com", b"a.com:", b"[::1]", b"10.0.0.1"])
def test_connect_without_a_port_means_443_as_in_squid(target: bytes) -> None:
    parsed = parse_target(b"CONNECT", target)
    assert (parsed.form, parsed.port) == (AUTHORITY, 443)
    assert parsed.authority.endswith(b":443")  # what the access.log line shows


def test_target_authority_for_host_header() -> None:
    assert parse_absolute_uri(b"http://a.com:80/").authority == b"a.com"
    assert parse_absolute_uri(b"http://a.com:8080/").authority == b"a.com:8080"
    assert parse_absolute_uri(b"https://[::1]/").authority == b"[::1]"
    assert Target(AUTHORITY, None, "::1", 443, b"").authority == b"[::1]:443"
