"""One request/response exchange through the proxy.

Theory of operation
-------------------
A ``Transaction`` is made by the client connection for each parsed request
head and walks these steps, each driven by a callback from the loop:

1. *classify* the request-target: absolute ``http://`` URI (forward),
   authority-form (CONNECT), origin-form ``/squid-internal-mgr/…`` or
   ``cache_object://`` (the cache manager); anything else is an error page;
2. *authorize* with ``http_access``; a ``dst`` acl needs the origin's
   addresses, so the check may pause for the resolver and resume;
3. *connect*: an idle persistent connection to the same origin is reused,
   else each resolved address is tried in turn within ``connect_timeout``;
4. *relay*: the request head (rewritten by ``forward``) and the body stream
   up; the response head and body stream down, re-framed for the client;
   each side pauses the other through bounded buffers;
5. *finish*: one access-log line, the upstream connection back to the pool
   when both sides allow, and the client connection told whether it may
   read the next request.

A failure before the response head reaches the client becomes one of
squid's error pages; after that, the client connection is cut, because
HTTP/1.1 has no other way to say a body went wrong.  The failures live in
``failures``, the proxy's own replies in ``replies``, and the access-log
lines other than the usual one in ``logline``; each is bound in as methods.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

import structlog

from labsquid.accesslog import LogFormat, native_line
from labsquid.acl import AccessContext
from labsquid.http import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    NeedData,
    Paused,
    ProtocolError,
    Request,
    Response,
    format_authority,
    keep_alive,
    parse_target,
    request_framing,
    response_framing,
)
from labsquid.http._readers import ResponseReader
from labsquid.proxy import failures, forward, logline, mgr, replies
from labsquid.proxy.replies import MGR_PREFIX_BYTES
from labsquid.proxy.tunnel import start_tunnel
from labsquid.proxy.tunnel import tunnel_closed as _tunnel_closed
from labsquid.proxy.upstream import Upstream

if TYPE_CHECKING:
    from collections.abc import Callable

    from labsquid.proxy.client import ClientConnection
    from labsquid.proxy.tunnel import Tunnel

log = structlog.get_logger()

HIGH_WATER = 256 * 1024


def _client_keep_alive(req: Request) -> bool:
    """Whether the client wants its connection kept.  Old browsers say so to
    proxies in 'Proxy-Connection' instead of 'Connection', and squid honours
    both 'Proxy-Connection: keep-alive' from an HTTP/1.0 client and
    'Proxy-Connection: close' from any."""
    value = req.headers.first(b"proxy-connection")
    if value is None:
        return keep_alive(req)
    value = value.strip().lower()
    if value == b"close":
        return False
    return keep_alive(req) or (value == b"keep-alive" and req.http_version == b"1.0")


class Transaction:
    # An extension type when compiled (transaction.pxd): every attribute is
    # a declared field, set in __init__, and the replies labsquid makes
    # itself are functions of replies.py bound here as methods.
    max_forwards_reached = replies.max_forwards_reached
    reply_error = replies.reply_error
    reply_protocol_error = replies.reply_protocol_error
    reply_timeout = replies.reply_timeout
    reply_local = replies.reply_local
    reply_manager = replies.reply_manager
    reply_purge = replies.reply_purge
    _connect_timeout = failures.connect_timeout
    upstream_failed = failures.upstream_failed
    _closed_before_reply = failures.closed_before_reply
    _read_timeout = failures.read_timeout
    client_aborted = failures.client_aborted
    ended_before_headers = failures.ended_before_headers
    client_protocol_error = failures.client_protocol_error
    abort = failures.abort
    _start_tunnel = start_tunnel
    tunnel_closed = _tunnel_closed
    _log_to_chosen = logline.log_to_chosen
    record = logline.record

    def __init__(self, client: ClientConnection, request: Request | None) -> None:
        self.client = client
        self.ctx = client.ctx
        self.req = request
        self.started = time.time()
        self.method = request.method.decode("latin-1") if request else "NONE"
        self.wants_body = request is not None
        self.pending_body: list[bytes] = []
        self.addresses: list[str] = []
        # Filled in by the steps below, as far as each transaction gets.
        self.url = "error:invalid-request"
        self.scheme = "http"
        self.host = ""
        self.port = 0
        self.path = b"/"
        self.authority: bytes | None = None  # host[:port] as sent upstream in Host
        self.log_tag = "TCP_MISS"
        self.status = 0
        self.hierarchy = "HIER_NONE"
        self.peer: str | None = None
        self.mime: str | None = None
        self.error_code: str | None = None
        self.reply_size = 0
        self.body_done = False
        self.body_framing: int | str = 0
        self.upstream: Upstream | None = None
        self.resp_reader: ResponseReader | None = None
        self.head_sent = False
        self.client_framing: int | str | None = None
        self.client_keep_alive = False
        self.upstream_reusable = False
        self.finished = False
        self.retried = False
        self.ack_pushed = False  # once per response (Upstream.push_ack)
        self.tunnel: Tunnel | None = None

    # -- 1. classify --------------------------------------------------------
    def start(self) -> None:
        req = self.req
        assert req is not None
        cfg = self.ctx.config
        # A draining connection ends with this answer (shutdown_when_idle).
        self.client_keep_alive = (_client_keep_alive(req) and cfg.client_persistent_connections
                                  and not self.client._shutdown)
        framing, target = req.framing, req.parsed_target
        if framing is None or target is None:  # not from a RequestReader
            try:
                framing = request_framing(req)
                target = parse_target(req.method, req.target)
            except ProtocolError as exc:
                self.url = req.target.decode("latin-1")
                self.reply_error(exc.error_code, exc.status, detail=exc.reason)
                return
        self.body_framing = framing
        self.host, self.port, self.path = target.host or "", target.port or 0, target.path
        form = target.form
        self.scheme = target.scheme or ("connect" if form == "authority" else "")
        if form == "absolute":
            # Rebuilt like squid's log URL: no userinfo (no passwords in the
            # log), the host as it was resolved, the default port left out.
            # The same authority is the Host sent upstream (http's default port).
            self.authority = authority = target.authority
            self.url = (f"{target.scheme}://{authority.decode('ascii')}"
                        f"{target.path.decode('latin-1')}")
        elif form == "authority":
            self.url = target.authority.decode("ascii")  # squid logs CONNECT as host:port
        else:
            self.url = req.target.decode("latin-1")
        if form == "origin" or form == "asterisk":
            if self.path.startswith(MGR_PREFIX_BYTES):
                self.host = self.client.local_ip
                self.port = self.client.local_port
                self.url = f"http://{self.ctx.hostname}:{self.port}{self.path.decode('latin-1')}"
            else:
                self.reply_error("ERR_INVALID_URL", 400, detail="origin-form on a proxy port")
                return
        elif self.scheme not in ("http", "connect", "cache_object"):
            self.reply_error("ERR_UNSUP_REQ", 501, detail=f"unsupported scheme {self.scheme}")
            return
        self.authorize(None)

    # -- 2. authorize -------------------------------------------------------
    def access_context(self, dst: tuple | None) -> AccessContext:
        client, method = self.client, self.method
        # The protocol by squid's names, for the ``proto`` acl.
        proto = ("NONE" if method == "CONNECT"
                 else "CACHE_OBJECT" if self.scheme == "cache_object" else "HTTP")
        # Positional: this runs per request, and keywords cost more.
        return AccessContext(client.peer_address, client.local_port, method, proto,
                             self.host, self.port, self.url, self.path.decode("latin-1"), dst,
                             None if self.req is None else self.req.headers,
                             self.ctx.client_connections.get(client.peer_ip, 0),
                             client.port_name)

    def authorize(self, dst: tuple | None) -> None:
        decision = self.ctx.access.check(self.access_context(dst))
        if decision.needs_dst:
            self.resolve(self._authorize_with_addresses)
            return
        if not decision.allowed:
            self.log_tag = "TCP_DENIED"
            self.reply_error("ERR_ACCESS_DENIED", 403, keep=True)
            return
        if self.is_manager():
            self.reply_manager()
            return
        if self.method == "PURGE":  # squid's cache method: never sent on
            self.reply_purge()
            return
        if self.max_forwards_reached():
            return
        self.resolve(self.connect)

    def _authorize_with_addresses(self) -> None:
        self.authorize(tuple(ipaddress.ip_address(a) for a in self.addresses))

    def is_manager(self) -> bool:
        # squid's own scheme names no origin: any host means this proxy, as
        # in squid 5.7.  For the http path, host *and* port must be ours (as
        # squid checks): the same path on an origin, even a local one, is
        # that origin's business.
        if self.scheme == "cache_object":
            return True
        return (self.path.startswith(MGR_PREFIX_BYTES) and self.port == self.client.local_port
                and self.host in mgr.own_names(self.ctx, self.client))

    def resolve(self, then: Callable[[], None]) -> None:
        if self.addresses:
            then()
            return
        assert self.ctx.resolver is not None
        known = self.ctx.resolver.cached(self.host)
        if known and self.body_framing == 0:  # a literal, /etc/hosts or the cache
            self.addresses = known
            then()
        else:
            self._resolve_later(then, known)

    def _resolve_later(self, then: Callable[[], None], known: list[str] | None) -> None:
        if known:
            self.addresses = known
            # Wait one turn so the body bytes already buffered get parsed:
            # a malformed body is refused before anything goes upstream.
            self.ctx.loop.call_soon(lambda: None if self.finished else then())
            return

        def done(addresses: list[str] | None, error: str | None) -> None:
            if self.finished:
                return
            if not addresses:
                self.reply_error("ERR_DNS_FAIL", 503, detail=error or "no addresses")
                return
            self.addresses = addresses
            then()

        self.ctx.resolver.resolve(self.host, done)

    # -- 3. connect ---------------------------------------------------------
    def connect(self) -> None:
        if self.method == "CONNECT":
            self._connect_fresh()
            return
        up = self.ctx.upstreams.take((self.host, self.port))
        if up is not None:
            self._attach(up)
            self.upstream_connected(up)
        else:
            self._connect_fresh()

    def _connect_fresh(self) -> None:
        if not self.addresses:
            return
        address = self.addresses.pop(0)
        self.peer = address
        try:
            up = self.ctx.upstreams.with_room(
                lambda: Upstream(self.ctx.loop, (self.host, self.port), address,
                                 stats=self.ctx.stats))
        except OSError as exc:  # out of descriptors: a failed connect
            self.upstream_failed(None, exc.errno or 0)
            return
        self._attach(up)
        self._arm(self.ctx.config.connect_timeout, self._connect_timeout)
        up.connect(self.port, self)

    def _attach(self, up: Upstream) -> None:
        self.upstream = up
        up.handler = self
        self.peer = up.address

    def upstream_connected(self, up: Upstream) -> None:
        self._disarm()
        self.hierarchy = "HIER_DIRECT"
        if self.method == "CONNECT":
            self._start_tunnel(up)
            return
        req = self.req
        assert req is not None
        policy = self.ctx.policy
        framing = "chunked" if self.body_framing == "chunked" else self.body_framing
        up.send(forward.request_head(req, self._authority(), self.path, self.client.peer_ip,
                                     policy, framing))
        up.requests += 1
        self.ctx.stats.add("server_requests")
        # One reader per origin connection, like its socket: a reused one is
        # between messages (it was released only after a whole response).
        reader = up.reader
        if reader is None:
            reader = up.reader = ResponseReader(
                req.method, max_header_size=self.ctx.config.reply_header_max_size)
        else:
            reader.start_next_cycle(req.method)
            reader.max_header_size = self.ctx.config.reply_header_max_size
        self.resp_reader = reader
        for chunk in self.pending_body:
            self._send_body(chunk)
        self.pending_body.clear()
        if self.body_done:
            self._end_body()
        self._arm(self.ctx.config.read_timeout, self._read_timeout)

    def _authority(self) -> bytes:
        if self.authority is None:
            self.authority = format_authority(self.host, self.port, 80)
        return self.authority

    # -- 4a. request body ---------------------------------------------------
    def request_data(self, data: bytes) -> None:
        if self.upstream is None or not self.upstream.connected or self.resp_reader is None:
            self.pending_body.append(data)
            if sum(map(len, self.pending_body)) > HIGH_WATER:
                self.client.pause_reading(True)
            return
        self._send_body(data)

    def _send_body(self, data: bytes) -> None:
        assert self.upstream is not None
        if self.body_framing == "chunked":
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.upstream.send(data)
        if self.upstream.buffered > HIGH_WATER:
            self.client.pause_reading(True)

    def request_end(self) -> None:
        self.wants_body = False
        self.body_done = True
        if self.resp_reader is not None:  # else upstream_connected ends it
            self._end_body()

    def _end_body(self) -> None:
        if self.body_framing == "chunked" and self.upstream is not None:
            self.upstream.send(b"0\r\n\r\n")

    def upstream_drained(self, up: Upstream) -> None:
        if self.wants_body:
            client = self.client
            client.pause_reading(False)
            # Not the bound method: compiled, Cython turns a typed cpdef method
            # into a wrapper of its C function, built with the wrong signature.
            client.loop.call_soon(lambda: client.process())

    # -- 4b. response -------------------------------------------------------
    def upstream_data(self, up: Upstream, data: bytes) -> None:
        if self.tunnel is not None or self.resp_reader is None:
            return
        self.resp_reader.feed(data)
        self._pump_response()
        if not self.finished:  # read_timeout runs from the latest read
            self._arm(self.ctx.config.read_timeout, self._read_timeout)
            if not self.ack_pushed:
                # A read that left the response unfinished: the rest may be
                # waiting on our ACK.  One syscall at most per response; the
                # usual one arrives whole and finishes above.
                self.ack_pushed = True
                up.push_ack()

    def upstream_eof(self, up: Upstream) -> None:
        if self.resp_reader is None or self.finished:
            return
        self.resp_reader.feed_eof()
        self._pump_response()
        if not self.finished:
            if not self.head_sent:
                self.reply_error("ERR_ZERO_SIZE_OBJECT", 502, detail="origin closed the connection")
            else:
                self.abort("origin closed mid-body")
                self.client.close_when_flushed()

    def _pump_response(self) -> None:
        reader = self.resp_reader
        assert reader is not None
        while not self.finished:
            try:
                event = reader.next_event()
            except ProtocolError as exc:
                if not self.head_sent:
                    self.reply_error("ERR_INVALID_RESP", 502, detail=exc.reason)
                else:
                    # What was relayed still goes out (it is what the log
                    # counts), then the close tells the client it was cut.
                    self.abort("invalid response body")
                    self.client.close_when_flushed()
                return
            if event is NeedData or event is Paused:
                return
            kind = type(event)
            if kind is ConnectionClosed:
                self._closed_before_reply()
                return
            if kind is Response:
                self._response_head(event)
            elif kind is Data:
                self._response_data(event.data)
            elif kind is EndOfMessage:
                self._response_end(reader)
                return

    def _response_head(self, resp: Response) -> None:
        req = self.req
        assert req is not None
        policy = self.ctx.policy
        if resp.status < 200 and resp.status != 101:
            if req.http_version == b"1.1":
                self.client.write(forward.response_head(resp, policy, None, True))
            return
        framing = resp.framing
        if framing is None:  # not from a ResponseReader
            framing = response_framing(resp, req.method)
        if framing == "tunnel":  # a 101 (a CONNECT never gets here)
            # Upgrade is hop-by-hop and never sent on: nobody asked for a switch.
            self.reply_error("ERR_INVALID_RESP", 502, detail="unexpected protocol switch")
            return
        if framing == 0 and (req.method == b"HEAD" or resp.status in (204, 304)):
            client_framing: int | str | None = None
        elif isinstance(framing, int):
            client_framing = framing
        elif req.http_version == b"1.1":
            client_framing = "chunked"
        else:
            client_framing = "close"
            self.client_keep_alive = False
        self.client_framing = client_framing
        self.upstream_reusable = (keep_alive(resp) and isinstance(framing, int)
                                  and self.ctx.config.server_persistent_connections)
        self.status = resp.status
        ctype = resp.headers.first(b"content-type")
        self.mime = ctype.split(b";")[0].strip().decode("latin-1") if ctype else None
        head = forward.response_head(resp, policy, client_framing, self.client_keep_alive)
        self.head_sent = True
        self._to_client(head)

    def _response_data(self, data: bytes) -> None:
        if self.client_framing == "chunked":
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self._to_client(data)

    def _to_client(self, data: bytes) -> None:
        self.reply_size += len(data)
        if self.client.write(data) > HIGH_WATER and self.upstream is not None:
            self.upstream.pause_reading(True)
            self.client.on_drain = self._client_drained

    def _client_drained(self) -> None:
        self.client.on_drain = None
        if self.upstream is not None:
            self.upstream.pause_reading(False)

    def _response_end(self, reader: ResponseReader) -> None:
        if self.client_framing == "chunked":
            self._to_client(b"0\r\n\r\n")
        up, self.upstream = self.upstream, None
        if up is not None:
            if self.upstream_reusable and self.body_done and not reader.has_trailing_data():
                up.pause_reading(False)
                self.ctx.upstreams.release(up)
            else:
                up.close()
        self.finish(self.client_keep_alive and self.body_done)

    # -- 5. finish ----------------------------------------------------------
    def finish(self, keep_alive: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self._disarm()
        self._drop_upstream()
        self._log()
        if self.client.on_drain == self._client_drained:
            self.client.on_drain = None
        self.client.transaction_done(self, keep_alive and not self.wants_body)

    def _log(self) -> None:
        # Counted to the microsecond (the manager's service times), logged to
        # the millisecond (%tr), as squid logs it.
        service_us = int((time.time() - self.started) * 1e6)
        duration_ms = service_us // 1000
        ctx = self.ctx
        counted = self.req is not None or self.status != 0  # squid counts only requests
        if ctx.log_targets is not None:  # access_log acls, or several files
            self._log_to_chosen(service_us, counted)
            return
        fmt = ctx.log_format
        line = None if fmt is None else self._line(fmt, duration_ms)
        ctx.log(line, service_us, self.status, counted)

    def _line(self, fmt: LogFormat, duration_ms: int) -> str:
        if fmt.native:  # the usual format, straight from our fields
            client = self.client
            return native_line(
                self.started + duration_ms / 1000.0, duration_ms, client.peer_ip, self.log_tag,
                self.status, self.reply_size, self.method, self.url, None, self.hierarchy,
                self.peer if self.hierarchy != "HIER_NONE" else None, self.mime)
        return fmt.render(self.record(duration_ms))

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # The connect and read timeouts live on the client connection's deadline,
    # which is idle while a transaction runs (see ClientConnection.timeout).
    def _arm(self, delay: float, callback) -> None:  # type: ignore[no-untyped-def]
        if not self.finished and self.client.txn is self:
            self.client.timeout.set(delay, callback)

    def _disarm(self) -> None:
        if self.client.txn is self:
            self.client.timeout.clear()

