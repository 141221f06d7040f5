"""The ``src`` and ``dst`` acl types: sets of IP addresses.

Theory of operation
-------------------
Squid keeps every address as IPv6, IPv4 ones mapped into ``::ffff:0:0/96``, and
so do we: an acl value (address, CIDR, dotted netmask, ``a-b`` range, or one of
the words ``all``/``ipv4``/``ipv6``) becomes an interval of 128-bit integers.
The intervals of one acl are sorted and merged once, so a lookup is one
``bisect``.  The mapping is what makes ``all`` and ``::/0`` match IPv4 clients,
as in squid, and lets an IPv4 client seen as ``::ffff:a.b.c.d`` on a dual-stack
socket match IPv4 rules.

A range *with* a mask (``a-b/m``) keeps squid's odd meaning: the client address
is masked, then compared with the range; those few are checked one by one.

Values are never resolved: squid looks hostnames up with getaddrinfo() while
parsing, which would make compiling do I/O, so a hostname is an error here.

``dst`` matches the addresses of the request's host: an IP-literal host is its
own address, otherwise ``ctx.dst`` must have been filled in by a resolver (it
answers None until then).  With ``-n`` nothing is resolved and a named host
simply does not match.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from functools import lru_cache

from labsquid.acl._base import AccessContext, IPAddress, Matcher, Problems, Values

_TOP = (1 << 128) - 1
_V4_BASE = 0xFFFF << 32  # ::ffff:0:0, where squid maps IPv4

# squid's "ipv6": the IPv6 unicast space (masks as in src/acl/Ip.cc)
_IPV6_UNICAST = ("1000::/4", "2000::/3", "4000::/2", "8000::/2", "c000::/3", "e000::/4",
                 "fc00::/7", "fe80::/10")
# Old spellings squid rewrites to "all", loudly.
_ALL_SPELLINGS = frozenset({"0/0", "0.0.0.0/0", "0.0.0.0/0.0.0.0", "0.0.0.0-255.255.255.255",
                            "0.0.0.0-0.0.0.0/0"})

Interval = tuple[int, int]
MaskedRange = tuple[int, int, int]  # (mask, low, high)


def key(addr: IPAddress) -> int:
    """An address as a point of squid's single IPv6 space."""
    # isinstance, not ``addr.version``: a property call costs more, and the
    # src acls of squid's default rules run this twice per request.
    if isinstance(addr, ipaddress.IPv4Address):
        return _V4_BASE + int(addr)
    return int(addr)


def _prefix_interval(start: int, length: int) -> Interval:
    host_bits = 128 - length
    low = (start >> host_bits) << host_bits
    return low, low | ((1 << host_bits) - 1)


def _network(text: str) -> Interval:
    net = ipaddress.ip_network(text)
    if net.version == 4:
        return _prefix_interval(_V4_BASE + int(net.network_address), net.prefixlen + 96)
    return _prefix_interval(int(net.network_address), net.prefixlen)


_SPECIALS: dict[str, list[Interval]] = {
    "all": [(0, _TOP)],
    "ipv4": [_prefix_interval(_V4_BASE, 96)],
    "ipv6": [_network(n) for n in _IPV6_UNICAST],
}


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _mask_bits(text: str, version: int) -> tuple[int, bool] | None:
    """Prefix length in squid's 128-bit space, and whether it was a dotted netmask."""
    offset = 96 if version == 4 else 0
    if text.isdigit():
        bits = int(text)
        return (bits + offset, False) if bits <= 128 - offset else None
    if version == 4:
        try:  # ip_network refuses non-contiguous netmasks, as it should
            return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen + offset, True
        except ValueError:
            return None
    return None


class _Parsed:
    __slots__ = ("intervals", "masked")

    def __init__(self) -> None:
        self.intervals: list[Interval] = []
        self.masked: list[MaskedRange] = []


def _parse_value(token: str, out: _Parsed, values: Values, label: str,
                 problems: Problems) -> None:
    where = values.where
    if token in _SPECIALS:
        out.intervals.extend(_SPECIALS[token])
        return
    if token in _ALL_SPELLINGS:
        problems.warn(where, f"{label}: '{token}' needs to be replaced by the term 'all'")
        out.intervals.extend(_SPECIALS["all"])
        return
    body, _, mask_text = token.partition("/")
    first_text, dash, second_text = body.partition("-")
    first = _ip(first_text)
    if first is None:
        if not dash and not mask_text:
            problems.error(where, f"{label}: bad host/IP '{token}': acl values must be "
                                  "addresses, hostnames are not resolved")
        else:
            problems.error(where, f"{label}: unknown first address in '{token}'")
        return
    second = _ip(second_text) if dash else first
    if second is None or second.version != first.version:
        problems.error(where, f"{label}: unknown second address in '{token}'")
        return
    bits, dotted = 128, False
    if mask_text or token.endswith("/"):
        found = _mask_bits(mask_text, first.version)
        if found is None:
            problems.error(where, f"{label}: unknown netmask '{mask_text}' in '{token}'")
            return
        bits, dotted = found
        if dotted:
            problems.warn(where, f"{label}: netmasks are deprecated, use CIDR masks: '{token}'")
    mask = _TOP ^ ((1 << (128 - bits)) - 1)
    low, high = key(first), key(second)
    if low > high:
        problems.error(where, f"{label}: bad range '{token}': first address is above the second")
        return
    if (low & mask) != low or (dash and (high & mask) != high):
        problems.warn(where, f"{label}: netmask masks away part of the specified IP in '{token}'")
    if not dash:
        out.intervals.append(_prefix_interval(low, bits))
    elif bits == 128:
        out.intervals.append((low, high))
    else:  # squid masks the client address first, then compares with the range
        out.masked.append((mask, low & mask, high & mask))


class AddressSet:
    """Sorted, merged intervals of squid's address space; ``addr in set`` is a bisect."""

    __slots__ = ("_starts", "_ends", "_masked")

    def __init__(self, intervals: list[Interval], masked: list[MaskedRange]) -> None:
        starts: list[int] = []
        ends: list[int] = []
        for low, high in sorted(intervals):
            if ends and low <= ends[-1] + 1:
                ends[-1] = max(ends[-1], high)
            else:
                starts.append(low)
                ends.append(high)
        self._starts, self._ends, self._masked = starts, ends, tuple(masked)

    def __contains__(self, addr: IPAddress) -> bool:
        point = key(addr)
        i = bisect_right(self._starts, point) - 1
        if i >= 0 and point <= self._ends[i]:
            return True
        if not self._masked:  # the usual case: skip making a generator
            return False
        return any(low <= (point & mask) <= high for mask, low, high in self._masked)


def address_set(lines: list[Values], label: str, problems: Problems) -> AddressSet:
    """Compile the values of every line of one address acl."""
    parsed = _Parsed()
    for values in lines:
        for token in values.values:
            _parse_value(token, parsed, values, label, problems)
    return AddressSet(parsed.intervals, parsed.masked)


@lru_cache(maxsize=4096)
def literal_ip(host: str) -> IPAddress | None:
    """The address an IP-literal host names (``[v6]`` brackets allowed), else None."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return _ip(host)


def compile_src(lines: list[Values], label: str, problems: Problems) -> Matcher:
    addresses = address_set(lines, label, problems)

    def match(ctx: AccessContext) -> bool:
        return ctx.src in addresses

    return match


def compile_dst(lines: list[Values], label: str, problems: Problems) -> Matcher:
    addresses = address_set(lines, label, problems)
    no_lookup = any("-n" in values.options for values in lines)

    def match(ctx: AccessContext) -> bool | None:
        literal = literal_ip(ctx.host)
        if literal is not None:
            return literal in addresses
        if no_lookup:
            return False
        if ctx.dst is None:
            return None  # the caller resolves ctx.host and asks again
        return any(addr in addresses for addr in ctx.dst)

    return match
