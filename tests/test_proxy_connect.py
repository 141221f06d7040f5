"""CONNECT tunnels to a plain TCP echo server: bytes both ways, untouched."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from support import proof
from support.origin import (
    EchoServer,
    RawClient,
    module_origin,
    open_tunnel,
    parse_squid_line,
    recv_exactly,
)
from support.service import Labsquid, free_port, wait_for

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def echo():
    with EchoServer() as server:
        yield server


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()


@pytest.fixture(scope="module")
def refused_port():
    return free_port()


@pytest.fixture(scope="module")
def labsquid(tmp_path_factory, echo, refused_port):
    extra = f"acl SSL_ports port {echo.port}\nacl SSL_ports port {refused_port}\n"
    instance = Labsquid(tmp_path_factory.mktemp("ls"), extra=extra).start()
    yield instance
    if instance.proc is not None and instance.proc.poll() is None:
        instance.kill_tree()


def connect_line(ls: Labsquid, target: str, what: str) -> dict[str, str]:
    """The last access.log line of a CONNECT to ``target``, once it is written."""
    def find():
        found = [x for x in ls.access_lines() if f" CONNECT {target} " in x]
        return parse_squid_line(found[-1]) if found else None
    return wait_for(find, timeout=5, what=what)


def test_tunnel_carries_bytes_both_ways(labsquid, echo):
    messages = (b"ping\n", b"\x00\xff" * 100, b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    sock, rest = open_tunnel(labsquid.port, f"127.0.0.1:{echo.port}")
    with sock:
        for message in messages:
            sock.sendall(message)
            rest = recv_exactly(sock, len(message), rest)
            assert rest == message
            rest = b""
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b"", "the half-close travels through and back"
    target = f"127.0.0.1:{echo.port}"

    fields = connect_line(labsquid, target, "the tunnel's access.log line")
    assert (fields["tag"], fields["status"], fields["hier"], fields["peer"]) == \
        ("TCP_TUNNEL", "200", "HIER_DIRECT", "127.0.0.1")
    sent = len(b"HTTP/1.1 200 Connection established\r\n\r\n") + sum(map(len, messages))
    assert int(fields["size"]) == sent


def test_tunnel_one_mib_both_ways(labsquid, echo):
    payload = os.urandom(MIB)
    sock, rest = open_tunnel(labsquid.port, f"127.0.0.1:{echo.port}")
    errors = []

    def sender():
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=sender)
    t.start()
    with sock:
        got = recv_exactly(sock, MIB, rest)
        assert sock.recv(10) == b""
    t.join(5)
    assert errors == []
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_tunnel_early_data_after_connect_head(labsquid, echo):
    sock, rest = open_tunnel(labsquid.port, f"127.0.0.1:{echo.port}", early=b"early bird")
    with sock:
        assert recv_exactly(sock, 10, rest) == b"early bird"


def test_several_tunnels_at_once(labsquid, echo):
    tunnels = [open_tunnel(labsquid.port, f"127.0.0.1:{echo.port}") for _ in range(10)]
    for i, (sock, _rest) in enumerate(tunnels):
        sock.sendall(b"tunnel %d" % i)
    for i, (sock, rest) in enumerate(tunnels):
        msg = b"tunnel %d" % i
        assert recv_exactly(sock, len(msg), rest) == msg
        sock.close()


def test_connect_to_port_not_in_ssl_ports_is_denied(labsquid, origin):
    target = f"127.0.0.1:{origin.port}"
    with RawClient(labsquid.port) as c:
        c.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        resp = c.read_response()
    proof.record("security", "CONNECT to a port not in SSL_ports", 1,
                 int(resp.status != 403 or bool(origin.heads) or bool(origin.peers)),
                 unit="tunnels opened", detail="403 ERR_ACCESS_DENIED; the origin sees no "
                 "connection at all")
    assert resp.status == 403
    assert resp.header("X-Squid-Error").split()[0] == "ERR_ACCESS_DENIED"
    assert origin.heads == [] and origin.peers == []

    fields = connect_line(labsquid, target, "the denied CONNECT line")
    assert (fields["tag"], fields["status"]) == ("TCP_DENIED", "403")


def test_connect_refused(labsquid, refused_port):
    target = f"127.0.0.1:{refused_port}"
    with RawClient(labsquid.port) as c:
        c.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        resp = c.read_response()
    assert resp.status == 503
    assert resp.header("X-Squid-Error") == "ERR_CONNECT_FAIL 111"

    fields = connect_line(labsquid, target, "the refused CONNECT line")
    # squid 5.7: NONE_NONE/503 … HIER_DIRECT/127.0.0.1 for a tunnel that did not open
    assert (fields["tag"], fields["status"], fields["hier"], fields["peer"]) == \
        ("NONE_NONE", "503", "HIER_DIRECT", "127.0.0.1")


def test_connect_without_a_port_goes_to_443_as_in_squid(labsquid):
    """squid 5.7 reads ``CONNECT 127.0.0.1`` as 127.0.0.1:443 (refused here:
    503 ERR_CONNECT_FAIL) and logs it with the port."""
    with socket.socket() as probe:
        open_443 = probe.connect_ex(("127.0.0.1", 443)) == 0
    with RawClient(labsquid.port) as c:
        c.send(b"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        resp = c.read_response()
    if open_443:  # something listens there: the tunnel opens
        assert resp.status == 200
    else:
        assert (resp.status, resp.header("X-Squid-Error")) == (503, "ERR_CONNECT_FAIL 111")

    fields = connect_line(labsquid, "127.0.0.1:443", "the CONNECT line with :443")
    assert fields["status"] == str(resp.status)


def test_proxy_serves_after_tunnels(labsquid, origin):
    """Tunnels hand their sockets back cleanly: plain requests still work."""
    with RawClient(labsquid.port) as c:
        c.send(f"GET {origin.url('/bytes/10')} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert c.read_response().body == b"x" * 10
