"""RequestReader on valid input: methods, both body framings, pipelining, splits."""

from __future__ import annotations

import pytest

from labsquid.http import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    LocalProtocolError,
    NeedData,
    Paused,
    ProtocolError,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    keep_alive,
)
from support.http_feed import bytewise, pump

METHODS = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"M-SEARCH",
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("framing", ["length", "chunked", "none"])
def test_every_method_and_framing(method: bytes, framing: str) -> None:
    body = b"hello, world"
    head = b"%s http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\n" % method
    if framing == "length":
        data = head + b"Content-Length: 12\r\n\r\n" + body
    elif framing == "chunked":
        data = head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    else:
        data, body = head + b"\r\n", b""
    expected = [
        Request(
            method,
            b"http://example.com/x?y=1",
            b"1.1",
            Headers(
                [(b"Host", b"example.com")]
                + ([(b"Content-Length", b"12")] if framing == "length" else [])
                + ([(b"Transfer-Encoding", b"chunked")] if framing == "chunked" else [])
            ),
        )
    ]
    expected += [Data(body)] if body else []
    expected += [EndOfMessage(), ConnectionClosed()]
    assert pump([data]) == expected


def test_connect_then_tunnel_bytes_are_left_alone() -> None:
    reader = RequestReader()
    reader.feed(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n\x16\x03\x01binary")
    assert reader.next_event() == Request(
        b"CONNECT", b"[::1]:443", b"1.1", Headers([(b"Host", b"[::1]:443")])
    )
    assert reader.next_event() == EndOfMessage()
    assert reader.next_event() is Paused  # never parses the tunnel as HTTP
    assert reader.take_trailing_data() == b"\x16\x03\x01binary"
    assert reader.trailing_data == b""


def test_pipelined_requests_in_one_feed() -> None:
    data = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3;name=value;q="a\\"b"\r\nxyz\r\n0\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\n'
        b"\r\n"  # a stray CRLF between requests (RFC 9112 §2.2) is skipped
        b"GET /4 HTTP/1.0\r\n\r\n"
    )
    events = pump([data])
    targets = [e.target for e in events if type(e) is Request]
    assert targets == [b"/1", b"/2", b"/3", b"/4"]
    assert [e.data for e in events if type(e) is Data] == [b"abc", b"xyz"]
    trailers = [e.trailers for e in events if type(e) is EndOfMessage]
    assert trailers[2] == [(b"Trailer-A", b"1"), (b"Trailer-B", b"2")]
    assert type(events[-1]) is ConnectionClosed


PIPELINE = (
    b"\r\n\r\nPOST http://example.com/upload HTTP/1.1\r\nHost: example.com\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"a\r\n0123456789\r\n1;ext\r\n!\r\n0\r\nX-Sum: 11\r\n\r\n"
    b"PUT /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\nbody"
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
)


def test_every_split_position_gives_the_same_events() -> None:
    whole = pump([PIPELINE])
    assert len(whole) == 9
    for i in range(len(PIPELINE) + 1):
        assert pump([PIPELINE[:i], PIPELINE[i:]]) == whole, i
    assert pump(bytewise(PIPELINE)) == whole


def test_body_is_streamed_not_buffered() -> None:
    reader = RequestReader()
    reader.feed(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nfirst")
    assert type(reader.next_event()) is Request
    assert reader.next_event() == Data(b"first")
    assert reader.next_event() is NeedData
    reader.feed(b"x" * 10)
    assert reader.next_event() == Data(b"x" * 10)
    # Chunked: data is handed out before its chunk is complete.
    reader = RequestReader()
    reader.feed(b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffff\r\nab")
    assert type(reader.next_event()) is Request
    assert reader.next_event() == Data(b"ab")
    assert reader.next_event() is NeedData


def test_field_values_lose_surrounding_whitespace_only() -> None:
    (request, *_) = pump(
        [b"GET / HTTP/1.1\r\nHost:a\r\nX: \t a \t b \t\r\nY:\r\nZ: \xff\x80\r\n\r\n"]
    )
    assert list(request.headers) == [
        (b"Host", b"a"),
        (b"X", b"a \t b"),
        (b"Y", b""),
        (b"Z", b"\xff\x80"),
    ]


def test_identical_content_lengths_count_as_one() -> None:
    for cl in (
        b"Content-Length: 3\r\nContent-Length: 3\r\n",
        b"Content-Length: 3, 3\r\n",
        b"Content-Length: 003\r\n",
    ):
        events = pump([b"POST / HTTP/1.1\r\nHost: a\r\n" + cl + b"\r\nabcGET"], eof=False)
        assert events[1:] == [Data(b"abc"), EndOfMessage()]


def test_transfer_coding_names_are_case_insensitive() -> None:
    events = pump([b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n0\r\n\r\n"])
    assert events[1:] == [EndOfMessage(), ConnectionClosed()]


@pytest.mark.parametrize(
    "line,host_required",
    [
        # HTTP/1.1 needs Host only when the target names no authority: an
        # absolute URI or CONNECT's host:port is what a proxy routes by (squid
        # 5.7 serves those without Host, and Host is written from the URI).
        (b"OPTIONS * HTTP/1.1", True),
        (b"GET / HTTP/1.1", True),
        (b"GET http://[2001:db8::1]:8080/ HTTP/1.1", False),
        (b"GET http://user:pw@example.com/ HTTP/1.1", False),
        (b"CONNECT example.com:443 HTTP/1.1", False),
        (b"GET / HTTP/1.0", False),
        (b"GET http://example.com HTTP/1.0", False),
    ],
)
def test_target_forms_and_host_rules(line: bytes, host_required: bool) -> None:
    events = pump([line + b"\r\nHost: example.com\r\n\r\n"])
    assert events[0].target == line.split(b" ")[1]
    if host_required:
        with pytest.raises(ProtocolError, match="without Host"):
            pump([line + b"\r\n\r\n"])
    else:
        assert type(pump([line + b"\r\n\r\n"])[0]) is Request


@pytest.mark.parametrize("sent, read", [
    (b"GET", b"GET"),
    (b"get", b"GET"),
    (b"hEaD", b"HEAD"),
    (b"version-control", b"VERSION-CONTROL"),
    (b"Purge", b"PURGE"),
    # not among squid 5.7's methods: extension tokens, kept as sent
    (b"patch", b"patch"),
    (b"mkcalendar", b"mkcalendar"),
    (b"X-Get", b"X-Get"),
])
def test_squids_known_methods_are_read_in_any_case(sent: bytes, read: bytes) -> None:
    events = pump([sent + b" http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"])
    assert events[0].method == read


def test_a_lowercase_head_is_framed_as_head() -> None:
    """The reply to "head" has no body, whatever its Content-Length says."""
    request = pump([b"head http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"])[0]
    reader = ResponseReader(request.method)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert type(reader.next_event()) is Response
    assert type(reader.next_event()) is EndOfMessage


def test_long_leading_crlf_run_is_skipped() -> None:
    events = pump([b"\r\n" * 1000 + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], max_header_size=100)
    assert type(events[0]) is Request


def test_eof_between_requests_and_before_any() -> None:
    assert pump([]) == [ConnectionClosed()]
    assert pump([b"\r\n"]) == [ConnectionClosed()]


def test_cycle_api_misuse() -> None:
    reader = RequestReader()
    with pytest.raises(LocalProtocolError):
        reader.start_next_cycle()
    reader.feed_eof()
    with pytest.raises(LocalProtocolError):
        reader.feed(b"x")


@pytest.mark.parametrize(
    "version,connection,expected",
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, CLOSE", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
    ],
)
def test_keep_alive(version: bytes, connection: bytes | None, expected: bool) -> None:
    headers = Headers([(b"Connection", connection)] if connection else [])
    assert keep_alive(Request(b"GET", b"/", version, headers)) is expected
