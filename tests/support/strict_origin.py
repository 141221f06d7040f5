"""A test origin that re-parses everything it receives with h11, a second strict parser.

The proxy tests' ``OriginServer`` is built on ``http.server``, which is lenient:
it would happily read a smuggled or malformed message some way or other. This
origin instead feeds every byte the proxy sends into an ``h11.Connection`` (on a
real socket, one thread per connection), so whatever labsquid forwards must be
a well-formed HTTP/1.1 message stream in h11's reading too.

It records:

* ``requests``: every request head h11 parsed (in arrival order), with its body
  as h11 de-framed it and whether the message was complete;
* ``errors``: every ``h11.RemoteProtocolError``, with the bytes received on that
  connection so far (a proxy that forwards garbage or an ambiguous message);
* ``truncated``: connections that closed in the middle of a message (a proxy
  that gave up mid-request: not ambiguous, but still something that reached us).

Every complete request is answered ``200`` with ``X-Strict-Origin: N`` (N its
index in ``requests``) and a short body naming it, so a test can tell a reply
that came from here from one the proxy made up.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import h11

from support.origin import close_listener

# h11 refuses heads over 16 KiB by default; the proxy legitimately forwards
# heads up to its request_header_max_size, so allow much more than that here.
MAX_EVENT_SIZE = 1024 * 1024


@dataclass
class Received:
    """One request as h11 parsed it."""

    index: int
    connection: int  # which upstream connection (accept order) it came on
    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # names as sent (not lowercased)
    body: bytes = b""
    complete: bool = False

    def header_values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class OriginError:
    connection: int
    error: str
    received: bytes  # everything that arrived on the connection, for the diagnosis


@dataclass
class StrictOrigin:
    requests: list[Received] = field(default_factory=list)
    errors: list[OriginError] = field(default_factory=list)
    truncated: list[OriginError] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self._closed = False
        self._open: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name="strict-origin")

    # -- life cycle ------------------------------------------------------------
    def __enter__(self) -> StrictOrigin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        close_listener(self.sock)
        with self.lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def snapshot(self) -> tuple[int, int, int]:
        """(requests, errors, truncated) counts, to diff against later."""
        with self.lock:
            return len(self.requests), len(self.errors), len(self.truncated)

    # -- serving ---------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True,
                             name=f"strict-origin-{number}").start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT_SIZE)
        received = bytearray()
        eof = False
        current: Received | None = None
        try:
            conn.settimeout(30)
            while True:
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError as exc:
                    self._protocol_error(conn, number, exc, bytes(received), eof)
                    return
                if event is h11.NEED_DATA:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    eof = not data
                    received += data
                    h.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    with self.lock:
                        current = Received(
                            index=len(self.requests), connection=number,
                            method=bytes(event.method), target=bytes(event.target),
                            http_version=bytes(event.http_version),
                            headers=[(bytes(k), bytes(v)) for k, v in event.headers.raw_items()])
                        self.requests.append(current)
                elif isinstance(event, h11.Data):
                    assert current is not None
                    current.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    assert current is not None
                    current.complete = True
                    self._answer(conn, h, current)
                    current = None
                    if h.our_state is h11.MUST_CLOSE or h.their_state is h11.MUST_CLOSE:
                        return
                    h.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
                else:  # PAUSED: h11 wants start_next_cycle (CONNECT/Upgrade): refuse
                    self._protocol_error(conn, number, RuntimeError(f"unexpected {event!r}"),
                                         bytes(received), eof)
                    return
        except (OSError, h11.LocalProtocolError):
            return
        finally:
            with self.lock:
                self._open.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, conn: socket.socket, h: h11.Connection, req: Received) -> None:
        body = b"strict origin request #%d\n" % req.index
        headers = [(b"Content-Type", b"text/plain"), (b"X-Strict-Origin", b"%d" % req.index)]
        if req.method != b"HEAD":
            headers.append((b"Content-Length", b"%d" % len(body)))
        out = h.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        if req.method != b"HEAD":
            out += h.send(h11.Data(data=body))
        out += h.send(h11.EndOfMessage())
        conn.sendall(out)

    def _protocol_error(self, conn: socket.socket, number: int, exc: Exception,
                        received: bytes, eof: bool) -> None:
        record = OriginError(number, f"{type(exc).__name__}: {exc}", received)
        with self.lock:
            # EOF inside a message: the proxy gave up mid-request. Anything else
            # is bytes h11 will not read as HTTP/1.1.
            if eof and "peer" in str(exc) and "closed" in str(exc):
                self.truncated.append(record)
            else:
                self.errors.append(record)
        try:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        except OSError:
            pass

