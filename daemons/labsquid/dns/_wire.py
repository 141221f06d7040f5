"""DNS messages on the wire (RFC 1035): build one question, read one answer.

Theory of operation
-------------------
Pure functions, bytes in and values out; no sockets here.

``build_query`` makes the only message labsquid ever sends: a header with a
caller-chosen id and RD ("recursion desired") set, and exactly one question
``name IN A`` or ``name IN AAAA``.  Names are lowercased and IDNA-encoded
label by label, then checked the way a hostname in a URL must be: labels of
1..63 octets made of letters, digits, ``-`` and ``_`` (underscore appears in
real names, e.g. SRV-style hosts, and squid lets it through), at most 253
characters in all.  Anything else is a ``ValueError`` before a packet exists.

``parse_response`` reads what came back from a socket, which may be anything.
Every way a datagram can be malformed ends in ``DnsFormatError`` and nothing
else: reads are bounds-checked, and name compression pointers must point
strictly backwards past every earlier jump, so a pointer loop cannot spin.
Only the question and the answer section are read (authority and additional
records do not change which addresses a name has).  In the answer section
the CNAME chain is followed from the question's name, whatever the record
order, and the addresses of the asked type at the names on that chain are
returned with the smallest TTL seen along the way.  A truncated (TC) answer
is read as far as it goes and flagged; the resolver decides what to do.

Names in results are lowercase text.  Octets outside letters, digits, ``-``
and ``_`` are written ``\\DDD`` (master-file escaping), so that two different
wire names can never compare equal as text, a label holding a dot included.
"""

from __future__ import annotations

import encodings.idna
import functools
import ipaddress
import struct
from dataclasses import dataclass, field

A = 1
CNAME = 5
AAAA = 28
CLASS_IN = 1

# Response codes (RFC 1035 4.1.1) and squid's wording for them.
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = range(6)
_RCODE_TEXT = {
    FORMERR: "Format Error: The name server was unable to interpret the query.",
    SERVFAIL: "Server Failure: The name server was unable to process this query.",
    NXDOMAIN: "Name Error: The domain name does not exist.",
    NOTIMP: "Not Implemented: The name server does not support the requested kind of query.",
    REFUSED: "Refused: The name server refuses to perform the specified operation.",
}

_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")  # qtype, qclass
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_MAX_NAME_WIRE = 255  # RFC 1035 2.3.4, length octets included
_MAX_NAME_TEXT = 253
_MAX_CHAIN = 16  # CNAME hops followed inside one answer
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


class DnsFormatError(ValueError):
    """The datagram is not a well-formed DNS response."""


@dataclass(frozen=True)
class DnsAnswer:
    qid: int
    rcode: int
    addresses: list[str]
    ttl: int  # smallest TTL along the chain; 0 when there are no addresses
    truncated: bool
    qname: str = ""  # the question echoed by the server, checked by the resolver
    qtype: int = 0
    cnames: list[str] = field(default_factory=list)  # names the chain went through


def rcode_text(rcode: int) -> str:
    return _RCODE_TEXT.get(rcode, f"Unknown DNS error (rcode {rcode})")


# -- building ----------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # every request for a hostname asks (~1.3 us)
def canonical_name(name: str) -> str:
    """Lowercase ASCII form of a hostname; ``ValueError`` if it is not one.

    One trailing dot (a fully qualified name) is accepted and dropped.
    """
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 1024:  # a quick bound before IDNA work
        raise ValueError(f"invalid DNS name {name!r}")
    labels = []
    for label in name.split("."):
        if not label.isascii():
            try:
                label = encodings.idna.ToASCII(label).decode("ascii")
            except UnicodeError as exc:
                raise ValueError(f"invalid DNS label {label!r}: {exc}") from None
        raw = label.lower().encode("ascii")
        if not 1 <= len(raw) <= 63 or not _PLAIN.issuperset(raw):
            raise ValueError(f"invalid DNS label {label!r}")
        labels.append(raw.decode("ascii"))
    text = ".".join(labels)
    if len(text) > _MAX_NAME_TEXT:
        raise ValueError("DNS name longer than 253 characters")
    return text


def build_query(qid: int, name: str, qtype: int) -> bytes:
    """One recursive question ``name IN qtype`` with id ``qid``."""
    if not 0 <= qid <= 0xFFFF or not 0 <= qtype <= 0xFFFF:
        raise ValueError("query id and type are 16-bit values")
    wire = b"".join(
        bytes([len(label)]) + label.encode("ascii") for label in canonical_name(name).split(".")
    )
    header = _HEADER.pack(qid, _FLAG_RD, 1, 0, 0, 0)
    return header + wire + b"\x00" + struct.pack("!HH", qtype, CLASS_IN)


# -- parsing -----------------------------------------------------------------


def _label_text(raw: bytes) -> str:
    raw = raw.lower()  # bytes.lower() folds ASCII only, as DNS does
    if _PLAIN.issuperset(raw):
        return raw.decode("ascii")
    return "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in raw)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` and the offset just after it (pointers followed)."""
    labels: list[str] = []
    pos = offset
    end = -1  # where the name ends in the record, set at the first pointer
    floor = offset  # every jump must land strictly below the previous one
    wire_len = 1
    while True:
        if pos >= len(data):
            raise DnsFormatError("name runs past the end of the message")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise DnsFormatError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                raise DnsFormatError("compression pointer does not point backwards")
            if end < 0:
                end = pos + 2
            floor = pos = target
            continue
        if kind:
            raise DnsFormatError("unsupported label type")
        if length == 0:
            break
        raw = data[pos + 1 : pos + 1 + length]
        if len(raw) != length:
            raise DnsFormatError("label runs past the end of the message")
        wire_len += length + 1
        if wire_len > _MAX_NAME_WIRE:
            raise DnsFormatError("name longer than 255 octets")
        labels.append(_label_text(raw))
        pos += 1 + length
    return ".".join(labels), (end if end >= 0 else pos + 1)


def _unpack(fmt: struct.Struct, data: bytes, offset: int) -> tuple[int, ...]:
    if offset + fmt.size > len(data):
        raise DnsFormatError("message ends inside a fixed-size field")
    return fmt.unpack_from(data, offset)


def _address(qtype: int, rdata: bytes) -> str:
    if qtype == A and len(rdata) == 4:
        return str(ipaddress.IPv4Address(rdata))
    if qtype == AAAA and len(rdata) == 16:
        return str(ipaddress.IPv6Address(rdata))
    raise DnsFormatError("address record of the wrong length")


def parse_response(data: bytes) -> DnsAnswer:
    """Decode a response datagram; ``DnsFormatError`` for anything malformed."""
    qid, flags, qdcount, ancount, _ns, _ar = _unpack(_HEADER, data, 0)
    if not flags & _FLAG_QR:
        raise DnsFormatError("message is a query, not a response")
    if qdcount != 1:
        # Without the question there is nothing to match the answer against.
        raise DnsFormatError(f"response carries {qdcount} questions, not 1")
    truncated = bool(flags & _FLAG_TC)
    qname, pos = _read_name(data, _HEADER.size)
    qtype, _qclass = _unpack(_QUESTION_TAIL, data, pos)
    pos += _QUESTION_TAIL.size

    aliases: dict[str, tuple[str, int]] = {}
    found: dict[str, list[tuple[str, int]]] = {}
    for _ in range(ancount):
        if truncated and pos >= len(data):
            break  # a truncated answer simply stops; keep what arrived
        owner, pos = _read_name(data, pos)
        rtype, rclass, ttl, rdlength = _unpack(_RR_FIXED, data, pos)
        pos += _RR_FIXED.size
        if pos + rdlength > len(data):
            raise DnsFormatError("record data runs past the end of the message")
        if ttl & 0x80000000:
            ttl = 0  # RFC 2181 8: a TTL with the top bit set means zero
        if rclass == CLASS_IN and rtype == CNAME:
            target, after = _read_name(data, pos)
            if after != pos + rdlength:
                raise DnsFormatError("CNAME record length does not match its name")
            aliases.setdefault(owner, (target, ttl))
        elif rclass == CLASS_IN and rtype == qtype and qtype in (A, AAAA):
            found.setdefault(owner, []).append((_address(qtype, data[pos : pos + rdlength]), ttl))
        pos += rdlength

    addresses: list[str] = []
    cnames: list[str] = []
    min_ttl: int | None = None
    name = qname
    for _ in range(_MAX_CHAIN):
        for address, ttl in found.get(name, ()):
            if address not in addresses:
                addresses.append(address)
            min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
        if name not in aliases:
            break
        name, ttl = aliases[name]
        if name in cnames or name == qname:
            break  # an alias loop: what we have is all there is
        cnames.append(name)
        min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
    return DnsAnswer(
        qid=qid,
        rcode=flags & 0x000F,
        addresses=addresses,
        ttl=min_ttl if addresses and min_ttl is not None else 0,
        truncated=truncated,
        qname=qname,
        qtype=qtype,
        cnames=cnames,
    )
