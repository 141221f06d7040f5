"""``http_access`` rules: squid's first-match evaluation, sans I/O.

Theory of operation
-------------------
Rules are tried in order.  A rule matches when every acl it names matches
(``!name`` inverts one), tested left to right and stopping at the first that
fails, exactly like squid.  The first matching rule decides.  When no rule
matches, the answer is the opposite of the last rule's action (squid's
"implicit last rule"), so a list ending in ``allow x`` denies everyone else;
an empty list denies.

A ``dst`` acl may need the host's addresses.  Squid would pause the check for
a DNS lookup; we return ``Decision(needs_dst=True)`` instead, and the caller
resolves without blocking, then calls ``check`` again with ``ctx.dst`` filled
in.  Because evaluation short-circuits, a rule that already failed on an
earlier acl never asks for a lookup.

Acl names in rules are resolved once, at compile time, so ``check`` only
calls precompiled matchers.

``access_log`` lines use the same acl lists differently (squid's
``accessLogLogTo``): every line whose acls match (or that has none) takes
the request's line, in order, until a matching ``access_log none`` ends the
walk.  That check cannot pause, so a ``dst`` acl with no addresses known
yet counts as not matching, as squid's fast checks do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from labsquid.acl._acls import Acl, AclSet
from labsquid.acl._base import AccessContext, AclWarning, Problems, Verdict

if TYPE_CHECKING:
    from labsquid.config import AccessLine, AccessLog, Where

_Terms = tuple[tuple[bool, Acl], ...]  # (negated, acl), all must hold


def _all_hold(terms: _Terms, ctx: AccessContext) -> Verdict:
    for negated, acl in terms:
        verdict = acl.match(ctx)
        if verdict is None:
            return None
        if verdict == negated:  # a mismatch (or a negated match) ends the rule
            return False
    return True


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a check.

    ``rule`` is the line that matched, None when the implicit default decided
    (or when ``needs_dst`` is set, in which case ``allowed`` means nothing yet).
    """

    allowed: bool
    rule: AccessLine | None
    needs_dst: bool = False


_NEEDS_DST = Decision(allowed=False, rule=None, needs_dst=True)


@dataclass(frozen=True, slots=True)
class _Rule:
    line: AccessLine
    terms: _Terms
    decision: Decision  # what the rule decides when it matches; made once

    def matches(self, ctx: AccessContext) -> Verdict:
        return _all_hold(self.terms, ctx)


class AccessList:
    """A compiled ``http_access`` list; ``check(ctx)`` runs per request."""

    def __init__(self, rules: list[_Rule], warnings: list[AclWarning]) -> None:
        self._rules = tuple(rules)
        self.warnings: tuple[AclWarning, ...] = tuple(warnings)
        last_allows = rules[-1].line.allow if rules else True  # no rules: deny
        self._default = Decision(allowed=not last_allows, rule=None)

    def __len__(self) -> int:
        return len(self._rules)

    def check(self, ctx: AccessContext) -> Decision:
        for rule in self._rules:
            verdict = rule.matches(ctx)
            if verdict is None:
                return _NEEDS_DST
            if verdict:
                return rule.decision
        return self._default


def _terms(names: tuple[tuple[bool, str], ...], acls: AclSet, where: Where | None,
           problems: Problems) -> _Terms:
    terms: list[tuple[bool, Acl]] = []
    for negated, name in names:
        acl = acls.get(name)
        if acl is None:
            problems.error(where, f"ACL not found: {name}")
        else:
            terms.append((bool(negated), acl))
    return tuple(terms)


def compile_access(lines: list[AccessLine], acls: AclSet) -> AccessList:
    """Resolve the acl names of every rule; raises ``AclError`` for unknown ones."""
    problems = Problems()
    rules: list[_Rule] = []
    for line in lines:
        if not line.acls:  # squid skips such a line, it does not make it match all
            problems.warn(line.where, "access line contains no ACLs, skipping")
            continue
        terms = _terms(line.acls, acls, line.where, problems)
        rules.append(_Rule(line, terms, Decision(allowed=line.allow, rule=line)))
    problems.raise_if_any()
    return AccessList(rules, problems.warnings)


class LogTargets:
    """Which ``access_log`` files take a request's line; ``choose(ctx)``
    returns their indices (their order among the lines that name a file)."""

    def __init__(self, rules: list[tuple[int | None, _Terms]]) -> None:
        self._rules = tuple(rules)  # (file index, or None for `none`; terms)

    def choose(self, ctx: AccessContext) -> list[int]:
        chosen: list[int] = []
        for index, terms in self._rules:
            if terms and _all_hold(terms, ctx) is not True:
                continue
            if index is None:
                break
            chosen.append(index)
        return chosen


def compile_log_targets(entries: list[AccessLog], acls: AclSet) -> LogTargets | None:
    """The ``access_log`` lines as a ``LogTargets``; None when no line has
    acls or is ``none`` and at most one names a file: then every request's
    line goes to that file, if any, and nothing needs checking."""
    if (not any(e.acls or e.module == "none" for e in entries)
            and sum(e.module != "none" for e in entries) <= 1):
        return None
    problems = Problems()
    rules: list[tuple[int | None, _Terms]] = []
    files = 0
    for entry in entries:
        index = None
        if entry.module != "none":
            index, files = files, files + 1
        rules.append((index, _terms(entry.acls, acls, entry.where, problems)))
    problems.raise_if_any()
    return LogTargets(rules)
