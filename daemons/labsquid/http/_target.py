"""Request-target forms (RFC 9112 §3.2) and authority parsing (RFC 3986 §3.2).

Theory of operation
-------------------
A forward proxy gets absolute-form (``GET http://host/p HTTP/1.1``), CONNECT's
authority-form (``host:443``, ``[::1]:443``), origin-form (``/p``, when it is
addressed directly or intercepting) and OPTIONS' asterisk-form. `parse_target`
classifies and validates all four; everything wrong is ERR_INVALID_URL (400).

The host is what ACLs and DNS act on, so it is parsed narrowly enough that
nothing downstream can read it differently:

* userinfo (``http://user:pw@host/``) is accepted and stripped (squid accepts
  it for FTP logins; RFC 9110 §4.2.4 deprecates it); a second ``@`` or a
  character outside RFC 3986's userinfo set (a ``\\`` that a WHATWG parser
  would read as a path separator) is rejected, so ``a@b@c`` tricks fail;
* reg-names are LDH plus ``_``: ``[a-z0-9._-]``, no empty label (a single
  trailing dot is allowed), labels <= 63, name <= 253; no percent-encoding;
* a name whose last label is numeric or ``0x...`` must be a canonical dotted
  quad: ``0x7f.1`` or ``2130706433`` would otherwise reach getaddrinfo() as
  127.0.0.1 while an ACL saw a "name";
* IP literals are bracketed IPv6 without zone id; IPvFuture is refused;
* ports are 1-65535; an empty port means the default (RFC 3986 §6.2.3).
  CONNECT's authority-form has no default (RFC 9110 §9.3.6 has clients send
  the port), but squid takes a CONNECT without one to mean 443, and so do we:
  a client that omits it wants TLS;
* the fragment, which clients must not send, is dropped;
* ``cache_object://host/action`` is squid's cache-manager scheme, what
  ``squidclient mgr:info`` sends.  RFC 3986 allows no ``_`` in a scheme,
  so this one is known by name; its default port is squid's, 3128.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import NamedTuple

from ._abnf import ALPHA, DIGITS, class_table
from ._events import ERR_INVALID_URL, ERR_UNSUP_REQ, ProtocolError

ORIGIN = "origin"
ABSOLUTE = "absolute"
AUTHORITY = "authority"
ASTERISK = "asterisk"

DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "cache_object": 3128}

_HOST_CLASS = class_table(ALPHA + DIGITS + b".-_")
_SCHEME_CLASS = class_table(ALPHA + DIGITS + b"+-.")
_ALPHA_CLASS = class_table(ALPHA)
# userinfo = *( unreserved / pct-encoded / sub-delims / ":" )
_USERINFO_CLASS = class_table(ALPHA + DIGITS + b"-._~%!$&'()*+,;=:")


class Target(NamedTuple):
    form: str  # ORIGIN, ABSOLUTE, AUTHORITY or ASTERISK
    scheme: str | None  # absolute-form only
    host: str | None  # lowercased, IPv6 without brackets; None for origin/asterisk
    port: int | None
    path: bytes  # path and query ("/" at least) for origin/absolute form

    @property
    def authority(self) -> bytes:
        """``host[:port]`` for a Host header, the port omitted when default."""
        return format_authority(self.host or "", self.port, DEFAULT_PORTS.get(self.scheme or ""))


@functools.lru_cache(maxsize=4096)  # asked once or twice per request, same few hosts
def format_authority(host: str, port: int | None, default_port: int | None) -> bytes:
    """``host[:port]`` (IPv6 bracketed), the port left out when it is the default."""
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != default_port:
        host = f"{host}:{port}"
    return host.encode("ascii")


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(reason, 400, ERR_INVALID_URL)


def _reg_name(raw: bytes) -> str:
    if len(raw) > 254 or not raw.translate(_HOST_CLASS).isalpha():
        raise _bad(f"invalid host {raw[:60]!r}")
    name = raw.decode("ascii").lower()
    labels = (name[:-1] if name.endswith(".") else name).split(".")
    if "" in labels or len(name.rstrip(".")) > 253 or max(map(len, labels)) > 63:
        raise _bad(f"invalid host {raw[:60]!r}")
    last = labels[-1]
    if last.isdigit() or last.startswith("0x"):
        try:
            ipaddress.IPv4Address(name.rstrip("."))
        except ValueError:
            raise _bad(f"ambiguous numeric host {raw[:60]!r}") from None
        return name.rstrip(".")
    return name


def _ipv6(raw: bytes) -> str:
    if b"%" in raw:  # ipaddress accepts zone ids; they mean nothing off-host
        raise _bad("zone id in IPv6 literal")
    try:
        return str(ipaddress.IPv6Address(raw.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        raise _bad(f"invalid IPv6 literal {raw[:60]!r}") from None


CONNECT_DEFAULT_PORT = 443  # squid's, for a CONNECT target without a port


# Cached: a proxy sees the same few hosts over and over. Only successful
# parses are cached (errors raise), so junk costs no more than without it.
@functools.lru_cache(maxsize=4096)
def parse_authority(authority: bytes, default_port: int | None = None) -> tuple[str, int | None]:
    """``host[:port]`` -> (host, port). No userinfo here.

    With `default_port` None the port is mandatory; pass 0 to make it optional
    and get None back when absent (Host header).
    """
    if authority[:1] == b"[":
        end = authority.find(b"]")
        if end < 0:
            raise _bad("unterminated IPv6 literal")
        host = _ipv6(authority[1:end])
        rest = authority[end + 1 :]
        if rest and rest[:1] != b":":
            raise _bad("garbage after IPv6 literal")
        port = rest[1:]
        has_port = bool(rest)
    else:
        name, colon, port = authority.rpartition(b":")
        if not colon:
            name = authority
        host = _reg_name(name)
        has_port = bool(colon)
    if not has_port or not port:
        if default_port is None:
            raise _bad("port required")
        return host, default_port or None
    if len(port) > 5 or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(f"invalid port {port[:10]!r}")
    return host, int(port)


def parse_absolute_uri(uri: bytes) -> Target:
    """``scheme://[userinfo@]host[:port][/path][?query][#fragment]``."""
    if uri[:7] == b"http://":  # the usual case, without the scheme checks
        scheme, rest = "http", uri[7:]
    else:
        sep = uri.find(b"://")
        scheme_b = uri[:sep]
        if sep <= 0 or (
            not scheme_b[:1].translate(_ALPHA_CLASS).isalpha()
            or not scheme_b.translate(_SCHEME_CLASS).isalpha()
        ) and scheme_b.lower() != b"cache_object":  # squid's, with RFC 3986's "_"
            raise _bad("not an absolute URI")
        scheme = scheme_b.decode("ascii").lower()
        rest = uri[sep + 3 :]
    default_port = DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise ProtocolError(f"unsupported URI scheme {scheme[:20]!r}", 400, ERR_UNSUP_REQ)
    end = rest.find(b"/")
    authority, path = (rest, b"") if end < 0 else (rest[:end], rest[end:])
    # find(), not ``in``: on bytes, ``in`` first tries the operand as an int,
    # and the TypeError it raises and clears costs more than the search.
    if authority.find(b"?") >= 0 or authority.find(b"#") >= 0:  # "http://host?q"
        for delimiter in (b"?", b"#"):
            i = authority.find(delimiter)
            if i >= 0:
                authority, path = authority[:i], authority[i:] + path
    if authority.find(b"@") >= 0:
        userinfo, _, authority = authority.rpartition(b"@")
        if userinfo and not userinfo.translate(_USERINFO_CLASS).isalpha():
            raise _bad("invalid userinfo in URI")
    host, port = parse_authority(authority, default_port)
    if path.find(b"#") >= 0:
        path = path.partition(b"#")[0]
    if path[:1] != b"/":
        path = b"/" + path
    return Target(ABSOLUTE, scheme, host, port, path)


def parse_target(method: bytes, target: bytes) -> Target:
    """Classify and validate a request-target (already known to be VCHAR only)."""
    if method == b"CONNECT":
        host, port = parse_authority(target, CONNECT_DEFAULT_PORT)
        return Target(AUTHORITY, None, host, port, b"")
    if target[:1] == b"/":
        return Target(ORIGIN, None, None, None, target)
    if target == b"*":
        if method != b"OPTIONS":
            raise _bad("asterisk-form target outside OPTIONS")
        return Target(ASTERISK, None, None, None, target)
    return parse_absolute_uri(target)


def classify_target(method: bytes, target: bytes) -> str:
    """The form of `target` (ORIGIN, ABSOLUTE, AUTHORITY, ASTERISK), validated."""
    return parse_target(method, target).form


def validate_host_header(value: bytes, required: bool = False) -> None:
    """RFC 9112 §3.2: a Host field with an invalid value is a 400.

    An empty value is valid syntax (uri-host may be empty) but useless when
    the Host is all the proxy has to route by (`required`, origin-form).
    """
    if not value:
        if required:
            raise _bad("empty Host header")
        return
    parse_authority(value, 0)
