"""CONNECT tunnels: bytes both ways, untouched, with bounded buffers.

After the ``200 Connection established`` line the client connection's socket
and the origin socket are handed to a ``Tunnel``.  Each direction moves data
with ``os.splice`` through a pipe when it can (the bytes never enter Python:
socket → pipe → socket inside the kernel), and falls back to recv/send.  A
direction stops reading while its pipe or buffer holds ``PIPE_LIMIT`` bytes
the other side has not taken, so a slow reader costs a pipe, not memory.
Half-closes are passed on (``shutdown(SHUT_WR)``); the tunnel ends when both
directions have ended or either side errors.

On a reload the tunnel moves to the new generation of pool children, as a
keep-alive connection does, so that the old child does not stay for as long
as the tunnel lasts.  It stops reading both sides (what they send next waits
in the kernel, with the socket), lets its pipes empty into the other side,
and then hands both sockets over with what its next holder needs to carry
on and, at the end, to write the one access.log line: the CONNECT head, the
origin, the start time and the bytes sent to the client so far.  A tunnel
with a side already half-closed is ending: it ends where it is.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import TYPE_CHECKING, Any

from labsquid.eventloop import ERROR, READ, WRITE, EventLoop
from labsquid.http import Headers, Request
from labsquid.proxy.failures import connect_failed
from labsquid.proxy.upstream import Upstream

if TYPE_CHECKING:
    from labsquid.proxy.client import ClientConnection
    from labsquid.proxy.transaction import Transaction

PIPE_LIMIT = 256 * 1024
PIPE_FDS = 4  # a pipe each way: what the idle-connection pool counts (upstream.py)
CHUNK = 65536
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class _Direction:
    """src → dst through a pipe (splice) holding at most PIPE_LIMIT bytes."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.rpipe, self.wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.wpipe, _F_SETPIPE_SZ, PIPE_LIMIT)
        except OSError:
            pass  # keep the default size: still bounded
        self.in_pipe = 0
        self.eof = False
        self.done = False
        self.moved = 0

    def pump_in(self) -> bool:
        """Move what src has into the pipe; False on a hard error."""
        while self.in_pipe < PIPE_LIMIT and not self.eof:
            try:
                n = os.splice(self.src.fileno(), self.wpipe, CHUNK,
                              flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return True
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                    return False
                n = 0  # a reset reads as the end of this direction
            if n == 0:
                self.eof = True
                return True
            self.in_pipe += n
        return True

    def pump_out(self) -> bool:
        while self.in_pipe:
            try:
                n = os.splice(self.rpipe, self.dst.fileno(), self.in_pipe,
                              flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return True
                return False
            self.in_pipe -= n
            self.moved += n
        if self.eof and not self.done:
            self.done = True
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return True

    def close(self) -> None:
        os.close(self.rpipe)
        os.close(self.wpipe)


def start_tunnel(txn: Transaction, up: Upstream) -> None:
    """The origin accepted a CONNECT: answer 200 and hand both sockets to a
    tunnel (bound into ``Transaction``, as ``replies`` are)."""
    try:
        tunnel = txn.ctx.upstreams.with_room(lambda: Tunnel(txn, up))
    except OSError as exc:  # no descriptors for its pipes
        txn._drop_upstream()
        connect_failed(txn, exc.errno or 0)
        return
    txn.status = 200
    txn.log_tag = "TCP_TUNNEL"
    txn.upstream = None
    txn.wants_body = False
    txn.tunnel = tunnel
    tunnel.start(b"HTTP/1.1 200 Connection established\r\n\r\n",
                 txn.client.reader.take_trailing_data())
    if txn.client._hand_over is not None:  # a reload came while it was connecting
        tunnel.move_when_quiet()


def resume_tunnel(client: ClientConnection, origin: socket.socket, state: dict[str, Any]) -> None:
    """Carry on a tunnel handed over by an old child (``Tunnel.hand_over``):
    the same transaction, logged here when it ends."""
    client._disarm()  # no request is coming: the tunnel has the socket
    target, version, fields = state["head"]
    head = Request(b"CONNECT", target.encode("latin-1"), version.encode("latin-1"),
                   Headers([(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields]))
    txn = client._begin(head)
    txn.url, txn.host, txn.port = state["url"], state["host"], state["port"]
    txn.scheme, txn.peer, txn.hierarchy = "connect", state["peer"], state["hierarchy"]
    txn.started, txn.status, txn.log_tag = state["started"], 200, "TCP_TUNNEL"
    txn.wants_body = False
    up = Upstream(txn.ctx.loop, (txn.host, txn.port), txn.peer, sock=origin)
    try:
        tunnel = txn.ctx.upstreams.with_room(lambda: Tunnel(txn, up))
    except OSError:  # no descriptors for its pipes: it ends here, logged
        up.close()
        txn.tunnel_closed(state["to_client"])
        client.close()
        return
    txn.tunnel = tunnel
    tunnel.to_client = state["to_client"]
    tunnel.watch()


def tunnel_closed(txn: Transaction, to_client: int) -> None:
    txn.reply_size = to_client
    txn.finish(False)


class Tunnel:
    def __init__(self, txn: Transaction, upstream: Upstream) -> None:
        self.txn = txn
        self.loop: EventLoop = txn.ctx.loop
        self.client = txn.client
        self.upstream = upstream
        self.closed = False
        self.csock = self.client.sock
        self.usock = upstream.sock
        # The pipes first: without descriptors for them, nothing has changed.
        self.up = _Direction(self.csock, self.usock)
        try:
            self.down = _Direction(self.usock, self.csock)
        except OSError:
            self.up.close()
            raise
        self.pool = txn.ctx.upstreams
        self.pool.unwatched_fds += PIPE_FDS
        # Both sockets now belong to the tunnel: their old owners let go.
        self.loop.remove(self.csock.fileno())
        self.loop.remove(self.usock.fileno())
        self.to_client = 0
        self.moving = False  # a reload: reading stopped, hand over once the pipes empty
        self.stats = txn.ctx.stats
        self.counted_up = self.counted_down = 0  # of the directions' ``moved``

    def start(self, reply: bytes, early: bytes) -> None:
        self.client.sock.setblocking(True)
        try:
            # Small and first on a fresh connection: the socket buffer takes it.
            self.csock.sendall(reply)
            if early:
                self.usock.sendall(early)
        except OSError:
            self.close()
            return
        finally:
            if not self.closed:
                self.csock.setblocking(False)
        self.to_client = len(reply)
        stats = self.stats
        stats.add("tunnels")
        stats.add("bytes_out", len(reply))
        stats.add("tunnel_bytes_out", len(early))
        self.watch()

    def watch(self) -> None:
        self.loop.add(self.csock.fileno(), READ, self._on_client)
        self.loop.add(self.usock.fileno(), READ, self._on_upstream)

    def _on_client(self, mask: int) -> None:
        self._step(mask, self.up, self.down)

    def _on_upstream(self, mask: int) -> None:
        self._step(mask, self.down, self.up)

    def _step(self, mask: int, reading: _Direction, writing: _Direction) -> None:
        ok = True
        if mask & (READ | ERROR):
            ok = reading.pump_in() and reading.pump_out()
        if ok and mask & WRITE:
            ok = writing.pump_out()
        self._count()
        if not ok:
            self.close()
            return
        if self.up.done and self.down.done:
            self.close()
            return
        if self.moving:
            self._settle()
            return
        self._update()

    def _count(self) -> None:
        """Add what moved since the last count to the counters, as it goes
        (a tunnel can last for hours): client side and origin side."""
        up, down, stats = self.up.moved, self.down.moved, self.stats
        if up != self.counted_up:
            stats.add("bytes_in", up - self.counted_up)
            stats.add("tunnel_bytes_out", up - self.counted_up)
            self.counted_up = up
        if down != self.counted_down:
            stats.add("bytes_out", down - self.counted_down)
            stats.add("tunnel_bytes_in", down - self.counted_down)
            self.counted_down = down

    def _update(self) -> None:
        # Read a side while its pipe has room (and no reload is moving the
        # tunnel); write a side while the other direction's pipe holds bytes
        # for it.
        reading = not self.moving
        cmask = (READ if reading and not self.up.eof and self.up.in_pipe < PIPE_LIMIT
                 else 0) | (WRITE if self.down.in_pipe else 0)
        umask = (READ if reading and not self.down.eof and self.down.in_pipe < PIPE_LIMIT
                 else 0) | (WRITE if self.up.in_pipe else 0)
        self.loop.modify(self.csock.fileno(), cmask)
        self.loop.modify(self.usock.fileno(), umask)

    # -- moving on a reload -------------------------------------------------
    def move_when_quiet(self) -> None:
        """Stop reading; hand over once the pipes are empty (``_settle``)."""
        if not self.closed:
            self.moving = True
            self._settle()

    def _settle(self) -> None:
        if self.up.eof or self.down.eof:
            self.moving = False  # half-closed: it is ending, and ends here
        elif not (self.up.in_pipe or self.down.in_pipe):
            self.hand_over()
            return
        self._update()

    def hand_over(self) -> None:
        """Both sockets and the transaction's state to the next generation."""
        txn, client = self.txn, self.client
        req = txn.req
        state = {
            "head": [req.target.decode("latin-1"), req.http_version.decode("latin-1"),
                     [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers]],
            "url": txn.url, "host": txn.host, "port": txn.port, "peer": txn.peer,
            "hierarchy": txn.hierarchy, "started": txn.started,
            "to_client": self.to_client + self.down.moved,
        }
        origin_fd = self._let_go(keep_origin=True)
        client.txn = None
        if client._hand_over(client, (origin_fd,), state):
            txn.finished = True  # its next holder logs it
        else:  # both sockets are closed: it ends here
            txn.tunnel_closed(state["to_client"])
        client._moving = False  # its socket has gone already, one way or the other
        client.close()

    def _let_go(self, keep_origin: bool = False) -> int:
        """Unwatch both sockets, close the pipes and the origin connection; with
        ``keep_origin``, its socket's descriptor is detached first and returned."""
        self.closed = True
        self.loop.remove(self.csock.fileno())
        self.loop.remove(self.usock.fileno())
        self.up.close()
        self.down.close()
        self.pool.unwatched_fds -= PIPE_FDS
        origin_fd = self.usock.detach() if keep_origin else -1
        self.upstream.close()  # (a detached socket: only our records of it go)
        self.txn.tunnel = None
        return origin_fd

    def close(self) -> None:
        if self.closed:
            return
        self._let_go()
        self.txn.tunnel_closed(self.to_client + self.down.moved)
        self.client.close()
