"""Serializing heads, and body framers for re-framing a relayed body.

Theory of operation
-------------------
Whatever a writer emits is parsed again by a peer, so it validates the same
rules the readers enforce: a header value carrying CR/LF would be response
splitting, a method with a space a second request line. A head with both
Content-Length and Transfer-Encoding (or any framing our own readers would
refuse) is refused here too — a proxy must never emit ambiguous framing.

Bodies are framed independently of how they arrived: the proxy strips the
hop-by-hop Transfer-Encoding, picks a framer for the outgoing side and pushes
each `Data` through `write()`. E.g. a chunked origin response relayed to an
HTTP/1.0 client goes out through `UntilCloseWriter` (and the connection is
closed after it); a Content-Length upstream body can go to a client as-is.
Trailers exist only in chunked framing; other framers drop them, which
RFC 9110 §6.5.1 permits.
"""

from __future__ import annotations

from ._abnf import FIELD_VALUE_CLASS, TCHAR_CLASS, VCHAR_CLASS
from ._events import LocalProtocolError, ProtocolError, Request, Response
from ._framing import CHUNKED, TUNNEL, UNTIL_CLOSE, request_framing, response_framing
from ._headers import Headers

_VERSIONS = {b"1.1": b"HTTP/1.1", b"1.0": b"HTTP/1.0"}


def _fields(headers: Headers, out: list[bytes]) -> None:
    for name, value in headers:
        if not name.translate(TCHAR_CLASS).isalpha():
            raise LocalProtocolError(f"invalid field name {name[:40]!r}")
        if value and not value.translate(FIELD_VALUE_CLASS).isalpha():
            raise LocalProtocolError(f"invalid character in value of {name[:40]!r}")
        out.append(b"%s: %s\r\n" % (name, value))


def write_head(event: Request | Response) -> bytes:
    """The start line and field lines of `event`, ending with the empty line."""
    version = _VERSIONS.get(event.http_version)
    if version is None:
        raise LocalProtocolError(f"cannot write HTTP version {event.http_version!r}")
    if type(event) is Request:
        method, target = event.method, event.target
        if not method.translate(TCHAR_CLASS).isalpha():
            raise LocalProtocolError(f"invalid method {method[:32]!r}")
        if not target.translate(VCHAR_CLASS).isalpha():
            raise LocalProtocolError("invalid request-target")
        # As the reader has it: one Host, or none when the target itself
        # names the origin (absolute-form, CONNECT's authority-form).
        hosts = event.headers.count(b"host")
        if event.http_version == b"1.1" and (
                hosts > 1 or (hosts == 0 and target[:1] in (b"/", b"*"))):
            raise LocalProtocolError("HTTP/1.1 request needs exactly one Host header")
        out = [b"%s %s %s\r\n" % (method, target, version)]
    else:
        if not 100 <= event.status <= 599:
            raise LocalProtocolError(f"invalid status {event.status}")
        if event.reason and not event.reason.translate(FIELD_VALUE_CLASS).isalpha():
            raise LocalProtocolError("invalid reason phrase")
        out = [b"%s %d %s\r\n" % (version, event.status, event.reason)]
    _fields(event.headers, out)
    out.append(b"\r\n")
    try:
        if type(event) is Request:
            request_framing(event)
        else:
            response_framing(event, b"GET")
    except ProtocolError as exc:
        raise LocalProtocolError(f"refusing to write ambiguous framing: {exc.reason}") from None
    return b"".join(out)


class ContentLengthWriter:
    """Body of exactly `length` bytes; `end()` checks the count was met."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def write(self, data: bytes) -> bytes:
        if len(data) > self.remaining:
            raise LocalProtocolError("body longer than its Content-Length")
        self.remaining -= len(data)
        return bytes(data)

    def end(self, trailers: Headers | None = None) -> bytes:
        if self.remaining:
            raise LocalProtocolError(f"body {self.remaining} bytes short of Content-Length")
        return b""


class ChunkedWriter:
    """Each non-empty `write()` becomes one chunk; `end()` the last-chunk."""

    __slots__ = ()

    def write(self, data: bytes) -> bytes:
        if not data:
            return b""  # an empty chunk would be the last-chunk
        return b"%x\r\n%s\r\n" % (len(data), data)

    def end(self, trailers: Headers | None = None) -> bytes:
        out = [b"0\r\n"]
        if trailers:
            _fields(trailers, out)
        out.append(b"\r\n")
        return b"".join(out)


class UntilCloseWriter:
    """Body delimited by closing the connection (responses only)."""

    __slots__ = ()

    def write(self, data: bytes) -> bytes:
        return bytes(data)

    def end(self, trailers: Headers | None = None) -> bytes:
        return b""  # the caller closes the connection


BodyWriter = ContentLengthWriter | ChunkedWriter | UntilCloseWriter


def body_writer(event: Request | Response, request_method: bytes = b"GET") -> BodyWriter:
    """The framer that `event`'s own headers promise (same rules as the readers).

    For a response, `request_method` matters (HEAD, CONNECT). A message without
    body (or a tunnel) gets a zero-length writer.
    """
    try:
        if type(event) is Request:
            framing = request_framing(event)
        else:
            framing = response_framing(event, request_method)
    except ProtocolError as exc:
        raise LocalProtocolError(exc.reason) from None
    if framing == CHUNKED:
        return ChunkedWriter()
    if framing == UNTIL_CLOSE:
        return UntilCloseWriter()
    if framing == TUNNEL:
        return ContentLengthWriter(0)
    return ContentLengthWriter(framing)
