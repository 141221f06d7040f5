"""A transaction's access-log lines, where they are more than the usual one.

``Transaction._log`` writes the usual line itself: one file, squid's native
format from the transaction's fields.  Here: the record a custom
``logformat`` renders from, and the lines of a configuration whose
``access_log`` acls choose the files (``acl.LogTargets``).  Both are bound
into ``Transaction`` as methods.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from labsquid.accesslog import AccessRecord
from labsquid.proxy.failures import ENDED_BEFORE_HEADERS

if TYPE_CHECKING:
    from labsquid.http import Request
    from labsquid.proxy.transaction import Transaction


def log_to_chosen(txn: Transaction, service_us: int, counted: bool) -> None:
    """Count the transaction once (if ``counted``), and log it to each file
    its acls choose."""
    ctx = txn.ctx
    ctx.log(None, service_us, txn.status, counted)
    duration_ms = service_us // 1000
    access = txn.access_context(_known_addresses(txn))
    # That URL with no status is a connection that sent no request; a
    # request line naming it as its target was refused with a 400.
    access.has_request = txn.status != 0 or txn.url != ENDED_BEFORE_HEADERS
    access.has_response = txn.status != 0
    access.status = txn.status
    for index in ctx.log_targets.choose(access):
        ctx.log_line(txn._line(ctx.log_formats[index], duration_ms), index)


def _known_addresses(txn: Transaction) -> tuple:
    """What a dst acl sees in the log's check, which cannot wait for DNS: the
    addresses known without asking (``txn.addresses`` is used up by the
    connection attempts), and the one connected to.  None known is no
    address at all, as in squid: ``dst`` does not match, ``!dst`` does."""
    assert txn.ctx.resolver is not None
    known = (txn.ctx.resolver.cached(txn.host) or []) if txn.host else []
    if txn.peer and txn.peer not in known:
        known.append(txn.peer)
    addresses = []
    for text in known:
        try:
            addresses.append(ipaddress.ip_address(text))
        except ValueError:
            pass
    return tuple(addresses)


def record(txn: Transaction, duration_ms: int) -> AccessRecord:
    return AccessRecord(
        start_time=txn.started, duration_ms=duration_ms,
        client_addr=txn.client.peer_ip, client_port=txn.client.peer_port,
        local_addr=txn.client.local_ip, local_port=txn.client.local_port,
        log_tag=txn.log_tag, http_status=txn.status, reply_size=txn.reply_size,
        request_size=0, method=txn.method, url=txn.url, user=None,
        hierarchy=txn.hierarchy, peer_addr=txn.peer if txn.hierarchy != "HIER_NONE"
        else None, mime_type=txn.mime, error_code=txn.error_code,
        referer=_header(txn.req, b"referer") if txn.ctx.log_headers else None,
        user_agent=_header(txn.req, b"user-agent") if txn.ctx.log_headers else None,
        http_version=txn.req.http_version.decode() if txn.req else "0.0")


def _header(req: Request | None, name: bytes) -> str | None:
    if req is None:
        return None
    value = req.headers.get(name)
    # The encoders print a value's UTF-8 bytes (accesslog._escape), so text
    # that came as UTF-8 is logged as the bytes received; other bytes are
    # not text, and print as U+FFFD's.
    return value.decode("utf-8", "replace") if value is not None else None
