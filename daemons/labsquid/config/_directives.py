"""The directive table: what each directive is called, how its arguments are
read, whether it sets one value or adds to a list, and its default.

Theory of operation. A directive's `parse` gets the whole `Line` and returns
the value (or raises `BadValue`). `SINGLE` directives keep the last value
written, as in squid; `LIST` directives append one item per line; `MAP`
directives add a (key, value) pair and refuse a key twice. Defaults are
written in config syntax and go through the same parser, the way squid's
cf.data.pre does it, so a default can never disagree with what the parser
accepts. A LIST or MAP default is used only when the directive never appears.

`labsquid_only` marks directives squid does not have; their defaults are ours.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labsquid.logfile import MAX_ROTATE

from ._access import parse_acl, parse_acl_list, parse_http_access
from ._lexer import Line
from ._model import AccessLog, HttpPort, ManagerPassword
from ._units import (
    BadValue,
    parse_choice,
    parse_int,
    parse_size,
    parse_switch,
    parse_time,
)

Parser = Callable[[Line], Any]

# Formats squid defines itself; `logformat` may not redefine them.
BUILTIN_LOGFORMATS = ("squid", "common", "combined", "referrer", "useragent")
ACCESS_LOG_MODULES = ("daemon", "stdio")  # and `access_log none`
POOL_DISPATCH_MODES = ("serial", "notify", "passfd", "shared", "reuseport")
FORWARDED_FOR_MODES = ("on", "off", "transparent", "delete", "truncate")
# The cache manager's actions (labsquid.proxy.mgr.ACTIONS, which a test keeps
# equal), for `cachemgr_passwd`; "all" stands for every one.
MANAGER_ACTIONS = ("index", "menu", "info", "service_times", "counters", "5min", "60min", "pool")
# The actions only squid 5.7 has: a squid.conf may protect them (shutdown,
# reconfigure...), and labsquid says it serves no such page.
SQUID_ONLY_MANAGER_ACTIONS = frozenset("""
    offline_toggle shutdown reconfigure rotate pconn mem diskd squidaio_counts config
    client_list comm_epoll_incoming ipcache fqdncache idns redirector store_id external_acl
    http_headers filedescriptors objects vm_objects io peer_select digest_stats
    utilization histograms active_requests username_cache openfd_objects
    store_digest store_log_tags storedir store_io store_check_cachable_stats refresh delay
    forward cbdata sbuf events netdb asndb carp userhash sourcehash server_list
""".split())


class Kind(enum.Enum):
    SINGLE = "replace the value"
    LIST = "append to the list"
    MAP = "add a named entry"


@dataclass(frozen=True)
class Directive:
    name: str
    parse: Parser
    kind: Kind
    default: str | None  # config syntax; None: no default (empty LIST/MAP)
    labsquid_only: bool = False
    reads_value_files: bool = False  # `"path"` arguments name files of values


# -- parser builders ---------------------------------------------------------


def _exactly_one(line: Line) -> str:
    if not line.args:
        raise BadValue("missing value")
    if len(line.args) > 1:
        raise BadValue(f"unexpected '{' '.join(line.args[1:])}' after the value")
    return line.args[0]


def _text(line: Line) -> str:
    return _exactly_one(line)


def _text_or_none(line: Line) -> str | None:
    value = _exactly_one(line)
    return None if value == "none" else value


def _switch(line: Line) -> bool:
    return parse_switch(_exactly_one(line))


def _count(minimum: int = 0, maximum: int | None = None) -> Parser:
    return lambda line: parse_int(_exactly_one(line), minimum=minimum, maximum=maximum)


def _choice(*choices: str) -> Parser:
    return lambda line: parse_choice(_exactly_one(line), choices)


def _time(default_unit: str = "second") -> Parser:
    return lambda line: parse_time(line.args, default_unit)


def _size(default_unit: str = "byte") -> Parser:
    return lambda line: parse_size(line.args, default_unit)


def _queue_size(line: Line) -> int:
    # The queue must hold at least one whole record (a 64 KiB line and its
    # letter), or a long line could never be sent.
    size = parse_size(line.args, "byte")
    if size < 65537:
        raise BadValue(f"must be at least 65537 bytes (one 64 KB log record), not {size}")
    return size


def _rest_of_line(line: Line) -> str:
    text = line.rest(0)
    if not text:
        raise BadValue("missing value")
    return text


# -- directives with a structure of their own ----------------------------------


def _pool_size(line: Line) -> int | None:
    value = _exactly_one(line)
    return None if value == "auto" else parse_int(value, minimum=1)


def _workers(line: Line) -> int:
    count = parse_int(_exactly_one(line), minimum=0)
    if count != 1:
        raise BadValue(
            f"labsquid runs a single kid with a process pool, so workers must be 1, "
            f"not {count}; use pool_size to set the number of pool processes"
        )
    return count


def _split_host_port(token: str) -> tuple[str | None, str]:
    if token.startswith("["):
        address, bracket, after = token[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise BadValue(f"'{token}' is not [IPv6-ADDRESS]:PORT")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise BadValue(f"'{address}' is not an IPv6 address") from None
        return address, after[1:]
    if ":" not in token:
        return None, token
    host, _, port = token.rpartition(":")
    if not host:
        raise BadValue(f"missing address before the ':' in '{token}'")
    if ":" in host:
        raise BadValue(f"write the IPv6 address in '{token}' in brackets: [ADDRESS]:PORT")
    return host, port


def _http_port(line: Line) -> HttpPort:
    if not line.args:
        raise BadValue("missing [ADDRESS:]PORT")
    host, port_text = _split_host_port(line.args[0])
    try:
        port = parse_int(port_text, minimum=1, maximum=65535)
    except BadValue as err:
        raise BadValue(f"bad port in '{line.args[0]}': {err}") from None
    options: dict[str, str | None] = {}
    for token in line.args[1:]:
        key, equals, value = token.partition("=")
        options[key] = value if equals else None
    return HttpPort(host, port, options, line.where)


_ACCESS_LOG_OPTIONS = ("logformat", "buffer-size", "on-error", "rotate")


def _access_log(line: Line) -> AccessLog:
    """The line's pieces; `logformat` stays "" unless given as `logformat=NAME`.

    squid's older form puts a bare format name right after the place, and
    tells it from an acl name only by looking it up among the formats defined
    so far. The parser cannot know those, so the builder settles it (see
    `Builder._resolve_access_log`).
    """
    if not line.args:
        raise BadValue("missing MODULE:PATH (or 'none')")
    place, rest = line.args[0], list(line.args[1:])
    if place == "none":  # no log at all: everything after it is acls
        return AccessLog("none", None, "none", {}, parse_acl_list(rest), line.where)
    module, path = _split_log_place(place)
    options: dict[str, str] = {}
    # name=value options may stand before or after the bare format name (no
    # acl name holds a '='); what is left is the format name and the acls.
    for token in [t for t in rest if "=" in t]:
        rest.remove(token)
        key, _, value = token.partition("=")
        if key not in _ACCESS_LOG_OPTIONS:
            raise BadValue(f"unknown access_log option '{key}'")
        if key == "rotate":  # this file's own logfile_rotate
            try:
                value = str(parse_int(value, maximum=MAX_ROTATE))
            except BadValue as err:
                raise BadValue(f"bad rotate={value}: {err}") from None
        elif key == "on-error" and value not in ("die", "drop"):
            raise BadValue(f"on-error={value}: expected 'die' or 'drop'")
        elif key == "buffer-size":
            _check_buffer_size(value)
        options[key] = value
    logformat = options.pop("logformat", "")
    return AccessLog(module, path, logformat, options, parse_acl_list(rest), line.where)


def _check_buffer_size(value: str) -> None:
    """squid's ``buffer-size=64KB``: a size, its unit written right after it."""
    amount = _NUMBER_THEN_UNIT.fullmatch(value)
    try:
        if amount is None:
            raise BadValue(f"'{value}' is not a size")
        parse_size([amount[1]] + ([amount[2]] if amount[2] else []))
    except BadValue as err:
        raise BadValue(f"bad buffer-size={value}: {err}") from None


_NUMBER_THEN_UNIT = re.compile(r"([0-9][0-9.]*)\s*([A-Za-z]*)")


def _split_log_place(place: str) -> tuple[str, str]:
    module, colon, path = place.partition(":")
    if not colon:
        return "stdio", place  # squid: a bare path is written with stdio
    if module not in ACCESS_LOG_MODULES:
        supported = ", ".join(ACCESS_LOG_MODULES)
        raise BadValue(
            f"unsupported logging module '{module}' (labsquid has {supported} and 'none')"
        )
    if not path:
        raise BadValue(f"missing file name in '{place}'")
    return module, path


def _cachemgr_passwd(line: Line) -> ManagerPassword:
    if len(line.args) < 2:
        raise BadValue("needs a password and at least one action")
    for action in line.args[1:]:
        if action != "all" and action not in MANAGER_ACTIONS \
                and action not in SQUID_ONLY_MANAGER_ACTIONS:
            # squid takes any word; here a misspelt action would stay open.
            raise BadValue(f"unknown cache manager action '{action}'")
    return ManagerPassword(line.args[0], tuple(line.args[1:]), line.where)


def _logformat(line: Line) -> tuple[str, str]:
    if not line.args:
        raise BadValue("missing format name")
    name, text = line.args[0], line.rest(1)
    if name in BUILTIN_LOGFORMATS:
        raise BadValue(f"'{name}' is a built-in format and cannot be redefined")
    if not text:
        raise BadValue(f"missing format text for '{name}'")
    return name, text


# -- the table -------------------------------------------------------------------

_S, _L, _M = Kind.SINGLE, Kind.LIST, Kind.MAP

DIRECTIVES: dict[str, Directive] = {
    d.name: d
    for d in [
        # network
        Directive("http_port", _http_port, _L, "3128"),
        # files and identity
        Directive("pid_filename", _text_or_none, _S, "/run/labsquid/labsquid.pid"),
        Directive("cache_log", _text, _S, "/var/log/labsquid/cache.log"),
        Directive("cache_effective_user", _text_or_none, _S, "none"),
        Directive("cache_effective_group", _text_or_none, _S, "none"),
        Directive("visible_hostname", _text_or_none, _S, "none"),
        Directive("cache_mgr", _text, _S, "webmaster"),
        Directive("httpd_suppress_version_string", _switch, _S, "off"),
        Directive("shutdown_lifetime", _time(), _S, "30 seconds"),
        Directive("debug_options", _rest_of_line, _S, "ALL,1"),
        # access logging
        Directive("access_log", _access_log, _L, "daemon:/var/log/labsquid/access.log squid"),
        Directive("logformat", _logformat, _M, None),
        Directive("logfile_rotate", _count(), _S, "10"),
        Directive("logfile_daemon", _text, _S, "internal"),  # labsquid: "internal" = ours
        Directive("buffered_logs", _switch, _S, "off"),
        Directive("logfile_queue_size", _queue_size, _S, "8 MB", labsquid_only=True),
        # access control
        Directive("acl", parse_acl, _L, None, reads_value_files=True),
        Directive("http_access", parse_http_access, _L, None),
        Directive("cachemgr_passwd", _cachemgr_passwd, _L, None),
        # the process pool
        Directive("workers", _workers, _S, "1"),
        Directive("pool_size", _pool_size, _S, "auto", labsquid_only=True),
        Directive("pool_dispatch", _choice(*POOL_DISPATCH_MODES), _S, "notify", labsquid_only=True),
        Directive("pool_max_connections", _count(minimum=1), _S, "4096", labsquid_only=True),
        Directive("max_filedescriptors", _count(), _S, "0"),
        # timeouts
        Directive("connect_timeout", _time(), _S, "1 minute"),
        Directive("read_timeout", _time(), _S, "15 minutes"),
        Directive("request_timeout", _time(), _S, "5 minutes"),
        Directive("client_idle_pconn_timeout", _time(), _S, "2 minutes"),
        Directive("client_lifetime", _time(), _S, "1 day"),
        Directive("pconn_timeout", _time(), _S, "1 minute"),
        Directive("half_closed_clients", _switch, _S, "off"),
        Directive("client_persistent_connections", _switch, _S, "on"),
        Directive("server_persistent_connections", _switch, _S, "on"),
        # HTTP
        Directive("request_header_max_size", _size(), _S, "64 KB"),
        Directive("reply_header_max_size", _size(), _S, "64 KB"),
        Directive("request_body_max_size", _size(), _S, "0"),
        Directive("forwarded_for", _choice(*FORWARDED_FOR_MODES), _S, "on"),
        Directive("via", _switch, _S, "on"),
        # DNS
        Directive("positive_dns_ttl", _time(), _S, "6 hours"),
        Directive("negative_dns_ttl", _time(), _S, "1 minute"),
        Directive("dns_timeout", _time(), _S, "30 seconds"),
        Directive("hosts_file", _text_or_none, _S, "/etc/hosts"),
    ]
}
