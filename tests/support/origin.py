"""A small real origin server for the proxy tests (threads, real sockets).

Paths:
    /bytes/N        N bytes of payload with Content-Length
    /chunked/N      N bytes sent chunked
    /close/N        N bytes, no length, connection closed to end the body
    /echo           the request body back (POST/PUT; Content-Length or chunked)
    /headers        the request head as the origin received it, as text
    /status/N       an empty reply with that status
    /slow/S         waits S seconds, then a short reply
    /id/ANY         a short reply naming the path (chaos tests count these)
Every received head is kept in ``heads`` for assertions.
"""

from __future__ import annotations

import threading
import time
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
        elif kind == "echo":
            self._send(200, body, "application/octet-stream")
        elif kind == "headers":
            self._send(200, raw.encode("latin-1"))
        elif kind == "status":
            self._send(int(arg), b"")
        elif kind == "slow":
            time.sleep(float(arg))
            self._send(200, b"slow\n")
        else:
            self._send(200, f"path {self.path}\n".encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class OriginServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.heads: list[str] = []
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> OriginServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"
