"""Where a message body ends (RFC 9112 §6), and the body decoders.

Theory of operation
-------------------
Request smuggling is two parsers disagreeing about where a body ends. So the
framing headers are accepted only in forms every sane parser (h11 included)
reads the same way, and everything ambiguous is a 400 instead of a guess:

* Transfer-Encoding and Content-Length together: rejected, although §6.3
  lets TE win — it is the classic smuggling pair (§6.1 "ought to be handled
  as an error").
* Transfer-Encoding must be exactly ``chunked`` (case-insensitive), once.
  ``chunked`` repeated or not final -> 400 (§6.3 MUST for requests; for
  responses too, instead of §6.3's read-until-close, because h11 and many
  origins refuse it). A coding we do not implement (``gzip, chunked``,
  ``identity``, ``xchunked``) -> 501, as squid does (ERR_UNSUP_REQ).
  Transfer-Encoding in an HTTP/1.0 message -> 400 (§6.1: framing is faulty).
* Content-Length: 1*DIGIT below 2**63. Several values (lines or a comma
  list) are accepted only if textually identical, then count as one — h11
  compares them as strings, so ``5, 05`` is rejected too.
* Chunk sizes are 1-16 hex digits (no sign, no ``0x``, no whitespace), chunk
  extensions strict ``;name[=token|quoted-string]`` with no BWS, and chunk
  data must be followed by exactly CRLF.
* A CONNECT request has no content (RFC 9110 §9.3.6): framing headers on one
  are rejected rather than ignored, since the bytes after it are tunnel data.

Decoders stream: each `next_event` returns whatever body bytes are buffered
(never waiting for a whole chunk) so memory stays bounded by the feed size.
"""

from __future__ import annotations

import re

from ._abnf import HEXDIGITS_CLASS, OWS
from ._events import (
    ERR_TOO_BIG,
    ERR_UNSUP_REQ,
    Data,
    EndOfMessage,
    NeedData,
    ProtocolError,
    Request,
    Response,
)
from ._head import parse_field_section
from ._headers import Headers

# Body framings: a length (int, 0 for none), or one of these.
CHUNKED = "chunked"
UNTIL_CLOSE = "until-close"
TUNNEL = "tunnel"  # CONNECT 2xx / 101: what follows is not HTTP any more

_MAX_CONTENT_LENGTH = 2**63 - 1
_KNOWN_CODINGS = frozenset(
    {b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress", b"br", b"zstd"}
)
_MAX_CHUNK_LINE = 4096  # chunk-size plus extensions; nobody needs more
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHUNK_EXT = re.compile(rb"(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*")


# The Connection values most clients and origins send: nothing but keep-alive.
KEEP_ALIVE_ONLY = [b"keep-alive"]
FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"host", b"connection"})
_NOT_IN_TRAILERS = frozenset({b"content-length", b"transfer-encoding"})


def content_length(headers: Headers) -> int | None:
    """The Content-Length, None when absent; ProtocolError when ambiguous."""
    return _content_length(headers.get_all(b"content-length"))


def _content_length(values: list[bytes] | None) -> int | None:
    if not values:
        return None
    seen = None
    for value in values:
        for part in value.split(b","):
            part = part.strip(OWS)
            if not part.isdigit() or len(part) > 19:  # bytes: ASCII digits only
                raise ProtocolError(f"invalid Content-Length {value[:40]!r}")
            if seen is None:
                seen = part
            elif part != seen:
                raise ProtocolError("conflicting Content-Length values")
    length = int(seen)
    if length > _MAX_CONTENT_LENGTH:
        raise ProtocolError("Content-Length out of range")
    return length


def _is_chunked(values: list[bytes] | None, http_version: bytes) -> bool:
    """True for ``Transfer-Encoding: chunked``, False when absent, else raise."""
    if not values:
        return False
    if http_version == b"1.0":
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 message")
    codings = [c.strip(OWS).lower() for value in values for c in value.split(b",")]
    if codings == [b"chunked"]:
        return True
    if b"" in codings:
        raise ProtocolError("empty element in Transfer-Encoding")
    if codings.count(b"chunked") > 1:
        raise ProtocolError("chunked applied more than once")
    if b"chunked" in codings and codings[-1] != b"chunked":
        raise ProtocolError("chunked is not the final transfer coding")
    if b"chunked" not in codings and all(c in _KNOWN_CODINGS for c in codings):
        raise ProtocolError("Transfer-Encoding without chunked: length unknown")
    raise ProtocolError(
        f"unsupported transfer coding {b', '.join(codings)[:60]!r}", 501, ERR_UNSUP_REQ
    )


def _length_or_chunked(fields: dict[bytes, list[bytes]], http_version: bytes) -> int | str | None:
    te = fields.get(b"transfer-encoding")
    lengths = fields.get(b"content-length")
    if te is None:  # the usual cases first: no body, or one plain length
        if lengths is None:
            return None
        if len(lengths) == 1:
            value = lengths[0]
            # 18 digits cannot reach 2**63; longer, signs, lists: the full check.
            if len(value) <= 18 and value.isdigit():
                return int(value)
    chunked = _is_chunked(te, http_version)
    length = _content_length(lengths)
    if chunked:
        if length is not None:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        return CHUNKED
    return length


def request_framing(request: Request, fields: dict[bytes, list[bytes]] | None = None) -> int | str:
    """Body framing of a request: a length (0 = none) or CHUNKED.

    `fields` is ``headers.collect(FRAMING_FIELDS)`` when the caller has it.
    """
    if fields is None:
        fields = request.headers.collect(FRAMING_FIELDS)
    framing = _length_or_chunked(fields, request.http_version)
    if request.method == b"CONNECT" and framing:
        raise ProtocolError("CONNECT request with content")
    return 0 if framing is None else framing


def response_framing(response: Response, request_method: bytes,
                     fields: dict[bytes, list[bytes]] | None = None) -> int | str:
    """Body framing of a response to `request_method` (RFC 9112 §6.3 order)."""
    status = response.status
    # Validate framing headers even where they are ignored: a response that
    # carries garbage there is not one to trust for anything else.
    if fields is None:
        fields = response.headers.collect(FRAMING_FIELDS)
    framing = _length_or_chunked(fields, response.http_version)
    if request_method == b"CONNECT" and 200 <= status < 300:
        return TUNNEL
    if status == 101:
        return TUNNEL
    if status < 200 or status in (204, 304) or request_method == b"HEAD":
        return 0
    return UNTIL_CLOSE if framing is None else framing


def keep_alive(event: Request | Response) -> bool:
    """Whether the sender of `event` offers to keep the connection (RFC 9112 §9.3)."""
    if event.keep_alive is not None:
        return event.keep_alive
    return offers_keep_alive(event.headers.get_all(b"connection"), event.http_version)


def offers_keep_alive(connection: list[bytes] | tuple[()] | None, http_version: bytes) -> bool:
    """`keep_alive` from the Connection field lines (None or empty when absent)."""
    if not connection:
        return http_version != b"1.0"
    if connection == KEEP_ALIVE_ONLY:
        return True
    tokens = [t.strip(OWS).lower() for value in connection for t in value.split(b",")]
    if b"close" in tokens:
        return False
    if http_version == b"1.0":
        return b"keep-alive" in tokens
    return True


# -- decoders: next_event(buf, eof) consumes from the reader's bytearray -------

# The end of a body without trailers, shared: nobody edits an event's fields,
# and one per message is not worth an allocation and an empty Headers.
_END = EndOfMessage()


def _too_big(limit: int) -> ProtocolError:
    return ProtocolError(f"body larger than {limit} bytes", 413, ERR_TOO_BIG)


class ContentLengthDecoder:
    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def next_event(self, buf: bytearray, eof: bool) -> Data | EndOfMessage | type[NeedData]:
        if not self.remaining:
            return _END
        if not buf:
            if eof:
                raise ProtocolError(f"connection closed with {self.remaining} body bytes due")
            return NeedData
        n = self.remaining
        if len(buf) <= n:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        self.remaining -= len(data)
        return Data(data)


# A zero-length body decoder never changes state: one serves every bodiless message.
NO_BODY = ContentLengthDecoder(0)


class UntilCloseDecoder:
    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def next_event(self, buf: bytearray, eof: bool) -> Data | EndOfMessage | type[NeedData]:
        if buf:
            self.seen += len(buf)
            if self.limit and self.seen > self.limit:
                raise _too_big(self.limit)
            data = bytes(buf)
            buf.clear()
            return Data(data)
        return _END if eof else NeedData


class ChunkedDecoder:
    """chunked-body = *chunk last-chunk trailer-section CRLF (RFC 9112 §7.1)."""

    __slots__ = ("limit", "seen", "remaining", "state", "scan", "max_trailer_size", "max_trailers")

    _SIZE, _DATA, _CRLF, _TRAILERS = range(4)

    def __init__(self, limit: int, max_trailer_size: int, max_trailers: int) -> None:
        self.limit = limit
        self.seen = 0
        self.remaining = 0
        self.state = self._SIZE
        self.scan = 0  # trailer search resumes here: linear time on a slow drip
        self.max_trailer_size = max_trailer_size
        self.max_trailers = max_trailers

    def next_event(self, buf: bytearray, eof: bool) -> Data | EndOfMessage | type[NeedData]:
        while True:
            state = self.state
            if state == self._DATA:
                if not buf:
                    break
                n = self.remaining
                if len(buf) <= n:
                    data = bytes(buf)
                    buf.clear()
                else:
                    data = bytes(buf[:n])
                    del buf[:n]
                self.remaining -= len(data)
                if not self.remaining:
                    self.state = self._CRLF
                return Data(data)
            if state == self._SIZE:
                # Up to the first LF, which must end a CRLF: waiting for a CRLF
                # that a bare-LF sender never writes would hold both sides.
                end = buf.find(b"\n")
                # The limit holds however the bytes arrived (with or without
                # the CRLF in the same read).
                # (a CR that ends the bytes so far is the CRLF's, not the line's)
                if (end - 1 if end >= 0 else len(buf) - buf.endswith(b"\r")) > _MAX_CHUNK_LINE:
                    raise ProtocolError("chunk-size line too long")
                if end < 0:
                    break
                if end == 0 or buf[end - 1] != 13:
                    raise ProtocolError("bare LF ending a chunk-size line")
                self._chunk_size(bytes(buf[: end - 1]))
                del buf[: end + 1]
            elif state == self._CRLF:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    self.state = self._SIZE
                elif buf[:1] not in (b"", b"\r") or len(buf) >= 2:
                    raise ProtocolError("chunk data not followed by CRLF")
                else:
                    break
            else:
                return self._trailers(buf, eof)
        if eof:
            raise ProtocolError("connection closed inside a chunked body")
        return NeedData

    def _chunk_size(self, line: bytes) -> None:
        size, semi, ext = line.partition(b";")
        if len(size) > 16 or not size.translate(HEXDIGITS_CLASS).isalpha():
            raise ProtocolError(f"invalid chunk size {line[:20]!r}")
        if semi and not _CHUNK_EXT.fullmatch(line, len(size)):
            raise ProtocolError("invalid chunk extension")
        n = int(size, 16)
        if n == 0:
            self.state = self._TRAILERS
            return
        self.seen += n
        if self.limit and self.seen > self.limit:
            raise _too_big(self.limit)
        self.remaining = n
        self.state = self._DATA

    def _trailers(self, buf: bytearray, eof: bool) -> EndOfMessage | type[NeedData]:
        if buf[:2] == b"\r\n":
            del buf[:2]
            return _END
        scan = self.scan
        end = buf.find(b"\r\n\r\n", scan)
        # The order of verdicts does not depend on how the section arrived: a
        # bare LF within the size limit, then the limit, then the rest.
        limit = self.max_trailer_size
        # Every LF must end a CRLF: one that does not would leave us waiting
        # for a CRLFCRLF that never comes (an empty line as a bare LF, too).
        stop = limit if end < 0 else min(end + 4, limit)
        lf = buf.find(b"\n", scan, stop)
        while lf >= 0:
            if lf == 0 or buf[lf - 1] != 13:
                raise ProtocolError("bare LF line ending in trailer section")
            lf = buf.find(b"\n", lf + 1, stop)
        if end < 0:
            self.scan = max(0, len(buf) - 3)
            if len(buf) > limit:
                raise ProtocolError("trailer section too large", 431, ERR_TOO_BIG)
            if eof:
                raise ProtocolError("connection closed inside the trailer section")
            return NeedData
        if end + 4 > limit:
            # The same limit whether the section came in one read or several.
            raise ProtocolError("trailer section too large", 431, ERR_TOO_BIG)
        section = bytes(buf[:end])
        del buf[: end + 4]
        trailers, framing = parse_field_section(section, 0, self.max_trailers, _NOT_IN_TRAILERS)
        if framing:
            # RFC 9110 §6.5.1: framing fields have no business in trailers, and
            # other parsers (h11) read some of their values differently.
            raise ProtocolError("framing field in the trailer section")
        return EndOfMessage(trailers)
