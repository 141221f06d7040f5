"""Squid's access control: ``acl`` definitions and ``http_access`` rules.

Theory of operation
-------------------
Two pure steps, both run once per (re)configuration:

1. ``compile_acls(acl_lines)`` turns the raw ``acl`` lines the config module
   stored into an ``AclSet`` of named matchers, adding squid's built-ins and
   raising one ``AclError`` that lists every bad line.
2. ``compile_access(http_access_lines, acl_set)`` binds each rule to its
   matchers and returns an ``AccessList``.

Then, per request, ``AccessList.check(AccessContext)`` returns a ``Decision``,
and ``LogTargets.choose`` (from ``compile_log_targets``) names the
``access_log`` files that take the request's line.
Nothing here does I/O: when a ``dst`` acl needs the destination's addresses the
decision says ``needs_dst`` and the caller resolves and asks again.

The modules: ``_base`` (context, errors), ``_addresses`` (src/dst),
``_values`` (ports, methods, protocols, domains, regexes, request headers,
reply status, transaction components), ``_time`` (days and hours), ``_acls`` (the
``acl`` directive), ``_access`` (the ``http_access`` evaluation).
"""

from labsquid.acl._access import (
    AccessList,
    Decision,
    LogTargets,
    compile_access,
    compile_log_targets,
)
from labsquid.acl._acls import BUILTIN_ACLS, Acl, AclSet, compile_acls
from labsquid.acl._base import AccessContext, AclError, AclWarning

__all__ = [
    "BUILTIN_ACLS",
    "AccessContext",
    "AccessList",
    "Acl",
    "AclError",
    "AclSet",
    "AclWarning",
    "Decision",
    "LogTargets",
    "compile_access",
    "compile_log_targets",
    "compile_acls",
]
