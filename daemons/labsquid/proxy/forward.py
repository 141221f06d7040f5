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
  ``server_persistent_connections off``; to the client it says what we will do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from labsquid.http import HOP_BY_HOP, KEEP_ALIVE_ONLY, Headers, Request, Response

UPSTREAM_VERSION = b"HTTP/1.1"


@dataclass(frozen=True)
class ForwardPolicy:
    hostname: str
    version: str | None  # None: suppressed
    via: bool
    forwarded_for: str
    server_persistent: bool

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
    # We speak HTTP/1.1 whatever the origin spoke (RFC 9110 §2.5).
    lines = [b"HTTP/1.1 %d %s" % (resp.status, resp.reason or b"")]
    # No length on a 1xx or a 204 (RFC 9110 §8.6): a client that believed one
    # would take the next response's head for this one's body.
    no_length = framing is not None or resp.status < 200 or resp.status == 204
    for lower, name, value in items:
        if lower in drop or (lower == b"content-length" and no_length):
            continue
        lines.append(name + b": " + value)
    if isinstance(framing, int):
        lines.append(b"Content-Length: %d" % framing)
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    if policy.via:
        lines.append(b"Via: " + policy.via_for(resp.http_version))
    if resp.status >= 200:
        lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def serialize(start_line: bytes, headers: Headers) -> bytes:
    """Head bytes from trusted parts (parsed and validated, or our own)."""
    parts = headers.field_lines()
    parts.insert(0, start_line)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)

