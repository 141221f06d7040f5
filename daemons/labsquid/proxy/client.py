"""One client connection: bytes from the socket into transactions, and back.

The connection owns the socket, the ``RequestReader`` and the output buffer
to the client.  It runs one ``Transaction`` at a time: while a transaction is
busy, further pipelined requests stay in the reader (and, past its buffer, in
the kernel), exactly as HTTP/1.1 pipelining needs responses in order.

Backpressure: ``write`` reports how much is buffered; a transaction stops
reading its origin above ``HIGH_WATER`` and resumes when ``on_drain`` fires
below ``LOW_WATER``.  Reading from the client pauses while the origin side
is full, so a fast uploader cannot fill our memory either.

Timeouts, squid's names: ``request_timeout`` for a complete request head
(from the first byte or from the end of the previous response), idle
keep-alive connections close after ``client_idle_pconn_timeout`` (2 minutes),
and every connection ends at ``client_lifetime``.

Moving on a reload: an old pool child told to stop with a successor waiting
(``shutdown_when_idle`` with ``hand_over``) does not close its keep-alive
connections.  Each one, once it is between requests with nothing unread in
its reader, stops reading (what the client sends next stays in the kernel)
and is handed over as a socket, with its request count and accept time, to
be adopted by a child of the new generation.  Its client never sees a close.
A CONNECT tunnel goes the same way, with its origin socket (``Tunnel``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from labsquid.eventloop import ERROR, READ, WRITE, Timer, is_would_block
from labsquid.http import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    NeedData,
    Paused,
    ProtocolError,
    Request,
)
from labsquid.http._readers import RequestReader
from labsquid.proxy.transaction import Transaction

if TYPE_CHECKING:
    from labsquid.proxy.context import ServeContext

log = structlog.get_logger()

READ_SIZE = 65536
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class ClientConnection:
    def __init__(self, ctx: ServeContext, sock: socket.socket, peer: tuple,
                 on_closed: Callable[[ClientConnection], None]) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer_ip, self.peer_port = peer[0], peer[1]
        self.peer_address = ipaddress.ip_address(self.peer_ip)  # parsed once, for acls
        local = sock.getsockname()
        self.local_ip, self.local_port = local[0], local[1]
        self.port_name = ctx.name_of_port(self.local_ip, self.local_port)  # for myportname
        cfg = ctx.config
        self.reader = RequestReader(max_header_size=cfg.request_header_max_size,
                                    max_body_size=cfg.request_body_max_size)
        self.out = bytearray()
        self.reading = True
        self.closed = False
        self.eof = False
        self.closing = False  # close once ``out`` is flushed
        self.txn: Transaction | None = None
        self.requests = 0
        self.bytes_in = 0
        self.opened = self.loop.now  # when accepted; a moved connection keeps its own
        # Whether a transaction started here (a request, or a line logged for
        # one that never came): a connection that ends with none is logged.
        self.had_transaction = False
        self._on_closed = on_closed
        self._shutdown = False
        # Set while stopping for a reload: takes this connection's socket to
        # the next generation of children; True when it did (see close).
        self._hand_over: Callable[[ClientConnection], bool] | None = None
        self._moving = False
        # One re-armable deadline for the whole connection: request_timeout or
        # the idle timeout between requests, and the transaction's connect and
        # read timeouts while one runs (the two never overlap).
        self.timeout = self.loop.deadline()
        self._lifetime: Timer | None = None
        self.on_drain: Callable[[], None] | None = None

    # -- start and events ---------------------------------------------------
    def start(self) -> None:
        cfg = self.ctx.config
        self.loop.add(self.fd, READ, self._on_event)
        # client_lifetime counts from the accept, in whichever process that was.
        remaining = self.opened + cfg.client_lifetime - self.loop.now
        self._lifetime = self.loop.call_later(max(0.0, remaining), self._lifetime_up)
        # A connection moved here between requests (requests > 0) is an idle
        # keep-alive one; a new one has its first request head to send.
        self._arm(cfg.client_idle_pconn_timeout if self.requests else cfg.request_timeout,
                  self._request_timeout)

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self.timeout.set(delay, callback)

    def _disarm(self) -> None:
        self.timeout.clear()

    def _mask(self) -> int:
        return (READ if self.reading and not self.eof else 0) | (WRITE if self.out else 0)

    def _update(self) -> None:
        if not self.closed:
            self.loop.modify(self.fd, self._mask())

    def _on_event(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if self.closed:
            return
        if mask & (READ | ERROR) and self.reading and not self.eof:
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except OSError as exc:
            if is_would_block(exc):
                return
            if self._inside_a_head():
                self._ended_before_a_request()  # reset: gone all the same
            self.abort("client read error")
            return
        if not data:
            self.eof = True
            self._update()
            if not self.ctx.config.half_closed_clients:
                # squid's half_closed_clients off: a client that stops sending is gone.
                if self.txn is not None:
                    self.txn.client_aborted()
                    return
                if self._inside_a_head():
                    self._ended_before_a_request()
                    return
            self.reader.feed_eof()
        else:
            self.bytes_in += len(data)
            self.ctx.stats.add("bytes_in", len(data))
            if self.txn is None and not self.reader.has_trailing_data():
                # The first bytes of a request start its clock; later reads do
                # not re-arm it, so a head trickled in byte by byte still times out.
                self._arm(self.ctx.config.request_timeout, self._request_timeout)
            self.reader.feed(data)
        self.process()

    def _inside_a_head(self) -> bool:
        """Part of a request head came, and nothing answers it yet.  A
        connection closing after its reply (a refused head, ``Connection:
        close``) may hold bytes nobody will read: that is not a head."""
        return self.txn is None and not self.closing and self.reader.has_trailing_data()

    def _ended_before_a_request(self) -> None:
        """The connection ended inside a head, or without sending a byte
        (see ``close``): logged as squid does, not answered."""
        self._begin(None).ended_before_headers()

    def _begin(self, request: Request | None) -> Transaction:
        self.had_transaction = True
        txn = self.txn = Transaction(self, request)
        return txn

    # -- requests -----------------------------------------------------------
    def process(self) -> None:
        """Turn buffered bytes into transaction events until we must wait."""
        while not (self.closed or self.closing):
            if self.txn is not None and not self.txn.wants_body:
                return
            try:
                event = self.reader.next_event()
            except ProtocolError as exc:
                self._protocol_error(exc)
                return
            if event is NeedData:
                if self.eof and self.txn is None:
                    self.close_when_flushed()
                return
            if event is Paused:
                return
            if type(event) is Request:
                self._disarm()
                self.requests += 1
                self._begin(event).start()
            elif type(event) is Data:
                if self.txn is None:  # answered early, and kept: cannot happen
                    self.close_when_flushed()  # (see transaction_done), but never forward it
                    return
                self.txn.request_data(event.data)
            elif type(event) is EndOfMessage:
                if self.txn is None:  # the end of a request answered early
                    self._next_cycle()
                    return
                self.txn.request_end()
            elif type(event) is ConnectionClosed:
                self.close_when_flushed()
                return

    def _protocol_error(self, exc: ProtocolError) -> None:
        if self.txn is not None:
            # Broken request body mid-transaction: nothing more can be trusted.
            self.txn.client_protocol_error(exc)
            return
        self._begin(None).reply_protocol_error(exc)

    def transaction_done(self, txn: Transaction, keep_alive: bool) -> None:
        if txn is not self.txn:
            return
        self.txn = None
        if not keep_alive or self.eof:
            self.close_when_flushed()
            return
        if not txn.body_done:
            # Answered before its request was read to the end (denied, a
            # manager page), and kept only when the request has no body: its
            # EndOfMessage is next, and process() goes on from there.
            return
        self._next_cycle()

    def _next_cycle(self) -> None:
        try:
            self.reader.start_next_cycle()
        except Exception:  # the request body was not read whole: cannot reuse
            self.close_when_flushed()
            return
        if len(self.out) > HIGH_WATER:
            # Replies still unsent (our own pages for pipelined requests, with
            # nothing upstream to hold back): parse no more until the client
            # reads them, or a client that never reads grows them without end.
            self.pause_reading(True)
            self.on_drain = self._drained_for_next
            self._arm(self.ctx.config.request_timeout, self._request_timeout)
            return
        self._await_next()

    def _drained_for_next(self) -> None:
        self.on_drain = None
        self._await_next()

    def _await_next(self) -> None:
        self.pause_reading(False)
        if self.reader.has_trailing_data():  # a pipelined request is waiting
            self._arm(self.ctx.config.request_timeout, self._request_timeout)
            self.loop.call_soon(self.process)
        elif self._hand_over is not None:  # stopping for a reload: idle, so it moves now
            self._move()
        else:  # the next bytes that arrive start the next request
            self._arm(self.ctx.config.client_idle_pconn_timeout, self._request_timeout)

    # -- output -------------------------------------------------------------
    def write(self, data: bytes) -> int:
        """Buffer ``data`` for the end of this loop turn; returns the bytes buffered.

        Everything written to a connection in one turn (a response head and
        its small body, several pipelined responses) leaves in one send, and
        only after the turn's access-log lines went to the kid (see
        ``ServeContext.write_at_turn_end``).
        """
        if self.closed:
            return 0
        if not self.out:
            self.ctx.write_at_turn_end(self)
        self.out += data
        return len(self.out)

    def turn_ended(self) -> None:
        if not self.closed and self.out:
            self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except OSError as exc:
            if is_would_block(exc):
                return
            self.abort("client write error")
            return
        self.ctx.stats.add("bytes_out", sent)
        del self.out[:sent]
        if not self.out and self.closing:
            self.close()
            return
        self._update()
        if len(self.out) <= LOW_WATER and self.on_drain is not None:
            self.on_drain()

    def pause_reading(self, paused: bool) -> None:
        if self.reading == paused:
            self.reading = not paused
            self._update()

    # -- ending -------------------------------------------------------------
    def _request_timeout(self) -> None:
        if self.txn is not None:
            return
        if self.reader.has_trailing_data():
            self._begin(None).reply_timeout()
        else:
            # An idle keep-alive connection: squid closes it silently.  One
            # that never sent a byte is logged as it closes.
            self.close()

    def _lifetime_up(self) -> None:
        self._lifetime = None
        self._moving = False
        log.info("client_lifetime_expired", client=f"{self.peer_ip}:{self.peer_port}")
        if self.txn is not None:
            self.txn.abort("client_lifetime")
        self.close()

    def shutdown_when_idle(self,
                           hand_over: Callable[[ClientConnection], bool] | None = None) -> None:
        """Close after the current exchange; idle keep-alive connections at once.

        A connection that has not yet sent its first request is not idle: it
        was accepted, so its client is about to speak and gets its answer
        (``shutdown_lifetime`` bounds the wait).

        With ``hand_over`` (a reload), nothing is closed: each connection
        moves to the next generation as soon as it is between requests with
        nothing unread, a new one that has sent nothing yet included.
        """
        if hand_over is not None:
            self._hand_over = hand_over
            # Not one whose last answer said close and is still going out.
            if self.txn is None and not self.closing and not self.reader.has_trailing_data():
                self._move()
            elif self.txn is not None and self.txn.tunnel is not None:
                self.txn.tunnel.move_when_quiet()
            return
        self._shutdown = True
        if self.txn is not None:
            # Its answer says close, before the client sends again; one
            # started later is told by Transaction.start.
            self.txn.client_keep_alive = False
        elif self.requests > 0 and not self.reader.has_trailing_data():
            self.close_when_flushed()

    def close_when_flushed(self) -> None:
        """Close once what was written has gone out (at the latest, this turn's end)."""
        if self.out:
            self.closing = True
        else:
            self.close()

    def _move(self) -> None:
        """Leave the socket to the next generation once our replies are out."""
        self._moving = True
        self._disarm()
        self.pause_reading(True)  # its next bytes are the new owner's to read
        self.close_when_flushed()

    def abort(self, reason: str) -> None:
        self._moving = False
        if self.txn is not None:
            self.txn.abort(reason)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.timeout.close()
        if self._lifetime is not None:
            self._lifetime.cancel()
        if self.txn is not None:
            txn, self.txn = self.txn, None
            txn.abort("client closed")
        self.loop.remove(self.fd)
        # A client that half-closed has nothing more to say: no point moving it.
        moved = self._moving and not self.eof and self._hand_over(self)  # type: ignore[misc]
        if not moved:
            try:
                self.sock.close()
            except OSError:
                pass
            if not (self.requests or self.had_transaction):
                # It ends without having sent a request, and nothing was
                # logged for it: squid 5.7 logs it as ending before headers
                # (a TCP health check, a client that gave up), whatever
                # closed it.  (Moved, it is the next process's to log.)
                self._ended_before_a_request()
        self._on_closed(self)
