"""Encoders: squid's rules where squid is safe, stricter where it is not."""

from __future__ import annotations

import dataclasses

import pytest

from labsquid.accesslog import AccessRecord, builtin_formats, compile_logformat
from labsquid.accesslog import _escape as esc
from support import proof

BASE = AccessRecord(
    start_time=1648951600.0,
    duration_ms=1,
    client_addr="10.0.0.1",
    client_port=1234,
    log_tag="TCP_MISS",
    http_status=200,
    method="GET",
    url="http://example.com/",
    hierarchy="HIER_DIRECT",
    peer_addr="10.0.0.2",
    mime_type="text/plain",
)


def render(name_or_fmt: str, **changes: object) -> str:
    fmt = builtin_formats().get(name_or_fmt, name_or_fmt)
    return compile_logformat(fmt).render(dataclasses.replace(BASE, **changes))


# --- squid's encoders, exactly -------------------------------------------


def test_url_unescaped_matches_rfc1738_escape_unescaped() -> None:
    # unsafe set, controls, space and non-ASCII escaped (upper-case hex);
    # reserved characters and "%" kept.
    assert esc.url_unescaped('a b<>"#{}|\\^~[]`\'') == (
        "a%20b%3C%3E%22%23%7B%7D%7C%5C%5E%7E%5B%5D%60%27"
    )
    assert esc.url_unescaped("/p;q?x=1&y=@:%41") == "/p;q?x=1&y=@:%41"
    assert esc.url_unescaped("\x00\x1f\x7f") == "%00%1F%7F"
    assert esc.url_unescaped("é") == "%C3%A9"  # the UTF-8 bytes, as squid sees them


def test_url_also_escapes_percent() -> None:
    assert esc.url("%41 ") == "%2541%20"


def test_mimeblob_matches_quote_mime_blob() -> None:
    assert esc.mimeblob("A: b\r\nC: [d] 50%\\") == "A: b\\r\\nC: %5bd%5d 50%25\\\\"
    assert esc.mimeblob("\x1b\x7f\xe9") == "%1b%7f%c3%a9"  # lower-case hex, like squid
    assert esc.mimeblob("a b", escape_space=True) == "a%20b"


def test_quoted_matches_log_quoted_string() -> None:
    assert esc.quoted('say "hi"\\\r\n\t') == 'say \\"hi\\"\\\\\\r\\n\\t'
    assert esc.quoted("héllo wörld") == "héllo wörld"


def test_quoted_escapes_what_squid_lets_through() -> None:
    # squid's log_quoted_string would copy these raw.
    assert esc.quoted("\x00\x1b[2J\x7f\x85\u2028") == "\\x00\\x1b[2J\\x7f\\x85\\u2028"


def test_shell_matches_strwordquote() -> None:
    assert esc.shell("plain") == "plain"
    assert esc.shell('a "b"\n') == '"a \\"b\\"\\n"'


def test_defang() -> None:
    assert esc.defang("TCP_MISS") == "TCP_MISS"
    assert esc.defang("a b\u00a0c") == "a%20b%C2%A0c"
    assert esc.defang("a b\u00a0c\n", allow_space=True) == "a b\u00a0c%0A"


def test_clean_log_uri_is_squid_uri_whitespace_strip() -> None:
    assert esc.clean_log_uri("http://h/a b\tc\r\nd") == "http://h/abcd"
    assert esc.clean_log_uri("http://h/<x>%41\x1b") == "http://h/%3Cx%3E%41%1B"


# --- hostile values cannot forge a line -----------------------------------

FORGED = "1648951600.000      1 6.6.6.6 TCP_HIT/200 1 GET http://forged/ - HIER_NONE/- -"
HOSTILE = [
    f"\n{FORGED}",
    f"\r{FORGED}",
    f"\r\n{FORGED}",
    "\x1b[2J\x1b[31mred",
    "\x00nul",
    "a\u2028b\u0085c",
]


@pytest.mark.parametrize("evil", HOSTILE)
@pytest.mark.parametrize("name", ["squid", "common", "combined", "referrer", "useragent"])
def test_hostile_strings_stay_on_one_line(name: str, evil: str) -> None:
    line = render(
        name, url="http://h/" + evil, method=evil, user=evil, mime_type=evil, log_tag=evil,
        referer=evil, user_agent=evil, peer_addr=evil, client_addr=evil,
        request_headers=(("Referer", evil), ("User-Agent", evil)),
    )
    forged = (len(line.splitlines()) != 1
              or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)
              or "\u2028" in line)
    proof.record("security", "log forging: hostile strings in every logged field", 1,
                 int(forged), unit="lines forged",
                 detail="CR, LF, ESC, NUL, U+2028 in URL, method, user, headers...: one line, "
                        "no control character, in each of the 5 built-in formats")
    assert len(line.splitlines()) == 1
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)
    assert "\u2028" not in line


def test_hostile_url_in_native_line() -> None:
    line = render("squid", url="http://h/x\r\n1.0 0 6.6.6.6 TCP_HIT/200", method="GET")
    proof.record("security", "log forging: CR LF and a fake line in a URL (native format)",
                 1, int(" http://h/x1.00" not in line or line.count("TCP_HIT") != 1),
                 unit="lines forged", detail="the whitespace is stripped out of %ru: no "
                 "second line, no second log tag")
    assert " http://h/x1.00" in line  # squid strips the whitespace out of %ru
    assert line.count("TCP_HIT") == 1


def test_escape_sequences_are_visible_in_every_mode() -> None:
    value = "\x1b[31m"
    for fmt, out in [
        ("%>ru", "%1B%5B31m"),
        ("%#>ru", "%1B%5B31m"),
        ('%">ru', "\\x1b[31m"),
        ("%[>ru", "%1b%5b31m"),
        ("%'>ru", "%1B[31m"),
        ("%/>ru", "\\x1b[31m"),
        ("%ru", "%1B%5B31m"),
        ("%Ss", "%1B[31m"),
    ]:
        assert render(fmt, url=value, log_tag=value) == out, fmt


def test_header_block_in_brackets_keeps_lines_apart() -> None:
    headers = (("Host", "h"), ("X-Evil", "a\r\nInjected: 1"))
    line = render("[%>h]", request_headers=headers)
    want = "[Host: h\\r\\nX-Evil: a\\r\\nInjected: 1\\r\\n]"
    proof.record("security", "log forging: CR LF inside a logged header block", 1,
                 int(line != want), unit="lines forged",
                 detail="%[>h keeps each header's CR LF escaped, on one line")
    assert line == want
