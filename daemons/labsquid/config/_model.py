"""The values a parsed configuration is made of.

Every item that came from a config line keeps a `Where`, so that code far from
the parser (binding a port, opening a log, evaluating an acl) can still point
the operator at the line that asked for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AccessLine",
    "AccessLog",
    "AclLine",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "HttpPort",
    "ManagerPassword",
    "Where",
]


@dataclass(frozen=True)
class Where:
    """A config line: the file it is in, its (first) line number, its directive."""

    file: str
    line: int
    directive: str

    def __str__(self) -> str:
        # Line 0 means "the file as a whole" (it could not be read at all).
        return f"{self.file} line {self.line}" if self.line else self.file


@dataclass(frozen=True)
class ConfigProblem(Where):
    """One thing wrong with a configuration, and where it is."""

    message: str

    def __str__(self) -> str:
        # One problem, one line: a quoted token may hold a newline (a "\n"
        # escape) that a message quotes back; show such characters escaped.
        message = self.message
        if not message.isprintable():
            message = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)
        return f"{Where.__str__(self)}: {message}"

    @classmethod
    def at(cls, where: Where, message: str) -> ConfigProblem:
        return cls(where.file, where.line, where.directive, message)


class ConfigError(Exception):
    """A configuration could not be used; `problems` lists every reason, in file order."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return str(self.problems[0])


@dataclass(frozen=True)
class HttpPort:
    """`http_port [ADDR:]PORT [options]`. host None means every local address."""

    host: str | None
    port: int
    # `name=value` options map to their value, bare flags (`intercept`) to None.
    options: dict[str, str | None] = field(hash=False)
    where: Where


@dataclass(frozen=True)
class AccessLog:
    """`access_log MODULE:PATH [LOGFORMAT] [options] [acl ...]`, or `access_log none`."""

    module: str  # "daemon", "stdio" or "none"
    path: str | None  # None exactly when module is "none"
    logformat: str
    options: dict[str, str] = field(hash=False)
    acls: tuple[tuple[bool, str], ...]  # (negated, acl name): log only when all match
    where: Where


@dataclass(frozen=True)
class AclLine:
    """`acl NAME TYPE [flags] VALUE...`, values read from `"files"` already expanded."""

    name: str
    type: str
    args: tuple[str, ...]
    where: Where


@dataclass(frozen=True)
class AccessLine:
    """`http_access allow|deny [!]ACL...`: the rule matches when every acl does."""

    allow: bool
    acls: tuple[tuple[bool, str], ...]  # (negated, acl name)
    where: Where


@dataclass(frozen=True)
class ManagerPassword:
    """`cachemgr_passwd PASSWORD ACTION...`: the password of these cache
    manager actions; ``none`` opens them, ``disable`` closes them, and the
    action ``all`` stands for every action."""

    password: str
    actions: tuple[str, ...]
    where: Where


@dataclass(frozen=True)
class Config:
    """A whole configuration: one attribute per directive, named after it.

    Times are float seconds, sizes int bytes, switches bools. List directives
    are tuples, in config order. Paths are kept exactly as written (relative
    ones are resolved by whoever opens them). `acls` starts with squid's
    predefined acls (all, manager, localhost, to_localhost, to_linklocal).
    """

    source: str  # the main config file (or the name given to parse_text)
    warnings: tuple[ConfigProblem, ...]  # squid directives we do not implement, ignored
    # network
    http_port: tuple[HttpPort, ...]
    # files and identity
    pid_filename: str | None  # None: write no PID file
    cache_log: str
    cache_effective_user: str | None  # None: keep the user we were started as
    cache_effective_group: str | None
    visible_hostname: str | None  # None: use the machine's host name
    cache_mgr: str
    httpd_suppress_version_string: bool
    shutdown_lifetime: float
    debug_options: str
    # access logging
    access_log: tuple[AccessLog, ...]
    logformat: dict[str, str] = field(hash=False)  # user-defined formats only
    logfile_rotate: int
    logfile_daemon: str  # "internal": labsquid's own logfile daemon
    buffered_logs: bool
    logfile_queue_size: int
    # access control
    acls: tuple[AclLine, ...]
    http_access: tuple[AccessLine, ...]  # empty: every request is denied
    cachemgr_passwd: tuple[ManagerPassword, ...]  # the first line naming an action decides
    # the process pool
    workers: int
    pool_size: int | None  # None (auto): one per usable CPU, counted at start (settings)
    pool_dispatch: str
    pool_max_connections: int
    max_filedescriptors: int  # 0: leave the limit as it is
    # timeouts
    connect_timeout: float
    read_timeout: float
    request_timeout: float
    client_idle_pconn_timeout: float  # an idle keep-alive client connection is closed after it
    client_lifetime: float
    pconn_timeout: float
    half_closed_clients: bool
    client_persistent_connections: bool
    server_persistent_connections: bool
    # HTTP
    request_header_max_size: int
    reply_header_max_size: int
    request_body_max_size: int  # 0: no limit
    forwarded_for: str
    via: bool
    # DNS
    positive_dns_ttl: float
    negative_dns_ttl: float
    dns_timeout: float
    hosts_file: str | None  # None: do not read a hosts file
