"""`acl` and `http_access` lines, read but not interpreted.

What an acl *type* means is `labsquid.acl`'s business; here a line is only
split into its parts. The one thing resolved here is squid's value file: an
acl value written in quotes, `"/etc/labsquid/blocked-sites"`, stands for the
lines of that file, one value per line, with blank lines and `#` comments
skipped. A relative name is taken from the directory of the config file the
acl line is in (squid uses its working directory, which a service cannot rely
on).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from ._files import FileSource, relative_to
from ._lexer import Line, Quoted
from ._model import AccessLine, AclLine
from ._units import BadValue

# squid allows these in acl names; '!' in particular would clash with negation.
_ACL_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def parse_acl(line: Line) -> AclLine:
    if not line.args:
        raise BadValue("missing acl name")
    name = line.args[0]
    if not _ACL_NAME.fullmatch(name):
        raise BadValue(f"invalid acl name '{name}' (use letters, digits, '-', '.' and '_')")
    if len(line.args) < 2:
        raise BadValue(f"missing type for acl '{name}'")
    return AclLine(name, line.args[1], tuple(line.args[2:]), line.where)


def parse_http_access(line: Line) -> AccessLine:
    if not line.args:
        raise BadValue("missing 'allow' or 'deny'")
    action = line.args[0]
    if action not in ("allow", "deny"):
        raise BadValue(f"expected 'allow' or 'deny', got '{action}'")
    if len(line.args) == 1:
        raise BadValue(f"'{action}' needs at least one acl name (use 'all' to match everything)")
    return AccessLine(action == "allow", parse_acl_list(line.args[1:]), line.where)


def parse_acl_list(tokens: Sequence[str]) -> tuple[tuple[bool, str], ...]:
    """`[!]NAME ...` as (negated, name) pairs."""
    acls = []
    for token in tokens:
        negated = token.startswith("!")
        name = token[1:] if negated else token
        if not name:
            raise BadValue("missing acl name after '!'")
        acls.append((negated, name))
    return tuple(acls)


def read_value_file(text: str) -> list[str]:
    """The values in an acl value file: one per line, `#` comments dropped."""
    values = []
    for raw in text.splitlines():
        value = re.split(r"\s#", raw, maxsplit=1)[0].strip()
        if value and not value.startswith("#"):
            values.append(value)
    return values


def expand_value_files(line: Line, files: FileSource) -> Line:
    """`line` with every quoted acl value replaced by the values in that file."""
    head, values = line.args[:2], line.args[2:]  # the acl's name and type stay as written
    if not any(isinstance(arg, Quoted) for arg in values):
        return line
    args: list[str] = list(head)
    for arg in values:
        if not isinstance(arg, Quoted):
            args.append(arg)
            continue
        path = relative_to(line.where.file, arg)
        try:
            args.extend(read_value_file(files.read_text(path)))
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise BadValue(f"cannot read acl values from '{path}': {reason}") from None
    # The offsets no longer match the text; nothing reads acl lines raw.
    return dataclasses.replace(line, args=tuple(args), offsets=())
