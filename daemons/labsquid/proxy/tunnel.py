"""CONNECT tunnels: bytes both ways, untouched, with bounded buffers.

After the ``200 Connection established`` line the client connection's socket
and the origin socket are handed to a ``Tunnel``.  Each direction moves data
with ``os.splice`` through a pipe when it can (the bytes never enter Python:
socket → pipe → socket inside the kernel), and falls back to recv/send.  A
direction stops reading while its pipe or buffer holds ``PIPE_LIMIT`` bytes
the other side has not taken, so a slow reader costs a pipe, not memory.
Half-closes are passed on (``shutdown(SHUT_WR)``); the tunnel ends when both
directions have ended or either side errors.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import TYPE_CHECKING

from labsquid.eventloop import ERROR, READ, WRITE, EventLoop
from labsquid.proxy.failures import connect_failed

if TYPE_CHECKING:
    from labsquid.proxy.transaction import Transaction
    from labsquid.proxy.upstream import Upstream

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
        if not ok:
            self.close()
            return
        if self.up.done and self.down.done:
            self.close()
            return
        self._update()

    def _update(self) -> None:
        # Read a side while its pipe has room; write a side while the other
        # direction's pipe holds bytes for it.
        cmask = (READ if not self.up.eof and self.up.in_pipe < PIPE_LIMIT else 0) | (
            WRITE if self.down.in_pipe else 0)
        umask = (READ if not self.down.eof and self.down.in_pipe < PIPE_LIMIT else 0) | (
            WRITE if self.up.in_pipe else 0)
        self.loop.modify(self.csock.fileno(), cmask)
        self.loop.modify(self.usock.fileno(), umask)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self.csock.fileno())
        self.loop.remove(self.usock.fileno())
        self.up.close()
        self.down.close()
        self.pool.unwatched_fds -= PIPE_FDS
        self.upstream.close()
        self.txn.tunnel = None
        self.txn.tunnel_closed(self.to_client + self.down.moved)
        self.client.close()
