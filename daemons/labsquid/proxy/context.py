"""What every connection of one serving process shares.

Built once per process (and again on reconfigure): the config, the compiled
access rules and log formats, the resolver, the idle upstream connections,
the counters row and the sink for finished access-log lines.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from labsquid import __version__, acl
from labsquid.access_logs import tagged
from labsquid.accesslog import LogFormat, builtin_formats, compile_logformat
from labsquid.config import Config
from labsquid.dns import Resolver
from labsquid.eventloop import EventLoop
from labsquid.proxy.forward import ForwardPolicy
from labsquid.proxy.upstream import UpstreamPool
from labsquid.stats import Row, Stats

if TYPE_CHECKING:
    from labsquid.proxy.client import ClientConnection

# Hands a chunk of access-log lines (each ending in a newline; b"" for none)
# to the kid's loggers; False while some could not leave yet.
LogOut = Callable[[bytes], bool]
LOG_BATCH = 64 * 1024  # a turn's lines past this many bytes are handed over at once


def port_names(config: Config) -> dict[int, list[tuple[str | None, str]]]:
    """Each ``http_port``'s name, by port number: its ``name=``, or as squid
    names it by default, the port as written (``3128``, ``127.0.0.1:3128``),
    with the address it listens on (None: every one)."""
    names: dict[int, list[tuple[str | None, str]]] = {}
    for spec in config.http_port:
        host = spec.host
        written = str(spec.port) if host is None else (
            f"[{host}]:{spec.port}" if ":" in host else f"{host}:{spec.port}")
        names.setdefault(spec.port, []).append((host, spec.options.get("name") or written))
    return names


class ServeContext:
    def __init__(self, loop: EventLoop, config: Config, log_out: LogOut, stats: Row,
                 all_stats: Stats | None = None) -> None:
        self.loop = loop
        self.log_out = log_out
        self.stats = stats
        self.all_stats = all_stats
        self.started = time.time()
        self.resolver: Resolver | None = None
        self.upstreams = UpstreamPool(loop)
        # This turn's access-log lines (tagged with their file's index but the
        # first), for log_out at the turn's end: one hand-over for them all.
        self._lines: list[bytes] = []
        self._lines_size = 0
        self._writers: list[ClientConnection] = []
        self._turn_end_due = False
        self._log_blocked = False
        # Open client connections per client address, in this process: what
        # a maxconn acl counts (as each squid worker counts its own).
        self.client_connections: dict[str, int] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.port_names = port_names(config)
        acls = acl.compile_acls(list(config.acls))
        self.access = acl.compile_access(list(config.http_access), acls)
        self.purge_enabled = acls.purge_enabled
        self.hostname = config.visible_hostname or socket.gethostname()
        self.version = None if config.httpd_suppress_version_string else f"labsquid/{__version__}"
        self.policy = ForwardPolicy(self.hostname, self.version, config.via,
                                    config.forwarded_for, config.server_persistent_connections,
                                    config.http_port[0].port if config.http_port else 0)
        formats = {**builtin_formats(), **config.logformat}
        # Each access_log file has its own logfile daemon in the kid and its
        # own format; ``log_targets`` (None: all lines to the first file, the
        # usual case) chooses the files for each request (access_log acls).
        files = [e for e in config.access_log if e.module != "none"]
        self.log_formats: list[LogFormat] = [compile_logformat(formats[e.logformat])
                                             for e in files]
        self.log_format: LogFormat | None = self.log_formats[0] if files else None
        self.log_targets = acl.compile_log_targets(list(config.access_log), acls)
        self.log_headers = any(f.uses_request_headers for f in self.log_formats)
        if self.resolver is not None:
            self.resolver.close()
        self.resolver = Resolver(self.loop, hosts_file=config.hosts_file or "/dev/null",
                                 timeout=config.dns_timeout,
                                 positive_ttl=config.positive_dns_ttl,
                                 negative_ttl=config.negative_dns_ttl)
        self.upstreams.idle_timeout = config.pconn_timeout

    # -- the end of a loop turn ------------------------------------------------
    # Client writes wait for the end of the turn that made them.  Then the
    # turn's access-log lines go to the kid first, and the client bytes after:
    # a worker killed at any moment has never given a client a response whose
    # line it had not yet sent.  It also batches both: one message to the kid
    # and one send per client per turn.
    def write_at_turn_end(self, client: ClientConnection) -> None:
        self._writers.append(client)
        self.end_turn_soon()

    def end_turn_soon(self) -> None:
        if not self._turn_end_due:
            self._turn_end_due = True
            self.loop.call_soon(self._end_turn)

    def _end_turn(self) -> None:
        self._turn_end_due = False
        if not self.hand_over_lines():
            # Lines the kernel would not take yet stay in this process, where
            # a kill would lose them: the clients wait until they have left
            # (``log_unblocked``), rather than hold a response with no line.
            self._log_blocked = True
            return
        writers, self._writers = self._writers, []
        for client in writers:
            client.turn_ended()

    def log_unblocked(self) -> None:
        """The worker's lines all left; release the client writes held back."""
        if self._log_blocked:
            self._log_blocked = False
            self.end_turn_soon()

    def log(self, line: str | None, service_us: int, http_status: int,
            counted: bool = True) -> None:
        """Count a finished transaction, which took `service_us`, and send its
        line (rendered with ``log_format``; None without one) to the logfile
        daemon's feeder.  Not ``counted``: a line without a request (as
        squid's counters)."""
        if counted:
            self.stats.count_request(service_us, http_status >= 400 or http_status == 0)
        if line is not None:
            self.log_line(line)

    def log_line(self, line: str | bytes, index: int = 0) -> None:
        """A line for access_log file ``index``, handed over at the turn's end."""
        data = line.encode("utf-8", "replace") if isinstance(line, str) else line
        if index:
            data = tagged(data, index)
        self._lines.append(data)
        self._lines_size += len(data) + 1
        if self._lines_size >= LOG_BATCH:
            self.hand_over_lines()
        else:
            self.end_turn_soon()

    def hand_over_lines(self) -> bool:
        """The lines batched so far, to ``log_out``; False while some could
        not leave (the clients' writes wait: ``_end_turn``)."""
        chunk = b""
        lines = self._lines
        if lines:
            lines.append(b"")  # every line ends in a newline
            chunk = b"\n".join(lines)
            lines.clear()
            self._lines_size = 0
        return self.log_out(chunk)

    def name_of_port(self, local_ip: str, local_port: int) -> str:
        """The ``http_port`` name of the socket a client reached (a
        ``myportname`` acl's subject); "" for a socket the config does not name."""
        entries = self.port_names.get(local_port, ())
        for host, name in entries:
            if host == local_ip:
                return name
        for host, name in entries:
            if host is None:
                return name
        return entries[0][1] if len(entries) == 1 else ""
