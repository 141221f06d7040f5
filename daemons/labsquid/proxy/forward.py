"""What a forward proxy changes in the messages it relays (sans-I/O).

Rules, as squid applies them:

* hop-by-hop fields (RFC 9110 §7.6.1) and every field named in
  ``Connection`` are removed in both directions; framing is redone by us;
* the request goes upstream in origin-form, with ``Host`` set from the
  absolute URI (RFC 9112 §3.2.2: the URI's authority wins);
* ``Via: 1.1 HOSTNAME (labsquid/VERSION)`` is appended both ways (``via``);
* ``X-Forwarded-For`` per ``forwarded_for``: ``on`` appends the client
  address, ``off`` appends ``unknown``, ``transparent`` leaves it,
  ``delete`` removes it, ``truncate`` replaces it with the client address;
* ``Max-Forwards`` is decremented on TRACE and OPTIONS; at 0 the proxy
  answers itself, and a value that is not a number is dropped;
* ``Connection`` to the origin says ``keep-alive`` unless
  ``server_persistent_connections off``; to the client it says what we will do;
* a response's status line carries squid's reason phrase for its code, not
  the origin's (``REASON_PHRASES``, "Unassigned" for a code without one); a
  response without ``Date`` gets one (RFC 9110 §6.6.1: a recipient with a
  clock must add it); every final response gets squid's ``X-Cache: MISS``
  and ``X-Cache-Lookup: MISS`` (labsquid has no cache: every answer is one).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from email.utils import formatdate

from labsquid.errorpages import cache_fields
from labsquid.http import HOP_BY_HOP, KEEP_ALIVE_ONLY, Headers, Request, Response

UPSTREAM_VERSION = b"HTTP/1.1"

# squid 5's phrase for each code it names, as its replies carry them (note
# 505's "not supported"); any other code in 100-599 is "Unassigned".
REASON_PHRASES: dict[int, bytes] = {
    100: b"Continue", 101: b"Switching Protocols", 102: b"Processing", 103: b"Early Hints",
    200: b"OK", 201: b"Created", 202: b"Accepted", 203: b"Non-Authoritative Information",
    204: b"No Content", 205: b"Reset Content", 206: b"Partial Content", 207: b"Multi-Status",
    208: b"Already Reported", 226: b"IM Used", 300: b"Multiple Choices",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other", 304: b"Not Modified",
    305: b"Use Proxy", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 402: b"Payment Required", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 406: b"Not Acceptable",
    407: b"Proxy Authentication Required", 408: b"Request Timeout", 409: b"Conflict",
    410: b"Gone", 411: b"Length Required", 412: b"Precondition Failed", 413: b"Payload Too Large",
    414: b"URI Too Long", 415: b"Unsupported Media Type", 416: b"Requested Range Not Satisfiable",
    417: b"Expectation Failed", 421: b"Misdirected Request", 422: b"Unprocessable Entity",
    423: b"Locked", 424: b"Failed Dependency", 426: b"Upgrade Required",
    428: b"Precondition Required", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 451: b"Unavailable For Legal Reasons",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version not supported",
    506: b"Variant Also Negotiates", 507: b"Insufficient Storage", 508: b"Loop Detected",
    510: b"Not Extended", 511: b"Network Authentication Required",
}


def reason_phrase(status: int) -> bytes:
    return REASON_PHRASES.get(status, b"Unassigned")


_date_cache: list = [0, b""]  # [second, IMF-fixdate of it]


def http_date() -> bytes:
    """Now as an IMF-fixdate (RFC 9110 §5.6.7), formatted once per second."""
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache[0] = second
        _date_cache[1] = formatdate(second, usegmt=True).encode()
    return _date_cache[1]


@dataclass(frozen=True)
class ForwardPolicy:
    hostname: str
    version: str | None  # None: suppressed
    via: bool
    forwarded_for: str
    server_persistent: bool
    http_port: int  # the first one, which squid's X-Cache-Lookup names

    @functools.cached_property
    def cache_headers(self) -> bytes:
        """squid's pair for a response it forwarded after a cache lookup."""
        fields = cache_fields(self.hostname, self.http_port, "MISS")
        return b"\r\n".join(b"%s: %s" % field for field in fields)

    @functools.cached_property
    def via_value(self) -> bytes:
        product = f" ({self.version})" if self.version else ""
        return f"1.1 {self.hostname}{product}".encode()

    def via_for(self, received_version: bytes) -> bytes:
        """Via names the version of the message we received (RFC 9110
        §7.6.3), as squid's does: "1.0 host" for an HTTP/1.0 one."""
        if received_version == b"1.1":
            return self.via_value
        return received_version + self.via_value[3:]


def _dropped(msg: Request | Response) -> frozenset[bytes]:
    """Hop-by-hop fields plus every field named in ``Connection`` (lowercased)."""
    connection = msg.connection
    if connection is None:  # not from a reader: look for it
        connection = msg.headers.get_all(b"connection")
    if not connection or connection == KEEP_ALIVE_ONLY:  # names nothing beyond HOP_BY_HOP
        return HOP_BY_HOP
    tokens = {t.strip().lower() for value in connection for t in value.split(b",")}
    tokens.discard(b"")
    return HOP_BY_HOP | tokens


def request_head(req: Request, authority: bytes, path: bytes, client_ip: str,
                 policy: ForwardPolicy, body: int | str) -> bytes:
    """The head sent upstream; ``body`` is the framing we will use (length or "chunked").

    One pass over the received fields (this runs for every request): dropped,
    replaced in place, or copied as received; our own fields go last.
    """
    items = req.headers.raw_items()
    drop = _dropped(req)
    xff = policy.forwarded_for
    fix_max_forwards = req.method in (b"TRACE", b"OPTIONS")
    lines = [b"%s %s %s" % (req.method, path, UPSTREAM_VERSION)]
    old_xff: list[bytes] = []
    host_written = False
    for lower, name, value in items:
        if lower in drop or lower == b"content-length":
            continue
        if lower == b"host":
            if not host_written:  # the URI's authority wins (RFC 9112 §3.2.2)
                lines.append(b"Host: " + authority)
                host_written = True
        elif lower == b"x-forwarded-for" and xff != "transparent":
            old_xff.append(value)
        elif lower == b"max-forwards" and fix_max_forwards:
            hops = parse_max_forwards(value)
            if hops > 0:  # not a number: dropped (as squid does), never sent on as 0
                lines.append(b"Max-Forwards: %d" % (hops - 1))
        else:
            lines.append(name + b": " + value)
    if not host_written:
        lines.append(b"Host: " + authority)
    if policy.via:
        lines.append(b"Via: " + policy.via_for(req.http_version))
    if xff == "on":
        lines.append(b"X-Forwarded-For: " + b", ".join([*old_xff, client_ip.encode()]))
    elif xff == "off":
        lines.append(b"X-Forwarded-For: " + b", ".join([*old_xff, b"unknown"]))
    elif xff == "truncate":
        lines.append(b"X-Forwarded-For: " + client_ip.encode())
    if body == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    elif isinstance(body, int) and (body > 0 or req.method in (b"POST", b"PUT", b"PATCH")):
        lines.append(b"Content-Length: %d" % body)
    if not policy.server_persistent:
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def parse_max_forwards(value: bytes) -> int:
    try:
        return max(int(value.strip()), 0) if value.strip().isdigit() else -1
    except ValueError:
        return -1


def response_head(resp: Response, policy: ForwardPolicy, framing: str | int | None,
                  keep_alive: bool) -> bytes:
    """The head sent to the client.

    ``framing`` is how we will send the body: an int for Content-Length (kept
    from the origin), ``"chunked"``, ``"close"`` (read-until-close), or None
    for a bodiless reply (HEAD and 304 keep the origin's length fields, 1xx
    and 204 lose them).
    """
    items = resp.headers.raw_items()
    drop = _dropped(resp)
    status = resp.status
    # We speak HTTP/1.1 whatever the origin spoke (RFC 9110 §2.5).
    lines = [b"HTTP/1.1 %d %s" % (status, reason_phrase(status))]
    # No length on a 1xx or a 204 (RFC 9110 §8.6): a client that believed one
    # would take the next response's head for this one's body.
    no_length = framing is not None or status < 200 or status == 204
    dated = False
    for lower, name, value in items:
        if lower in drop or (lower == b"content-length" and no_length):
            continue
        if lower == b"date":
            dated = True
        lines.append(name + b": " + value)
    if isinstance(framing, int):
        lines.append(b"Content-Length: %d" % framing)
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    if status >= 200:
        if not dated:
            lines.append(b"Date: " + http_date())
        lines.append(policy.cache_headers)
    if policy.via:
        lines.append(b"Via: " + policy.via_for(resp.http_version))
    if status >= 200:
        lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def serialize(start_line: bytes, headers: Headers) -> bytes:
    """Head bytes from trusted parts (parsed and validated, or our own)."""
    parts = headers.field_lines()
    parts.insert(0, start_line)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)

