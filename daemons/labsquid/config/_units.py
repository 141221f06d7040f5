"""squid's value syntax: times, sizes, switches, counts and keywords.

Theory of operation. A time or size is a number followed by an optional unit
word, given as one or two tokens: `30 seconds`, `1.5 hours`, `64 KB`. Like
squid, a bare number is read in the directive's own default unit (seconds for
most timeouts, bytes for most sizes), and zero needs no unit at all. Unit words
are case-insensitive and may be singular or plural. Sizes use squid's binary
multiples (1 KB = 1024 bytes); a month is 30 days and a year 365.2522 days,
as in squid.

Every parser here either returns a plain Python value (float seconds, int
bytes, bool, int, str) or raises `BadValue` with a message meant for the
operator; it never says which directive it parses, the caller adds that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_DAY = 86400.0
_YEAR = 365.2522 * _DAY  # squid's HoursPerYear

TIME_UNITS: dict[str, float] = {
    "nanosecond": 1e-9,
    "microsecond": 1e-6,
    "msec": 1e-3,
    "millisecond": 1e-3,
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": _DAY,
    "week": 7 * _DAY,
    "fortnight": 14 * _DAY,
    "month": 30 * _DAY,
    "year": _YEAR,
    "decade": 10 * _YEAR,
}

SIZE_UNITS: dict[str, int] = {
    "byte": 1,
    "kb": 1 << 10,
    "mb": 1 << 20,
    "gb": 1 << 30,
}

_ALL_UNIT_WORDS = frozenset(TIME_UNITS) | frozenset(SIZE_UNITS)
_SWITCHES = {"on": True, "enable": True, "off": False, "disable": False}
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_SECONDS = 2**63 / 1e9  # squid keeps times as int64 nanoseconds (about 292 years)


class BadValue(ValueError):
    """A value the operator wrote cannot be used; str() is the explanation."""


def _unit_key(word: str) -> str:
    word = word.lower()
    # "seconds" -> "second", "msecs" -> "msec"; "bytes" -> "byte".
    return word[:-1] if word.endswith("s") and word[:-1] in _ALL_UNIT_WORDS else word


def parse_number(token: str) -> float:
    """A non-negative decimal number: digits with an optional fraction."""
    if token.startswith("-") and _DECIMAL.fullmatch(token[1:]):
        raise BadValue(f"'{token}' is negative")
    if not _DECIMAL.fullmatch(token):
        raise BadValue(f"'{token}' is not a number")
    return float(token)


def _split_amount(tokens: Sequence[str], what: str) -> tuple[str, str | None]:
    if not tokens:
        raise BadValue(f"missing {what}")
    if len(tokens) > 2:
        extra = " ".join(tokens[2:])
        raise BadValue(f"unexpected '{extra}' after the {what}")
    return tokens[0], (tokens[1] if len(tokens) == 2 else None)


def _scaled(tokens: Sequence[str], what: str, units: dict[str, float], default_unit: str,
            unknown: str) -> float:
    """`NUMBER [UNIT]` times the unit's scale; a bare number is in `default_unit`."""
    number_token, unit = _split_amount(tokens, what)
    number = parse_number(number_token)
    if unit is None:
        return number * units[default_unit]
    scale = units.get(_unit_key(unit))
    if scale is None:
        raise BadValue(unknown.format(unit=unit))
    return number * scale


def parse_time(tokens: Sequence[str], default_unit: str = "second") -> float:
    """`NUMBER [UNIT]` as seconds; a bare number is in `default_unit`."""
    seconds = _scaled(tokens, "time value", TIME_UNITS, default_unit,
                      "unknown time unit '{unit}'")
    if not seconds < _MAX_SECONDS:  # also catches an infinite product
        raise BadValue(f"time '{' '.join(tokens)}' is too large")
    return seconds


def parse_size(tokens: Sequence[str], default_unit: str = "byte") -> int:
    """`NUMBER [UNIT]` as bytes (rounded down); a bare number is in `default_unit`."""
    size = _scaled(tokens, "size", SIZE_UNITS, default_unit,
                   "unknown size unit '{unit}' (expected bytes, KB, MB or GB)")
    if not size < 2**63:  # squid stores sizes in int64_t; also catches infinity
        raise BadValue(f"size '{' '.join(tokens)}' is too large")
    return int(size)


def parse_switch(token: str) -> bool:
    """squid's on/off (also its older enable/disable spelling)."""
    try:
        return _SWITCHES[token.lower()]
    except KeyError:
        raise BadValue(f"expected 'on' or 'off', got '{token}'") from None


def parse_int(token: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """A whole decimal number within [minimum, maximum]."""
    if not _INTEGER.fullmatch(token):
        raise BadValue(f"'{token}' is not a whole number")
    number = int(token)
    if number < minimum:
        raise BadValue(f"{number} is too small (the minimum is {minimum})")
    if maximum is not None and number > maximum:
        raise BadValue(f"{number} is too large (the maximum is {maximum})")
    return number


def parse_choice(token: str, choices: Sequence[str]) -> str:
    """One of a fixed set of keywords (case-sensitive, like squid)."""
    if token in choices:
        return token
    expected = ", ".join(choices[:-1]) + " or " + choices[-1]
    raise BadValue(f"unknown value '{token}' (expected {expected})")
