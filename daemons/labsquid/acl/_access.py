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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from labsquid.acl._acls import Acl, AclSet
from labsquid.acl._base import AccessContext, AclWarning, Problems, Verdict

if TYPE_CHECKING:
    from labsquid.config import AccessLine


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
    terms: tuple[tuple[bool, Acl], ...]  # (negated, acl)
    decision: Decision  # what the rule decides when it matches; made once


    def matches(self, ctx: AccessContext) -> Verdict:
        for negated, acl in self.terms:
            verdict = acl.match(ctx)
            if verdict is None:
                return None
            if verdict == negated:  # a mismatch (or a negated match) ends the rule
                return False
        return True


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


def compile_access(lines: list[AccessLine], acls: AclSet) -> AccessList:
    """Resolve the acl names of every rule; raises ``AclError`` for unknown ones."""
    problems = Problems()
    rules: list[_Rule] = []
    for line in lines:
        if not line.acls:  # squid skips such a line, it does not make it match all
            problems.warn(line.where, "access line contains no ACLs, skipping")
            continue
        terms: list[tuple[bool, Acl]] = []
        for negated, name in line.acls:
            acl = acls.get(name)
            if acl is None:
                problems.error(line.where, f"ACL not found: {name}")
            else:
                terms.append((bool(negated), acl))
        rules.append(_Rule(line, tuple(terms), Decision(allowed=line.allow, rule=line)))
    problems.raise_if_any()
    return AccessList(rules, problems.warnings)
