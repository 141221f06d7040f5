"""Writers: heads and re-framed bodies read back identically by us and by h11."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labsquid.http import (
    ChunkedWriter,
    ContentLengthWriter,
    Data,
    EndOfMessage,
    Headers,
    LocalProtocolError,
    NeedData,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    UntilCloseWriter,
    body_writer,
    write_head,
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = (
    st.text(alphabet=TCHAR, min_size=1, max_size=10)
    .map(str.encode)
    .filter(lambda n: n.lower() not in (b"content-length", b"transfer-encoding", b"host"))
)
values = st.text(alphabet='abc XYZ019;=,/\t"', max_size=20).map(lambda s: s.strip(" \t").encode())
pieces = st.lists(st.binary(min_size=0, max_size=50), max_size=5)


@st.composite
def messages(draw: st.DrawFn) -> tuple[Request, list[bytes], Headers]:
    fields = [(b"Host", b"example.com"), *draw(st.lists(st.tuples(names, values), max_size=5))]
    body = draw(pieces)
    chunked = draw(st.booleans())
    if chunked:
        fields.append((b"Transfer-Encoding", b"chunked"))
        trailers = Headers(draw(st.lists(st.tuples(names, values), max_size=2)))
    else:
        fields.append((b"Content-Length", b"%d" % sum(map(len, body))))
        trailers = Headers()
    method = draw(st.sampled_from([b"POST", b"PUT", b"X-Y"]))
    return Request(method, b"/p?q=1", b"1.1", Headers(fields)), body, trailers


def serialize(head: Request | Response, body: list[bytes], trailers: Headers) -> bytes:
    writer = body_writer(head)
    return write_head(head) + b"".join(writer.write(p) for p in body) + writer.end(trailers)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages())
def test_requests_round_trip_through_us_and_h11(msg: tuple) -> None:
    request, body, trailers = msg
    wire = serialize(request, body, trailers)

    reader = RequestReader()
    reader.feed(wire)
    assert reader.next_event() == request
    got, event = b"", reader.next_event()
    while type(event) is Data:
        got, event = got + event.data, reader.next_event()
    assert (got, event) == (b"".join(body), EndOfMessage(trailers))
    assert reader.trailing_data == b""

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    h = conn.next_event()
    assert (h.method, h.target, list(h.headers)) == (
        request.method,
        request.target,
        request.headers.lowered(),
    )
    got, event = b"", conn.next_event()
    while type(event) is h11.Data:
        got, event = got + event.data, conn.next_event()
    assert got == b"".join(body)
    assert list(event.headers) == trailers.lowered()


def test_reframe_chunked_response_for_http10_client() -> None:
    origin = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    upstream = ResponseReader(b"GET")
    upstream.feed(origin)
    response = upstream.next_event()
    response.headers.remove_hop_by_hop()
    response.http_version = b"1.0"
    writer = UntilCloseWriter()
    out = write_head(response)
    while (event := upstream.next_event()) is not NeedData:
        if type(event) is Data:
            out += writer.write(event.data)
        elif type(event) is EndOfMessage:
            out += writer.end(event.trailers)
            break
    assert out == b"HTTP/1.0 200 OK\r\nX: 1\r\n\r\nabcde"
    client = ResponseReader(b"GET")
    client.feed(out)
    client.feed_eof()
    assert client.next_event() == response
    assert client.next_event() == Data(b"abcde")
    assert client.next_event() == EndOfMessage()


def test_chunked_writer_never_writes_an_early_last_chunk() -> None:
    writer = ChunkedWriter()
    assert writer.write(b"") == b""
    assert writer.write(b"x" * 300) == b"12c\r\n" + b"x" * 300 + b"\r\n"
    trailers = Headers([(b"Checksum", b"abc")])
    assert writer.end(trailers) == b"0\r\nChecksum: abc\r\n\r\n"


def test_content_length_writer_enforces_the_count() -> None:
    writer = ContentLengthWriter(3)
    assert writer.write(b"ab") == b"ab"
    with pytest.raises(LocalProtocolError):
        writer.end()
    with pytest.raises(LocalProtocolError):
        writer.write(b"cd")
    assert writer.write(b"c") == b"c"
    assert writer.end(Headers([(b"T", b"dropped")])) == b""


@pytest.mark.parametrize(
    "event",
    [
        Request(b"GET", b"/", b"1.1", Headers([(b"Host", b"a"), (b"X", b"a\r\nInjected: 1")])),
        Request(b"GET", b"/", b"1.1", Headers([(b"Host", b"a"), (b"X: y", b"z")])),
        Request(b"GET", b"/", b"1.1", Headers([(b"Host", b"a"), (b"X", b"\x00")])),
        Request(b"GET", b"/ HTTP/1.1\r\nX:", b"1.1", Headers([(b"Host", b"a")])),
        Request(b"G T", b"/", b"1.1", Headers([(b"Host", b"a")])),
        Request(b"GET", b"/", b"1.1", Headers()),
        Request(b"OPTIONS", b"*", b"1.1", Headers()),
        Request(b"GET", b"http://a/", b"1.1", Headers([(b"Host", b"a"), (b"Host", b"a")])),
        Request(b"GET", b"/", b"2", Headers([(b"Host", b"a")])),
        Request(
            b"POST",
            b"/",
            b"1.1",
            Headers(
                [(b"Host", b"a"), (b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")]
            ),
        ),
        Request(b"POST", b"/", b"1.1", Headers([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip")])),
        Response(200, b"OK\r\nX: y"),
        Response(99),
        Response(200, b"OK", b"1.1", Headers([(b"Content-Length", b"1, 2")])),
    ],
)
def test_write_head_refuses_what_a_peer_could_misread(event: Request | Response) -> None:
    with pytest.raises(LocalProtocolError):
        write_head(event)


@pytest.mark.parametrize("target", [b"http://a/x", b"a:443"])
def test_a_target_that_names_the_origin_needs_no_host(target: bytes) -> None:
    """What the reader accepts (squid's reading), the writer writes."""
    method = b"CONNECT" if b"//" not in target else b"GET"
    assert write_head(Request(method, target, b"1.1", Headers())) == (
        b"%s %s HTTP/1.1\r\n\r\n" % (method, target))


def test_body_writer_choice() -> None:
    def h(*fields: tuple[bytes, bytes]) -> Headers:
        return Headers(fields)

    assert type(body_writer(Response(200, b"", b"1.1", h()))) is UntilCloseWriter
    assert (
        type(body_writer(Response(200, b"", b"1.1", h((b"Transfer-Encoding", b"chunked")))))
        is ChunkedWriter
    )
    head_reply = body_writer(Response(200, b"", b"1.1", h((b"Content-Length", b"9"))), b"HEAD")
    assert type(head_reply) is ContentLengthWriter and head_reply.remaining == 0
    assert body_writer(Request(b"GET", b"/", b"1.1", h((b"Host", b"a")))).remaining == 0
