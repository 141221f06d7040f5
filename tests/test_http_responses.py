"""ResponseReader: body rules by request method and status, 1xx, until-close."""

from __future__ import annotations

import pytest

from labsquid.http import (
    ERR_INVALID_RESP,
    ERR_TOO_BIG,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    NeedData,
    Paused,
    ProtocolError,
    Response,
    ResponseReader,
)


def pump(data: bytes, method: bytes = b"GET", eof: bool = True, **limits: int) -> list:
    reader = ResponseReader(method, **limits)
    events: list = []
    for i in range(len(data) + 1):  # byte by byte: the hardest split
        if i < len(data):
            reader.feed(data[i : i + 1])
        elif eof:
            reader.feed_eof()
        while True:
            event = reader.next_event()
            if event is NeedData or event is Paused:
                break
            if type(event) is Data and events and type(events[-1]) is Data:
                events[-1] = Data(events[-1].data + event.data)
            else:
                events.append(event)
    return events


def test_content_length_body() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert pump(data) == [
        Response(200, b"OK", b"1.1", Headers([(b"Content-Length", b"5")])),
        Data(b"hello"),
        EndOfMessage(),
    ]


def test_head_response_has_no_body_despite_its_length() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert [type(e) for e in pump(data, b"HEAD")] == [Response, EndOfMessage]


def test_informational_then_final() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    events = pump(data, b"POST")
    assert [getattr(e, "status", None) for e in events] == [100, 103, 200, None, None]
    assert events[3:] == [Data(b"ok"), EndOfMessage()]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    data = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    assert [type(e) for e in pump(data, eof=False)] == [Response, EndOfMessage]


def test_until_close_body() -> None:
    data = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of this until EOF"
    events = pump(data)
    assert events[1:] == [Data(b"all of this until EOF"), EndOfMessage()]
    assert events[0].http_version == b"1.0"


def test_until_close_respects_body_limit() -> None:
    with pytest.raises(ProtocolError) as info:
        pump(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11, max_body_size=10)
    assert (info.value.status, info.value.error_code) == (502, ERR_TOO_BIG)


def test_connect_2xx_and_101_become_tunnels() -> None:
    for method, head in [
        (b"CONNECT", b"HTTP/1.1 200 Connection established\r\n\r\n"),
        (b"GET", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
    ]:
        reader = ResponseReader(method)
        reader.feed(head + b"\x00tunnel bytes")
        assert type(reader.next_event()) is Response
        assert reader.next_event() == EndOfMessage()
        assert reader.next_event() is Paused
        assert reader.take_trailing_data() == b"\x00tunnel bytes"


def test_connect_refused_has_a_body() -> None:
    events = pump(b"HTTP/1.1 407 Auth\r\nContent-Length: 2\r\n\r\nno", b"CONNECT")
    assert events[1] == Data(b"no")


def test_keep_alive_cycle_with_methods() -> None:
    reader = ResponseReader(b"HEAD")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\n")
    reader.feed(b"Content-Length: 3\r\n\r\nabc")
    assert type(reader.next_event()) is Response
    assert reader.next_event() == EndOfMessage()
    reader.start_next_cycle(b"GET")
    assert type(reader.next_event()) is Response
    assert reader.next_event() == Data(b"abc")
    assert reader.next_event() == EndOfMessage()
    reader.start_next_cycle(b"GET")
    reader.feed_eof()
    assert reader.next_event() == ConnectionClosed()  # idle close: retriable


def test_status_line_without_reason() -> None:
    assert pump(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n")[0].reason == b""


@pytest.mark.parametrize(
    "data",
    [
        b"<html>HTTP/0.9 body</html>",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 X\r\n\r\n",
        b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n",  # RFC 9110 §15: 100-599, as squid
        b"HTTP/1.1 999 X\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 abc X\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nbody",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nx\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",  # origin died mid-body
        b"HTTP/1.1 200 OK\r\nContent-Le",  # ...or mid-head
    ],
)
def test_bad_responses_are_502(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        pump(data)
    assert (info.value.status, info.value.error_code) == (502, ERR_INVALID_RESP)


def test_response_head_limit_is_502_too_big() -> None:
    with pytest.raises(ProtocolError) as info:
        pump(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100 + b"\r\n\r\n", max_header_size=50)
    assert (info.value.status, info.value.error_code) == (502, ERR_TOO_BIG)
