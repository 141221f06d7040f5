"""From directive lines to a `Config`, collecting every problem on the way.

Theory of operation. Lines arrive in reading order (includes already
expanded, lexer problems interleaved). Each line is looked up in the directive
table and parsed; a failure becomes a problem and the line is dropped, and
reading goes on, so one run reports everything that is wrong.

Some rules depend on what came before, exactly as in squid, which resolves
names while it reads: an acl must be defined before `http_access` or
`access_log` names it, a log format before `access_log` uses it, and an acl
name keeps the type it was first given. Acl names compare case-insensitively,
as in squid 5. squid's predefined acls count as defined before the first line;
they are not stored in `Config.acls`, since labsquid.acl adds them itself.

At the end, directives never set take their defaults, and the acl lines are
handed to `labsquid.acl` (when that module exists) for the checks only it can
do - whether a type exists, whether a value fits it. Its problems are merged
into the list by the position of the line they point at; a line that already
has a problem of ours keeps only that one, so nothing is reported twice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from importlib import resources
from typing import Any

from ._access import expand_value_files
from ._directives import (
    BUILTIN_LOGFORMATS,
    DIRECTIVES,
    SQUID_ONLY_MANAGER_ACTIONS,
    Directive,
    Kind,
)
from ._files import FileSource
from ._lexer import Line, split_lines
from ._model import (
    AccessLine,
    AccessLog,
    AclLine,
    Config,
    ConfigError,
    ConfigProblem,
    ManagerPassword,
    Where,
)
from ._units import BadValue

# squid's predefined acls and their types (squid 5 cf.data.pre; labsquid.acl
# defines their values).
PREDEFINED_ACLS = {
    "all": "src",
    "manager": "url_regex",
    "localhost": "src",
    "to_localhost": "dst",
    "to_linklocal": "dst",
    "CONNECT": "method",
}
BUILTIN_WHERE = Where("<built-in>", 0, "acl")
DEFAULT_FILE = "<default>"

_ATTRIBUTE = {"acl": "acls"}  # Config attributes that differ from the directive name


# squid directives that only tune its cache, its memory or its own logging:
# without a cache they change nothing about who may use the proxy, where a
# request goes or what is sent on, so ignoring them (with a warning) cannot
# weaken a policy.  Any other squid directive labsquid lacks (http_reply_access,
# cache_peer, request_header_access...) stays an error: ignored, the proxy
# would serve what the configuration forbids.
IGNORABLE_SQUID_DIRECTIVES = frozenset({
    "cache", "cache_dir", "cache_mem", "cache_replacement_policy", "cache_store_log",
    "cache_swap_high", "cache_swap_low", "cache_swap_state", "client_db",
    "collapsed_forwarding", "coredump_dir", "cpu_affinity_map", "debug_options",
    "fqdncache_size", "high_memory_warning", "ipcache_high", "ipcache_low", "ipcache_size",
    "max_stale", "maximum_object_size", "maximum_object_size_in_memory",
    "memory_cache_mode", "memory_cache_shared", "memory_pools", "memory_pools_limit",
    "memory_replacement_policy", "minimum_expiry_time", "minimum_object_size",
    "netdb_filename", "offline_mode", "pinger_enable", "quick_abort_max", "quick_abort_min",
    "quick_abort_pct", "range_offset_limit", "read_ahead_gap", "refresh_pattern",
    "shared_transient_entries_limit", "store_avg_object_size", "store_dir_select_algorithm",
    "store_objects_per_bucket",
})


@functools.cache
def squid_directives() -> frozenset[str]:
    """Every directive squid knows (``data/squid-directives``)."""
    text = resources.files("labsquid").joinpath("data", "squid-directives").read_text()
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


def attribute_name(directive: str) -> str:
    return _ATTRIBUTE.get(directive, directive)


class Builder:
    def __init__(self, files: FileSource) -> None:
        self._files = files
        self._singles: dict[str, Any] = {}
        self._lists: dict[str, list[Any]] = {}
        self._maps: dict[str, dict[str, Any]] = {}
        # each acl name (casefolded) -> its first definition
        self._acls: dict[str, AclLine] = {
            name.casefold(): AclLine(name, acl_type, (), BUILTIN_WHERE)
            for name, acl_type in PREDEFINED_ACLS.items()
        }
        self._formats: set[str] = set(BUILTIN_LOGFORMATS)
        self._problems: list[tuple[float, ConfigProblem]] = []
        self._warnings: list[ConfigProblem] = []
        self._positions: dict[Where, int] = {}

    def feed_all(self, items: Iterable[Line | ConfigProblem]) -> None:
        for item in items:
            self.feed(item)

    def feed(self, item: Line | ConfigProblem) -> None:
        position = len(self._positions)
        if isinstance(item, ConfigProblem):
            self._problems.append((position, item))
            return
        self._positions.setdefault(item.where, position)
        directive = DIRECTIVES.get(item.directive)
        if directive is None:
            if item.directive in IGNORABLE_SQUID_DIRECTIVES:
                # squid.conf still loads: the directive is real, just not ours.
                self._warnings.append(ConfigProblem.at(
                    item.where, f"squid directive '{item.directive}' is not implemented "
                                "by labsquid: ignored"))
            elif item.directive in squid_directives():
                self._problem(item.where, f"squid directive '{item.directive}' is not "
                                          "implemented by labsquid")
            else:
                self._problem(item.where, f"unknown directive '{item.directive}'")
            return
        try:
            self._apply(directive, item)
        except BadValue as err:
            self._problem(item.where, f"{directive.name}: {err}")

    def _problem(self, where: Where, message: str) -> None:
        position = self._positions.get(where, math.inf)
        self._problems.append((position, ConfigProblem.at(where, message)))

    def _apply(self, directive: Directive, line: Line) -> None:
        if directive.reads_value_files:
            line = expand_value_files(line, self._files)
        value = self._link(directive.parse(line))
        if directive.kind is Kind.SINGLE:
            self._singles[directive.name] = value
        elif directive.kind is Kind.LIST:
            self._lists.setdefault(directive.name, []).append(value)
        else:
            key, entry = value
            entries = self._maps.setdefault(directive.name, {})
            if key in entries:
                raise BadValue(f"'{key}' is already defined")
            entries[key] = entry
            if directive.name == "logformat":
                self._formats.add(key)

    def _link(self, value: Any) -> Any:
        """Check (and for access_log, settle) what a value says about names."""
        if isinstance(value, AclLine):
            self._define_acl(value)
        elif isinstance(value, AccessLine):
            self._require_acls(value.acls)
        elif isinstance(value, AccessLog):
            value = self._resolve_access_log(value)
        elif isinstance(value, ManagerPassword):
            for action in value.actions:
                if action in SQUID_ONLY_MANAGER_ACTIONS:
                    self._warnings.append(ConfigProblem.at(
                        value.where, f"cachemgr_passwd: labsquid has no cache manager "
                                     f"action '{action}'"))
        return value

    def _define_acl(self, acl: AclLine) -> None:
        first = self._acls.setdefault(acl.name.casefold(), acl)
        if first.type == acl.type:
            return
        # squid adds the values of a repeated acl to the first one, which only
        # makes sense when both lines have the same type.
        if first.where == BUILTIN_WHERE:
            raise BadValue(f"'{first.name}' is a predefined acl of type '{first.type}'")
        raise BadValue(
            f"acl '{acl.name}' was defined with type '{first.type}' at {first.where}, "
            f"it cannot also have type '{acl.type}'"
        )

    def _require_acls(self, acls: Iterable[tuple[bool, str]]) -> None:
        for _, name in acls:
            if name.casefold() not in self._acls:
                raise BadValue(f"undefined acl '{name}'")

    def _resolve_access_log(self, log: AccessLog) -> AccessLog:
        logformat, acls = log.logformat, log.acls
        if not logformat:
            # squid's older form: a bare format name right after the place.
            if acls and not acls[0][0] and acls[0][1] in self._formats:
                logformat, acls = acls[0][1], acls[1:]
            else:
                logformat = "squid"
        elif logformat not in self._formats and log.module != "none":
            raise BadValue(f"unknown logformat '{logformat}'")
        self._require_acls(acls)
        for option, (applied, why) in _UNAPPLIED_LOG_OPTIONS.items():
            if option in log.options and log.options[option] != applied:
                self._warnings.append(ConfigProblem.at(
                    log.where, f"access_log: {option}={log.options[option]} is not applied: "
                               f"{why}"))
        return AccessLog(log.module, log.path, logformat, log.options, acls, log.where)

    # -- the end -------------------------------------------------------------

    def finish(self, source: str) -> Config:
        """The finished Config; raises ConfigError if anything was wrong."""
        values: dict[str, Any] = {"source": source}
        for directive in DIRECTIVES.values():
            values[attribute_name(directive.name)] = self._final_value(directive)
        files = [log for log in values["access_log"] if log.module != "none"]
        if len(files) > MAX_ACCESS_LOG_FILES:  # two hex digits name each on a child's pipe
            extra = files[MAX_ACCESS_LOG_FILES]
            self._problem(extra.where, f"labsquid writes at most {MAX_ACCESS_LOG_FILES} "
                                       "access_log files")
        values["warnings"] = tuple(self._warnings)
        flagged = {Where(p.file, p.line, p.directive) for _, p in self._problems}
        for where, message in _acl_module_problems(values["acls"]):
            if where not in flagged:
                self._problem(where, message)
        if self._problems:
            self._problems.sort(key=lambda entry: entry[0])  # stable: ties keep reading order
            raise ConfigError([problem for _, problem in self._problems])
        return Config(**values)

    def _final_value(self, directive: Directive) -> Any:
        if directive.kind is Kind.SINGLE:
            if directive.name in self._singles:
                return self._singles[directive.name]
            return self._link(directive.parse(_default_line(directive)))
        if directive.kind is Kind.LIST:
            items = self._lists.get(directive.name)
            if items is None and directive.default is not None:
                items = [self._link(directive.parse(_default_line(directive)))]
            return tuple(items or ())
        return dict(self._maps.get(directive.name, {}))


MAX_ACCESS_LOG_FILES = 256  # what two hex digits can name (labsquid.access_logs.tagged)
# access_log options labsquid does not apply: the one value it does (None:
# none), and why any other is a warning.
_UNAPPLIED_LOG_OPTIONS: dict[str, tuple[str | None, str]] = {
    "on-error": ("drop", "labsquid does not exit when a file cannot be written; it keeps "
                         "the lines and retries every second (on-error=drop drops them "
                         "instead once the file's queue is full)"),
    "buffer-size": (None, "lines wait in the kid's queue, whose bound is logfile_queue_size"),
}


def _default_line(directive: Directive) -> Line:
    assert directive.default is not None, directive.name
    text = f"{directive.name} {directive.default}"
    (line,) = split_lines(text, DEFAULT_FILE)
    assert isinstance(line, Line)
    return line


def _acl_module_problems(acls: tuple[AclLine, ...]) -> list[tuple[Where, str]]:
    """What labsquid.acl finds wrong with the acls, if labsquid.acl exists yet."""
    try:
        from labsquid import acl as acl_module
    except ModuleNotFoundError as err:
        if err.name != "labsquid.acl":
            raise  # labsquid.acl is there but broken: that is a bug, not a config problem
        return []
    try:
        acl_module.compile_acls(list(acls))
    except acl_module.AclError as err:
        errors = getattr(err, "errors", None) or [err]
        # An error about one of the module's own predefined acls has no line.
        return [(error.where or BUILTIN_WHERE, error.message) for error in errors]
    return []
