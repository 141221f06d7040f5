"""Differential tests against h11, the parser that re-reads what we forward.

* Generated valid messages: our events equal h11's.
* Mutated messages (bytes inserted, deleted, replaced with the characters
  smuggling attacks are made of): whenever we accept the first message, h11
  accepts it too with the same head, body, trailers and the same leftover bytes,
  i.e. the same message boundary. Where we refuse, h11 may still accept: we
  are deliberately stricter.

Known, documented differences normalized here: h11 refuses the empty lines
RFC 9112 §2.2 lets a server skip before a request (we skip them), folds
duplicate identical Content-Length lines into one and lowercases the
Transfer-Encoding value (we keep fields as received).
"""

from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labsquid.http import (
    Data,
    EndOfMessage,
    ProtocolError,
    Request,
    RequestReader,
    Response,
    ResponseReader,
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TCHAR, min_size=1, max_size=12).map(str.encode)
values = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c < 127 or c >= 128).strip(b" \t")
)
path = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/?=&%-._~+", max_size=30)
targets = path.map(lambda p: ("/" + p).encode())
ows = st.sampled_from([b"", b" ", b"\t", b"  "])
_FRAMING = {b"content-length", b"transfer-encoding", b"host", b"connection"}
extra_fields = st.lists(
    st.tuples(tokens.filter(lambda n: n.lower() not in _FRAMING), values), max_size=6
)
body = st.binary(max_size=200)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> bytes:
    out, i = [], 0
    while i < len(data):
        n = draw(st.integers(1, len(data) - i))
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b';q="x\\"y"']))
        out.append(b"%x%s\r\n%s\r\n" % (n, ext, data[i : i + n]))
        i += n
    trailers = draw(st.lists(st.tuples(tokens, values), max_size=2))
    out.append(b"0\r\n" + b"".join(b"%s: %s\r\n" % t for t in trailers) + b"\r\n")
    return b"".join(out)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"X-CUSTOM"]))
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    fields = draw(extra_fields)
    if version == b"1.1" or draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"example.com"))
    payload = draw(body)
    framing = draw(st.sampled_from(["cl", "chunked", "none"] if version == b"1.1" else ["cl"]))
    tail = b""
    if framing == "cl":
        fields.append(
            (draw(st.sampled_from([b"Content-Length", b"content-length"])), b"%d" % len(payload))
        )
        tail = payload
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
        tail = draw(chunked(payload))
    head = b"%s %s HTTP/%s\r\n" % (method, draw(targets), version)
    for name, value in fields:
        head += b"%s:%s%s%s\r\n" % (name, draw(ows), value, draw(ows) if value else b"")
    return head + b"\r\n" + tail


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes]:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    status = draw(st.sampled_from([200, 204, 206, 304, 404, 500, 599]))
    fields = draw(extra_fields)
    payload = draw(body)
    framing = draw(st.sampled_from(["cl", "chunked", "close"]))
    if framing == "cl":
        fields.append((b"Content-Length", b"%d" % len(payload)))
        tail = payload
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        tail = draw(chunked(payload))
    else:
        tail = payload
    if status < 200 or status in (204, 304) or method == b"HEAD":
        tail = b""
    reason = draw(st.sampled_from([b"", b"OK", b"Some Reason"]))
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    head += b"".join(b"%s: %s\r\n" % f for f in fields)
    prefix = draw(
        st.sampled_from(
            [
                b"",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            ]
        )
    )
    return method, prefix + head + b"\r\n" + tail


# -- run both parsers -----------------------------------------------------------


def _norm_fields(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in pairs:
        if name == b"content-length":
            continue  # compared through the body instead
        out.append((name, value.lower() if name == b"transfer-encoding" else value))
    return out


def ours(reader, data: bytes) -> list | None:
    """[heads..., body, trailers, leftover] of the first message, None if refused."""
    reader.feed(data)
    reader.feed_eof()
    out, payload = [], b""
    try:
        while True:
            event = reader.next_event()
            if type(event) in (Request, Response):
                out.append(
                    (
                        getattr(event, "method", None) or event.status,
                        getattr(event, "target", None),
                        event.http_version,
                        _norm_fields(event.headers.lowered()),
                    )
                )
            elif type(event) is Data:
                payload += event.data
            elif type(event) is EndOfMessage:
                return [*out, payload, _norm_fields(event.trailers.lowered()), reader.trailing_data]
            else:
                return None
    except ProtocolError:
        return None


def theirs(conn: h11.Connection, data: bytes) -> list | None:
    conn.receive_data(data)
    conn.receive_data(b"")
    out, payload = [], b""
    try:
        while True:
            event = conn.next_event()
            if type(event) in (h11.Request, h11.Response, h11.InformationalResponse):
                out.append(
                    (
                        getattr(event, "method", None) or event.status_code,
                        getattr(event, "target", None),
                        event.http_version,
                        _norm_fields(list(event.headers)),
                    )
                )
            elif type(event) is h11.Data:
                payload += event.data
            elif type(event) is h11.EndOfMessage:
                return [*out, payload, _norm_fields(list(event.headers)), conn.trailing_data[0]]
            else:
                return None
    except h11.RemoteProtocolError:
        return None


def h11_client(method: bytes) -> h11.Connection:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    return conn


# -- mutations --------------------------------------------------------------------

NASTY = [
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"0",
    b"a",
    b"\x00",
    b"\x0b",
    b"-",
    b"+",
    b"chunked",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 1\r\n",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"\xff",
    b'"',
    b"\\",
]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(NASTY))
        if op == "insert":
            data[i:i] = piece
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 4))]
        else:
            data[i : i + len(piece)] = piece
    return bytes(data)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(requests())
def test_valid_requests_match_h11(data: bytes) -> None:
    mine = ours(RequestReader(), data)
    assert mine is not None
    assert mine == theirs(h11.Connection(h11.SERVER), data)


@SETTINGS
@given(responses())
def test_valid_responses_match_h11(case: tuple[bytes, bytes]) -> None:
    method, data = case
    mine = ours(ResponseReader(method), data)
    assert mine is not None
    assert mine == theirs(h11_client(method), data)


@SETTINGS
@given(mutated(requests()))
def test_requests_we_accept_h11_reads_identically(data: bytes) -> None:
    mine = ours(RequestReader(), data)
    if mine is not None:
        assert mine == theirs(h11.Connection(h11.SERVER), data.lstrip(b"\r\n"))


@SETTINGS
@given(st.data())
def test_responses_we_accept_h11_reads_identically(draw: st.DataObject) -> None:
    method, data = draw.draw(responses())
    data = draw.draw(mutated(st.just(data)))
    mine = ours(ResponseReader(method), data)
    if mine is not None:
        assert mine == theirs(h11_client(method), data)
