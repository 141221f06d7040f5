"""Value encoders for access-log fields: squid's quoting rules, made line-safe.

Theory of operation
-------------------
Every value a format code produces passes through exactly one encoder, picked
by the token's quoting modifier (``%"``, ``%[``, ``%#``, ``%'``, ``%/`` or the
mode inherited from the surrounding literal text) and by whether squid itself
would encode that value:

* ``url_unescaped`` -- squid's ``rfc1738_escape_unescaped`` (UNSAFE | CTRLS |
  NOPERCENT): the default for request-derived values (headers, method, path)
  when no modifier is given.  ``%`` is kept so already-escaped URLs stay as is.
* ``url`` -- ``rfc1738_escape`` for ``%#``: the same, and ``%`` is escaped too.
* ``quoted`` -- squid's ``log_quoted_string`` for ``%"``: backslash escapes.
* ``mimeblob`` -- squid's ``QuoteMimeBlob`` for ``%[``: ``%xx`` (lower case).
* ``shell`` -- squid's ``strwordquote`` for ``%/``.
* ``defang`` -- values squid prints raw (addresses, tags, ``%'`` raw mode).

squid works on bytes; we work on ``str``.  Byte-oriented encoders run on the
UTF-8 encoding, so non-ASCII text comes out as ``%XX`` triplets exactly as
squid would print the bytes it received.

Where squid lets a control character through (``log_quoted_string`` only
handles CR, LF and TAB; raw mode and squid-generated values are not escaped
at all) we escape it anyway: labsquid's rule is that no rendered line ever
contains a C0 control, DEL, a C1 control, U+2028/U+2029 or a lone
surrogate, because any of them could forge or split a log line, drive a
terminal, or make the line unwritable.  And squid-generated fields (addresses,
tags) are single printable-ASCII words, so the native line always keeps its
ten space-separated fields.  For every value squid could actually produce,
the output is identical to squid's.
"""

from __future__ import annotations

import re

__all__ = [
    "clean_log_uri",
    "defang",
    "mimeblob",
    "quoted",
    "shell",
    "url",
    "url_unescaped",
]

# RFC 1738 "unsafe" printable characters (squid's rfc1738_unsafe_chars).
_RFC1738_UNSAFE = frozenset(b'<>"#{}|\\^~[]`\'')
_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

# Characters that may break a log line; C1 controls matter because a latin-1
# decoded header turns byte 0x85 into U+0085 (NEL), which splitlines() honours.
# Lone surrogates (from surrogateescape decoding) would make the line
# unwritable as UTF-8, so they count too.
_LINE_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# A one-word field: printable ASCII only (str.split() knows many more spaces).
_NOT_WORD_CHAR = re.compile("[^\x21-\x7e]")


def _pct_upper(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def _unsafe_pattern(keep_percent: bool) -> re.Pattern[str]:
    """Matches any character ``_rfc1738`` would change (for the fast path)."""
    safe = "".join(chr(b) for b in range(0x21, 0x7F)
                   if b not in _RFC1738_UNSAFE and (keep_percent or b != 0x25))
    return re.compile("[^" + re.escape(safe) + "]")


_UNSAFE_KEEP_PERCENT = _unsafe_pattern(True)
_UNSAFE = _unsafe_pattern(False)


def _rfc1738(value: str, *, keep_percent: bool) -> str:
    # Most values (URLs, methods) need no escaping at all: one C-level scan.
    if not (_UNSAFE_KEEP_PERCENT if keep_percent else _UNSAFE).search(value):
        return value
    out: list[str] = []
    for b in value.encode("utf-8", "surrogatepass"):
        if b in _ALNUM:
            out.append(chr(b))
        elif (
            b in _RFC1738_UNSAFE
            or b <= 0x20  # controls and space
            or b >= 0x7F  # DEL and every non-ASCII byte
            or (b == 0x25 and not keep_percent)
        ):
            out.append(f"%{b:02X}")
        else:
            out.append(chr(b))
    return "".join(out)


def url_unescaped(value: str) -> str:
    """squid's ``rfc1738_escape_unescaped``: escape unsafe bytes, keep ``%``."""
    return _rfc1738(value, keep_percent=True)


def url(value: str) -> str:
    """squid's ``rfc1738_escape`` (the ``%#`` modifier): ``%`` is escaped too."""
    return _rfc1738(value, keep_percent=False)


def mimeblob(value: str, *, escape_space: bool = False) -> str:
    """squid's ``QuoteMimeBlob`` (the ``%[`` modifier).

    CR and LF become ``\\r``/``\\n`` (header blocks stay readable), a backslash
    is doubled, and controls, DEL, non-ASCII bytes, ``%``, ``[`` and ``]``
    become lower-case ``%xx``.  squid leaves spaces alone; ``escape_space``
    is our addition for user names, which the native format logs as one
    unbracketed field (a space there would shift every following field).
    """
    out: list[str] = []
    for b in value.encode("utf-8", "surrogatepass"):
        if b == 0x0D:
            out.append("\\r")
        elif b == 0x0A:
            out.append("\\n")
        elif b <= 0x1F or b >= 0x7F or b in b"%[]" or (escape_space and b == 0x20):
            out.append(f"%{b:02x}")
        elif b == 0x5C:
            out.append("\\\\")
        else:
            out.append(chr(b))
    return "".join(out)


_QUOTED_SPECIAL = re.compile('["\\\\\r\n\t\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')
_QUOTED_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def _backslash_escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _QUOTED_NAMED.get(ch)
    if named is not None:
        return named
    # squid would pass these through raw; \xHH / \uHHHH keeps the line whole.
    return f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}"


def quoted(value: str) -> str:
    """squid's ``log_quoted_string`` (the ``%"`` modifier), plus other controls."""
    return _QUOTED_SPECIAL.sub(_backslash_escape, value)


_SHELL_SPECIAL = re.compile('["\\\\\r\n\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')


def shell(value: str) -> str:
    """squid's ``strwordquote`` (the ``%/`` modifier): wrap in quotes if spaced."""
    body = _SHELL_SPECIAL.sub(_backslash_escape, value)
    return f'"{body}"' if " " in value else body


def defang(value: str, *, allow_space: bool = False) -> str:
    """Percent-encode what could break the line, and by default the field.

    Used for values squid prints without any encoding: it generates them
    itself (addresses, tags, MIME types), so they are printable ASCII words
    and come out unchanged; anything else did not come from a well-behaved
    source.  ``allow_space`` keeps spaces and non-ASCII text (only line
    breakers are encoded): for our own multi-word values like ``%tl`` and
    for raw mode.
    """
    pattern = _LINE_BREAKERS if allow_space else _NOT_WORD_CHAR
    if not pattern.search(value):
        return value
    return pattern.sub(lambda m: _pct_upper(m.group()), value)


_WHITESPACE = re.compile("[ \t\n\v\f\r]")


def is_plain_word(value: str) -> bool:
    """Printable ASCII without spaces: what `defang` returns unchanged."""
    return _NOT_WORD_CHAR.search(value) is None


def is_url_safe(value: str) -> bool:
    """What `url_unescaped` and `clean_log_uri` return unchanged, for a plain word."""
    return _UNSAFE_KEEP_PERCENT.search(value) is None


def clean_log_uri(raw: str) -> str:
    """The URL as squid stores it for ``%ru`` under the default ``uri_whitespace strip``.

    squid's ``setLogUri`` drops whitespace, then applies
    ``rfc1738_escape_unescaped``; ``%ru`` later prints that result raw.
    """
    return url_unescaped(_WHITESPACE.sub("", raw))
