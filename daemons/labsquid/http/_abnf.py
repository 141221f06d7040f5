"""Character classes from RFC 9110 §5.6 / RFC 9112, as `bytes.translate` tables.

Each class is a byte string of its members (``TCHAR``) and a 256-byte table
(``TCHAR_CLASS``) that maps a member to ``a`` and any other byte to a space.
Validation is ``s.translate(TCHAR_CLASS).isalpha()``: true when `s` is not
empty and every byte is a member, checked in C over the whole field at once
instead of a Python loop or a regex per byte.  A table, not deletion
(``s.translate(None, TCHAR)``): CPython builds a deletion table on every
call, which costs three times the check itself on a short field.  Over a
whole head (`_head.check_head_bytes`) that fixed cost is the smaller one,
and deletion stays.
"""

from __future__ import annotations

import string

DIGITS = string.digits.encode()
HEXDIGITS = string.hexdigits.encode()
ALPHA = string.ascii_letters.encode()

# tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TCHAR = b"!#$%&'*+-.^_`|~" + DIGITS + ALPHA

# VCHAR: visible ASCII, what a request-target may contain (no obs-text: h11
# refuses it there too, and a proxy re-serializes the target upstream).
VCHAR = bytes(range(0x21, 0x7F))

# field-value / reason-phrase: VCHAR, obs-text, SP and HTAB; never NUL, CR, LF
# or any other control.
FIELD_VALUE = b" \t" + VCHAR + bytes(range(0x80, 0x100))

OWS = b" \t"


def class_table(members: bytes) -> bytes:
    """The translate table of a class: members to ``a``, other bytes to a space."""
    return bytes(0x61 if byte in members else 0x20 for byte in range(256))


TCHAR_CLASS = class_table(TCHAR)
VCHAR_CLASS = class_table(VCHAR)
FIELD_VALUE_CLASS = class_table(FIELD_VALUE)
HEXDIGITS_CLASS = class_table(HEXDIGITS)


def is_token(s: bytes) -> bool:
    return s.translate(TCHAR_CLASS).isalpha()
