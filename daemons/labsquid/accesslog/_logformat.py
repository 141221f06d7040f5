"""squid's ``logformat`` language: compile a definition once, render records.

Theory of operation
-------------------
A definition is literal text with ``%`` codes.  Each code is::

    % [quote] [-] [0] [width] [.max] [{arg}] code [{arg}]

``quote`` is one of ``"`` (backslash-quoted), ``[`` (MIME blob), ``#``
(URL-encoded), ``'`` (raw) or ``/`` (shell word).  Without one, a code
inherits the mode of the literal text around it, exactly as in squid: a
``"`` in literal text toggles quoted mode, ``[`` starts MIME-blob mode and
``]`` ends it.  That is why ``[%tl]`` and ``"%rm %ru HTTP/%rv"`` in the
``common`` format are encoded even though the codes carry no modifier.
``%%`` is a literal percent.

Rendering a code follows squid's ``Format::assemble``:

1. Fetch the value.  ``None`` or ``""`` means "missing" and prints a bare
   ``-`` -- no padding, no quoting.
2. Numbers are printed with ``%0*d`` when the ``0`` flag is given (so
   ``%03>Hs`` prints status 0 as ``000``); durations in milliseconds, start
   times as ``sec.mmm``.
3. The value is encoded (see ``_escape``): by its quoting mode, or, with no
   mode, URL-escaped if squid flags that code for quoting (headers, method,
   path) and otherwise printed as squid prints it, line-breakers excepted.
4. ``width`` pads (right-aligned unless ``-``); ``.max`` truncates
   non-numeric values.

Parsing is stricter than squid, which silently accepts an unterminated
``{``: any definition we could misread raises ``LogFormatError``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable

from . import _escape
from ._codes import CODE_NAMES, CODES, Code, Kind, Quoting, Token, media_type, split_time
from ._record import AccessRecord

__all__ = ["LogFormat", "LogFormatError", "Quoting", "builtin_formats", "compile_logformat"]


class LogFormatError(ValueError):
    """A logformat definition that cannot be compiled."""


_MODIFIERS = {q.value: q for q in Quoting if q is not Quoting.NONE}

# squid's predefined formats (cf.data.pre), verbatim definitions.
_BUILTIN = {
    "squid": "%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt",
    "common": '%>a %[ui %[un [%tl] "%rm %ru HTTP/%rv" %>Hs %<st %Ss:%Sh',
    "combined": (
        '%>a %[ui %[un [%tl] "%rm %ru HTTP/%rv" %>Hs %<st '
        '"%{Referer}>h" "%{User-Agent}>h" %Ss:%Sh'
    ),
    "referrer": "%ts.%03tu %>a %{Referer}>h %ru",
    "useragent": '%>a [%tl] "%{User-Agent}>h"',
}


def builtin_formats() -> dict[str, str]:
    """squid's built-in format definitions by name (a fresh copy)."""
    return dict(_BUILTIN)


# --------------------------------------------------------------------------
# Parsing

# Controls and line separators, and lone surrogates (a non-UTF-8 byte of
# squid.conf, read with surrogateescape): none may reach a rendered line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_DIGITS = re.compile(r"\d+")


def _fail(fmt: str, pos: int, problem: str) -> LogFormatError:
    return LogFormatError(f"{problem} at column {pos + 1} of logformat {fmt!r}")


def _read_arg(fmt: str, pos: int) -> tuple[str, int]:
    close = fmt.find("}", pos)
    if close < 0:
        raise _fail(fmt, pos, "unterminated '{' (missing '}')")
    return fmt[pos + 1 : close], close + 1


def _parse_code(fmt: str, start: int, inherited: Quoting) -> tuple[Token, int]:
    pos = start + 1
    if pos >= len(fmt):
        raise _fail(fmt, start, "'%' without a format code")
    quoting = _MODIFIERS.get(fmt[pos])
    if quoting is None:
        quoting = inherited
    else:
        pos += 1
    left = fmt.startswith("-", pos)
    pos += left
    zero = fmt.startswith("0", pos)
    pos += zero
    width_min = width_max = -1
    if m := _DIGITS.match(fmt, pos):
        width_min, pos = int(m.group()), m.end()
    if fmt.startswith(".", pos):
        if not (m := _DIGITS.match(fmt, pos + 1)):
            raise _fail(fmt, pos, "'.' must be followed by a maximum width")
        width_max, pos = int(m.group()), m.end()
    arg = None
    if fmt.startswith("{", pos):
        arg, pos = _read_arg(fmt, pos)
    if fmt.startswith("http::", pos) and not fmt.startswith("http::%", pos):
        pos += len("http::")  # squid's default namespace may be spelled out
    if pos >= len(fmt):
        raise _fail(fmt, start, "'%' without a format code")
    code = next((name for name in CODE_NAMES if fmt.startswith(name, pos)), None)
    if code is None:
        raise _fail(fmt, start, f"unknown format code {fmt[start : pos + 12]!r}")
    pos += len(code)
    if arg is None and fmt.startswith("{", pos):  # "%code{arg}" spelling
        arg, pos = _read_arg(fmt, pos)
    spec = CODES[code]
    element, separator = None, ","
    if arg is not None:
        if spec.arg == "":
            raise _fail(fmt, start, f"format code %{code} takes no {{argument}}")
        if spec.arg == "header":
            arg, element, separator = _split_header_arg(fmt, start, arg)
        else:
            _check_strftime(fmt, start, arg)
    token = Token(code, quoting=quoting, left=left, zero=zero, width_min=width_min,
                   width_max=width_max, arg=arg, element=element, separator=separator)
    return token, pos


def _split_header_arg(fmt: str, start: int, arg: str) -> tuple[str, str | None, str]:
    name, colon, element = arg.partition(":")
    if not name:
        raise _fail(fmt, start, "missing header name in {argument}")
    if not colon:
        return name, None, ","
    separator = ","
    if element[:1] in (",", ";", ":"):
        separator, element = element[0], element[1:]
    return name, element, separator


def _check_strftime(fmt: str, start: int, spec: str) -> None:
    try:
        time.strftime(spec, time.gmtime(0))
    except ValueError as exc:
        raise _fail(fmt, start, f"bad time format {spec!r}: {exc}") from None


def _next_quoting(text: str, quoting: Quoting) -> Quoting:
    # Literal text switches the default mode for the codes that follow it.
    for ch in text:
        if ch == '"' and quoting in (Quoting.NONE, Quoting.QUOTES):
            quoting = Quoting.QUOTES if quoting is Quoting.NONE else Quoting.NONE
        elif ch == "[" and quoting is Quoting.NONE:
            quoting = Quoting.MIMEBLOB
        elif ch == "]" and quoting is Quoting.MIMEBLOB:
            quoting = Quoting.NONE
    return quoting


def _parse(fmt: str) -> tuple[Token, ...]:
    if m := _CONTROL.search(fmt):
        raise _fail(fmt, m.start(), "control character or undecodable byte in logformat")
    tokens: list[Token] = []
    quoting = Quoting.NONE
    pos = 0
    while pos < len(fmt):
        percent = fmt.find("%", pos)
        if percent != pos:
            end = len(fmt) if percent < 0 else percent
            tokens.append(Token("", literal=fmt[pos:end]))
            quoting = _next_quoting(fmt[pos:end], quoting)
            pos = end
            continue
        token, pos = _parse_code(fmt, pos, quoting)
        tokens.append(token)
    return tuple(tokens)


# --------------------------------------------------------------------------
# Rendering


def _zero_width(tok: Token, reserved: int = 0) -> int:
    # The width handed to "%0*d": only with the 0 flag, minus any fraction.
    if tok.zero and tok.width_min - reserved >= 0:
        return tok.width_min - reserved
    return 0


def _number(kind: Kind, value: object, tok: Token) -> str:
    if kind is Kind.SEC:
        seconds, usec = value  # type: ignore[misc]
        precision = tok.width_max if tok.width_max >= 0 else 3
        width = _zero_width(tok, precision + 1)
        return f"{seconds:0{width}d}.{usec // tok.divisor:0{precision}d}"
    if kind is Kind.MSEC and tok.width_max >= 0:
        # Durations are whole milliseconds here, so the fraction is zeros.
        width = _zero_width(tok, tok.width_max + 1)
        return f"{value:0{width}d}.{0:0{tok.width_max}d}"
    return f"{value:0{_zero_width(tok)}d}"


def _encoder(tok: Token, spec: Code) -> Callable[[str], str]:
    """The escaping function for one token, chosen once at compile time."""
    q = tok.quoting
    if q is Quoting.NONE:
        if spec.squid_quotes:
            return _escape.url_unescaped
        return functools.partial(_escape.defang, allow_space=spec.trusted)
    if q is Quoting.QUOTES:
        return _escape.quoted
    if q is Quoting.MIMEBLOB:
        return functools.partial(_escape.mimeblob, escape_space=spec.user)
    if q is Quoting.URL:
        return _escape.url
    if q is Quoting.SHELL:
        return _escape.shell
    return functools.partial(_escape.defang, allow_space=True)  # RAW: minus line breakers


def _renderer(tok: Token) -> Callable[[AccessRecord], str]:
    """One token's rendering, specialised at compile time (this runs per request)."""
    spec = CODES[tok.code]
    fetch, kind = spec.fetch, spec.kind
    numeric = kind is not Kind.STR
    plain_int = kind is Kind.INT and _zero_width(tok) == 0
    encode = _encoder(tok, spec)
    width_max = tok.width_max if not numeric else -1
    width_min, left = tok.width_min, tok.left

    def render(rec: AccessRecord) -> str:
        value = fetch(rec, tok)
        if value is None or value == "":
            return "-"  # squid prints a bare dash for anything missing
        if plain_int:
            text = encode(str(value))
        else:
            text = encode(_number(kind, value, tok) if numeric else str(value))
        if width_max >= 0:
            text = text[:width_max]
        if width_min > 0:
            text = text.ljust(width_min) if left else text.rjust(width_min)
        return text

    return render


class LogFormat:
    """A compiled logformat definition: literal strings and per-code renderers."""

    __slots__ = ("definition", "_parts", "uses_request_headers")
    native = False  # squid's own format, which `native_line` renders from plain values

    def __init__(self, definition: str, tokens: tuple[Token, ...]) -> None:
        self.definition = definition
        # Whether records need their request header fields (%>h, and %{...}>h
        # falls back to referer/user_agent): the proxy skips the lookups if not.
        self.uses_request_headers = any(tok.code == ">h" for tok in tokens)
        parts: list[str | Callable[[AccessRecord], str]] = []
        for tok in tokens:
            if tok.code:
                parts.append(_renderer(tok))
            elif parts and isinstance(parts[-1], str):
                parts[-1] += tok.literal
            else:
                parts.append(tok.literal)
        self._parts = tuple(parts)

    def render(self, rec: AccessRecord) -> str:
        """One log line for ``rec``, without the trailing newline."""
        return "".join([p if p.__class__ is str else p(rec) for p in self._parts])

    def __repr__(self) -> str:
        return f"LogFormat({self.definition!r})"


def _dash(text: str | None, encode: Callable[[str], str]) -> str:
    return encode(text) if text else "-"


def _word(text: str | None) -> str:
    return _escape.defang(text) if text else "-"


def render_native(rec: AccessRecord) -> str:
    """squid's native line, written out by hand: the format every request logs.

    Exactly what the generic renderer makes of ``_BUILTIN["squid"]`` (a
    property test holds the two equal), at a fraction of the cost.
    """
    return native_line(rec.end_time, rec.duration_ms, rec.client_addr, rec.log_tag,
                       rec.http_status, rec.reply_size, rec.method, rec.url, rec.user_name(),
                       rec.hierarchy, rec.peer_addr, rec.mime_type)


def native_line(end_time: float, duration_ms: int, client: str, tag: str, status: int,
                size: int, method: str, url: str, user: str | None, hierarchy: str,
                peer: str | None, mime: str | None) -> str:
    """`render_native` from the values themselves: the proxy calls this for
    every request without building an ``AccessRecord`` first."""
    sec, usec = split_time(end_time)
    # Nearly every line is plain words: one scan over all the fields proves
    # no escaping is needed, and the line is written straight out.
    if (user is None and _escape.is_plain_word(f"{client}{tag}{method}{url}{hierarchy}{peer}{mime}")
            and _escape.is_url_safe(f"{method}{url}")):
        media = mime.partition(";")[0] if mime else None
        return (
            f"{sec}.{usec // 1000:03d} {duration_ms:>6d} {client or '-'} "
            f"{tag or '-'}/{status:03d} {size} {method or '-'} "
            f"{url or '-'} - {hierarchy or '-'}/{peer or '-'} {media or '-'}"
        )
    return (
        f"{sec}.{usec // 1000:03d} {duration_ms:>6d} {_word(client)} "
        f"{_word(tag)}/{status:03d} {size} "
        f"{_dash(method, _escape.url_unescaped)} "
        f"{_word(_escape.clean_log_uri(url) if url else '')} "
        f"{_dash(user, _USER_BLOB)} "
        f"{_word(hierarchy)}/{_word(peer)} {_word(media_type(mime))}"
    )


_USER_BLOB = functools.partial(_escape.mimeblob, escape_space=True)


class _NativeFormat(LogFormat):
    __slots__ = ()
    native = True

    def render(self, rec: AccessRecord) -> str:
        return render_native(rec)


def compile_logformat(fmt: str, *, fast: bool = True) -> LogFormat:
    """Parse a squid ``logformat`` definition; raises ``LogFormatError``.

    squid's native format gets the hand-written renderer unless ``fast`` is off.
    """
    tokens = _parse(fmt)
    if fast and fmt == _BUILTIN["squid"]:
        return _NativeFormat(fmt, tokens)
    return LogFormat(fmt, tokens)
