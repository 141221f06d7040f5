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
  answers itself;
* ``Connection`` to the origin says ``keep-alive`` unless
  ``server_persistent_connections off``; to the client it says what we will do.
"""

from __future__ import annotations

from dataclasses import dataclass

from labsquid.http import Headers, Request, Response

UPSTREAM_VERSION = b"HTTP/1.1"


@dataclass(frozen=True)
class ForwardPolicy:
    hostname: str
    version: str | None  # None: suppressed
    via: bool
    forwarded_for: str
    server_persistent: bool

    @property
    def via_value(self) -> bytes:
        product = f" ({self.version})" if self.version else ""
        return f"1.1 {self.hostname}{product}".encode()


def _strip_hop_by_hop(headers: Headers) -> Headers:
    out = headers.copy()
    tokens = [t.lower() for t in out.get_list(b"connection")]
    out.remove_hop_by_hop(tokens)
    return out


def request_head(req: Request, authority: bytes, path: bytes, client_ip: str,
                 policy: ForwardPolicy, body: int | str) -> bytes:
    """The head sent upstream; ``body`` is the framing we will use (length or "chunked")."""
    headers = _strip_hop_by_hop(req.headers)
    headers.remove(b"content-length")
    headers.set(b"Host", authority)
    if policy.via:
        headers.add(b"Via", policy.via_value)
    xff = policy.forwarded_for
    if xff == "on":
        _append_xff(headers, client_ip.encode())
    elif xff == "off":
        _append_xff(headers, b"unknown")
    elif xff == "delete":
        headers.remove(b"x-forwarded-for")
    elif xff == "truncate":
        headers.set(b"X-Forwarded-For", client_ip.encode())
    max_forwards = req.headers.get(b"max-forwards")
    if max_forwards is not None and req.method in (b"TRACE", b"OPTIONS"):
        headers.set(b"Max-Forwards", str(max(parse_max_forwards(max_forwards) - 1, 0)).encode())
    if body == "chunked":
        headers.add(b"Transfer-Encoding", b"chunked")
    elif isinstance(body, int) and (body > 0 or req.method in (b"POST", b"PUT", b"PATCH")):
        headers.add(b"Content-Length", str(body).encode())
    if not policy.server_persistent:
        headers.add(b"Connection", b"close")
    start = b"%s %s %s" % (req.method, path, UPSTREAM_VERSION)
    return serialize(start, headers)


def _append_xff(headers: Headers, value: bytes) -> None:
    old = headers.get_all(b"x-forwarded-for")
    headers.remove(b"x-forwarded-for")
    headers.add(b"X-Forwarded-For", b", ".join([*old, value]) if old else value)


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
    for a bodiless reply (HEAD, 1xx, 204, 304: the origin's length fields are kept).
    """
    headers = _strip_hop_by_hop(resp.headers)
    if framing is not None:
        headers.remove(b"content-length")
    if isinstance(framing, int):
        headers.add(b"Content-Length", str(framing).encode())
    elif framing == "chunked":
        headers.add(b"Transfer-Encoding", b"chunked")
    if policy.via:
        headers.add(b"Via", policy.via_value)
    if resp.status >= 200:
        if keep_alive:
            headers.add(b"Connection", b"keep-alive")
        else:
            headers.add(b"Connection", b"close")
    # We speak HTTP/1.1 whatever the origin spoke (RFC 9110 §2.5).
    return serialize(b"HTTP/1.1 %d %s" % (resp.status, resp.reason or b""), headers)


def serialize(start_line: bytes, headers: Headers) -> bytes:
    """Head bytes from trusted parts (parsed and validated, or our own)."""
    parts = headers.field_lines()
    parts.insert(0, start_line)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)


def trace_reply(req: Request, raw_head: bytes) -> tuple[Headers, bytes]:
    """TRACE with ``Max-Forwards: 0``: echo the request as ``message/http``."""
    return Headers([(b"Content-Type", b"message/http")]), raw_head
