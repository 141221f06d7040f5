"""Character classes from RFC 9110 §5.6 / RFC 9112, as `bytes.translate` tables.

Validation is ``not s.translate(None, ALLOWED)``: translate deletes every
allowed byte in C and whatever survives is a violation. That checks a whole
field in one call instead of a Python loop or a regex per byte.
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


def is_token(s: bytes) -> bool:
    return bool(s) and not s.translate(None, TCHAR)
