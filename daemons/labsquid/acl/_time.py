"""squid's ``time`` acl: days of the week and times of day, on the local clock.

Theory of operation
-------------------
``acl NAME time [DAYS] [h1:m1-h2:m2] ...``, as squid 5.7 reads it (checked
here against its ``-k parse`` and its answers):

* DAYS is letters: S Sunday, M Monday, T Tuesday, W Wednesday, H Thursday,
  F Friday, A Saturday, D the weekdays M-F; ``-`` is a placeholder and means
  nothing.  Any other letter is an error here (squid logs "Bad Day" and goes
  on without it, which silently changes what the rule matches).
* Each time range takes the days written since the range before it, and
  every day when there are none.  So ``MTWHF 08:00-12:00 13:00-17:00`` gives
  its second range to every day of the week, as squid does; a warning says
  so, since it is rarely what was meant (a second acl line with the same name
  is the way to write it).  Days after the last range are whole days.
* A range is inclusive at both ends, to the minute: 08:00-17:00 matches
  from 08:00:00 to 17:00:59.  24:00 may end one; a range that ends before it
  starts is an error, as in squid.
* Lines with the same name are ORed.

The clock is read when a rule is checked; ``span_matches`` is the pure part.
"""

from __future__ import annotations

import re
import time

from labsquid.acl._base import Matcher, Problems, Values

# tm_wday numbers (Monday is 0), as time.localtime gives them.
_DAYS = {"M": (0,), "T": (1,), "W": (2,), "H": (3,), "F": (4,), "A": (5,), "S": (6,),
         "D": (0, 1, 2, 3, 4)}
_EVERY_DAY = frozenset(range(7))
_RANGE = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")

# (days, first minute, last minute) of the day, inclusive
Span = tuple[frozenset[int], int, int]


def span_matches(spans: tuple[Span, ...], weekday: int, minute: int) -> bool:
    """Whether ``minute`` (0-1439) of ``weekday`` (Monday 0) falls in a span."""
    for days, first, last in spans:
        if weekday in days and first <= minute <= last:
            return True
    return False


def _parse_range(token: str) -> tuple[int, int] | None:
    found = _RANGE.fullmatch(token)
    if found is None:
        return None
    h1, m1, h2, m2 = (int(part) for part in found.groups())
    if not (h1 < 24 and m1 < 60 and m2 < 60 and (h2 < 24 or (h2 == 24 and m2 == 0))):
        return None
    return h1 * 60 + m1, h2 * 60 + m2


def _spans_of(values: Values, label: str, problems: Problems) -> list[Span]:
    spans: list[Span] = []
    days: set[int] = set()
    days_before = False  # whether the range before had days of its own
    for token in values.values:
        if token[0].isdigit():
            minutes = _parse_range(token)
            if minutes is None:
                problems.error(values.where, f"{label}: bad time range '{token}' "
                                             "(h1:m1-h2:m2, 00:00 to 24:00)")
                continue
            first, last = minutes
            if first > last:
                problems.error(values.where, f"{label}: reversed time range '{token}'")
                continue
            if not days and days_before:
                problems.warn(values.where, f"{label}: the range '{token}' has no days "
                                            "of its own, so it applies to every day (as "
                                            "in squid); put days before it to limit it")
            spans.append((frozenset(days) or _EVERY_DAY, first, min(last, 1439)))
            days_before, days = bool(days), set()
            continue
        for letter in token:
            if letter in _DAYS:
                days.update(_DAYS[letter])
            elif letter != "-":
                problems.error(values.where, f"{label}: bad day '{letter}' in '{token}' "
                                             "(S M T W H F A, or D for M-F)")
    if days:
        spans.append((frozenset(days), 0, 1439))
    if not spans and values.values:
        problems.error(values.where, f"{label}: no day and no time range")
    return spans


def compile_time(lines: list[Values], label: str, problems: Problems) -> Matcher:
    spans: list[Span] = []
    for values in lines:
        spans += _spans_of(values, label, problems)
    frozen = tuple(spans)

    def match(_ctx: object) -> bool:
        now = time.localtime()
        return span_matches(frozen, now.tm_wday, now.tm_hour * 60 + now.tm_min)

    return match
