"""Events: what the readers produce and what the writers consume.

A message is always reported as one head event (`Request` or `Response`), zero
or more `Data` events, then one `EndOfMessage`. A `ResponseReader` may report
several 1xx `Response` heads before the final one. `NeedData` and `Paused` are
sentinels (classes, compared with ``is``), never instances, the way h11 does it.

`http_version` is the bare version number (``b"1.1"``), as in h11, so events
compare equal to h11's in the differential tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._headers import Headers

if TYPE_CHECKING:
    from ._target import Target

# Names of the squid error pages (errors/templates/ERR_*) the proxy should
# answer with when a reader raises ProtocolError.
ERR_PROTOCOL_UNKNOWN = "ERR_PROTOCOL_UNKNOWN"  # the bytes are not HTTP at all
ERR_INVALID_REQ = "ERR_INVALID_REQ"  # HTTP, but malformed
ERR_INVALID_URL = "ERR_INVALID_URL"  # the request-target is unusable
ERR_UNSUP_REQ = "ERR_UNSUP_REQ"  # valid but unsupported (transfer coding, scheme)
ERR_TOO_BIG = "ERR_TOO_BIG"  # head or body limit exceeded
ERR_UNSUP_HTTPVERSION = "ERR_UNSUP_HTTPVERSION"  # well-formed version we do not speak
ERR_INVALID_RESP = "ERR_INVALID_RESP"  # an origin's response could not be parsed


class ProtocolError(Exception):
    """The peer sent something we refuse to interpret.

    `status` is the HTTP status to answer with and `error_code` the squid error
    page. Errors raised by a `ResponseReader` carry 502 (the origin is at fault,
    the client gets a Bad Gateway) and ERR_INVALID_RESP or ERR_TOO_BIG.
    """

    def __init__(self, reason: str, status: int = 400, error_code: str = ERR_INVALID_REQ):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.error_code = error_code
        # A refused request head: (method, target) for squid's access.log line
        # (the head is not a request yet).  The target is None when the request
        # line did not parse, and the method empty when it does not start with one.
        self.request_line: tuple[bytes, bytes | None] | None = None

    def __repr__(self) -> str:
        return f"ProtocolError({self.reason!r}, status={self.status}, {self.error_code})"


class LocalProtocolError(Exception):
    """Our own side asked a writer to emit something that is not valid HTTP/1.1."""


class _Sentinel(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NeedData(metaclass=_Sentinel):
    """`next_event()` needs more bytes (`feed()`) or an EOF (`feed_eof()`)."""


class Paused(metaclass=_Sentinel):
    """A message ended; call `start_next_cycle()` before the next one is parsed.

    Pausing rather than rolling on makes the caller decide between keep-alive,
    closing, and handing the leftover bytes to a tunnel (CONNECT, 101).
    """


# The four message events write their own __init__ (init=False): these are
# made for every message, and in the compiled build a hand-written __init__
# is compiled with the module, where the one dataclass generates would run in
# the interpreter.  A ``headers`` of None means a fresh empty ``Headers``.


@dataclass(slots=True, init=False)
class Request:
    """A request head.  The reader also reports what it had to work out anyway
    to frame the message, so the proxy need not parse it twice: ``framing``
    (body length, 0 for none, or CHUNKED), ``parsed_target`` (the validated
    request-target), ``keep_alive`` (what the client offers) and
    ``connection`` (the Connection values, which name more hop-by-hop fields).  They are None
    on a ``Request`` built by hand, and never part of equality."""

    method: bytes
    target: bytes
    http_version: bytes = b"1.1"
    headers: Headers = field(default_factory=Headers)
    framing: int | str | None = field(default=None, compare=False, repr=False)
    parsed_target: Target | None = field(default=None, compare=False, repr=False)
    keep_alive: bool | None = field(default=None, compare=False, repr=False)
    # The Connection field values, () when there are none.
    connection: list[bytes] | tuple[()] | None = field(default=None, compare=False, repr=False)

    def __init__(self, method: bytes, target: bytes, http_version: bytes = b"1.1",
                 headers: Headers | None = None, framing: int | str | None = None,
                 parsed_target: Target | None = None, keep_alive: bool | None = None,
                 connection: list[bytes] | tuple[()] | None = None) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = Headers() if headers is None else headers
        self.framing = framing
        self.parsed_target = parsed_target
        self.keep_alive = keep_alive
        self.connection = connection


@dataclass(slots=True, init=False)
class Response:
    """A final response (status >= 200) or an informational 1xx one."""

    status: int
    reason: bytes = b""
    http_version: bytes = b"1.1"
    headers: Headers = field(default_factory=Headers)
    # Set by the reader, like Request's: TUNNEL for 101 and CONNECT 2xx.
    framing: int | str | None = field(default=None, compare=False, repr=False)
    keep_alive: bool | None = field(default=None, compare=False, repr=False)
    connection: list[bytes] | tuple[()] | None = field(default=None, compare=False, repr=False)

    def __init__(self, status: int, reason: bytes = b"", http_version: bytes = b"1.1",
                 headers: Headers | None = None, framing: int | str | None = None,
                 keep_alive: bool | None = None,
                 connection: list[bytes] | tuple[()] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = Headers() if headers is None else headers
        self.framing = framing
        self.keep_alive = keep_alive
        self.connection = connection


@dataclass(slots=True, init=False)
class Data:
    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True, init=False)
class EndOfMessage:
    trailers: Headers = field(default_factory=Headers)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers = Headers() if trailers is None else trailers


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed cleanly between messages."""
