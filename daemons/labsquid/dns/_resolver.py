"""A DNS client that lives inside the event loop, after squid's idns.

Theory of operation
-------------------
``resolve(host, callback)`` never blocks and never calls back from inside
itself: every answer is delivered with ``loop.call_soon`` (or from the
socket's readiness callback), so a caller has exactly one code path.  The
places an answer can come from, in order:

1. an IP literal (``[v6]`` brackets dropped) answers itself;
2. ``/etc/hosts``, re-read whenever its mtime, size or inode changes;
3. the cache: a positive entry lives ``min(record TTL, positive_ttl)``
   seconds, a failure of any kind ``negative_ttl`` seconds (squid's ipcache
   caches every failure, timeouts included);
4. the network: an A and an AAAA question are sent at once and the lookup
   completes when both are settled.  IPv4 addresses come first in the result.
   Concurrent lookups of one name share these two questions.

Sending (squid's ``idnsSendQuery`` schedule): try ``k`` of a question goes to
nameserver ``k mod N`` and waits ``base * 2**(k // N)`` before the next try,
with ``base = timeout / 6`` (squid's 5 s retransmit for its 30 s
``dns_timeout``).  So the first server is tried first, the next one after a
silence, and each full round waits twice as long.  ``timeout`` bounds the
whole question; when it passes, the question fails with ``Timeout``.  A
SERVFAIL/REFUSED/FORMERR/NOTIMP answer moves to the next untried server at
once; the last server's verdict stands.  NXDOMAIN is final.

Anti-spoofing: one non-blocking UDP socket per address family, bound by the
kernel to a random ephemeral port; 16-bit ids from ``secrets``, unique among
outstanding questions.  An answer is accepted only when its id names an
outstanding question, it came from a server that question was sent to, and
it repeats that question's name and type.  Anything else is dropped silently
(a forger learns nothing) and the real answer may still come.

No TCP fallback: a truncated answer's addresses are used as they are (512
octets hold dozens of A records); one with none counts as a server failure.

The hosts file is read with ordinary blocking I/O: it is a small local file,
read only when it changed, as squid reads it at configure time.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from labsquid.dns._hosts import parse_hosts, parse_resolv_conf
from labsquid.dns._wire import (
    AAAA,
    FORMERR,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    A,
    DnsAnswer,
    DnsFormatError,
    build_query,
    canonical_name,
    parse_response,
    rcode_text,
)
from labsquid.eventloop import READ, EventLoop, Timer

log = structlog.get_logger()

Callback = Callable[[list[str] | None, str | None], None]

TIMEOUT = "Timeout"
NO_RECORDS = "No DNS records"
CLOSED = "DNS resolver closed"
_RETRY_ELSEWHERE = frozenset({FORMERR, SERVFAIL, NOTIMP, REFUSED})
_RECV_BURST = 64  # datagrams read per readiness event, so a flood cannot starve the loop


@dataclass(eq=False)
class _Lookup:
    """One name being resolved: its two questions and everyone waiting for it."""

    name: str
    callbacks: list[Callback]
    results: dict[int, DnsAnswer | str] = field(default_factory=dict)


@dataclass(eq=False)
class _Query:
    """One outstanding UDP question (A or AAAA) of a lookup."""

    qid: int
    qtype: int
    lookup: _Lookup
    packet: bytes
    deadline: float
    tries: int = 0
    sent_to: set[tuple[str, int]] = field(default_factory=set)
    timer: Timer | None = None


@dataclass
class _CacheEntry:
    addresses: list[str] | None
    error: str | None
    expires: float


class _HostsFile:
    """``/etc/hosts``, parsed again only when the file changed."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._table: dict[str, list[str]] = {}
        self._next_check = 0.0

    def lookup(self, name: str) -> list[str] | None:
        now = time.monotonic()
        if now < self._next_check:
            return self._table.get(name)
        # A stat per lookup would be a syscall per request; once a second is
        # soon enough to notice an edited /etc/hosts.
        self._next_check = now + 1.0
        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                with open(self._path, encoding="utf-8", errors="replace") as f:
                    self._table = parse_hosts(f.read())
            except OSError:
                self._table = {}
        return self._table.get(name)


@functools.lru_cache(maxsize=4096)  # every request asks; ipaddress is slow
def _ip_literal(host: str) -> str | None:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _v4_first(addresses: list[str]) -> list[str]:
    return sorted(addresses, key=lambda a: ":" in a)  # stable: file/answer order kept


class Resolver:
    """Asynchronous hostname → addresses for one event loop (see module doc)."""

    def __init__(
        self,
        loop: EventLoop,
        *,
        hosts_file: str = "/etc/hosts",
        resolv_conf: str = "/etc/resolv.conf",
        nameservers: list[tuple[str, int]] | None = None,
        timeout: float = 30.0,
        positive_ttl: float = 6 * 3600,
        negative_ttl: float = 60.0,
        cache_size: int = 1024,
    ) -> None:
        self._loop = loop
        if nameservers is None:
            try:
                with open(resolv_conf, encoding="utf-8", errors="replace") as f:
                    nameservers = parse_resolv_conf(f.read())
            except OSError:
                nameservers = parse_resolv_conf("")
        if not nameservers:
            raise ValueError("at least one nameserver is needed")
        # Canonical address text, so the source check compares like with like.
        self.nameservers = [(str(ipaddress.ip_address(h)), p) for h, p in nameservers]
        self._timeout = timeout
        self._retransmit = timeout / 6
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._cache_size = cache_size
        self._hosts = _HostsFile(hosts_file)
        self._cache: OrderedDict[str, _CacheEntry] = OrderedDict()
        self._lookups: dict[str, _Lookup] = {}
        self._queries: dict[int, _Query] = {}
        self._sockets: dict[int, socket.socket] = {}
        self._closed = False

    # -- public ---------------------------------------------------------------
    def resolve(self, host: str, callback: Callback) -> None:
        """Call ``callback(addresses, None)`` or ``callback(None, error)`` later."""
        if self._closed:
            return self._reply(callback, None, CLOSED)
        literal = _ip_literal(host)
        if literal is not None:
            return self._reply(callback, [literal], None)
        try:
            name = canonical_name(host)
        except ValueError:
            return self._reply(callback, None, f"DNS domain '{host}' is invalid")
        from_hosts = self._hosts.lookup(name)
        if from_hosts:
            return self._reply(callback, _v4_first(from_hosts), None)
        entry = self._cache.get(name)
        if entry is not None:
            if entry.expires > time.monotonic():
                self._cache.move_to_end(name)
                return self._reply(callback, entry.addresses, entry.error)
            del self._cache[name]
        lookup = self._lookups.get(name)
        if lookup is not None:
            lookup.callbacks.append(callback)  # coalesced into the questions in flight
            return
        lookup = self._lookups[name] = _Lookup(name, [callback])
        for qtype in (A, AAAA):
            self._start_query(lookup, qtype)

    def cached(self, host: str) -> list[str] | None:
        """Addresses known for ``host`` without asking anyone (a literal,
        /etc/hosts, the cache), or None. The caller owns the list."""
        literal = _ip_literal(host)
        if literal is not None:
            return [literal]
        try:
            name = canonical_name(host)
        except ValueError:
            return None
        from_hosts = self._hosts.lookup(name)
        if from_hosts:
            return _v4_first(from_hosts)
        entry = self._cache.get(name)
        if entry is not None and entry.expires > time.monotonic() and entry.addresses:
            return list(entry.addresses)
        return None

    def close(self) -> None:
        """Release the sockets and timers; waiting callers get ``CLOSED``."""
        if self._closed:
            return
        self._closed = True
        for query in self._queries.values():
            if query.timer is not None:
                query.timer.cancel()
        self._queries.clear()
        for lookup in self._lookups.values():
            for callback in lookup.callbacks:
                self._reply(callback, None, CLOSED)
        self._lookups.clear()
        for sock in self._sockets.values():
            self._loop.remove(sock.fileno())
            sock.close()
        self._sockets.clear()

    # -- sending --------------------------------------------------------------
    def _reply(self, callback: Callback, addresses: list[str] | None, error: str | None) -> None:
        addresses = list(addresses) if addresses is not None else None  # callers own it
        self._loop.call_soon(lambda: callback(addresses, error))

    def _start_query(self, lookup: _Lookup, qtype: int) -> None:
        qid = secrets.randbelow(0x10000)
        while qid in self._queries:
            qid = secrets.randbelow(0x10000)
        query = _Query(
            qid=qid,
            qtype=qtype,
            lookup=lookup,
            packet=build_query(qid, lookup.name, qtype),
            deadline=time.monotonic() + self._timeout,
        )
        self._queries[qid] = query
        self._send(query)

    def _socket_for(self, address: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = self._sockets.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))  # random port
            self._sockets[family] = sock
            self._loop.add(sock.fileno(), READ, lambda _mask: self._on_readable(sock))
        return sock

    def _send(self, query: _Query) -> None:
        count = len(self.nameservers)
        server = self.nameservers[query.tries % count]
        wait = self._retransmit * 2 ** (query.tries // count)
        query.tries += 1
        query.sent_to.add(server)
        try:
            self._socket_for(server[0]).sendto(query.packet, server)
        except OSError as exc:
            # A full buffer or an unreachable network: as good as a lost datagram,
            # and the retransmit timer below copes with both.
            log.debug("dns_send_failed", server=server, error=str(exc))
        wait = max(0.0, min(wait, query.deadline - time.monotonic()))
        query.timer = self._loop.call_later(wait, lambda: self._on_timer(query))

    def _on_timer(self, query: _Query) -> None:
        if self._queries.get(query.qid) is not query:
            return
        if time.monotonic() >= query.deadline:
            self._settle(query, TIMEOUT)
        else:
            self._send(query)

    # -- receiving ------------------------------------------------------------
    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(_RECV_BURST):
            try:
                data, source = sock.recvfrom(4096)
            except BlockingIOError:
                return
            except OSError:
                continue  # a queued ICMP error; the datagrams behind it still matter
            self._on_datagram(data, source)

    def _on_datagram(self, data: bytes, source: tuple) -> None:
        try:
            answer = parse_response(data)
        except DnsFormatError as exc:
            log.debug("dns_bad_response", source=source, error=str(exc))
            return
        query = self._queries.get(answer.qid)
        sender = (str(ipaddress.ip_address(source[0])), source[1])
        if (
            query is None
            or sender not in query.sent_to
            or answer.qname != query.lookup.name
            or answer.qtype != query.qtype
        ):
            log.debug("dns_unexpected_response", source=sender, qid=answer.qid)
            return
        if answer.rcode in _RETRY_ELSEWHERE and query.tries < len(self.nameservers):
            self._cancel_timer(query)
            self._send(query)  # tries the next server, which has not been asked yet
            return
        if answer.rcode == NOERROR and answer.truncated and not answer.addresses:
            self._settle(query, rcode_text(SERVFAIL))
            return
        self._settle(query, answer if answer.rcode == NOERROR else rcode_text(answer.rcode))

    # -- completing -----------------------------------------------------------
    def _cancel_timer(self, query: _Query) -> None:
        if query.timer is not None:
            query.timer.cancel()
            query.timer = None

    def _settle(self, query: _Query, result: DnsAnswer | str) -> None:
        self._cancel_timer(query)
        del self._queries[query.qid]
        lookup = query.lookup
        lookup.results[query.qtype] = result
        if len(lookup.results) == 2:
            self._complete(lookup)

    def _complete(self, lookup: _Lookup) -> None:
        del self._lookups[lookup.name]
        answers = [lookup.results[t] for t in (A, AAAA)]  # A first: IPv4 leads
        addresses = [a for r in answers if isinstance(r, DnsAnswer) for a in r.addresses]
        now = time.monotonic()
        if addresses:
            ttl = min(r.ttl for r in answers if isinstance(r, DnsAnswer) and r.addresses)
            entry = _CacheEntry(addresses, None, now + min(ttl, self._positive_ttl))
        else:
            errors = [r for r in answers if isinstance(r, str)]
            # The most telling reason wins: NXDOMAIN, then any other failure.
            nxdomain = rcode_text(NXDOMAIN)
            error = nxdomain if nxdomain in errors else (errors[0] if errors else NO_RECORDS)
            entry = _CacheEntry(None, error, now + self._negative_ttl)
        self._cache[lookup.name] = entry
        self._cache.move_to_end(lookup.name)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        for callback in lookup.callbacks:
            self._reply(callback, entry.addresses, entry.error)
