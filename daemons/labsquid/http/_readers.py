"""`RequestReader` and `ResponseReader`: bytes in, events out.

Theory of operation
-------------------
A reader owns one bytearray. `feed()` appends, `next_event()` consumes from
the front (CPython makes ``del buf[:n]`` on a bytearray cheap) and returns
one event, or `NeedData` when the buffer holds no complete one yet.

Each message goes HEAD -> BODY -> DONE. In HEAD the buffer is searched for
CRLFCRLF, resuming where the last search stopped so a head dripping in byte
by byte costs linear, not quadratic, time; the head is then parsed in one
piece by `_head`, and `_framing` picks the body decoder. DONE answers
`Paused` until `start_next_cycle()`: the caller decides keep-alive versus
close, and after CONNECT or 101 takes the leftover bytes with
`take_trailing_data()` for the tunnel instead. Bytes of a pipelined next
message simply stay in the buffer.

While a head is incomplete, cheap checks run on what is there so that garbage
(a TLS handshake, telnet, bare-LF heads) fails at once instead of after
`max_header_size` bytes. After a ProtocolError the reader is dead: every later
call raises the same error.
"""

from __future__ import annotations

from ._events import (
    ERR_INVALID_RESP,
    ERR_TOO_BIG,
    ConnectionClosed,
    Data,
    EndOfMessage,
    LocalProtocolError,
    NeedData,
    Paused,
    ProtocolError,
    Request,
    Response,
)
from ._framing import (
    CHUNKED,
    FRAMING_FIELDS,
    NO_BODY,
    TUNNEL,
    UNTIL_CLOSE,
    ChunkedDecoder,
    ContentLengthDecoder,
    UntilCloseDecoder,
    offers_keep_alive,
    request_framing,
    response_framing,
)
from ._head import (
    MAX_METHOD,
    check_request_prefix,
    check_response_prefix,
    logged_method,
    parse_field_section,
    parse_request_line,
    parse_status_line,
)
from ._headers import Headers
from ._target import ORIGIN, parse_target, validate_host_header

Event = Request | Response | Data | EndOfMessage | ConnectionClosed

_HEAD, _BODY, _DONE, _CLOSED, _ERROR = range(5)


class _Reader:
    def __init__(
        self,
        *,
        max_header_size: int = 65536,
        max_body_size: int = 0,
        max_headers: int = 100,
    ) -> None:
        self.max_header_size = max_header_size  # whole head: start line + fields
        self.max_body_size = max_body_size  # 0 = unlimited
        self.max_headers = max_headers
        self._buf = bytearray()
        self._eof = False
        self._state = _HEAD
        self._decoder: ContentLengthDecoder | ChunkedDecoder | UntilCloseDecoder | None = None
        self._scan = 0  # where the next CRLFCRLF search starts
        self._start: tuple | None = None  # the pending head's start line, once parsed
        self._head_line: tuple | None = None  # the same, until its head is an event
        self._error: ProtocolError | None = None

    # -- input ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise LocalProtocolError("feed() after feed_eof()")
        self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def has_trailing_data(self) -> bool:
        """Whether bytes were received that no event has consumed yet."""
        return bool(self._buf)

    @property
    def trailing_data(self) -> bytes:
        """Bytes received but not yet consumed by an event."""
        return bytes(self._buf)

    def take_trailing_data(self) -> bytes:
        """Remove and return the buffered bytes (e.g. to start a tunnel)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def start_next_cycle(self) -> None:
        if self._state != _DONE:
            raise LocalProtocolError("start_next_cycle() before EndOfMessage")
        self._state = _HEAD
        self._decoder = None

    # -- events --------------------------------------------------------------------

    def next_event(self) -> Event | type[NeedData] | type[Paused]:
        state = self._state
        try:
            if state == _BODY:
                event = self._decoder.next_event(self._buf, self._eof)
                if type(event) is EndOfMessage:
                    self._state = _DONE
                return event
            if state == _HEAD:
                return self._next_head()
            if state == _DONE:
                return Paused
            if state == _CLOSED:
                return ConnectionClosed()
            raise self._error
        except ProtocolError as exc:
            exc = self._wrap(exc)
            self._state = _ERROR
            self._error = exc
            raise exc from None

    def _wrap(self, exc: ProtocolError) -> ProtocolError:
        return exc

    def _next_head(self) -> Event | type[NeedData]:
        raise NotImplementedError

    def _extract_head(self) -> bytes | None:
        """Cut the next head (without its CRLFCRLF) out of the buffer."""
        buf = self._buf
        scan = self._scan
        end = buf.find(b"\r\n\r\n", scan)
        if end < 0:
            self._scan = max(0, len(buf) - 3)
            self._check_partial_head(scan)
            return None
        # The same verdicts, in the same order, as _check_partial_head gives
        # when the head arrives in pieces: a refusal must not depend on how
        # the bytes were segmented (the fuzzers check exactly that).
        eol = buf.find(b"\r\n")
        if self._start is None:
            self._check_start_line(eol)
        # Only bytes within the size limit can decide against it, as when the
        # head comes in pieces and the limit is hit first.
        if buf.find(b"\n\n", eol, min(end, self.max_header_size)) >= 0:
            raise ProtocolError("bare LF line ending in message head")
        if end + 4 > self.max_header_size:
            self._head_too_big(eol)
        head = bytes(buf[:end])
        del buf[: end + 4]
        self._scan = 0
        return head

    def _check_partial_head(self, scan: int) -> None:
        """Early verdicts on an incomplete head.

        Only bytes from `scan` on are new to these searches (a CRLF before it
        would already have got the start line checked), so a head that drips
        in byte by byte still costs linear time.
        """
        buf = self._buf
        if self._start is None:
            eol = buf.find(b"\r\n", scan)
            if eol < 0:
                self._check_prefix(bytes(buf[:64]))
                if buf.find(b"\n", scan, self.max_header_size) >= 0:
                    raise ProtocolError("bare LF line ending in message head")
            else:
                self._check_start_line(eol)
        if buf.find(b"\n\n", scan, self.max_header_size) >= 0:
            raise ProtocolError("bare LF line ending in message head")
        if len(buf) > self.max_header_size:
            # The start line's own length decides 414 vs 431, whether or not
            # its CRLF has arrived yet.
            self._head_too_big(buf.find(b"\r\n"))
        if self._eof:
            raise ProtocolError("connection closed inside a message head")

    def _check_start_line(self, eol: int) -> None:
        """Parse the start line, whose CRLF is at `eol`, into ``_start``.

        In the order the partial checks use while it is still incomplete —
        what it starts with, a bare LF, its length — so that a line seen
        whole and one seen in pieces get the same verdict.
        """
        buf = self._buf
        limit = self.max_header_size
        if eol > limit or buf.find(b"\n", 0, eol) >= 0:
            self._check_prefix(bytes(buf[: min(eol, 64)]))
            if buf.find(b"\n", 0, min(eol, limit)) >= 0:
                raise ProtocolError("bare LF line ending in message head")
            self._head_too_big(eol)
        self._start = self._head_line = self._parse_start_line(bytes(buf[:eol]))

    def _head_too_big(self, eol: int) -> None:
        raise NotImplementedError

    # Methods, not staticmethod attributes: the compiled build calls a
    # method through its vtable, where a class attribute is a dict lookup.
    def _check_prefix(self, prefix: bytes) -> None:
        raise NotImplementedError

    def _parse_start_line(self, line: bytes) -> tuple:
        raise NotImplementedError

    def _parse_head(self, head: bytes) -> tuple[tuple, Headers, dict[bytes, list[bytes]]]:
        """(parsed start line, fields, framing fields). The start line was parsed
        first (by _extract_head): its own checks give the more precise error
        for a bad byte in it."""
        start, self._start = self._start, None
        headers, fields = parse_field_section(head, 1, self.max_headers, FRAMING_FIELDS)
        return start, headers, fields

    def _start_body(self, framing: int | str) -> None:
        if framing == 0:
            self._decoder = NO_BODY
        elif framing == CHUNKED:
            self._decoder = ChunkedDecoder(
                self.max_body_size, self.max_header_size, self.max_headers
            )
        elif framing == UNTIL_CLOSE:
            self._decoder = UntilCloseDecoder(self.max_body_size)
        else:
            self._decoder = ContentLengthDecoder(framing)
        self._state = _BODY


class RequestReader(_Reader):
    """Parses the requests a client sends: one per cycle, pipelining allowed."""

    def _check_prefix(self, prefix: bytes) -> None:
        check_request_prefix(prefix)

    def _parse_start_line(self, line: bytes) -> tuple:
        return parse_request_line(line)

    def _head_too_big(self, eol: int) -> None:
        if eol < 0 or eol > self.max_header_size:
            raise ProtocolError("request line too long", 414, ERR_TOO_BIG)
        raise ProtocolError("request header section too large", 431, ERR_TOO_BIG)

    def _wrap(self, exc: ProtocolError) -> ProtocolError:
        # What the refused head's log line names (see ProtocolError.request_line).
        if self._state == _HEAD and exc.request_line is None:
            if self._head_line is not None:
                exc.request_line = self._head_line[:2]
            else:
                exc.request_line = (logged_method(bytes(self._buf[:MAX_METHOD])), None)
        return exc

    def _next_head(self) -> Event | type[NeedData]:
        buf = self._buf
        # RFC 9112 §2.2: ignore empty lines before a request-line (old clients
        # send a CRLF after a POST body).
        if buf[:2] == b"\r\n":
            skip = 2
            while buf.startswith(b"\r\n", skip):
                skip += 2
            del buf[:skip]
        if not buf or buf == b"\r":
            if self._eof:
                self._state = _CLOSED
                if buf:
                    raise ProtocolError("connection closed inside a message head")
                return ConnectionClosed()
            return NeedData
        head = self._extract_head()
        if head is None:
            return NeedData
        (method, target, http_version), headers, fields = self._parse_head(head)
        request = Request(method, target, http_version, headers)
        parsed = request.parsed_target = parse_target(method, target)
        hosts = fields.get(b"host", ())
        if len(hosts) > 1:
            raise ProtocolError("more than one Host header")
        if hosts:
            validate_host_header(hosts[0], required=parsed.form == ORIGIN)
        elif http_version == b"1.1" and parsed.host is None:
            # RFC 9112 §3.2 wants a 400 for any HTTP/1.1 request without Host,
            # but a proxy routes by the target's authority when it has one
            # and writes Host from it (§3.2.2).  squid serves such a request
            # (telnet's "GET http://host/ HTTP/1.1" and a blank line), so do we.
            raise ProtocolError("HTTP/1.1 request without Host header")
        framing = request.framing = request_framing(request, fields)
        connection = request.connection = fields.get(b"connection", ())
        request.keep_alive = offers_keep_alive(connection, http_version)
        if self.max_body_size and type(framing) is int and framing > self.max_body_size:
            raise ProtocolError("request body too large", 413, ERR_TOO_BIG)
        self._start_body(framing)
        self._head_line = None
        return request


class ResponseReader(_Reader):
    """Parses an origin's responses; it must know each request's method."""

    def __init__(self, request_method: bytes = b"GET", **limits: int) -> None:
        super().__init__(**limits)
        self.request_method = request_method

    def start_next_cycle(self, request_method: bytes = b"GET") -> None:  # type: ignore[override]
        super().start_next_cycle()
        self.request_method = request_method

    def _wrap(self, exc: ProtocolError) -> ProtocolError:
        # Whatever the origin got wrong, the client is owed a 502.
        if exc.status == 502:
            return exc
        code = ERR_TOO_BIG if exc.error_code == ERR_TOO_BIG else ERR_INVALID_RESP
        return ProtocolError(exc.reason, 502, code)

    def _check_prefix(self, prefix: bytes) -> None:
        check_response_prefix(prefix)

    def _parse_start_line(self, line: bytes) -> tuple:
        return parse_status_line(line)

    def _head_too_big(self, eol: int) -> None:
        raise ProtocolError("response header section too large", 502, ERR_TOO_BIG)

    def _next_head(self) -> Event | type[NeedData]:
        if not self._buf and self._eof:
            # The origin closed an idle (keep-alive) connection: retriable.
            self._state = _CLOSED
            return ConnectionClosed()
        head = self._extract_head()
        if head is None:
            return NeedData
        (http_version, status, reason), headers, fields = self._parse_head(head)
        response = Response(status, reason, http_version, headers)
        framing = response.framing = response_framing(response, self.request_method, fields)
        connection = response.connection = fields.get(b"connection", ())
        response.keep_alive = offers_keep_alive(connection, http_version)
        if status < 200 and status != 101:
            return response  # informational: the final response follows
        if framing == TUNNEL:
            framing = 0  # the message ends here; the rest is the tunnel's
        elif self.max_body_size and type(framing) is int and framing > self.max_body_size:
            raise ProtocolError("response body too large", 502, ERR_TOO_BIG)
        self._start_body(framing)
        return response
