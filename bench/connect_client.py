"""CONNECT-tunnel load client: N tunnels through a proxy, repeated GETs in each.

wrk cannot speak CONNECT (its parser would take the proxy's ``200 Connection
established`` for a response without a length and wait for EOF), so this is a
small epoll client on raw sockets.  Each of ``--conns`` connections sends
``CONNECT host:port`` to the proxy once, checks for a 2xx, and then sends
``GET PATH`` over the tunnel again and again (one request in flight per
tunnel, keep-alive to the origin through the tunnel) for ``--duration``
seconds.  With ``--direct`` it skips the CONNECT and talks to the origin itself:
the same client and the same work, so that row is this client's own ceiling.

It prints one line ``BENCHJSON {...}`` with the same keys as bench/proxy.lua.
Latency is measured per request, from the send of the GET to the last body
byte.  It is single-threaded Python: on one core it tops out somewhere around
10-20k small requests/s, which the ``--direct`` row shows.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time

RECV = 1 << 18


class Tunnel:
    __slots__ = ("sock", "state", "buf", "remaining", "sent_at", "done")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = "connect"  # connect -> handshake -> header -> body
        self.buf = b""
        self.remaining = 0
        self.sent_at = 0.0
        self.done = 0


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(round(pct / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def run(args: argparse.Namespace) -> dict[str, float]:
    target = f"{args.origin_host}:{args.origin_port}"
    connect_req = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    get_req = f"GET {args.path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: bench\r\n\r\n".encode()
    dest = ((args.origin_host, args.origin_port) if args.direct
            else (args.proxy_host, args.proxy_port))

    ep = select.epoll()
    tunnels: dict[int, Tunnel] = {}
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    latencies: list[float] = []
    total_bytes = 0

    def open_one() -> None:
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        try:
            s.connect(dest)
        except BlockingIOError:
            pass
        except OSError:
            errors["connect"] += 1
            s.close()
            return
        t = Tunnel(s)
        tunnels[s.fileno()] = t
        ep.register(s.fileno(), select.EPOLLOUT)

    def drop(t: Tunnel, kind: str, reopen: bool = True) -> None:
        errors[kind] += 1
        fd = t.sock.fileno()
        ep.unregister(fd)
        tunnels.pop(fd, None)
        t.sock.close()
        if reopen and time.monotonic() < deadline:
            open_one()

    def send_get(t: Tunnel) -> None:
        t.state = "header"
        t.buf = b""
        t.sent_at = time.perf_counter()
        try:
            t.sock.send(get_req)  # tiny: always fits in an empty socket buffer
        except OSError:
            drop(t, "write")

    start = time.monotonic()
    deadline = start + args.duration
    for _ in range(args.conns):
        open_one()

    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        for fd, _mask in ep.poll(min(0.2, deadline - now)):
            t = tunnels.get(fd)
            if t is None:
                continue
            if t.state == "connect":
                err = t.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    drop(t, "connect")
                    continue
                ep.modify(fd, select.EPOLLIN)
                if args.direct:
                    send_get(t)
                else:
                    t.state = "handshake"
                    t.sock.send(connect_req)
                continue
            try:
                data = t.sock.recv(RECV)
            except BlockingIOError:
                continue
            except OSError:
                drop(t, "read")
                continue
            if not data:
                drop(t, "read")
                continue
            total_bytes += len(data)
            if t.state == "body":
                t.remaining -= len(data)
            else:
                t.buf += data
                end = t.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = t.buf[:end].decode("latin-1")
                status = int(head.split(" ", 2)[1])
                if t.state == "handshake":
                    if not 200 <= status < 300:
                        drop(t, "status", reopen=False)
                    else:
                        send_get(t)
                    continue
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                        break
                if not 200 <= status < 400:
                    errors["status"] += 1
                t.remaining = length - (len(t.buf) - end - 4)
                t.buf = b""
                t.state = "body"
            if t.state == "body" and t.remaining <= 0:
                if t.remaining < 0:
                    drop(t, "read")  # more bytes than announced: protocol error
                    continue
                latencies.append(time.perf_counter() - t.sent_at)
                t.done += 1
                send_get(t)

    duration = time.monotonic() - start
    for t in list(tunnels.values()):
        if t.state in ("header", "body") and time.perf_counter() - t.sent_at > args.timeout:
            errors["timeout"] += 1
        t.sock.close()
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_us": int(duration * 1e6),
        "bytes": total_bytes,
        **errors,
        "p50_us": int(percentile(latencies, 50) * 1e6),
        "p99_us": int(percentile(latencies, 99) * 1e6),
        "mean_us": (sum(latencies) / len(latencies) * 1e6) if latencies else 0.0,
        "max_us": int((latencies[-1] if latencies else 0) * 1e6),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy-host", default="127.0.0.1")
    p.add_argument("--proxy-port", type=int, default=3128)
    p.add_argument("--origin-host", default="127.0.0.1")
    p.add_argument("--origin-port", type=int, required=True)
    p.add_argument("--path", default="/small.bin")
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--direct", action="store_true", help="no proxy: GETs straight to the origin")
    result = run(p.parse_args())
    print("BENCHJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
