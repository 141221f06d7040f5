"""labsquid's configuration, written in squid's squid.conf language.

    config = load("/etc/labsquid/labsquid.conf")    # or parse_text(text, name)
    config.http_port[0].port, config.shutdown_lifetime, config.acls ...

Reading never stops at the first mistake: `ConfigError.problems` holds every
problem found, in file order, each printing as `FILE line N: MESSAGE`.

The pieces: `_lexer` (lines, quotes, continuations, includes), `_units`
(times, sizes, switches), `_directives` (the table of directives and their
defaults), `_access` (acl and http_access lines), `_build` (the pass that
puts it together and checks names across lines).
"""

from __future__ import annotations

from ._build import Builder
from ._directives import DIRECTIVES
from ._files import FileSource, LocalFiles
from ._lexer import read_lines
from ._model import (
    AccessLine,
    AccessLog,
    AclLine,
    Config,
    ConfigError,
    ConfigProblem,
    HttpPort,
    ManagerPassword,
    Where,
)

__all__ = [
    "EMBEDDED_DEFAULT",
    "AccessLine",
    "AccessLog",
    "AclLine",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "HttpPort",
    "ManagerPassword",
    "Where",
    "directive_names",
    "load",
    "parse_text",
]

# What labsquid runs with no -f and no /etc/labsquid/labsquid.conf: a proxy
# for this machine only, writing its files under ./var (relative paths are
# resolved by the CLI against its working directory).
EMBEDDED_DEFAULT = """\
http_port 127.0.0.1:3128

pid_filename var/labsquid.pid
cache_log var/cache.log
access_log daemon:var/access.log squid

pool_dispatch notify
# Quick restarts while developing; the shipped config keeps squid's 30 seconds.
shutdown_lifetime 3 seconds

# squid's default access rules. Unlike squid's, they let only this machine
# (localhost) through, never localnet, so this is never an open proxy.
acl localnet src 0.0.0.1-0.255.255.255  # RFC 1122 "this" network (LAN)
acl localnet src 10.0.0.0/8             # RFC 1918 local private network (LAN)
acl localnet src 100.64.0.0/10          # RFC 6598 shared address space (CGN)
acl localnet src 169.254.0.0/16         # RFC 3927 link-local (directly plugged) machines
acl localnet src 172.16.0.0/12          # RFC 1918 local private network (LAN)
acl localnet src 192.168.0.0/16         # RFC 1918 local private network (LAN)
acl localnet src fc00::/7               # RFC 4193 local private network range
acl localnet src fe80::/10              # RFC 4291 link-local (directly plugged) machines

acl SSL_ports port 443
acl Safe_ports port 80          # http
acl Safe_ports port 21          # ftp
acl Safe_ports port 443         # https
acl Safe_ports port 70          # gopher
acl Safe_ports port 210         # wais
acl Safe_ports port 1025-65535  # unregistered ports
acl Safe_ports port 280         # http-mgmt
acl Safe_ports port 488         # gss-http
acl Safe_ports port 591         # filemaker
acl Safe_ports port 777         # multiling http
acl CONNECT method CONNECT

http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow localhost manager
http_access deny manager
http_access allow localhost
http_access deny all
"""


def parse_text(
    text: str, filename: str = "<embedded>", *, files: FileSource | None = None
) -> Config:
    """Parse config text; `filename` names it in messages and anchors relative includes.

    `files` is where includes and acl value files are read from (the local
    filesystem unless given). Raises ConfigError listing every problem.
    """
    files = LocalFiles() if files is None else files
    builder = Builder(files)
    builder.feed_all(read_lines(text, filename, files))
    return builder.finish(filename)


def load(path: str) -> Config:
    """Read and parse the config file at `path`; raises ConfigError."""
    files = LocalFiles()
    try:
        text = files.read_text(path)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        problem = ConfigProblem(path, 0, "", f"cannot read the configuration file: {reason}")
        raise ConfigError([problem]) from None
    return parse_text(text, path, files=files)


def directive_names() -> list[str]:
    """Every directive labsquid understands (with `include`), sorted."""
    return sorted([*DIRECTIVES, "include"])
