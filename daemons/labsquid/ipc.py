"""IPC framing between labsquid's own processes (master↔kid, kid↔pool child).

Theory of operation
-------------------
Every pair of related processes talks over one ``AF_UNIX`` ``SOCK_SEQPACKET``
socketpair made before the fork.  SEQPACKET keeps message boundaries, so a
message is simply one ``send``: a one-byte *kind* followed by its payload, and
file descriptors ride along as ``SCM_RIGHTS`` ancillary data (the notes'
experiment 3).  Nothing here parses bytes from the network.

``Channel`` is the non-blocking endpoint driven by the event loop: ``send``
queues when the peer is slow (the socket buffer is the bound the kernel gives
us; the queue is bounded too so a wedged peer cannot eat our memory), and
received messages are handed to one callback.

Descriptors can be lost on the way: a receiver that is at its ``RLIMIT_NOFILE``
cannot get them installed, so the kernel closes them and flags the message
``MSG_CTRUNC``.  ``Channel`` notices that flag, counts it, and tells its owner
(``on_truncated``); the message itself is still delivered, with the
descriptors that did arrive.  A receiver that would rather not lose them sets
``may_read``: asked before each message, and when it says no, the channel
stops reading (``pause_reading``) until ``resume_reading`` — what is sent
meanwhile waits in the socket, and then in the sender's queue.

A pool child's access-log lines do not go on its channel but on a
``LogStream``: a pipe of their own, newline-separated lines, which the kid
reads on its own schedule (see ``LogStream`` for why a pipe).

The logfile daemon is *not* spoken to through here: it is an exec'd program
speaking squid's line protocol over a ``SOCK_STREAM`` pair (see
``labsquid.logfile``).

Message kinds (one byte each) are listed in ``Kind``.
"""

from __future__ import annotations

import array
import fcntl
import functools
import json
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from labsquid.eventloop import ERROR, READ, WRITE, EventLoop, is_would_block

log = structlog.get_logger()

# Payload limit of one message.  Every message is small (access-log lines go
# on a LogStream); and a receive buffer below malloc's mmap threshold (128 KiB)
# costs no mmap/munmap pair per message, which a 256 KiB one did.
MAX_MESSAGE = 64 * 1024
MAX_FDS = 16
# passfd: the kid's send buffer towards a child (SO_SNDBUF; the kernel doubles
# it), so that only about PASSFD_IN_FLIGHT sockets are ever in flight to it —
# 22 measured on Linux 6.1, x86_64.  A child installs every passed socket as it
# reads it; the window bounds how many can land on it before it closes any,
# and when it is full the kid stops accepting (the backlog holds the rest).
PASSFD_SNDBUF = 8192
PASSFD_IN_FLIGHT = 24


class Kind:
    """The first byte of every message."""

    PING = b"P"  # master → kid heartbeat; the kid answers PONG from its loop
    PONG = b"p"
    STATUS = b"S"  # kid → master: JSON figures for sd_notify STATUS= and readiness
    ACCEPT = b"A"  # kid → pool child (notify mode): accept until EAGAIN
    CONN = b"C"  # kid → pool child: a client socket (passfd), or a moved one (moved_payload)
    STOP = b"Q"  # kid → pool child: stop accepting, finish, exit (payload STOP_MOVE: a reload)
    READY = b"R"  # pool child → kid: started and serving (again: room, descriptors)
    NOFDS = b"N"  # pool child → kid (passfd): out of descriptors, send no CONN until READY
    LOGS = b"W"  # pool child → kid: access-log lines wait on its LogStream (a wake-up)
    MOVE = b"M"  # old pool child → kid: a client connection for the new generation


STOP_MOVE = b"move"  # STOP's payload on a reload: hand client connections over, never close


def close_fds(fds: list[int]) -> None:
    """Close descriptors a message carried (or was to carry) that nobody takes."""
    for fd in fds:
        os.close(fd)


def moved_payload(state: dict[str, Any]) -> bytes:
    """What a moved client connection carries (``MOVE``, then ``CONN``), as
    JSON: ``requests`` it served; ``opened``, when it was accepted, on
    ``time.monotonic()`` (one clock for every process), so that its
    ``client_lifetime`` runs on; and for a CONNECT tunnel, ``tunnel``, what
    its next holder needs to go on and log it (``proxy.tunnel``).  A tunnel's
    message carries two descriptors, the client's and the origin's."""
    return json.dumps(state, separators=(",", ":")).encode()


def parse_moved(payload: bytes) -> dict[str, Any]:
    """The state ``moved_payload`` wrote; ``{}`` for a new connection (passfd)."""
    return json.loads(payload) if payload else {}


OnMessage = Callable[[bytes, bytes, list[int]], None]  # kind, payload, received fds
OnClose = Callable[[], None]
OnTruncated = Callable[[bytes], None]  # kind of a message whose descriptors the kernel dropped


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A close-on-exec SEQPACKET socketpair (the child end is made inheritable by the caller)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def log_stream_pair() -> tuple[int, int]:
    """The close-on-exec pipe under a ``LogStream``: (read end, write end),
    as large as an unprivileged process may make it (LOG_PIPE_SIZE)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, LOG_PIPE_SIZE)
    except OSError:
        pass  # a lower /proc/sys/fs/pipe-max-size: the default 64 KiB still works
    return read_end, write_end


def _ignore_message(_kind: bytes, _payload: bytes, _fds: list[int]) -> None:
    pass


def _ignore_close() -> None:
    pass


class Channel:
    def __init__(self, loop: EventLoop, sock: socket.socket, on_message: OnMessage,
                 on_close: OnClose, max_queue: int = 4096,
                 on_truncated: OnTruncated | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        sock.setblocking(False)
        self._on_message = on_message
        self._on_close = on_close
        self._on_truncated = on_truncated
        self._queue: deque[tuple[bytes, list[int]]] = deque()
        self._max_queue = max_queue
        self.dropped = 0
        self.truncated = 0  # messages received whose descriptors the kernel dropped
        self.closed = False
        self.broken = False  # the peer stopped reading; see _peer_gone
        # Called when the send queue has emptied after the socket was full:
        # the peer takes messages (and descriptors) directly again.
        self.on_sent_all: Callable[[], None] | None = None
        self._stalled = False
        # Asked before each message is read: False pauses reading (see above).
        self.may_read: Callable[[], bool] | None = None
        self.reading = True
        loop.add(self.fd, READ, self._on_event)

    def detach(self) -> None:
        """Stay open, but hand nothing on: a retired peer keeps its end (its
        EOF would tell it we are gone) until it exits, and is not heard."""
        self._on_message = _ignore_message
        self._on_close = _ignore_close

    def send(self, kind: bytes, payload: bytes = b"", fds: list[int] | None = None,
             bounded: bool = True) -> bool:
        """Queue one message; False when the channel is closed or its queue is full.

        ``bounded=False`` queues past ``max_queue``: for a socket handed over at a
        reload, whose descriptor is held either way and which a full queue
        would otherwise close (thousands of them go at once).
        """
        if self.closed or self.broken:
            return False
        if bounded and len(self._queue) >= self._max_queue:
            self.dropped += 1
            return False
        self._queue.append((kind + payload, fds or []))
        if len(self._queue) == 1:
            self._flush()
        return True

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def _mask(self) -> int:
        return (READ if self.reading else 0) | (WRITE if self._queue else 0)

    def pause_reading(self) -> None:
        if self.reading and not self.closed:
            self.reading = False
            self.loop.modify(self.fd, self._mask())

    def resume_reading(self) -> None:
        """Read again; what waited is reported by epoll (level-triggered) on the next turn."""
        if not self.reading and not self.closed:
            self.reading = True
            self.loop.modify(self.fd, self._mask())

    def _flush(self) -> None:
        while self._queue:
            data, fds = self._queue[0]
            try:
                if fds:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    self.sock.sendmsg([data], anc)
                else:
                    self.sock.send(data)
            except OSError as exc:
                if is_would_block(exc):
                    self._stalled = True
                    break
                self._peer_gone()
                return
            self._queue.popleft()
            close_fds(fds)  # the peer holds its own reference now
        self.loop.modify(self.fd, self._mask())
        if self._stalled and not self._queue:
            self._stalled = False
            if self.on_sent_all is not None:
                self.on_sent_all()

    def _peer_gone(self) -> None:
        """A send failed (EPIPE): the peer closed its end, maybe exiting.

        What it sent before that (a worker's last access-log lines) is still
        in our receive buffer; closing now would throw it away.  So nothing
        more is sent, and the channel is drained on the next turn instead.
        """
        self.broken = True
        for _data, fds in self._queue:
            close_fds(fds)
        self._queue.clear()
        self.loop.call_soon(self.drain)

    def _on_event(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if self.closed:
            return
        if mask & ERROR:
            # The peer is gone (or the socket broke): read what it left even
            # if reading is paused, or epoll reports the hang-up in a loop.
            self._read(checked=False)
        elif mask & READ and self.reading:
            self._read()

    def _read(self, checked: bool = True) -> int:
        """Deliver up to 64 messages (one chatty peer must not starve the loop);
        returns how many were delivered."""
        fd_size = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        delivered = 0
        reset_seen = False
        for _ in range(64):
            if checked and self.may_read is not None and not self.may_read():
                self.pause_reading()
                return delivered
            try:
                data, anc, flags, _addr = self.sock.recvmsg(MAX_MESSAGE, fd_size)
            except ConnectionResetError:
                # The peer exited with a message of ours unread.  Linux reports
                # that once, *before* the messages the peer sent us, which are
                # still queued (a worker's last access-log lines): read on.
                if reset_seen:
                    self.close()
                    return delivered
                reset_seen = True
                continue
            except OSError as exc:
                if not is_would_block(exc):
                    self.close()
                return delivered
            if not data:
                self.close()
                return delivered
            fds: list[int] = []
            for level, ctype, cdata in anc:
                if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(cdata[: len(cdata) - (len(cdata) % arr.itemsize)])
                    fds.extend(arr)
            if flags & socket.MSG_CTRUNC:
                # The kernel could not install (all) the descriptors sent with
                # this message — we are at RLIMIT_NOFILE, or more than MAX_FDS
                # came — and closed them: they are gone for good.
                self.truncated += 1
                if self._on_truncated is not None:
                    self._on_truncated(data[:1])
                else:
                    log.warning("ipc_descriptors_dropped", kind=data[:1].decode("latin-1"),
                                received=len(fds), messages_truncated=self.truncated)
            self._on_message(data[:1], data[1:], fds)
            delivered += 1
            if self.closed:
                return delivered
        return delivered

    def read_all(self) -> None:
        """Deliver every message already received, without waiting (the kid
        empties a worker's log channel this way, on its own schedule)."""
        while not self.closed and self._read(checked=False) == 64:
            pass

    def drain(self) -> None:
        """The peer is dead: deliver every message it sent before dying, then close.

        Its messages and then EOF are all in our receive buffer already, so
        this never waits; it must run before ``close`` or they are lost.
        """
        self.read_all()
        self.close()

    def flush_blocking(self, timeout: float = 2.0) -> None:
        """At exit: push out what is queued, waiting for the peer at most ``timeout``."""
        if self.closed or not self._queue:
            return
        self.sock.settimeout(timeout)
        try:
            while self._queue:
                data, fds = self._queue.popleft()
                if fds:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    self.sock.sendmsg([data], anc)
                else:
                    self.sock.send(data)
        except OSError:
            pass
        finally:
            self.sock.setblocking(False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self.fd)
        for _data, fds in self._queue:
            close_fds(fds)
        self._queue.clear()
        self.sock.close()
        self._on_close()


LOG_PIPE_SIZE = 1024 * 1024  # Linux's default pipe-max-size: 256 pages, ~9,000 short lines
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
OnLines = Callable[[bytes], None]  # whole lines, each ending in "\n"


@functools.cache
def _read_buffer() -> memoryview:
    """The kid's one buffer for reading log pipes, made on first use.

    A fresh 1 MiB bytes object per read would be an mmap and munmap per
    collection, and one buffer per stream would stay with the process as
    generations of workers come and go.  Reads never overlap (each read's
    bytes are copied out before the next), so every stream shares it."""
    return memoryview(bytearray(LOG_PIPE_SIZE))


class LogStream:
    """A pool child's access-log lines on their way to the kid: one pipe.

    The child writes each loop turn's lines when the turn ends (they must be
    in the kernel before that turn's clients get their responses), so at low
    concurrency that is one write per request; the kid collects them when
    the child's ``LOGS`` wake-up says so, at most every 50 ms.  Why a pipe:
    as SEQPACKET messages, each write was one buffer in the kernel, so ~270
    of them filled the socket whatever their size, and collecting was one
    ``recvmsg`` (with a 256 KiB buffer) per request — a burst of hundreds
    during which the child, sharing the kid's core, waited: the tail of its
    latency.  A pipe packs small writes into its pages (1 MiB, ~9,000 short
    lines, where the system allows), and the kid takes everything with one
    or two ``read`` calls.  Lines end in ``\n``; an incomplete last line
    waits for the rest.  While the kid's logfile queue is full it reads no
    more: lines wait in the pipe, and a child whose pipe is full holds its
    clients back (nothing is dropped).

    Writer side (the child): ``send``, ``backlog`` (bytes the pipe would not
    take yet), ``on_sent_all`` when they have gone, ``flush_blocking`` at exit.
    Reader side (the kid): ``read_all`` and ``drain`` hand complete lines to
    ``on_lines``; nobody watches the pipe, the kid reads when told.
    """

    def __init__(self, loop: EventLoop, fd: int, on_lines: OnLines | None = None) -> None:
        self.loop = loop
        self.fd = fd
        os.set_blocking(fd, False)
        self._on_lines = on_lines
        self._out = bytearray()
        self._partial = b""
        self._watched = False  # registered for WRITE while the pipe is full
        self.closed = False
        self.on_sent_all: Callable[[], None] | None = None

    # -- writing (the pool child) ------------------------------------------------
    @property
    def backlog(self) -> int:
        return len(self._out)

    def send(self, data: bytes) -> None:
        """Lines (each ending in ``\n``) to the kid: into the pipe now, or kept
        in order until it has room (``backlog``)."""
        if self.closed:
            return
        if self._out:
            self._out += data
            return
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._reader_gone()
            return
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self._watched = True
            self.loop.add(self.fd, WRITE, self._on_writable)

    def _on_writable(self, _mask: int) -> None:
        while self._out:
            try:
                sent = os.write(self.fd, self._out)
            except BlockingIOError:
                return
            except OSError:
                self._reader_gone()
                return
            del self._out[:sent]
        self._unwatch()
        if self.on_sent_all is not None:
            self.on_sent_all()

    def _unwatch(self) -> None:
        if self._watched:
            self._watched = False
            self.loop.remove(self.fd)

    def _reader_gone(self) -> None:
        # EPIPE: the kid is gone (the child stops on its channel's EOF); what
        # could not be written is dropped, and nothing waits for it any more.
        self._out.clear()
        self.close()
        if self.on_sent_all is not None:
            self.on_sent_all()

    def flush_blocking(self, timeout: float = 2.0) -> None:
        """At exit: write out what is kept, waiting for the kid at most ``timeout``."""
        if self.closed or not self._out:
            return
        self._unwatch()
        deadline = time.monotonic() + timeout
        while self._out and time.monotonic() < deadline:
            try:
                del self._out[:os.write(self.fd, self._out)]
            except BlockingIOError:
                select.select([], [self.fd], [], max(0.0, deadline - time.monotonic()))
            except OSError:
                return

    # -- reading (the kid) -------------------------------------------------------
    def read_all(self, limit: int | None = None) -> int:
        """Hand every complete line already in the pipe to ``on_lines``,
        without waiting; with ``limit``, read about that many bytes at most
        and leave the rest in the pipe.  Returns the bytes read."""
        inbox = _read_buffer()
        taken = 0
        while not self.closed:
            size = len(inbox) if limit is None else min(len(inbox), limit - taken)
            if size <= 0:
                break
            try:
                n = os.readv(self.fd, [inbox[:size]])
            except BlockingIOError:
                break
            data = bytes(inbox[:n])
            if not data:
                self._ended()
                break
            taken += n
            if self._partial:
                data = self._partial + data
            cut = data.rfind(b"\n") + 1
            self._partial = data[cut:]
            if cut and self._on_lines is not None:
                self._on_lines(data[:cut] if cut < len(data) else data)
        return taken

    def drain(self) -> None:
        """The child is dead: take every line it wrote, then close."""
        self.read_all()
        self.close()

    def _ended(self) -> None:
        if self._partial:
            # Only a child killed inside a write leaves half a line; it had not
            # answered that request yet (clients wait for their lines).
            log.warning("access_log_partial_line_dropped", bytes=len(self._partial))
            self._partial = b""
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._unwatch()
        os.close(self.fd)
