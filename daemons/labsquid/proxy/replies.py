"""Replies the proxy makes itself: error pages, manager pages, TRACE/OPTIONS.

Each function takes the ``Transaction`` it answers and is bound into that
class as a method (``Transaction.reply_error`` and so on): an extension type
has at most one base class, so this half of it is not a mixin.  Each reply
goes through the same path as a relayed response (``_to_client``), is logged
once by ``finish``, and ends the transaction.  Like squid (5.7, checked
here), a reply to a request that was understood keeps the client connection
when the client asked to and nothing of the request is left unread: a
denial, the proxy's own pages, and the errors that are the origin's side of
the exchange (it could not be resolved, reached, or read).  A request the
proxy could not make sense of closes it.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import structlog

from labsquid.errorpages import cache_fields, render_error
from labsquid.http import ERR_TOO_BIG, Headers, ProtocolError
from labsquid.proxy import forward, mgr

if TYPE_CHECKING:
    from labsquid.proxy.transaction import Transaction

log = structlog.get_logger()

MGR_PREFIX = "/squid-internal-mgr/"
MGR_PREFIX_BYTES = MGR_PREFIX.encode()


def max_forwards_reached(txn: Transaction) -> bool:
    req = txn.req
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
        reply_local(txn, 200, b"OK", body, b"message/http")
    else:
        reply_local(txn, 200, b"OK", b"", None,
                    extra=[(b"Allow", b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE")])
    return True


def _body_for(txn: Transaction, body: bytes) -> bytes:
    """A reply to HEAD has its Content-Length but no body: bytes after it
    would be read as the next response on a kept connection."""
    return b"" if txn.method == "HEAD" else body


def _reusable(txn: Transaction) -> bool:
    """The connection may serve another request after this reply of ours.
    Never after a CONNECT: what follows it may be tunnel bytes the client
    sent ahead (a TLS hello), not a request."""
    return (txn.client_keep_alive and (txn.body_done or txn.body_framing == 0)
            and txn.method != "CONNECT")


# Errors about the way to the origin, not about the request: the client's
# connection is as good as before.
UPSTREAM_ERRORS = frozenset({"ERR_DNS_FAIL", "ERR_CONNECT_FAIL", "ERR_READ_TIMEOUT",
                             "ERR_READ_ERROR", "ERR_ZERO_SIZE_OBJECT", "ERR_INVALID_RESP"})


def reply_error(txn: Transaction, code: str, status: int, detail: str = "",
                errno: int = 0, keep: bool = False, challenge: str | None = None,
                looked_up: bool = False) -> None:
    """``keep``: the request was understood and is refused as a whole (a
    denial, an unknown manager page), so the connection may be reused; so
    it may after any of ``UPSTREAM_ERRORS``.  ``challenge``: the 401's
    ``WWW-Authenticate``.  ``looked_up``: ``X-Cache-Lookup`` says MISS, as
    after any of ``UPSTREAM_ERRORS`` and on the manager's own refusals."""
    if txn.finished:
        return
    keep = (keep or code in UPSTREAM_ERRORS) and _reusable(txn)
    txn.error_code = code
    txn._drop_upstream()
    status, headers, body = render_error(
        code, status=status, method=txn.method, url=txn.url,
        client_addr=txn.client.peer_ip, hostname=txn.ctx.hostname, now=time.time(),
        error_detail=detail, errno=errno, cache_admin=txn.ctx.config.cache_mgr,
        version_string=txn.ctx.version, http_port=txn.ctx.policy.http_port, keep_alive=keep,
        looked_up=looked_up or code in UPSTREAM_ERRORS, challenge=challenge)
    txn.status = status
    txn.mime = "text/html"
    # squid 5.7 logs NONE_NONE for a request that never had a host to go to,
    # and for a CONNECT whose tunnel did not open (no address, refused).
    if txn.log_tag == "TCP_MISS" and (
            txn.method == "CONNECT"
            or (txn.hierarchy == "HIER_NONE" and not (txn.req is not None and txn.host))):
        txn.log_tag = "NONE_NONE"
    start = b"HTTP/1.1 %d %s" % (status, forward.reason_phrase(status))
    txn._to_client(forward.serialize(start, Headers(headers)) + _body_for(txn, body))
    txn.wants_body = False
    txn.finish(keep)


# The userinfo of an absolute URL, which no log line shows (a password).
_USERINFO = re.compile(rb"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def reply_protocol_error(txn: Transaction, exc: ProtocolError) -> None:
    """A head refused before it became a request.  Its log line says what
    squid's does: the method the head starts with (``hello`` for telnet's),
    the target when the request line parsed, else ``error:invalid-request``,
    and ``error:request-too-large`` for a head over the limit."""
    txn.log_tag = "NONE_NONE"
    if exc.request_line is not None:
        method, target = exc.request_line
        if method:
            txn.method = method.decode("latin-1")
        if target is not None:
            txn.url = _USERINFO.sub(rb"\1", target).decode("latin-1")
    if exc.error_code == ERR_TOO_BIG:
        txn.url = "error:request-too-large"
    reply_error(txn, exc.error_code, exc.status, detail=exc.reason)


def reply_timeout(txn: Transaction) -> None:
    txn.log_tag = "NONE_NONE"
    reply_error(txn, "ERR_REQUEST_START_TIMEOUT", 408, detail="request_timeout")


def reply_local(txn: Transaction, status: int, reason: bytes, body: bytes, ctype: bytes | None,
                extra: list[tuple[bytes, bytes]] | None = None, via: bool = False,
                close_delimited: bool = False) -> None:
    """``close_delimited``: no Content-Length, the close ends the body."""
    headers = Headers()
    if ctype:
        headers.add(b"Content-Type", ctype)
    if not close_delimited:
        headers.add(b"Content-Length", str(len(body)).encode())
    headers.add(b"Date", forward.http_date())
    for name, value in extra or ():
        headers.add(name, value)
    policy = txn.ctx.policy
    if via and policy.via:
        headers.add(b"Via", policy.via_for(b"1.1"))
    keep = _reusable(txn) and not close_delimited
    headers.add(b"Connection", b"keep-alive" if keep else b"close")
    txn.status = status
    # Logged without parameters, as squid logs its own pages' type.
    txn.mime = ctype.decode().partition(";")[0] if ctype else None
    txn.log_tag = "TCP_MISS"
    txn._to_client(forward.serialize(b"HTTP/1.1 %d %s" % (status, reason), headers)
                   + _body_for(txn, body))
    txn.wants_body = False
    txn.finish(keep)


def reply_purge(txn: Transaction) -> None:
    """PURGE, squid's method for dropping an object from its cache, which
    squid answers itself and never forwards (an origin such as Varnish could
    act on it).  As squid 5.7 answers it once http_access allowed it: a 403
    when no ``method`` acl names PURGE, else "nothing was purged" (404 with
    no body), since labsquid caches nothing."""
    if not txn.ctx.purge_enabled:
        txn.log_tag = "TCP_DENIED"
        reply_error(txn, "ERR_ACCESS_DENIED", 403, keep=True)
        return
    reply_local(txn, 404, b"Not Found", b"", None, via=True,
                extra=cache_fields(txn.ctx.hostname, txn.ctx.policy.http_port, "NONE"))


def manager_request(path: str, scheme: str) -> tuple[str, str | None]:
    """The action a manager URL asks for and the password it carries:
    ``/squid-internal-mgr/ACTION`` or ``cache_object://host/ACTION``, either
    followed by squid's ``@password`` and a ``?query``, neither of which
    names the page; no action means ``menu``.  The password is None when
    the URL has no ``@``."""
    name = path[1:] if scheme == "cache_object" else path[len(MGR_PREFIX):]
    action, at, password = name.partition("?")[0].partition("@")
    return action or "menu", password if at else None


def reply_manager(txn: Transaction) -> None:
    action, url_password = manager_request(txn.path.decode("latin-1"), txn.scheme)
    entries = txn.ctx.config.cachemgr_passwd
    protection = mgr.protection(action, entries) if action in mgr.ACTIONS else None
    # A disabled action is no page at all, as in squid 5.7.
    if protection is None or protection == "disabled":
        reply_error(txn, "ERR_INVALID_URL", 404,
                    detail=f"unknown cache manager action {action}", keep=True, looked_up=True)
        return
    if protection == "protected":
        offered = mgr.offered_password(txn.req.headers if txn.req else None, url_password)
        if offered != mgr.password_for(action, entries):
            # squid's cache.log line, and its answer: a 401 naming the action as the realm.
            log.warning("cache_manager_password_needed" if offered is None
                        else "cache_manager_password_incorrect",
                        action=action, client=txn.client.peer_ip)
            reply_error(txn, "ERR_CACHE_MGR_ACCESS_DENIED", 401, keep=True,
                        challenge=f'Basic realm="{action}"', looked_up=True)
            return
    page = mgr.render(action, txn.ctx)
    assert page is not None
    # The fields squid 5.7 sends with a manager page: a page of now, as
    # fresh as its Date and already stale.
    ctx, now = txn.ctx, forward.http_date()
    fields = [(b"Server", (ctx.version or "labsquid").encode()), (b"Mime-Version", b"1.0"),
              (b"Expires", now), (b"Last-Modified", now),
              *cache_fields(ctx.hostname, ctx.policy.http_port, "MISS")]
    # To HTTP/1.0, squid's own clients, the page ends with the connection and
    # has no length, as squid sends it: cachemgr.cgi passes the fields of our
    # head on with its own HTML body, and a length would cut that short.
    old_client = txn.req is not None and txn.req.http_version == b"1.0"
    reply_local(txn, 200, b"OK", page.encode(), b"text/plain;charset=utf-8", extra=fields,
                via=True, close_delimited=old_client)
