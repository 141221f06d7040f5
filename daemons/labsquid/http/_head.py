"""Parsing a message head: start line and field lines (RFC 9112 §2-§5).

Theory of operation
-------------------
The reader cuts the head at the first CRLFCRLF and hands it here whole, so a
head is parsed with a handful of C-level bytes operations: ``split(b"\\r\\n")``
yields the lines, one ``translate`` over the whole head proves it holds no
control byte but HTAB and those CRLFs (`check_head_bytes`), ``partition``
splits each field, and field names are validated once then remembered. No
per-byte Python loop, no regex on the hot path.

This parser sits in front of an origin that re-parses what we forward, so
wherever RFC 9112 lets a recipient choose between leniency and rejection we
reject, and never "repair" a message into something other parsers could read
differently:

* bare LF line endings are rejected (§2.2 allows accepting them, but a proxy
  that accepts LF while the origin only splits on CRLF disagrees on where a
  field ends); a bare CR anywhere in the head is rejected (§2.2 MUST);
* obs-fold continuation lines are rejected (§5.2 allows 400 or unfolding);
* whitespace between a field name and the colon is rejected (§5.1 MUST), as
  is whitespace before the first field line (§2.2);
* field values may hold VCHAR, obs-text, SP and HTAB only (never NUL/CR/LF or
  other controls), with surrounding OWS removed (§5.1); one ``translate``
  over the whole head enforces that, and the CRLF-only line endings;
* request-targets are VCHAR only: no spaces, no controls, no obs-text;
* only HTTP/1.0 and HTTP/1.1 are spoken; another well-formed version is 505.

A method is a token of at most 32 characters, squid's own limit.  Its case
is kept (RFC 9110 §9.1): squid's relaxed parser forwards ``get`` as GET, which
is such a repair.

Only the error path is allowed to be slow: it re-examines the input to say
precisely what was wrong.
"""

from __future__ import annotations

from ._abnf import (
    FIELD_VALUE,
    FIELD_VALUE_CLASS,
    OWS,
    TCHAR,
    TCHAR_CLASS,
    VCHAR_CLASS,
    class_table,
)
from ._events import (
    ERR_INVALID_RESP,
    ERR_INVALID_URL,
    ERR_PROTOCOL_UNKNOWN,
    ERR_TOO_BIG,
    ERR_UNSUP_HTTPVERSION,
    ProtocolError,
)
from ._headers import Headers

_VERSIONS = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}
# squid reads at most this many method characters; a longer one is not HTTP.
MAX_METHOD = 32
# A request line's bytes: anything but a control (SP separates its parts).
_REQUEST_LINE_CLASS = class_table(bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100)) + b" ")
_TCHAR_BYTES = frozenset(TCHAR)
# Bytes allowed anywhere in a head, bar the CRLFs between lines.
_HEAD_BYTES = FIELD_VALUE
# Valid field names seen so far -> lowercased: most heads repeat the same few
# dozen names, and a dict hit replaces both validation and lower(). Bounded,
# and only ever holds valid tokens, so junk names cannot poison it.
_NAMES: dict[bytes, bytes] = {}
_NAMES_MAX = 2048
# Whole field lines seen lately -> their parsed (lowercased name, name, value):
# clients and origins repeat most lines verbatim (Host, User-Agent, Accept-*,
# Server, Content-Type, Connection...), and a hit skips partition, lookup and
# strip. Only lines that parsed are stored, and a line's bytes still pass the
# whole-head byte check first, so a hit is a line that would parse the same.
# Emptied when full: lines that change (Date) must not crowd the steady ones out.
_LINES: dict[bytes, tuple[bytes, bytes, bytes]] = {}
_LINES_MAX = 1024
_LINE_CACHED_MAX = 128  # longer lines are rare repeats and would cost memory


def check_head_bytes(head: bytes, crlf_count: int) -> None:
    """No control bytes in `head` but HTAB and the `crlf_count` CRLFs splitting it.

    One ``translate`` deletes every allowed byte; a valid head leaves exactly
    the CRLF separators. This covers bare CR, bare LF, NUL and other controls
    in every line at once, so field values need no check of their own.
    Deletion, not a class table (see `_abnf`): over a whole head, building
    the deletion table costs less than a second pass for ``isalpha``.
    """
    if head.translate(None, _HEAD_BYTES) != b"\r\n" * crlf_count:
        raise _head_bytes_error(head)


def _head_bytes_error(head: bytes) -> ProtocolError:
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf:
        return ProtocolError("bare CR in message head")
    if head.count(b"\n") != crlf:
        return ProtocolError("bare LF line ending in message head")
    for line in head.split(b"\r\n"):
        if line and not line.translate(FIELD_VALUE_CLASS).isalpha():
            return ProtocolError(f"control character in line {line[:40]!r}")
    raise AssertionError("check_head_bytes failed on a clean head")


def _version_error(version: bytes, line: bytes) -> ProtocolError:
    if (
        len(version) == 8
        and version[:5] == b"HTTP/"
        and version[5:6].isdigit()
        and version[6:7] == b"."
        and version[7:8].isdigit()
    ):
        return ProtocolError(f"unsupported HTTP version {version!r}", 505, ERR_UNSUP_HTTPVERSION)
    if b" HTTP/" not in line:
        return ProtocolError("not an HTTP request", 400, ERR_PROTOCOL_UNKNOWN)
    return ProtocolError(f"malformed HTTP version {version!r}")


# squid 5.7's known methods (src/http/MethodType.h as Debian builds it: no
# PATCH, no MKCALENDAR; "_" in the enum names is "-").  With its default
# relaxed_header_parser, squid recognises these in any case and uses the
# upper-case name from then on: in acls, in its log, upstream.  So does
# labsquid, which also keeps an origin that ignores case from reading a
# "head" request as HEAD while the proxy frames its reply as a GET's.  Any
# other token is an extension method and stays as sent (RFC 9110 §9.1).
KNOWN_METHODS = frozenset({
    b"GET", b"POST", b"PUT", b"HEAD", b"CONNECT", b"TRACE", b"OPTIONS", b"DELETE",
    b"CHECKOUT", b"CHECKIN", b"UNCHECKOUT", b"MKWORKSPACE", b"VERSION-CONTROL", b"REPORT",
    b"UPDATE", b"LABEL", b"MERGE", b"BASELINE-CONTROL", b"MKACTIVITY", b"PROPFIND",
    b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH", b"PRI", b"PURGE",
})


def canonical_method(method: bytes) -> bytes:
    """A known method in upper case, whatever case it came in; others as sent."""
    if method in KNOWN_METHODS:  # nearly always: the one set lookup
        return method
    upper = method.upper()
    return upper if upper in KNOWN_METHODS else method


def logged_method(start: bytes) -> bytes:
    """The method a refused head's log line names, as squid's does: the token
    its start line begins with, at most ``MAX_METHOD`` characters (``hello``
    for telnet's hello); empty when there is none."""
    token = start[:MAX_METHOD]
    end = 0
    while end < len(token) and token[end] in _TCHAR_BYTES:
        end += 1
    return canonical_method(token[:end])


def parse_request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """``method SP request-target SP HTTP-version`` -> (method, target, b"1.x")."""
    parts = line.split(b" ")
    method = parts[0]
    if method and not method.translate(TCHAR_CLASS).isalpha() or len(method) > MAX_METHOD:
        # Same verdict as check_request_prefix: no method, no HTTP (telnet,
        # a TLS ClientHello...); squid answers ERR_PROTOCOL_UNKNOWN.
        raise ProtocolError("not an HTTP request", 400, ERR_PROTOCOL_UNKNOWN)
    method = canonical_method(method)
    if line and not line.translate(_REQUEST_LINE_CLASS).isalpha():
        # squid reads the line left to right: a control byte after the method
        # ends it there, whatever follows (a version, more spaces).
        raise ProtocolError("control character in request line")
    if len(parts) == 3:
        target, version = parts[1], parts[2]
        http_version = _VERSIONS.get(version)
        if http_version is None:
            exc = _version_error(version, line)
            if method and target.translate(VCHAR_CLASS).isalpha():
                exc.request_line = (method, target)  # squid logs both
            raise exc
        if not method:
            raise ProtocolError("whitespace before the method")
        if not target.translate(VCHAR_CLASS).isalpha():
            raise ProtocolError("invalid character in request-target", 400, ERR_INVALID_URL)
        return method, target, http_version
    if b" HTTP/" not in line:  # "hello", HTTP/0.9's "GET /"
        raise ProtocolError("not an HTTP request", 400, ERR_PROTOCOL_UNKNOWN)
    if b"" in parts:
        raise ProtocolError("extra whitespace in request line")
    if not parts[-1].startswith(b"HTTP/"):
        raise ProtocolError("garbage after the HTTP version")
    raise ProtocolError("whitespace in request-target", 400, ERR_INVALID_URL)


def check_request_prefix(prefix: bytes) -> None:
    """Reject early what cannot start a request line (no CRLF seen yet).

    Lets a TLS ClientHello or a telnet session fail on its first packet
    rather than after `max_header_size` bytes.
    """
    method = prefix.partition(b" ")[0]
    if method and not method.translate(TCHAR_CLASS).isalpha() or len(method) > MAX_METHOD:
        raise ProtocolError("not an HTTP request", 400, ERR_PROTOCOL_UNKNOWN)


def parse_status_line(line: bytes) -> tuple[bytes, int, bytes]:
    """``HTTP-version SP status-code [SP reason-phrase]`` -> (b"1.x", status, reason).

    The SP before an empty reason is optional here, as in h11 and squid: it is
    a common origin omission and cannot shift any framing.
    """
    version, _, rest = line.partition(b" ")
    http_version = _VERSIONS.get(version)
    if http_version is None:
        raise ProtocolError(f"bad status line {line[:40]!r}", 502, ERR_INVALID_RESP)
    code, _, reason = rest.partition(b" ")
    # RFC 9110 §15: codes are 100-599; squid answers anything else with 502.
    if len(code) != 3 or not code.isdigit() or not b"1" <= code[:1] <= b"5":
        raise ProtocolError(f"bad status code {code[:8]!r}", 502, ERR_INVALID_RESP)
    if reason and not reason.translate(FIELD_VALUE_CLASS).isalpha():
        raise ProtocolError("invalid character in reason phrase", 502, ERR_INVALID_RESP)
    return http_version, int(code), reason


def check_response_prefix(prefix: bytes) -> None:
    """A response must start with "HTTP/": HTTP/0.9 bodies-without-head are refused."""
    n = min(len(prefix), 5)
    if prefix[:n] != b"HTTP/"[:n]:
        raise ProtocolError("response does not start with HTTP/", 502, ERR_INVALID_RESP)


def parse_fields(lines: list[bytes], max_fields: int) -> Headers:
    """Field lines -> `Headers`. The bytes must have passed `check_head_bytes`."""
    return Headers._from_items(_field_items(lines, 0, max_fields, _NO_NAMES, {}))


def parse_field_section(
    section: bytes, first: int, max_fields: int, wanted: frozenset[bytes]
) -> tuple[Headers, dict[bytes, list[bytes]]]:
    """A head (or trailer section) without its final CRLFCRLF -> its fields,
    and the values of the `wanted` (lowercase) names, {name: [values]}.

    `first` lines are skipped: 1 for a head, whose start line the reader has
    already parsed, 0 for trailers.  Every check of `check_head_bytes` and
    `parse_fields` applies; this is both, in one call, for the readers.
    """
    lines = section.split(b"\r\n")
    check_head_bytes(section, len(lines) - 1)
    found: dict[bytes, list[bytes]] = {}
    return Headers._from_items(_field_items(lines, first, max_fields, wanted, found)), found


_NO_NAMES: frozenset[bytes] = frozenset()


def _field_items(lines: list[bytes], first: int, max_fields: int, wanted: frozenset[bytes],
                 found: dict[bytes, list[bytes]]) -> list[tuple[bytes, bytes, bytes]]:
    if len(lines) - first > max_fields:
        raise ProtocolError(f"more than {max_fields} header fields", 431, ERR_TOO_BIG)
    items = []
    append = items.append
    cache = _LINES
    for line in lines[first:] if first else lines:
        item = cache.get(line)
        if item is None:
            item = _parse_field_line(line)
            if len(line) <= _LINE_CACHED_MAX:
                if len(cache) >= _LINES_MAX:
                    cache.clear()
                cache[line] = item
        append(item)
        lname = item[0]
        if lname in wanted:
            value = item[2]
            if lname in found:
                found[lname].append(value)
            else:
                found[lname] = [value]
    return items


def _parse_field_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    name, colon, value = line.partition(b":")
    names = _NAMES
    lname = names.get(name)
    if lname is None or not colon:
        if not colon or not name.translate(TCHAR_CLASS).isalpha():
            raise _field_name_error(line)
        lname = name.lower()
        if len(names) < _NAMES_MAX:
            names[name] = lname
    return lname, name, value.strip(OWS)


def _field_name_error(line: bytes) -> ProtocolError:
    if line[:1] in (b" ", b"\t"):
        return ProtocolError("obsolete line folding (or whitespace before a field line)")
    name, colon, _ = line.partition(b":")
    if not colon:
        return ProtocolError(f"field line without a colon: {line[:40]!r}")
    if name[-1:] in (b" ", b"\t"):
        return ProtocolError(f"whitespace before colon in field {name[:40]!r}")
    return ProtocolError(f"invalid field name {name[:40]!r}")
