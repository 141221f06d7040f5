"""``acl`` lines in, named matchers out.

Theory of operation
-------------------
Squid's rules for the ``acl`` directive, as this module applies them:

* Built-in acls (``all``, ``manager``, ``localhost``, ``to_localhost``,
  ``to_linklocal``, ``CONNECT``, as in squid 5's cf.data.pre) are defined
  before the config's own lines, so a config line with the same name and type
  *appends* to the built-in, as it would in squid.
* Lines sharing a name append their values; a later line giving the name
  another type is an error (squid: "ACL 'x' already exists with different
  type").  Names are compared case-insensitively, like squid 5's
  ``ACL::FindByName``.
* ``acl manager proto cache_object`` from squid 3 configs is skipped with a
  warning, since ``manager`` is built in (squid does the same).
* ``myport`` is squid's old name for ``localport`` and is accepted as such.
* An acl with no values matches nothing, with a warning (squid: "empty ACL").
* A ``method`` acl naming PURGE, used or not, turns squid's PURGE on
  (``AclSet.purge_enabled``): without one, squid refuses every PURGE.

Every problem in every line is collected before one ``AclError`` is raised,
so ``-k parse`` can show them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from labsquid.acl import _addresses, _time, _values
from labsquid.acl._base import AclWarning, Matcher, Problems, Values, split_options
from labsquid.http import canonical_method

if TYPE_CHECKING:
    from labsquid.config import AclLine, Where

Compiler = Callable[[list[Values], str, Problems], Matcher]

# type -> (compiler, options squid accepts at the head of a line)
_TYPES: dict[str, tuple[Compiler, frozenset[str]]] = {
    "src": (_addresses.compile_src, frozenset()),
    "dst": (_addresses.compile_dst, frozenset({"-n"})),
    "port": (_values.compile_port, frozenset()),
    "localport": (_values.compile_localport, frozenset()),
    "method": (_values.compile_method, frozenset()),
    "proto": (_values.compile_proto, frozenset()),
    "dstdomain": (_values.compile_dstdomain, frozenset({"-n"})),
    "dstdom_regex": (_values.compile_dstdom_regex, frozenset({"-n", "-i"})),
    "url_regex": (_values.compile_url_regex, frozenset({"-i"})),
    "urlpath_regex": (_values.compile_urlpath_regex, frozenset({"-i"})),
    "has": (_values.compile_has, frozenset()),
    "time": (_time.compile_time, frozenset()),
    "browser": (_values.compile_browser, frozenset({"-i"})),
    "req_header": (_values.compile_req_header, frozenset()),
    "http_status": (_values.compile_http_status, frozenset()),
    "maxconn": (_values.compile_maxconn, frozenset()),
    "myportname": (_values.compile_myportname, frozenset()),
}
_ALIASES = {"myport": "localport"}
_NEEDS_DST = frozenset({"dst"})

ACL_NAME_MAX = 63  # squid's ACL_NAME_SZ is 64 bytes with the NUL

# squid 5's predefined acls (cf.data.pre, acl DEFAULT lines)
BUILTIN_ACLS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("all", "src", ("all",)),
    ("manager", "url_regex",
     ("-i", "^cache_object://", "+i", "^https?://[^/]+/squid-internal-mgr/")),
    ("localhost", "src", ("127.0.0.1/32", "::1")),
    ("to_localhost", "dst", ("127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128")),
    ("to_linklocal", "dst", ("169.254.0.0/16", "fe80::/10")),
    ("CONNECT", "method", ("CONNECT",)),
)


@dataclass(frozen=True, slots=True)
class Acl:
    """One compiled acl: ``match(ctx)`` is True/False, or None if it needs ``ctx.dst``."""

    name: str
    type: str
    match: Matcher = field(repr=False, compare=False)
    needs_dst: bool = False


class AclSet:
    """Every acl of a configuration, built-ins included, looked up by name."""

    def __init__(self, acls: dict[str, Acl], warnings: list[AclWarning],
                 purge_enabled: bool = False) -> None:
        self._acls = acls  # keyed by casefolded name
        self.warnings: tuple[AclWarning, ...] = tuple(warnings)
        # squid answers PURGE itself only when some ``method`` acl names it
        # (whether or not a rule uses that acl); otherwise PURGE is refused.
        self.purge_enabled = purge_enabled

    def get(self, name: str) -> Acl | None:
        return self._acls.get(name.casefold())

    def __getitem__(self, name: str) -> Acl:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.casefold() in self._acls

    def __iter__(self) -> Iterator[str]:
        return (acl.name for acl in self._acls.values())

    def __len__(self) -> int:
        return len(self._acls)


@dataclass
class _Pending:
    """An acl being gathered from its lines before it is compiled."""

    name: str
    type: str
    where: Where | None
    lines: list[Values] = field(default_factory=list)


def _gather(defs: list[tuple[str, str, tuple[str, ...], Where | None]],
            problems: Problems) -> dict[str, _Pending]:
    pending: dict[str, _Pending] = {}
    for name, raw_type, args, where in defs:
        acl_type = _ALIASES.get(raw_type, raw_type)
        if len(name) > ACL_NAME_MAX:
            problems.error(where, f"ACL name '{name}' too long, "
                                  f"max {ACL_NAME_MAX} characters supported")
            continue
        if acl_type == "proto" and name.casefold() == "manager":
            problems.warn(where, "ACL 'manager' is now a built-in ACL; remove it from the config")
            continue
        if acl_type not in _TYPES:
            problems.error(where, f"unknown acl type '{raw_type}'")
            continue
        known = pending.get(name.casefold())
        if known is None:
            known = pending[name.casefold()] = _Pending(name, acl_type, where)
        elif known.type != acl_type:
            problems.error(where, f"ACL '{known.name}' already exists with different type")
            continue
        _compiler, options = _TYPES[acl_type]
        label = f"acl '{known.name}' {acl_type}"
        known.lines.append(split_options(args, options, where, label, problems))
    return pending


def compile_acls(lines: list[AclLine]) -> AclSet:
    """Validate and compile every ``acl`` line (plus squid's built-ins).

    Raises ``AclError`` listing every problem found.
    """
    problems = Problems()
    defs = [(name, kind, args, None) for name, kind, args in BUILTIN_ACLS]
    defs += [(line.name, line.type, tuple(line.args), line.where) for line in lines]
    acls: dict[str, Acl] = {}
    pending = _gather(defs, problems)
    for folded, item in pending.items():
        compiler, _options = _TYPES[item.type]
        matcher = compiler(item.lines, f"acl '{item.name}' {item.type}", problems)
        if not any(values.values for values in item.lines):
            problems.warn(item.where, f"empty ACL: '{item.name}' has no values and matches "
                                      "nothing")
        acls[folded] = Acl(item.name, item.type, matcher, item.type in _NEEDS_DST)
    problems.raise_if_any()
    purge_enabled = any(
        canonical_method(token.encode("latin-1")) == b"PURGE"
        for item in pending.values() if item.type == "method"
        for values in item.lines for token in values.values)
    return AclSet(acls, problems.warnings, purge_enabled)
