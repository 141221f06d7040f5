"""Replies the proxy makes itself: error pages, manager pages, TRACE/OPTIONS.

Mixed into ``Transaction``: each reply goes through the same path as a
relayed response (``_to_client``), is logged once by ``finish``, and ends
the transaction.  Error replies close the client connection afterwards, as
squid does for most of them.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from labsquid.errorpages import render_error
from labsquid.http import Headers, ProtocolError
from labsquid.proxy import forward, mgr

MGR_PREFIX = "/squid-internal-mgr/"
MGR_PREFIX_BYTES = MGR_PREFIX.encode()


class LocalReplies:
    """The reply-making half of ``Transaction`` (it provides the state used here)."""

    def max_forwards_reached(self) -> bool:
        req = self.req
        assert req is not None
        if req.method not in (b"TRACE", b"OPTIONS"):
            return False
        value = req.headers.first(b"max-forwards")
        if value is None:
            return False
        if forward.parse_max_forwards(value) != 0:
            return False
        if req.method == b"TRACE":
            body = forward.serialize(b"%s %s HTTP/%s" % (req.method, req.target,
                                                          req.http_version), req.headers)
            self.reply_local(200, b"OK", body, b"message/http")
        else:
            self.reply_local(200, b"OK", b"", None,
                             extra=[(b"Allow", b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE")])
        return True

    def reply_error(self, code: str, status: int, detail: str = "", errno: int = 0) -> None:
        if self.finished:
            return
        self.error_code = code
        self._drop_upstream()
        status, headers, body = render_error(
            code, status=status, method=self.method, url=self.url,
            client_addr=self.client.peer_ip, hostname=self.ctx.hostname, now=time.time(),
            error_detail=detail, errno=errno, cache_admin=self.ctx.config.cache_mgr,
            version_string=self.ctx.version)
        self.status = status
        self.mime = "text/html"
        if self.log_tag == "TCP_MISS" and self.hierarchy == "HIER_NONE":
            self.log_tag = "TCP_MISS" if self.req is not None and self.host else "NONE_NONE"
        start = b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error"))
        self._to_client(forward.serialize(start, Headers(headers)) + body)
        self.wants_body = False
        self.finish(False)

    def reply_protocol_error(self, exc: ProtocolError) -> None:
        self.log_tag = "NONE_NONE"
        self.reply_error(exc.error_code, exc.status, detail=exc.reason)

    def reply_timeout(self) -> None:
        self.log_tag = "NONE_NONE"
        self.reply_error("ERR_REQUEST_START_TIMEOUT", 408, detail="request_timeout")

    def reply_local(self, status: int, reason: bytes, body: bytes, ctype: bytes | None,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = Headers(extra or [])
        if ctype:
            headers.add(b"Content-Type", ctype)
        headers.add(b"Content-Length", str(len(body)).encode())
        headers.add(b"Date", _http_date())
        headers.add(b"Connection", b"keep-alive" if self.client_keep_alive else b"close")
        self.status = status
        self.mime = ctype.decode() if ctype else None
        self.log_tag = "TCP_MISS"
        self._to_client(forward.serialize(b"HTTP/1.1 %d %s" % (status, reason), headers) + body)
        self.finish(self.client_keep_alive and self.body_done)

    def reply_manager(self) -> None:
        action = self.path.decode("latin-1")[len(MGR_PREFIX):].split("?")[0] or "menu"
        page = mgr.render(action, self.ctx)
        if page is None:
            self.reply_error("ERR_INVALID_URL", 404,
                             detail=f"unknown cache manager action {action}")
            return
        self.reply_local(200, b"OK", page.encode(), b"text/plain")


def _http_date() -> bytes:
    return formatdate(usegmt=True).encode()


_REASONS = {400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
            408: b"Request Timeout", 413: b"Payload Too Large", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large",
            501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
            504: b"Gateway Timeout", 505: b"HTTP Version Not Supported"}

