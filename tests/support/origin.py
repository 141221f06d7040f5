"""A small real origin server for the proxy tests (threads, real sockets).

Paths:
    /bytes/N        N bytes of payload with Content-Length
    /chunked/N      N bytes sent chunked
    /close/N        N bytes, no length, connection closed to end the body
    /echo           the request body back (POST/PUT; Content-Length or chunked)
    /headers        the request head as the origin received it, as text
    /status/N       an empty reply with that status
    /slow/S         waits S seconds, then a short reply
    /hop            a reply with hop-by-hop fields (Connection: X-Secret, Keep-Alive…)
    /switch         a 101 Switching Protocols nobody asked for, then raw bytes
    /hints          a 103 Early Hints (a Link field), a 102, then a short 200
    /id/ANY         a short reply naming the path (chaos tests count these)
Every received head is kept in ``heads`` for assertions, and the client port
it came from in ``peers`` (one upstream connection = one port).
"""

from __future__ import annotations

import http.client
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OriginServer

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, ctype: str = "text/plain",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        raw = self.requestline + "\r\n" + str(self.headers)
        self.server.heads.append(raw)
        self.server.peers.append(self.client_address[1])
        body = self._body()
        parts = self.path.split("/")
        kind = parts[1] if len(parts) > 1 else ""
        arg = parts[2] if len(parts) > 2 else ""
        if kind == "bytes":
            self._send(200, b"x" * int(arg))
        elif kind == "chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            n = int(arg)
            while n > 0 and self.command != "HEAD":
                piece = min(n, 7000)
                self.wfile.write(b"%x\r\n%s\r\n" % (piece, b"c" * piece))
                n -= piece
            if self.command != "HEAD":
                self.wfile.write(b"0\r\n\r\n")
        elif kind == "close":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"z" * int(arg))
            self.close_connection = True
        elif kind == "switch":  # a 101 nobody asked for, then other bytes
            self.send_response(101)
            self.send_header("Upgrade", "foo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.write(b"RAWDATA")
            self.close_connection = True
        elif kind == "hints":  # interim responses before the final one
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                             b"HTTP/1.1 102 Processing\r\n\r\n")
            self._send(200, b"final\n")
        elif kind == "echo":
            self._send(200, body, "application/octet-stream")
        elif kind == "headers":
            self._send(200, raw.encode("latin-1"))
        elif kind == "status":
            self._send(int(arg), b"")
        elif kind == "hop":
            self._send(200, b"hop\n", extra={"Connection": "X-Secret, keep-alive",
                                             "X-Secret": "1", "Keep-Alive": "timeout=5",
                                             "Proxy-Authenticate": "Basic", "X-Kept": "yes"})
        elif kind == "slow":
            time.sleep(float(arg))
            self._send(200, b"slow\n")
        else:
            self._send(200, f"path {self.path}\n".encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class OriginServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the proxy may open a hundred connections at once

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.heads: list[str] = []
        self.peers: list[int] = []  # the proxy's source port for each received head
        self.resets = 0  # connections the proxy reset
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        # A proxy resets an upstream connection it gives up on (its client
        # left mid-response, a worker was killed): the proxy's business, and
        # printed from this thread it lands in whichever test's output is
        # being captured.  Anything else is still printed.
        if isinstance(sys.exc_info()[1], ConnectionError):
            self.resets += 1
            return
        super().handle_error(request, client_address)

    def __enter__(self) -> OriginServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


# -- helpers for the proxy end-to-end tests (tests/test_proxy_*.py) -----------



def proxy_conn(port: int, timeout: float = 5.0) -> http.client.HTTPConnection:
    """An ``http.client`` connection to the proxy (requests use absolute-form URLs)."""
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def fetch(port: int, method: str, url: str, body: bytes | None = None,
          headers: dict[str, str] | None = None,
          timeout: float = 5.0) -> tuple[http.client.HTTPResponse, bytes]:
    """One request through the proxy on a fresh connection: (response, body)."""
    conn = proxy_conn(port, timeout)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def concurrent_fetches(port: int, urls: list[str], timeout: float = 20.0) -> list[int]:
    """GET every URL through the proxy at once, each on its own connection;
    every connection stays open until all responses are in.  The statuses."""
    statuses: list[int] = [0] * len(urls)
    all_answered = threading.Barrier(len(urls), timeout=timeout)

    def one(i: int) -> None:
        conn = proxy_conn(port, timeout=timeout)
        try:
            conn.request("GET", urls[i])
            resp = conn.getresponse()
            resp.read()
            statuses[i] = resp.status
            all_answered.wait()
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return statuses


def manager_page(port: int, action: str) -> dict[str, str]:
    """A cache manager page of the proxy on ``port``, as {label: value}
    (``name = value`` and ``Label:<tab>value`` lines)."""
    _resp, body = fetch(port, "GET", f"http://127.0.0.1:{port}/squid-internal-mgr/{action}")
    pairs = (line.strip().split(" = " if " = " in line else ":\t", 1)
             for line in body.decode().splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2}


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class RawClient:
    """A raw socket to the proxy, reading responses byte by byte off the wire."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read_until_close(self) -> bytes:
        while self._more():
            pass
        data, self.buf = self.buf, b""
        return data

    def closed_by_peer(self) -> bool:
        """True when the proxy closed (EOF or reset) with nothing more to read."""
        try:
            return not self._more() and not self.buf
        except ConnectionResetError:
            return True

    def read_response(self, method: str = "GET") -> RawResponse:
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise EOFError(f"connection closed before a full head: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        resp = RawResponse(int(status), reason[0] if reason else "", version,
                           headers, b"", head + b"\r\n\r\n")  # type: ignore[arg-type]
        te = (resp.header("Transfer-Encoding") or "").lower()
        length = resp.header("Content-Length")
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            return resp
        if te == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._more():
                        raise EOFError("EOF in chunk size")
                line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while b"\r\n\r\n" not in b"\r\n" + self.buf:
                        if not self._more():
                            raise EOFError("EOF in trailers")
                    _t, self.buf = (b"\r\n" + self.buf).split(b"\r\n\r\n", 1)
                    break
                while len(self.buf) < size + 2:
                    if not self._more():
                        raise EOFError("EOF in chunk")
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
            resp.body = body
        elif length is not None:
            n = int(length)
            while len(self.buf) < n:
                if not self._more():
                    raise EOFError("EOF in body")
            resp.body, self.buf = self.buf[:n], self.buf[n:]
        else:
            resp.body = self.read_until_close()
        return resp


def close_listener(sock: socket.socket) -> None:
    """Stop listening for real.  A bare close() while a thread waits in
    accept() leaves the socket listening (the waiting call holds it) and
    accepting, so a later test could reach a server that is gone;
    shutdown() wakes the waiter and unlistens first."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def raw_exchange(port: int, data: bytes, method: str = "GET",
                 timeout: float = 5.0) -> RawResponse:
    """Send raw bytes, read one response."""
    with RawClient(port, timeout) as c:
        c.send(data)
        return c.read_response(method)


class TcpServer:
    """A raw TCP server on 127.0.0.1, one thread per accepted connection:
    subclasses say what to do with each (``handle``), and count what they like."""

    def __init__(self, backlog: int = 64) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        close_listener(self.sock)

    def __enter__(self):  # noqa: ANN204 - the subclass
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EchoServer(TcpServer):
    """A plain TCP echo server (a TLS-less CONNECT target)."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    try:
                        conn.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    conn.sendall(data)
                except OSError:  # the proxy cut the tunnel (a test's shutdown)
                    return


def open_tunnel(port: int, target: str, early: bytes = b"",
                headers: str = "") -> tuple[socket.socket, bytes]:
    """CONNECT (with extra ``headers`` lines); returns the socket and whatever
    followed the 200 head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode()
                 + early)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"closed before the CONNECT reply: {buf!r}"
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock, rest


def recv_exactly(sock: socket.socket, n: int, already: bytes = b"") -> bytes:
    buf = bytearray(already)
    while len(buf) < n:
        data = sock.recv(min(262144, n - len(buf)))
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


# squid's native format: %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt
SQUID_LINE = re.compile(
    r"^(?P<ts>\d{10})\.(?P<ms>\d{3}) (?P<elapsed> *\d+) (?P<client>\S+) "
    r"(?P<tag>[A-Z_]+)/(?P<status>\d{3}) (?P<size>\d+) (?P<method>\S+) (?P<url>\S+) "
    r"(?P<user>\S+) (?P<hier>[A-Z_]+)/(?P<peer>\S+) (?P<mime>\S+)$")


def parse_squid_line(line: str) -> dict[str, str]:
    m = SQUID_LINE.match(line)
    if m is None:
        raise AssertionError(f"not a squid native access.log line: {line!r}")
    return m.groupdict()


def module_labsquid(tmp_path_factory, **kwargs):
    """Generator for a module-scoped started labsquid (one start for many tests)."""
    from support.service import Labsquid

    instance = Labsquid(tmp_path_factory.mktemp("ls"), **kwargs).start()
    try:
        yield instance
    finally:
        if instance.proc is not None and instance.proc.poll() is None:
            instance.kill_tree()


def module_origin():
    with OriginServer() as server:
        yield server
