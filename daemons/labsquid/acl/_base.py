"""Shared vocabulary of the acl package: the request facts, errors, warnings.

Nothing here knows any acl type; the other modules build on these names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only attributes are read at run time: no import cycle with config
    from labsquid.config import Where
    from labsquid.http import Headers

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A compiled acl answers True/False, or None for "cannot tell until the
# destination host is resolved" (only dst-style acls ever answer None).
Verdict = bool | None
Matcher = Callable[["AccessContext"], Verdict]


@dataclass(slots=True)  # not frozen: made per request, and frozen __init__ is slow
class AccessContext:
    """What an access check may look at, filled in by the HTTP layer.

    ``url`` is what squid calls the effective request URI: the absolute URL,
    or ``host:port`` for CONNECT.  ``proto`` is squid's scheme name in upper
    case (``HTTP``, ``HTTPS``, ``FTP``...; squid leaves a CONNECT request's
    scheme as ``NONE``).  ``dst`` is the resolved addresses of ``host``, or
    None while nobody has resolved it; an IP-literal host never needs it.
    ``headers`` are the request's (None: no request head was parsed).
    ``client_connections``: how many connections from ``src`` are open in
    this serving process, this one included (``maxconn``).  ``port_name``:
    the name of the ``http_port`` the client reached (``myportname``).
    ``has_request``/``has_response`` are what squid's ``has`` acl asks: every
    transaction has a request but one logged for a connection that ended
    before a request head; a response, once one was made (never yet while
    ``http_access`` is checked).  ``status`` is the response's (0: none yet).
    """

    src: IPAddress
    local_port: int
    method: str
    proto: str
    host: str
    port: int
    url: str
    path: str
    dst: tuple[IPAddress, ...] | None = None
    headers: Headers | None = None
    client_connections: int = 0
    port_name: str = ""
    has_request: bool = True
    has_response: bool = False
    status: int = 0

    def resolved(self, addresses: tuple[IPAddress, ...]) -> AccessContext:
        """The same request once ``host`` resolved (empty tuple: lookup failed)."""
        return replace(self, dst=tuple(addresses))


class AclError(Exception):
    """A bad ``acl`` or ``http_access`` line.

    ``where``/``message`` describe the first problem; ``errors`` holds every
    problem found (itself included) so ``-k parse`` can list them all.
    """

    def __init__(self, where: Where | None, message: str,
                 errors: list[AclError] | None = None) -> None:
        super().__init__(message)
        self.where = where
        self.message = message
        self.errors: list[AclError] = errors if errors is not None else [self]

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class AclWarning:
    """Something squid accepts but complains about (empty acl, masked bits...)."""

    where: Where | None
    message: str


class Problems:
    """Collects errors and warnings while compiling, so all are reported at once."""

    def __init__(self) -> None:
        self.errors: list[AclError] = []
        self.warnings: list[AclWarning] = []

    def error(self, where: Where | None, message: str) -> None:
        self.errors.append(AclError(where, message))

    def warn(self, where: Where | None, message: str) -> None:
        self.warnings.append(AclWarning(where, message))

    def raise_if_any(self) -> None:
        if self.errors:
            first = self.errors[0]
            raise AclError(first.where, first.message, list(self.errors))


@dataclass(frozen=True, slots=True)
class Values:
    """One ``acl`` line as a type compiler sees it: its values, minus options."""

    where: Where | None
    options: frozenset[str]
    values: tuple[str, ...]


def split_options(args: tuple[str, ...], allowed: frozenset[str], where: Where | None,
                  label: str, problems: Problems) -> Values:
    """Peel squid's leading ``-x`` options off an acl line; ``--`` ends them."""
    options: set[str] = set()
    i = 0
    while i < len(args) and args[i].startswith("-") and len(args[i]) > 1:
        token = args[i]
        i += 1
        if token == "--":
            break
        if token in allowed:
            options.add(token)
        else:
            problems.error(where, f"{label}: unsupported option '{token}'")
    return Values(where, frozenset(options), tuple(args[i:]))
