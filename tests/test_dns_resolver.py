"""The resolver against real UDP DNS servers on 127.0.0.1.

The test server is registered in the same event loop as the resolver, so it
can only ever answer if the resolver never blocks that loop: a blocking
``recv`` in the resolver would hang these tests instead of passing them.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable

import pytest

from labsquid.dns import AAAA, CLOSED, NO_RECORDS, NXDOMAIN, TIMEOUT, A, Resolver, rcode_text
from labsquid.eventloop import READ, EventLoop

CNAME = 5
FORGED = "6.6.6.6"


def _name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\x00"


class FakeDns:
    """A DNS server answering from ``records``: ``{name: [(type, value, ttl)]}``.

    ``mode`` is "answer", "drop", or an rcode number to answer with; ``delay``
    postpones every reply; ``spoof`` ("id", "port" or "question") first sends a
    forged answer for FORGED and the real one 50 ms later.
    """

    def __init__(self, loop: EventLoop, records: dict[str, list[tuple[int, str, int]]]) -> None:
        self.loop = loop
        self.records = records
        self.mode: str | int = "answer"
        self.delay = 0.0
        self.spoof: str | None = None
        self.queries: list[tuple[str, int]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the "wrong port"
        self.other.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        loop.add(self.sock.fileno(), READ, self._on_read)

    def close(self) -> None:
        self.loop.remove(self.sock.fileno())
        self.sock.close()
        self.other.close()

    def count(self, qtype: int | None = None) -> int:
        return sum(1 for _, t in self.queries if qtype is None or t == qtype)

    def _on_read(self, _mask: int) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except BlockingIOError:
                return
            self._on_query(data, peer)

    def _on_query(self, data: bytes, peer: tuple[str, int]) -> None:
        qid = struct.unpack("!H", data[:2])[0]
        question = data[12:]
        labels, pos = [], 0
        while question[pos]:
            labels.append(question[pos + 1 : pos + 1 + question[pos]].decode())
            pos += 1 + question[pos]
        name = ".".join(labels)
        qtype = struct.unpack("!H", question[pos + 1 : pos + 3])[0]
        self.queries.append((name, qtype))
        if self.mode == "drop":
            return
        real = self._reply(qid, question, name, qtype)
        if self.spoof is None:
            self._send_later(self.delay, self.sock, real, peer)
            return
        forged_id = qid ^ 1 if self.spoof == "id" else qid
        forged_question, owner = question, name
        if self.spoof == "question":
            owner = "evil.test"
            forged_question = _name(owner) + question[pos + 1 :]
        forged = self._header(forged_id, 0, 1) + forged_question
        forged += self._rr(owner, qtype, FORGED) if qtype == A else b""
        forged = forged[:6] + struct.pack("!H", 1 if qtype == A else 0) + forged[8:]
        from_sock = self.other if self.spoof == "port" else self.sock
        self._send_later(0, from_sock, forged, peer)
        self._send_later(0.05, self.sock, real, peer)

    @staticmethod
    def _header(qid: int, rcode: int, ancount: int) -> bytes:
        return struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, ancount, 0, 0)

    @staticmethod
    def _rr(owner: str, rtype: int, value: str, ttl: int = 60) -> bytes:
        if rtype == CNAME:
            rdata = _name(value)
        else:
            family = socket.AF_INET if rtype == A else socket.AF_INET6
            rdata = socket.inet_pton(family, value)
        return _name(owner) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata

    def _reply(self, qid: int, question: bytes, name: str, qtype: int) -> bytes:
        if isinstance(self.mode, int):
            return self._header(qid, self.mode, 0) + question
        answers, owner = [], name
        for _ in range(8):  # put the CNAME chain in, as a recursive server does
            for rtype, value, ttl in self.records.get(owner, []):
                if rtype in (qtype, CNAME):
                    answers.append(self._rr(owner, rtype, value, ttl))
            cname = [v for t, v, _ in self.records.get(owner, []) if t == CNAME]
            if not cname:
                break
            owner = cname[0]
        rcode = 0 if name in self.records else NXDOMAIN
        return self._header(qid, rcode, len(answers)) + question + b"".join(answers)

    def _send_later(self, delay: float, sock: socket.socket, data: bytes, peer: tuple) -> None:
        if delay:
            self.loop.call_later(delay, lambda: sock.sendto(data, peer))
        else:
            sock.sendto(data, peer)


class Results:
    """Collects callback invocations."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str] | None, str | None]] = []

    def __call__(self, addresses: list[str] | None, error: str | None) -> None:
        self.calls.append((addresses, error))


def run_until(loop: EventLoop, done: Callable[[], bool], limit: float = 5.0) -> float:
    """Drive the loop until ``done()``; returns the time it took."""
    start = time.monotonic()
    while not done():
        assert time.monotonic() - start < limit, "callback never came"
        loop.run_once(0.05)
    return time.monotonic() - start


def ask(loop: EventLoop, resolver: Resolver, host: str) -> tuple[list[str] | None, str | None]:
    results = Results()
    resolver.resolve(host, results)
    assert results.calls == []  # never synchronously, even from the cache
    run_until(loop, lambda: bool(results.calls))
    assert len(results.calls) == 1
    return results.calls[0]


RECORDS: dict[str, list[tuple[int, str, int]]] = {
    "dual.test": [(A, "192.0.2.1", 300), (AAAA, "2001:db8::1", 300), (A, "192.0.2.2", 300)],
    "v6only.test": [(AAAA, "2001:db8::6", 300)],
    "empty.test": [],
    "www.test": [(CNAME, "edge.test", 300)],
    "edge.test": [(CNAME, "real.test", 300)],
    "real.test": [(A, "198.51.100.7", 300)],
    "short.test": [(A, "192.0.2.50", 1)],
}


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


@pytest.fixture
def server(loop):
    server = FakeDns(loop, RECORDS)
    yield server
    server.close()


@pytest.fixture
def make_resolver(loop, server, tmp_path):
    made: list[Resolver] = []
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")

    def make(**kwargs) -> Resolver:
        kwargs.setdefault("nameservers", [server.address])
        kwargs.setdefault("hosts_file", str(hosts))
        kwargs.setdefault("timeout", 2.0)
        resolver = Resolver(loop, **kwargs)
        made.append(resolver)
        return resolver

    yield make
    for resolver in made:
        resolver.close()


@pytest.mark.parametrize(
    "host, expected",
    [("192.0.2.9", "192.0.2.9"), ("[2001:DB8::A]", "2001:db8::a"), ("::1", "::1")],
)
def test_ip_literals_answer_without_a_query(loop, server, make_resolver, host, expected) -> None:
    assert ask(loop, make_resolver(), host) == ([expected], None)
    assert server.queries == []


def test_invalid_name(loop, server, make_resolver) -> None:
    assert ask(loop, make_resolver(), "bad_na me!") == (None, "DNS domain 'bad_na me!' is invalid")
    assert server.queries == []


def test_hosts_file_first_and_reread_on_change(loop, server, make_resolver, tmp_path) -> None:
    hosts = tmp_path / "etc-hosts"
    hosts.write_text("::1 myhost\n10.9.9.9 MyHost.lab myhost dual.test\n")
    resolver = make_resolver(hosts_file=str(hosts))
    assert ask(loop, resolver, "myhost") == (["10.9.9.9", "::1"], None)
    assert ask(loop, resolver, "DUAL.test.") == (["10.9.9.9"], None)  # hosts beats DNS
    hosts.write_text("10.8.8.8 myhost\n")
    later = time.time() + 10  # a new mtime even on coarse-grained filesystems
    os.utime(hosts, (later, later))
    # The file is looked at (stat) at most once a second, not once per request.
    time.sleep(1.1)
    assert ask(loop, resolver, "myhost") == (["10.8.8.8"], None)
    # Gone from the file, so DNS is asked (and does not know it).
    assert ask(loop, resolver, "myhost.lab") == (None, rcode_text(NXDOMAIN))
    assert ("myhost.lab", A) in server.queries


def test_a_and_aaaa_ipv4_first(loop, server, make_resolver) -> None:
    addresses, error = ask(loop, make_resolver(), "Dual.Test")
    assert error is None
    assert addresses == ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
    assert sorted(server.queries) == [("dual.test", A), ("dual.test", AAAA)]


def test_ipv6_only_and_no_records(loop, server, make_resolver) -> None:
    resolver = make_resolver()
    assert ask(loop, resolver, "v6only.test") == (["2001:db8::6"], None)
    assert ask(loop, resolver, "empty.test") == (None, NO_RECORDS)


def test_cache_hit_sends_nothing(loop, server, make_resolver) -> None:
    resolver = make_resolver()
    first = ask(loop, resolver, "dual.test")
    assert server.count() == 2
    assert ask(loop, resolver, "dual.test") == first
    assert server.count() == 2
    assert resolver.cached("DUAL.test") == first[0]


def test_record_ttl_expires(loop, server, make_resolver) -> None:
    resolver = make_resolver()
    ask(loop, resolver, "short.test")  # TTL 1 s
    ask(loop, resolver, "short.test")
    assert server.count(A) == 1
    time.sleep(1.05)
    assert ask(loop, resolver, "short.test") == (["192.0.2.50"], None)
    assert server.count(A) == 2


def test_positive_ttl_caps_record_ttl(loop, server, make_resolver) -> None:
    resolver = make_resolver(positive_ttl=0.2)
    ask(loop, resolver, "dual.test")  # TTL 300 s, capped to 0.2 s
    ask(loop, resolver, "dual.test")
    assert server.count(A) == 1
    time.sleep(0.25)
    ask(loop, resolver, "dual.test")
    assert server.count(A) == 2


def test_negative_answers_cached_for_negative_ttl(loop, server, make_resolver) -> None:
    resolver = make_resolver(negative_ttl=0.3)
    nxdomain = (None, rcode_text(NXDOMAIN))
    assert ask(loop, resolver, "missing.test") == nxdomain
    assert nxdomain[1].startswith("Name Error")
    assert ask(loop, resolver, "missing.test") == nxdomain
    assert server.count() == 2  # one A, one AAAA: the second ask was cached
    time.sleep(0.35)
    assert ask(loop, resolver, "missing.test") == nxdomain
    assert server.count() == 4


def test_timeout_after_configured_time_with_retransmits(loop, server, make_resolver) -> None:
    server.mode = "drop"
    resolver = make_resolver(timeout=0.6)
    results = Results()
    resolver.resolve("dual.test", results)
    elapsed = run_until(loop, lambda: bool(results.calls))
    assert results.calls == [(None, TIMEOUT)]
    assert 0.55 <= elapsed < 1.0
    # Sent at 0, 0.1 and 0.3 s (waits of timeout/6, doubled each round).
    assert server.count(A) == 3 and server.count(AAAA) == 3


def test_failover_to_second_nameserver(loop, server, make_resolver) -> None:
    silent = FakeDns(loop, RECORDS)
    silent.mode = "drop"
    try:
        resolver = make_resolver(nameservers=[silent.address, server.address], timeout=1.2)
        start = time.monotonic()
        addresses, error = ask(loop, resolver, "real.test")
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert (addresses, error) == (["198.51.100.7"], None)
    assert silent.count() == 2 and server.count() == 2
    assert 0.15 <= elapsed < 0.6  # the first retransmit, timeout/6 = 0.2 s, went elsewhere


def test_servfail_moves_on_at_once(loop, server, make_resolver) -> None:
    failing = FakeDns(loop, RECORDS)
    failing.mode = 2  # SERVFAIL
    try:
        resolver = make_resolver(nameservers=[failing.address, server.address], timeout=6.0)
        start = time.monotonic()
        assert ask(loop, resolver, "real.test") == (["198.51.100.7"], None)
        assert time.monotonic() - start < 0.5  # not the 1 s retransmit wait
    finally:
        failing.close()


def test_servfail_from_last_server_is_the_answer(loop, server, make_resolver) -> None:
    server.mode = 2
    addresses, error = ask(loop, make_resolver(), "real.test")
    assert addresses is None and error.startswith("Server Failure")


def test_concurrent_lookups_coalesce(loop, server, make_resolver) -> None:
    server.delay = 0.1
    resolver = make_resolver()
    results = [Results() for _ in range(3)]
    for r in results:
        resolver.resolve("dual.test", r)
    run_until(loop, lambda: all(r.calls for r in results))
    expected = [(["192.0.2.1", "192.0.2.2", "2001:db8::1"], None)]
    assert [r.calls for r in results] == [expected] * 3
    assert server.count() == 2


@pytest.mark.parametrize("spoof", ["id", "port", "question"])
def test_spoofed_answers_ignored(loop, server, make_resolver, spoof) -> None:
    server.spoof = spoof
    addresses, error = ask(loop, make_resolver(), "real.test")
    assert error is None
    assert addresses == ["198.51.100.7"]  # not FORGED, which arrived first


def test_cname_chain(loop, server, make_resolver) -> None:
    assert ask(loop, make_resolver(), "www.test") == (["198.51.100.7"], None)


def test_close_releases_socket_and_answers_waiters(loop, server, make_resolver) -> None:
    server.mode = "drop"
    resolver = make_resolver()
    results = Results()
    resolver.resolve("dual.test", results)
    run_until(loop, lambda: server.count() == 2)
    fds = [s.fileno() for s in resolver._sockets.values()]
    assert fds and all(loop.watching(fd) for fd in fds)
    resolver.close()
    assert not any(loop.watching(fd) for fd in fds)
    run_until(loop, lambda: bool(results.calls))
    assert results.calls == [(None, CLOSED)]
    later = Results()
    resolver.resolve("dual.test", later)
    run_until(loop, lambda: bool(later.calls))
    assert later.calls == [(None, CLOSED)]


def test_resolv_conf_read_and_default(loop, tmp_path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search lab\nnameserver 192.0.2.53\n")
    assert Resolver(loop, resolv_conf=str(conf)).nameservers == [("192.0.2.53", 53)]
    conf.write_text("options ndots:1\n")
    assert Resolver(loop, resolv_conf=str(conf)).nameservers == [("127.0.0.1", 53)]


def test_source_port_is_random_per_resolver(loop, server, make_resolver) -> None:
    ports = set()
    for _ in range(3):
        resolver = make_resolver()
        ask(loop, resolver, "real.test")
        ports.update(s.getsockname()[1] for s in resolver._sockets.values())
    assert len(ports) == 3 and 53 not in ports
