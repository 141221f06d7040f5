"""Malformed requests -> (status, squid error page): the reader's security rules.

Each case is fed whole, then byte by byte: the error must not depend on how
the bytes arrived, and must come before any event for the offending message.
"""

from __future__ import annotations

import pytest

from labsquid.http import (
    ERR_INVALID_REQ,
    ERR_INVALID_URL,
    ERR_PROTOCOL_UNKNOWN,
    ERR_TOO_BIG,
    ERR_UNSUP_HTTPVERSION,
    ERR_UNSUP_REQ,
    ProtocolError,
    Request,
    RequestReader,
)
from support.http_feed import bytewise, pump

H = b"Host: example.com\r\n"
POST = b"POST / HTTP/1.1\r\n" + H

BAD = [
    # -- not HTTP at all
    (b"hello\r\n\r\n", 400, ERR_PROTOCOL_UNKNOWN),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, ERR_PROTOCOL_UNKNOWN),
    (b"GET /\r\n\r\n", 400, ERR_PROTOCOL_UNKNOWN),  # HTTP/0.9
    (b"SSH-2.0-OpenSSH_9.2\r\n", 400, ERR_PROTOCOL_UNKNOWN),
    # -- request line
    (b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_PROTOCOL_UNKNOWN),
    (b"A" * 33 + b" / HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_PROTOCOL_UNKNOWN),  # squid: 32 at most
    (b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),
    (b" GET / HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),
    (b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_PROTOCOL_UNKNOWN),
    (b"GET / HTTP/1.1x\r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505, ERR_UNSUP_HTTPVERSION),
    (b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505, ERR_UNSUP_HTTPVERSION),
    (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505, ERR_UNSUP_HTTPVERSION),
    (b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),  # squid: not a URI byte
    (b"GET /a\x01 b HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),  # wherever it is
    (b"GET /a\x01b HTTP/2.0\r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),  # read before the version
    (b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),  # squid: not a URI byte
    (b"GET /\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_REQ),  # squid: not a URI byte
    (b"GET example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"CONNECT example.com:99999 HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"CONNECT /x HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET http://ex ample.com/ HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET http://a@b@example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET http://evil\\@example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET http://0x7f.1/ HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET http://example.com:0/ HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_INVALID_URL),
    (b"GET gopher://example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400, ERR_UNSUP_REQ),
    # -- line endings and bytes in the head
    (b"GET / HTTP/1.1\n" + H + b"\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\nHost: example.com\n\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\nHost: example.com\nX: y\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\x0bb\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\x7f\r\n\r\n", 400, ERR_INVALID_REQ),
    # -- field lines
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400, ERR_INVALID_REQ),  # obs-fold
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\nHost\t: example.com\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b"X Y: z\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b"X\x01: z\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b"(X): z\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b": z\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + b"Host\r\n\r\n", 400, ERR_INVALID_REQ),  # no colon
    (b"GET / HTTP/1.1\r\n" + H + b"\xc3\xa9: z\r\n\r\n", 400, ERR_INVALID_REQ),
    # -- Host
    (b"GET / HTTP/1.1\r\n\r\n", 400, ERR_INVALID_REQ),
    # (an absolute URI needs no Host: test_http_requests' host rules)
    (b"OPTIONS * HTTP/1.1\r\n\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.0\r\n" + H + H + b"\r\n", 400, ERR_INVALID_REQ),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, ERR_INVALID_URL),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, ERR_INVALID_URL),
    (b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400, ERR_INVALID_URL),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400, ERR_INVALID_URL),
    # -- Content-Length
    (POST + b"Content-Length: -1\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: +1\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 0x10\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 1 2\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 1.0\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length:\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 9223372036854775808\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 99999999999999999999999\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 1, 2\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 5, 05\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: 5,\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Content-Length: \xd9\xa1\r\n\r\n", 400, ERR_INVALID_REQ),  # Arabic-Indic 1
    # -- Transfer-Encoding
    (POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400, ERR_INVALID_REQ),
    (
        POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        ERR_INVALID_REQ,
    ),
    (POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked,\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding:\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: gzip\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding : chunked\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: \x0bchunked\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer_Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: xchunked\r\n\r\n", 501, ERR_UNSUP_REQ),
    (POST + b"Transfer-Encoding: identity\r\n\r\n", 501, ERR_UNSUP_REQ),
    (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501, ERR_UNSUP_REQ),
    (POST + b'Transfer-Encoding: "chunked"\r\n\r\n', 501, ERR_UNSUP_REQ),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, ERR_INVALID_REQ),
    (
        b"CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\nContent-Length: 2\r\n\r\n",
        400,
        ERR_INVALID_REQ,
    ),
    # -- chunked body
    (POST + b"Transfer-Encoding: chunked\r\n\r\nz\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n 5\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n5 \r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n5\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n5 ;a\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n5;\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n5;a=\r\n", 400, ERR_INVALID_REQ),
    (POST + b'Transfer-Encoding: chunked\r\n\r\n5;a="b\r\n', 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n5;a\x00\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX : y\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n y\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\rb\r\n\r\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n", 400, ERR_INVALID_REQ),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n", 400, ERR_INVALID_REQ),
]


def _raises(chunks: list[bytes], **limits: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        pump(chunks, **limits)
    return info.value


@pytest.mark.parametrize("data,status,code", BAD)
def test_rejected_whole(data: bytes, status: int, code: str) -> None:
    err = _raises([data])
    assert (err.status, err.error_code) == (status, code), err.reason


@pytest.mark.parametrize("data,status,code", BAD)
def test_rejected_byte_by_byte(data: bytes, status: int, code: str) -> None:
    err = _raises([data[i : i + 1] for i in range(len(data))])
    assert (err.status, err.error_code) == (status, code), err.reason


@pytest.mark.parametrize("data,status,code", BAD)
def test_rejected_before_any_event_of_the_bad_head(data: bytes, status: int, code: str) -> None:
    # A head-level error must not first hand out a Request for that head.
    reader = RequestReader()
    reader.feed(data)
    reader.feed_eof()
    try:
        event = reader.next_event()
    except ProtocolError:
        return
    assert type(event) is Request
    assert b"chunked" in data or b"Content-Length" in data  # a body-level error
    with pytest.raises(ProtocolError):
        while True:
            reader.next_event()


def test_garbage_fails_on_first_packet() -> None:
    # No CRLF yet, but the bytes cannot be a method: fail now, not at the limit.
    reader = RequestReader()
    reader.feed(b"\x16\x03\x01")
    with pytest.raises(ProtocolError) as info:
        reader.next_event()
    assert info.value.error_code == ERR_PROTOCOL_UNKNOWN


def test_telnet_hello_fails_without_blank_line() -> None:
    reader = RequestReader()
    reader.feed(b"hello\r\n")
    with pytest.raises(ProtocolError) as info:
        reader.next_event()
    assert (info.value.status, info.value.error_code) == (400, ERR_PROTOCOL_UNKNOWN)


def test_bad_request_line_fails_before_the_blank_line() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/2.0\r\nHost: a\r\n")
    with pytest.raises(ProtocolError) as info:
        reader.next_event()
    assert info.value.status == 505


@pytest.mark.parametrize(
    "data,limits,status",
    [
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n", {"max_header_size": 100}, 414),
        (b"GET /" + b"a" * 200, {"max_header_size": 100}, 414),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 200 + b"\r\n\r\n",
            {"max_header_size": 100},
            431,
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 200, {"max_header_size": 100}, 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 10 + b"\r\n", {"max_headers": 10}, 431),
        (POST + b"Content-Length: 11\r\n\r\nhello world", {"max_body_size": 10}, 413),
        (
            POST + b"Transfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
            {"max_body_size": 10},
            413,
        ),
        (
            POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n" + b"X: y\r\n" * 20 + b"\r\n",
            {"max_headers": 10},
            431,
        ),
    ],
)
def test_limits(data: bytes, limits: dict, status: int) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        err = _raises(chunks, **limits)
        assert (err.status, err.error_code) == (status, ERR_TOO_BIG), err.reason


def test_limits_are_inclusive() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    reader = RequestReader(max_header_size=len(data), max_headers=1)
    reader.feed(data)
    assert type(reader.next_event()) is Request
    body = POST + b"Content-Length: 10\r\n\r\nhelloworld"
    reader = RequestReader(max_body_size=10)
    reader.feed(body)
    assert type(reader.next_event()) is Request


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # head cut short
        POST + b"Content-Length: 5\r\n\r\nabc",
        POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabc",
        POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
        POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n",
    ],
)
def test_eof_inside_a_message(data: bytes) -> None:
    err = _raises([data])
    assert err.status == 400


def test_reader_stays_failed() -> None:
    reader = RequestReader()
    reader.feed(b"hello\r\n")
    with pytest.raises(ProtocolError) as first:
        reader.next_event()
    with pytest.raises(ProtocolError) as again:
        reader.next_event()
    assert again.value is first.value


# Its body (Content-Length: 1; Transfer_Encoding is just another field) is
# cut short, which only the close can tell.
_NEEDS_EOF = {POST + b"Transfer_Encoding: chunked\r\nContent-Length: 1\r\n\r\n"}


@pytest.mark.parametrize("data,status,code", BAD)
def test_rejected_while_the_connection_stays_open(data: bytes, status: int, code: str) -> None:
    """No other verdict waits for the client to close: a client that never
    sends the CRLF it owes (a bare LF sender) would otherwise hold both sides."""
    if data in _NEEDS_EOF:
        events = pump([data], eof=False)
        assert [type(e) for e in events] == [Request]  # the head; its body is awaited
        return
    with pytest.raises(ProtocolError) as info:
        pump([data], eof=False)
    assert (info.value.status, info.value.error_code) == (status, code), info.value.reason


def test_the_chunk_line_limit_does_not_depend_on_where_the_crlf_was_cut() -> None:
    """4096 bytes of chunk-size line are allowed, whether its CRLF comes in
    the same read or is cut between the CR and the LF (the CR counted as
    the line's made it 4097); one byte more is refused either way."""
    head = POST + b"Transfer-Encoding: chunked\r\n\r\n"
    for length, allowed in ((4096, True), (4097, False)):
        line = b"1;a=" + b"b" * (length - 4)
        for pieces in ([head + line + b"\r\nx\r\n0\r\n\r\n"],
                       [head + line + b"\r", b"\nx\r\n0\r\n\r\n"]):
            if allowed:
                assert pump(pieces)[1].data == b"x"
            else:
                with pytest.raises(ProtocolError):
                    pump(pieces)


@pytest.mark.parametrize("head, request_line", [
    (b"GET http://h/x HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n", (b"GET", b"http://h/x")),
    (b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", (b"POST", b"http://h/")),
    (b"GET / HTTP/1.1\r\n\r\n", (b"GET", b"/")),  # no Host, nor a URI to route by
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX: " + b"y" * 2000 + b"\r\n\r\n", (b"GET", b"http://h/")),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nBad Header: x\r\n\r\n",
     (b"GET", b"/second")),  # the refused head's own line, not the one before
    # The request line did not parse: the method it starts with, no target.
    (b"hello\r\n\r\n", (b"hello", None)),
    (b"hello world\r\n\r\n", (b"hello", None)),
    (b"GET http://h/" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", (b"GET", None)),  # 414
    (b"GET http://h/a\x01b HTTP/1.1\r\nHost: h\r\n\r\n", (b"GET", None)),
    (b"A" * 40 + b" http://h/ HTTP/1.1\r\n\r\n", (b"A" * 32, None)),  # squid's 32 at most
    (b"\x16\x03\x01\x00\x05hello\r\n\r\n", (b"", None)),  # no method: NONE
    # squid's relaxed parser: a method it knows in upper case, whatever the case
    (b"get http://h/a\x01b HTTP/1.1\r\n\r\n", (b"GET", None)),
    (b"patch http://h/a\x01b HTTP/1.1\r\n\r\n", (b"patch", None)),  # not one it knows
    # A version labsquid does not speak: method and target.
    (b"GET http://h/x HTTP/2.0\r\nHost: h\r\n\r\n", (b"GET", b"http://h/x")),
    (b"GET http://h/x HTTP/x.y\r\n\r\n", (b"GET", b"http://h/x")),
])
def test_a_refused_head_names_the_method_squid_reads_and_a_parsed_target(head,
                                                                         request_line) -> None:
    """What squid's access.log line shows for it (checked against squid 5.7):
    the method and target once the request line parsed, else the method the
    line starts with (``hello`` for telnet's) and squid's ``error:`` URL."""
    for chunks in ([head], bytewise(head)):
        with pytest.raises(ProtocolError) as info:
            pump(chunks, max_header_size=1024)
        assert info.value.request_line == request_line

