"""How a transaction ends when something on its way fails.

The origin cannot be reached in time or refuses, closes before replying
(a reused connection it had dropped: the request is replayed once, as squid
does), stops answering, or the client goes away or sends a broken body.
Each function takes the ``Transaction`` and is bound into that class as a
method, as ``replies`` are: the ordinary path stays in ``transaction``, and
these run once per failure at most.  Before the response head has left, a
failure is an error page (``replies.reply_error``); after it, the
transaction is logged as aborted and the client connection cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labsquid.http import ProtocolError
from labsquid.proxy.upstream import connect_error_text

if TYPE_CHECKING:
    from labsquid.proxy.transaction import Transaction
    from labsquid.proxy.upstream import Upstream


def connect_timeout(txn: Transaction) -> None:
    if txn.upstream is not None:
        txn.upstream.close()
        txn.upstream = None
    if txn.addresses:
        txn._connect_fresh()
    else:
        txn.hierarchy = "HIER_DIRECT"  # as squid logs it: the origin it tried last
        txn.reply_error("ERR_CONNECT_FAIL", 503, errno=110,
                        detail="(110) Connection timed out")


def upstream_failed(txn: Transaction, up: Upstream | None, err: int) -> None:
    txn._disarm()
    txn.upstream = None
    if txn.addresses:
        txn._connect_fresh()
        return
    txn.hierarchy = "HIER_DIRECT"  # as squid logs it: the origin it tried last
    connect_failed(txn, err)


def connect_failed(txn: Transaction, err: int) -> None:
    """squid's ERR_CONNECT_FAIL page, naming the system error ``err``."""
    txn.reply_error("ERR_CONNECT_FAIL", 503, errno=err, detail=connect_error_text(err))


def closed_before_reply(txn: Transaction) -> None:
    """The origin closed without sending a byte of the response."""
    up = txn.upstream
    if up is not None and can_retry(txn, up):
        txn.retried = True
        up.close()
        txn.upstream = None
        txn.resp_reader = None
        connect_fresh_after_retry(txn)
        return
    txn.reply_error("ERR_ZERO_SIZE_OBJECT", 502, detail="origin closed the connection")


def can_retry(txn: Transaction, up: Upstream) -> bool:
    # A reused connection the origin had closed while idle: safe to replay
    # when the request had no body (squid retries such requests too).
    return up.requests > 1 and not txn.retried and txn.body_framing == 0


def connect_fresh_after_retry(txn: Transaction) -> None:
    if not txn.addresses and txn.peer:
        txn.addresses = [txn.peer]
    txn._connect_fresh()


def read_timeout(txn: Transaction) -> None:
    if txn.finished:
        return
    if not txn.head_sent:
        txn.reply_error("ERR_READ_TIMEOUT", 504, detail="read timeout")
    else:
        txn.abort("read_timeout")
        txn.client.close()


def client_aborted(txn: Transaction) -> None:
    txn.abort("client closed")
    txn.client.close()


# The URL squid logs for a connection that ended without a request head; its
# transaction is the one that does not match ``acl ... has request``.
ENDED_BEFORE_HEADERS = "error:transaction-end-before-headers"


def ended_before_headers(txn: Transaction) -> None:
    """The connection ended inside a request head, or before its first byte:
    nobody to answer, and no request.  squid logs it all the same, as
    ``NONE_NONE/000 0 - error:transaction-end-before-headers``."""
    txn.log_tag = "NONE_NONE"
    txn.method = "-"
    txn.url = ENDED_BEFORE_HEADERS
    txn.finish(False)


def client_protocol_error(txn: Transaction, exc: ProtocolError) -> None:
    """The request body turned out malformed (bad chunking, too big...)."""
    if txn.head_sent:
        txn.abort(exc.reason)
        txn.client.close()
    else:
        # The origin may have the head already; reply_error drops that
        # connection (it saw half a request), the client gets its 400.
        txn.reply_error(exc.error_code, exc.status, detail=exc.reason)


def abort(txn: Transaction, reason: str) -> None:
    if txn.finished:
        return
    if txn.tunnel is not None:
        txn.tunnel.close()
        return
    if txn.status == 0:
        txn.log_tag = txn.log_tag if txn.log_tag != "TCP_MISS" else "TCP_MISS_ABORTED"
    else:
        txn.log_tag += "_ABORTED"
    txn.finished = True
    txn._disarm()
    txn._drop_upstream()
    txn._log()
