"""HTTP/1.1 message layer: sans-I/O readers and writers for a forward proxy.

Bytes go in (`RequestReader.feed`, `ResponseReader.feed`), events come out
(`next_event`); events go into `write_head` and the body framers and bytes
come out. Nothing here touches a socket. Module map:

* `_abnf`     — RFC 9110 character classes as translate tables
* `_events`   — Request/Response/Data/EndOfMessage/..., ProtocolError
* `_headers`  — Headers
* `_head`     — start line and field line parsing (strictness rules)
* `_framing`  — body length rules (smuggling defences) and body decoders
* `_readers`  — the reader state machines
* `_target`   — request-target forms and host/port parsing
* `_writers`  — head serialization and body framers
* `_bench`    — ``python -m labsquid.http._bench``: parse speed vs httptools
"""

from ._events import (
    ERR_INVALID_REQ,
    ERR_INVALID_RESP,
    ERR_INVALID_URL,
    ERR_PROTOCOL_UNKNOWN,
    ERR_TOO_BIG,
    ERR_UNSUP_HTTPVERSION,
    ERR_UNSUP_REQ,
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
    KEEP_ALIVE_ONLY,
    TUNNEL,
    UNTIL_CLOSE,
    content_length,
    keep_alive,
    request_framing,
    response_framing,
)
from ._head import KNOWN_METHODS, canonical_method
from ._headers import HOP_BY_HOP, Headers
from ._readers import RequestReader, ResponseReader
from ._target import (
    ABSOLUTE,
    ASTERISK,
    AUTHORITY,
    DEFAULT_PORTS,
    ORIGIN,
    Target,
    classify_target,
    format_authority,
    parse_absolute_uri,
    parse_authority,
    parse_target,
)
from ._writers import (
    BodyWriter,
    ChunkedWriter,
    ContentLengthWriter,
    UntilCloseWriter,
    body_writer,
    write_head,
)

__all__ = [
    "ABSOLUTE",
    "ASTERISK",
    "AUTHORITY",
    "CHUNKED",
    "DEFAULT_PORTS",
    "ERR_INVALID_REQ",
    "ERR_INVALID_RESP",
    "ERR_INVALID_URL",
    "ERR_PROTOCOL_UNKNOWN",
    "ERR_TOO_BIG",
    "ERR_UNSUP_HTTPVERSION",
    "ERR_UNSUP_REQ",
    "HOP_BY_HOP",
    "KNOWN_METHODS",
    "KEEP_ALIVE_ONLY",
    "ORIGIN",
    "TUNNEL",
    "UNTIL_CLOSE",
    "BodyWriter",
    "ChunkedWriter",
    "ConnectionClosed",
    "ContentLengthWriter",
    "Data",
    "EndOfMessage",
    "Headers",
    "LocalProtocolError",
    "NeedData",
    "Paused",
    "ProtocolError",
    "Request",
    "RequestReader",
    "Response",
    "ResponseReader",
    "Target",
    "UntilCloseWriter",
    "body_writer",
    "canonical_method",
    "classify_target",
    "format_authority",
    "content_length",
    "keep_alive",
    "parse_absolute_uri",
    "parse_authority",
    "parse_target",
    "request_framing",
    "response_framing",
    "write_head",
]
