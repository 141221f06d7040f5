"""The acl types that match request words and numbers, not addresses.

Theory of operation
-------------------
Each ``compile_*`` takes every line of one acl (squid appends same-named lines)
and returns a matcher closing over a structure built once for speed:

* ``port``/``localport``: a frozenset of single ports plus a few ranges.
* ``method``: a frozenset.  A value must be an HTTP token; one of squid's
  known methods counts in any case (``get`` is GET), as the request's own
  method does (``http.canonical_method``), any other is case-sensitive.
* ``proto``: a frozenset of squid's upper-case scheme names.  Squid ignores an
  unknown name with a warning; we refuse it, since a typo there silently
  changes what a rule matches.
* ``dstdomain``: ``.example.com`` matches example.com and every subdomain,
  ``example.com`` only itself; both sides are lower-cased and a trailing dot
  on the host is dropped (``example.com.`` is the same site, and must not slip
  past a deny).  An IP-literal host is compared as text: squid would try a
  reverse lookup next, we never do (as with squid's ``-n``).
* ``has``: which parts the transaction has (``request``, ``response``,
  ``ALE``), spelt exactly so, one per line; same-name lines are ORed.  As in
  squid, another word, two on a line, or none is an error.  It is for
  ``access_log`` lines: ``acl hasRequest has request`` keeps connections that
  never sent a request out of a file.
* ``browser``: a regex on User-Agent; ``req_header NAME [-i] REGEX ...``: on
  the named request header (its fields joined with ", ", as squid's
  ``getByName``).  A request without that header does not match.
* ``myportname``: the name of the ``http_port`` the client reached: its
  ``name=`` option, or the port as written (``3128``, ``127.0.0.1:3128``),
  as squid 5.7 names it.  Compared exactly.
* ``maxconn N``: more than N connections from the client's address are open,
  this one included; counted by each serving process for its own (a pool
  child, or the kid in serial mode), as each squid worker counts its own.
  One number, one line: squid takes a second number or line silently.
* ``http_status``: reply status codes and ranges (``404``, ``400-403``,
  ``500-`` for 500 and above).  It sees a status only where there is one, on
  ``access_log`` lines; in ``http_access`` it never matches.  squid reads a
  non-number as 0; we refuse it, and anything outside 100-999.
* ``*_regex``: squid's ``-i``/``+i`` switch case-sensitivity for the patterns
  that follow, on that line only.  Patterns of one case are joined into one
  alternation when that is safe, so a check is one ``search`` per group.
  Python's ``re`` stands in for POSIX extended regexes; they agree on the
  patterns squid configs use (anchors, classes, alternation, repetition).
  ``url_regex``/``urlpath_regex`` see the %-decoded URL/path as squid does.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

from labsquid.acl._base import AccessContext, Matcher, Problems, Values
from labsquid.http import canonical_method

# squid 5's AnyP::ProtocolType names (PROTO_ prefix dropped)
PROTOCOLS = frozenset({
    "NONE", "HTTP", "FTP", "HTTPS", "COAP", "COAPS", "GOPHER", "WAIS", "CACHE_OBJECT", "ICP",
    "HTCP", "URN", "WHOIS", "ICY", "TLS", "SSL", "AUTHORITY_FORM", "UNKNOWN",
})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PORT = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")
_NUMBER = re.compile(r"[0-9]+")


# -- ports ----------------------------------------------------------------------

class PortSet:
    """Ports and ranges as a 64 KB table: one index per check, which runs per request."""

    __slots__ = ("_table",)

    def __init__(self, singles: set[int], ranges: list[tuple[int, int]]) -> None:
        table = bytearray(65536)
        for port in singles:
            table[port] = 1
        for low, high in ranges:
            table[low : high + 1] = b"\x01" * (high - low + 1)
        self._table = bytes(table)

    def __contains__(self, port: int) -> bool:
        return 0 <= port <= 65535 and self._table[port] == 1


def _port_set(lines: list[Values], label: str, problems: Problems) -> PortSet:
    singles: set[int] = set()
    ranges: list[tuple[int, int]] = []
    for values in lines:
        for token in values.values:
            found = _PORT.fullmatch(token)
            low = int(found.group(1)) if found else -1
            high = int(found.group(2)) if found and found.group(2) else low
            if not found or not 0 <= low <= high <= 65535:
                kind = "port range" if "-" in token else "port"
                problems.error(values.where, f"{label}: bad {kind} '{token}'")
            elif low == high:
                singles.add(low)
            else:
                ranges.append((low, high))
    return PortSet(singles, ranges)


def compile_port(lines: list[Values], label: str, problems: Problems) -> Matcher:
    ports = _port_set(lines, label, problems)
    return lambda ctx: ctx.port in ports


def compile_localport(lines: list[Values], label: str, problems: Problems) -> Matcher:
    ports = _port_set(lines, label, problems)
    return lambda ctx: ctx.local_port in ports


# -- words ----------------------------------------------------------------------

def compile_method(lines: list[Values], label: str, problems: Problems) -> Matcher:
    methods: set[str] = set()
    for values in lines:
        for token in values.values:
            if _TOKEN.fullmatch(token):
                methods.add(canonical_method(token.encode("latin-1")).decode("latin-1"))
            else:
                problems.error(values.where, f"{label}: bad method '{token}'")
    frozen = frozenset(methods)
    return lambda ctx: ctx.method in frozen


def compile_proto(lines: list[Values], label: str, problems: Problems) -> Matcher:
    protos: set[str] = set()
    for values in lines:
        for token in values.values:
            if token.upper() in PROTOCOLS:
                protos.add(token.upper())
            else:
                problems.error(values.where, f"{label}: unknown protocol '{token}'")
    frozen = frozenset(protos)
    return lambda ctx: ctx.proto.upper() in frozen


def _host_key(host: str) -> str:
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") else host


def compile_dstdomain(lines: list[Values], label: str, problems: Problems) -> Matcher:
    exact: set[str] = set()
    suffixes: set[str] = set()  # ".example.com" stored as "example.com"
    for values in lines:
        for token in values.values:
            name = _host_key(token.lstrip("."))
            if not name or any(c.isspace() or c in "/@" for c in name):
                problems.error(values.where, f"{label}: bad domain '{token}'")
            elif token.startswith("."):
                suffixes.add(name)
            else:
                exact.add(name)
    frozen_exact, frozen_suffixes = frozenset(exact), frozenset(suffixes)

    def match(ctx: AccessContext) -> bool:
        host = _host_key(ctx.host)
        if host in frozen_exact or host in frozen_suffixes:
            return True
        # walk the parent domains: a.b.example.com -> b.example.com -> example.com -> com
        dot = host.find(".")
        while dot != -1:
            if host[dot + 1:] in frozen_suffixes:
                return True
            dot = host.find(".", dot + 1)
        return False

    return match


# -- regular expressions ----------------------------------------------------------

def _regex_group(patterns: list[str], flags: int) -> list[re.Pattern[str]]:
    """One compiled alternation when the patterns allow it, else one each."""
    if len(patterns) > 1 and not any(_BACKREF.search(p) for p in patterns):
        try:
            return [re.compile("|".join(f"(?:{p})" for p in patterns), flags)]
        except re.error:  # e.g. a named group used twice; fall back
            pass
    return [re.compile(p, flags) for p in patterns]


def _regex_list(lines: list[Values], label: str, problems: Problems) -> list[re.Pattern[str]]:
    by_case: dict[bool, list[str]] = {False: [], True: []}
    for values in lines:
        ignore_case = "-i" in values.options
        for token in values.values:
            if token in ("-i", "+i"):
                ignore_case = token == "-i"
                continue
            try:
                re.compile(token)
            except re.error as exc:
                problems.error(values.where,
                               f"{label}: invalid regular expression '{token}': {exc}")
                continue
            by_case[ignore_case].append(token)
    compiled: list[re.Pattern[str]] = []
    for ignore_case, patterns in by_case.items():
        if patterns:
            compiled += _regex_group(patterns, re.IGNORECASE if ignore_case else 0)
    return compiled


@lru_cache(maxsize=1024)
def _decoded(text: str) -> str:
    return unquote(text, errors="surrogateescape")


def _any_search(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    for pattern in patterns:
        if pattern.search(text) is not None:
            return True
    return False


# The subject is made once per check, not once per pattern: the built-in
# ``manager`` acl alone has two groups (-i and +i) and runs on every request.
def compile_url_regex(lines: list[Values], label: str, problems: Problems) -> Matcher:
    patterns = tuple(_regex_list(lines, label, problems))
    return lambda ctx: _any_search(patterns, _decoded(ctx.url))


def compile_urlpath_regex(lines: list[Values], label: str, problems: Problems) -> Matcher:
    patterns = tuple(_regex_list(lines, label, problems))
    return lambda ctx: _any_search(patterns, _decoded(ctx.path))


def compile_dstdom_regex(lines: list[Values], label: str, problems: Problems) -> Matcher:
    patterns = tuple(_regex_list(lines, label, problems))
    return lambda ctx: _any_search(patterns, ctx.host.lower())


# -- request headers ----------------------------------------------------------------

def _header_text(ctx: AccessContext, lname: bytes) -> str | None:
    if ctx.headers is None:
        return None
    fields = ctx.headers.get_all(lname)
    return b", ".join(fields).decode("latin-1") if fields else None


def compile_browser(lines: list[Values], label: str, problems: Problems) -> Matcher:
    patterns = tuple(_regex_list(lines, label, problems))

    def match(ctx: AccessContext) -> bool:
        agent = _header_text(ctx, b"user-agent")
        return agent is not None and _any_search(patterns, agent)

    return match


def compile_req_header(lines: list[Values], label: str, problems: Problems) -> Matcher:
    """``req_header NAME [-i] REGEX ...``: the header name comes first, its
    regex options after it."""
    by_name: dict[bytes, list[Values]] = {}
    for values in lines:
        if not values.values:
            problems.error(values.where, f"{label}: missing header name")
            continue
        name, *rest = values.values
        if not _TOKEN.fullmatch(name):
            problems.error(values.where, f"{label}: bad header name '{name}'")
            continue
        by_name.setdefault(name.lower().encode("latin-1"), []).append(
            Values(values.where, values.options, tuple(rest)))
    checks = tuple((name, tuple(_regex_list(group, label, problems)))
                   for name, group in by_name.items())

    def match(ctx: AccessContext) -> bool:
        for name, patterns in checks:
            text = _header_text(ctx, name)
            if text is not None and _any_search(patterns, text):
                return True
        return False

    return match


# -- the port reached and connections per client ----------------------------------------

def compile_myportname(lines: list[Values], label: str, problems: Problems) -> Matcher:
    names = frozenset(token for values in lines for token in values.values)
    return lambda ctx: ctx.port_name in names


def compile_maxconn(lines: list[Values], label: str, problems: Problems) -> Matcher:
    limit = 0
    for number, values in enumerate(lines):
        if number:
            problems.error(values.where, f"{label}: given twice; one maxconn acl, one number")
        elif len(values.values) != 1 or not _NUMBER.fullmatch(values.values[0]) \
                or int(values.values[0]) < 1:
            problems.error(values.where, f"{label}: needs one number, 1 or more")
        else:
            limit = int(values.values[0])
    return lambda ctx: ctx.client_connections > limit


# -- reply status ---------------------------------------------------------------------

_STATUS = re.compile(r"(\d{3})(?:(-)(\d{3})?)?")


def compile_http_status(lines: list[Values], label: str, problems: Problems) -> Matcher:
    spans: list[tuple[int, int]] = []
    for values in lines:
        for token in values.values:
            found = _STATUS.fullmatch(token)
            low = int(found.group(1)) if found else 0
            high = (int(found.group(3)) if found.group(3) else 999) if found and found.group(2) \
                else low
            if not found or not 100 <= low <= high <= 999:
                problems.error(values.where, f"{label}: bad status code '{token}' "
                                             "(100-999, a range such as 400-403, or 500-)")
            else:
                spans.append((low, high))
    frozen = tuple(spans)

    def match(ctx: AccessContext) -> bool:
        status = ctx.status
        for low, high in frozen:
            if low <= status <= high:
                return True
        return False

    return match


# -- transaction components -------------------------------------------------------

HAS_COMPONENTS = ("request", "response", "ALE")  # squid 5's names, case and all


def compile_has(lines: list[Values], label: str, problems: Problems) -> Matcher:
    wanted: set[str] = set()
    for values in lines:
        if not values.values:
            problems.error(values.where, f"{label}: argument missing (one of "
                                         f"{', '.join(HAS_COMPONENTS)})")
        elif len(values.values) > 1:
            problems.error(values.where, f"{label}: multiple components not supported; "
                                         "give each its own line with the same acl name")
        elif values.values[0] not in HAS_COMPONENTS:
            problems.error(values.where, f"{label}: unsupported component "
                                         f"'{values.values[0]}' (one of "
                                         f"{', '.join(HAS_COMPONENTS)})")
        else:
            wanted.add(values.values[0])
    if "ALE" in wanted:  # every transaction has its access-log entry
        return lambda ctx: True
    request, response = "request" in wanted, "response" in wanted
    return lambda ctx: (request and ctx.has_request) or (response and ctx.has_response)
