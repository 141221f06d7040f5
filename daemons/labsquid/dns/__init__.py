"""Name resolution that never blocks the event loop.

labsquid's serving processes are single-threaded epoll loops that fork, so
they can neither call a blocking ``getaddrinfo`` (it would freeze every
connection of the process) nor hand it to a thread.  Like squid's internal
DNS client (idns), labsquid speaks DNS over UDP itself, inside the loop:

* ``_wire``     — sans-I/O RFC 1035 codec: ``build_query``, ``parse_response``;
* ``_hosts``    — sans-I/O parsers for ``/etc/hosts`` and ``/etc/resolv.conf``;
* ``_resolver`` — ``Resolver``: literals, hosts file, cache, UDP questions.
"""

from labsquid.dns._hosts import parse_hosts, parse_resolv_conf
from labsquid.dns._resolver import CLOSED, NO_RECORDS, TIMEOUT, Resolver
from labsquid.dns._wire import (
    AAAA,
    NXDOMAIN,
    A,
    DnsAnswer,
    DnsFormatError,
    build_query,
    canonical_name,
    parse_response,
    rcode_text,
)

__all__ = [
    "AAAA",
    "CLOSED",
    "NO_RECORDS",
    "NXDOMAIN",
    "TIMEOUT",
    "A",
    "DnsAnswer",
    "DnsFormatError",
    "Resolver",
    "build_query",
    "canonical_name",
    "parse_hosts",
    "parse_resolv_conf",
    "parse_response",
    "rcode_text",
]
