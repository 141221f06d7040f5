"""squid-style error replies: a status, squid's header set and an HTML page.

Theory of operation
-------------------
Each error has a template file ``data/errors/ERR_*``: a complete HTML page
with squid's ``%``-letter codes in it.  ``render_error`` fills the codes in
and wraps the page in the headers squid 5 sends with an error reply, in
squid's order: ``HttpReply::setHeaders`` gives Server, Mime-Version, Date,
Content-Type and Content-Length; ``ErrorState::BuildHttpReply`` adds
X-Squid-Error ("NAME errno"), Vary and Content-Language; the client side
adds X-Cache (and X-Cache-Lookup), Via and Connection.

Substitution follows squid's ``compileLegacyCode``: every value is
HTML-escaped except the stylesheet (``%l``); an unknown letter is copied
through untouched (templates contain things like ``100%;`` in CSS).  Values
missing from the call get squid's placeholders (``[unknown]``, ``[No
Error]``...).

Unlike squid's templates ours never put the URL in an ``href``: a hostile
``javascript:`` URL stays inert text.  Pure functions; templates are read
once per process.
"""

from __future__ import annotations

import email.utils
import functools
import html
import os
import re
from importlib import resources
from urllib.parse import urlsplit

__all__ = ["DEFAULT_STATUS", "cache_fields", "render_error"]

# The status squid uses for each page by default; callers may override.
DEFAULT_STATUS: dict[str, int] = {
    "ERR_PROTOCOL_UNKNOWN": 400,
    "ERR_INVALID_REQ": 400,
    "ERR_INVALID_URL": 400,
    "ERR_UNSUP_REQ": 501,
    "ERR_TOO_BIG": 413,
    "ERR_ACCESS_DENIED": 403,
    "ERR_CACHE_MGR_ACCESS_DENIED": 401,
    "ERR_CONNECT_FAIL": 503,
    "ERR_DNS_FAIL": 503,
    "ERR_READ_TIMEOUT": 504,
    "ERR_LIFETIME_EXP": 504,
    "ERR_READ_ERROR": 502,
    "ERR_WRITE_ERROR": 502,
    "ERR_ZERO_SIZE_OBJECT": 502,
    "ERR_INVALID_RESP": 502,
    "ERR_REQUEST_START_TIMEOUT": 408,
    "ERR_SHUTTING_DOWN": 503,
    "ERR_CANNOT_FORWARD": 503,
    "ERR_UNSUP_HTTPVERSION": 505,
}

_APP_NAME = "labsquid"
_CODE_RE = re.compile(r"ERR_[A-Z0-9_]+")
_UNSAFE_HEADER = re.compile("[\x00-\x1f\x7f]")
_PERCENT_CODE = re.compile(r"%(.)", re.DOTALL)
_HTML_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@functools.cache
def _template(code: str) -> str:
    path = resources.files("labsquid").joinpath("data", "errors", code)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no error page template for {code}") from None


@functools.cache
def _stylesheet() -> str:
    return _template("errorpage.css")


def _html_text(value: str) -> str:
    # Control characters are not valid in HTML text; show them as \xHH.
    escaped = html.escape(value, quote=True)
    return _HTML_CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", escaped)


def _errno_text(errno: int) -> str:
    return f"({errno}) {os.strerror(errno)}" if errno else "[No Error]"


def _host_of(url: str) -> str:
    try:
        host = urlsplit(url if "://" in url else f"//{url}").hostname
    except ValueError:
        host = None
    return host or "[unknown host]"


def _fill(template: str, values: dict[str, str]) -> str:
    def substitute(m: re.Match[str]) -> str:
        letter = m.group(1)
        if letter == "l":
            return _stylesheet()  # trusted text of ours: not escaped (squid agrees)
        if letter in values:
            return _html_text(values[letter])
        return m.group()

    return _PERCENT_CODE.sub(substitute, template)


def _header_safe(name: str, value: str) -> str:
    # These go into header values verbatim: CR/LF would split the header.
    if _UNSAFE_HEADER.search(value) or not value.isascii():
        raise ValueError(f"{name} must be printable ASCII: {value!r}")
    return value


def cache_fields(hostname: str, http_port: int | None,
                 lookup: str) -> list[tuple[bytes, bytes]]:
    """squid's ``X-Cache`` and, given the port (the first ``http_port``),
    ``X-Cache-Lookup``.  labsquid caches nothing, so the one is always a MISS;
    ``lookup`` is ``MISS`` once a request went its way to the origin, ``NONE``
    for one answered before that.  Relayed replies, error pages and the
    PURGE reply all carry them."""
    fields = [(b"X-Cache", f"MISS from {hostname}".encode())]
    if http_port is not None:
        fields.append((b"X-Cache-Lookup", f"{lookup} from {hostname}:{http_port}".encode()))
    return fields


def render_error(
    code: str,
    *,
    status: int,
    method: str,
    url: str,
    client_addr: str,
    hostname: str,
    now: float,
    error_detail: str = "",
    errno: int = 0,
    cache_admin: str = "webmaster",
    version_string: str | None = "labsquid/0.1.0",
    http_port: int | None = None,
    keep_alive: bool = False,
    looked_up: bool = False,
    challenge: str | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Build squid's error reply for ``code`` (e.g. ``"ERR_INVALID_URL"``).

    ``version_string=None`` is squid's ``httpd_suppress_version_string on``:
    the product name goes out without a version.  ``error_detail`` feeds the
    DNS message (``%z``) and the detail codes (``%x``, ``%D``).  With
    ``http_port`` an ``X-Cache-Lookup`` header is added like squid's: ``MISS``
    when the request got as far as the way to the origin (``looked_up``),
    else ``NONE``.
    ``keep_alive``: the connection stays open after it (else ``close``).
    ``challenge``: a ``WWW-Authenticate`` value, for a 401.
    """
    if not _CODE_RE.fullmatch(code):
        raise ValueError(f"not an error page name: {code!r}")
    hostname = _header_safe("hostname", hostname)
    app = _header_safe("version_string", version_string) if version_string else _APP_NAME
    date = email.utils.formatdate(now, usegmt=True)  # RFC 7231 IMF-fixdate
    values = {
        "c": code,
        "D": error_detail or "[No Error Detail]",
        "e": str(errno),
        "E": _errno_text(errno),
        "h": hostname,
        "H": _host_of(url),
        "i": client_addr or "[unknown]",
        "M": method or "[unknown method]",
        "s": app,
        "T": date,
        "U": url or "[no URL]",
        "u": url or "[no URL]",
        "w": cache_admin or "[unknown]",
        "W": "",  # squid appends mailto: error data only when configured to
        "x": error_detail or "[Unknown Error Code]",
        "z": error_detail or "[unknown]",
        "%": "%",
    }
    body = _fill(_template(code), values).encode("utf-8")
    headers = [
        (b"Server", app.encode()),
        (b"Mime-Version", b"1.0"),
        (b"Date", date.encode()),
        (b"Content-Type", b"text/html;charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        (b"X-Squid-Error", f"{code} {errno}".encode()),
        (b"Vary", b"Accept-Language"),
        (b"Content-Language", b"en"),
        *([(b"WWW-Authenticate", _header_safe("challenge", challenge).encode())]
          if challenge else []),
        *cache_fields(hostname, http_port, "MISS" if looked_up else "NONE"),
        (b"Via", f"1.1 {hostname} ({app})".encode()),
        (b"Connection", b"keep-alive" if keep_alive else b"close"),
    ]
    return status, headers, body
