"""The two system files the resolver reads: ``/etc/hosts`` and ``/etc/resolv.conf``.

Theory of operation
-------------------
Pure text parsers; the resolver does the reading (and notices when
``/etc/hosts`` changes).

hosts(5): each line is ``ADDRESS NAME [ALIAS...]``; ``#`` starts a comment
anywhere on a line.  Every name and alias maps, lowercased and without a
trailing dot, to the addresses of every line that lists it, in file order
(glibc returns all of them too).  Lines whose first field is not an IPv4 or
IPv6 address are skipped, like glibc does, rather than failing the file.

resolv.conf(5): only ``nameserver ADDRESS`` lines matter to labsquid.  As in
glibc, at most the first three (``MAXNS``) are used, the port is always 53,
a line whose address does not parse is ignored, and with none at all the
local server 127.0.0.1 is used.  ``search``/``domain``/``ndots`` are not
read: squid only appends search domains with ``dns_defnames on``, which is
off by default, and labsquid follows that default (names are asked as is).
"""

from __future__ import annotations

import ipaddress

MAXNS = 3  # glibc's limit on nameserver lines
DNS_PORT = 53
DEFAULT_NAMESERVERS: list[tuple[str, int]] = [("127.0.0.1", DNS_PORT)]


def _address(text: str) -> str | None:
    """Canonical text of an IP address (an IPv6 ``%zone`` kept), or None."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_hosts(text: str) -> dict[str, list[str]]:
    """``{name: [addresses]}`` from the text of a hosts(5) file."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        address = _address(fields[0])
        if address is None:
            continue
        for name in fields[1:]:
            key = name.lower().rstrip(".")
            if not key:
                continue
            addresses = table.setdefault(key, [])
            if address not in addresses:
                addresses.append(address)
    return table


def parse_resolv_conf(text: str) -> list[tuple[str, int]]:
    """The ``(address, 53)`` nameservers of a resolv.conf(5) text, in order."""
    servers: list[tuple[str, int]] = []
    for line in text.splitlines():
        fields = line.split()
        # glibc takes ';' and '#' as comment starters only at the line start.
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        address = _address(fields[1])
        if address is not None and len(servers) < MAXNS:
            servers.append((address, DNS_PORT))
    return servers or list(DEFAULT_NAMESERVERS)
